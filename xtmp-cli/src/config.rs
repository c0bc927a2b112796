//! `xtmp.toml`: the server's configuration file.
//!
//! The seed's file works unmodified:
//!
//! ```toml
//! [xtmp_server]
//! bind_address = "127.0.0.1:8080"
//! max_connections = 10000
//! session_timeout = "3600s"
//! enable_compression = true
//! enable_encryption = true
//!
//! [xtmp_security]
//! encryption_type = "PostQuantum"
//! key_rotation_interval = "300s"
//! require_authentication = true
//! ```
//!
//! Every key is optional; missing keys take the defaults of [`XtmpConfig::default`]
//! (documented key by key in `README.md`). Unknown keys, values of the wrong type or out of
//! range, and TOML syntax errors are reported as a [`ConfigError`] that names the file,
//! the line and column, the key and the value as written.
//!
//! Relative paths (`data_dir`, `static_key_file`, `authorized_keys_file`, and those of
//! `[xtmp_services]`) are resolved against the directory of the configuration file;
//! `static_key_file` and `authorized_keys_file` default to files inside `data_dir`.
//!
//! The optional `[xtmp_services]` table configures the application layer (wallets,
//! bundles, registry, streams, QLOCK, TLSLS; crate `xtmp-services`), which `xtmp server
//! start` serves by default: see [`ServicesSection`].

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xtmp_proto::EncryptionType;
use xtmp_services::{Address, GenesisAllocation, ServicesConfig};

use crate::duration::{format_duration, HumanDuration};

/// Environment variable that overrides the default data directory.
pub const DATA_DIR_ENV: &str = "XTMP_DATA_DIR";
/// Data directory used when neither the file nor [`DATA_DIR_ENV`] names one.
pub const DEFAULT_DATA_DIR: &str = "./xtmp-data";
/// Default listen address of the XTMP server.
pub const DEFAULT_BIND_ADDRESS: &str = "127.0.0.1:8080";
/// Default listen address of the admin HTTP endpoint.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:8081";
/// Largest `max_payload` accepted: 16 MiB, the protocol's stream-transport default.
pub const MAX_PAYLOAD_LIMIT: u32 = xtmp_proto::header::DEFAULT_MAX_STREAM_PAYLOAD;
/// Smallest `max_payload` accepted (the runtime needs room for control messages).
pub const MIN_PAYLOAD_LIMIT: u32 = 4096;
/// Largest configuration file read.
pub const CONFIG_FILE_MAX: u64 = 1024 * 1024;
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The effective configuration: every value resolved (defaults filled in, paths made
/// absolute where a configuration file gave a base directory).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct XtmpConfig {
    /// `[xtmp_server]`.
    pub xtmp_server: ServerSection,
    /// `[xtmp_security]`.
    pub xtmp_security: SecuritySection,
    /// `[xtmp_services]`.
    pub xtmp_services: ServicesSection,
}

/// The `[xtmp_server]` table.
#[derive(Clone, PartialEq, Serialize)]
pub struct ServerSection {
    /// Address the XTMP TCP listener binds to.
    pub bind_address: SocketAddr,
    /// Most concurrent connections; one more is refused with an `Error` (`SERVER_BUSY`).
    pub max_connections: usize,
    /// A session idle for this long is closed.
    #[serde(serialize_with = "ser_duration")]
    pub session_timeout: Duration,
    /// Compress payloads above `compression_threshold` bytes (LZ4).
    pub enable_compression: bool,
    /// Payloads larger than this many bytes are compressed when compression is on.
    pub compression_threshold: usize,
    /// With `false`, sessions use integrity-only protection (`encryption_type = None`);
    /// needs `allow_plaintext = true`.
    pub enable_encryption: bool,
    /// Directory for the server's key pair and other state.
    pub data_dir: PathBuf,
    /// Address of the admin HTTP endpoint (`/metrics`, `/status`, `/sessions`).
    pub admin_address: SocketAddr,
    /// Bearer token required by the admin endpoint (mandatory when `admin_address` is not
    /// a loopback address). Never printed.
    #[serde(serialize_with = "ser_secret")]
    pub admin_token: Option<String>,
    /// Largest payload accepted or sent, in bytes.
    pub max_payload: u32,
    /// A peer that stalls mid-frame for this long is disconnected.
    #[serde(serialize_with = "ser_duration")]
    pub read_timeout: Duration,
    /// A handshake not finished within this time is abandoned.
    #[serde(serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    #[serde(serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    /// Interval between heartbeats on an otherwise quiet session.
    #[serde(serialize_with = "ser_duration")]
    pub heartbeat_interval: Duration,
    /// Handshakes accepted per second from one IP address (excess gets `RATE_LIMITED`).
    pub handshakes_per_second_per_ip: u32,
    /// Messages queued per connection before back-pressure or refusal.
    pub max_queue_per_connection: usize,
    /// A write to a peer must complete within this long.
    #[serde(serialize_with = "ser_duration")]
    pub write_timeout: Duration,
    /// Above this many handshakes in progress, clients must first echo a cookie
    /// (`Retry`) before the server does any KEM work.
    pub retry_threshold: u64,
    /// Request handlers running at once per connection.
    pub max_inflight_per_connection: usize,
    /// Server-push streams open at once per connection.
    pub max_streams_per_connection: usize,
    /// Address of the WebSocket listener (`ws://`, or `wss://` with the TLS files); none:
    /// no WebSocket listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_bind_address: Option<SocketAddr>,
    /// Request path of the WebSocket endpoint.
    pub ws_path: String,
    /// PEM certificate chain (leaf first) that makes the WebSocket listener `wss://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_tls_cert_file: Option<PathBuf>,
    /// PEM private key of `ws_tls_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_tls_key_file: Option<PathBuf>,
    /// Address of the UDP listener (`UdpFast` sessions and the UDP path of
    /// `TcpUdpHybrid` sessions); none: no UDP. It may share the TCP port number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_bind_address: Option<SocketAddr>,
    /// Sessions may start over UDP (`UdpFast`).
    pub enable_udp_sessions: bool,
    /// TCP sessions may add a UDP path (`TcpUdpHybrid`).
    pub enable_hybrid: bool,
    /// Largest datagram sent, XTMP header included (1200 to 65507 bytes).
    pub datagram_budget: usize,
    /// Message types a hybrid session sends over UDP while its UDP path is up (names or
    /// codes); everything else goes over TCP.
    pub hybrid_udp_types: Vec<String>,
}

impl fmt::Debug for ServerSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written so the admin token never reaches a log line.
        f.debug_struct("ServerSection")
            .field("bind_address", &self.bind_address)
            .field("max_connections", &self.max_connections)
            .field("session_timeout", &self.session_timeout)
            .field("enable_compression", &self.enable_compression)
            .field("compression_threshold", &self.compression_threshold)
            .field("enable_encryption", &self.enable_encryption)
            .field("data_dir", &self.data_dir)
            .field("admin_address", &self.admin_address)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_payload", &self.max_payload)
            .field("read_timeout", &self.read_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field(
                "handshakes_per_second_per_ip",
                &self.handshakes_per_second_per_ip,
            )
            .field("max_queue_per_connection", &self.max_queue_per_connection)
            .field("write_timeout", &self.write_timeout)
            .field("retry_threshold", &self.retry_threshold)
            .field(
                "max_inflight_per_connection",
                &self.max_inflight_per_connection,
            )
            .field(
                "max_streams_per_connection",
                &self.max_streams_per_connection,
            )
            .field("ws_bind_address", &self.ws_bind_address)
            .field("ws_path", &self.ws_path)
            .field("ws_tls_cert_file", &self.ws_tls_cert_file)
            .field("ws_tls_key_file", &self.ws_tls_key_file)
            .field("udp_bind_address", &self.udp_bind_address)
            .field("enable_udp_sessions", &self.enable_udp_sessions)
            .field("enable_hybrid", &self.enable_hybrid)
            .field("datagram_budget", &self.datagram_budget)
            .field("hybrid_udp_types", &self.hybrid_udp_types)
            .finish()
    }
}

