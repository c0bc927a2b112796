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
//! Relative paths (`data_dir`, `static_key_file`, `authorized_keys_file`) are resolved
//! against the directory of the configuration file; `static_key_file` and
//! `authorized_keys_file` default to files inside `data_dir`.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xtmp_proto::EncryptionType;

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
            if let Some(t) = v.get_ref().as_table() {
                self.index(t, &path);
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
        let cfg = XtmpConfig {
            xtmp_server: server,
            xtmp_security: security,
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
        if sec.require_authentication && !sec.authorized_keys_file_explicit {
            warnings.push(format!(
                "require_authentication = true: only clients whose keys are listed in {} can connect",
                sec.authorized_keys_file.display()
            ));
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
}
