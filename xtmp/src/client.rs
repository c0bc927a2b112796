//! The client: [`XTMPClient::connect`], then [`XTMPClient::request`] (correlated by
//! sequence number, many concurrent requests on one connection), [`XTMPClient::send`]
//! (fire-and-forget or acknowledged) and [`XTMPClient::subscribe`] (server push).
//!
//! When the connection drops, the client reconnects with exponential backoff and
//! resubscribes. Nothing is lost silently: a request whose connection died ends in
//! [`ClientError::ConnectionLost`] (`sent: false` means it never left and is safe to
//! retry), and a subscription yields one `Err` item marking the gap before the pushes
//! of the new connection. (A fire-and-forget [`XTMPClient::send`] returns once queued: one
//! still queued when its connection dies is dropped; send with `ack` to know.)

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{
    mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore, SemaphorePermit, TryAcquireError,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};
use xtmp_crypto::xwing::{XWingPublicKey, XWingSecretKey};
use xtmp_proto::control::{decode_ack, split_response, ErrorPayload};
use xtmp_proto::header::DEFAULT_MAX_STREAM_PAYLOAD;
use xtmp_proto::{
    ClientConfig, ClientHandshake, ClientOutcome, EncryptionType, ErrorCode, Header, MessageType,
    Received, Session, SessionConfig, XTMPFlags,
};

use crate::error::ClientError;
use crate::udp::{DatagramOptions, DatagramPathMetrics};

mod dgram;
use crate::manager::ConnectionType;
use crate::metrics::{QualityTracker, XTMPQualityMetrics};
use crate::order::{SkippedStep, TransportInfo, TransportStep, TransportTarget};
use crate::rng::{unix_time_ns, OsRng};
use crate::router::lock;
use crate::transport::{
    parse_plain_error, shutdown_timeout, write_all_timeout, FrameReader, ReadError,
};

const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// [`XTMPClient::send_batch`] seals while the write buffer holds less than this, then
/// waits for the writer to take it: two buffers of about this size alternate (one written,
/// one filled), small enough for the allocator to reuse them without fresh pages.
const BATCH_WBUF_LIMIT: usize = WRITE_BATCH_BYTES;

/// What one round of [`XTMPClient::send_batch`] did.
enum BatchStep {
    /// This many messages sealed into the write buffer.
    Sealed(usize),
    /// Messages are queued ahead (or the session has a datagram path): use the queue.
    ViaQueue,
    /// The write buffer is full: wait for the writer to take it.
    Wait,
    /// The connection ended; the supervisor is replacing it.
    Retry,
    Fail(ClientError),
}

/// A cheap hasher for integer ids looked up once or more per message: subscription ids
/// and the client's own request numbers (a peer's values are only looked up), and on the
/// server the requests in flight (at most `max_inflight_per_connection`, numbered in
/// order). No table keyed by it can be grown by a peer, so the keyed SipHash of the
/// default hasher buys nothing there.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by the client's own ids (see [`IdHasher`]).
pub(crate) type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Reconnection policy (exponential backoff with jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Reconnect after a lost connection (default true).
    pub enabled: bool,
    /// First delay (default 100 ms); doubles after each failed attempt.
    pub initial_backoff: Duration,
    /// Upper bound of the delay (default 10 s).
    pub max_backoff: Duration,
    /// Give up after this many failed attempts in a row (`None`: never; default 20).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_attempts: Some(20),
        }
    }
}

/// Client settings. [`ClientOptions::new`] gives the defaults.
#[derive(Clone)]
pub struct ClientOptions {
    /// The server's static public key (pinned).
    pub server_key: XWingPublicKey,
    /// The client's static key pair: `Some` authenticates the client (`pqIK`).
    pub client_key: Option<Arc<XWingSecretKey>>,
    /// Accepted record protections, most preferred first.
    pub encryption_types: Vec<EncryptionType>,
    /// TCP connect plus handshake must finish within this long (default 10 s).
    pub connect_timeout: Duration,
    /// Default deadline of `request`, `send` and `subscribe` (default 30 s).
    pub request_timeout: Duration,
    /// Heartbeat interval (default 15 s); the smoothed RTT is in [`XTMPClient::quality`].
    pub heartbeat_interval: Duration,
    /// Key rotation interval (default 300 s; the server's, if shorter, wins).
    pub key_rotation_interval: Duration,
    /// Largest payload (default 16 MiB).
    pub max_payload: u32,
    /// Compress payloads of at least `compression_threshold` bytes (default on).
    pub enable_compression: bool,
    /// Compression threshold (default 1024).
    pub compression_threshold: usize,
    /// Reconnection policy.
    pub reconnect: ReconnectPolicy,
    /// Requests (and acknowledged sends) outstanding at once (default 1024); more wait.
    pub max_in_flight: usize,
    /// Pushed messages buffered per subscription (default 256). When full, the connection
    /// stops reading (backpressure towards the server).
    pub subscription_capacity: usize,
    /// Local address to connect from (default: any).
    pub local_address: Option<SocketAddr>,
    /// A started frame must be complete within this long (default 30 s).
    pub read_timeout: Duration,
    /// A write must complete within this long (default 30 s).
    pub write_timeout: Duration,
    /// Transports to try, in order, each with its own timeout (see [`crate::order`]).
    /// Empty (the default): TCP to the address given to `connect`, within
    /// `connect_timeout`.
    pub transport_order: Vec<TransportStep>,
    /// Datagram settings of `UdpFast` and `TcpUdpHybrid` sessions (budget, retransmission,
    /// hybrid policy and switching). `RELIABLE` messages are given up after
    /// `request_timeout`.
    pub datagram: DatagramOptions,
    /// The server's UDP address for a `TcpUdpHybrid` session (default: the TCP address's
    /// IP with the port the server grants).
    pub udp_address: Option<SocketAddr>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("server_key", &self.server_key)
            .field("mutual", &self.client_key.is_some())
            .field("encryption_types", &self.encryption_types)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect", &self.reconnect)
            .field("transport_order", &self.transport_order)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Defaults for a server with static key `server_key`.
    pub fn new(server_key: XWingPublicKey) -> Self {
        Self {
            server_key,
            client_key: None,
            encryption_types: vec![
                EncryptionType::PostQuantum,
                EncryptionType::Aes256Gcm,
                EncryptionType::ChaCha20Poly1305,
            ],
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(15),
            key_rotation_interval: Duration::from_secs(300),
            max_payload: DEFAULT_MAX_STREAM_PAYLOAD,
            enable_compression: true,
            compression_threshold: 1024,
            reconnect: ReconnectPolicy::default(),
            max_in_flight: 1024,
            subscription_capacity: 256,
            local_address: None,
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            transport_order: Vec::new(),
            datagram: DatagramOptions::default(),
            udp_address: None,
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.server_key.clone());
        c.client_key = self.client_key.clone();
        c.encryption_types = self.encryption_types.clone();
        let mut s = SessionConfig::default();
        s.key_rotation_interval = self.key_rotation_interval;
        s.max_payload = self.max_payload;
        c.session = s;
        c
    }

    fn flags_for(&self, len: usize) -> XTMPFlags {
        if self.enable_compression && len >= self.compression_threshold {
            XTMPFlags::COMPRESSED
        } else {
            XTMPFlags::empty()
        }
    }
}

/// A correlated response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `Response`, `QLOCKResponse` or `TLSLSResponse`.
    pub message_type: MessageType,
    /// The body (after the 8-byte correlation prefix).
    pub body: Vec<u8>,
    /// Flags of the response frame (`COMPRESSED` if it travelled compressed, ...).
    pub flags: XTMPFlags,
    /// Sequence number of the request it answers.
    pub request_seq: u64,
}

impl Response {
    /// Decodes the body as JSON.
    ///
    /// # Errors
    /// [`ClientError::Json`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Json(e.to_string()))
    }
}

