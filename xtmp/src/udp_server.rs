//! The server's UDP endpoint (`PROTOCOL.md` §9): one socket, a receive loop that reads
//! datagrams in batches and hands them to their session by session id, the stateless
//! cookie step and bounded reassembly for handshakes over UDP, `UdpFast` sessions, and the
//! server side of attaching a UDP path to a TCP session (`TcpUdpHybrid`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, trace, warn};
use xtmp_proto::datagram::{
    fragment_handshake, next_frame, parse_fragment, split_reliable, Delivery, PathAttach,
    Reassembler, ReassemblyLimits, PATH_TOKEN_LEN,
};
use xtmp_proto::{
    ErrorCode, Header, MessageType, PathId, Received, ServerOutcome, XTMPError, XTMPFlags,
    HEADER_LEN,
};

use crate::manager::ConnectionType;
use crate::metrics::ServerCounters;
use crate::rng::OsRng;
use crate::router::lock;
use crate::server::{try_dispatch, Closing, ConnState, ServerConn, ServerShared};
use crate::transport::plain_error_frame;
use crate::udp::{Attach, DgramState, RecvBatch, ReliableItem, UdpFrameSink, UdpIo};

/// Handshakes over UDP doing KEM work at once; more complete reassemblies are dropped
/// (the client repeats its fragments).
const MAX_UDP_HANDSHAKES_IN_FLIGHT: usize = 64;
/// Answers (`HandshakeAck` fragments) kept to repeat when a client repeats message 1
/// because the answer was lost; bounded and short-lived.
const MAX_RECENT_ANSWERS: usize = 1024;
const RECENT_ANSWER_TTL: Duration = Duration::from_secs(10);

/// A `RELIABLE` message the server keeps until acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct ServerRel {
    pub(crate) t: MessageType,
    pub(crate) flags: XTMPFlags,
    pub(crate) body: Vec<u8>,
}

impl ReliableItem for ServerRel {
    fn message_type(&self) -> MessageType {
        self.t
    }
    fn flags(&self) -> XTMPFlags {
        self.flags
    }
    fn body(&self) -> &[u8] {
        &self.body
    }
}

/// What the connection does with a received message after the datagram layer looked at it.
pub(crate) enum Pre<'a> {
    /// Deliver it (to the router); with `Some(id)`, a `RELIABLE` message to accept once
    /// dispatched.
    Deliver(Header, Cow<'a, [u8]>, Option<u64>),
    /// Nothing more to do.
    Handled,
    /// Refuse it with an `Error` (not fatal).
    Refuse(u64, ErrorCode, &'static str),
}

/// The datagram layer's part of receiving an application message on either path:
/// `DatagramAck`, `PathAttach`, and the `RELIABLE` duplicate check.
pub(crate) fn pre_dispatch<'a>(
    conn: &ServerConn,
    st: &mut ConnState,
    now: Instant,
    src: Option<SocketAddr>,
    header: Header,
    payload: Cow<'a, [u8]>,
) -> Pre<'a> {
    let t = header.message_type;
    match t {
        MessageType::DatagramAck => {
            if let Some(dg) = st.dgram.as_mut() {
                dg.on_ack(now.into_std(), &payload);
            }
            return Pre::Handled;
        }
        MessageType::PathAttach => return path_attach(conn, st, src, header, &payload),
        MessageType::HandshakeFragment => {
            return Pre::Refuse(
                header.sequence_number,
                ErrorCode::PROTOCOL_VIOLATION,
                "handshake fragment inside a session",
            )
        }
        _ => {}
    }
    if !header.flags.contains(XTMPFlags::RELIABLE) {
        return Pre::Deliver(header, payload, None);
    }
    let Some(dg) = st.dgram.as_mut() else {
        return Pre::Refuse(
            header.sequence_number,
            ErrorCode::NOT_PERMITTED,
            "RELIABLE needs a datagram path",
        );
    };
    let (id, body) = match split_reliable(&payload) {
        Ok((id, body)) => (id, body.to_vec()),
        Err(_) => {
            return Pre::Refuse(
                header.sequence_number,
                ErrorCode::PROTOCOL_VIOLATION,
                "malformed RELIABLE payload",
            )
        }
    };
    match dg.receiver.check(id) {
        Delivery::Duplicate => {
            dg.receiver.duplicate(id);
            Pre::Handled
        }
        Delivery::New => Pre::Deliver(header, Cow::Owned(body), Some(id)),
    }
}

