//! The seed's connection manager and its parts: [`XTMPConnectionManager`] (active
//! sessions, session counter, key manager, encryption engine, connection pool, message
//! router), [`XTMPSession`], [`XTMPKeyManager`], [`XTMPEncryptionEngine`] and
//! [`ConnectionType`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use xtmp_crypto::xwing::{XWingPublicKey, XWingSecretKey};
use xtmp_proto::{
    EncryptionType, ErrorCode, ServerConfig, ServerHandshaker, ServerOutcome, Session, XTMPError,
    XTMPFlags, XTMPKeySet,
};

use crate::metrics::{QualityTracker, SessionMetrics, XTMPQualityMetrics};
use crate::pool::XTMPConnectionPool;
use crate::rng::OsRng;
use crate::router::{lock, XTMPMessageRouter};
use crate::server::ServerConn;

/// How a session is carried: over a byte stream (TCP, WebSocket; see
/// [`crate::transport::StreamTransport`]), over UDP datagrams, or over TCP with a UDP path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ConnectionType {
    /// TCP: critical operations (wallet, bundles).
    TcpReliable,
    /// UDP datagrams: real-time streams ([`crate::udp`], `PROTOCOL.md` §9.3–§9.7).
    UdpFast,
    /// A TCP session with a UDP path; per-message-type policy and dynamic switching
    /// ([`crate::udp::HybridPolicy`], `PROTOCOL.md` §9.6, §9.8).
    TcpUdpHybrid,
    /// XTMP frames as binary WebSocket messages (RFC 6455, `ws://` or `wss://`) for
    /// firewall traversal: [`crate::ws`].
    WebSocketFallback,
}

impl ConnectionType {
    /// The seed's name (`"TcpReliable"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ConnectionType::TcpReliable => "TcpReliable",
            ConnectionType::UdpFast => "UdpFast",
            ConnectionType::TcpUdpHybrid => "TcpUdpHybrid",
            ConnectionType::WebSocketFallback => "WebSocketFallback",
        }
    }
}