/// A message pushed by the server on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedMessage {
    /// Its type (the subscribed type).
    pub message_type: MessageType,
    /// Flags (`STREAMING`, maybe `PRIORITY`, `COMPRESSED`).
    pub flags: XTMPFlags,
    /// The stream id (the subscribe request's sequence number on the current connection).
    pub stream_id: u64,
    /// The frame's sequence number.
    pub sequence_number: u64,
    /// The body.
    pub body: Vec<u8>,
}

/// Client counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    /// Successful reconnections.
    pub reconnects: u64,
    /// `Error` messages not matching any outstanding request (e.g. errors about
    /// fire-and-forget messages); each is also logged.
    pub unmatched_errors: u64,
    /// Pushed messages for streams no subscription holds any more.
    pub orphan_pushes: u64,
}

// ------------------------------------------------------------------------------------

enum OutKind {
    Request(oneshot::Sender<Result<Response, ClientError>>),
    Ack(oneshot::Sender<Result<(), ClientError>>),
    /// Fire and forget ([`XTMPClient::send`] without ack), already returned to the caller:
    /// the in-flight permit bounds the queue until the message is sealed.
    Queued(OwnedSemaphorePermit),
    Subscribe {
        sub_id: u64,
        tx: Option<oneshot::Sender<Result<Response, ClientError>>>,
    },
}

impl OutKind {
    fn fail(self, e: ClientError) {
        match self {
            OutKind::Request(tx) => {
                let _ = tx.send(Err(e));
            }
            OutKind::Ack(tx) => {
                let _ = tx.send(Err(e));
            }
            OutKind::Subscribe { tx: Some(tx), .. } => {
                let _ = tx.send(Err(e));
            }
            OutKind::Subscribe { tx: None, .. } | OutKind::Queued(_) => {}
        }
    }
}

struct Outbound {
    message_type: MessageType,
    flags: XTMPFlags,
    payload: Vec<u8>,
    kind: OutKind,
}

enum Pending {
    Request(oneshot::Sender<Result<Response, ClientError>>),
    Ack(oneshot::Sender<Result<(), ClientError>>),
    Subscribe {
        sub_id: u64,
        tx: Option<oneshot::Sender<Result<Response, ClientError>>>,
    },
}

impl Pending {
    fn fail(self, e: ClientError) -> Option<(u64, ClientError)> {
        match self {
            Pending::Request(tx) => {
                let _ = tx.send(Err(e));
                None
            }
            Pending::Ack(tx) => {
                let _ = tx.send(Err(e));
                None
            }
            Pending::Subscribe { tx: Some(tx), .. } => {
                let _ = tx.send(Err(e));
                None
            }
            Pending::Subscribe { sub_id, tx: None } => Some((sub_id, e)),
        }
    }
}

struct CState {
    core: Session,
    wbuf: Vec<u8>,
    priority: VecDeque<Outbound>,
    normal: VecDeque<Outbound>,
    pending: IdMap<Pending>,
    streams: IdMap<u64>,
    ping_waiters: Vec<oneshot::Sender<Duration>>,
    ended: Option<ClientError>,
    closing: bool,
    last_received: Instant,
    quality: QualityTracker,
    /// `UdpFast` / `TcpUdpHybrid`: the datagram side ([`dgram`]).
    dgram: Option<Box<dgram::ClientDgram>>,
}

impl CState {
    fn drain_core(&mut self) {
        while let Some(f) = self.core.poll_transmit() {
            match self.dgram.as_mut() {
                Some(d) => d.route_core_frame(&mut self.wbuf, f),
                None => self.wbuf.extend_from_slice(&f),
            }
        }
    }

    /// Records a sealed outgoing message under its sequence number.
    fn register_sent(&mut self, seq: u64, kind: OutKind) {
        match kind {
            OutKind::Request(tx) => {
                self.pending.insert(seq, Pending::Request(tx));
            }
            OutKind::Ack(tx) => {
                self.pending.insert(seq, Pending::Ack(tx));
            }
            // Sealed: its slot is free again.
            OutKind::Queued(_permit) => {}
            OutKind::Subscribe { sub_id, tx } => {
                self.streams.insert(seq, sub_id);
                self.pending.insert(seq, Pending::Subscribe { sub_id, tx });
            }
        }
    }
}

struct ClientConn {
    session_id: u64,
    /// The transport this connection runs on.
    transport: TransportInfo,
    state: Mutex<CState>,
    wake: Notify,
    /// Signalled by the writer each time it takes the write buffer.
    drained: Notify,
    close: CancellationToken,
}

impl ClientConn {
    /// Neither ended nor closing: messages can be queued on it.
    fn usable(&self) -> bool {
        let st = lock(&self.state);
        st.ended.is_none() && !st.closing
    }