/// `PathAttach` on the server: a `Request` over TCP is granted (a fresh token, the UDP
/// port); a `Bind` over UDP with that token binds the path and is answered with `Bound`.
fn path_attach<'a>(
    conn: &ServerConn,
    st: &mut ConnState,
    src: Option<SocketAddr>,
    header: Header,
    payload: &[u8],
) -> Pre<'a> {
    let seq = header.sequence_number;
    let Ok(msg) = PathAttach::decode(payload) else {
        return Pre::Refuse(seq, ErrorCode::PROTOCOL_VIOLATION, "malformed PathAttach");
    };
    let shared = &conn.shared;
    match (msg, src) {
        (PathAttach::Request, None) => {
            let Some(io) = shared.udp.as_ref() else {
                return Pre::Refuse(seq, ErrorCode::NOT_PERMITTED, "no UDP listener");
            };
            if !shared.opts.allow_hybrid || conn.ctype != ConnectionType::TcpReliable {
                return Pre::Refuse(seq, ErrorCode::NOT_PERMITTED, "hybrid not permitted");
            }
            let token = match st.dgram.as_ref().map(|d| d.attach) {
                Some(Attach::Granted(t)) | Some(Attach::Bound(t)) => t,
                _ => {
                    let mut t = [0u8; PATH_TOKEN_LEN];
                    xtmp_proto::SecureRandom::fill(&mut OsRng, &mut t);
                    st.session.core_mut().enable_datagram_path();
                    st.dgram = Some(Box::new(DgramState::new(
                        Attach::Granted(t),
                        None,
                        shared.datagram_opts.clone(),
                        std::time::Instant::now(),
                    )));
                    st.session.connection_type = ConnectionType::TcpUdpHybrid;
                    shared.hybrid_attached();
                    t
                }
            };
            let grant = PathAttach::Grant {
                token,
                port: io.local_addr().port(),
            }
            .encode();
            if let Err(e) = st.seal(
                &shared.counters,
                MessageType::PathAttach,
                XTMPFlags::PRIORITY,
                &grant,
            ) {
                debug!(error = %e, "cannot seal PathAttach grant");
            }
            Pre::Handled
        }
        (PathAttach::Bind { token }, Some(addr)) => {
            let ConnState {
                dgram,
                session,
                wbuf,
                ..
            } = st;
            let Some(dg) = dgram.as_mut() else {
                return Pre::Handled;
            };
            let granted = match dg.attach {
                Attach::Granted(t) | Attach::Bound(t) => t,
                _ => return Pre::Handled,
            };
            if !xtmp_crypto::ct_eq(&granted, &token) {
                dg.counters.frames_rejected += 1;
                return Pre::Handled;
            }
            dg.attach = Attach::Bound(granted);
            dg.authenticated_from(addr);
            let bound = PathAttach::Bound { token }.encode();
            if let Err(e) = dg.seal(
                session.core_mut(),
                wbuf,
                PathId::Datagram,
                MessageType::PathAttach,
                XTMPFlags::empty(),
                &bound,
            ) {
                debug!(error = %e, "cannot seal PathAttach bound");
            }
            debug!(session = %format_args!("{:016x}", conn.session_id), udp = %addr, "UDP path bound");
            Pre::Handled
        }
        _ => Pre::Refuse(seq, ErrorCode::PROTOCOL_VIOLATION, "unexpected PathAttach"),
    }
}

/// Whether the walk of a datagram goes on after a frame.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