impl std::fmt::Display for ConnectionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-session message counters kept by the runtime (the core keeps frame counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SessionCounters {
    /// Application messages received.
    pub messages_received: u64,
    /// Application messages sent (responses, acks, errors, pushes).
    pub messages_sent: u64,
    /// `Error` messages sent.
    pub errors_sent: u64,
    /// `Error` messages received from the peer.
    pub errors_received: u64,
}

/// The seed's session: identity, timing, transport, quality, counters, and the protocol
/// core's [`Session`] that holds the keys ([`XTMPKeySet`]) and sequence numbers.
///
/// `Debug` never prints key material.
pub struct XTMPSession {
    /// Session id (assigned by the server in the handshake).
    pub session_id: u64,
    /// The peer's address.
    pub peer_address: SocketAddr,
    /// When the handshake completed.
    pub established_at: Instant,
    /// Wall-clock time of the handshake.
    pub established_wall: SystemTime,
    /// Last application message in either direction.
    pub last_activity: Instant,
    /// Transport.
    pub connection_type: ConnectionType,
    /// Link quality as of the last heartbeat.
    pub quality_metrics: XTMPQualityMetrics,
    /// Message counters.
    pub counters: SessionCounters,
    /// Fingerprint of the client's static key (`pqIK` sessions).
    pub client_key: Option<[u8; 32]>,
    core: Session,
    pub(crate) quality: QualityTracker,
    pub(crate) stream_dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for XTMPSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XTMPSession")
            .field("session_id", &format_args!("{:016x}", self.session_id))
            .field("peer_address", &self.peer_address)
            .field("connection_type", &self.connection_type)
            .field("key_generation", &self.core.key_generation())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl XTMPSession {
    pub(crate) fn new(
        core: Session,
        peer_address: SocketAddr,
        connection_type: ConnectionType,
        client_key: Option<[u8; 32]>,
        now: Instant,
    ) -> Self {
        Self {
            session_id: core.session_id(),
            peer_address,
            established_at: now,
            established_wall: SystemTime::now(),
            last_activity: now,
            connection_type,
            quality_metrics: XTMPQualityMetrics::default(),
            counters: SessionCounters::default(),
            client_key,
            core,
            quality: QualityTracker::new(now),
            stream_dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The protocol core's session (read-only).
    pub fn core(&self) -> &Session {
        &self.core
    }

    pub(crate) fn core_mut(&mut self) -> &mut Session {
        &mut self.core
    }

    /// The current send key set (the seed's `encryption_keys`). Its `Debug` prints no keys.
    pub fn encryption_keys(&self) -> &XTMPKeySet {
        self.core.send_keys()
    }

    /// The sequence number the next sent message will carry (the seed's `sequence_number`).
    pub fn sequence_number(&self) -> u64 {
        self.core.next_send_sequence()
    }

    /// Current send key generation.
    pub fn key_generation(&self) -> u32 {
        self.core.key_generation()
    }

    /// Negotiated record protection.
    pub fn encryption_type(&self) -> EncryptionType {
        self.core.encryption_type()
    }

    /// Recomputes [`XTMPSession::quality_metrics`].
    pub(crate) fn refresh_quality(&mut self) {
        self.quality_metrics = self.quality.snapshot(
            self.core.rtt().smoothed(),
            self.counters.errors_sent,
            self.counters.messages_received,
        );
    }

    /// A serializable snapshot.
    pub fn metrics(&self, requests_in_flight: u64) -> SessionMetrics {
        let now = Instant::now();
        let st = self.core.stats();
        SessionMetrics {
            session_id: self.session_id,
            session_id_hex: format!("{:016x}", self.session_id),
            peer_address: self.peer_address.to_string(),
            connection_type: self.connection_type.name().to_string(),
            established_secs: now
                .saturating_duration_since(self.established_at)
                .as_secs_f64(),
            idle_secs: now
                .saturating_duration_since(self.last_activity)
                .as_secs_f64(),
            key_generation: self.core.key_generation(),
            encryption_type: self.core.encryption_type().name().to_string(),
            quality: self.quality.snapshot(
                self.core.rtt().smoothed(),
                self.counters.errors_sent,
                self.counters.messages_received,
            ),
            frames_sent: st.frames_sent,
            frames_received: st.frames_received,
            bytes_sent: st.bytes_sent,
            bytes_received: st.bytes_received,
            auth_failures: st.auth_failures,
            replays: st.replays,
            messages_received: self.counters.messages_received,
            messages_sent: self.counters.messages_sent,
            errors_sent: self.counters.errors_sent,
            stream_dropped: self.stream_dropped.load(Ordering::Relaxed),
            requests_in_flight,
            aead_contexts_resident: self.core.aead_resident(),
            client_key: self.client_key.map(hex::encode),
            datagram: None,
        }
    }
}

/// The seed's key manager: the server's static X-Wing key pair, the handshake responder
/// (cookie secrets, authorized client keys, replay timestamps) and the rotation policy.
pub struct XTMPKeyManager {
    static_key: Arc<XWingSecretKey>,
    handshaker: RwLock<ServerHandshaker>,
    key_rotation_interval: Duration,
    rotations: AtomicU64,
    cookies_maintained: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for XTMPKeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XTMPKeyManager")
            .field("public_key", self.static_key.public_key())
            .field("key_rotation_interval", &self.key_rotation_interval)
            .finish_non_exhaustive()
    }
}

impl XTMPKeyManager {
    /// A key manager for `config` (the responder policy) rotating session keys every
    /// `key_rotation_interval`.
    pub fn new(config: ServerConfig, key_rotation_interval: Duration) -> Self {
        Self {
            static_key: config.static_key.clone(),
            handshaker: RwLock::new(ServerHandshaker::new(config)),
            key_rotation_interval,
            rotations: AtomicU64::new(0),
            cookies_maintained: std::sync::Mutex::new(None),
        }
    }

    /// The server's static public key (what clients pin).
    pub fn public_key(&self) -> &XWingPublicKey {
        self.static_key.public_key()
    }

    /// SHA-256 fingerprint of the static public key.
    pub fn fingerprint(&self) -> [u8; 32] {
        xtmp_proto::fingerprint(self.static_key.public_key())
    }

    /// The session key rotation interval.
    pub fn key_rotation_interval(&self) -> Duration {
        self.key_rotation_interval
    }

    /// Completed session key rotations.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }

    pub(crate) fn count_rotation(&self) {
        self.rotations.fetch_add(1, Ordering::Relaxed);
    }

    /// Replaces the set of authorized client key fingerprints (takes effect for new handshakes).
    pub fn set_authorized_clients(&self, keys: HashSet<[u8; 32]>) {
        write(&self.handshaker).set_authorized_clients(keys);
    }

    /// Rotates the cookie secret when due (datagram endpoints call this before checking
    /// fragment cookies).
    pub(crate) fn maintain_cookies(&self, now: Instant) {
        // At most once a second (the secret lives 120 s): the write lock would otherwise
        // wait for every handshake doing KEM work under the read lock.
        {
            let mut last = crate::router::lock(&self.cookies_maintained);
            if last.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        write(&self.handshaker).maintain(now, &mut OsRng);
    }

    /// Whether `cookie` is valid for `peer` (the stateless check on every handshake
    /// fragment, `PROTOCOL.md` §9.3).
    pub(crate) fn cookie_valid_for(&self, peer: &[u8], cookie: &[u8]) -> bool {
        read(&self.handshaker).cookie_valid_for(peer, cookie)
    }

    /// The `Retry` frame for `peer`.
    pub(crate) fn retry_frame_for(&self, peer: &[u8]) -> Option<Vec<u8>> {
        read(&self.handshaker).retry_frame_for(peer)
    }

    /// Runs the responder on a `Handshake` frame. The KEM work runs under a shared read
    /// lock, so handshakes proceed in parallel on all cores; only the cookie-secret
    /// rotation and the replay-timestamp commit take the write lock, briefly.
    pub(crate) fn handshake(
        &self,
        now: Instant,
        peer: &[u8],
        require_cookie: bool,
        frame: &[u8],
    ) -> Result<ServerOutcome, XTMPError> {
        write(&self.handshaker).maintain(now, &mut OsRng);
        let out =
            read(&self.handshaker).handle_shared(now, peer, require_cookie, frame, &mut OsRng)?;
        write(&self.handshaker).commit(&out)?;
        Ok(out)
    }
}

/// The seed's encryption engine: which record protections are permitted and when payloads
/// are compressed. (The cryptography itself is in `xtmp-proto`/`xtmp-crypto`.)
#[derive(Debug, Clone)]
pub struct XTMPEncryptionEngine {
    /// Permitted encryption types, most preferred first.
    pub encryption_types: Vec<EncryptionType>,
    /// Whether `EncryptionType::None` (integrity only) may be negotiated.
    pub allow_plaintext: bool,
    /// Whether outgoing payloads are compressed.
    pub enable_compression: bool,
    /// Payloads at least this long are compressed (when that makes them smaller).
    pub compression_threshold: usize,
}

impl XTMPEncryptionEngine {
    /// Flags for an outgoing payload of `len` bytes (`COMPRESSED` when due).
    pub fn flags_for(&self, len: usize) -> XTMPFlags {
        if self.enable_compression && len >= self.compression_threshold {
            XTMPFlags::COMPRESSED
        } else {
            XTMPFlags::empty()
        }
    }
}

/// The seed's connection manager for a server.
pub struct XTMPConnectionManager {
    active_sessions: RwLock<HashMap<u64, Arc<ServerConn>>>,
    /// Sessions established since start (the seed's session counter).
    pub session_counter: AtomicU64,
    /// Static keys, handshake responder, rotation policy.
    pub key_manager: Arc<XTMPKeyManager>,
    /// Record protection and compression policy.
    pub encryption_engine: Arc<XTMPEncryptionEngine>,
    /// Outgoing client connections reused per peer (for servers that talk to other servers).
    pub connection_pool: Arc<XTMPConnectionPool>,
    /// Handlers.
    pub message_router: Arc<XTMPMessageRouter>,
}

impl std::fmt::Debug for XTMPConnectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XTMPConnectionManager")
            .field("active_sessions", &self.session_count())
            .field(
                "session_counter",
                &self.session_counter.load(Ordering::Relaxed),
            )
            .field("key_manager", &self.key_manager)
            .finish_non_exhaustive()
    }
}

impl XTMPConnectionManager {
    pub(crate) fn new(
        key_manager: Arc<XTMPKeyManager>,
        encryption_engine: Arc<XTMPEncryptionEngine>,
        message_router: Arc<XTMPMessageRouter>,
    ) -> Self {
        Self {
            active_sessions: RwLock::new(HashMap::new()),
            session_counter: AtomicU64::new(0),
            key_manager,
            encryption_engine,
            connection_pool: Arc::new(XTMPConnectionPool::new()),
            message_router,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Arc<ServerConn>>> {
        match self.active_sessions.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Arc<ServerConn>>> {
        match self.active_sessions.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Adds a session; `false` if the id is already taken.
    pub(crate) fn insert(&self, conn: Arc<ServerConn>) -> bool {
        let mut m = self.write();
        if m.contains_key(&conn.session_id) {
            return false;
        }
        m.insert(conn.session_id, conn);
        self.session_counter.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<ServerConn>> {
        self.read().get(&id).cloned()
    }

    pub(crate) fn remove(&self, id: u64) {
        self.write().remove(&id);
    }

    pub(crate) fn connections(&self) -> Vec<Arc<ServerConn>> {
        self.read().values().cloned().collect()
    }

    /// Number of established sessions.
    pub fn session_count(&self) -> usize {
        self.read().len()
    }

    /// Ids of the established sessions.
    pub fn session_ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.read().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Runs `f` on a session (under its connection's lock: keep it short).
    pub fn with_session<T>(&self, id: u64, f: impl FnOnce(&XTMPSession) -> T) -> Option<T> {
        let conn = self.read().get(&id).cloned()?;
        let st = lock(&conn.state);
        Some(f(&st.session))
    }

    /// One session's metrics.
    pub fn session_metrics(&self, id: u64) -> Option<SessionMetrics> {
        let conn = self.read().get(&id).cloned()?;
        Some(conn.metrics())
    }

    /// Metrics of every session, ordered by session id.
    pub fn all_session_metrics(&self) -> Vec<SessionMetrics> {
        let mut conns = self.connections();
        conns.sort_by_key(|c| c.session_id);
        conns.iter().map(|c| c.metrics()).collect()
    }

    /// Session ids per peer address (the seed's `tcp_connections` view).
    pub fn connections_by_peer(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for c in self.read().values() {
            out.entry(c.peer.to_string())
                .or_default()
                .push(c.session_id);
        }
        out
    }

    /// Closes a session gracefully with `Disconnect(code, reason)`; `false` if unknown.
    pub fn disconnect(&self, id: u64, code: ErrorCode, reason: &str) -> bool {
        let Some(conn) = self.read().get(&id).cloned() else {
            return false;
        };
        conn.request_close(code, reason);
        true
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