    /// Queues `o`, or gives it back if the connection has ended.
    fn try_enqueue(&self, o: Outbound) -> Result<(), Outbound> {
        let mut st = lock(&self.state);
        if st.ended.is_some() || st.closing {
            return Err(o);
        }
        if o.flags.contains(XTMPFlags::PRIORITY) {
            st.priority.push_back(o);
        } else {
            st.normal.push_back(o);
        }
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Ends the connection with `reason`: unsent messages fail with `sent: false`
    /// (fire-and-forget ones, already reported as sent, are dropped), outstanding ones
    /// with `reason` (or `sent: true`). Returns subscriptions whose resubscription was
    /// outstanding.
    fn end(&self, reason: ClientError) -> Vec<(u64, ClientError)> {
        let mut st = lock(&self.state);
        if st.ended.is_some() {
            return Vec::new();
        }
        st.ended = Some(reason.clone());
        let mut unsent: Vec<Outbound> = st.priority.drain(..).collect();
        unsent.extend(st.normal.drain(..));
        let mut dropped = 0usize;
        for o in unsent {
            if matches!(o.kind, OutKind::Queued(_)) {
                dropped += 1;
            }
            o.kind.fail(ClientError::ConnectionLost { sent: false });
        }
        if dropped > 0 {
            debug!(
                dropped,
                "fire-and-forget messages still queued when the connection ended"
            );
        }
        let pending_err = match &reason {
            ClientError::Disconnected { .. } | ClientError::Closed => reason.clone(),
            _ => ClientError::ConnectionLost { sent: true },
        };
        let mut orphaned = Vec::new();
        for (_, p) in st.pending.drain() {
            if let Some(x) = p.fail(pending_err.clone()) {
                orphaned.push(x);
            }
        }
        st.ping_waiters.clear();
        drop(st);
        self.close.cancel();
        self.wake.notify_one();
        orphaned
    }
}

#[derive(Clone)]
enum LinkState {
    Connecting,
    Connected(Arc<ClientConn>),
    Closed(ClientError),
}

struct SubEntry {
    message_type: MessageType,
    payload: Vec<u8>,
    tx: mpsc::Sender<Result<PushedMessage, ClientError>>,
    /// A connection loss happened and could not be reported yet (channel full).
    gap: Option<ClientError>,
}

struct ClientInner {
    addr: SocketAddr,
    opts: ClientOptions,
    link: watch::Sender<LinkState>,
    subs: Mutex<IdMap<SubEntry>>,
    next_sub: AtomicU64,
    inflight: Arc<Semaphore>,
    closed: CancellationToken,
    done: CancellationToken,
    reconnects: AtomicU64,
    unmatched_errors: AtomicU64,
    orphan_pushes: AtomicU64,
}

struct DropGuard(CancellationToken);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// An XTMP client connection (cheap to clone; all clones share the connection).
/// Dropping the last clone closes it.
#[derive(Clone)]
pub struct XTMPClient {
    inner: Arc<ClientInner>,
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for XTMPClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XTMPClient")
            .field("server", &self.inner.addr)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// Connects to `address` (shorthand for [`XTMPClient::connect`]).
///
/// # Errors
/// As [`XTMPClient::connect`].
pub async fn connect(
    address: SocketAddr,
    options: ClientOptions,
) -> Result<XTMPClient, ClientError> {
    XTMPClient::connect(address, options).await
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;
/// A connection's I/O: the byte stream (absent for `UdpFast`, whose writer is a datagram
/// sink) and the datagram side of `UdpFast` / `TcpUdpHybrid` sessions.
struct Io {
    reader: Option<FrameReader<BoxRead>>,
    writer: BoxWrite,
    dgram: Option<Box<dgram::ClientDgram>>,
}

/// Walks the transport order (`ClientOptions::transport_order`, or TCP to `addr`): each step
/// must connect and complete the handshake within its timeout; see [`crate::order`].
async fn establish(
    addr: SocketAddr,
    opts: &ClientOptions,
) -> Result<(Arc<ClientConn>, Io), ClientError> {
    let default_order = [TransportStep::tcp()];
    let order: &[TransportStep] = if opts.transport_order.is_empty() {
        &default_order
    } else {
        &opts.transport_order
    };
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    for step in order {
        let timeout = step.timeout.unwrap_or(opts.connect_timeout);
        let endpoint = step.endpoint(addr);
        let res = match tokio::time::timeout(timeout, establish_step(addr, opts, step)).await {
            Ok(r) => r,
            Err(_) => Err(match &step.target {
                TransportTarget::WebSocket(w) => ClientError::WebSocket {
                    url: w.url.to_string(),
                    reason: format!("no session within {timeout:?}"),
                },
                TransportTarget::Address(a) => ClientError::ConnectTimeout(*a),
                _ => ClientError::ConnectTimeout(addr),
            }),
        };
        match res {
            Ok((session, mut io)) => {
                let transport = TransportInfo {
                    connection_type: step.connection_type,
                    endpoint,
                    skipped,
                };
                let conn = new_conn(*session, transport);
                lock(&conn.state).dgram = io.dgram.take();
                return Ok((conn, io));
            }
            Err(e) => {
                if order.len() == 1 || !crate::order::falls_through(&e) {
                    return Err(e);
                }
                debug!(transport = %step.connection_type, %endpoint, error = %e, "transport failed; trying the next one");
                skipped.push(SkippedStep {
                    connection_type: step.connection_type,
                    endpoint,
                    error: e.to_string(),
                });
                failures.push((step.connection_type, e));
            }
        }
    }
    Err(ClientError::AllTransportsFailed(failures))
}

async fn tcp_connect(addr: SocketAddr, opts: &ClientOptions) -> Result<TcpStream, ClientError> {
    match opts.local_address {
        None => TcpStream::connect(addr).await,
        Some(local) => {
            let sock = if local.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            };
            match sock {
                Ok(s) => match s.bind(local) {
                    Ok(()) => s.connect(addr).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
    }
    .map_err(|e| ClientError::Connect {
        address: addr,
        reason: e.to_string(),
    })
}

/// One step of the order: open the byte stream, then run the handshake over it.
async fn establish_step(
    addr: SocketAddr,
    opts: &ClientOptions,
    step: &TransportStep,
) -> Result<(Box<Session>, Io), ClientError> {
    let (r, mut w, addr): (BoxRead, BoxWrite, SocketAddr) =
        match (step.connection_type, &step.target) {
            (
                ConnectionType::TcpReliable,
                TransportTarget::ConnectAddress | TransportTarget::Address(_),
            ) => {
                let a = match step.target {
                    TransportTarget::Address(a) => a,
                    _ => addr,
                };
                let stream = tcp_connect(a, opts).await?;
                let _ = stream.set_nodelay(true);
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w), a)
            }
            (ConnectionType::WebSocketFallback, TransportTarget::WebSocket(target)) => {
                let (stream, peer) =
                    crate::ws::connect(target, opts.local_address, opts.max_payload.max(8192))
                        .await?;
                let (r, w) = tokio::io::split(stream);
                (Box::new(r), Box::new(w), peer)
            }
            (
                ConnectionType::UdpFast,
                TransportTarget::ConnectAddress | TransportTarget::Address(_),
            ) => {
                let a = match step.target {
                    TransportTarget::Address(a) => a,
                    _ => addr,
                };
                return dgram::establish_udp(a, opts).await;
            }
            (
                ConnectionType::TcpUdpHybrid,
                TransportTarget::ConnectAddress | TransportTarget::Address(_),
            ) => {
                let tcp_step = TransportStep {
                    connection_type: ConnectionType::TcpReliable,
                    ..step.clone()
                };
                let (session, mut io) = Box::pin(establish_step(addr, opts, &tcp_step)).await?;
                let tcp_addr = match step.target {
                    TransportTarget::Address(a) => a,
                    _ => addr,
                };
                io.dgram = Some(dgram::ClientDgram::hybrid(tcp_addr, opts).await?);
                return Ok((session, io));
            }
            (t, _) => return Err(ClientError::UnsupportedTransport(t)),
        };
    let mut fr = FrameReader::new(r, opts.max_payload.max(8192));
    let (mut hs, m1) = ClientHandshake::start(opts.client_config(), unix_time_ns(), &mut OsRng)
        .map_err(ClientError::Handshake)?;
    let io_err = |e: std::io::Error| ClientError::Connect {
        address: addr,
        reason: e.to_string(),
    };
    write_all_timeout(&mut w, &m1, opts.write_timeout)
        .await
        .map_err(io_err)?;
    let session = loop {
        let frame = match fr.next_frame(opts.read_timeout, &|_| {}).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(ClientError::Connect {
                    address: addr,
                    reason: "connection closed during the handshake".into(),
                })
            }
            Err(ReadError::Io(e)) => return Err(io_err(e)),
            Err(ReadError::Timeout) => return Err(ClientError::ConnectTimeout(addr)),
            Err(ReadError::Frame(e)) => return Err(ClientError::Handshake(e)),
        };
        if let Some(e) = parse_plain_error(&frame) {
            return Err(ClientError::Refused {
                code: e.code,
                reason: e.reason,
            });
        }
        match hs.handle(std::time::Instant::now(), &frame) {
            Ok(ClientOutcome::Retry(f)) => {
                write_all_timeout(&mut w, &f, opts.write_timeout)
                    .await
                    .map_err(io_err)?;
            }
            Ok(ClientOutcome::Established(s)) => break s,
            Err(e) => return Err(ClientError::Handshake(e)),
        }
    };
    Ok((
        session,
        Io {
            reader: Some(fr),
            writer: w,
            dgram: None,
        },
    ))
}

fn new_conn(session: Session, transport: TransportInfo) -> Arc<ClientConn> {
    let now = Instant::now();
    Arc::new(ClientConn {
        session_id: session.session_id(),
        transport,
        state: Mutex::new(CState {
            core: session,
            wbuf: Vec::new(),
            priority: VecDeque::new(),
            normal: VecDeque::new(),
            pending: IdMap::default(),
            streams: IdMap::default(),
            ping_waiters: Vec::new(),
            ended: None,
            closing: false,
            last_received: now,
            quality: QualityTracker::new(now.into_std()),
            dgram: None,
        }),
        wake: Notify::new(),
        drained: Notify::new(),
        close: CancellationToken::new(),
    })
}

impl XTMPClient {
    /// Connects and completes the handshake.
    ///
    /// # Errors
    /// [`ClientError::ConnectTimeout`], [`ClientError::Connect`],
    /// [`ClientError::Handshake`], or [`ClientError::Refused`] when the server answered
    /// with an `Error` (e.g. `SERVER_BUSY`).
    pub async fn connect(address: SocketAddr, options: ClientOptions) -> Result<Self, ClientError> {
        if options.encryption_types.is_empty() {
            return Err(ClientError::Handshake(
                xtmp_proto::XTMPError::InvalidMessage("no encryption type offered".into()),
            ));
        }
        let (conn, io) = establish(address, &options).await?;
        let (link, _) = watch::channel(LinkState::Connected(conn.clone()));
        let inner = Arc::new(ClientInner {
            addr: address,
            inflight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            opts: options,
            link,
            subs: Mutex::new(IdMap::default()),
            next_sub: AtomicU64::new(1),
            closed: CancellationToken::new(),
            done: CancellationToken::new(),
            reconnects: AtomicU64::new(0),
            unmatched_errors: AtomicU64::new(0),
            orphan_pushes: AtomicU64::new(0),
        });
        tokio::spawn(supervise(inner.clone(), conn, io));
        let guard = Arc::new(DropGuard(inner.closed.clone()));
        Ok(Self {
            inner,
            _guard: guard,
        })
    }