/// The `[xtmp_security]` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecuritySection {
    /// Record protection for sessions.
    #[serde(serialize_with = "ser_encryption")]
    pub encryption_type: EncryptionType,
    /// Session keys are rotated (fresh hybrid KEM exchange) this often.
    #[serde(serialize_with = "ser_duration")]
    pub key_rotation_interval: Duration,
    /// With `true`, only clients whose key is in `authorized_keys_file` may connect
    /// (mutual authentication, `pqIK`).
    pub require_authentication: bool,
    /// File holding the server's secret key seed (hex), created with mode 0600.
    pub static_key_file: PathBuf,
    /// File listing authorized client keys (hex fingerprints or public keys, one a line).
    pub authorized_keys_file: PathBuf,
    /// Whether `authorized_keys_file` was set explicitly (then it must exist).
    #[serde(skip)]
    pub authorized_keys_file_explicit: bool,
    /// Accept sessions without encryption (`encryption_type = None`, integrity only).
    pub allow_plaintext: bool,
}

/// Hex digits of an ML-DSA-65 public key (`mint_authority`).
pub const MINT_AUTHORITY_HEX_LEN: usize = 2 * xtmp_services::crypto::PUBLIC_KEY_LEN;

/// The `[xtmp_services]` table: the application layer served by `xtmp server start`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicesSection {
    /// Serve the application operations (wallets, bundles, registry, streams, QLOCK,
    /// TLSLS). With `false` the server answers them with the runtime's built-in demo
    /// handlers (echo and tick streams).
    pub enabled: bool,
    /// Directory of the store (`xtmp-services.redb`) and the signing key; default: the
    /// server's `data_dir`.
    pub data_dir: PathBuf,
    /// The server's ML-DSA-65 signing key (stamps, certificates): a 32-byte seed as hex,
    /// created with mode 0600 on first start, public key beside it as `<file>.pub`.
    pub signing_key_file: PathBuf,
    /// The mint authority's ML-DSA-65 public key as hex (3904 digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mint_authority: Option<String>,
    /// A file holding the mint authority's public key (a wallet's `.pub` file, or the
    /// wallet file itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mint_authority_file: Option<PathBuf>,
    /// Without `mint_authority` and `mint_authority_file`: create (on first start) and use
    /// the wallet `<data_dir>/mint-authority.wallet` as the mint authority. With `false`
    /// and no authority, value enters only through `genesis`.
    pub auto_mint_authority: bool,
    /// Allocations applied once, on the first start with an empty store.
    pub genesis: Vec<GenesisAllocation>,
    /// How long a wallet-auth challenge stays valid.
    #[serde(serialize_with = "ser_duration")]
    pub challenge_ttl: Duration,
    /// Longest QLOCK lease.
    #[serde(serialize_with = "ser_duration")]
    pub max_lease: Duration,
    /// Certificate validity when a request names none.
    #[serde(serialize_with = "ser_duration")]
    pub default_cert_validity: Duration,
    /// Longest certificate validity.
    #[serde(serialize_with = "ser_duration")]
    pub max_cert_validity: Duration,
    /// Most transactions in one bundle (1 to 1000).
    pub max_bundle_transactions: usize,
    /// Largest registry value in bytes (1 to 65536).
    pub max_registry_value: usize,
    /// Most write operations per storage commit (1 disables group commit).
    pub group_commit_max_batch: usize,
    /// Notifications buffered for slow subscribers.
    pub event_capacity: usize,
    /// Most sessions with wallet-auth state at once.
    pub max_sessions: usize,
    /// Most locks held at once.
    pub max_locks: usize,
    /// Most locks one session may hold.
    pub max_locks_per_session: usize,
}

impl ServicesSection {
    /// The defaults, with the store in `data_dir`.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        let d = ServicesConfig::default();
        Self {
            enabled: true,
            signing_key_file: data_dir.join("services-signing.key"),
            data_dir,
            mint_authority: None,
            mint_authority_file: None,
            auto_mint_authority: true,
            genesis: Vec::new(),
            challenge_ttl: Duration::from_millis(d.challenge_ttl_ms()),
            max_lease: Duration::from_millis(d.max_lease_ms()),
            default_cert_validity: Duration::from_secs(d.default_cert_validity_secs()),
            max_cert_validity: Duration::from_secs(d.max_cert_validity_secs()),
            max_bundle_transactions: d.max_bundle_transactions(),
            max_registry_value: d.max_registry_value(),
            group_commit_max_batch: d.group_commit_max_batch(),
            event_capacity: d.event_capacity(),
            max_sessions: d.max_sessions(),
            max_locks: d.max_locks(),
            max_locks_per_session: d.max_locks_per_session(),
        }
    }

    /// The wallet file used as mint authority when none is configured and
    /// `auto_mint_authority` is on.
    pub fn auto_mint_authority_file(&self) -> PathBuf {
        self.data_dir.join("mint-authority.wallet")
    }

    /// The `mint_authority` key decoded (validated when the configuration was loaded).
    pub fn mint_authority_bytes(&self) -> Option<Vec<u8>> {
        self.mint_authority
            .as_deref()
            .and_then(|h| hex::decode(h.strip_prefix("0x").unwrap_or(h)).ok())
    }

    /// The `xtmp-services` settings, with the mint authority's public key (resolved by
    /// the caller from `mint_authority`, `mint_authority_file` or the automatic wallet).
    pub fn to_services_config(&self, mint_authority: Option<Vec<u8>>) -> ServicesConfig {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut c = ServicesConfig::new(&self.data_dir);
        c.set_signing_key_file(&self.signing_key_file)
            .set_genesis(self.genesis.clone())
            .set_mint_authority(mint_authority)
            .set_challenge_ttl_ms(ms(self.challenge_ttl))
            .set_max_lease_ms(ms(self.max_lease))
            .set_cert_validity_secs(
                self.default_cert_validity.as_secs(),
                self.max_cert_validity.as_secs(),
            )
            .set_max_bundle_transactions(self.max_bundle_transactions)
            .set_max_registry_value(self.max_registry_value)
            .set_group_commit_max_batch(self.group_commit_max_batch)
            .set_event_capacity(self.event_capacity)
            .set_max_sessions(self.max_sessions)
            .set_lock_limits(self.max_locks, self.max_locks_per_session);
        c
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn ser_secret<S: serde::Serializer>(t: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

fn ser_encryption<S: serde::Serializer>(e: &EncryptionType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(e.name())
}

/// The data directory used when no file names one: `$XTMP_DATA_DIR`, else `./xtmp-data`.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os(DATA_DIR_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    }
}

fn addr(s: &str) -> SocketAddr {
    // The constants above are valid socket addresses; a typo there is caught by the
    // `defaults_are_valid` unit test.
    s.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)))
}

impl Default for XtmpConfig {
    /// The embedded defaults (used by `xtmp server start` without `--config`).
    fn default() -> Self {
        let data_dir = default_data_dir();
        Self {
            xtmp_server: ServerSection {
                bind_address: addr(DEFAULT_BIND_ADDRESS),
                max_connections: 10_000,
                session_timeout: Duration::from_secs(3600),
                enable_compression: true,
                compression_threshold: 1024,
                enable_encryption: true,
                admin_address: addr(DEFAULT_ADMIN_ADDRESS),
                admin_token: None,
                max_payload: MAX_PAYLOAD_LIMIT,
                read_timeout: Duration::from_secs(30),
                handshake_timeout: Duration::from_secs(10),
                drain_timeout: Duration::from_secs(10),
                heartbeat_interval: Duration::from_secs(15),
                handshakes_per_second_per_ip: 100,
                max_queue_per_connection: 1024,
                write_timeout: Duration::from_secs(30),
                retry_threshold: 256,
                max_inflight_per_connection: 64,
                max_streams_per_connection: 64,
                ws_bind_address: None,
                ws_path: xtmp::ws::DEFAULT_PATH.to_string(),
                ws_tls_cert_file: None,
                ws_tls_key_file: None,
                udp_bind_address: None,
                enable_udp_sessions: true,
                enable_hybrid: true,
                datagram_budget: xtmp_proto::datagram::DEFAULT_DATAGRAM_BUDGET,
                hybrid_udp_types: xtmp::HybridPolicy::default()
                    .types()
                    .iter()
                    .filter_map(|t| t.name().map(str::to_string))
                    .collect(),
                data_dir: data_dir.clone(),
            },
            xtmp_security: SecuritySection {
                encryption_type: EncryptionType::PostQuantum,
                key_rotation_interval: Duration::from_secs(300),
                require_authentication: false,
                static_key_file: data_dir.join("server.key"),
                authorized_keys_file: data_dir.join("authorized_keys"),
                authorized_keys_file_explicit: false,
                allow_plaintext: false,
            },
            xtmp_services: ServicesSection::with_data_dir(data_dir),
        }
    }
}

