//! The client's datagram side (`PROTOCOL.md` §9): `UdpFast` connect (fragmented handshake
//! behind the server's cookie step), the UDP receive task, `RELIABLE` sending with
//! retransmission (and correlation of replies across retransmissions), the hybrid path
//! attach and switching.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, trace};
use xtmp_proto::datagram::{
    fragment_handshake, next_frame, parse_fragment, split_reliable, Delivery, PathAttach,
    Reassembler, ReassemblyLimits,
};
use xtmp_proto::handshake::COOKIE_LEN;
use xtmp_proto::{
    ClientHandshake, ClientOutcome, Header, MessageType, PathId, Received, ReplayMode, Session,
    XTMPError, XTMPFlags, HEADER_LEN,
};

use super::{
    fail_sub, handle_message, Act, BoxWrite, CState, ClientConn, ClientInner, ClientOptions, Io,
    OutKind, Outbound, PushedMessage,
};
use crate::error::ClientError;
use crate::rng::{unix_time_ns, OsRng};
use crate::router::lock;
use crate::transport::parse_plain_error;
use crate::udp::{
    Attach, DatagramPathMetrics, DgramState, RecvBatch, ReliableItem, UdpFrameSink, UdpIo,
};

/// Receive slots of a client's UDP socket.
const CLIENT_RECV_SLOTS: usize = 8;

/// A `RELIABLE` message the client keeps until acknowledged.
#[derive(Debug, Clone)]
pub(super) struct ClientRel {
    t: MessageType,
    flags: XTMPFlags,
    body: Vec<u8>,
    /// Sequence number of the first transmission: what replies are correlated to.
    first_seq: u64,
}

impl ReliableItem for ClientRel {
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

/// The datagram side of a client connection.
pub(super) struct ClientDgram {
    pub(super) st: DgramState<ClientRel>,
    io: Arc<UdpIo>,
    /// Sequence number of a retransmission → that of the first transmission.
    aliases: HashMap<u64, u64>,
    /// Per stream id, the newest push delivered (older ones arriving late are dropped, so
    /// a stream is delivered in order, with gaps).
    stream_last: super::IdMap<u64>,
    /// Hybrid: where the granted UDP path goes (the TCP address, until the grant names the
    /// port).
    tcp_addr: SocketAddr,
    udp_override: Option<SocketAddr>,
    pub(super) pushes_late: u64,
    pub(super) pushes_dropped: u64,
}

impl ClientDgram {
    /// The UDP side of a `TcpUdpHybrid` session: a socket, nothing attached yet.
    pub(super) async fn hybrid(
        tcp_addr: SocketAddr,
        opts: &ClientOptions,
    ) -> Result<Box<Self>, ClientError> {
        let target = opts.udp_address.unwrap_or(tcp_addr);
        let io = bind_for(target, opts).await?;
        Ok(Box::new(Self {
            st: DgramState::new(
                Attach::None,
                None,
                opts.datagram.clone(),
                std::time::Instant::now(),
            ),
            io,
            aliases: HashMap::new(),
            stream_last: super::IdMap::default(),
            tcp_addr,
            udp_override: opts.udp_address,
            pushes_late: 0,
            pushes_dropped: 0,
        }))
    }

    pub(super) fn io(&self) -> Arc<UdpIo> {
        self.io.clone()
    }

    /// A frame the core produced goes on the path its key id names.
    pub(super) fn route_core_frame(&mut self, wbuf: &mut Vec<u8>, f: Vec<u8>) {
        if PathId::of_frame(&f) == Some(PathId::Datagram) && !self.st.is_primary() {
            self.st.dbuf.extend_from_slice(&f);
        } else {
            wbuf.extend_from_slice(&f);
        }
    }

    /// Bytes sealed for the hybrid UDP path and not yet sent.
    pub(super) fn buffered(&self) -> usize {
        self.st.dbuf.len()
    }