    /// Connects over WebSocket only (`ws://` or `wss://`; see [`crate::ws`]), unless
    /// `options.transport_order` is set, in which case that order is used and `target`
    /// only names the server for [`XTMPClient::server_address`].
    ///
    /// # Errors
    /// [`ClientError::WebSocket`] when the host cannot be resolved or the WebSocket cannot
    /// be set up; otherwise as [`XTMPClient::connect`].
    pub async fn connect_websocket(
        target: impl Into<crate::ws::WebSocketTarget>,
        mut options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let target = target.into();
        let url = &target.url;
        let address = tokio::net::lookup_host((url.host(), url.port()))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ClientError::WebSocket {
                url: url.to_string(),
                reason: format!("cannot resolve {}", url.host()),
            })?;
        if options.transport_order.is_empty() {
            options.transport_order = vec![TransportStep::websocket(target)];
        }
        Self::connect(address, options).await
    }

    /// The server address.
    pub fn server_address(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The transport the current session runs on (`None` while reconnecting).
    pub fn transport(&self) -> Option<ConnectionType> {
        self.current().map(|c| c.transport.connection_type)
    }

    /// The transport of the current session with its endpoint and the steps of the
    /// transport order that failed before it.
    pub fn transport_info(&self) -> Option<TransportInfo> {
        self.current().map(|c| c.transport.clone())
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    fn current(&self) -> Option<Arc<ClientConn>> {
        match &*self.inner.link.borrow() {
            LinkState::Connected(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// Whether a session is established right now.
    pub fn is_connected(&self) -> bool {
        self.current()
            .is_some_and(|c| lock(&c.state).ended.is_none())
    }

    /// Whether the client is closed for good (explicitly or after reconnection gave up).
    pub fn is_closed(&self) -> bool {
        matches!(&*self.inner.link.borrow(), LinkState::Closed(_))
    }

    /// The current session id.
    pub fn session_id(&self) -> Option<u64> {
        self.current().map(|c| c.session_id)
    }

    /// The current session's key generation.
    pub fn key_generation(&self) -> Option<u32> {
        self.current().map(|c| lock(&c.state).core.key_generation())
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            reconnects: self.inner.reconnects.load(Ordering::Relaxed),
            unmatched_errors: self.inner.unmatched_errors.load(Ordering::Relaxed),
            orphan_pushes: self.inner.orphan_pushes.load(Ordering::Relaxed),
        }
    }

    /// Link quality of the current session (heartbeat RTT, ...).
    pub fn quality(&self) -> Option<XTMPQualityMetrics> {
        self.current().map(|c| {
            let st = lock(&c.state);
            let mut q = st.quality.snapshot(st.core.rtt().smoothed(), 0, 0);
            if let Some(d) = &st.dgram {
                let m = d.metrics(&st.core);
                q.packet_loss = q.packet_loss.max(m.loss);
                if m.srtt_ms > 0.0 {
                    q.latency_ms = m.srtt_ms;
                }
            }
            q
        })
    }

    /// The datagram path of the current session (`UdpFast`, or the UDP path of a
    /// `TcpUdpHybrid` session): state, peer, RTT, loss, retransmissions, ...
    pub fn datagram_metrics(&self) -> Option<DatagramPathMetrics> {
        let c = self.current()?;
        let st = lock(&c.state);
        st.dgram.as_ref().map(|d| d.metrics(&st.core))
    }

    /// Pushes dropped by the datagram side: `(late, full)` — older than one already
    /// delivered on their stream, or arriving while the subscription's buffer was full.
    pub fn datagram_pushes_dropped(&self) -> Option<(u64, u64)> {
        let c = self.current()?;
        let st = lock(&c.state);
        st.dgram.as_ref().map(|d| (d.pushes_late, d.pushes_dropped))
    }

    /// An in-flight permit: at once when one is free (no timer), else waiting until
    /// `deadline`.
    async fn permit(&self, deadline: Instant) -> Result<SemaphorePermit<'_>, ClientError> {
        match self.inner.inflight.try_acquire() {
            Ok(p) => return Ok(p),
            Err(TryAcquireError::Closed) => return Err(ClientError::Closed),
            Err(TryAcquireError::NoPermits) => {}
        }
        match tokio::time::timeout_at(deadline, self.inner.inflight.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    async fn enqueue(&self, o: Outbound, deadline: Instant) -> Result<(), ClientError> {
        // Fast path: connected (no subscription to the link state, no timer).
        let o = match self.current() {
            Some(c) => match c.try_enqueue(o) {
                Ok(()) => return Ok(()),
                Err(back) => back,
            },
            None => o,
        };
        self.enqueue_slow(o, deadline).await
    }

    async fn enqueue_slow(&self, mut o: Outbound, deadline: Instant) -> Result<(), ClientError> {
        loop {
            let c = match self.connection(deadline).await {
                Ok(c) => c,
                Err(e) => {
                    o.kind.fail(e.clone());
                    return Err(e);
                }
            };
            match c.try_enqueue(o) {
                Ok(()) => return Ok(()),
                // Ended or closing since: `connection` waits for the next link state.
                Err(back) => o = back,
            }
        }
    }

    fn check_len(&self, len: usize) -> Result<(), ClientError> {
        let max = self.inner.opts.max_payload;
        if len > max as usize {
            return Err(ClientError::PayloadTooLarge { len, max });
        }
        // On a UdpFast session a message must fit one datagram (compression aside, which
        // the writer checks after sealing).
        let d = &self.inner.opts.datagram;
        let compressible =
            self.inner.opts.enable_compression && len >= self.inner.opts.compression_threshold;
        if !compressible
            && len > d.max_reliable_body()
            && self
                .current()
                .is_some_and(|c| c.transport.connection_type == ConnectionType::UdpFast)
        {
            return Err(ClientError::MessageTooLarge {
                len,
                max: d.max_reliable_body(),
            });
        }
        Ok(())
    }

    /// Sends a request and waits for its correlated response.
    ///
    /// # Errors
    /// [`ClientError::Remote`] when the server answered with an `Error` (unknown type,
    /// handler error, ...), [`ClientError::Timeout`], [`ClientError::ConnectionLost`],
    /// [`ClientError::Disconnected`], [`ClientError::PayloadTooLarge`],
    /// [`ClientError::Closed`].
    pub async fn request(
        &self,
        message_type: MessageType,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Response, ClientError> {
        self.request_with(
            message_type,
            XTMPFlags::empty(),
            payload,
            self.inner.opts.request_timeout,
        )
        .await
    }

    /// [`XTMPClient::request`] with extra flags (e.g. `PRIORITY`) and an explicit timeout.
    ///
    /// # Errors
    /// As [`XTMPClient::request`].
    pub async fn request_with(
        &self,
        message_type: MessageType,
        flags: XTMPFlags,
        payload: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let payload = payload.into();
        self.check_len(payload.len())?;
        let deadline = Instant::now() + timeout;
        let _permit = self.permit(deadline).await?;
        let (tx, rx) = oneshot::channel();
        let flags = (flags & (XTMPFlags::PRIORITY | XTMPFlags::COMPRESSED))
            | self.inner.opts.flags_for(payload.len());
        self.enqueue(
            Outbound {
                message_type,
                flags,
                payload,
                kind: OutKind::Request(tx),
            },
            deadline,
        )
        .await?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::ConnectionLost { sent: true }),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Sends a JSON request and decodes the JSON response.
    ///
    /// # Errors
    /// As [`XTMPClient::request`], plus [`ClientError::Json`].
    pub async fn request_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        message_type: MessageType,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Json(e.to_string()))?;
        self.request(message_type, body).await?.json()
    }

    /// Sends a one-way message. With `ack`, sets `REQUIRES_ACK` and waits until the server's
    /// handler accepted it. Without, returns as soon as the message is queued on the
    /// connection (fire and forget): it is then written in order with everything else.
    /// The queue is bounded — a queued message holds one of the
    /// [`ClientOptions::max_in_flight`] slots until it is sealed, so `send` waits when the
    /// connection falls behind. [`XTMPClient::close`] writes what is queued before it
    /// closes; a message still queued when the connection is lost is dropped (the server
    /// never sees it), so use `ack` to know that it arrived.
    ///
    /// # Errors
    /// As [`XTMPClient::request`]. Errors the server reports about an unacknowledged
    /// message arrive after this returned; they are logged and counted in
    /// [`ClientStats::unmatched_errors`].
    pub async fn send(
        &self,
        message_type: MessageType,
        payload: impl Into<Vec<u8>>,
        ack: bool,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        self.check_len(payload.len())?;
        let deadline = Instant::now() + self.inner.opts.request_timeout;
        let mut flags = self.inner.opts.flags_for(payload.len());
        if !ack {
            // No completion to wait for: no oneshot, no timer, no wake-up of this task by
            // the connection's writer.
            let permit = match self.inner.inflight.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(TryAcquireError::Closed) => return Err(ClientError::Closed),
                Err(TryAcquireError::NoPermits) => {
                    let acquire = self.inner.inflight.clone().acquire_owned();
                    match tokio::time::timeout_at(deadline, acquire).await {
                        Ok(Ok(p)) => p,
                        Ok(Err(_)) => return Err(ClientError::Closed),
                        Err(_) => return Err(ClientError::Timeout),
                    }
                }
            };
            return self
                .enqueue(
                    Outbound {
                        message_type,
                        flags,
                        payload,
                        kind: OutKind::Queued(permit),
                    },
                    deadline,
                )
                .await;
        }
        let _permit = self.permit(deadline).await?;
        let (tx, rx) = oneshot::channel();
        flags |= XTMPFlags::REQUIRES_ACK;
        self.enqueue(
            Outbound {
                message_type,
                flags,
                payload,
                kind: OutKind::Ack(tx),
            },
            deadline,
        )
        .await?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::ConnectionLost { sent: true }),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Sends many messages of one type, fire and forget, in order: as
    /// [`XTMPClient::send`] with `ack: false` for each payload, but sealed straight into
    /// the connection's write buffer under one lock, with one wake-up of the connection's
    /// writer per batch instead of one hand-off per message — for streams of small
    /// messages. Returns once every message is sealed (its sequence number taken): it
    /// seals while the connection holds less than 64 KiB of sealed bytes not yet taken by
    /// its writer, then waits for the writer; the whole call is bounded by
    /// [`ClientOptions::request_timeout`]. Messages still unwritten when the connection is
    /// lost are dropped, as with `send`. On a datagram session (`UdpFast`,
    /// `TcpUdpHybrid`), or while other messages are queued ahead, the messages go through
    /// the connection's queue one by one, as `send` does.
    ///
    /// # Errors
    /// [`ClientError::PayloadTooLarge`] (checked for every payload before anything is
    /// sent), [`ClientError::Timeout`], [`ClientError::Closed`],
    /// [`ClientError::ConnectionLost`]. On an error, an unknown prefix of the batch may
    /// have been sent.
    pub async fn send_batch<P: AsRef<[u8]>>(
        &self,
        message_type: MessageType,
        payloads: &[P],
    ) -> Result<(), ClientError> {
        for p in payloads {
            self.check_len(p.as_ref().len())?;
        }
        let deadline = Instant::now() + self.inner.opts.request_timeout;
        let mut rest = payloads;
        while !rest.is_empty() {
            let conn = match self.current() {
                Some(c) if c.usable() => c,
                _ => self.connection(deadline).await?,
            };
            let drained = conn.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            let step = {
                let mut st = lock(&conn.state);
                let st = &mut *st;
                if st.closing {
                    BatchStep::Fail(ClientError::Closed)
                } else if st.ended.is_some() {
                    BatchStep::Retry
                } else if st.wbuf.len() >= BATCH_WBUF_LIMIT {
                    BatchStep::Wait
                } else if st.dgram.is_some() || !st.priority.is_empty() || !st.normal.is_empty() {
                    BatchStep::ViaQueue
                } else {
                    // Frames the core queued (pongs, key updates) go first. `seal` itself
                    // queues none (a usage limit only marks a rekey as wanted, for the
                    // writer's next timer check), so one drain covers the batch.
                    st.drain_core();
                    let mut n = 0;
                    let mut failed = None;
                    for p in rest {
                        if st.wbuf.len() >= BATCH_WBUF_LIMIT {
                            break;
                        }
                        let p = p.as_ref();
                        let flags = self.inner.opts.flags_for(p.len());
                        if let Err(e) = st.core.seal(message_type, flags, p, &mut st.wbuf) {
                            failed = Some(ClientError::Protocol(e));
                            break;
                        }
                        n += 1;
                    }
                    match failed {
                        Some(e) => BatchStep::Fail(e),
                        None => BatchStep::Sealed(n),
                    }
                }
            };
            match step {
                BatchStep::Sealed(n) => {
                    conn.wake.notify_one();
                    rest = &rest[n..];
                }
                BatchStep::ViaQueue => {
                    // Queued ahead, or a datagram path: through the queue, in order.
                    if let Some((first, tail)) = rest.split_first() {
                        self.send(message_type, first.as_ref().to_vec(), false)
                            .await?;
                        rest = tail;
                    }
                }
                BatchStep::Wait => {
                    if tokio::time::timeout_at(deadline, &mut drained)
                        .await
                        .is_err()
                    {
                        return Err(ClientError::Timeout);
                    }
                }
                // The next round waits for the link state in `connection`.
                BatchStep::Retry => {}
                BatchStep::Fail(e) => {
                    conn.wake.notify_one();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The established connection, waiting up to `deadline` while there is none (or it
    /// ended or is closing and the link state has not moved on yet).
    async fn connection(&self, deadline: Instant) -> Result<Arc<ClientConn>, ClientError> {
        let mut rx = self.inner.link.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                LinkState::Closed(e) => return Err(e),
                LinkState::Connected(c) if c.usable() => return Ok(c),
                LinkState::Connected(_) | LinkState::Connecting => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) => return Err(ClientError::Timeout),
            }
        }
    }

    /// Subscribes to server pushes of `message_type`: sends a request of that type with
    /// `payload`, and after the server's response returns a [`Subscription`] that yields
    /// the pushed messages. After a reconnection the subscription is renewed automatically
    /// (and yields one `Err` item for the gap).
    ///
    /// # Errors
    /// As [`XTMPClient::request`].
    pub async fn subscribe(
        &self,
        message_type: MessageType,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Subscription, ClientError> {
        let payload = payload.into();
        self.check_len(payload.len())?;
        let deadline = Instant::now() + self.inner.opts.request_timeout;
        let sub_id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.opts.subscription_capacity.max(1));
        lock(&self.inner.subs).insert(
            sub_id,
            SubEntry {
                message_type,
                payload: payload.clone(),
                tx,
                gap: None,
            },
        );
        let mut sub = Subscription {
            rx,
            sub_id,
            inner: Arc::downgrade(&self.inner),
            response: None,
        };
        let (otx, orx) = oneshot::channel();
        let flags = self.inner.opts.flags_for(payload.len());
        self.enqueue(
            Outbound {
                message_type,
                flags,
                payload,
                kind: OutKind::Subscribe {
                    sub_id,
                    tx: Some(otx),
                },
            },
            deadline,
        )
        .await?;
        let resp = match tokio::time::timeout_at(deadline, orx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(ClientError::ConnectionLost { sent: true }),
            Err(_) => return Err(ClientError::Timeout),
        };
        sub.response = Some(resp);
        Ok(sub)
    }

    /// Measures the round-trip time with a `Heartbeat` ping.
    ///
    /// # Errors
    /// [`ClientError::Timeout`], [`ClientError::ConnectionLost`], [`ClientError::Closed`].
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let deadline = Instant::now() + self.inner.opts.request_timeout;
        let mut rx_link = self.inner.link.subscribe();
        let conn = loop {
            let state = rx_link.borrow_and_update().clone();
            match state {
                LinkState::Connected(c) if lock(&c.state).ended.is_none() => break c,
                LinkState::Closed(e) => return Err(e),
                _ => {}
            }
            match tokio::time::timeout_at(deadline, rx_link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) => return Err(ClientError::Timeout),
            }
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&conn.state);
            st.drain_core();
            let now = Instant::now();
            let total = st.core.stats().bytes_sent + st.core.stats().bytes_received;
            st.quality.on_ping(now.into_std(), total);
            st.core
                .send_ping(now.into_std())
                .map_err(|_| ClientError::ConnectionLost { sent: false })?;
            st.drain_core();
            st.ping_waiters.push(tx);
        }
        conn.wake.notify_one();
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(rtt)) => Ok(rtt),
            Ok(Err(_)) => Err(ClientError::ConnectionLost { sent: true }),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Closes the client: sends `Disconnect(NO_ERROR)`, fails what is outstanding with
    /// [`ClientError::Closed`], stops reconnecting, and waits until the connection is closed.
    pub async fn close(&self) {
        self.inner.closed.cancel();
        if let Some(c) = self.current() {
            lock(&c.state).closing = true;
            c.wake.notify_one();
        }
        self.inner.done.cancelled().await;
    }
}

/// Pushed messages of one subscription (also a [`Stream`]).
///
/// Items are `Ok(message)`, or `Err` once per connection loss (messages pushed while
/// disconnected are lost; the subscription is renewed on the new connection). The
/// subscription ends (`None`) when the client closes or the server refuses the renewal
/// (after an `Err` item saying why). Dropping it forgets the subscription locally.
pub struct Subscription {
    rx: mpsc::Receiver<Result<PushedMessage, ClientError>>,
    sub_id: u64,
    inner: Weak<ClientInner>,
    response: Option<Response>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.sub_id)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The server's response to the subscribe request.
    pub fn response(&self) -> Option<&Response> {
        self.response.as_ref()
    }

    /// The next pushed message; `None` when the subscription ended.
    pub async fn recv(&mut self) -> Option<Result<PushedMessage, ClientError>> {
        self.rx.recv().await
    }
}

impl Stream for Subscription {
    type Item = Result<PushedMessage, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            lock(&inner.subs).remove(&self.sub_id);
        }
    }
}

