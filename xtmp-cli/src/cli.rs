//! Command-line definitions (clap derive).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use xtmp_proto::{EncryptionType, MessageType};

use crate::app_cli::{
    BundleCommand, QlockCommand, RegistryCommand, SubscribeCommand, TlslsCommand, WalletCommand,
};
use crate::duration::parse_duration;

/// XTMP: post-quantum message transport.
///
/// Run a server (`xtmp server start`), watch it (`server status`, `server metrics`), talk
/// to one (`xtmp client ...`), manage keys (`xtmp keygen`), validate configuration
/// (`xtmp config check`), decode frames (`xtmp inspect`), and use the application
/// operations (`xtmp wallet|bundle|registry|subscribe|qlock|tlsls ...`).
#[derive(Debug, Parser)]
#[command(name = "xtmp", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Log filter in RUST_LOG syntax (e.g. `debug`, `xtmp=trace,info`). Overrides RUST_LOG.
    /// Default: `info` for `server start`, `warn` for the other commands. Logs go to stderr.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run and monitor an XTMP server.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate a key pair: a secret seed file (mode 0600) and a `.pub` file beside it.
    Keygen(KeygenArgs),
    /// Talk to a server.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Decode one frame and explain every field and validation step (no keys needed).
    Inspect(InspectArgs),
    /// Wallets: create, register, authenticate, balance, send, mint.
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// Bundles of signed transfers: submit, status, confirm, sync.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// The registry: get, set (compare-and-set), stamp, verify-stamp (offline).
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Watch server pushes: live changes, events, metrics.
    #[command(subcommand)]
    Subscribe(SubscribeCommand),
    /// Named locks with leases and fencing tokens.
    #[command(subcommand)]
    Qlock(QlockCommand),
    /// Certificates binding a subject to an XTMP static key.
    #[command(subcommand)]
    Tlsls(TlslsCommand),
}