    pub(super) fn poll_timeout(&self, core: &Session) -> Option<std::time::Instant> {
        self.st.poll_timeout(core)
    }

    pub(super) fn flush_acks(&mut self, core: &mut Session, wbuf: &mut Vec<u8>) {
        self.st.flush_acks(core, wbuf);
    }

    /// Hybrid: the frames sealed for the UDP path, with a sink to send them.
    pub(super) fn take_datagrams(&mut self) -> Option<(UdpFrameSink, Vec<u8>)> {
        if self.st.is_primary() || self.st.dbuf.is_empty() {
            return None;
        }
        let d = std::mem::take(&mut self.st.dbuf);
        Some((
            UdpFrameSink::new(self.io.clone(), self.st.peer.clone(), self.st.opts.budget),
            d,
        ))
    }

    pub(super) fn metrics(&self, core: &Session) -> DatagramPathMetrics {
        self.st.metrics(core)
    }
}

async fn bind_for(target: SocketAddr, opts: &ClientOptions) -> Result<Arc<UdpIo>, ClientError> {
    let local = match opts.local_address {
        Some(a) => SocketAddr::new(a.ip(), 0),
        None if target.is_ipv4() => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    UdpIo::bind(local).await.map_err(|e| ClientError::Connect {
        address: target,
        reason: format!("cannot open a UDP socket: {e}"),
    })
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    xtmp_proto::SecureRandom::fill(&mut OsRng, &mut b);
    u64::from_be_bytes(b)
}

/// `UdpFast`: the handshake over UDP (`PROTOCOL.md` §9.4). The first fragment of message 1
/// goes alone and earns the server's `Retry`; then all fragments with the cookie; the
/// `HandshakeAck` comes back in fragments. Everything is repeated with a doubling timeout
/// (the caller bounds the whole by the step's timeout).
pub(super) async fn establish_udp(
    server: SocketAddr,
    opts: &ClientOptions,
) -> Result<(Box<Session>, Io), ClientError> {
    let io = bind_for(server, opts).await?;
    let budget = opts.datagram.budget;
    let (mut hs, m1) = ClientHandshake::start(opts.client_config(), unix_time_ns(), &mut OsRng)
        .map_err(ClientError::Handshake)?;
    let mut msg_id = random_u64();
    let mut frags =
        fragment_handshake(&m1, None, msg_id, budget).map_err(ClientError::Handshake)?;
    let mut cookie: Option<[u8; COOKIE_LEN]> = None;
    let mut reasm: Reassembler<()> = Reassembler::new(ReassemblyLimits::default());
    let mut batch = RecvBatch::new(4);
    let mut rto = Duration::from_millis(200);
    let session = 'outer: loop {
        let to_send = if cookie.is_some() {
            &frags[..]
        } else {
            &frags[..1]
        };
        for f in to_send {
            let _ = io.send_datagram(server, f).await;
        }
        let deadline = Instant::now() + rto;
        rto = (rto * 2).min(Duration::from_secs(2));
        loop {
            let n = match tokio::time::timeout_at(deadline, io.recv(&mut batch)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    return Err(ClientError::Connect {
                        address: server,
                        reason: e.to_string(),
                    })
                }
                Err(_) => break, // repeat
            };
            // The answer is authenticated by the handshake itself, so it may come from
            // another address of a multihomed server; a Retry (unauthenticated) and a
            // plain Error only count from the address we sent to.
            let mut datagrams = Vec::new();
            batch.for_each(n, |src, d| datagrams.push((src == server, d.to_vec())));
            let mut resend = false;
            for (from_server, d) in datagrams {
                let mut pos = 0;
                while let Some(Ok(range)) = next_frame(&d, pos, u32::MAX) {
                    pos = range.end;
                    let f = &d[range];
                    let Ok(h) = Header::parse(f, u32::MAX) else {
                        break;
                    };
                    if !from_server && h.message_type != MessageType::HandshakeFragment {
                        continue;
                    }
                    if let Some(e) = parse_plain_error(f) {
                        return Err(ClientError::Refused {
                            code: e.code,
                            reason: e.reason,
                        });
                    }
                    match h.message_type {
                        MessageType::Retry => {
                            let c: Option<[u8; COOKIE_LEN]> =
                                f.get(HEADER_LEN..).and_then(|c| c.try_into().ok());
                            if c.is_none() || c == cookie {
                                continue; // a repeated Retry: the cookie is known
                            }
                            match hs.handle(std::time::Instant::now(), f) {
                                Ok(ClientOutcome::Retry(m1c)) => {
                                    cookie = c;
                                    msg_id = random_u64();
                                    frags =
                                        fragment_handshake(&m1c, cookie.as_ref(), msg_id, budget)
                                            .map_err(ClientError::Handshake)?;
                                    resend = true;
                                }
                                Ok(ClientOutcome::Established(_)) => {}
                                Err(e) => return Err(ClientError::Handshake(e)),
                            }
                        }
                        MessageType::HandshakeFragment => {
                            let Ok(frag) = parse_fragment(f) else {
                                continue;
                            };
                            if frag.message_id != msg_id {
                                continue;
                            }
                            let Ok(Some(whole)) =
                                reasm.handle(std::time::Instant::now(), (), &frag)
                            else {
                                continue;
                            };
                            match hs.handle(std::time::Instant::now(), &whole) {
                                Ok(ClientOutcome::Established(s)) => break 'outer s,
                                Ok(ClientOutcome::Retry(_)) => {}
                                // A forged answer leaves the handshake as it was.
                                Err(e) => debug!(error = %e, "handshake answer rejected"),
                            }
                        }
                        _ => {}
                    }
                }
            }
            if resend {
                rto = Duration::from_millis(200);
                continue 'outer;
            }
        }
    };
    let mut session = session;
    session.set_replay_mode(ReplayMode::Window);
    let st = DgramState::new(
        Attach::Primary,
        Some(server),
        opts.datagram.clone(),
        std::time::Instant::now(),
    );
    let sink = UdpFrameSink::new(io.clone(), st.peer.clone(), budget);
    let writer: BoxWrite = Box::new(sink);
    let dgram = Box::new(ClientDgram {
        st,
        io,
        aliases: HashMap::new(),
        stream_last: super::IdMap::default(),
        tcp_addr: server,
        udp_override: None,
        pushes_late: 0,
        pushes_dropped: 0,
    });
    Ok((
        session,
        Io {
            reader: None,
            writer,
            dgram: Some(dgram),
        },
    ))
}