// ------------------------------------------------------------------------------------
// Connection tasks
// ------------------------------------------------------------------------------------

async fn supervise(inner: Arc<ClientInner>, first: Arc<ClientConn>, first_io: Io) {
    let mut conn = first;
    let mut io = first_io;
    loop {
        let reason = run_conn(&inner, conn.clone(), io).await;
        debug!(server = %inner.addr, reason = %reason, "connection ended");
        report_gap(&inner, &reason);
        if inner.closed.is_cancelled()
            || !inner.opts.reconnect.enabled
            || matches!(reason, ClientError::Closed)
        {
            let final_err = if inner.closed.is_cancelled() {
                ClientError::Closed
            } else {
                reason
            };
            finish(&inner, final_err);
            return;
        }
        inner.link.send_replace(LinkState::Connecting);
        let policy = inner.opts.reconnect;
        let mut backoff = policy.initial_backoff;
        let mut attempts = 0u32;
        let (c, i) = loop {
            let jitter = {
                let mut b = [0u8; 2];
                xtmp_proto::SecureRandom::fill(&mut OsRng, &mut b);
                backoff.mul_f64(f64::from(u16::from_be_bytes(b)) / f64::from(u16::MAX) * 0.2)
            };
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = inner.closed.cancelled() => {
                    finish(&inner, ClientError::Closed);
                    return;
                }
            }
            attempts += 1;
            let attempt = tokio::select! {
                r = establish(inner.addr, &inner.opts) => r,
                _ = inner.closed.cancelled() => {
                    finish(&inner, ClientError::Closed);
                    return;
                }
            };
            match attempt {
                Ok(x) => break x,
                Err(e) => {
                    debug!(server = %inner.addr, attempts, error = %e, "reconnect failed");
                    if policy.max_attempts.is_some_and(|m| attempts >= m) {
                        warn!(server = %inner.addr, attempts, "giving up reconnecting");
                        finish(
                            &inner,
                            ClientError::ReconnectFailed {
                                attempts,
                                last: Box::new(e),
                            },
                        );
                        return;
                    }
                    backoff = (backoff * 2).min(policy.max_backoff);
                }
            }
        };
        inner.reconnects.fetch_add(1, Ordering::Relaxed);
        // Renew the subscriptions before anything else goes out.
        let subs: Vec<(u64, MessageType, Vec<u8>)> = lock(&inner.subs)
            .iter()
            .map(|(id, s)| (*id, s.message_type, s.payload.clone()))
            .collect();
        for (sub_id, t, payload) in subs {
            let flags = inner.opts.flags_for(payload.len());
            let _ = c.try_enqueue(Outbound {
                message_type: t,
                flags,
                payload,
                kind: OutKind::Subscribe { sub_id, tx: None },
            });
        }
        inner.link.send_replace(LinkState::Connected(c.clone()));
        debug!(server = %inner.addr, "reconnected");
        conn = c;
        io = i;
    }
}