type Deliveries = Vec<(Header, Vec<u8>, Option<u64>)>;
type Refusals = Vec<(u64, ErrorCode, &'static str)>;

impl ServerConn {
    /// A datagram for this session from `src`: walk it frame by frame, open each on the
    /// datagram path, drop (and count) what fails, move the path on authenticated frames
    /// from a new address, and dispatch without waiting (a message that finds the queues
    /// full is dropped; a `RELIABLE` one is then not acknowledged and comes again).
    pub(crate) fn on_datagram(self: &Arc<Self>, src: SocketAddr, d: &mut [u8], now: Instant) {
        let mut deliveries: Deliveries = Vec::new();
        let mut refusals: Refusals = Vec::new();
        {
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            if st.closing.is_some() {
                return;
            }
            let Some(path) = st.dgram.as_ref().map(|d| d.path()) else {
                return;
            };
            let max = self.shared.opts.max_payload;
            let mut pos = 0;
            while let Some(r) = next_frame(d, pos, max) {
                let range = match r {
                    Ok(r) => r,
                    Err(e) => {
                        trace!(error = %e, "framing error ends the datagram");
                        if let Some(dg) = st.dgram.as_mut() {
                            dg.counters.datagrams_malformed += 1;
                        }
                        break;
                    }
                };
                pos = range.end;
                let frame = &mut d[range];
                let is_fragment = frame.get(5) == Some(&MessageType::FrameFragment.0);
                let flow = if is_fragment {
                    let whole = st
                        .dgram
                        .as_mut()
                        .and_then(|dg| dg.on_frame_fragment(now.into_std(), frame));
                    match whole {
                        Some(mut w) => self.on_frame(
                            st,
                            path,
                            src,
                            now,
                            &mut w,
                            &mut deliveries,
                            &mut refusals,
                        ),
                        None => Flow::Continue,
                    }
                } else {
                    self.on_frame(st, path, src, now, frame, &mut deliveries, &mut refusals)
                };
                if flow == Flow::Stop {
                    break;
                }
            }
            st.drain_core();
        }
        for (seq, code, reason) in refusals {
            self.enqueue_error(seq, code, reason, None, false, true);
        }
        for (h, p, id) in deliveries {
            if try_dispatch(self, h, p, true) {
                if let Some(id) = id {
                    if let Some(dg) = lock(&self.state).dgram.as_mut() {
                        dg.receiver.accept(id);
                    }
                }
            } else if let Some(dg) = lock(&self.state).dgram.as_mut() {
                if id.is_some() {
                    dg.counters.reliable_refused += 1;
                } else {
                    dg.counters.dropped_unreliable += 1;
                }
            }
        }
        self.wake.notify_one();
    }

    /// One frame of a datagram (or one reassembled from fragments).
    #[allow(clippy::too_many_arguments)]
    fn on_frame(
        &self,
        st: &mut ConnState,
        path: PathId,
        src: SocketAddr,
        now: Instant,
        frame: &mut [u8],
        deliveries: &mut Deliveries,
        refusals: &mut Refusals,
    ) -> Flow {
        let seq = Header::parse(frame, u32::MAX).map_or(0, |h| h.sequence_number);
        let res = st
            .session
            .core_mut()
            .open_on(path, now.into_std(), frame, &mut OsRng);
        let r = match res {
            Ok(r) => r,
            Err(XTMPError::IntegrityLimit) => {
                warn!(session = %format_args!("{:016x}", self.session_id), "integrity limit reached");
                st.fatal(
                    &self.shared.counters,
                    ErrorCode::AUTHENTICATION_FAILED,
                    "integrity limit",
                    0,
                );
                return Flow::Stop;
            }
            Err(e) => {
                // On a datagram path a bad frame is dropped, nothing else.
                trace!(error = %e, %src, "datagram frame rejected");
                if let Some(dg) = st.dgram.as_mut() {
                    dg.counters.frames_rejected += 1;
                }
                return Flow::Continue;
            }
        };
        st.last_received = now;
        if let Some(dg) = st.dgram.as_mut() {
            dg.counters.frames_received += 1;
            dg.loss.observe(seq);
            dg.authenticated_from(src);
        }
        if path == PathId::Primary {
            st.session.peer_address = src;
        }
        match r {
            Received::Message { header, payload } => {
                match pre_dispatch(self, st, now, Some(src), header, payload) {
                    Pre::Deliver(h, p, id) => deliveries.push((h, p.into_owned(), id)),
                    Pre::Handled => {}
                    Pre::Refuse(seq, code, reason) => refusals.push((seq, code, reason)),
                }
            }
            Received::Pong { .. } => {
                if path == PathId::Datagram {
                    if let Some(dg) = st.dgram.as_mut() {
                        dg.on_probe_answered();
                    }
                } else {
                    st.session.quality.on_pong();
                }
            }
            Received::KeyUpdated { .. } => {
                ServerCounters::add(&self.shared.counters.key_rotations, 1);
                self.shared.manager.key_manager.count_rotation();
            }
            Received::Ping | Received::Handled => {}
            Received::Disconnect(d) => {
                debug!(code = ?d.code, "peer disconnected (datagram)");
                if st.closing.is_none() {
                    st.closing = Some(Closing::PeerGone);
                }
                return Flow::Stop;
            }
        }
        Flow::Continue
    }
}

// ------------------------------------------------------------------------------------
// Endpoint
// ------------------------------------------------------------------------------------

/// The fragments of a `HandshakeAck`, kept to repeat.
type Answer = Arc<Vec<Vec<u8>>>;

struct HsState {
    reassembler: Reassembler<SocketAddr>,
    recent: HashMap<(SocketAddr, u64), (Instant, Answer)>,
    in_progress: HashSet<(SocketAddr, u64)>,
}

impl HsState {
    fn remember(&mut self, key: (SocketAddr, u64), frags: Answer, now: Instant) {
        self.recent
            .retain(|_, (t, _)| now.saturating_duration_since(*t) < RECENT_ANSWER_TTL);
        if self.recent.len() >= MAX_RECENT_ANSWERS {
            if let Some(oldest) = self
                .recent
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| *k)
            {
                self.recent.remove(&oldest);
            }
        }
        self.recent.insert(key, (now, frags));
    }
}