// ---------------------------------------------------------------------------------------
// File layout (what serde sees)
// ---------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    xtmp_server: FileServer,
    #[serde(default)]
    xtmp_security: FileSecurity,
    #[serde(default)]
    xtmp_services: FileServices,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileServer {
    bind_address: Option<SocketAddr>,
    max_connections: Option<usize>,
    session_timeout: Option<HumanDuration>,
    enable_compression: Option<bool>,
    compression_threshold: Option<usize>,
    enable_encryption: Option<bool>,
    data_dir: Option<PathBuf>,
    admin_address: Option<SocketAddr>,
    admin_token: Option<String>,
    max_payload: Option<u32>,
    read_timeout: Option<HumanDuration>,
    handshake_timeout: Option<HumanDuration>,
    drain_timeout: Option<HumanDuration>,
    heartbeat_interval: Option<HumanDuration>,
    handshakes_per_second_per_ip: Option<u32>,
    max_queue_per_connection: Option<usize>,
    write_timeout: Option<HumanDuration>,
    retry_threshold: Option<u64>,
    max_inflight_per_connection: Option<usize>,
    max_streams_per_connection: Option<usize>,
    ws_bind_address: Option<SocketAddr>,
    ws_path: Option<String>,
    ws_tls_cert_file: Option<PathBuf>,
    ws_tls_key_file: Option<PathBuf>,
    udp_bind_address: Option<SocketAddr>,
    enable_udp_sessions: Option<bool>,
    enable_hybrid: Option<bool>,
    datagram_budget: Option<usize>,
    hybrid_udp_types: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSecurity {
    encryption_type: Option<EncryptionName>,
    key_rotation_interval: Option<HumanDuration>,
    require_authentication: Option<bool>,
    static_key_file: Option<PathBuf>,
    authorized_keys_file: Option<PathBuf>,
    allow_plaintext: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileServices {
    enabled: Option<bool>,
    data_dir: Option<PathBuf>,
    signing_key_file: Option<PathBuf>,
    mint_authority: Option<String>,
    mint_authority_file: Option<PathBuf>,
    auto_mint_authority: Option<bool>,
    genesis: Option<Vec<FileGenesis>>,
    challenge_ttl: Option<HumanDuration>,
    max_lease: Option<HumanDuration>,
    default_cert_validity: Option<HumanDuration>,
    max_cert_validity: Option<HumanDuration>,
    max_bundle_transactions: Option<usize>,
    max_registry_value: Option<usize>,
    group_commit_max_batch: Option<usize>,
    event_capacity: Option<usize>,
    max_sessions: Option<usize>,
    max_locks: Option<usize>,
    max_locks_per_session: Option<usize>,
}

/// One `genesis` entry: `{ address = "xw…", amount = 1000 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGenesis {
    address: Address,
    amount: u64,
}

/// `encryption_type` as written in the file (case-insensitive names).
struct EncryptionName(EncryptionType);

impl<'de> Deserialize<'de> for EncryptionName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EncryptionName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of \"PostQuantum\", \"Aes256Gcm\", \"ChaCha20Poly1305\", \"None\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EncryptionName, E> {
                EncryptionType::from_name(v).map(EncryptionName).ok_or_else(|| {
                    E::custom(format!(
                        "unknown encryption type {v:?}: expected one of \"PostQuantum\", \"Aes256Gcm\", \"ChaCha20Poly1305\", \"None\""
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

// ---------------------------------------------------------------------------------------
// Errors with locations
// ---------------------------------------------------------------------------------------

/// A configuration problem, located in the file. Derefs to its [`ConfigErrorDetails`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(Box<ConfigErrorDetails>);

impl std::ops::Deref for ConfigError {
    type Target = ConfigErrorDetails;
    fn deref(&self) -> &ConfigErrorDetails {
        &self.0
    }
}

impl From<ConfigErrorDetails> for ConfigError {
    fn from(d: ConfigErrorDetails) -> Self {
        Self(Box::new(d))
    }
}

/// Where and what: the fields of a [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrorDetails {
    /// The file, when the configuration came from one.
    pub file: Option<PathBuf>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// Dotted key (`xtmp_server.session_timeout`), when known.
    pub key: Option<String>,
    /// The value as written in the file, when known.
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
    /// The offending source line and a caret marker, when known.
    pub snippet: Option<String>,
}

impl fmt::Display for ConfigErrorDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "{}", p.display())?,
            None => f.write_str("configuration")?,
        }
        if let Some(l) = self.line {
            write!(f, ": line {l}")?;
            if let Some(c) = self.column {
                write!(f, ", column {c}")?;
            }
        }
        f.write_str(": ")?;
        match (&self.key, &self.value) {
            (Some(k), Some(v)) => write!(f, "key `{k}` = {v}: ")?,
            (Some(k), None) => write!(f, "key `{k}`: ")?,
            (None, Some(v)) => write!(f, "value {v}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.snippet {
            write!(f, "\n{s}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for ConfigError {}

/// One key of the document with its location.
#[derive(Debug, Clone)]
struct KeyEntry {
    path: String,
    key_span: Range<usize>,
    value_span: Range<usize>,
}

/// Source text plus an index from dotted keys to spans, for locating errors.
struct Located<'a> {
    file: Option<&'a Path>,
    src: &'a str,
    keys: Vec<KeyEntry>,
}

impl<'a> Located<'a> {
    fn new(file: Option<&'a Path>, src: &'a str) -> Self {
        Self {
            file,
            src,
            keys: Vec::new(),
        }
    }

    fn index(&mut self, table: &toml::de::DeTable<'_>, prefix: &str) {
        for (k, v) in table.iter() {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            self.keys.push(KeyEntry {
                path: path.clone(),
                key_span: k.span(),
                value_span: v.span(),
            });
            self.index_value(v.get_ref(), &path);
        }
    }

    /// Tables and arrays inside a value: `genesis[0].address`.
    fn index_value(&mut self, v: &toml::de::DeValue<'_>, path: &str) {
        if let Some(t) = v.as_table() {
            self.index(t, path);
        } else if let Some(a) = v.as_array() {
            for (i, item) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                // An element has no key of its own: an empty key span never matches.
                let start = item.span().start;
                self.keys.push(KeyEntry {
                    path: p.clone(),
                    key_span: start..start,
                    value_span: item.span(),
                });
                self.index_value(item.get_ref(), &p);
            }
        }
    }

    /// 1-based line and column of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = self.src.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self
            .src
            .get(line_start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }

    fn snippet(&self, span: &Range<usize>) -> Option<String> {
        let start = span.start.min(self.src.len());
        let line_start = self.src.get(..start)?.rfind('\n').map_or(0, |i| i + 1);
        let line_end = self
            .src
            .get(start..)?
            .find('\n')
            .map_or(self.src.len(), |i| start + i);
        let text = self.src.get(line_start..line_end)?.trim_end_matches('\r');
        let (line, col) = self.line_col(start);
        let width = self
            .src
            .get(start..span.end.min(line_end).max(start))
            .map_or(1, |s| s.chars().count().max(1));
        let gutter = " ".repeat(line.to_string().len());
        Some(format!(
            "{gutter} |\n{line} | {text}\n{gutter} | {}{}",
            " ".repeat(col.saturating_sub(1)),
            "^".repeat(width)
        ))
    }

    fn raw(&self, span: &Range<usize>) -> Option<String> {
        let s = self.src.get(span.clone())?.trim();
        if s.is_empty() || s.contains('\n') {
            // Tables: their span is the whole section; show nothing rather than a page.
            return None;
        }
        Some(s.to_string())
    }

    /// The innermost key whose key or value contains `offset`.
    fn entry_at(&self, offset: usize) -> Option<&KeyEntry> {
        self.keys
            .iter()
            .filter(|e| e.key_span.contains(&offset) || e.value_span.contains(&offset))
            .min_by_key(|e| {
                if e.key_span.contains(&offset) {
                    e.key_span.len()
                } else {
                    e.value_span.len()
                }
            })
    }

    fn entry(&self, path: &str) -> Option<&KeyEntry> {
        self.keys.iter().find(|e| e.path == path)
    }

    fn error_at(&self, span: Option<Range<usize>>, message: String) -> ConfigErrorDetails {
        let mut e = ConfigErrorDetails {
            file: self.file.map(Path::to_path_buf),
            line: None,
            column: None,
            key: None,
            value: None,
            message,
            snippet: None,
        };
        if let Some(span) = span {
            let (l, c) = self.line_col(span.start);
            e.line = Some(l);
            e.column = Some(c);
            e.snippet = self.snippet(&span);
            if let Some(entry) = self.entry_at(span.start) {
                e.key = Some(entry.path.clone());
                e.value = self.raw(&entry.value_span);
            } else if let Some((k, v)) = self.guess_key_on_line(span.start) {
                e.key = Some(k);
                e.value = v;
            }
        }
        e
    }

    /// For syntax errors (no parsed key to point at): `key = value` on the error's line,
    /// qualified by the closest `[table]` header above it.
    fn guess_key_on_line(&self, offset: usize) -> Option<(String, Option<String>)> {
        let start = offset.min(self.src.len());
        let before = self.src.get(..start)?;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = self
            .src
            .get(start..)?
            .find('\n')
            .map_or(self.src.len(), |i| start + i);
        let line = self.src.get(line_start..line_end)?.trim();
        let (k, v) = line.split_once('=')?;
        let k = k.trim();
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return None;
        }
        let section = before
            .get(..line_start)?
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('[') && l.ends_with(']'))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        let key = match section {
            Some(s) if !s.is_empty() => format!("{s}.{k}"),
            _ => k.to_string(),
        };
        let v = v.trim();
        Some((key, (!v.is_empty()).then(|| v.to_string())))
    }

    /// An error about a key (after deserialization): located at its value.
    fn key_error(&self, path: &str, message: String) -> ConfigErrorDetails {
        match self.entry(path) {
            Some(entry) => {
                let mut e = self.error_at(Some(entry.value_span.clone()), message);
                e.key = Some(path.to_string());
                e.value = self.raw(&entry.value_span);
                e
            }
            None => ConfigErrorDetails {
                file: self.file.map(Path::to_path_buf),
                line: None,
                column: None,
                key: Some(path.to_string()),
                value: None,
                message,
                snippet: None,
            },
        }
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (and "unknown variant"):
/// the closest expected name, when it is close enough to be a typo.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (given, expected) = rest.split_once('`')?;
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|cand| (edit_distance(given, cand), cand))
        .min_by_key(|(d, _)| *d)?;
    (best.0 <= 3 && best.0 < given.len()).then(|| format!(" (did you mean `{}`?)", best.1))
}

/// Levenshtein distance (inputs are short key names).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// Non-fatal remarks found while loading (printed by `config check` and at start).
pub type Warnings = Vec<String>;

impl XtmpConfig {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// A [`ConfigError`] for an unreadable file, a TOML syntax error, an unknown key, a
    /// value of the wrong type or out of range, or an inconsistent combination.
    pub fn load(path: &Path) -> Result<(Self, Warnings), ConfigError> {
        let bytes = crate::read_capped(path, CONFIG_FILE_MAX).map_err(|e| {
            ConfigError::from(ConfigErrorDetails {
                file: Some(path.to_path_buf()),
                line: None,
                column: None,
                key: None,
                value: None,
                message: format!("cannot read the file: {e}"),
                snippet: None,
            })
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let src = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let loc = Located::new(Some(path), &src);
            let (line, column) = loc.line_col(offset);
            ConfigError::from(ConfigErrorDetails {
                file: Some(path.to_path_buf()),
                line: Some(line),
                column: Some(column),
                key: None,
                value: None,
                message: "the file is not valid UTF-8".into(),
                snippet: None,
            })
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, Some(path), &base)
    }

    /// Parses and validates configuration text. `file` is used in error messages;
    /// relative paths in the text are resolved against `base_dir`.
    ///
    /// # Errors
    /// As [`XtmpConfig::load`].
    pub fn from_toml(
        text: &str,
        file: Option<&Path>,
        base_dir: &Path,
    ) -> Result<(Self, Warnings), ConfigError> {
        let mut loc = Located::new(file, text);
        let doc = toml::de::DeTable::parse(text).map_err(|e| {
            ConfigError::from(loc.error_at(e.span(), format!("TOML syntax error: {}", e.message())))
        })?;
        loc.index(doc.get_ref(), "");
        let raw: FileConfig = toml::from_str(text).map_err(|e| {
            let mut ce = loc.error_at(e.span(), e.message().to_string());
            if let Some(hint) = did_you_mean(e.message()) {
                ce.message.push_str(&hint);
            }
            if e.message().starts_with("unknown field") {
                // The span points at the key; name it and show its value.
                if let Some(span) = e.span() {
                    if let Some(entry) = loc.keys.iter().find(|k| k.key_span.contains(&span.start))
                    {
                        ce.key = Some(entry.path.clone());
                        ce.value = loc.raw(&entry.value_span);
                    }
                }
            }
            ConfigError::from(ce)
        })?;
        Self::resolve(raw, &loc, base_dir)
    }

    fn resolve(
        raw: FileConfig,
        loc: &Located<'_>,
        base: &Path,
    ) -> Result<(Self, Warnings), ConfigError> {
        let d = XtmpConfig::default();
        let s = raw.xtmp_server;
        let sec = raw.xtmp_security;
        let mut warnings = Vec::new();
        let abs = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let dur = |v: Option<HumanDuration>, def: Duration| v.map_or(def, |h| h.0);

        let data_dir = match s.data_dir {
            Some(p) => abs(p),
            None => d.xtmp_server.data_dir.clone(),
        };
        let server = ServerSection {
            bind_address: s.bind_address.unwrap_or(d.xtmp_server.bind_address),
            max_connections: s.max_connections.unwrap_or(d.xtmp_server.max_connections),
            session_timeout: dur(s.session_timeout, d.xtmp_server.session_timeout),
            enable_compression: s
                .enable_compression
                .unwrap_or(d.xtmp_server.enable_compression),
            compression_threshold: s
                .compression_threshold
                .unwrap_or(d.xtmp_server.compression_threshold),
            enable_encryption: s
                .enable_encryption
                .unwrap_or(d.xtmp_server.enable_encryption),
            admin_address: s.admin_address.unwrap_or(d.xtmp_server.admin_address),
            admin_token: s.admin_token,
            max_payload: s.max_payload.unwrap_or(d.xtmp_server.max_payload),
            read_timeout: dur(s.read_timeout, d.xtmp_server.read_timeout),
            handshake_timeout: dur(s.handshake_timeout, d.xtmp_server.handshake_timeout),
            drain_timeout: dur(s.drain_timeout, d.xtmp_server.drain_timeout),
            heartbeat_interval: dur(s.heartbeat_interval, d.xtmp_server.heartbeat_interval),
            handshakes_per_second_per_ip: s
                .handshakes_per_second_per_ip
                .unwrap_or(d.xtmp_server.handshakes_per_second_per_ip),
            max_queue_per_connection: s
                .max_queue_per_connection
                .unwrap_or(d.xtmp_server.max_queue_per_connection),
            write_timeout: dur(s.write_timeout, d.xtmp_server.write_timeout),
            retry_threshold: s.retry_threshold.unwrap_or(d.xtmp_server.retry_threshold),
            max_inflight_per_connection: s
                .max_inflight_per_connection
                .unwrap_or(d.xtmp_server.max_inflight_per_connection),
            max_streams_per_connection: s
                .max_streams_per_connection
                .unwrap_or(d.xtmp_server.max_streams_per_connection),
            ws_bind_address: s.ws_bind_address,
            ws_path: s.ws_path.unwrap_or(d.xtmp_server.ws_path),
            ws_tls_cert_file: s.ws_tls_cert_file.map(abs),
            ws_tls_key_file: s.ws_tls_key_file.map(abs),
            udp_bind_address: s.udp_bind_address,
            enable_udp_sessions: s
                .enable_udp_sessions
                .unwrap_or(d.xtmp_server.enable_udp_sessions),
            enable_hybrid: s.enable_hybrid.unwrap_or(d.xtmp_server.enable_hybrid),
            datagram_budget: s.datagram_budget.unwrap_or(d.xtmp_server.datagram_budget),
            hybrid_udp_types: s.hybrid_udp_types.unwrap_or(d.xtmp_server.hybrid_udp_types),
            data_dir: data_dir.clone(),
        };
        let authorized_keys_file_explicit = sec.authorized_keys_file.is_some();
        let security = SecuritySection {
            encryption_type: sec
                .encryption_type
                .map_or(d.xtmp_security.encryption_type, |e| e.0),
            key_rotation_interval: dur(
                sec.key_rotation_interval,
                d.xtmp_security.key_rotation_interval,
            ),
            require_authentication: sec
                .require_authentication
                .unwrap_or(d.xtmp_security.require_authentication),
            static_key_file: sec
                .static_key_file
                .map_or_else(|| data_dir.join("server.key"), abs),
            authorized_keys_file: sec
                .authorized_keys_file
                .map_or_else(|| data_dir.join("authorized_keys"), abs),
            authorized_keys_file_explicit,
            allow_plaintext: sec
                .allow_plaintext
                .unwrap_or(d.xtmp_security.allow_plaintext),
        };
        let sv = raw.xtmp_services;
        let services_dir = sv.data_dir.map_or_else(|| data_dir.clone(), abs);
        let dsv = ServicesSection::with_data_dir(services_dir.clone());
        let services = ServicesSection {
            enabled: sv.enabled.unwrap_or(dsv.enabled),
            signing_key_file: sv
                .signing_key_file
                .map_or_else(|| dsv.signing_key_file.clone(), abs),
            data_dir: services_dir,
            mint_authority: sv.mint_authority,
            mint_authority_file: sv.mint_authority_file.map(abs),
            auto_mint_authority: sv.auto_mint_authority.unwrap_or(dsv.auto_mint_authority),
            genesis: sv
                .genesis
                .unwrap_or_default()
                .into_iter()
                .map(|g| GenesisAllocation {
                    address: g.address,
                    amount: g.amount,
                })
                .collect(),
            challenge_ttl: dur(sv.challenge_ttl, dsv.challenge_ttl),
            max_lease: dur(sv.max_lease, dsv.max_lease),
            default_cert_validity: dur(sv.default_cert_validity, dsv.default_cert_validity),
            max_cert_validity: dur(sv.max_cert_validity, dsv.max_cert_validity),
            max_bundle_transactions: sv
                .max_bundle_transactions
                .unwrap_or(dsv.max_bundle_transactions),
            max_registry_value: sv.max_registry_value.unwrap_or(dsv.max_registry_value),
            group_commit_max_batch: sv
                .group_commit_max_batch
                .unwrap_or(dsv.group_commit_max_batch),
            event_capacity: sv.event_capacity.unwrap_or(dsv.event_capacity),
            max_sessions: sv.max_sessions.unwrap_or(dsv.max_sessions),
            max_locks: sv.max_locks.unwrap_or(dsv.max_locks),
            max_locks_per_session: sv
                .max_locks_per_session
                .unwrap_or(dsv.max_locks_per_session),
        };
        let cfg = XtmpConfig {
            xtmp_server: server,
            xtmp_security: security,
            xtmp_services: services,
        };
        cfg.validate(loc, &mut warnings)?;
        Ok((cfg, warnings))
    }

    /// Checks the combinations and ranges that types alone cannot express.
    fn validate(&self, loc: &Located<'_>, warnings: &mut Warnings) -> Result<(), ConfigError> {
        let s = &self.xtmp_server;
        let sec = &self.xtmp_security;
        let err = |key: &str, msg: String| Err(ConfigError::from(loc.key_error(key, msg)));

        if s.max_connections == 0 {
            return err("xtmp_server.max_connections", "must be at least 1".into());
        }
        if !(MIN_PAYLOAD_LIMIT..=MAX_PAYLOAD_LIMIT).contains(&s.max_payload) {
            return err(
                "xtmp_server.max_payload",
                format!(
                    "must be between {MIN_PAYLOAD_LIMIT} and {MAX_PAYLOAD_LIMIT} bytes (16 MiB)"
                ),
            );
        }
        for (key, v) in [
            (
                "xtmp_server.max_queue_per_connection",
                s.max_queue_per_connection,
            ),
            (
                "xtmp_server.max_inflight_per_connection",
                s.max_inflight_per_connection,
            ),
            (
                "xtmp_server.max_streams_per_connection",
                s.max_streams_per_connection,
            ),
        ] {
            if v == 0 {
                return err(key, "must be at least 1".into());
            }
        }
        if s.handshakes_per_second_per_ip == 0 {
            return err(
                "xtmp_server.handshakes_per_second_per_ip",
                "must be at least 1".into(),
            );
        }
        for (key, v) in [
            ("xtmp_server.session_timeout", s.session_timeout),
            ("xtmp_server.read_timeout", s.read_timeout),
            ("xtmp_server.handshake_timeout", s.handshake_timeout),
            ("xtmp_server.heartbeat_interval", s.heartbeat_interval),
            ("xtmp_server.write_timeout", s.write_timeout),
        ] {
            if v.is_zero() {
                return err(key, "must be longer than 0s".into());
            }
        }
        if sec.key_rotation_interval < Duration::from_secs(1) {
            return err(
                "xtmp_security.key_rotation_interval",
                "must be at least 1s (the handshake carries it in whole seconds)".into(),
            );
        }
        if sec.key_rotation_interval > Duration::from_secs(u64::from(u32::MAX)) {
            return err("xtmp_security.key_rotation_interval", "is too long".into());
        }
        if s.heartbeat_interval >= s.session_timeout {
            warnings.push(format!(
                "xtmp_server.heartbeat_interval ({}) is not shorter than xtmp_server.session_timeout ({}): quiet sessions may expire between heartbeats",
                format_duration(s.heartbeat_interval),
                format_duration(s.session_timeout)
            ));
        }
        if !s.enable_encryption && !sec.allow_plaintext {
            return err(
                "xtmp_server.enable_encryption",
                "enable_encryption = false requires `allow_plaintext = true` in [xtmp_security]"
                    .into(),
            );
        }
        if s.enable_encryption && sec.encryption_type == EncryptionType::None {
            return err(
                "xtmp_security.encryption_type",
                "\"None\" disables encryption: set `enable_encryption = false` in [xtmp_server] and `allow_plaintext = true` in [xtmp_security] instead".into(),
            );
        }
        if let Some(t) = &s.admin_token {
            if t.len() < MIN_ADMIN_TOKEN_LEN {
                return err(
                    "xtmp_server.admin_token",
                    format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
                );
            }
            if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return err(
                    "xtmp_server.admin_token",
                    "must not contain whitespace or control characters".into(),
                );
            }
        }
        if !s.admin_address.ip().is_loopback() && s.admin_token.is_none() {
            return err(
                "xtmp_server.admin_address",
                format!(
                    "{} is not a loopback address: set `admin_token` in [xtmp_server] (at least {MIN_ADMIN_TOKEN_LEN} characters)",
                    s.admin_address
                ),
            );
        }
        if s.admin_address == s.bind_address && s.bind_address.port() != 0 {
            return err(
                "xtmp_server.admin_address",
                format!("{} is also the bind_address", s.admin_address),
            );
        }
        self.validate_websocket(loc)?;
        self.validate_udp(loc)?;
        self.validate_services(loc)?;
        if sec.require_authentication && !sec.authorized_keys_file_explicit {
            warnings.push(format!(
                "require_authentication = true: only clients whose keys are listed in {} can connect",
                sec.authorized_keys_file.display()
            ));
        }
        Ok(())
    }

    /// Checks the UDP keys of `[xtmp_server]`.
    fn validate_udp(&self, loc: &Located<'_>) -> Result<(), ConfigError> {
        let s = &self.xtmp_server;
        let err = |key: &str, msg: String| Err(ConfigError::from(loc.key_error(key, msg)));
        let (lo, hi) = (
            xtmp_proto::datagram::MIN_DATAGRAM_BUDGET,
            xtmp_proto::datagram::MAX_DATAGRAM_BUDGET,
        );
        if !(lo..=hi).contains(&s.datagram_budget) {
            return err(
                "xtmp_server.datagram_budget",
                format!("must be between {lo} and {hi} bytes"),
            );
        }
        for t in &s.hybrid_udp_types {
            if let Err(m) = crate::cli::parse_message_type_arg(t) {
                return err("xtmp_server.hybrid_udp_types", m);
            }
        }
        Ok(())
    }

    /// The hybrid policy from `hybrid_udp_types` (validated when loaded).
    pub fn hybrid_policy(&self) -> xtmp::HybridPolicy {
        xtmp::HybridPolicy::udp_types(
            self.xtmp_server
                .hybrid_udp_types
                .iter()
                .filter_map(|t| crate::cli::parse_message_type_arg(t).ok()),
        )
    }

    /// Checks the WebSocket listener keys of `[xtmp_server]`.
    fn validate_websocket(&self, loc: &Located<'_>) -> Result<(), ConfigError> {
        let s = &self.xtmp_server;
        let err = |key: &str, msg: String| Err(ConfigError::from(loc.key_error(key, msg)));
        if let Err(m) = xtmp::ws::validate_path(&s.ws_path) {
            return err("xtmp_server.ws_path", m.to_string());
        }
        match (&s.ws_tls_cert_file, &s.ws_tls_key_file) {
            (Some(_), None) => {
                return err(
                    "xtmp_server.ws_tls_cert_file",
                    "needs `ws_tls_key_file` too".into(),
                )
            }
            (None, Some(_)) => {
                return err(
                    "xtmp_server.ws_tls_key_file",
                    "needs `ws_tls_cert_file` too".into(),
                )
            }
            (Some(_), Some(_)) if s.ws_bind_address.is_none() => {
                return err(
                    "xtmp_server.ws_tls_cert_file",
                    "serves the WebSocket listener: set `ws_bind_address` too".into(),
                )
            }
            _ => {}
        }
        if let Some(ws) = s.ws_bind_address {
            for (other, name) in [
                (s.bind_address, "bind_address"),
                (s.admin_address, "admin_address"),
            ] {
                if ws == other && ws.port() != 0 {
                    return err(
                        "xtmp_server.ws_bind_address",
                        format!("{ws} is also the {name}"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Checks `[xtmp_services]`.
    fn validate_services(&self, loc: &Located<'_>) -> Result<(), ConfigError> {
        let sv = &self.xtmp_services;
        let err = |key: &str, msg: String| Err(ConfigError::from(loc.key_error(key, msg)));
        if let Some(h) = &sv.mint_authority {
            let h = h.strip_prefix("0x").unwrap_or(h);
            if h.len() != MINT_AUTHORITY_HEX_LEN || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return err(
                    "xtmp_services.mint_authority",
                    format!(
                        "expected an ML-DSA-65 public key as {MINT_AUTHORITY_HEX_LEN} hex digits (the hex in a wallet's .pub file), found {} characters",
                        h.len()
                    ),
                );
            }
            if sv.mint_authority_file.is_some() {
                return err(
                    "xtmp_services.mint_authority_file",
                    "set either mint_authority or mint_authority_file, not both".into(),
                );
            }
        }
        let mut total: u64 = 0;
        for (i, g) in sv.genesis.iter().enumerate() {
            let key = format!("xtmp_services.genesis[{i}].amount");
            if g.amount == 0 {
                return err(&key, "amount must be at least 1".into());
            }
            total = match total.checked_add(g.amount) {
                Some(t) => t,
                None => return err(&key, "the genesis total exceeds 2^64 - 1".into()),
            };
        }
        for (key, v) in [
            ("xtmp_services.challenge_ttl", sv.challenge_ttl),
            ("xtmp_services.max_lease", sv.max_lease),
        ] {
            if v.is_zero() {
                return err(key, "must be longer than 0s".into());
            }
        }
        for (key, v) in [
            (
                "xtmp_services.default_cert_validity",
                sv.default_cert_validity,
            ),
            ("xtmp_services.max_cert_validity", sv.max_cert_validity),
        ] {
            if v < Duration::from_secs(1) {
                return err(key, "must be at least 1s".into());
            }
        }
        if sv.default_cert_validity > sv.max_cert_validity {
            return err(
                "xtmp_services.default_cert_validity",
                format!(
                    "must not be longer than max_cert_validity ({})",
                    format_duration(sv.max_cert_validity)
                ),
            );
        }
        let max_tx = xtmp_services::config::MAX_BUNDLE_TRANSACTIONS;
        let max_value = xtmp_services::config::MAX_REGISTRY_VALUE;
        let max_events = xtmp_services::config::MAX_EVENT_CAPACITY;
        for (key, v, max) in [
            (
                "xtmp_services.max_bundle_transactions",
                sv.max_bundle_transactions,
                max_tx,
            ),
            (
                "xtmp_services.max_registry_value",
                sv.max_registry_value,
                max_value,
            ),
            (
                "xtmp_services.event_capacity",
                sv.event_capacity,
                max_events,
            ),
            (
                "xtmp_services.group_commit_max_batch",
                sv.group_commit_max_batch,
                usize::MAX,
            ),
            ("xtmp_services.max_sessions", sv.max_sessions, usize::MAX),
            ("xtmp_services.max_locks", sv.max_locks, usize::MAX),
            (
                "xtmp_services.max_locks_per_session",
                sv.max_locks_per_session,
                usize::MAX,
            ),
        ] {
            if v == 0 || v > max {
                let range = if max == usize::MAX {
                    "must be at least 1".to_string()
                } else {
                    format!("must be between 1 and {max}")
                };
                return err(key, range);
            }
        }
        // Whatever is left to the library's own checks (kept in step with the above).
        if let Err(e) = self
            .xtmp_services
            .to_services_config(sv.mint_authority_bytes())
            .validate()
        {
            return err("xtmp_services", e.to_string());
        }
        Ok(())
    }

    /// The encryption types the server permits, most preferred first.
    pub fn encryption_types(&self) -> Vec<EncryptionType> {
        let sec = &self.xtmp_security;
        if !self.xtmp_server.enable_encryption {
            return vec![EncryptionType::None];
        }
        let mut v = vec![sec.encryption_type];
        if sec.allow_plaintext {
            v.push(EncryptionType::None);
        }
        v
    }

    /// Renders the effective configuration as TOML (the admin token is redacted).
    /// Key files at their default place inside `data_dir` are left out, so the output
    /// can be saved as a configuration file and moved with its data directory.
    pub fn to_toml(&self) -> String {
        let mut v = match toml::Table::try_from(self) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render: {e}\n"),
        };
        let dd = &self.xtmp_server.data_dir;
        let sec = &self.xtmp_security;
        if let Some(toml::Value::Table(t)) = v.get_mut("xtmp_security") {
            if sec.static_key_file == dd.join("server.key") {
                t.remove("static_key_file");
            }
            if !sec.authorized_keys_file_explicit {
                t.remove("authorized_keys_file");
            }
        }
        let sv = &self.xtmp_services;
        if let Some(toml::Value::Table(t)) = v.get_mut("xtmp_services") {
            if sv.data_dir == *dd {
                t.remove("data_dir");
            }
            if sv.signing_key_file == sv.data_dir.join("services-signing.key") {
                t.remove("signing_key_file");
            }
        }
        toml::to_string(&v).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const SEED: &str = r#"[xtmp_server]
bind_address = "127.0.0.1:8080"
max_connections = 10000
session_timeout = "3600s"
enable_compression = true
enable_encryption = true

[xtmp_security]
encryption_type = "PostQuantum"
key_rotation_interval = "300s"
require_authentication = true
"#;

    fn parse(text: &str) -> Result<XtmpConfig, ConfigError> {
        XtmpConfig::from_toml(text, Some(Path::new("xtmp.toml")), Path::new("/etc/xtmp"))
            .map(|(c, _)| c)
    }

    #[test]
    fn defaults_are_valid() {
        let d = XtmpConfig::default();
        assert_eq!(d.xtmp_server.bind_address.to_string(), DEFAULT_BIND_ADDRESS);
        assert_eq!(
            d.xtmp_server.admin_address.to_string(),
            DEFAULT_ADMIN_ADDRESS
        );
        let (c, _) = XtmpConfig::from_toml("", None, Path::new("")).unwrap();
        assert_eq!(c, d);
    }

    #[test]
    fn seed_file_works_unmodified() {
        let c = parse(SEED).unwrap();
        assert_eq!(c.xtmp_server.bind_address.to_string(), "127.0.0.1:8080");
        assert_eq!(c.xtmp_server.max_connections, 10_000);
        assert_eq!(c.xtmp_server.session_timeout, Duration::from_secs(3600));
        assert!(c.xtmp_server.enable_compression);
        assert!(c.xtmp_server.enable_encryption);
        assert_eq!(c.xtmp_security.encryption_type, EncryptionType::PostQuantum);
        assert_eq!(
            c.xtmp_security.key_rotation_interval,
            Duration::from_secs(300)
        );
        assert!(c.xtmp_security.require_authentication);
        assert_eq!(c.encryption_types(), vec![EncryptionType::PostQuantum]);
    }

    #[test]
    fn all_keys_and_relative_paths() {
        let c = parse(
            r#"
[xtmp_server]
bind_address = "0.0.0.0:9000"
data_dir = "state"
admin_address = "0.0.0.0:9001"
admin_token = "0123456789abcdef0123"
compression_threshold = 512
max_payload = 65536
read_timeout = "5s"
write_timeout = "7s"
retry_threshold = 10
max_inflight_per_connection = 8
max_streams_per_connection = 2
handshake_timeout = "2s"
drain_timeout = "1m"
heartbeat_interval = "250ms"
handshakes_per_second_per_ip = 5
max_queue_per_connection = 16
[xtmp_security]
encryption_type = "chacha20poly1305"
static_key_file = "/keys/server.key"
authorized_keys_file = "clients"
allow_plaintext = true
"#,
        )
        .unwrap();
        let s = &c.xtmp_server;
        assert_eq!(s.data_dir, Path::new("/etc/xtmp/state"));
        assert_eq!(s.admin_token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(s.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(s.drain_timeout, Duration::from_secs(60));
        assert_eq!(
            c.xtmp_security.static_key_file,
            Path::new("/keys/server.key")
        );
        assert_eq!(
            c.xtmp_security.authorized_keys_file,
            Path::new("/etc/xtmp/clients")
        );
        assert_eq!(
            c.encryption_types(),
            vec![EncryptionType::ChaCha20Poly1305, EncryptionType::None]
        );
        // Debug and the rendered TOML never show the token.
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
        assert!(!c.to_toml().contains("0123456789abcdef0123"));
    }

    #[test]
    fn key_files_default_into_data_dir() {
        let c = parse("[xtmp_server]\ndata_dir = \"/var/lib/xtmp\"\n").unwrap();
        assert_eq!(
            c.xtmp_security.static_key_file,
            Path::new("/var/lib/xtmp/server.key")
        );
        assert!(!c.xtmp_security.authorized_keys_file_explicit);
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let text = SEED.replace("max_connections = 10000", "max_conections = 10000");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("xtmp_server.max_conections"));
        assert_eq!(e.value.as_deref(), Some("10000"));
        let msg = e.to_string();
        assert!(msg.contains("xtmp.toml: line 3"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
        assert!(msg.contains("did you mean `max_connections`?"), "{msg}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            did_you_mean("unknown field `zzzzzzzzzz`, expected one of `a`, `bb`"),
            None
        );
    }

    #[test]
    fn unknown_table_is_named() {
        let e = parse("[xtmp_serv]\nbind_address = \"1.2.3.4:5\"\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert_eq!(e.key.as_deref(), Some("xtmp_serv"));
    }

    #[test]
    fn bad_duration_is_named() {
        let text = SEED.replace("\"3600s\"", "\"an hour\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert_eq!(e.column, Some(19));
        assert_eq!(e.key.as_deref(), Some("xtmp_server.session_timeout"));
        assert_eq!(e.value.as_deref(), Some("\"an hour\""));
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn bad_types_and_values_are_named() {
        let cases: &[(&str, &str, &str, usize)] = &[
            (
                "max_connections = 10000",
                "max_connections = \"lots\"",
                "xtmp_server.max_connections",
                3,
            ),
            (
                "max_connections = 10000",
                "max_connections = -1",
                "xtmp_server.max_connections",
                3,
            ),
            (
                "max_connections = 10000",
                "max_connections = 0",
                "xtmp_server.max_connections",
                3,
            ),
            (
                "bind_address = \"127.0.0.1:8080\"",
                "bind_address = \"localhost\"",
                "xtmp_server.bind_address",
                2,
            ),
            (
                "enable_compression = true",
                "enable_compression = \"yes\"",
                "xtmp_server.enable_compression",
                5,
            ),
            (
                "\"PostQuantum\"",
                "\"Kyber\"",
                "xtmp_security.encryption_type",
                9,
            ),
            (
                "key_rotation_interval = \"300s\"",
                "key_rotation_interval = \"300\"",
                "xtmp_security.key_rotation_interval",
                10,
            ),
            (
                "key_rotation_interval = \"300s\"",
                "key_rotation_interval = \"10ms\"",
                "xtmp_security.key_rotation_interval",
                10,
            ),
        ];
        for (from, to, key, line) in cases {
            let text = SEED.replace(from, to);
            let e = parse(&text).expect_err(to);
            assert_eq!(e.key.as_deref(), Some(*key), "{to}: {e}");
            assert_eq!(e.line, Some(*line), "{to}: {e}");
            assert!(e.value.is_some(), "{to}: {e}");
        }
    }

    #[test]
    fn syntax_error_has_line() {
        let text = SEED.replace("\"127.0.0.1:8080\"", "127.0.0.1:8080");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key.as_deref(), Some("xtmp_server.bind_address"));
        assert_eq!(e.value.as_deref(), Some("127.0.0.1:8080"));
        assert!(e.message.starts_with("TOML syntax error"), "{e}");
        let e = parse("[xtmp_server\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        let e = parse("[xtmp_server]\nmax_connections = 1\nmax_connections = 2\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn plaintext_rules() {
        let text = SEED.replace("enable_encryption = true", "enable_encryption = false");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("xtmp_server.enable_encryption"));
        assert_eq!(e.line, Some(6));
        assert_eq!(e.value.as_deref(), Some("false"));
        assert!(e.message.contains("allow_plaintext"));

        let ok = format!("{text}allow_plaintext = true\n");
        let c = parse(&ok).unwrap();
        assert_eq!(c.encryption_types(), vec![EncryptionType::None]);

        let e = parse(&SEED.replace("\"PostQuantum\"", "\"None\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("xtmp_security.encryption_type"));
    }

    #[test]
    fn admin_token_rules() {
        let e = parse("[xtmp_server]\nadmin_address = \"0.0.0.0:8081\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("xtmp_server.admin_address"));
        assert_eq!(e.line, Some(2));
        let e = parse("[xtmp_server]\nadmin_token = \"short\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("xtmp_server.admin_token"));
        assert!(!e.to_string().is_empty());
        let e = parse("[xtmp_server]\nadmin_address = \"127.0.0.1:8080\"\n").unwrap_err();
        assert!(e.message.contains("bind_address"));
        parse("[xtmp_server]\nadmin_address = \"[::1]:9\"\n").unwrap();
    }

    #[test]
    fn snippet_points_at_value() {
        let e = parse("[xtmp_server]\nread_timeout = \"soon\"\n").unwrap_err();
        let s = e.snippet.clone().unwrap();
        assert!(s.contains("2 | read_timeout = \"soon\""), "{s}");
        assert!(s.contains("^^^^^^"), "{s}");
    }

    #[test]
    fn services_section() {
        // Defaults: on, store in the server's data_dir, automatic mint authority.
        let c = parse("[xtmp_server]\ndata_dir = \"/var/lib/xtmp\"\n").unwrap();
        let sv = &c.xtmp_services;
        assert!(sv.enabled && sv.auto_mint_authority);
        assert_eq!(sv.data_dir, Path::new("/var/lib/xtmp"));
        assert_eq!(
            sv.signing_key_file,
            Path::new("/var/lib/xtmp/services-signing.key")
        );
        assert_eq!(
            sv.auto_mint_authority_file(),
            Path::new("/var/lib/xtmp/mint-authority.wallet")
        );
        sv.to_services_config(None).validate().unwrap();

        let addr = format!("xw{}", "ab".repeat(32));
        let key = "cd".repeat(1952);
        let c = parse(&format!(
            "[xtmp_services]\nenabled = false\ndata_dir = \"svc\"\nsigning_key_file = \"k/sign.key\"\nmint_authority = \"{key}\"\nauto_mint_authority = false\ngenesis = [{{ address = \"{addr}\", amount = 7 }}]\nchallenge_ttl = \"30s\"\nmax_lease = \"10m\"\ndefault_cert_validity = \"1d\"\nmax_cert_validity = \"2d\"\nmax_bundle_transactions = 10\nmax_registry_value = 100\ngroup_commit_max_batch = 1\nevent_capacity = 8\nmax_sessions = 9\nmax_locks = 11\nmax_locks_per_session = 2\n"
        ))
        .unwrap();
        let sv = &c.xtmp_services;
        assert!(!sv.enabled);
        assert_eq!(sv.data_dir, Path::new("/etc/xtmp/svc"));
        assert_eq!(sv.signing_key_file, Path::new("/etc/xtmp/k/sign.key"));
        assert_eq!(sv.mint_authority_bytes().map(|b| b.len()), Some(1952));
        let sc = sv.to_services_config(sv.mint_authority_bytes());
        assert_eq!(sc.genesis().len(), 1);
        assert_eq!(sc.challenge_ttl_ms(), 30_000);
        assert_eq!(sc.max_lease_ms(), 600_000);
        assert_eq!(sc.default_cert_validity_secs(), 86_400);
        assert_eq!(sc.max_bundle_transactions(), 10);
        assert_eq!(sc.max_registry_value(), 100);
        assert_eq!(sc.event_capacity(), 8);
        assert_eq!(sc.max_locks_per_session(), 2);
        // The rendered file loads back to the same configuration.
        let (again, _) = XtmpConfig::from_toml(&c.to_toml(), None, Path::new("/")).unwrap();
        assert_eq!(again.xtmp_services, c.xtmp_services);

        for (text, key, line) in [
            (
                "[xtmp_services]\ngenesis = [\n { address = \"xw1\", amount = 1 },\n]\n",
                "xtmp_services.genesis[0].address",
                3,
            ),
            (
                "[xtmp_services]\nmax_lease = \"0s\"\n",
                "xtmp_services.max_lease",
                2,
            ),
            (
                "[xtmp_services]\nevent_capacity = 0\n",
                "xtmp_services.event_capacity",
                2,
            ),
            (
                "[xtmp_services]\nmax_bundle_transactions = 1001\n",
                "xtmp_services.max_bundle_transactions",
                2,
            ),
            (
                "[xtmp_services]\nmint_authority = \"abc\"\n",
                "xtmp_services.mint_authority",
                2,
            ),
            (
                "[xtmp_services]\ndefault_cert_validity = \"3d\"\nmax_cert_validity = \"2d\"\n",
                "xtmp_services.default_cert_validity",
                2,
            ),
            (
                "[xtmp_services]\nenabeld = true\n",
                "xtmp_services.enabeld",
                2,
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert_eq!(e.line, Some(line), "{text}: {e}");
        }
        let both = format!(
            "[xtmp_services]\nmint_authority = \"{key}\"\nmint_authority_file = \"a.pub\"\n"
        );
        let e = parse(&both).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("xtmp_services.mint_authority_file"));
    }

    #[test]
    fn never_panics_on_junk() {
        for junk in [
            "\u{0}",
            "[",
            "]]",
            "=",
            "a=",
            "[xtmp_server]\n=1",
            "x = [1,2",
            "[[xtmp_server]]",
            "xtmp_server = 5",
            "[xtmp_server.bind_address]",
            "\"\"\"",
            "[xtmp_security]\nencryption_type = 3",
        ] {
            let _ = parse(junk);
        }
    }

    /// The UDP keys of `[xtmp_server]`: defaults, values, range checks naming the key, and
    /// the hybrid policy they make.
    #[test]
    fn udp_keys() {
        let d = parse("").unwrap();
        assert_eq!(d.xtmp_server.udp_bind_address, None);
        assert!(d.xtmp_server.enable_udp_sessions && d.xtmp_server.enable_hybrid);
        assert_eq!(d.xtmp_server.datagram_budget, 1200);
        assert!(d
            .hybrid_policy()
            .wants_udp(xtmp_proto::MessageType::MetricsStream));
        assert!(!d
            .hybrid_policy()
            .wants_udp(xtmp_proto::MessageType::WalletBalance));
        let c = parse(
            "[xtmp_server]\nudp_bind_address = \"127.0.0.1:8080\"\nenable_hybrid = false\ndatagram_budget = 1400\nhybrid_udp_types = [\"MetricsStream\", \"0x12\"]\n",
        )
        .unwrap();
        let s = &c.xtmp_server;
        assert_eq!(s.udp_bind_address, Some("127.0.0.1:8080".parse().unwrap()));
        assert!(!s.enable_hybrid);
        assert_eq!(s.datagram_budget, 1400);
        assert!(c
            .hybrid_policy()
            .wants_udp(xtmp_proto::MessageType::WalletBalance));
        assert!(!c
            .hybrid_policy()
            .wants_udp(xtmp_proto::MessageType::LiveUpdates));
        let e = parse("[xtmp_server]\ndatagram_budget = 500\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("xtmp_server.datagram_budget"));
        let e = parse("[xtmp_server]\nhybrid_udp_types = [\"NoSuchType\"]\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("xtmp_server.hybrid_udp_types"));
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(again.xtmp_server.udp_bind_address, s.udp_bind_address);
        assert_eq!(again.xtmp_server.hybrid_udp_types, s.hybrid_udp_types);
    }
}
