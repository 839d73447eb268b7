//! The `mail2ticket` command: parses arguments and wires the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use mail2ticket::config::{self, Config};
use mail2ticket::{daemon, shutdown, status, store::Store};

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
    /// Show each reader's health from the database.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    mail2ticket::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Run { once } => {
            let cancel = CancellationToken::new();
            shutdown::cancel_on_signal(cancel.clone()).context("installing signal handlers")?;
            if once {
                let results = daemon::run_once(&config, cancel).await?;
                Ok(report(results, |r| {
                    format!(
                        "ok, {} fetched, {} new tickets, {} duplicates",
                        r.fetched, r.created, r.duplicates
                    )
                }))
            } else {
                daemon::run(&config, cancel).await?;
                tracing::info!("stopped");
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Check { readers } => {
            let results = daemon::check(&config, &readers).await?;
            Ok(report(results, |r| {
                format!(
                    "ok, {} messages, {} not yet ingested",
                    r.messages, r.waiting
                )
            }))
        }
        Command::Status => {
            let store = Store::open(&config.store).await?;
            print!("{}", status::render(&store.reader_statuses().await?));
            Ok(ExitCode::SUCCESS)
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
