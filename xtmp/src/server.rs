//! The TCP server: accept loop, per-connection tasks, handshake, dispatch to the router,
//! priority and stream queues, timers (heartbeat, idle, key rotation) and graceful
//! shutdown.
//!
//! Per connection there is one task running two futures: the **reader** (deframe →
//! [`Session::open`] → dispatch; handlers run in their own tasks) and the **writer**
//! (core frames from `poll_transmit` first, then `PRIORITY` messages, then normal replies
//! and push streams round-robin; timers). Messages are queued *unsealed* and sealed at
//! the moment they are written, because on an ordered transport the sequence numbers must
//! go out in order: that is what lets a `PRIORITY` message overtake queued ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, trace, warn};
use xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::control::{encode_ack, response_type_for, ErrorPayload};
use xtmp_proto::header::DEFAULT_MAX_STREAM_PAYLOAD;
use xtmp_proto::{
    EncryptionType, ErrorCode, Header, MessageType, PathId, Received, ServerConfig, ServerOutcome,
    Session, SessionConfig, XTMPError, XTMPFlags, HEADER_LEN,
};

use crate::client::IdMap;
use crate::error::XTMPRuntimeError;
use crate::join::JoinFut;
use crate::manager::{
    ConnectionType, XTMPConnectionManager, XTMPEncryptionEngine, XTMPKeyManager, XTMPSession,
};
use crate::metrics::{code_name, ListenerInfo, ServerCounters, ServerStatus, SessionMetrics};
use crate::rng::OsRng;
use crate::router::{
    is_reserved, lock, Reply, Request, RequestContext, StreamQueue, StreamRegistry,
    XTMPMessageRouter,
};
use crate::transport::{
    plain_error_frame, shutdown_timeout, write_all_timeout, FrameReader, ReadError, StreamTransport,
};
use crate::udp::{DatagramOptions, DgramState, UdpCounters, UdpFrameSink, UdpIo};
use crate::udp_server::{max_udp_reply_body, pre_dispatch, Pre, ServerRel};

/// Bytes sealed per writer batch before the queues are looked at again (keeps `PRIORITY`
/// latency low while the socket is busy).
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Write buffers larger than this are released when a connection goes idle.
pub(crate) const IDLE_BUF_CAPACITY: usize = 16 * 1024;
/// Messages the writer takes from one queue per turn of its round robin (one lock and one
/// wake-up of backpressured pushers per batch instead of per message).
const FILL_BATCH: usize = 64;
/// Refused connections being answered at once; beyond this they are closed without an answer.
const MAX_CONCURRENT_REFUSALS: usize = 1024;
/// How long a closing connection waits for the peer's end of stream.
const LINGER: Duration = Duration::from_secs(1);
/// Sealed bytes waiting for the writer above which the reader stops reading (a peer that
/// floods pings but never reads cannot grow the answers without bound).
pub(crate) const WBUF_LIMIT: usize = 1 << 20;
/// Buckets kept by the handshake rate limiter before idle ones are evicted.
const MAX_RATE_BUCKETS: usize = 65_536;

/// Server settings. [`ServerOptions::new`] gives the seed's defaults.
#[derive(Clone)]
pub struct ServerOptions {
    /// Listen address (default `127.0.0.1:8080`).
    pub bind_address: SocketAddr,
    /// Open connections allowed at once (default 10 000); one more is refused with a plain
    /// `Error` `SERVER_BUSY` and counted.
    pub max_connections: usize,
    /// A session without application messages for this long is closed with
    /// `Disconnect(TIMEOUT)` (default 3600 s).
    pub session_timeout: Duration,
    /// Compress outgoing payloads of at least `compression_threshold` bytes (default on).
    pub enable_compression: bool,
    /// Compression threshold in bytes (default 1024).
    pub compression_threshold: usize,
    /// Permitted record protections, most preferred first (default PostQuantum,
    /// Aes256Gcm, ChaCha20Poly1305).
    pub encryption_types: Vec<EncryptionType>,
    /// Whether `EncryptionType::None` may be listed (default false).
    pub allow_plaintext: bool,
    /// Session key rotation interval (default 300 s).
    pub key_rotation_interval: Duration,
    /// Only `pqIK` handshakes from `authorized_clients` are accepted (default false).
    pub require_authentication: bool,
    /// SHA-256 fingerprints of the authorized client static keys.
    pub authorized_clients: HashSet<[u8; 32]>,
    /// The server's static X-Wing key pair.
    pub static_key: Arc<XWingSecretKey>,
    /// Largest payload (default 16 MiB; at least 4096 so handshakes fit).
    pub max_payload: u32,
    /// The handshake must finish within this long (default 10 s).
    pub handshake_timeout: Duration,
    /// A frame that has started must be complete within this long (default 30 s).
    pub read_timeout: Duration,
    /// Handshakes per second per source IP (token bucket, burst of the same size;
    /// 0 = unlimited; default 100).
    pub handshakes_per_second_per_ip: u32,
    /// Queued outgoing messages per connection (default 1024). When full, reading from
    /// that connection pauses (backpressure).
    pub max_queue_per_connection: usize,
    /// Graceful shutdown waits this long for in-flight handlers (default 10 s).
    pub drain_timeout: Duration,
    /// Heartbeat (ping) interval (default 15 s). A peer silent for three intervals while
    /// a ping is outstanding is closed.
    pub heartbeat_interval: Duration,
    /// A write to a peer must complete within this long (default 30 s).
    pub write_timeout: Duration,
    /// Above this many handshakes in progress the server is "under load" and requires a
    /// cookie (`Retry`) before doing KEM work (default 256).
    pub retry_threshold: u64,
    /// Handlers running at once per connection (default 64).
    pub max_inflight_per_connection: usize,
    /// Push streams open at once per connection (default 64).
    pub max_streams_per_connection: usize,
    /// A WebSocket listener (`ConnectionType::WebSocketFallback`, see [`crate::ws`]) besides
    /// the TCP one (default none). Its connections share `max_connections`, the per-IP
    /// handshake rate limit and every other limit with TCP.
    pub websocket: Option<crate::ws::WebSocketListenerOptions>,
    /// A UDP listener (default none) for `UdpFast` sessions and for the UDP path of
    /// `TcpUdpHybrid` sessions (`PROTOCOL.md` §9). Its sessions share `max_connections`
    /// and the per-IP handshake rate limit with TCP.
    pub udp_bind_address: Option<SocketAddr>,
    /// Sessions may start over UDP (`UdpFast`) when there is a UDP listener (default true).
    pub allow_udp_sessions: bool,
    /// TCP sessions may add a UDP path (`TcpUdpHybrid`) when there is a UDP listener
    /// (default true).
    pub allow_hybrid: bool,
    /// Datagram settings: budget (1200 bytes), retransmission, hybrid policy and switching.
    pub datagram: DatagramOptions,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("bind_address", &self.bind_address)
            .field("max_connections", &self.max_connections)
            .field("session_timeout", &self.session_timeout)
            .field("enable_compression", &self.enable_compression)
            .field("compression_threshold", &self.compression_threshold)
            .field("encryption_types", &self.encryption_types)
            .field("allow_plaintext", &self.allow_plaintext)
            .field("key_rotation_interval", &self.key_rotation_interval)
            .field("require_authentication", &self.require_authentication)
            .field("authorized_clients", &self.authorized_clients.len())
            .field("static_key", self.static_key.public_key())
            .field("max_payload", &self.max_payload)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("read_timeout", &self.read_timeout)
            .field(
                "handshakes_per_second_per_ip",
                &self.handshakes_per_second_per_ip,
            )
            .field("max_queue_per_connection", &self.max_queue_per_connection)
            .field("drain_timeout", &self.drain_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("websocket", &self.websocket)
            .field("udp_bind_address", &self.udp_bind_address)
            .field("allow_udp_sessions", &self.allow_udp_sessions)
            .field("allow_hybrid", &self.allow_hybrid)
            .field("datagram", &self.datagram)
            .finish_non_exhaustive()
    }
}

impl ServerOptions {
    /// The seed's defaults (`127.0.0.1:8080`, 10 000 connections, 3600 s session timeout,
    /// PostQuantum first, 300 s key rotation) with `static_key`.
    pub fn new(static_key: Arc<XWingSecretKey>) -> Self {
        Self {
            bind_address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 10_000,
            session_timeout: Duration::from_secs(3600),
            enable_compression: true,
            compression_threshold: 1024,
            encryption_types: vec![
                EncryptionType::PostQuantum,
                EncryptionType::Aes256Gcm,
                EncryptionType::ChaCha20Poly1305,
            ],
            allow_plaintext: false,
            key_rotation_interval: Duration::from_secs(300),
            require_authentication: false,
            authorized_clients: HashSet::new(),
            static_key,
            max_payload: DEFAULT_MAX_STREAM_PAYLOAD,
            handshake_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            handshakes_per_second_per_ip: 100,
            max_queue_per_connection: 1024,
            drain_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            retry_threshold: 256,
            max_inflight_per_connection: 64,
            max_streams_per_connection: 64,
            websocket: None,
            udp_bind_address: None,
            allow_udp_sessions: true,
            allow_hybrid: true,
            datagram: DatagramOptions::default(),
        }
    }