/// `xtmp server ...`
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Start the server; runs until SIGINT or SIGTERM, then shuts down gracefully.
    Start {
        /// Configuration file (without one, the embedded defaults are used).
        #[arg(long, short, value_name = "FILE", env = "XTMP_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show a running server's status (uptime, sessions, connections, handshakes, errors, bytes).
    Status {
        /// How to reach the admin endpoint.
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one session's metrics (quality, counters, key generation).
    Metrics {
        /// Session id: decimal, or hex with `0x` or as the 16-digit `session_id_hex`.
        #[arg(long, value_name = "ID", value_parser = parse_session_id_arg)]
        session_id: u64,
        /// How to reach the admin endpoint.
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the live sessions.
    Sessions {
        /// How to reach the admin endpoint.
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Where the admin endpoint is.
#[derive(Debug, Args, Clone)]
pub struct AdminArgs {
    /// The configuration file the server was started with (its `admin_address` and
    /// `admin_token` are used). `--admin` takes precedence.
    #[arg(long, short, value_name = "FILE", env = "XTMP_CONFIG")]
    pub config: Option<PathBuf>,
    /// The admin endpoint's address (default: the embedded default 127.0.0.1:8081).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Bearer token for the admin endpoint (default: `admin_token` from --config).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "XTMP_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
}

/// `xtmp config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file without starting anything. Exit status 0 when valid.
    Check {
        /// The file.
        file: PathBuf,
        /// Also print the effective configuration (defaults filled in) as TOML.
        #[arg(long)]
        print: bool,
    },
    /// Print the embedded defaults as a TOML file.
    Defaults,
}

/// `xtmp keygen`
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Secret key file to create (the public key goes to the same name with `.pub`).
    #[arg(long, short, value_name = "FILE", default_value = "xtmp.key")]
    pub out: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `xtmp client ...`
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Handshake, then measure heartbeat round trips.
    Ping {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// Number of heartbeats.
        #[arg(long, short = 'n', default_value_t = 1)]
        count: u32,
        /// Pause between heartbeats.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration_arg)]
        interval: Duration,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send one message (fire and forget, or acknowledged with --ack).
    Send {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The message.
        #[command(flatten)]
        msg: MessageArgs,
        /// Ask for an acknowledgement and wait for it.
        #[arg(long)]
        ack: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send a request and print the response.
    Request {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The message.
        #[command(flatten)]
        msg: MessageArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// How to reach a server.
#[derive(Debug, Args, Clone)]
pub struct ClientConn {
    /// Server address (`127.0.0.1:8080`), or a WebSocket URL (`ws://127.0.0.1:8082/xtmp`,
    /// `wss://host/xtmp`).
    #[arg(long, value_name = "ADDR_OR_URL", env = "XTMP_SERVER")]
    pub server: crate::transport_args::ServerArg,
    /// The server's public key: a `.pub` file or the hex itself.
    #[arg(long, value_name = "FILE_OR_HEX", env = "XTMP_SERVER_KEY")]
    pub server_key: String,
    /// This client's secret key file (selects mutual authentication).
    #[arg(long, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Encryption types to offer, most preferred first (comma-separated).
    #[arg(long, value_name = "TYPES", value_delimiter = ',', value_parser = parse_encryption_arg,
          default_value = "PostQuantum,Aes256Gcm,ChaCha20Poly1305")]
    pub encryption: Vec<EncryptionType>,
    /// Timeout for connecting and for each request.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    /// Transports to try, in order (comma-separated: `tcp`, `ws`, `udp`, `hybrid`), each
    /// with --step-timeout; the first that completes a handshake is used. Default: `ws`
    /// when --server is a ws:// or wss:// URL, else `tcp`.
    #[arg(long, value_name = "LIST", value_delimiter = ',',
          value_parser = crate::transport_args::parse_transport_arg)]
    pub transport: Vec<xtmp::ConnectionType>,
    /// The server's UDP address for a `udp` step (default: --server) and for the UDP path
    /// of a `hybrid` step (default: the port the server grants, on --server's IP).
    #[arg(long, value_name = "ADDR")]
    pub udp_server: Option<std::net::SocketAddr>,
    /// The WebSocket endpoint for a `ws` step when --server is an address.
    #[arg(long, value_name = "URL")]
    pub ws_url: Option<xtmp::WsUrl>,
    /// Time each transport step has to connect and complete the handshake (default:
    /// --timeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub step_timeout: Option<Duration>,
    /// Trust only the certificates in this PEM file for a wss:// server (a private CA or
    /// the server's self-signed certificate) instead of the system roots.
    #[arg(long, value_name = "FILE")]
    pub ws_ca_file: Option<PathBuf>,
    /// Accept any wss:// certificate. The pinned --server-key still authenticates the
    /// server, but the WebSocket framing is then open to an interceptor.
    #[arg(long, conflicts_with = "ws_ca_file")]
    pub ws_dangerous_accept_any_certificate: bool,
}

/// A message to send.
#[derive(Debug, Args, Clone)]
pub struct MessageArgs {
    /// Message type: a name such as `WalletBalance` (case-insensitive) or a code (`18`, `0x12`).
    #[arg(long = "type", short = 't', value_name = "NAME_OR_CODE", value_parser = parse_message_type_arg)]
    pub message_type: MessageType,
    /// Payload as a string.
    #[arg(long, short = 'd', value_name = "STRING", conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Payload from a file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,
}

/// `xtmp inspect`
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The frame as hex (whitespace, `:` and `-` are ignored). Without it and without
    /// --file, the frame is read from standard input.
    #[arg(value_name = "HEX", conflicts_with = "file")]
    pub hex: Option<String>,
    /// Read the frame from a file: hex text, or raw binary.
    #[arg(long, short, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The receiver's payload limit used for the length check.
    #[arg(long, value_name = "BYTES", default_value_t = xtmp_proto::header::DEFAULT_MAX_STREAM_PAYLOAD)]
    pub max_payload: u32,
    /// Print JSON instead of a report.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn parse_session_id_arg(s: &str) -> Result<u64, String> {
    crate::admin::parse_session_id(s)
}

fn parse_encryption_arg(s: &str) -> Result<EncryptionType, String> {
    EncryptionType::from_name(s.trim()).ok_or_else(|| {
        format!("unknown encryption type {s:?}; expected PostQuantum, Aes256Gcm, ChaCha20Poly1305 or None")
    })
}

/// Parses a message type name (case-insensitive) or code (decimal or `0x` hex).
///
/// # Errors
/// Neither a known name nor a number from 0 to 255.
pub fn parse_message_type_arg(s: &str) -> Result<MessageType, String> {
    let t = s.trim();
    if let Some(m) = MessageType::ALL
        .iter()
        .find(|m| m.name().is_some_and(|n| n.eq_ignore_ascii_case(t)))
    {
        return Ok(*m);
    }
    let code = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u8::from_str_radix(h, 16).ok(),
        None => t.parse::<u8>().ok(),
    };
    code.map(MessageType).ok_or_else(|| {
        let names: Vec<&str> = MessageType::ALL.iter().filter_map(|m| m.name()).collect();
        format!(
            "{s:?} is neither a message type name ({}) nor a code from 0 to 255",
            names.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn message_types() {
        assert_eq!(
            parse_message_type_arg("walletbalance"),
            Ok(MessageType::WalletBalance)
        );
        assert_eq!(
            parse_message_type_arg("0x12"),
            Ok(MessageType::WalletBalance)
        );
        assert_eq!(parse_message_type_arg("18"), Ok(MessageType::WalletBalance));
        assert_eq!(parse_message_type_arg("119"), Ok(MessageType(119)));
        assert!(parse_message_type_arg("256").is_err());
        assert!(parse_message_type_arg("Wallet").is_err());
    }

    #[test]
    fn parses_commands() {
        let c = Cli::try_parse_from([
            "xtmp",
            "server",
            "metrics",
            "--session-id",
            "0x2a",
            "--admin",
            "127.0.0.1:9",
            "--json",
        ])
        .map_err(|e| e.to_string());
        assert!(matches!(
            c.map(|c| c.command),
            Ok(Command::Server(ServerCommand::Metrics {
                session_id: 42,
                json: true,
                ..
            }))
        ));
        assert!(Cli::try_parse_from(["xtmp", "server", "status", "--admin", "nowhere"]).is_err());
        let c = Cli::try_parse_from([
            "xtmp",
            "client",
            "request",
            "--server",
            "127.0.0.1:8080",
            "--server-key",
            "k.pub",
            "--type",
            "WalletBalance",
            "--data",
            "{}",
            "--encryption",
            "Aes256Gcm,None",
        ]);
        assert!(c.is_ok());
    }
}