enum EndpointAction {
    Send(SocketAddr, Vec<u8>),
    Repeat(SocketAddr, Answer),
    Handshake(SocketAddr, u64, Vec<u8>),
}

/// The UDP receive loop. Runs until shutdown.
pub(crate) async fn endpoint_loop(shared: Arc<ServerShared>, io: Arc<UdpIo>) {
    let mut batch = RecvBatch::new(quinn_udp::BATCH_SIZE);
    let hs = Arc::new(Mutex::new(HsState {
        reassembler: Reassembler::new(ReassemblyLimits::default()),
        recent: HashMap::new(),
        in_progress: HashSet::new(),
    }));
    let kem_slots = Arc::new(Semaphore::new(MAX_UDP_HANDSHAKES_IN_FLIGHT));
    let mut cache: Option<(u64, Weak<ServerConn>)> = None;
    let mut actions = Vec::new();
    loop {
        let n = tokio::select! {
            r = io.recv(&mut batch) => r,
            _ = shared.shutdown.cancelled() => break,
        };
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let now = Instant::now();
        batch.for_each(n, |src, d| {
            ServerCounters::add(&shared.counters.bytes_received, d.len() as u64);
            on_endpoint_datagram(&shared, &hs, &mut cache, &mut actions, src, d, now);
        });
        for a in actions.drain(..) {
            match a {
                EndpointAction::Send(to, f) => {
                    ServerCounters::add(&shared.counters.bytes_sent, f.len() as u64);
                    let _ = io.send_datagram(to, &f).await;
                }
                EndpointAction::Repeat(to, frags) => {
                    for f in frags.iter() {
                        let _ = io.send_datagram(to, f).await;
                    }
                }
                EndpointAction::Handshake(src, id, whole) => {
                    let Ok(permit) = kem_slots.clone().try_acquire_owned() else {
                        lock(&hs).in_progress.remove(&(src, id));
                        debug!(%src, "too many UDP handshakes in progress; dropped");
                        continue;
                    };
                    let (s, i, h) = (shared.clone(), io.clone(), hs.clone());
                    shared.tracker.spawn(async move {
                        udp_handshake(&s, &i, &h, src, id, whole).await;
                        lock(&h).in_progress.remove(&(src, id));
                        drop(permit);
                    });
                }
            }
        }
    }
    debug!("UDP endpoint stopped");
}