/// The sequence number a reply refers to, mapped back to the first transmission of a
/// retransmitted `RELIABLE` request.
pub(super) fn first_seq(st: &CState, seq: u64) -> u64 {
    st.dgram
        .as_ref()
        .filter(|d| !d.aliases.is_empty())
        .and_then(|d| d.aliases.get(&seq).copied())
        .unwrap_or(seq)
}

/// The request with first transmission `seq` got its answer: forget its aliases.
pub(super) fn settled(st: &mut CState, seq: u64) {
    if let Some(d) = st.dgram.as_mut() {
        if !d.aliases.is_empty() {
            d.aliases.retain(|_, f| *f != seq);
        }
    }
}

/// The datagram layer's part of a received application message (either path):
/// acknowledgements, path attach, `RELIABLE` duplicates, late stream pushes. `None` when
/// nothing is left for the application.
pub(super) fn pre_message<'a>(
    st: &mut CState,
    now: Instant,
    header: Header,
    payload: Cow<'a, [u8]>,
) -> Option<(Header, Cow<'a, [u8]>)> {
    let CState {
        dgram,
        core,
        wbuf,
        streams,
        ..
    } = st;
    let Some(d) = dgram.as_mut() else {
        return Some((header, payload));
    };
    match header.message_type {
        MessageType::DatagramAck => {
            d.st.on_ack(now.into_std(), &payload);
            return None;
        }
        MessageType::PathAttach => {
            on_path_attach(d, core, wbuf, now, &payload);
            return None;
        }
        _ => {}
    }
    let payload = if header.flags.contains(XTMPFlags::RELIABLE) {
        let (id, body) = split_reliable(&payload).ok()?;
        match d.st.receiver.check(id) {
            Delivery::Duplicate => {
                d.st.receiver.duplicate(id);
                return None;
            }
            Delivery::New => d.st.receiver.accept(id),
        }
        Cow::Owned(body.to_vec())
    } else {
        payload
    };
    if header.flags.contains(XTMPFlags::STREAMING) {
        if let Some(id) = payload.get(..8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(id);
            let raw_id = u64::from_be_bytes(a);
            let stream_id = if d.aliases.is_empty() {
                raw_id
            } else {
                d.aliases.get(&raw_id).copied().unwrap_or(raw_id)
            };
            // Only streams this client subscribed to are tracked (bounded); the rest
            // are orphans, counted by the caller.
            if !streams.contains_key(&stream_id) {
                return Some((header, payload));
            }
            if d.stream_last.len() > streams.len() {
                d.stream_last.retain(|id, _| streams.contains_key(id));
            }
            let last = d.stream_last.entry(stream_id).or_insert(0);
            if header.sequence_number <= *last {
                d.pushes_late += 1;
                return None;
            }
            *last = header.sequence_number;
        }
    }
    Some((header, payload))
}