fn report_gap(inner: &ClientInner, reason: &ClientError) {
    let err = match reason {
        ClientError::Disconnected { .. } => reason.clone(),
        _ => ClientError::ConnectionLost { sent: true },
    };
    let mut subs = lock(&inner.subs);
    for s in subs.values_mut() {
        if s.tx.try_send(Err(err.clone())).is_err() {
            s.gap = Some(err.clone());
        }
    }
}

fn finish(inner: &ClientInner, err: ClientError) {
    let subs: Vec<SubEntry> = lock(&inner.subs).drain().map(|(_, s)| s).collect();
    for s in subs {
        let _ = s.tx.try_send(Err(err.clone()));
    }
    inner.link.send_replace(LinkState::Closed(err));
    inner.done.cancel();
}

async fn run_conn(inner: &Arc<ClientInner>, conn: Arc<ClientConn>, io: Io) -> ClientError {
    let Io { reader, writer, .. } = io;
    let udp = lock(&conn.state).dgram.as_ref().map(|d| d.io());
    let stream_reader = std::pin::pin!(async {
        if let Some(fr) = reader {
            client_reader(inner.clone(), conn.clone(), fr).await;
        }
    });
    let udp_reader = std::pin::pin!(async {
        if let Some(io) = udp {
            dgram::udp_reader(inner.clone(), conn.clone(), io).await;
        }
    });
    // One task, one waker per future: a message queued by the reader (e.g. an error
    // answer) reaches the writer without waking the task ([`crate::join`]).
    let writer = std::pin::pin!(client_writer(inner.clone(), conn.clone(), writer));
    crate::join::join_pinned(&mut [
        Some(stream_reader as crate::join::JoinFut<'_>),
        Some(udp_reader),
        Some(writer),
    ])
    .await;
    let reason = lock(&conn.state)
        .ended
        .clone()
        .unwrap_or(ClientError::ConnectionLost { sent: true });
    reason
}

fn fail_sub(inner: &ClientInner, sub_id: u64, err: ClientError) {
    if let Some(s) = lock(&inner.subs).remove(&sub_id) {
        let _ = s.tx.try_send(Err(err));
    }
}

/// What the reader does after releasing the connection lock.
enum Act {
    Nothing,
    Push(u64, PushedMessage),
    FailSub(u64, ClientError),
    End(ClientError),
}

async fn client_reader<R: AsyncRead + Unpin>(
    inner: Arc<ClientInner>,
    conn: Arc<ClientConn>,
    mut fr: FrameReader<R>,
) {
    let read_timeout = inner.opts.read_timeout;
    // One cancellation future for the connection's life; a buffered frame comes first and
    // does not poll it.
    let cancelled = conn.close.cancelled();
    tokio::pin!(cancelled);
    loop {
        let res = tokio::select! {
            biased;
            r = fr.next_frame(read_timeout, &|_| {}) => r,
            _ = &mut cancelled => return,
        };
        let mut frame = match res {
            Ok(Some(f)) => f,
            Ok(None) | Err(ReadError::Io(_)) => {
                let orphaned = conn.end(ClientError::ConnectionLost { sent: true });
                for (id, e) in orphaned {
                    fail_sub(&inner, id, e);
                }
                return;
            }
            Err(ReadError::Timeout) => {
                conn.end(ClientError::ConnectionLost { sent: true });
                return;
            }
            Err(ReadError::Frame(e)) => {
                conn.end(ClientError::Protocol(e));
                return;
            }
        };
        // Open under the lock; act on the result after releasing it.
        let act = {
            let mut st = lock(&conn.state);
            let now = Instant::now();
            let act = match st.core.open(now.into_std(), &mut frame[..], &mut OsRng) {
                Err(e) => {
                    debug!(error = %e, "frame from server rejected");
                    let code = e.code();
                    let p = ErrorPayload {
                        code,
                        request_seq: Header::parse(&frame, u32::MAX)
                            .map_or(0, |h| h.sequence_number),
                        reason: crate::metrics::code_name(code),
                    }
                    .encode();
                    st.drain_core();
                    let st = &mut *st;
                    let _ = st
                        .core
                        .seal(MessageType::Error, XTMPFlags::empty(), &p, &mut st.wbuf);
                    let _ = st.core.close(code, "protocol error", &mut st.wbuf);
                    Act::End(ClientError::Protocol(e))
                }
                Ok(r) => {
                    st.last_received = now;
                    match r {
                        Received::Message { header, payload } => {
                            match dgram::pre_message(&mut st, now, header, payload) {
                                Some((h, p)) => handle_message(&inner, &mut st, h, &p),
                                None => Act::Nothing,
                            }
                        }
                        Received::Pong { rtt } => {
                            st.quality.on_pong();
                            for w in st.ping_waiters.drain(..) {
                                let _ = w.send(rtt);
                            }
                            Act::Nothing
                        }
                        Received::Disconnect(d) => Act::End(ClientError::Disconnected {
                            code: d.code,
                            reason: d.reason,
                        }),
                        Received::KeyUpdated { generation } => {
                            trace!(generation, "key rotation completed");
                            Act::Nothing
                        }
                        Received::Ping | Received::Handled => Act::Nothing,
                    }
                }
            };
            st.drain_core();
            if !st.wbuf.is_empty() || st.dgram.as_ref().is_some_and(|d| d.st.wants_write()) {
                conn.wake.notify_one();
            }
            (act, st.wbuf.len() > crate::server::WBUF_LIMIT)
        };
        let (act, behind) = act;
        // Pause while too many sealed bytes (e.g. heartbeat answers) wait for the writer.
        // Only this reader adds to `wbuf` between the writer's rounds, so the check made
        // under the lock above is enough to know whether to wait.
        if behind {
            loop {
                let drained = conn.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if lock(&conn.state).wbuf.len() <= crate::server::WBUF_LIMIT {
                    break;
                }
                tokio::select! {
                    _ = &mut drained => {}
                    _ = conn.close.cancelled() => return,
                }
            }
        }
        match act {
            Act::Nothing => {}
            Act::FailSub(id, e) => fail_sub(&inner, id, e),
            Act::Push(sub_id, msg) => {
                // Fast path: room in the subscription's channel and no gap to report.
                let msg = {
                    let mut subs = lock(&inner.subs);
                    match subs.get_mut(&sub_id) {
                        Some(s) if s.gap.is_none() => match s.tx.try_send(Ok(msg)) {
                            Ok(()) => None,
                            Err(mpsc::error::TrySendError::Full(Ok(m))) => Some(m),
                            // The subscription is being dropped (as `send` would fail).
                            Err(_) => None,
                        },
                        _ => Some(msg),
                    }
                };
                let Some(msg) = msg else { continue };
                let (tx, gap) = {
                    let mut subs = lock(&inner.subs);
                    match subs.get_mut(&sub_id) {
                        Some(s) => (Some(s.tx.clone()), s.gap.take()),
                        None => (None, None),
                    }
                };
                match tx {
                    Some(tx) => {
                        if let Some(g) = gap {
                            let _ = tx.send(Err(g)).await;
                        }
                        // Backpressure: a full subscription pauses this connection.
                        tokio::select! {
                            r = tx.send(Ok(msg)) => { let _ = r; }
                            _ = conn.close.cancelled() => return,
                        }
                    }
                    None => {
                        inner.orphan_pushes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Act::End(e) => {
                // Let the writer send what is buffered (our Error/Disconnect) first.
                conn.wake.notify_one();
                let orphaned = conn.end(e);
                for (id, e) in orphaned {
                    fail_sub(&inner, id, e);
                }
                return;
            }
        }
    }
}

fn handle_message(inner: &ClientInner, st: &mut CState, header: Header, payload: &[u8]) -> Act {
    let t = header.message_type;
    if header.flags.contains(XTMPFlags::STREAMING) {
        let Ok((stream_id, body)) = split_response(t, payload) else {
            return Act::Nothing;
        };
        let stream_id = dgram::first_seq(st, stream_id);
        return match st.streams.get(&stream_id) {
            Some(&sub_id) => Act::Push(
                sub_id,
                PushedMessage {
                    message_type: t,
                    flags: header.flags,
                    stream_id,
                    sequence_number: header.sequence_number,
                    body: body.to_vec(),
                },
            ),
            None => {
                inner.orphan_pushes.fetch_add(1, Ordering::Relaxed);
                Act::Nothing
            }
        };
    }
    match t {
        MessageType::Response | MessageType::QLOCKResponse | MessageType::TLSLSResponse => {
            let Ok((seq, body)) = split_response(t, payload) else {
                return Act::Nothing;
            };
            let seq = dgram::first_seq(st, seq);
            dgram::settled(st, seq);
            let resp = Response {
                message_type: t,
                body: body.to_vec(),
                flags: header.flags,
                request_seq: seq,
            };
            match st.pending.remove(&seq) {
                Some(Pending::Request(tx)) => {
                    let _ = tx.send(Ok(resp));
                }
                Some(Pending::Subscribe { tx: Some(tx), .. }) => {
                    let _ = tx.send(Ok(resp));
                }
                Some(Pending::Subscribe { tx: None, .. }) => {}
                Some(other @ Pending::Ack(_)) => {
                    // A response to an acknowledged send arrived before its Ack: keep waiting.
                    st.pending.insert(seq, other);
                }
                None => trace!(seq, "response to a request nobody waits for"),
            }
            Act::Nothing
        }
        MessageType::Ack => {
            if let Ok(seq) = decode_ack(payload) {
                let seq = dgram::first_seq(st, seq);
                dgram::settled(st, seq);
                match st.pending.remove(&seq) {
                    Some(Pending::Ack(tx)) => {
                        let _ = tx.send(Ok(()));
                    }
                    Some(other) => {
                        st.pending.insert(seq, other);
                    }
                    None => {}
                }
            }
            Act::Nothing
        }
        MessageType::Error => {
            let Ok(e) = ErrorPayload::decode(payload) else {
                return Act::Nothing;
            };
            let err = ClientError::Remote {
                code: e.code,
                reason: e.reason.clone(),
            };
            // Session frames are numbered from 1, so `request_seq` 0 means "not about
            // a request" and matches nothing outstanding.
            let request_seq = dgram::first_seq(st, e.request_seq);
            dgram::settled(st, request_seq);
            match st.pending.remove(&request_seq) {
                Some(p) => match p.fail(err) {
                    Some((sub_id, err)) => {
                        st.streams.retain(|_, s| *s != sub_id);
                        Act::FailSub(sub_id, err)
                    }
                    None => Act::Nothing,
                },
                None => {
                    inner.unmatched_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(seq = e.request_seq, code = ?e.code, reason = %e.reason, "server reported an error not matching an outstanding request");
                    Act::Nothing
                }
            }
        }
        other => {
            debug!(message_type = ?other, "unsolicited message from the server ignored");
            Act::Nothing
        }
    }
}

/// Seals one queued message into the write buffers (a failure fails that message).
/// Gives it back when a datagram path has no `RELIABLE` id free for it yet.
fn seal_one(
    st: &mut CState,
    o: Outbound,
    now: std::time::Instant,
    opts: &ClientOptions,
) -> Option<Outbound> {
    st.drain_core();
    if st.dgram.is_some() {
        return dgram::seal_outbound(st, o, now, opts);
    }
    match st
        .core
        .seal(o.message_type, o.flags, &o.payload, &mut st.wbuf)
    {
        Ok(seq) => st.register_sent(seq, o.kind),
        Err(e) => o.kind.fail(ClientError::Protocol(e)),
    }
    None
}

/// On close: seals the queued fire-and-forget messages (in order, up to a batch), leaving
/// everything else queued. `true` once none is left.
fn flush_queued(st: &mut CState, now: std::time::Instant, opts: &ClientOptions) -> bool {
    let mut keep: VecDeque<Outbound> = VecDeque::new();
    let mut done = true;
    for prio in [true, false] {
        loop {
            let next = if prio {
                st.priority.pop_front()
            } else {
                st.normal.pop_front()
            };
            let Some(o) = next else { break };
            if !matches!(o.kind, OutKind::Queued(_)) {
                keep.push_back(o);
                continue;
            }
            if st.wbuf.len() >= WRITE_BATCH_BYTES {
                done = false;
                keep.push_back(o);
                continue;
            }
            if let Some(back) = seal_one(st, o, now, opts) {
                done = false;
                keep.push_back(back);
            }
        }
        let q = if prio {
            &mut st.priority
        } else {
            &mut st.normal
        };
        *q = std::mem::take(&mut keep);
    }
    done
}

async fn client_writer<W: AsyncWrite + Unpin>(
    inner: Arc<ClientInner>,
    conn: Arc<ClientConn>,
    mut w: W,
) {
    let opts = &inner.opts;
    let hb = opts.heartbeat_interval.max(Duration::from_millis(1));
    let mut next_heartbeat = Instant::now() + hb;
    // The batch being written; swapped with the emptied write buffer each round (two
    // buffers reused while busy instead of a new one grown per batch).
    let mut batch: Vec<u8> = Vec::new();
    // The idle wait's timer and close future live as long as the writer (re-armed only
    // when the deadline moves).
    let sleep = tokio::time::sleep_until(next_heartbeat);
    tokio::pin!(sleep);
    let closed = inner.closed.cancelled();
    tokio::pin!(closed);
    loop {
        let now = Instant::now();
        batch.clear();
        let (dbatch, finished, deadline, failed_subs) = {
            let mut guard = lock(&conn.state);
            let st = &mut *guard;
            let mut failed_subs = Vec::new();
            let mut finished = st.ended.is_some();
            let closing = !finished && (st.closing || inner.closed.is_cancelled());
            if closing {
                // What `send` already returned for goes out first (a batch per round);
                // requests and subscriptions still queued fail as before.
                if flush_queued(st, now.into_std(), opts) {
                    st.drain_core();
                    let _ = st
                        .core
                        .close(ErrorCode::NO_ERROR, "client closing", &mut st.wbuf);
                    finished = true;
                }
            }
            if !finished && !closing {
                if let Some(t) = st.core.poll_timeout() {
                    if now.into_std() >= t {
                        if let Err(e) = st.core.handle_timeout(now.into_std(), &mut OsRng) {
                            warn!(error = %e, "key rotation failed");
                        }
                    }
                }
                if now >= next_heartbeat {
                    let silent = now.saturating_duration_since(st.last_received);
                    if st.quality.ping_outstanding() && silent >= hb * 3 {
                        debug!("server unresponsive");
                        finished = true;
                    } else {
                        st.drain_core();
                        let total = st.core.stats().bytes_sent + st.core.stats().bytes_received;
                        st.quality.on_ping(now.into_std(), total);
                        let _ = st.core.send_ping(now.into_std());
                    }
                    next_heartbeat = now + hb;
                }
                st.drain_core();
                if st.dgram.is_some() {
                    match dgram::tick(st, now.into_std(), opts) {
                        Ok(f) => failed_subs = f,
                        Err(e) => {
                            debug!(error = %e, "datagram path failed");
                            finished = true;
                        }
                    }
                }
                let buffered =
                    |st: &CState| st.wbuf.len() + st.dgram.as_ref().map_or(0, |d| d.buffered());
                while buffered(st) < WRITE_BATCH_BYTES {
                    let Some(o) = st.priority.pop_front().or_else(|| st.normal.pop_front()) else {
                        break;
                    };
                    if let Some(back) = seal_one(st, o, now.into_std(), opts) {
                        // No RELIABLE id free yet: wait for acknowledgements.
                        st.priority.push_front(back);
                        break;
                    }
                }
                if let Some(d) = st.dgram.as_mut() {
                    d.flush_acks(&mut st.core, &mut st.wbuf);
                }
            }
            std::mem::swap(&mut batch, &mut st.wbuf);
            let mut deadline = next_heartbeat;
            if let Some(t) = st.core.poll_timeout() {
                deadline = deadline.min(Instant::from_std(t));
            }
            let dbatch = match st.dgram.as_mut() {
                Some(d) => {
                    if let Some(t) = d.poll_timeout(&st.core) {
                        deadline = deadline.min(Instant::from_std(t));
                    }
                    d.take_datagrams()
                }
                None => None,
            };
            if batch.is_empty() && st.wbuf.capacity() > crate::server::IDLE_BUF_CAPACITY {
                // Going idle: do not hold a large buffer.
                st.wbuf = Vec::new();
            }
            (dbatch, finished, deadline, failed_subs)
        };
        if batch.is_empty() && batch.capacity() > crate::server::IDLE_BUF_CAPACITY {
            batch = Vec::new();
        }
        conn.drained.notify_waiters();
        for (id, e) in failed_subs {
            fail_sub(&inner, id, e);
        }
        if let Some((mut sink, d)) = dbatch {
            let _ = write_all_timeout(&mut sink, &d, opts.write_timeout).await;
        }
        let wrote = !batch.is_empty();
        if wrote {
            if let Err(e) = write_all_timeout(&mut w, &batch, opts.write_timeout).await {
                debug!(error = %e, "write failed");
                let orphaned = conn.end(ClientError::ConnectionLost { sent: true });
                for (id, e) in orphaned {
                    fail_sub(&inner, id, e);
                }
                break;
            }
        }
        if finished {
            let reason = if inner.closed.is_cancelled() {
                ClientError::Closed
            } else {
                ClientError::ConnectionLost { sent: true }
            };
            let orphaned = conn.end(reason);
            for (id, e) in orphaned {
                fail_sub(&inner, id, e);
            }
            break;
        }
        if wrote {
            continue;
        }
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        tokio::select! {
            _ = conn.wake.notified() => {}
            _ = &mut sleep => {}
            _ = &mut closed, if !lock(&conn.state).closing => {
                lock(&conn.state).closing = true;
            }
        }
    }
    shutdown_timeout(&mut w, Duration::from_secs(1)).await;
}