fn on_endpoint_datagram(
    shared: &Arc<ServerShared>,
    hs: &Mutex<HsState>,
    cache: &mut Option<(u64, Weak<ServerConn>)>,
    actions: &mut Vec<EndpointAction>,
    src: SocketAddr,
    d: &mut [u8],
    now: Instant,
) {
    let uc = &shared.udp_counters;
    let Ok(h) = Header::parse(d, u32::MAX) else {
        uc.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if h.session_id == 0 {
        on_handshake_datagram(shared, hs, actions, src, d, now);
        return;
    }
    let conn = match cache {
        Some((id, w)) if *id == h.session_id => w.upgrade(),
        _ => None,
    }
    .filter(|c| !c.close.is_cancelled())
    .or_else(|| shared.manager.get(h.session_id));
    match conn {
        Some(c) => {
            *cache = Some((h.session_id, Arc::downgrade(&c)));
            c.on_datagram(src, d, now);
        }
        None => {
            // Never answered: an answer would let anyone aim traffic at a third party.
            uc.unknown_session.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Handshake fragments (session id 0): the cookie is checked on every fragment before
/// anything is kept; without a valid cookie the answer is one `Retry` per datagram,
/// smaller than the datagram (`PROTOCOL.md` §9.4).
fn on_handshake_datagram(
    shared: &Arc<ServerShared>,
    hs: &Mutex<HsState>,
    actions: &mut Vec<EndpointAction>,
    src: SocketAddr,
    d: &[u8],
    now: Instant,
) {
    let uc = &shared.udp_counters;
    if !shared.opts.allow_udp_sessions {
        uc.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let km = &shared.manager.key_manager;
    km.maintain_cookies(now.into_std());
    let addr = src.to_string().into_bytes();
    let mut retried = false;
    let mut pos = 0;
    while let Some(r) = next_frame(d, pos, u32::MAX) {
        let Ok(range) = r else {
            uc.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
            break;
        };
        pos = range.end;
        let Ok(frag) = parse_fragment(&d[range]) else {
            uc.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        uc.handshake_fragments.fetch_add(1, Ordering::Relaxed);
        if !km.cookie_valid_for(&addr, &frag.cookie) {
            if !retried {
                retried = true;
                if let Some(retry) = km.retry_frame_for(&addr) {
                    // 112 bytes, always less than the fragment that asked (>= 125).
                    if retry.len() < d.len() {
                        ServerCounters::add(&shared.counters.retries_sent, 1);
                        actions.push(EndpointAction::Send(src, retry));
                    }
                }
            }
            continue;
        }
        let mut h = lock(hs);
        let key = (src, frag.message_id);
        match h.reassembler.handle(now.into_std(), src, &frag) {
            Ok(Some(whole)) => {
                if let Some((_, frags)) = h.recent.get(&key) {
                    actions.push(EndpointAction::Repeat(src, frags.clone()));
                } else if h.in_progress.insert(key) {
                    actions.push(EndpointAction::Handshake(src, frag.message_id, whole));
                }
            }
            Ok(None) => {}
            Err(e) => {
                trace!(?e, %src, "handshake fragment rejected");
                uc.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        uc.reassemblies_pending
            .store(h.reassembler.len() as u64, Ordering::Relaxed);
        uc.reassemblies_dropped
            .store(h.reassembler.dropped(), Ordering::Relaxed);
    }
}

async fn udp_handshake(
    shared: &Arc<ServerShared>,
    io: &Arc<UdpIo>,
    hs: &Mutex<HsState>,
    src: SocketAddr,
    message_id: u64,
    whole: Vec<u8>,
) {
    let counters = &shared.counters;
    let refuse = |code: ErrorCode, reason: &str| {
        counters.error_sent(code);
        plain_error_frame(code, reason)
    };
    if shared.shutdown.is_cancelled() {
        return;
    }
    if !shared.limiter.allow(src.ip(), Instant::now()) {
        ServerCounters::add(&counters.handshakes_failed, 1);
        let f = refuse(
            ErrorCode::RATE_LIMITED,
            "too many handshakes from this address",
        );
        let _ = io.send_datagram(src, &f).await;
        return;
    }
    if ServerCounters::get(&counters.connections_active) >= shared.opts.max_connections as u64 {
        ServerCounters::add(&counters.connections_refused, 1);
        let f = refuse(ErrorCode::SERVER_BUSY, "server is at max_connections");
        let _ = io.send_datagram(src, &f).await;
        return;
    }
    let addr = src.to_string().into_bytes();
    let outcome =
        shared
            .manager
            .key_manager
            .handshake(std::time::Instant::now(), &addr, true, &whole);
    let (mut session, client_key, ack) = match outcome {
        Ok(ServerOutcome::Accepted {
            ack,
            session,
            client_key,
            ..
        }) => (session, client_key, ack),
        Ok(ServerOutcome::Retry(f)) => {
            // The cookie secret rotated meanwhile.
            ServerCounters::add(&counters.retries_sent, 1);
            let _ = io.send_datagram(src, &f).await;
            return;
        }
        Err(e) => {
            debug!(%src, error = %e, "UDP handshake failed");
            ServerCounters::add(&counters.handshakes_failed, 1);
            let reason = if e.code() == ErrorCode::UNAUTHORIZED {
                "unauthorized"
            } else {
                "handshake failed"
            };
            let f = refuse(e.code(), reason);
            let _ = io.send_datagram(src, &f).await;
            return;
        }
    };
    session.set_replay_mode(xtmp_proto::ReplayMode::Window);
    let budget = shared.opts.datagram.budget;
    let frags = match fragment_handshake(&ack, None, message_id, budget) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            warn!(error = %e, "cannot fragment the handshake answer");
            return;
        }
    };
    ServerCounters::add(&counters.handshakes_completed, 1);
    let now = Instant::now();
    let conn = crate::server::build_conn(
        shared,
        *session,
        src,
        ConnectionType::UdpFast,
        client_key,
        Some(DgramState::new(
            Attach::Primary,
            Some(src),
            shared.datagram_opts.clone(),
            now.into_std(),
        )),
    );
    if !shared.manager.insert(conn.clone()) {
        warn!("session id collision; dropping the new UDP session");
        return;
    }
    lock(hs).remember((src, message_id), frags.clone(), now);
    for f in frags.iter() {
        ServerCounters::add(&counters.bytes_sent, f.len() as u64);
        let _ = io.send_datagram(src, f).await;
    }
    debug!(%src, session = %format_args!("{:016x}", conn.session_id), "UDP session established");
    let peer = lock(&conn.state)
        .dgram
        .as_ref()
        .map(|d| d.peer.clone())
        .unwrap_or_default();
    let sink = UdpFrameSink::new(io.clone(), peer, budget);
    shared.spawn_udp_session(conn, sink);
}

/// Bytes a pure UDP session may put in one reply body (reply prefix and message id
/// included in the budget).
pub(crate) fn max_udp_reply_body(budget: usize) -> usize {
    budget.saturating_sub(HEADER_LEN + 8 + 8)
}