fn on_path_attach(
    d: &mut ClientDgram,
    core: &mut Session,
    wbuf: &mut Vec<u8>,
    now: Instant,
    payload: &[u8],
) {
    match PathAttach::decode(payload) {
        Ok(PathAttach::Grant { token, port }) => {
            if matches!(d.st.attach, Attach::Bound(_)) {
                return;
            }
            core.enable_datagram_path();
            let udp = d
                .udp_override
                .unwrap_or_else(|| SocketAddr::new(d.tcp_addr.ip(), port));
            *lock(&d.st.peer) = Some(udp);
            d.st.attach = Attach::Granted(token);
            d.st.send_bind(now.into_std(), core, wbuf, token);
            debug!(%udp, "UDP path granted; binding");
        }
        Ok(PathAttach::Bound { token }) => {
            if let Attach::Granted(t) = d.st.attach {
                if xtmp_crypto::ct_eq(&t, &token) {
                    d.st.attach = Attach::Bound(t);
                    debug!("UDP path bound");
                }
            }
        }
        _ => trace!("unexpected PathAttach ignored"),
    }
}

/// Writer timers of the datagram side. Returns subscriptions whose renewal was given up;
/// an error ends the connection.
pub(super) fn tick(
    st: &mut CState,
    now: std::time::Instant,
    _opts: &ClientOptions,
) -> Result<Vec<(u64, ClientError)>, ClientError> {
    let CState {
        dgram,
        core,
        wbuf,
        pending,
        streams,
        quality,
        ..
    } = st;
    let Some(d) = dgram.as_mut() else {
        return Ok(Vec::new());
    };
    if d.st.attach == Attach::None {
        // Hybrid: ask for the UDP path over TCP.
        let p = PathAttach::Request.encode();
        core.seal(MessageType::PathAttach, XTMPFlags::empty(), &p, wbuf)
            .map_err(ClientError::Protocol)?;
        d.st.attach = Attach::Requested;
    }
    let out = d.st.run_timers(now, core, wbuf);
    if out.ticked {
        let total = core.stats().bytes_sent + core.stats().bytes_received;
        quality.sample_throughput(now, total);
    }
    for (id, seq) in &out.resealed {
        if let Some(item) = d.st.sender.get(*id) {
            d.aliases.insert(*seq, item.first_seq);
        }
    }
    let mut failed = Vec::new();
    for (_, item) in out.expired {
        d.aliases.retain(|_, f| *f != item.first_seq);
        if let Some(p) = pending.remove(&item.first_seq) {
            if let Some((sub_id, e)) = p.fail(ClientError::Unacknowledged) {
                streams.retain(|_, s| *s != sub_id);
                failed.push((sub_id, e));
            }
        }
    }
    if out.fatal {
        return Err(ClientError::ConnectionLost { sent: true });
    }
    Ok(failed)
}