    /// Checks the options.
    ///
    /// # Errors
    /// [`XTMPRuntimeError::Config`] naming the offending option.
    pub fn validate(&self) -> Result<(), XTMPRuntimeError> {
        let bad = |m: &str| Err(XTMPRuntimeError::Config(m.to_string()));
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.encryption_types.is_empty() {
            return bad("encryption_types must not be empty");
        }
        if self.encryption_types.contains(&EncryptionType::None) && !self.allow_plaintext {
            return bad("encryption_types lists None but allow_plaintext is false");
        }
        if self.max_payload < 4096 {
            return bad("max_payload must be at least 4096 bytes");
        }
        for (name, d) in [
            ("session_timeout", self.session_timeout),
            ("key_rotation_interval", self.key_rotation_interval),
            ("handshake_timeout", self.handshake_timeout),
            ("read_timeout", self.read_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("write_timeout", self.write_timeout),
        ] {
            if d.is_zero() {
                return Err(XTMPRuntimeError::Config(format!(
                    "{name} must be greater than zero"
                )));
            }
        }
        if self.max_queue_per_connection == 0 || self.max_inflight_per_connection == 0 {
            return bad(
                "max_queue_per_connection and max_inflight_per_connection must be at least 1",
            );
        }
        if let Some(ws) = &self.websocket {
            ws.validate()?;
        }
        self.datagram
            .validate()
            .map_err(|m| XTMPRuntimeError::Config(format!("datagram: {m}")))?;
        Ok(())
    }

    fn session_config(&self) -> SessionConfig {
        let mut c = SessionConfig::default();
        c.key_rotation_interval = self.key_rotation_interval;
        c.max_payload = self.max_payload;
        c
    }

    fn server_config(&self) -> ServerConfig {
        let mut c = ServerConfig::new(self.static_key.clone());
        c.require_client_auth = self.require_authentication;
        c.authorized_clients = self.authorized_clients.clone();
        c.encryption_types = self.encryption_types.clone();
        c.session = self.session_config();
        c
    }
}

// ------------------------------------------------------------------------------------
// Handshake rate limiter
// ------------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) struct HandshakeLimiter {
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl HandshakeLimiter {
    fn new(per_second: u32) -> Self {
        Self {
            rate: f64::from(per_second),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `ip`; `false` when the address is over its rate.
    pub(crate) fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let burst = self.rate.max(1.0);
        let mut b = lock(&self.buckets);
        if b.len() >= MAX_RATE_BUCKETS && !b.contains_key(&ip) {
            // Evict buckets that have refilled completely (idle addresses).
            let rate = self.rate;
            b.retain(|_, (tokens, t)| {
                *tokens + now.saturating_duration_since(*t).as_secs_f64() * rate < burst
            });
            if b.len() >= MAX_RATE_BUCKETS {
                return false;
            }
        }
        let (tokens, last) = b.entry(ip).or_insert((burst, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*last).as_secs_f64() * self.rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

// ------------------------------------------------------------------------------------
// Server
// ------------------------------------------------------------------------------------

/// State shared by the accept loop, the connections and the [`ServerHandle`].
pub(crate) struct ServerShared {
    pub(crate) opts: ServerOptions,
    /// `opts.datagram`, shared by every session's datagram state.
    pub(crate) datagram_opts: Arc<crate::udp::DatagramOptions>,
    pub(crate) manager: Arc<XTMPConnectionManager>,
    pub(crate) counters: Arc<ServerCounters>,
    started: Instant,
    local_addr: SocketAddr,
    /// In an `Arc`: every request's context holds it, and cloning a `CancellationToken`
    /// locks its tree (shared by all connections).
    pub(crate) shutdown: Arc<CancellationToken>,
    stopped: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) limiter: HandshakeLimiter,
    /// The UDP listener's socket.
    pub(crate) udp: Option<Arc<UdpIo>>,
    pub(crate) udp_counters: UdpCounters,
    /// Every listener (TCP first), for the status document.
    pub(crate) listeners: Vec<ListenerInfo>,
    /// The WebSocket listener's bound address.
    pub(crate) websocket_addr: Option<SocketAddr>,
    pub(crate) by_type: [AtomicU64; 4],
    refusals: Arc<Semaphore>,
}

fn type_index(t: ConnectionType) -> usize {
    match t {
        ConnectionType::TcpReliable => 0,
        ConnectionType::UdpFast => 1,
        ConnectionType::TcpUdpHybrid => 2,
        ConnectionType::WebSocketFallback => 3,
    }
}

const ALL_TYPES: [ConnectionType; 4] = [
    ConnectionType::TcpReliable,
    ConnectionType::UdpFast,
    ConnectionType::TcpUdpHybrid,
    ConnectionType::WebSocketFallback,
];

impl ServerShared {
    fn status(&self) -> ServerStatus {
        let c = &self.counters;
        let g = ServerCounters::get;
        let connections_by_type = ALL_TYPES
            .iter()
            .filter_map(|t| {
                let n = self.by_type[type_index(*t)].load(Ordering::Relaxed);
                (n > 0 || *t == ConnectionType::TcpReliable).then(|| (t.name().to_string(), n))
            })
            .collect();
        ServerStatus {
            uptime_secs: self.started.elapsed().as_secs_f64(),
            sessions_active: self.manager.session_count() as u64,
            connections_active: g(&c.connections_active),
            connections_by_type,
            handshakes_completed: g(&c.handshakes_completed),
            handshakes_failed: g(&c.handshakes_failed),
            retries_sent: g(&c.retries_sent),
            connections_refused: g(&c.connections_refused),
            errors_sent: g(&c.errors_sent),
            errors_by_code: c.errors_by_code(),
            bytes_received: g(&c.bytes_received),
            bytes_sent: g(&c.bytes_sent),
            messages_received: g(&c.messages_received),
            messages_sent: g(&c.messages_sent),
            key_rotations: g(&c.key_rotations),
            stream_messages_dropped: g(&c.stream_dropped),
            shutting_down: self.shutdown.is_cancelled(),
            listeners: self.listeners.clone(),
            udp: self.udp.as_ref().map(|u| self.udp_counters.status(u)),
        }
    }

    /// Counts a new connection and runs it on the tracker.
    fn spawn_connection<S: StreamTransport>(
        self: &Arc<Self>,
        stream: S,
        peer: SocketAddr,
        ctype: ConnectionType,
    ) {
        ServerCounters::add(&self.counters.connections_active, 1);
        self.by_type[type_index(ctype)].fetch_add(1, Ordering::Relaxed);
        let guard = ConnGuard {
            shared: self.clone(),
            ctype,
        };
        let shared = self.clone();
        self.tracker.spawn(async move {
            let _guard = guard;
            handle_connection(shared, stream, peer, ctype).await;
        });
    }

    /// Counts and runs an established `UdpFast` session: its writer sends through `sink`;
    /// its frames arrive through the UDP endpoint.
    pub(crate) fn spawn_udp_session(self: &Arc<Self>, conn: Arc<ServerConn>, sink: UdpFrameSink) {
        ServerCounters::add(&self.counters.connections_active, 1);
        self.by_type[type_index(ConnectionType::UdpFast)].fetch_add(1, Ordering::Relaxed);
        let guard = ConnGuard {
            shared: self.clone(),
            ctype: ConnectionType::UdpFast,
        };
        let shared = self.clone();
        self.tracker.spawn(async move {
            let _guard = guard;
            let id = conn.session_id;
            conn_writer(conn.clone(), sink).await;
            conn.close.cancel();
            shared.manager.remove(id);
            conn.abort_inflight();
            debug!(session = %format_args!("{id:016x}"), "UDP session closed");
        });
    }

    /// A TCP session added a UDP path: it counts as `TcpUdpHybrid` from now on.
    pub(crate) fn hybrid_attached(&self) {
        self.by_type[type_index(ConnectionType::TcpReliable)].fetch_sub(1, Ordering::Relaxed);
        self.by_type[type_index(ConnectionType::TcpUdpHybrid)].fetch_add(1, Ordering::Relaxed);
    }

    /// Answers a connection over `max_connections` with `SERVER_BUSY` and closes it.
    fn refuse<S: StreamTransport>(self: &Arc<Self>, stream: S, peer: SocketAddr) {
        ServerCounters::add(&self.counters.connections_refused, 1);
        self.counters.error_sent(ErrorCode::SERVER_BUSY);
        debug!(%peer, "connection refused: max_connections reached");
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else {
            return; // dropping the stream closes it
        };
        let frame = plain_error_frame(ErrorCode::SERVER_BUSY, "server is at max_connections");
        let counters = self.counters.clone();
        self.tracker.spawn(async move {
            let _permit = permit;
            let (r, mut w) = tokio::io::split(stream);
            if write_all_timeout(&mut w, &frame, LINGER).await.is_ok() {
                ServerCounters::add(&counters.bytes_sent, frame.len() as u64);
            }
            shutdown_timeout(&mut w, LINGER).await;
            FrameReader::new(r, 0).linger(LINGER).await;
        });
    }
}

/// An established connection with nothing to read for this long gives its read buffer
/// back (see `FrameReader::release_when_idle`).
const IDLE_READ_BUFFER: Duration = Duration::from_secs(2);

/// A session without application messages for this long frees its AEAD contexts when its
/// writer next goes idle (`Session::release_idle_keys`): for a quiet `UdpFast` session
/// that is its last probe tick, one second later.
const IDLE_KEYS: Duration = Duration::from_secs(1);

struct ConnGuard {
    shared: Arc<ServerShared>,
    ctype: ConnectionType,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared
            .counters
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
        self.shared.by_type[type_index(self.ctype)].fetch_sub(1, Ordering::Relaxed);
    }
}

struct InProgressGuard(Arc<ServerCounters>);

impl Drop for InProgressGuard {
    fn drop(&mut self) {
        self.0
            .handshakes_in_progress
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The XTMP server.
#[derive(Debug)]
pub struct XTMPServer;

impl XTMPServer {
    /// Validates `opts`, binds the TCP listener and starts accepting.
    ///
    /// # Errors
    /// [`XTMPRuntimeError::Config`] for invalid options, [`XTMPRuntimeError::Bind`] if the
    /// address cannot be bound.
    pub async fn bind(
        opts: ServerOptions,
        router: XTMPMessageRouter,
    ) -> Result<ServerHandle, XTMPRuntimeError> {
        opts.validate()?;
        if opts.require_authentication && opts.authorized_clients.is_empty() {
            warn!("require_authentication is set but no client key is authorized: every handshake will fail");
        }
        let listener = crate::transport::listen_tcp(opts.bind_address).map_err(|source| {
            XTMPRuntimeError::Bind {
                address: opts.bind_address,
                source,
            }
        })?;
        let local_addr = listener.local_addr()?;
        let mut listeners = vec![ListenerInfo {
            kind: "tcp".into(),
            address: local_addr.to_string(),
        }];
        let ws = match &opts.websocket {
            Some(w) => Some(crate::ws::BoundListener::bind(w).await?),
            None => None,
        };
        if let Some(w) = &ws {
            listeners.push(w.info());
        }
        let udp = match opts.udp_bind_address {
            Some(a) => Some(
                UdpIo::bind(a)
                    .await
                    .map_err(|source| XTMPRuntimeError::Bind { address: a, source })?,
            ),
            None => None,
        };
        if let Some(u) = &udp {
            listeners.push(ListenerInfo {
                kind: "udp".into(),
                address: u.local_addr().to_string(),
            });
        }
        let key_manager = Arc::new(XTMPKeyManager::new(
            opts.server_config(),
            opts.key_rotation_interval,
        ));
        let engine = Arc::new(XTMPEncryptionEngine {
            encryption_types: opts.encryption_types.clone(),
            allow_plaintext: opts.allow_plaintext,
            enable_compression: opts.enable_compression,
            compression_threshold: opts.compression_threshold,
        });
        let manager = Arc::new(XTMPConnectionManager::new(
            key_manager,
            engine,
            Arc::new(router),
        ));
        let shared = Arc::new(ServerShared {
            limiter: HandshakeLimiter::new(opts.handshakes_per_second_per_ip),
            datagram_opts: Arc::new(opts.datagram.clone()),
            opts,
            manager,
            counters: Arc::new(ServerCounters::default()),
            started: Instant::now(),
            local_addr,
            shutdown: Arc::new(CancellationToken::new()),
            stopped: CancellationToken::new(),
            tracker: TaskTracker::new(),
            by_type: Default::default(),
            refusals: Arc::new(Semaphore::new(MAX_CONCURRENT_REFUSALS)),
            websocket_addr: ws.as_ref().map(|w| w.local_addr()),
            listeners,
            udp: udp.clone(),
            udp_counters: UdpCounters::default(),
        });
        info!(address = %local_addr, fingerprint = %hex::encode(shared.manager.key_manager.fingerprint()), "XTMP server listening");
        let s = shared.clone();
        shared.tracker.spawn(accept_loop(s, listener));
        if let Some(u) = udp {
            info!(address = %u.local_addr(), "XTMP UDP listener");
            shared
                .tracker
                .spawn(crate::udp_server::endpoint_loop(shared.clone(), u));
        }
        let handle = ServerHandle { shared };
        if let Some(w) = ws {
            handle
                .shared
                .tracker
                .spawn(crate::ws::accept_loop(handle.clone(), w));
        }
        Ok(handle)
    }
}

async fn accept_loop(shared: Arc<ServerShared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let active = ServerCounters::get(&shared.counters.connections_active);
                if active >= shared.opts.max_connections as u64 {
                    shared.refuse(stream, peer);
                } else {
                    shared.spawn_connection(stream, peer, ConnectionType::TcpReliable);
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    debug!("accept loop stopped");
}

/// A handle on a running server (cheap to clone).
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) shared: Arc<ServerShared>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The UDP listener's bound address, if there is one.
    pub fn udp_local_addr(&self) -> Option<SocketAddr> {
        self.shared.udp.as_ref().map(|u| u.local_addr())
    }

    /// Server-wide status.
    pub fn status(&self) -> ServerStatus {
        self.shared.status()
    }

    /// Metrics of every established session.
    pub fn sessions(&self) -> Vec<SessionMetrics> {
        self.shared.manager.all_session_metrics()
    }

    /// One session's metrics.
    pub fn session_metrics(&self, id: u64) -> Option<SessionMetrics> {
        self.shared.manager.session_metrics(id)
    }

    /// The connection manager (sessions, key manager, router).
    pub fn manager(&self) -> &Arc<XTMPConnectionManager> {
        &self.shared.manager
    }

    /// The options the server runs with.
    pub fn options(&self) -> &ServerOptions {
        &self.shared.opts
    }

    /// Serves one already-accepted byte stream (the seam for other stream transports such
    /// as a WebSocket adapter). Counts against `max_connections` like a TCP connection.
    pub fn serve_stream<S: StreamTransport>(
        &self,
        stream: S,
        peer: SocketAddr,
        connection_type: ConnectionType,
    ) {
        if self.shared.shutdown.is_cancelled() {
            return;
        }
        let active = ServerCounters::get(&self.shared.counters.connections_active);
        if active >= self.shared.opts.max_connections as u64 {
            self.shared.refuse(stream, peer);
        } else {
            self.shared.spawn_connection(stream, peer, connection_type);
        }
    }

    /// Graceful shutdown: stop accepting, let in-flight handlers finish within
    /// `drain_timeout` (the rest are answered with `SHUTTING_DOWN`), flush replies, send
    /// `Disconnect(SHUTTING_DOWN)` on every session, close, and return when all
    /// connection tasks are done. Idempotent.
    pub async fn shutdown(&self) {
        if !self.shared.shutdown.is_cancelled() {
            info!("XTMP server shutting down");
            self.shared.shutdown.cancel();
        }
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        self.shared.stopped.cancel();
    }

    /// Completes when the server has stopped (after [`ServerHandle::shutdown`]).
    pub async fn wait(&self) {
        self.shared.stopped.cancelled().await
    }

    /// Whether a shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }
}

// ------------------------------------------------------------------------------------
// Connection
// ------------------------------------------------------------------------------------

/// How a connection ends.
#[derive(Debug, Clone)]
pub(crate) enum Closing {
    /// Error and `Disconnect` are already sealed in `wbuf`; queued messages are discarded.
    Fatal,
    /// Flush the queues, then `Disconnect(code, reason)`.
    Graceful(ErrorCode, String),
    /// The peer is gone or said goodbye: send nothing more.
    PeerGone,
}

struct Outbound {
    message_type: MessageType,
    flags: XTMPFlags,
    payload: Vec<u8>,
    /// The request this answers: its push streams start once this is sealed.
    reply_to: Option<u64>,
    _slot: Option<OwnedSemaphorePermit>,
    /// The request came over the datagram path: the reply goes back there (if usable).
    udp: bool,
}

struct Inflight {
    flags: XTMPFlags,
    abort: Option<AbortHandle>,
    udp: bool,
}

pub(crate) struct ConnState {
    pub(crate) session: XTMPSession,
    pub(crate) wbuf: Vec<u8>,
    priority: VecDeque<Outbound>,
    normal: VecDeque<Outbound>,
    rr: usize,
    inflight: IdMap<Inflight>,
    pub(crate) closing: Option<Closing>,
    pub(crate) last_received: Instant,
    /// The datagram path (`UdpFast`: the only path; hybrid: the UDP path).
    /// Boxed: most sessions (TCP, WebSocket) never have one, and it is large.
    pub(crate) dgram: Option<Box<DgramState<ServerRel>>>,
    /// Set by the writer while it fills a batch (see [`ConnState::clock`]).
    batch_now: Option<std::time::Instant>,
    /// The writer's scratch for stream messages taken from their queues.
    stream_batch: Vec<Vec<u8>>,
}

/// Result of sealing an outgoing message on the path it belongs on.
enum Sealed {
    Done,
    /// No `RELIABLE` message id available yet (too many unacknowledged): try later.
    Blocked,
    /// Too large for a datagram on a `UdpFast` session: dropped.
    TooLarge,
}

impl ConnState {
    /// When this session's AEAD contexts may be freed: [`IDLE_KEYS`] after its last
    /// application message, if no handler is running and a context is built. Until then
    /// the writer wakes for it even when nothing else is due.
    fn keys_release_at(&self) -> Option<Instant> {
        (self.inflight.is_empty() && self.session.core().aead_resident())
            .then(|| Instant::from_std(self.session.last_activity) + IDLE_KEYS)
    }

    /// Once due (see [`ConnState::keys_release_at`]): keep the 32-byte keys but not their
    /// AEAD contexts (~1.2 KB; the next frame, such as a heartbeat, rebuilds them in
    /// about a microsecond).
    fn release_keys_if_idle(&mut self, now: Instant) {
        if self.keys_release_at().is_some_and(|at| at <= now) {
            self.session.core_mut().release_idle_keys();
        }
    }

    /// Moves frames the core queued (heartbeat answers, key updates) into the write
    /// buffer. Must run before anything else is sealed, to keep sequence order.
    pub(crate) fn drain_core(&mut self) {
        while let Some(f) = self.session.core_mut().poll_transmit() {
            match (&mut self.dgram, PathId::of_frame(&f)) {
                (Some(dg), Some(PathId::Datagram)) => dg.dbuf.extend_from_slice(&f),
                _ => self.wbuf.extend_from_slice(&f),
            }
        }
    }

    /// Seals an outgoing message on its path: TCP sessions (and hybrid traffic for TCP)
    /// as before; on a datagram path replies are `RELIABLE` and pushes are not.
    #[allow(clippy::too_many_arguments)]
    fn seal_routed(
        &mut self,
        counters: &ServerCounters,
        t: MessageType,
        flags: XTMPFlags,
        prefix: &[u8],
        payload: &[u8],
        udp_hint: bool,
        streaming: bool,
    ) -> Result<Sealed, XTMPError> {
        let Some(dg) = self.dgram.as_ref() else {
            self.seal_parts(counters, t, flags, prefix, payload)?;
            return Ok(Sealed::Done);
        };
        let fits = HEADER_LEN + 8 + prefix.len() + payload.len() <= dg.opts.budget;
        let path = if dg.is_primary() {
            PathId::Primary
        } else if streaming {
            dg.route(t, fits)
        } else if udp_hint && fits && dg.usable() {
            PathId::Datagram
        } else {
            PathId::Primary
        };
        if !dg.is_datagram(path) {
            self.seal_parts(counters, t, flags, prefix, payload)?;
            return Ok(Sealed::Done);
        }
        self.drain_core();
        let now = self.clock();
        let ConnState {
            session,
            dgram,
            wbuf,
            ..
        } = self;
        let Some(dg) = dgram.as_mut() else {
            return Ok(Sealed::Done);
        };
        let primary = dg.is_primary();
        let res = if streaming {
            dg.seal_prefixed(session.core_mut(), wbuf, path, t, flags, prefix, payload)
        } else {
            let Some(id) = dg.sender.reserve_id() else {
                if primary {
                    return Ok(Sealed::Blocked);
                }
                self.seal_parts(counters, t, flags, prefix, payload)?;
                return Ok(Sealed::Done);
            };
            // Replies carry no prefix (their correlation number is in `payload`).
            debug_assert!(prefix.is_empty());
            let r = dg.seal_reliable(session.core_mut(), wbuf, id, t, flags, payload);
            if r.is_ok() {
                let deadline = now + dg.opts.retransmit_deadline;
                dg.sender.on_sent(
                    now,
                    id,
                    ServerRel {
                        t,
                        flags,
                        body: payload.to_vec(),
                    },
                    deadline,
                );
            }
            r
        };
        match res {
            Ok(_) => {
                self.session.counters.messages_sent += 1;
                ServerCounters::add(&counters.messages_sent, 1);
                if t == MessageType::Error {
                    self.session.counters.errors_sent += 1;
                    let code = payload
                        .get(..2)
                        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                    counters.error_sent(ErrorCode(code));
                } else {
                    self.session.last_activity = now;
                }
                Ok(Sealed::Done)
            }
            Err(XTMPError::PayloadTooLarge { .. }) if !primary => {
                self.seal_parts(counters, t, flags, prefix, payload)?;
                Ok(Sealed::Done)
            }
            Err(XTMPError::PayloadTooLarge { .. }) => {
                if streaming {
                    self.session
                        .stream_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    ServerCounters::add(&counters.stream_dropped, 1);
                }
                Ok(Sealed::TooLarge)
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn seal(
        &mut self,
        counters: &ServerCounters,
        t: MessageType,
        flags: XTMPFlags,
        payload: &[u8],
    ) -> Result<u64, XTMPError> {
        self.seal_parts(counters, t, flags, &[], payload)
    }

    /// The time for activity stamps: the writer's batch time while it fills (one clock
    /// read per batch instead of one per message), else now.
    fn clock(&self) -> std::time::Instant {
        self.batch_now.unwrap_or_else(std::time::Instant::now)
    }

    /// Seals `prefix ‖ payload` on the primary path.
    fn seal_parts(
        &mut self,
        counters: &ServerCounters,
        t: MessageType,
        flags: XTMPFlags,
        prefix: &[u8],
        payload: &[u8],
    ) -> Result<u64, XTMPError> {
        self.drain_core();
        let seq = self.session.core_mut().seal_on_prefixed(
            PathId::Primary,
            t,
            flags,
            prefix,
            payload,
            &mut self.wbuf,
        )?;
        self.session.counters.messages_sent += 1;
        ServerCounters::add(&counters.messages_sent, 1);
        if t == MessageType::Error {
            self.session.counters.errors_sent += 1;
            let code = payload
                .get(..2)
                .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
            counters.error_sent(ErrorCode(code));
        } else {
            self.session.last_activity = self.clock();
        }
        Ok(seq)
    }

    /// Seals `Error(code)` and `Disconnect(code)` and marks the connection for closing
    /// without flushing the queues (the stream cannot be trusted any more).
    pub(crate) fn fatal(
        &mut self,
        counters: &ServerCounters,
        code: ErrorCode,
        reason: &str,
        request_seq: u64,
    ) {
        if matches!(self.closing, Some(Closing::Fatal) | Some(Closing::PeerGone)) {
            return;
        }
        let p = ErrorPayload {
            code,
            request_seq,
            reason: reason.to_string(),
        }
        .encode();
        let _ = self.seal(counters, MessageType::Error, XTMPFlags::empty(), &p);
        self.drain_core();
        let _ = self.session.core_mut().close(code, reason, &mut self.wbuf);
        self.priority.clear();
        self.normal.clear();
        self.closing = Some(Closing::Fatal);
    }
}

/// One established connection.
pub(crate) struct ServerConn {
    pub(crate) session_id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) ctype: ConnectionType,
    client_key: Option<[u8; 32]>,
    pub(crate) state: Mutex<ConnState>,
    pub(crate) wake: Arc<Notify>,
    /// Signalled by the writer each time it takes the write buffer.
    drained: Notify,
    queue_slots: Arc<Semaphore>,
    inflight_slots: Arc<Semaphore>,
    inflight_done: Notify,
    pub(crate) close: CancellationToken,
    /// In an `Arc`: every request's context holds it (see `RequestContext`).
    streams: Arc<StreamRegistry>,
    pub(crate) shared: Arc<ServerShared>,
    status_fn: Arc<dyn Fn() -> ServerStatus + Send + Sync>,
}

impl ServerConn {
    pub(crate) fn metrics(&self) -> SessionMetrics {
        let st = lock(&self.state);
        let mut m = st.session.metrics(st.inflight.len() as u64);
        if let Some(dg) = &st.dgram {
            let d = dg.metrics(st.session.core());
            m.quality.packet_loss = m.quality.packet_loss.max(d.loss);
            if d.srtt_ms > 0.0 {
                m.quality.latency_ms = d.srtt_ms;
            }
            m.datagram = Some(d);
        }
        m
    }

    /// Aborts the handlers still running (the session is gone).
    pub(crate) fn abort_inflight(&self) {
        let mut st = lock(&self.state);
        for (_, e) in st.inflight.drain() {
            if let Some(a) = e.abort {
                a.abort();
            }
        }
    }

    /// Asks the writer to close gracefully with `Disconnect(code, reason)`.
    pub(crate) fn request_close(&self, code: ErrorCode, reason: &str) {
        let mut st = lock(&self.state);
        if st.closing.is_none() {
            st.closing = Some(Closing::Graceful(code, reason.to_string()));
        }
        drop(st);
        self.wake.notify_one();
    }

    fn set_closing(&self, c: Closing) {
        let mut st = lock(&self.state);
        if st.closing.is_none() {
            st.closing = Some(c);
        }
        drop(st);
        self.wake.notify_one();
    }

    fn push(&self, st: &mut ConnState, o: Outbound, priority: bool) {
        if priority {
            st.priority.push_back(o);
        } else {
            st.normal.push_back(o);
        }
    }

    pub(crate) fn enqueue_error(
        &self,
        seq: u64,
        code: ErrorCode,
        reason: &str,
        slot: Option<OwnedSemaphorePermit>,
        priority: bool,
        udp: bool,
    ) {
        let payload = ErrorPayload {
            code,
            request_seq: seq,
            reason: reason.to_string(),
        }
        .encode();
        let mut st = lock(&self.state);
        if st.closing.is_some() && !matches!(st.closing, Some(Closing::Graceful(..))) {
            return;
        }
        self.push(
            &mut st,
            Outbound {
                message_type: MessageType::Error,
                flags: XTMPFlags::empty(),
                payload,
                reply_to: None,
                _slot: slot,
                udp,
            },
            priority,
        );
        drop(st);
        self.wake.notify_one();
    }

    /// A handler finished: queue `Ack` / response / error. No-op if the request was
    /// already answered (aborted at the end of a drain).
    fn complete(
        &self,
        seq: u64,
        t: MessageType,
        outcome: Result<Reply, crate::router::HandlerError>,
        slot: OwnedSemaphorePermit,
    ) {
        let mut st = lock(&self.state);
        let Some(entry) = st.inflight.remove(&seq) else {
            return;
        };
        let priority = entry.flags.contains(XTMPFlags::PRIORITY);
        let udp = entry.udp;
        let max = match &st.dgram {
            // A pure UDP session: the reply must fit one datagram.
            Some(dg) if dg.is_primary() => max_udp_reply_body(dg.opts.budget) + 8,
            _ => self.shared.opts.max_payload as usize,
        };
        let outcome = match outcome {
            Ok(Reply::Response(body)) if body.len().saturating_add(8) > max => {
                Err(crate::router::HandlerError::new(
                    if st.dgram.as_ref().is_some_and(|d| d.is_primary()) {
                        ErrorCode::MESSAGE_TOO_LARGE
                    } else {
                        ErrorCode::HANDLER_ERROR
                    },
                    "response exceeds the maximum payload",
                ))
            }
            other => other,
        };
        let prio_flag = if priority {
            XTMPFlags::PRIORITY
        } else {
            XTMPFlags::empty()
        };
        // A handler that answers nothing (a one-way message without ack) queues nothing:
        // the writer then need not run, unless it waits for the handlers to finish.
        let mut queued = true;
        match outcome {
            Ok(reply) => {
                queued = entry.flags.contains(XTMPFlags::REQUIRES_ACK)
                    || matches!(reply, Reply::Response(_));
                if entry.flags.contains(XTMPFlags::REQUIRES_ACK) {
                    self.push(
                        &mut st,
                        Outbound {
                            message_type: MessageType::Ack,
                            flags: prio_flag,
                            payload: encode_ack(seq).to_vec(),
                            reply_to: None,
                            _slot: None,
                            udp,
                        },
                        priority,
                    );
                }
                if reply == Reply::None {
                    self.streams.release(seq);
                }
                if let Reply::Response(body) = reply {
                    let mut payload = Vec::with_capacity(8 + body.len());
                    payload.extend_from_slice(&seq.to_be_bytes());
                    payload.extend_from_slice(&body);
                    let flags =
                        prio_flag | self.shared.manager.encryption_engine.flags_for(body.len());
                    self.push(
                        &mut st,
                        Outbound {
                            message_type: response_type_for(t),
                            flags,
                            payload,
                            reply_to: Some(seq),
                            _slot: Some(slot),
                            udp,
                        },
                        priority,
                    );
                }
            }
            Err(e) => {
                debug!(session = %format_args!("{:016x}", self.session_id), seq, code = ?e.code, "handler error");
                let payload = ErrorPayload {
                    code: e.code,
                    request_seq: seq,
                    reason: e.reason,
                }
                .encode();
                self.push(
                    &mut st,
                    Outbound {
                        message_type: MessageType::Error,
                        flags: prio_flag,
                        payload,
                        reply_to: Some(seq),
                        _slot: Some(slot),
                        udp,
                    },
                    priority,
                );
            }
        }
        let closing = st.closing.is_some();
        drop(st);
        if queued || closing {
            self.wake.notify_one();
        }
        self.inflight_done.notify_one();
    }

    /// Seals queued messages into the write buffer until `limit` bytes are buffered:
    /// priority queue, priority streams, then normal queue and streams round-robin
    /// (each turn takes a batch of up to [`FILL_BATCH`] messages from one queue).
    fn fill(&self, st: &mut ConnState, limit: usize) -> Result<(), XTMPError> {
        st.batch_now = Some(std::time::Instant::now());
        let r = self.fill_inner(st, limit);
        st.batch_now = None;
        r
    }

    fn fill_inner(&self, st: &mut ConnState, limit: usize) -> Result<(), XTMPError> {
        let counters = &self.shared.counters;
        let engine = &self.shared.manager.encryption_engine;
        let streams: Vec<Arc<StreamQueue>> = self.streams.snapshot();
        // `false`: the message went back to the front of its queue (no RELIABLE id yet).
        let seal_out = |st: &mut ConnState, o: Outbound, prio: bool| -> Result<bool, XTMPError> {
            match st.seal_routed(
                counters,
                o.message_type,
                o.flags,
                &[],
                &o.payload,
                o.udp,
                false,
            )? {
                Sealed::Blocked => {
                    if prio {
                        st.priority.push_front(o);
                    } else {
                        st.normal.push_front(o);
                    }
                    return Ok(false);
                }
                Sealed::TooLarge => {
                    debug!(message_type = ?o.message_type, "reply too large for a datagram; dropped");
                }
                Sealed::Done => {}
            }
            if let Some(seq) = o.reply_to {
                self.streams.release(seq);
            }
            Ok(true)
        };
        // Seals a batch taken from stream `s` within `room` bytes; `false` if it had nothing.
        let seal_stream_batch =
            |st: &mut ConnState, s: &StreamQueue, room: usize| -> Result<bool, XTMPError> {
                let mut batch = std::mem::take(&mut st.stream_batch);
                batch.clear();
                if s.pop_batch(&mut batch, FILL_BATCH, room, HEADER_LEN + 8) == 0 {
                    st.stream_batch = batch;
                    return Ok(false);
                }
                let id = s.stream_id.to_be_bytes();
                let mut res = Ok(());
                for body in batch.drain(..) {
                    if res.is_err() {
                        continue;
                    }
                    let mut flags = XTMPFlags::STREAMING | engine.flags_for(body.len());
                    if s.priority {
                        flags |= XTMPFlags::PRIORITY;
                    }
                    res = st
                        .seal_routed(counters, s.message_type, flags, &id, &body, false, true)
                        .map(|_| ());
                }
                st.stream_batch = batch;
                res.map(|()| true)
            };
        let buffered =
            |st: &ConnState| st.wbuf.len() + st.dgram.as_ref().map_or(0, |d| d.dbuf.len());
        'fill: while buffered(st) < limit {
            if let Some(o) = st.priority.pop_front() {
                if !seal_out(st, o, true)? {
                    break;
                }
                continue;
            }
            let room = limit - buffered(st);
            for s in streams.iter().filter(|s| s.priority) {
                if seal_stream_batch(st, s, room)? {
                    continue 'fill;
                }
            }
            let n = 1 + streams.len();
            let mut sent = false;
            for i in 0..n {
                let idx = (st.rr + i) % n;
                if idx == 0 {
                    let mut k = 0;
                    while k < FILL_BATCH && buffered(st) < limit {
                        let Some(o) = st.normal.pop_front() else {
                            break;
                        };
                        if !seal_out(st, o, false)? {
                            break;
                        }
                        k += 1;
                    }
                    if k == 0 && !st.normal.is_empty() {
                        // Blocked (no RELIABLE id): wait for acknowledgements.
                        break;
                    }
                    sent = k > 0;
                } else if let Some(s) = streams.get(idx - 1) {
                    sent = seal_stream_batch(st, s, room)?;
                }
                if sent {
                    st.rr = idx + 1;
                    break;
                }
            }
            if !sent {
                break;
            }
        }
        Ok(())
    }
}

enum HsError {
    /// Answer with a plain `Error` and close.
    Refuse(ErrorCode, &'static str),
    /// The peer went away (or sent garbage we answer with `code`).
    Gone,
}

async fn server_handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shared: &Arc<ServerShared>,
    fr: &mut FrameReader<R>,
    w: &mut W,
    peer: SocketAddr,
) -> Result<(Box<Session>, Option<[u8; 32]>, Vec<u8>), HsError> {
    let peer_bytes = peer.to_string().into_bytes();
    let counters = shared.counters.clone();
    let count_rx = move |n: u64| ServerCounters::add(&counters.bytes_received, n);
    let mut retries = 0u8;
    loop {
        let frame = match fr.next_frame(shared.opts.read_timeout, &count_rx).await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(HsError::Gone),
            Err(ReadError::Io(_)) => return Err(HsError::Gone),
            Err(ReadError::Timeout) => {
                return Err(HsError::Refuse(ErrorCode::TIMEOUT, "read timeout"))
            }
            Err(ReadError::Frame(e)) => return Err(HsError::Refuse(e.code(), "malformed frame")),
        };
        let under_load = ServerCounters::get(&shared.counters.handshakes_in_progress)
            > shared.opts.retry_threshold;
        let outcome = shared.manager.key_manager.handshake(
            std::time::Instant::now(),
            &peer_bytes,
            under_load,
            &frame,
        );
        match outcome {
            Ok(ServerOutcome::Retry(f)) => {
                retries += 1;
                if retries > xtmp_proto::handshake::MAX_RETRIES {
                    return Err(HsError::Refuse(
                        ErrorCode::HANDSHAKE_FAILED,
                        "too many retries",
                    ));
                }
                ServerCounters::add(&shared.counters.retries_sent, 1);
                write_all_timeout(w, &f, shared.opts.write_timeout)
                    .await
                    .map_err(|_| HsError::Gone)?;
                ServerCounters::add(&shared.counters.bytes_sent, f.len() as u64);
            }
            Ok(ServerOutcome::Accepted {
                ack,
                session,
                client_key,
                ..
            }) => {
                // The ack is written by the caller once the session is registered, so a
                // client that has its answer always finds its session in the manager.
                return Ok((session, client_key, ack));
            }
            Err(e) => {
                debug!(%peer, error = %e, "handshake failed");
                let reason = match e.code() {
                    ErrorCode::UNAUTHORIZED => "unauthorized",
                    ErrorCode::HANDSHAKE_FAILED => "handshake failed",
                    ErrorCode::CHECKSUM_MISMATCH => "checksum mismatch",
                    ErrorCode::PAYLOAD_TOO_LARGE => "payload too large",
                    ErrorCode::PROTOCOL_VIOLATION => "expected a Handshake message",
                    _ => "malformed handshake",
                };
                return Err(HsError::Refuse(e.code(), reason));
            }
        }
    }
}

async fn send_plain_and_linger<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shared: &ServerShared,
    fr: &mut FrameReader<R>,
    w: &mut W,
    code: ErrorCode,
    reason: &str,
) {
    let f = plain_error_frame(code, reason);
    shared.counters.error_sent(code);
    if write_all_timeout(w, &f, shared.opts.write_timeout.min(LINGER * 5))
        .await
        .is_ok()
    {
        ServerCounters::add(&shared.counters.bytes_sent, f.len() as u64);
    }
    shutdown_timeout(w, LINGER).await;
    fr.linger(LINGER.min(shared.opts.read_timeout)).await;
}

async fn handle_connection<S: StreamTransport>(
    shared: Arc<ServerShared>,
    stream: S,
    peer: SocketAddr,
    ctype: ConnectionType,
) {
    // The handshake phase runs boxed: its state (handshake, refusals) would otherwise be
    // laid out in this future, which lives as long as the session (idle-session memory).
    let Some((conn, fr, w)) = Box::pin(establish_connection(&shared, stream, peer, ctype)).await
    else {
        return;
    };
    let session_id = conn.session_id;
    run_conn_io(&conn, fr, w).await;
    conn.close.cancel();
    shared.manager.remove(session_id);
    conn.abort_inflight();
    if lock(&conn.state).dgram.is_some() {
        // Counted as TcpUdpHybrid since its UDP path was granted; the guard uncounts the
        // connection type it was spawned with.
        shared.by_type[type_index(ConnectionType::TcpUdpHybrid)].fetch_sub(1, Ordering::Relaxed);
        shared.by_type[type_index(ctype)].fetch_add(1, Ordering::Relaxed);
    }
    debug!(session = %format_args!("{session_id:016x}"), "session closed");
}

/// Handshake of a new stream connection, up to the registered session and the written
/// `HandshakeAck`; `None` when it failed (the peer was answered as the protocol allows).
#[allow(clippy::type_complexity)]
async fn establish_connection<S: StreamTransport>(
    shared: &Arc<ServerShared>,
    stream: S,
    peer: SocketAddr,
    ctype: ConnectionType,
) -> Option<(
    Arc<ServerConn>,
    FrameReader<tokio::io::ReadHalf<S>>,
    tokio::io::WriteHalf<S>,
)> {
    let (r, mut w) = tokio::io::split(stream);
    let mut fr = FrameReader::new(r, shared.opts.max_payload).release_when_idle(IDLE_READ_BUFFER);
    if !shared.limiter.allow(peer.ip(), Instant::now()) {
        ServerCounters::add(&shared.counters.handshakes_failed, 1);
        debug!(%peer, "handshake rate limit exceeded");
        // Boxed (rare path): keeps the connection task's future small.
        Box::pin(send_plain_and_linger(
            shared,
            &mut fr,
            &mut w,
            ErrorCode::RATE_LIMITED,
            "too many handshakes from this address",
        ))
        .await;
        return None;
    }
    ServerCounters::add(&shared.counters.handshakes_in_progress, 1);
    let in_progress = InProgressGuard(shared.counters.clone());
    let deadline = Instant::now() + shared.opts.handshake_timeout;
    let hs = tokio::select! {
        // Boxed: the handshake's state is large and only lives for the handshake; inline it
        // would stay in the connection task's future for the whole session.
        r = tokio::time::timeout_at(deadline, Box::pin(server_handshake(shared, &mut fr, &mut w, peer))) => r,
        _ = shared.shutdown.cancelled() => Ok(Err(HsError::Refuse(ErrorCode::SHUTTING_DOWN, "server is shutting down"))),
    };
    drop(in_progress);
    let (session, client_key, ack) = match hs {
        // Unbox here: a moved-from `Box` is only freed at the end of its scope, which for a
        // binding of this function would be the end of the session (1.4 KB per idle session).
        Ok(Ok((session, client_key, ack))) => (*session, client_key, ack),
        Ok(Err(HsError::Refuse(code, reason))) => {
            ServerCounters::add(&shared.counters.handshakes_failed, 1);
            Box::pin(send_plain_and_linger(shared, &mut fr, &mut w, code, reason)).await;
            return None;
        }
        Ok(Err(HsError::Gone)) => {
            ServerCounters::add(&shared.counters.handshakes_failed, 1);
            return None;
        }
        Err(_) => {
            ServerCounters::add(&shared.counters.handshakes_failed, 1);
            debug!(%peer, "handshake timed out");
            Box::pin(send_plain_and_linger(
                shared,
                &mut fr,
                &mut w,
                ErrorCode::TIMEOUT,
                "handshake timeout",
            ))
            .await;
            return None;
        }
    };
    ServerCounters::add(&shared.counters.handshakes_completed, 1);
    let session_id = session.session_id();
    let conn = build_conn(shared, session, peer, ctype, client_key, None);
    if !shared.manager.insert(conn.clone()) {
        warn!("session id collision; closing the new session");
        lock(&conn.state).fatal(&shared.counters, ErrorCode::INTERNAL, "internal error", 0);
    }
    if write_all_timeout(&mut w, &ack, shared.opts.write_timeout)
        .await
        .is_err()
    {
        shared.manager.remove(session_id);
        return None;
    }
    ServerCounters::add(&shared.counters.bytes_sent, ack.len() as u64);
    // Not kept for the life of the session.
    drop(ack);
    debug!(%peer, session = %format_args!("{session_id:016x}"), "session established");
    Some((conn, fr, w))
}

/// Builds the connection object of an established session (any transport).
pub(crate) fn build_conn(
    shared: &Arc<ServerShared>,
    session: Session,
    peer: SocketAddr,
    ctype: ConnectionType,
    client_key: Option<[u8; 32]>,
    dgram: Option<DgramState<ServerRel>>,
) -> Arc<ServerConn> {
    let session_id = session.session_id();
    let now = Instant::now();
    let xs = XTMPSession::new(session, peer, ctype, client_key, now.into_std());
    let wake = Arc::new(Notify::new());
    let close = CancellationToken::new();
    let weak = Arc::downgrade(shared);
    let status_fn: Arc<dyn Fn() -> ServerStatus + Send + Sync> =
        Arc::new(move || match weak.upgrade() {
            Some(s) => s.status(),
            None => ServerStatus {
                uptime_secs: 0.0,
                sessions_active: 0,
                connections_active: 0,
                connections_by_type: Default::default(),
                handshakes_completed: 0,
                handshakes_failed: 0,
                retries_sent: 0,
                connections_refused: 0,
                errors_sent: 0,
                errors_by_code: Default::default(),
                bytes_received: 0,
                bytes_sent: 0,
                messages_received: 0,
                messages_sent: 0,
                key_rotations: 0,
                stream_messages_dropped: 0,
                shutting_down: true,
                listeners: vec![],
                udp: None,
            },
        });
    // A push on a pure UDP session must fit one datagram (stream id included) once
    // compressed: bodies up to 8 datagrams are taken (JSON compresses well), and a frame
    // that still does not fit is dropped and counted when it is sealed.
    let max_body = match &dgram {
        Some(d) if d.is_primary() => (d.opts.max_payload() * 8).saturating_sub(8),
        _ => (shared.opts.max_payload as usize).saturating_sub(8),
    };
    let streams = Arc::new(StreamRegistry {
        streams: Arc::new(Mutex::new(Vec::new())),
        wake: wake.clone(),
        closed: close.clone(),
        max_streams: shared.opts.max_streams_per_connection,
        max_body,
        counters: shared.counters.clone(),
        session_dropped: xs.stream_dropped.clone(),
    });
    Arc::new(ServerConn {
        session_id,
        peer,
        ctype,
        client_key,
        state: Mutex::new(ConnState {
            session: xs,
            wbuf: Vec::new(),
            priority: VecDeque::new(),
            normal: VecDeque::new(),
            rr: 0,
            inflight: IdMap::default(),
            closing: None,
            last_received: now,
            dgram: dgram.map(Box::new),
            batch_now: None,
            stream_batch: Vec::new(),
        }),
        wake,
        drained: Notify::new(),
        queue_slots: Arc::new(Semaphore::new(shared.opts.max_queue_per_connection)),
        inflight_slots: Arc::new(Semaphore::new(shared.opts.max_inflight_per_connection)),
        inflight_done: Notify::new(),
        close,
        streams,
        shared: shared.clone(),
        status_fn,
    })
}

/// Runs an established connection's reader and writer in this task until both end. A
/// reply the reader queues (handlers that finish at once are answered inline) reaches
/// the writer without a wake-up of the task ([`crate::join`]).
async fn run_conn_io<R, W>(conn: &Arc<ServerConn>, fr: FrameReader<R>, w: W)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let reader = std::pin::pin!(conn_reader(conn.clone(), fr));
    let writer = std::pin::pin!(conn_writer(conn.clone(), w));
    crate::join::join_pinned(&mut [Some(reader as JoinFut<'_>), Some(writer)]).await;
}

async fn conn_reader<R: AsyncRead + Unpin>(conn: Arc<ServerConn>, mut fr: FrameReader<R>) {
    let counters = conn.shared.counters.clone();
    let count_rx = move |n: u64| ServerCounters::add(&counters.bytes_received, n);
    let read_timeout = conn.shared.opts.read_timeout;
    let mut peer_gone = false;
    loop {
        let res = tokio::select! {
            // A buffered frame first: its cancellation future is then never polled.
            biased;
            r = fr.next_frame(read_timeout, &count_rx) => r,
            _ = conn.close.cancelled() => break,
        };
        match res {
            Ok(Some(frame)) => match process_frame(&conn, frame) {
                Step::Stop => break,
                Step::Continue => {}
                Step::WriterBehind => {
                    if !wait_for_writer(&conn).await {
                        break;
                    }
                }
                Step::Wait(w) => {
                    // Boxed: rare, and the connection task's future stays small.
                    Box::pin(dispatch_wait(&conn, w)).await;
                    if conn.close.is_cancelled() {
                        break;
                    }
                }
            },
            Ok(None) => {
                peer_gone = true;
                conn.set_closing(Closing::PeerGone);
                break;
            }
            Err(ReadError::Io(e)) => {
                trace!(error = %e, "read failed");
                peer_gone = true;
                conn.set_closing(Closing::PeerGone);
                break;
            }
            Err(ReadError::Timeout) => {
                lock(&conn.state).fatal(
                    &conn.shared.counters,
                    ErrorCode::TIMEOUT,
                    "read timeout",
                    0,
                );
                conn.wake.notify_one();
                break;
            }
            Err(ReadError::Frame(e)) => {
                let code = e.code();
                lock(&conn.state).fatal(&conn.shared.counters, code, &code_name(code), 0);
                conn.wake.notify_one();
                break;
            }
        }
    }
    conn.close.cancelled().await;
    if !peer_gone {
        fr.linger(LINGER.min(read_timeout)).await;
    }
}

/// Pauses reading while too many sealed bytes wait for the writer. `false` if the
/// connection closed meanwhile.
async fn wait_for_writer(conn: &ServerConn) -> bool {
    loop {
        let drained = conn.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        if lock(&conn.state).wbuf.len() <= WBUF_LIMIT {
            return true;
        }
        tokio::select! {
            _ = &mut drained => {}
            _ = conn.close.cancelled() => return false,
        }
    }
}

/// What the reader does after a frame.
enum Step {
    Continue,
    /// More than [`WBUF_LIMIT`] sealed bytes wait for the writer: pause reading.
    WriterBehind,
    /// The message waits for room in the queues: pause reading.
    Wait(Box<Waiting>),
    Stop,
}

enum Incoming {
    /// An admitted application message (counted) and what to do with it.
    Message(Header, Vec<u8>, Admission),
    Refuse(u64, ErrorCode, &'static str),
    Nothing,
    Stop,
}

/// Opens one frame and dispatches it.
fn process_frame(conn: &Arc<ServerConn>, mut frame: BytesMut) -> Step {
    let now = Instant::now();
    let counters = &conn.shared.counters;
    let (incoming, behind) = {
        let mut st = lock(&conn.state);
        let res = st
            .session
            .core_mut()
            .open(now.into_std(), &mut frame[..], &mut OsRng);
        let incoming = match res {
            Ok(r) => {
                st.last_received = now;
                match r {
                    Received::Message { header, payload } => {
                        match pre_dispatch(conn, &mut st, now, None, header, payload) {
                            Pre::Deliver(h, p, id) => {
                                // On TCP the message is always dispatched (dispatch waits
                                // for room), so a RELIABLE one is accepted now.
                                if let (Some(id), Some(dg)) = (id, st.dgram.as_mut()) {
                                    dg.receiver.accept(id);
                                }
                                let admission = admit_locked(conn, &mut st, now, &h, &p);
                                Incoming::Message(h, p.into_owned(), admission)
                            }
                            Pre::Handled => Incoming::Nothing,
                            Pre::Refuse(seq, code, reason) => Incoming::Refuse(seq, code, reason),
                        }
                    }
                    Received::Pong { .. } => {
                        st.session.quality.on_pong();
                        // The heartbeat exchange is over; nothing else may come for a
                        // while.
                        st.release_keys_if_idle(now);
                        Incoming::Nothing
                    }
                    Received::KeyUpdated { generation } => {
                        ServerCounters::add(&counters.key_rotations, 1);
                        conn.shared.manager.key_manager.count_rotation();
                        trace!(generation, "key rotation completed");
                        Incoming::Nothing
                    }
                    Received::Ping | Received::Handled => Incoming::Nothing,
                    Received::Disconnect(d) => {
                        debug!(code = ?d.code, reason = %d.reason, "peer disconnected");
                        if st.closing.is_none() {
                            st.closing = Some(Closing::PeerGone);
                        }
                        Incoming::Stop
                    }
                }
            }
            Err(e) => {
                debug!(session = %format_args!("{:016x}", conn.session_id), error = %e, "frame rejected");
                let code = e.code();
                let seq = Header::parse(&frame, u32::MAX).map_or(0, |h| h.sequence_number);
                st.fatal(counters, code, &code_name(code), seq);
                Incoming::Stop
            }
        };
        st.drain_core();
        if !st.wbuf.is_empty()
            || st.closing.is_some()
            || st.dgram.as_ref().is_some_and(|d| d.wants_write())
        {
            conn.wake.notify_one();
        }
        // Only the reader adds to `wbuf` outside the writer's own fills (core answers
        // such as pongs), so this is the moment to check it.
        (incoming, st.wbuf.len() > WBUF_LIMIT)
    };
    let next = if behind {
        Step::WriterBehind
    } else {
        Step::Continue
    };
    match incoming {
        Incoming::Nothing => next,
        Incoming::Stop => Step::Stop,
        Incoming::Refuse(seq, code, reason) => {
            conn.enqueue_error(seq, code, reason, None, false, false);
            next
        }
        Incoming::Message(header, payload, admission) => {
            match dispatch_now(conn, header, payload, admission) {
                None => next,
                Some(w) => Step::Wait(w),
            }
        }
    }
}

/// What a received application message gets before any handler runs.
enum Admission {
    /// `Error` and `Ack` from the client: counted, nothing to run.
    Consumed,
    /// Answered with an `Error` (unknown type, not permitted, shutting down, ...).
    Refuse(ErrorCode, String),
    /// Run this route's handler.
    Run(crate::router::Route),
}

fn admit(conn: &Arc<ServerConn>, header: &Header, payload: &[u8]) -> Admission {
    let mut st = lock(&conn.state);
    admit_locked(conn, &mut st, Instant::now(), header, payload)
}

/// [`admit`] with the connection state already locked (the reader holds it to open the
/// frame; the route lookup does not touch the state).
fn admit_locked(
    conn: &Arc<ServerConn>,
    st: &mut ConnState,
    now: Instant,
    header: &Header,
    payload: &[u8],
) -> Admission {
    let t = header.message_type;
    let shared = &conn.shared;
    ServerCounters::add(&shared.counters.messages_received, 1);
    st.session.counters.messages_received += 1;
    st.session.last_activity = now.into_std();
    match t {
        MessageType::Error => {
            st.session.counters.errors_received += 1;
            if let Ok(e) = ErrorPayload::decode(payload) {
                debug!(code = ?e.code, request_seq = e.request_seq, reason = %e.reason, "peer reported an error");
            }
            return Admission::Consumed;
        }
        // The server sends nothing that asks for an acknowledgement.
        MessageType::Ack => return Admission::Consumed,
        _ => {}
    }
    if is_reserved(t) || xtmp_proto::datagram::is_datagram_control(t) {
        return Admission::Refuse(
            ErrorCode::NOT_PERMITTED,
            format!("{t:?} may not be sent to the server"),
        );
    }
    if shared.shutdown.is_cancelled() {
        return Admission::Refuse(ErrorCode::SHUTTING_DOWN, "server is shutting down".into());
    }
    match shared.manager.message_router.route(t) {
        None => Admission::Refuse(
            ErrorCode::UNKNOWN_MESSAGE_TYPE,
            format!("no handler for {t:?}"),
        ),
        Some(r) if r.options.require_client_key && conn.client_key.is_none() => Admission::Refuse(
            ErrorCode::UNAUTHORIZED,
            format!("{t:?} requires an authenticated client key"),
        ),
        Some(r) => Admission::Run(r.clone()),
    }
}

/// Runs the handler of an admitted message (its queue slot and in-flight permit held).
///
/// With `inline`, the handler's future is first polled right here, on the connection's
/// task: a handler that completes without waiting (echo, sinks, lookups) is answered
/// without a task of its own and without a hand-off between threads. One that has to wait
/// continues in a spawned task exactly as before (that task polls it again at once, with
/// its own waker). Either way the in-flight permit bounds the handlers running at once and
/// the reply goes through the same queues.
#[allow(clippy::too_many_arguments)]
fn start_handler(
    conn: &Arc<ServerConn>,
    header: Header,
    payload: Vec<u8>,
    route: crate::router::Route,
    slot: OwnedSemaphorePermit,
    permit: OwnedSemaphorePermit,
    udp: bool,
    inline: bool,
) {
    let t = header.message_type;
    let seq = header.sequence_number;
    let shared = &conn.shared;
    // Hybrid once a UDP path was granted; the peer's current address (it roams on UDP).
    let (connection_type, peer_address) = {
        let mut st = lock(&conn.state);
        st.inflight.insert(
            seq,
            Inflight {
                flags: header.flags,
                abort: None,
                udp,
            },
        );
        (st.session.connection_type, st.session.peer_address)
    };
    let ctx = RequestContext {
        session_id: conn.session_id,
        peer_address,
        connection_type,
        client_key: conn.client_key,
        request_seq: seq,
        message_type: t,
        route: route.options,
        streams: Some(conn.streams.clone()),
        shutdown: shared.shutdown.clone(),
        status: Some(conn.status_fn.clone()),
    };
    let req = Request {
        message_type: t,
        flags: header.flags - XTMPFlags::RELIABLE,
        sequence_number: seq,
        payload,
    };
    let mut fut = crate::router::HandlerScope(
        std::panic::AssertUnwindSafe(route.call(ctx, req)).catch_unwind(),
    );
    let handler_outcome =
        |r: std::thread::Result<Result<Reply, crate::router::HandlerError>>| match r {
            Ok(r) => r,
            Err(_) => {
                warn!("handler panicked");
                Err(crate::router::HandlerError::new(
                    ErrorCode::INTERNAL,
                    "handler failed",
                ))
            }
        };
    if inline {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(r) = std::pin::Pin::new(&mut fut).poll(&mut cx) {
            conn.complete(seq, t, handler_outcome(r), slot);
            drop(permit);
            return;
        }
    }
    let c2 = conn.clone();
    let handle = tokio::spawn(async move {
        let outcome = handler_outcome(fut.await);
        c2.complete(seq, t, outcome, slot);
        drop(permit);
    });
    if let Some(e) = lock(&conn.state).inflight.get_mut(&seq) {
        e.abort = Some(handle.abort_handle());
    }
}

/// An admitted message that has to wait for room (queue slot, then in-flight permit).
struct Waiting {
    header: Header,
    payload: Vec<u8>,
    admission: Admission,
    slot: Option<OwnedSemaphorePermit>,
}

/// Dispatches an admitted message if the queue slot and the in-flight permit are free at
/// once (the usual case); otherwise gives it back to wait for them ([`dispatch_wait`]).
fn dispatch_now(
    conn: &Arc<ServerConn>,
    header: Header,
    payload: Vec<u8>,
    admission: Admission,
) -> Option<Box<Waiting>> {
    if matches!(admission, Admission::Consumed) {
        return None;
    }
    // Reserve the reply's queue slot first: a full queue pauses reading (backpressure).
    let Ok(slot) = conn.queue_slots.clone().try_acquire_owned() else {
        return Some(Box::new(Waiting {
            header,
            payload,
            admission,
            slot: None,
        }));
    };
    let route = match admission {
        Admission::Run(r) => r,
        other => {
            refuse_or_consume(conn, &header, other, slot);
            return None;
        }
    };
    let Ok(permit) = conn.inflight_slots.clone().try_acquire_owned() else {
        return Some(Box::new(Waiting {
            header,
            payload,
            admission: Admission::Run(route),
            slot: Some(slot),
        }));
    };
    start_handler(conn, header, payload, route, slot, permit, false, true);
    None
}

fn refuse_or_consume(
    conn: &Arc<ServerConn>,
    header: &Header,
    admission: Admission,
    slot: OwnedSemaphorePermit,
) {
    if let Admission::Refuse(code, reason) = admission {
        let priority = header.flags.contains(XTMPFlags::PRIORITY);
        conn.enqueue_error(
            header.sequence_number,
            code,
            &reason,
            Some(slot),
            priority,
            false,
        );
    }
}

/// [`dispatch_now`]'s slow path: waits for the queue slot, then for the in-flight permit
/// (reading pauses meanwhile). Boxed by the caller: rare, and it keeps the connection
/// task's future small.
async fn dispatch_wait(conn: &Arc<ServerConn>, w: Box<Waiting>) {
    let Waiting {
        header,
        payload,
        admission,
        slot,
    } = *w;
    let slot = match slot {
        Some(s) => s,
        None => {
            let slot = tokio::select! {
                p = conn.queue_slots.clone().acquire_owned() => p.ok(),
                _ = conn.close.cancelled() => None,
            };
            let Some(slot) = slot else { return };
            slot
        }
    };
    let route = match admission {
        Admission::Run(r) => r,
        other => {
            refuse_or_consume(conn, &header, other, slot);
            return;
        }
    };
    let permit = tokio::select! {
        p = conn.inflight_slots.clone().acquire_owned() => p.ok(),
        _ = conn.close.cancelled() => None,
    };
    let Some(permit) = permit else { return };
    start_handler(conn, header, payload, route, slot, permit, false, true);
}

/// Dispatch without waiting (datagram paths): `false` when the queues are full and the
/// message was not taken (nothing was counted; a `RELIABLE` message will come again).
pub(crate) fn try_dispatch(
    conn: &Arc<ServerConn>,
    header: Header,
    payload: Vec<u8>,
    udp: bool,
) -> bool {
    let Ok(slot) = conn.queue_slots.clone().try_acquire_owned() else {
        return false;
    };
    let Ok(permit) = conn.inflight_slots.clone().try_acquire_owned() else {
        return false;
    };
    let priority = header.flags.contains(XTMPFlags::PRIORITY);
    let seq = header.sequence_number;
    match admit(conn, &header, &payload) {
        Admission::Consumed => {}
        Admission::Refuse(code, reason) => {
            conn.enqueue_error(seq, code, &reason, Some(slot), priority, udp);
        }
        // The UDP endpoint serves every session from one task: handlers get their own.
        Admission::Run(route) => {
            start_handler(conn, header, payload, route, slot, permit, udp, false)
        }
    }
    true
}

async fn conn_writer<W: AsyncWrite + Unpin>(conn: Arc<ServerConn>, mut w: W) {
    let shared = conn.shared.clone();
    let opts = &shared.opts;
    let counters = shared.counters.clone();
    let mut next_heartbeat = Instant::now() + opts.heartbeat_interval;
    let mut drain_deadline: Option<Instant> = None;
    // The batch being written; swapped with the (emptied) write buffer each round, so a
    // busy connection reuses two buffers instead of growing a new one per batch.
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let now = Instant::now();
        if drain_deadline.is_none() && shared.shutdown.is_cancelled() {
            drain_deadline = Some(now + opts.drain_timeout);
        }
        batch.clear();
        let (dbatch, dpeer, finished, deadline) = {
            let mut st = lock(&conn.state);
            let st = &mut *st;
            if st.closing.is_none() {
                // Key rotation and discarding superseded keys.
                if let Some(t) = st.session.core().poll_timeout() {
                    if now.into_std() >= t {
                        if let Err(e) = st
                            .session
                            .core_mut()
                            .handle_timeout(now.into_std(), &mut OsRng)
                        {
                            warn!(error = %e, "key rotation failed");
                            st.fatal(&counters, ErrorCode::INTERNAL, "internal error", 0);
                        }
                    }
                }
            }
            if st.closing.is_none() {
                // Datagram path: retransmissions, key-update repetition, probes, acks.
                st.drain_core();
                let ConnState {
                    session,
                    dgram,
                    wbuf,
                    ..
                } = &mut *st;
                let fatal = match dgram.as_mut() {
                    Some(dg) => {
                        let out = dg.run_timers(now.into_std(), session.core_mut(), wbuf);
                        if !out.expired.is_empty() {
                            debug!(
                                n = out.expired.len(),
                                "RELIABLE messages given up unacknowledged"
                            );
                        }
                        if let Some(up) = out.switched {
                            debug!(session = %format_args!("{:016x}", conn.session_id), udp_up = up, "hybrid path switch");
                        }
                        if out.ticked {
                            let stats = session.core().stats();
                            let total = stats.bytes_sent + stats.bytes_received;
                            session.quality.sample_throughput(now.into_std(), total);
                        }
                        out.fatal
                    }
                    None => false,
                };
                if fatal {
                    st.fatal(&counters, ErrorCode::TIMEOUT, "key update not answered", 0);
                }
            }
            if st.closing.is_none() && now >= next_heartbeat {
                let silent = now.saturating_duration_since(st.last_received);
                if st.session.quality.ping_outstanding() && silent >= opts.heartbeat_interval * 3 {
                    debug!(session = %format_args!("{:016x}", conn.session_id), "peer unresponsive");
                    st.fatal(&counters, ErrorCode::TIMEOUT, "peer unresponsive", 0);
                } else {
                    let stats = st.session.core().stats();
                    let total = stats.bytes_sent + stats.bytes_received;
                    st.session.quality.on_ping(now.into_std(), total);
                    st.session.refresh_quality();
                    st.drain_core();
                    let _ = st.session.core_mut().send_ping(now.into_std());
                }
                next_heartbeat = now + opts.heartbeat_interval;
            }
            let idle_deadline = Instant::from_std(st.session.last_activity) + opts.session_timeout;
            if st.closing.is_none() && st.inflight.is_empty() && now >= idle_deadline {
                debug!(session = %format_args!("{:016x}", conn.session_id), "idle timeout");
                st.closing = Some(Closing::Graceful(ErrorCode::TIMEOUT, "idle timeout".into()));
            }
            if let Some(dl) = drain_deadline {
                if st.closing.is_none() || matches!(st.closing, Some(Closing::Graceful(..))) {
                    if st.inflight.is_empty() {
                        if st.closing.is_none() {
                            st.closing = Some(Closing::Graceful(
                                ErrorCode::SHUTTING_DOWN,
                                "server shutting down".into(),
                            ));
                        }
                    } else if now >= dl {
                        // Drain time is over: answer what is still running, then close.
                        let aborted: Vec<(u64, Inflight)> = st.inflight.drain().collect();
                        for (seq, e) in aborted {
                            if let Some(a) = e.abort {
                                a.abort();
                            }
                            let payload = ErrorPayload {
                                code: ErrorCode::SHUTTING_DOWN,
                                request_seq: seq,
                                reason: "server shut down before the handler finished".into(),
                            }
                            .encode();
                            let o = Outbound {
                                message_type: MessageType::Error,
                                flags: XTMPFlags::empty(),
                                payload,
                                reply_to: None,
                                _slot: None,
                                udp: e.udp,
                            };
                            conn.push(st, o, e.flags.contains(XTMPFlags::PRIORITY));
                        }
                        if st.closing.is_none() {
                            st.closing = Some(Closing::Graceful(
                                ErrorCode::SHUTTING_DOWN,
                                "server shutting down".into(),
                            ));
                        }
                    }
                }
            }
            st.drain_core();
            let mut finished = false;
            match st.closing.clone() {
                None => {
                    if let Err(e) = conn.fill(st, WRITE_BATCH_BYTES) {
                        warn!(error = %e, "cannot seal an outgoing message");
                        st.fatal(&counters, e.code(), "internal error", 0);
                        finished = true;
                    }
                }
                Some(Closing::Graceful(code, reason)) if st.inflight.is_empty() => {
                    if let Err(e) = conn.fill(st, usize::MAX) {
                        warn!(error = %e, "cannot seal an outgoing message");
                    }
                    st.drain_core();
                    let _ = st.session.core_mut().close(code, &reason, &mut st.wbuf);
                    finished = true;
                }
                Some(Closing::Graceful(..)) => {
                    // Idle/admin close waits for running handlers (drain handles shutdown).
                    if let Err(e) = conn.fill(st, WRITE_BATCH_BYTES) {
                        warn!(error = %e, "cannot seal an outgoing message");
                    }
                }
                Some(Closing::Fatal) => finished = true,
                Some(Closing::PeerGone) => {
                    st.wbuf.clear();
                    finished = true;
                }
            }
            std::mem::swap(&mut batch, &mut st.wbuf);
            let mut deadline = next_heartbeat.min(idle_deadline);
            if let Some(t) = st.session.core().poll_timeout() {
                deadline = deadline.min(Instant::from_std(t));
            }
            if let Some(dl) = drain_deadline {
                deadline = deadline.min(dl);
            }
            if let Some(t) = st.keys_release_at().filter(|&t| t > now) {
                deadline = deadline.min(t);
            }
            let (dbatch, dpeer) = match st.dgram.as_mut() {
                Some(dg) => {
                    if let Some(t) = dg.poll_timeout(st.session.core()) {
                        deadline = deadline.min(Instant::from_std(t));
                    }
                    if dg.is_primary() {
                        (Vec::new(), None)
                    } else {
                        (std::mem::take(&mut dg.dbuf), Some(dg.peer.clone()))
                    }
                }
                None => (Vec::new(), None),
            };
            if batch.is_empty() && dbatch.is_empty() {
                // Going idle: do not hold large buffers for an idle session.
                if st.wbuf.capacity() > IDLE_BUF_CAPACITY {
                    st.wbuf = Vec::new();
                }
                if st.stream_batch.capacity() > 0 {
                    st.stream_batch = Vec::new();
                }
                st.release_keys_if_idle(now);
            }
            (dbatch, dpeer, finished, deadline)
        };
        conn.drained.notify_waiters();
        let wrote = !batch.is_empty() || !dbatch.is_empty();
        if !wrote && batch.capacity() > IDLE_BUF_CAPACITY {
            batch = Vec::new();
        }
        if !batch.is_empty() {
            match write_all_timeout(&mut w, &batch, opts.write_timeout).await {
                Ok(()) => ServerCounters::add(&counters.bytes_sent, batch.len() as u64),
                Err(e) => {
                    debug!(error = %e, "write failed");
                    conn.set_closing(Closing::PeerGone);
                    break;
                }
            }
        }
        if let (false, Some(peer), Some(io)) = (dbatch.is_empty(), dpeer, shared.udp.as_ref()) {
            // The hybrid session's UDP path.
            let mut sink = UdpFrameSink::new(io.clone(), peer, opts.datagram.budget);
            if write_all_timeout(&mut sink, &dbatch, opts.write_timeout)
                .await
                .is_ok()
            {
                ServerCounters::add(&counters.bytes_sent, dbatch.len() as u64);
            }
        }
        if finished {
            break;
        }
        if wrote {
            continue;
        }
        tokio::select! {
            _ = conn.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shared.shutdown.cancelled(), if drain_deadline.is_none() => {}
            _ = conn.inflight_done.notified(), if drain_deadline.is_some() => {}
        }
    }
    shutdown_timeout(&mut w, LINGER).await;
    conn.close.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_limits_per_ip() {
        let l = HandshakeLimiter::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let t0 = Instant::now();
        assert!(l.allow(a, t0));
        assert!(l.allow(a, t0));
        assert!(!l.allow(a, t0));
        assert!(l.allow(b, t0));
        assert!(l.allow(a, t0 + Duration::from_millis(500)));
        assert!(!l.allow(a, t0 + Duration::from_millis(500)));
        let unlimited = HandshakeLimiter::new(0);
        for _ in 0..1000 {
            assert!(unlimited.allow(a, t0));
        }
    }
}
