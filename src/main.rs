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
use mail2ticket::daemon::SignInMethod;
use mail2ticket::{daemon, shutdown, status, store::StatusView};

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
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    mail2ticket::logging::init(config.daemon.log_format);
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

async fn dispatch(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { once } => {
            let cancel = CancellationToken::new();
            shutdown::cancel_on_signal(cancel.clone()).context("installing signal handlers")?;
            if once {
                let results = daemon::run_once(&config, cancel).await?;
                Ok(report(results, |r| {
                    format!(
                        "ok, {} fetched, {} new tickets, {} duplicates, {} replies, {} ignored",
                        r.fetched, r.created, r.duplicates, r.joined, r.ignored
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
                format!(
                    "ok, {} messages, {} not yet ingested; capabilities: {capabilities}",
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
            let store = StatusView::open(&config.store).await?;
            let mut rows = store.reader_statuses().await?;
            if let Some(name) = &reader {
                rows.retain(|r| &r.name == name);
                if rows.is_empty() {
                    anyhow::bail!("no reader named {name:?} in the database");
                }
            }
            let mut report = status::Report::new(&config, store.daemon_status().await?, rows);
            report.set_outbox(store.outbox_statuses().await?);
            report.set_mail(store.mail_counts(status::MAIL_HOURS).await?);
            if let Some(name) = &reader {
                // `rows` was narrowed to this one reader above.
                if let Some(r) = report.readers.first_mut() {
                    r.events = Some(store.reader_events(name, limit).await?);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status::render_report(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health => {
            let store = StatusView::open(&config.store).await?;
            let verdict = match store.daemon_status().await? {
                Some(daemon) => status::daemon_alive(&daemon),
                None => Err("the daemon never ran on this database".into()),
            };
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