/// Seals an outgoing message on its path (`UdpFast`: the datagram path; hybrid: by the
/// policy while the UDP path is up). Requests, acknowledged sends and subscriptions are
/// `RELIABLE` on a datagram path; fire-and-forget messages are not. Gives the message back
/// when no `RELIABLE` id is free.
pub(super) fn seal_outbound(
    st: &mut CState,
    o: Outbound,
    now: std::time::Instant,
    opts: &ClientOptions,
) -> Option<Outbound> {
    let CState {
        dgram, core, wbuf, ..
    } = st;
    let d = dgram.as_mut()?;
    let reliable = !matches!(o.kind, OutKind::Queued(_));
    let overhead = HEADER_LEN + if reliable { 8 } else { 0 };
    let fits = overhead + o.payload.len() <= d.st.opts.budget;
    let primary = d.st.is_primary();
    let path = if primary {
        PathId::Primary
    } else {
        d.st.route(o.message_type, fits)
    };
    let res = if !d.st.is_datagram(path) {
        core.seal(o.message_type, o.flags, &o.payload, wbuf)
    } else if reliable {
        let Some(id) = d.st.sender.reserve_id() else {
            if primary {
                return Some(o);
            }
            let r = core.seal(o.message_type, o.flags, &o.payload, wbuf);
            return finish(st, o, r, opts);
        };
        let r =
            d.st.seal_reliable(core, wbuf, id, o.message_type, o.flags, &o.payload);
        if let Ok(seq) = r {
            d.st.sender.on_sent(
                now,
                id,
                ClientRel {
                    t: o.message_type,
                    flags: o.flags,
                    body: o.payload.clone(),
                    first_seq: seq,
                },
                now + opts.request_timeout,
            );
        }
        r
    } else {
        d.st.seal(core, wbuf, path, o.message_type, o.flags, &o.payload)
    };
    let res = match res {
        // Too large for a datagram: hybrid sends it over TCP.
        Err(XTMPError::PayloadTooLarge { .. }) if !primary => {
            core.seal(o.message_type, o.flags, &o.payload, wbuf)
        }
        r => r,
    };
    finish(st, o, res, opts)
}

fn finish(
    st: &mut CState,
    o: Outbound,
    res: Result<u64, XTMPError>,
    opts: &ClientOptions,
) -> Option<Outbound> {
    match res {
        Ok(seq) => st.register_sent(seq, o.kind),
        Err(XTMPError::PayloadTooLarge { .. }) => o.kind.fail(ClientError::MessageTooLarge {
            len: o.payload.len(),
            max: opts.datagram.max_reliable_body(),
        }),
        Err(e) => o.kind.fail(ClientError::Protocol(e)),
    }
    None
}

