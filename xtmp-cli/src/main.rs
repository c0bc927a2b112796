//! The `xtmp` binary. See `xtmp --help` and the crate's README section.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use xtmp_cli::cli::{Cli, ClientCommand, Command, ConfigCommand, ServerCommand};
use xtmp_cli::config::XtmpConfig;
use xtmp_cli::{app, client, inspect, keys, out, outln, server};

/// Largest input `inspect` reads (a 16 MiB frame as hex, with room for separators).
const INSPECT_MAX: u64 = 80 * 1024 * 1024;

fn init_logging(filter: Option<&str>, default: &str) {
    let wanted = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| default.to_string());
    let env = EnvFilter::try_new(&wanted).unwrap_or_else(|e| {
        eprintln!("warning: invalid log filter {wanted:?} ({e}); using {default:?}");
        EnvFilter::new(default)
    });
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_ansi(color)
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Server(ServerCommand::Start { config }) => {
            runtime(true)?.block_on(server::start(config.as_deref()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(ServerCommand::Status { admin, json }) => {
            runtime(false)?.block_on(server::status(&admin, json))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(ServerCommand::Metrics {
            session_id,
            admin,
            json,
        }) => {
            runtime(false)?.block_on(server::metrics(&admin, session_id, json))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(ServerCommand::Sessions { admin, json }) => {
            runtime(false)?.block_on(server::sessions(&admin, json))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file, print }) => match XtmpConfig::load(&file) {
            Ok((cfg, warnings)) => {
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                outln!("{}: OK", file.display());
                if print {
                    out!("{}", cfg.to_toml());
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Config(ConfigCommand::Defaults) => {
            out!("{}", XtmpConfig::default().to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen(args) => {
            let sk = keys::generate_key_file(&args.out)?;
            let pub_path = keys::public_key_path(&args.out);
            let fp = keys::fingerprint_hex(sk.public_key());
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "secret_key_file": args.out,
                        "public_key_file": pub_path,
                        "fingerprint": fp,
                    })
                );
            } else {
                outln!(
                    "secret key:  {} (mode 0600, keep it private)",
                    args.out.display()
                );
                outln!("public key:  {}", pub_path.display());
                outln!("fingerprint: {fp}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Client(cmd) => {
            let rt = runtime(false)?;
            match cmd {
                ClientCommand::Ping {
                    conn,
                    count,
                    interval,
                    json,
                } => rt.block_on(client::ping(&conn, count, interval, json))?,
                ClientCommand::Send {
                    conn,
                    msg,
                    ack,
                    json,
                } => rt.block_on(client::send(&conn, &msg, ack, json))?,
                ClientCommand::Request { conn, msg, json } => {
                    rt.block_on(client::request(&conn, &msg, json))?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wallet(cmd) => runtime(false)?.block_on(app::wallet(cmd)),
        Command::Bundle(cmd) => runtime(false)?.block_on(app::bundle(cmd)),
        Command::Registry(cmd) => runtime(false)?.block_on(app::registry(cmd)),
        Command::Subscribe(cmd) => runtime(false)?.block_on(app::subscribe(cmd)),
        Command::Qlock(cmd) => runtime(false)?.block_on(app::qlock(cmd)),
        Command::Tlsls(cmd) => runtime(false)?.block_on(app::tlsls(cmd)),
        Command::Inspect(args) => {
            let bytes = match (&args.hex, &args.file) {
                (Some(h), _) => inspect::parse_hex(h).map_err(|e| anyhow::anyhow!("HEX: {e}"))?,
                (None, Some(f)) => inspect::file_bytes(
                    xtmp_cli::read_capped(f, INSPECT_MAX)
                        .with_context(|| format!("cannot read {}", f.display()))?,
                ),
                (None, None) => inspect::file_bytes(
                    xtmp_cli::read_capped(std::path::Path::new("-"), INSPECT_MAX)
                        .context("cannot read the frame from standard input")?,
                ),
            };
            let report = inspect::inspect(&bytes, args.max_payload);
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}", inspect::render(&report));
            }
            Ok(if report.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Server(ServerCommand::Start { .. }) => "info",
        _ => "warn",
    };
    init_logging(cli.log.as_deref(), default_filter);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
