//! Command-line definitions of the application commands: `xtmp wallet`, `bundle`,
//! `registry`, `subscribe`, `qlock` and `tlsls` (implemented in [`crate::app`]).
//!
//! Every command that talks to a server takes the common connection options of `xtmp
//! client` ([`ClientConn`]); commands that act for a wallet take `--wallet FILE` and
//! authenticate the connection's session as that wallet first (`WalletAuth`), within
//! the same connection.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::cli::ClientConn;
use crate::duration::parse_duration;

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// `xtmp wallet ...`
#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Create a wallet (offline): the ML-DSA-65 secret key in FILE (mode 0600, never
    /// overwritten) and the public key in FILE.pub; prints the address.
    New {
        /// Wallet file to create.
        #[arg(long, short, value_name = "FILE", default_value = "xtmp.wallet")]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a wallet's address (offline).
    Address {
        /// Wallet file, public key file, or address.
        #[arg(long, short, value_name = "FILE_OR_ADDR")]
        wallet: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register the wallet's public key with the server (idempotent).
    Register {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The wallet file.
        #[arg(long, short, value_name = "FILE")]
        wallet: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Authenticate as the wallet (challenge and ML-DSA signature). The binding lasts as
    /// long as the session, so this only checks that it works: the commands that act for
    /// a wallet authenticate by themselves.
    Auth {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The wallet file.
        #[arg(long, short, value_name = "FILE")]
        wallet: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a wallet's balance and next nonce (balances are public).
    Balance {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// Wallet file, public key file, or address.
        #[arg(long, short, value_name = "FILE_OR_ADDR")]
        wallet: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Transfer: connect, authenticate as --wallet, sign the transfer with the wallet's
    /// next nonce, send it, and print the new balances.
    Send(TransferArgs),
    /// Create value: as the mint authority's wallet, mint --amount for --to (the
    /// server's `[xtmp_services]` mint authority; by default the wallet file
    /// `<data_dir>/mint-authority.wallet` the server created on first start).
    Mint(TransferArgs),
    /// Sign a transfer without sending it (offline): prints the signed transaction as
    /// one JSON line, for `xtmp bundle submit --tx-file`.
    Sign {
        /// The sender's wallet file.
        #[arg(long, short, value_name = "FILE")]
        wallet: PathBuf,
        /// Recipient: address, wallet file or public key file.
        #[arg(long, value_name = "ADDR_OR_FILE")]
        to: String,
        /// Amount.
        #[arg(long)]
        amount: u64,
        /// The sender's nonce for this transaction (`xtmp wallet balance` shows the next).
        #[arg(long)]
        nonce: u64,
    },
}

/// `xtmp wallet send|mint`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Connection settings.
    #[command(flatten)]
    pub conn: ClientConn,
    /// The sender's wallet file (for `mint`: the mint authority's).
    #[arg(long, short, value_name = "FILE")]
    pub wallet: PathBuf,
    /// Recipient: address, wallet file or public key file.
    #[arg(long, value_name = "ADDR_OR_FILE")]
    pub to: String,
    /// Amount (at least 1).
    #[arg(long)]
    pub amount: u64,
    /// Nonce to use (default: the wallet's next nonce, asked from the server).
    #[arg(long)]
    pub nonce: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `xtmp bundle ...`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Submit an ordered batch of signed transfers (stored as pending, not applied).
    Submit {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The submitting wallet (the session authenticates as it; it signs --transfer).
        #[arg(long, short, value_name = "FILE")]
        wallet: PathBuf,
        /// A transfer from --wallet, signed here: `TO:AMOUNT` (TO an address or wallet
        /// file). Repeatable; nonces are consecutive from the wallet's next nonce.
        #[arg(long = "transfer", value_name = "TO:AMOUNT")]
        transfers: Vec<String>,
        /// Signed transactions (from `xtmp wallet sign`): a JSON array, one JSON object
        /// per line, or `{"transactions": [...]}`. Repeatable; placed before --transfer.
        #[arg(long = "tx-file", value_name = "FILE")]
        tx_files: Vec<PathBuf>,
        /// First nonce for --transfer (default: the wallet's next nonce plus its
        /// transactions in --tx-file).
        #[arg(long)]
        nonce: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a bundle's state: pending, confirmed, or rejected with the reason.
    Status {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The bundle id (64 hex digits).
        #[arg(value_name = "BUNDLE_ID")]
        bundle_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply a pending bundle, all of it or none (by its submitter or the mint authority).
    Confirm {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The submitter's (or the mint authority's) wallet file.
        #[arg(long, short, value_name = "FILE")]
        wallet: PathBuf,
        /// The bundle id (64 hex digits).
        #[arg(value_name = "BUNDLE_ID")]
        bundle_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List bundle state changes after a cursor (resume with the printed next cursor).
    Sync {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// Start after this log position (0: from the beginning).
        #[arg(long, default_value_t = 0)]
        cursor: u64,
        /// Most entries per request (server default 100, at most 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Include each bundle's transactions.
        #[arg(long)]
        include_transactions: bool,
        /// Keep asking until the log is exhausted.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What to digest: exactly one of a file, a string, or the digest itself.
#[derive(Debug, Args, Clone)]
#[group(required = true, multiple = false)]
pub struct DigestInput {
    /// SHA-256 of this file's contents.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// SHA-256 of this text (UTF-8).
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// The 32-byte digest itself (64 hex digits).
    #[arg(long, value_name = "HEX")]
    pub digest: Option<String>,
}

/// Optional digest input of `verify-stamp` (checks the receipt covers this content).
#[derive(Debug, Args, Clone)]
#[group(required = false, multiple = false)]
pub struct OptDigestInput {
    /// Also check that the receipt covers this file's SHA-256.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Also check that the receipt covers this text's SHA-256.
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// Also check that the receipt covers this digest (64 hex digits).
    #[arg(long, value_name = "HEX")]
    pub digest: Option<String>,
}

/// `xtmp registry ...`
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Read one entry (KEY), or the entries under --prefix.
    Get {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The key.
        #[arg(
            value_name = "KEY",
            required_unless_present = "prefix",
            conflicts_with = "prefix"
        )]
        key: Option<String>,
        /// List the entries whose key starts with this, in key order.
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        /// With --prefix: continue after this key.
        #[arg(long, value_name = "KEY", requires = "prefix")]
        after: Option<String>,
        /// With --prefix: most entries (server default 100, at most 1000).
        #[arg(long, requires = "prefix")]
        limit: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write an entry (compare-and-set, signed by the owner's wallet).
    Set {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The owner's wallet file (a new entry belongs to it).
        #[arg(long, short, value_name = "FILE")]
        wallet: PathBuf,
        /// The key.
        #[arg(value_name = "KEY")]
        key: String,
        /// The value (UTF-8).
        #[arg(
            value_name = "VALUE",
            required_unless_present = "value_file",
            conflicts_with = "value_file"
        )]
        value: Option<String>,
        /// Read the value from a file (`-` for standard input).
        #[arg(long, value_name = "FILE")]
        value_file: Option<PathBuf>,
        /// The version being replaced (0 creates the entry); the write fails with
        /// STALE_VERSION if the entry has moved on. Default: the current version, read
        /// just before.
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Have the server sign a timestamped receipt over a SHA-256 digest.
    Stamp {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// What to stamp.
        #[command(flatten)]
        input: DigestInput,
        /// Write the receipt (JSON) to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a stamp receipt offline against the server's signing public key.
    VerifyStamp {
        /// The receipt file (JSON, as written by `registry stamp --out`).
        #[arg(long, value_name = "FILE")]
        receipt: PathBuf,
        /// The server's ML-DSA-65 signing public key: `<data_dir>/services-signing.key.pub`
        /// on the server, `xtmp tlsls issuer --out FILE` remotely, or the hex itself.
        #[arg(long, value_name = "FILE_OR_HEX")]
        signing_key: String,
        /// Optionally, the content the receipt must cover.
        #[command(flatten)]
        input: OptDigestInput,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// When a streaming command stops.
#[derive(Debug, Args, Clone)]
pub struct StreamLimit {
    /// Stop after this many pushes.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub for_: Option<Duration>,
}

/// `xtmp subscribe ...`: print server pushes, one per line, until Ctrl-C, --count or --for.
#[derive(Debug, Subcommand)]
pub enum SubscribeCommand {
    /// Changes of chosen wallets, bundles and registry keys (`LiveUpdates`).
    Live {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// A wallet to watch: address, wallet file or public key file. Repeatable.
        #[arg(long, short, value_name = "FILE_OR_ADDR")]
        wallet: Vec<String>,
        /// A bundle id to watch. Repeatable.
        #[arg(long, value_name = "BUNDLE_ID")]
        bundle: Vec<String>,
        /// A registry key to watch. Repeatable.
        #[arg(long, value_name = "KEY")]
        key: Vec<String>,
        /// When to stop.
        #[command(flatten)]
        limit: StreamLimit,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Every server event, or the chosen kinds (`EventStream`).
    Events {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// Event kind: wallet, bundle, registry, lock, certificate, stamp. Repeatable;
        /// default all.
        #[arg(long, value_name = "KIND")]
        kind: Vec<String>,
        /// When to stop.
        #[command(flatten)]
        limit: StreamLimit,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The server's metrics, pushed at an interval (`MetricsStream`).
    Metrics {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// Push interval (100ms to 1h).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration_arg)]
        interval: Duration,
        /// When to stop.
        #[command(flatten)]
        limit: StreamLimit,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// `xtmp qlock ...`: named locks with leases and fencing tokens.
///
/// A lock belongs to the session that acquired it, so `acquire` keeps its connection
/// open while it holds the lock: it runs a command (`-- CMD ARGS`) and releases when the
/// command ends, or it holds until Ctrl-C/SIGTERM, --hold, or `qlock release` through its
/// --control socket (`qlock renew` also goes through that socket).
#[derive(Debug, Subcommand)]
pub enum QlockCommand {
    /// Take a lock and hold it (see `xtmp qlock --help`).
    Acquire {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The lock name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Lease length; renewed automatically at a third of it while held (unless
        /// --no-auto-renew).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration_arg)]
        lease: Duration,
        /// Authenticate as this wallet first (shown as the holder by `qlock inspect`).
        #[arg(long, short, value_name = "FILE")]
        wallet: Option<PathBuf>,
        /// A Unix socket for `xtmp qlock renew|release --control` (created; removed at exit).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// Release after this long.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        hold: Option<Duration>,
        /// Let the lease run out instead of renewing it (then exit with status 1).
        #[arg(long)]
        no_auto_renew: bool,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
        /// A command to run while holding the lock, with XTMP_QLOCK_NAME and
        /// XTMP_QLOCK_FENCING_TOKEN in its environment; the exit status is its status.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Renew the lease of a lock held by `qlock acquire --control PATH`.
    Renew {
        /// The holder's control socket.
        #[arg(long, value_name = "PATH")]
        control: PathBuf,
        /// New lease from now (default: the holder's --lease).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        lease: Option<Duration>,
        /// How long to wait for the holder's answer.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration_arg)]
        timeout: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release a lock held by `qlock acquire --control PATH` (the holder then exits).
    Release {
        /// The holder's control socket.
        #[arg(long, value_name = "PATH")]
        control: PathBuf,
        /// How long to wait for the holder's answer.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration_arg)]
        timeout: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show who holds a lock, its fencing token and lease end.
    Inspect {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The lock name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which certificate: by serial or from its file.
#[derive(Debug, Args, Clone)]
#[group(required = true, multiple = false)]
pub struct CertRef {
    /// The certificate's serial number.
    #[arg(long)]
    pub serial: Option<u64>,
    /// The certificate file (JSON, as written by `tlsls issue --out`).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
}

/// `xtmp tlsls ...`: certificates binding a subject to an XTMP static key, signed by the
/// server's ML-DSA issuer key.
///
/// `issue`, `renew` and `revoke` need proof of the certified key: connect with
/// `--client-key` set to that key's secret file, or pass `--wallet` with the mint
/// authority's wallet.
#[derive(Debug, Subcommand)]
pub enum TlslsCommand {
    /// Issue a certificate for a subject and an XTMP static key.
    Issue {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// Subject name (1 to 255 printable ASCII characters).
        #[arg(long)]
        subject: String,
        /// The static public key to certify: a `.pub` file from `xtmp keygen` or the hex.
        /// Default: the public key of --client-key.
        #[arg(long, value_name = "FILE_OR_HEX", conflicts_with = "fingerprint")]
        key: Option<String>,
        /// The SHA-256 fingerprint of the key to certify (64 hex digits).
        #[arg(long, value_name = "HEX")]
        fingerprint: Option<String>,
        /// Validity from now (default and maximum are server settings).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        validity: Option<Duration>,
        /// Authenticate as this wallet first (the mint authority may manage any key).
        #[arg(long, short, value_name = "FILE")]
        wallet: Option<PathBuf>,
        /// Write the certificate (JSON) to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Have the server check a certificate: issuer, signature, revocation, validity.
    Validate {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// The certificate file.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a certificate offline (issuer, signature, validity; not revocation).
    Verify {
        /// The certificate file.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The issuer's ML-DSA-65 public key (`xtmp tlsls issuer --out FILE`, or
        /// `<data_dir>/services-signing.key.pub` on the server), or the hex.
        #[arg(long, value_name = "FILE_OR_HEX")]
        issuer_key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a fresh certificate (new serial) for the subject and key of an existing one.
    Renew {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// Which certificate.
        #[command(flatten)]
        which: CertRef,
        /// Validity from now.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        validity: Option<Duration>,
        /// Authenticate as this wallet first (the mint authority).
        #[arg(long, short, value_name = "FILE")]
        wallet: Option<PathBuf>,
        /// Write the new certificate (JSON) to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a certificate.
    Revoke {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// Which certificate.
        #[command(flatten)]
        which: CertRef,
        /// Why (free text, at most 256 bytes).
        #[arg(long)]
        reason: Option<String>,
        /// Authenticate as this wallet first (the mint authority).
        #[arg(long, short, value_name = "FILE")]
        wallet: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List revoked certificates.
    Crl {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// Continue after this serial.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Most entries (at most 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the issuer's (the server's) ML-DSA-65 public key, for `tlsls verify` and
    /// `registry verify-stamp`.
    Issuer {
        /// Connection settings.
        #[command(flatten)]
        conn: ClientConn,
        /// Write the public key (hex) to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