/// The UDP receive task of a `UdpFast` or hybrid connection.
pub(super) async fn udp_reader(inner: Arc<ClientInner>, conn: Arc<ClientConn>, io: Arc<UdpIo>) {
    let mut batch = RecvBatch::new(CLIENT_RECV_SLOTS);
    let cancelled = conn.close.cancelled();
    tokio::pin!(cancelled);
    loop {
        let n = tokio::select! {
            biased;
            r = io.recv(&mut batch) => r,
            _ = &mut cancelled => return,
        };
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                trace!(error = %e, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let mut acts = Vec::new();
        {
            let mut guard = lock(&conn.state);
            let st = &mut *guard;
            if st.ended.is_some() {
                return;
            }
            let now = Instant::now();
            batch.for_each(n, |_src, d| on_datagram(&inner, st, now, d, &mut acts));
            st.drain_core();
        }
        conn.wake.notify_one();
        for act in acts {
            match act {
                Act::Nothing => {}
                Act::FailSub(id, e) => fail_sub(&inner, id, e),
                Act::Push(sub_id, msg) => deliver_push(&inner, &conn, sub_id, msg),
                Act::End(e) => {
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
}

/// A push that arrived over UDP: a full subscription drops it (and counts it) instead of
/// stalling the socket.
fn deliver_push(inner: &ClientInner, conn: &ClientConn, sub_id: u64, msg: PushedMessage) {
    let delivered = {
        let mut subs = lock(&inner.subs);
        match subs.get_mut(&sub_id) {
            Some(s) => {
                if let Some(g) = s.gap.take() {
                    let _ = s.tx.try_send(Err(g));
                }
                Some(s.tx.try_send(Ok(msg)).is_ok())
            }
            None => None,
        }
    };
    match delivered {
        Some(true) => {}
        Some(false) => {
            if let Some(d) = lock(&conn.state).dgram.as_mut() {
                d.pushes_dropped += 1;
            }
        }
        None => {
            inner
                .orphan_pushes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn on_datagram(
    inner: &ClientInner,
    st: &mut CState,
    now: Instant,
    d: &mut [u8],
    acts: &mut Vec<Act>,
) {
    let Some(path) = st.dgram.as_ref().map(|d| d.st.path()) else {
        return;
    };
    let mut pos = 0;
    while let Some(r) = next_frame(d, pos, u32::MAX) {
        let Ok(range) = r else {
            if let Some(dg) = st.dgram.as_mut() {
                dg.st.counters.datagrams_malformed += 1;
            }
            break;
        };
        pos = range.end;
        let frame = &mut d[range];
        if frame.get(5) == Some(&MessageType::FrameFragment.0) {
            let whole = st
                .dgram
                .as_mut()
                .and_then(|dg| dg.st.on_frame_fragment(now.into_std(), frame));
            if let Some(mut w) = whole {
                if !on_frame(inner, st, path, now, &mut w, acts) {
                    return;
                }
            }
            continue;
        }
        if !on_frame(inner, st, path, now, frame, acts) {
            return;
        }
    }
}

/// One frame of a datagram (or reassembled from fragments); `false` ends the walk.
fn on_frame(
    inner: &ClientInner,
    st: &mut CState,
    path: PathId,
    now: Instant,
    frame: &mut [u8],
    acts: &mut Vec<Act>,
) -> bool {
    {
        let seq = Header::parse(frame, u32::MAX).map_or(0, |h| h.sequence_number);
        let r = match st.core.open_on(path, now.into_std(), frame, &mut OsRng) {
            Ok(r) => r,
            Err(XTMPError::IntegrityLimit) => {
                acts.push(Act::End(ClientError::Protocol(XTMPError::IntegrityLimit)));
                return false;
            }
            Err(e) => {
                trace!(error = %e, "datagram frame rejected");
                if let Some(dg) = st.dgram.as_mut() {
                    dg.st.counters.frames_rejected += 1;
                }
                return true;
            }
        };
        st.last_received = now;
        if let Some(dg) = st.dgram.as_mut() {
            dg.st.counters.frames_received += 1;
            dg.st.loss.observe(seq);
        }
        let act = match r {
            Received::Message { header, payload } => match pre_message(st, now, header, payload) {
                Some((h, p)) => handle_message(inner, st, h, &p),
                None => Act::Nothing,
            },
            Received::Pong { rtt } => {
                if path == PathId::Datagram {
                    if let Some(dg) = st.dgram.as_mut() {
                        dg.st.on_probe_answered();
                    }
                } else {
                    st.quality.on_pong();
                    for w in st.ping_waiters.drain(..) {
                        let _ = w.send(rtt);
                    }
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
        };
        let end = matches!(act, Act::End(_));
        acts.push(act);
        !end
    }
}
