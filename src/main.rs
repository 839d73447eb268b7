//! The `mail2ticket` command: parses arguments and wires the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use mail2ticket::auth::{CodeFlowOptions, Interaction};
use mail2ticket::config::{self, Config};
use mail2ticket::daemon::{self, SignInMethod};
use mail2ticket::ops::{shutdown, status};

/// Turns support mailboxes into helpdesk tickets.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(short, long, env = "MAIL2TICKET_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run {
        /// Poll every reader once, taking everything pending, then exit:
        /// 0 if all readers succeeded, 1 if any failed.
        #[arg(long)]
        once: bool,
    },
    /// Connect, authenticate and select the folder of each reader (all by default).
    Check { readers: Vec<String> },
    /// Show the daemon's and each reader's health from the database.
    Status {
        /// One reader, with its history (state changes, failures,
        /// recoveries), newest first.
        #[arg(long)]
        reader: Option<String>,
        /// History rows shown with --reader.
        #[arg(long, default_value_t = 50, requires = "reader")]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the running daemon's heartbeat is recent, 1 otherwise
    /// (for Docker's HEALTHCHECK and scripts).
    Health,
    /// Mail set aside whole because it could not be made into a ticket.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Sign in for a reader (grant authorization_code or device_code) and
    /// store its refresh token.
    Authorize {
        reader: String,
        /// Use the device-code flow: sign in on any device with a code.
        #[arg(long)]
        device: bool,
        /// Do not listen for the redirect; paste the address the browser
        /// was sent to instead (for headless servers).
        #[arg(long, conflicts_with = "device")]
        no_listen: bool,
        /// Port of the loopback redirect (default: the app's redirect_port).
        #[arg(long, conflicts_with = "device")]
        port: Option<u16>,
        /// How long to wait for the browser to come back.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// The quarantined mails, oldest first, with the reason for each.
    List {
        /// Only this reader's.
        #[arg(long)]
        reader: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One quarantined mail: why, who from, and its kept raw mail.
    Show {
        id: i64,
        /// Print the raw mail as it was fetched, nothing else.
        #[arg(long)]
        raw: bool,
    },
    /// Parse quarantined mail again (e.g. after an upgrade) and make it a
    /// ticket; exits 1 if any stays in quarantine.
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every quarantined mail.
        #[arg(long)]
        all: bool,
    },
    /// Take a mail out of the quarantine without a ticket (its row and raw
    /// mail are kept, as `ignored: dropped`).
    Drop { id: i64 },
}

/// The terminal, for the sign-in flows.
struct Terminal;

impl Interaction for Terminal {
    fn show(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        // A closed stdout only loses the hint; the flow itself goes on.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    async fn read_line(&self) -> std::io::Result<String> {
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

fn main() -> ExitCode {
    // `mail2ticket dist-files DIR` writes the man pages and completions of
    // the Debian package (docs/operations.md). Not a clap subcommand: a
    // hidden one would still be offered by the completions it writes.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let [_, command, dir] = args.as_slice()
        && command == "dist-files"
    {
        return match dist_files(std::path::Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    mail2ticket::ops::logging::init(config.daemon.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The man pages (one per command) and the bash, zsh and fish completions,
/// into DIR/man and DIR/completions.
fn dist_files(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    use clap_complete::Shell;
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing the man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "mail2ticket", &completions)
            .with_context(|| format!("writing the {shell} completion"))?;
    }
    Ok(())
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { once } => {
            let cancel = CancellationToken::new();
            shutdown::cancel_on_signal(cancel.clone()).context("installing signal handlers")?;
            if once {
                let results = daemon::run_once(&config, cancel).await?;
                Ok(report(results, |r| {
                    format!(
                        "ok, {} fetched, {} new tickets, {} duplicates, {} replies, {} ignored{}",
                        r.fetched,
                        r.created,
                        r.duplicates,
                        r.joined,
                        r.ignored,
                        match r.quarantined {
                            0 => String::new(),
                            n => format!(", {n} quarantined (see `mail2ticket quarantine list`)"),
                        }
                    )
                }))
            } else {
                daemon::run(config, cancel).await?;
                tracing::info!("stopped");
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Check { readers } => {
            let results = daemon::check(&config, &readers).await?;
            Ok(report(results, |r| {
                let capabilities = if r.capabilities.is_empty() {
                    "none of IDLE, MOVE, UIDPLUS".to_string()
                } else {
                    r.capabilities.join(" ")
                };
                let first_contact = r
                    .first_contact
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default();
                format!(
                    "ok, {} messages, {} not yet ingested{first_contact}; capabilities: {capabilities}",
                    r.messages, r.waiting
                )
            }))
        }
        Command::Authorize {
            reader,
            device,
            no_listen,
            port,
            timeout,
        } => {
            let method = if device {
                SignInMethod::Device
            } else {
                SignInMethod::Code(CodeFlowOptions {
                    port,
                    listen: !no_listen,
                    timeout,
                })
            };
            match daemon::authorize(&config, &reader, &method, &Terminal).await {
                Ok(done) => {
                    let who = done
                        .account
                        .as_deref()
                        .unwrap_or("(the identity platform did not say)");
                    println!("{reader}: authorized; signed in as {who}");
                    if !done.released.is_empty() {
                        println!("released: {}", done.released.join(", "));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(daemon::StartError::Auth(e)) => {
                    println!("{reader}: error: {e}");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Status {
            reader,
            limit,
            json,
        } => {
            print!(
                "{}",
                status::run(&config, reader.as_deref(), limit, json).await?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Quarantine { action } => quarantine(&config, action).await,
        Command::Health => {
            let verdict = status::health(&config).await?;
            Ok(match verdict {
                Ok(()) => {
                    println!("healthy");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    println!("unhealthy: {why}");
                    ExitCode::from(1)
                }
            })
        }
    }
}

async fn quarantine(config: &Config, action: QuarantineAction) -> anyhow::Result<ExitCode> {
    use mail2ticket::ops::quarantine::{self, Which};
    match action {
        QuarantineAction::List { reader, json } => {
            let entries = quarantine::list(config, reader.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", quarantine::render_list(&entries));
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineAction::Show { id, raw } => {
            let Some((entry, bytes)) = quarantine::show(config, id).await? else {
                println!("no quarantined mail {id}");
                return Ok(ExitCode::from(1));
            };
            if raw {
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes)?;
                out.flush()?;
            } else {
                print!("{}", quarantine::render_entry(&entry, bytes.len()));
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineAction::Retry { id, all } => {
            let which = match id {
                Some(id) if !all => Which::One(id),
                _ => Which::All,
            };
            let results = quarantine::retry(config, which).await?;
            if results.is_empty() {
                println!("the quarantine is empty");
            }
            let lines = results
                .into_iter()
                .map(|(id, result)| (format!("mail {id}"), quarantine::settled(result)))
                .collect();
            Ok(report(lines, String::clone))
        }
        QuarantineAction::Drop { id } => {
            if quarantine::drop(config, id).await? {
                println!("mail {id}: dropped from the quarantine (kept as ignored: dropped)");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("no quarantined mail {id}");
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// Prints one line per reader and returns 0 when all succeeded, else 1.
fn report<T, E: std::fmt::Display>(
    results: Vec<(String, Result<T, E>)>,
    describe: impl Fn(&T) -> String,
) -> ExitCode {
    let mut ok = true;
    for (name, result) in results {
        match result {
            Ok(r) => println!("{name}: {}", describe(&r)),
            Err(e) => {
                ok = false;
                println!("{name}: error: {e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
