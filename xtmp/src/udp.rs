//! The datagram transport of the runtime (`PROTOCOL.md` §9): batched UDP I/O (recvmmsg
//! with GRO, sendmsg with GSO, through `quinn-udp`), the per-session datagram path state
//! (`RELIABLE` retransmission, acknowledgements, path health for hybrid switching, loss
//! estimation) and the options and per-message-type policy of `UdpFast` and
//! `TcpUdpHybrid` sessions. The protocol pieces themselves (walking datagrams, fragments,
//! ack bookkeeping) are sans-IO in [`xtmp_proto::datagram`].

use std::collections::BTreeSet;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncWrite, Interest};
use tokio::net::UdpSocket;
use tracing::debug;
use xtmp_proto::datagram::{
    decode_datagram_ack, fragment_frame, pack_datagrams, parse_frame_fragment, reliable_payload,
    Reassembler, ReassemblyLimits, ReliableReceiver, ReliableSender, RetransmitConfig,
    DEFAULT_DATAGRAM_BUDGET, MAX_DATAGRAM_BUDGET, MESSAGE_ID_LEN, MIN_DATAGRAM_BUDGET,
    PATH_TOKEN_LEN,
};
use xtmp_proto::{MessageType, PathId, Session, XTMPError, XTMPFlags, HEADER_LEN};

use crate::router::lock;

// ------------------------------------------------------------------------------------
// Options and policy
// ------------------------------------------------------------------------------------

/// Which message types a `TcpUdpHybrid` session sends over its UDP path (the rest go over
/// TCP). The default is the seed's intent: `LiveUpdates`, `EventStream` and
/// `MetricsStream` over UDP; handshake, wallet, bundle and registry operations (and
/// everything else) over TCP. Replies follow the path their request came in on; anything
/// too large for a datagram goes over TCP whatever the policy says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HybridPolicy {
    udp: BTreeSet<u8>,
}

impl Default for HybridPolicy {
    fn default() -> Self {
        Self::udp_types([
            MessageType::LiveUpdates,
            MessageType::EventStream,
            MessageType::MetricsStream,
        ])
    }
}

impl HybridPolicy {
    /// A policy sending exactly `types` over UDP.
    pub fn udp_types(types: impl IntoIterator<Item = MessageType>) -> Self {
        Self {
            udp: types.into_iter().map(|t| t.0).collect(),
        }
    }

    /// Sends `t` over UDP (`true`) or TCP (`false`).
    pub fn set(&mut self, t: MessageType, udp: bool) -> &mut Self {
        if udp {
            self.udp.insert(t.0);
        } else {
            self.udp.remove(&t.0);
        }
        self
    }

    /// Whether `t` goes over UDP while the UDP path is up.
    pub fn wants_udp(&self, t: MessageType) -> bool {
        self.udp.contains(&t.0)
    }

    /// The types sent over UDP.
    pub fn types(&self) -> Vec<MessageType> {
        self.udp.iter().map(|&b| MessageType(b)).collect()
    }
}

/// Settings of datagram paths (`UdpFast` sessions and the UDP path of `TcpUdpHybrid`
/// sessions), shared by server and client. [`DatagramOptions::default`] gives the
/// documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DatagramOptions {
    /// Largest datagram sent, XTMP header included (default 1200; 1200 to 65 507). On a
    /// pure UDP session a message that does not fit is refused with `MESSAGE_TOO_LARGE`.
    pub budget: usize,
    /// Interval of the UDP path's health probes (heartbeats on the datagram path) and of
    /// the loss estimate (default 1 s).
    pub probe_interval: Duration,
    /// The UDP path of a hybrid session counts as down after this many probes in a row
    /// went unanswered (default 3).
    pub path_down_after: u32,
    /// A down UDP path counts as up again after this many probes in a row were answered
    /// (default 3).
    pub path_up_after: u32,
    /// The UDP path also counts as down while the estimated loss exceeds this fraction
    /// (default 0.3).
    pub loss_threshold: f64,
    /// A `RELIABLE` message the server sends is given up (and counted) after this long
    /// without acknowledgement (default 10 s; the client uses its request timeout).
    pub retransmit_deadline: Duration,
    /// Retransmission timeouts (RFC 6298 style, from acknowledgement RTT samples).
    pub retransmit: RetransmitConfig,
    /// Per-message-type path choice of hybrid sessions.
    pub hybrid_policy: HybridPolicy,
}

impl Default for DatagramOptions {
    fn default() -> Self {
        Self {
            budget: DEFAULT_DATAGRAM_BUDGET,
            probe_interval: Duration::from_secs(1),
            path_down_after: 3,
            path_up_after: 3,
            loss_threshold: 0.3,
            retransmit_deadline: Duration::from_secs(10),
            retransmit: RetransmitConfig::default(),
            hybrid_policy: HybridPolicy::default(),
        }
    }
}

impl DatagramOptions {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the offending option.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_DATAGRAM_BUDGET..=MAX_DATAGRAM_BUDGET).contains(&self.budget) {
            return Err(format!(
                "datagram budget must be between {MIN_DATAGRAM_BUDGET} and {MAX_DATAGRAM_BUDGET} bytes"
            ));
        }
        if self.probe_interval.is_zero() || self.retransmit_deadline.is_zero() {
            return Err("probe_interval and retransmit_deadline must be greater than zero".into());
        }
        if self.path_down_after == 0 || self.path_up_after == 0 {
            return Err("path_down_after and path_up_after must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.loss_threshold) {
            return Err("loss_threshold must be between 0 and 1".into());
        }
        if self.retransmit.min_rto.is_zero() || self.retransmit.max_rto < self.retransmit.min_rto {
            return Err("retransmission timeouts: 0 < min_rto <= max_rto".into());
        }
        Ok(())
    }

    /// Largest payload of an unreliable frame on a datagram path.
    pub fn max_payload(&self) -> usize {
        self.budget.saturating_sub(HEADER_LEN)
    }

    /// Largest body of a `RELIABLE` message (the message id takes 8 bytes).
    pub fn max_reliable_body(&self) -> usize {
        self.max_payload().saturating_sub(MESSAGE_ID_LEN)
    }
}

// ------------------------------------------------------------------------------------
// Socket
// ------------------------------------------------------------------------------------

/// Receive buffer per batch slot: a whole GRO train (or a maximal datagram).
const SLOT_SIZE: usize = 64 * 1024;

/// A UDP socket with batched I/O: `recvmmsg` (with UDP GRO where the kernel offers it) on
/// receive, `sendmsg` with UDP GSO (equal-sized datagrams in one system call) on send.
pub(crate) struct UdpIo {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
    local: SocketAddr,
    pub(crate) datagrams_sent: AtomicU64,
    pub(crate) datagrams_received: AtomicU64,
    pub(crate) send_calls: AtomicU64,
}

impl std::fmt::Debug for UdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpIo")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl UdpIo {
    pub(crate) async fn bind(addr: SocketAddr) -> io::Result<Arc<Self>> {
        let socket = UdpSocket::bind(addr).await?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        // Larger kernel buffers absorb bursts (capped by net.core.{r,w}mem_max).
        let _ = state.set_recv_buffer_size((&socket).into(), 4 << 20);
        let _ = state.set_send_buffer_size((&socket).into(), 4 << 20);
        let local = socket.local_addr()?;
        Ok(Arc::new(Self {
            socket,
            state,
            local,
            datagrams_sent: AtomicU64::new(0),
            datagrams_received: AtomicU64::new(0),
            send_calls: AtomicU64::new(0),
        }))
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Receives a batch: returns how many slots of `batch` are filled.
    pub(crate) async fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        loop {
            self.socket.readable().await?;
            let mut slices: Vec<IoSliceMut<'_>> =
                batch.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let r = self.socket.try_io(Interest::READABLE, || {
                self.state
                    .recv((&self.socket).into(), &mut slices, &mut batch.meta)
            });
            match r {
                Ok(n) => {
                    let dgrams: usize = batch.meta[..n]
                        .iter()
                        .map(|m| m.len.div_ceil(m.stride.max(1)))
                        .sum();
                    self.datagrams_received
                        .fetch_add(dgrams as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one datagram (handshake traffic).
    pub(crate) async fn send_datagram(&self, dest: SocketAddr, d: &[u8]) -> io::Result<()> {
        let t = quinn_udp::Transmit {
            destination: dest,
            ecn: None,
            contents: d,
            segment_size: None,
            src_ip: None,
        };
        loop {
            self.socket.writable().await?;
            match self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &t)
            }) {
                Ok(()) => {
                    self.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                    self.send_calls.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    debug!(error = %e, %dest, "UDP send failed");
                    return Ok(());
                }
            }
        }
    }

    /// Sends whole frames (`frames`, back to back) to `dest`, coalesced into datagrams of
    /// at most `budget` bytes; runs of equal-sized datagrams go out in one GSO send.
    /// Returns how many bytes of `frames` were handled (always a frame boundary).
    fn poll_send_frames(
        &self,
        cx: &mut Context<'_>,
        dest: SocketAddr,
        frames: &[u8],
        budget: usize,
    ) -> Poll<io::Result<usize>> {
        let mut done = 0;
        while done < frames.len() {
            let rest = &frames[done..];
            let mut ranges = Vec::new();
            let oversized = pack_datagrams(rest, budget, &mut ranges).is_err();
            let packed = ranges.last().map_or(0, |r| r.end);
            match self.poll_send_ranges(cx, dest, rest, &ranges) {
                Poll::Ready(Ok(n)) if n == packed => done += n,
                Poll::Ready(Ok(n)) => return Poll::Ready(Ok(done + n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if done > 0 => return Poll::Ready(Ok(done)),
                Poll::Pending => return Poll::Pending,
            }
            if !oversized {
                break;
            }
            // A frame larger than a datagram (only the core's key updates: application
            // messages are size-checked before sealing) goes in fragments (§9.7).
            let big = &frames[done..];
            let len = xtmp_proto::Header::parse(big, u32::MAX)
                .map_or(big.len(), |h| h.frame_len().min(big.len()));
            let mut id = [0u8; 8];
            xtmp_proto::SecureRandom::fill(&mut crate::rng::OsRng, &mut id);
            match fragment_frame(&big[..len], u64::from_be_bytes(id), budget) {
                Ok(parts) => {
                    let flat: Vec<u8> = parts.concat();
                    let mut pr = Vec::with_capacity(parts.len());
                    let mut at = 0;
                    for p in &parts {
                        pr.push(at..at + p.len());
                        at += p.len();
                    }
                    match self.poll_send_ranges(cx, dest, &flat, &pr) {
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        // Not sent: the next write starts at this frame again.
                        Poll::Pending if done > 0 => return Poll::Ready(Ok(done)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => debug!(error = %e, "frame too large for a datagram; dropped"),
            }
            done += len;
        }
        Poll::Ready(Ok(frames.len()))
    }

    /// Sends the datagrams `ranges` of `buf` (adjacent, starting at 0); returns how many
    /// bytes went out (a datagram boundary).
    fn poll_send_ranges(
        &self,
        cx: &mut Context<'_>,
        dest: SocketAddr,
        frames: &[u8],
        ranges: &[std::ops::Range<usize>],
    ) -> Poll<io::Result<usize>> {
        let max_segments = self.state.max_gso_segments().max(1);
        let mut i = 0;
        let mut done = 0;
        while i < ranges.len() {
            let seg = ranges[i].len();
            let mut j = i + 1;
            while j < ranges.len() && j - i < max_segments && ranges[j].len() == seg {
                j += 1;
            }
            // GSO allows a shorter last segment.
            if j < ranges.len() && j - i < max_segments && ranges[j].len() < seg {
                j += 1;
            }
            let t = quinn_udp::Transmit {
                destination: dest,
                ecn: None,
                contents: &frames[ranges[i].start..ranges[j - 1].end],
                segment_size: (j - i > 1).then_some(seg),
                src_ip: None,
            };
            match self.socket.poll_send_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if done > 0 => return Poll::Ready(Ok(done)),
                Poll::Pending => return Poll::Pending,
            }
            match self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &t)
            }) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // A datagram the kernel refused (e.g. EMSGSIZE, an unreachable address) is
                // lost like any other: retransmission covers RELIABLE messages.
                Err(e) => debug!(error = %e, %dest, "UDP send failed"),
            }
            self.send_calls.fetch_add(1, Ordering::Relaxed);
            self.datagrams_sent
                .fetch_add((j - i) as u64, Ordering::Relaxed);
            done = ranges[j - 1].end;
            i = j;
        }
        Poll::Ready(Ok(done))
    }
}

/// Receive buffers for [`UdpIo::recv`].
pub(crate) struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    meta: Vec<quinn_udp::RecvMeta>,
}

impl RecvBatch {
    pub(crate) fn new(slots: usize) -> Self {
        let slots = slots.clamp(1, quinn_udp::BATCH_SIZE.max(1));
        Self {
            bufs: (0..slots).map(|_| vec![0u8; SLOT_SIZE]).collect(),
            meta: vec![quinn_udp::RecvMeta::default(); slots],
        }
    }

    /// Calls `f(source, datagram)` for each datagram of the first `n` slots (GRO trains
    /// are split at their stride).
    pub(crate) fn for_each(&mut self, n: usize, mut f: impl FnMut(SocketAddr, &mut [u8])) {
        for (buf, meta) in self.bufs.iter_mut().zip(self.meta.iter()).take(n) {
            let len = meta.len.min(buf.len());
            let stride = if meta.stride == 0 { len } else { meta.stride };
            if stride == 0 {
                f(meta.addr, &mut buf[..0]);
                continue;
            }
            for d in buf[..len].chunks_mut(stride) {
                f(meta.addr, d);
            }
        }
    }
}

/// Where a datagram path sends to; moved by roaming (an authenticated datagram from a new
/// address).
pub(crate) type PeerCell = Arc<Mutex<Option<SocketAddr>>>;

/// An [`AsyncWrite`] that sends whole sealed frames as coalesced datagrams to the path's
/// current peer. The connection writers write their batches (always whole frames) into
/// it exactly as into a TCP stream.
pub(crate) struct UdpFrameSink {
    io: Arc<UdpIo>,
    peer: PeerCell,
    budget: usize,
}

impl UdpFrameSink {
    pub(crate) fn new(io: Arc<UdpIo>, peer: PeerCell, budget: usize) -> Self {
        Self { io, peer, budget }
    }
}

impl AsyncWrite for UdpFrameSink {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let dest = *lock(&self.peer);
        match dest {
            // No address yet (a hybrid path not bound): nothing can be sent.
            None => Poll::Ready(Ok(buf.len())),
            Some(d) => self.io.poll_send_frames(cx, d, buf, self.budget),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ------------------------------------------------------------------------------------
// Per-session datagram path state
// ------------------------------------------------------------------------------------

/// A `RELIABLE` message kept for retransmission.
pub(crate) trait ReliableItem {
    fn message_type(&self) -> MessageType;
    fn flags(&self) -> XTMPFlags;
    fn body(&self) -> &[u8];
}

/// Hybrid path attach progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attach {
    /// Pure UDP session: the datagram path is the primary path.
    Primary,
    /// Hybrid: no UDP path requested yet / requested, waiting for the grant.
    None,
    Requested,
    /// Granted (server: waiting for `Bind`; client: sending `Bind` until `Bound`).
    Granted([u8; PATH_TOKEN_LEN]),
    /// The path works both ways.
    Bound([u8; PATH_TOKEN_LEN]),
}

/// Frames the session has sent and received (activity between two ticks).
fn frames_seen(core: &Session) -> u64 {
    let s = core.stats();
    s.frames_sent.wrapping_add(s.frames_received)
}

/// Loss estimate from sequence gaps (receive side), retransmissions (send side) and
/// unanswered probes, sampled once per probe interval and smoothed.
#[derive(Debug, Default, Clone)]
pub(crate) struct LossTracker {
    max_seq: u64,
    last_max_seq: u64,
    last_frames: u64,
    last_sent: u64,
    last_retx: u64,
    last_probes: (u64, u64),
    ewma: f64,
    sampled: bool,
    /// Cumulative gaps seen (frames never received, as far as can be told).
    pub(crate) gaps: u64,
}

impl LossTracker {
    pub(crate) fn observe(&mut self, seq: u64) {
        self.max_seq = self.max_seq.max(seq);
    }

    fn tick(
        &mut self,
        frames_received: u64,
        reliable: &xtmp_proto::datagram::ReliableStats,
        probes: (u64, u64),
    ) {
        let span = self.max_seq.saturating_sub(self.last_max_seq);
        let got = frames_received.saturating_sub(self.last_frames);
        let gap = span.saturating_sub(got);
        let sent = reliable.sent.saturating_sub(self.last_sent);
        let retx = reliable.retransmitted.saturating_sub(self.last_retx);
        let psent = probes.0.saturating_sub(self.last_probes.0);
        let plost = probes.1.saturating_sub(self.last_probes.1);
        self.gaps += gap;
        self.last_max_seq = self.max_seq;
        self.last_frames = frames_received;
        self.last_sent = reliable.sent;
        self.last_retx = reliable.retransmitted;
        self.last_probes = probes;
        let total = span + sent + retx + psent;
        if total == 0 {
            return;
        }
        let sample = ((gap + retx + plost) as f64 / total as f64).min(1.0);
        self.ewma = if self.sampled {
            0.6 * self.ewma + 0.4 * sample
        } else {
            sample
        };
        self.sampled = true;
    }

    pub(crate) fn estimate(&self) -> f64 {
        self.ewma
    }
}

/// Health of a hybrid session's UDP path (`PROTOCOL.md` §9.8).
#[derive(Debug, Clone)]
pub(crate) struct PathHealth {
    pub(crate) up: bool,
    missed_in_row: u32,
    answered_in_row: u32,
    pub(crate) probes_sent: u64,
    pub(crate) probes_lost: u64,
    pub(crate) switches: u64,
}

impl PathHealth {
    fn new() -> Self {
        Self {
            up: true,
            missed_in_row: 0,
            answered_in_row: 0,
            probes_sent: 0,
            probes_lost: 0,
            switches: 0,
        }
    }
}

/// Counters of a datagram path.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DgramCounters {
    pub(crate) frames_received: u64,
    pub(crate) frames_rejected: u64,
    pub(crate) datagrams_malformed: u64,
    pub(crate) migrations: u64,
    pub(crate) too_large: u64,
    pub(crate) dropped_unreliable: u64,
    pub(crate) reliable_refused: u64,
}

/// Datagram-path metrics of one session (part of [`crate::SessionMetrics`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatagramPathMetrics {
    /// `"primary"` (a `UdpFast` session) or `"hybrid"`.
    pub role: String,
    /// `"up"`, `"down"`, or `"unbound"` (hybrid before the path attach completed).
    pub state: String,
    /// The peer's current UDP address (moves when the peer roams).
    pub peer_address: Option<String>,
    /// Datagram budget in bytes.
    pub budget: usize,
    /// Smoothed RTT of the path in ms (acknowledgements and probes), 0 before a sample.
    pub srtt_ms: f64,
    /// Estimated loss (smoothed, 0.0 ..= 1.0).
    pub loss: f64,
    /// Sequence numbers never received (cumulative).
    pub sequence_gaps: u64,
    /// `RELIABLE` messages sent (first transmissions).
    pub reliable_sent: u64,
    /// Retransmissions of `RELIABLE` messages.
    pub retransmissions: u64,
    /// `RELIABLE` messages acknowledged.
    pub reliable_acked: u64,
    /// `RELIABLE` messages given up at their deadline.
    pub reliable_expired: u64,
    /// `RELIABLE` messages not yet acknowledged.
    pub reliable_outstanding: u64,
    /// Duplicate `RELIABLE` messages received (suppressed).
    pub duplicates_suppressed: u64,
    /// Frames received on the path and accepted.
    pub frames_received: u64,
    /// Frames received on the path and dropped (authentication, replay, framing).
    pub frames_rejected: u64,
    /// Times the peer's address moved.
    pub migrations: u64,
    /// Hybrid: switches between UDP and TCP.
    pub path_switches: u64,
    /// Health probes sent / unanswered.
    pub probes_sent: u64,
    /// Health probes unanswered.
    pub probes_lost: u64,
}

/// The datagram side of a session.
pub(crate) struct DgramState<T> {
    pub(crate) attach: Attach,
    pub(crate) peer: PeerCell,
    /// Shared by all sessions of a server (one allocation, not one per session).
    pub(crate) opts: Arc<DatagramOptions>,
    /// Sealed frames for the datagram path of a hybrid session (a `UdpFast` session's
    /// frames go through the connection's ordinary write buffer).
    pub(crate) dbuf: Vec<u8>,
    pub(crate) sender: ReliableSender<T>,
    pub(crate) receiver: ReliableReceiver,
    pub(crate) health: PathHealth,
    pub(crate) loss: LossTracker,
    ku_retry: Option<(Instant, Instant, u32)>,
    next_tick: Instant,
    /// Frames sent plus received by the session at the last tick, and whether that tick
    /// found none since the one before: a quiet `UdpFast` session then needs no tick
    /// (nothing to sample, no probes) until it sends or receives again.
    tick_mark: u64,
    tick_quiet: bool,
    bind_sent: Option<Instant>,
    pub(crate) counters: DgramCounters,
    /// Fragments of oversized core frames (key updates) from the peer.
    /// Created by the first `FrameFragment` (key updates too large for one datagram) and
    /// dropped once nothing is pending.
    frame_reasm: Option<Box<Reassembler<()>>>,
}

/// What [`DgramState::run_timers`] wants from its caller.
pub(crate) struct TimerOutcome<T> {
    /// Messages given up.
    pub(crate) expired: Vec<(u64, T)>,
    /// (message id, new sequence number) of each retransmission.
    pub(crate) resealed: Vec<(u64, u64)>,
    /// The session cannot go on (a key update was never answered).
    pub(crate) fatal: bool,
    /// The hybrid UDP path changed state (`Some(true)`: up).
    pub(crate) switched: Option<bool>,
    /// A probe interval passed (metrics sampled).
    pub(crate) ticked: bool,
}

impl<T: ReliableItem> DgramState<T> {
    pub(crate) fn new(
        attach: Attach,
        peer: Option<SocketAddr>,
        opts: impl Into<Arc<DatagramOptions>>,
        now: Instant,
    ) -> Self {
        let opts = opts.into();
        Self {
            attach,
            peer: Arc::new(Mutex::new(peer)),
            sender: ReliableSender::new(opts.retransmit),
            receiver: ReliableReceiver::new(),
            health: PathHealth::new(),
            loss: LossTracker::default(),
            ku_retry: None,
            next_tick: now + opts.probe_interval,
            tick_mark: 0,
            tick_quiet: false,
            bind_sent: None,
            dbuf: Vec::new(),
            counters: DgramCounters::default(),
            frame_reasm: None,
            opts,
        }
    }

    /// `UdpFast` (the datagram path is the session's primary path).
    pub(crate) fn is_primary(&self) -> bool {
        self.attach == Attach::Primary
    }

    /// Whether the writer has datagram work: frames for the UDP path or acknowledgements.
    pub(crate) fn wants_write(&self) -> bool {
        !self.dbuf.is_empty() || self.receiver.has_acks()
    }

    /// The path id frames of the datagram path carry.
    pub(crate) fn path(&self) -> PathId {
        if self.is_primary() {
            PathId::Primary
        } else {
            PathId::Datagram
        }
    }

    /// A `FrameFragment` of this session: the whole frame once complete, if it is one the
    /// core may send in fragments (`KeyUpdate`, `KeyUpdateAck`). Anything else is dropped
    /// (and counted).
    pub(crate) fn on_frame_fragment(&mut self, now: Instant, frame: &[u8]) -> Option<Vec<u8>> {
        let whole = match parse_frame_fragment(frame) {
            Ok((_, f)) => {
                let r = self.frame_reasm.get_or_insert_with(|| {
                    Box::new(Reassembler::new(ReassemblyLimits {
                        max_pending: 2,
                        max_pending_per_peer: 2,
                        timeout: Duration::from_secs(5),
                    }))
                });
                let whole = r.handle(now, (), &f).ok().flatten();
                if r.is_empty() {
                    self.frame_reasm = None;
                }
                whole
            }
            Err(_) => None,
        };
        let w = whole?;
        match xtmp_proto::Header::parse(&w, u32::MAX) {
            Ok(h)
                if h.frame_len() == w.len()
                    && matches!(
                        h.message_type,
                        MessageType::KeyUpdate | MessageType::KeyUpdateAck
                    ) =>
            {
                Some(w)
            }
            _ => {
                self.counters.frames_rejected += 1;
                None
            }
        }
    }

    /// Whether traffic may use the UDP path now.
    pub(crate) fn usable(&self) -> bool {
        match self.attach {
            Attach::Primary => true,
            Attach::Bound(_) => self.health.up && lock(&self.peer).is_some(),
            _ => false,
        }
    }

    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        *lock(&self.peer)
    }

    /// An authenticated frame arrived from `src`: the path follows the peer (roaming).
    pub(crate) fn authenticated_from(&mut self, src: SocketAddr) {
        let mut p = lock(&self.peer);
        if *p != Some(src) {
            if p.is_some() {
                self.counters.migrations += 1;
                debug!(from = ?*p, to = %src, "datagram path moved");
            }
            *p = Some(src);
        }
    }

    /// Path for an outgoing message of type `t` (hybrid policy; `fits` = small enough for
    /// a datagram).
    pub(crate) fn route(&self, t: MessageType, fits: bool) -> PathId {
        match self.attach {
            Attach::Primary => PathId::Primary,
            _ if fits && self.usable() && self.opts.hybrid_policy.wants_udp(t) => PathId::Datagram,
            _ => PathId::Primary,
        }
    }

    /// The buffer frames of `path` go into.
    pub(crate) fn buffer<'a>(&'a mut self, path: PathId, wbuf: &'a mut Vec<u8>) -> &'a mut Vec<u8> {
        if path == PathId::Datagram && !self.is_primary() {
            &mut self.dbuf
        } else {
            wbuf
        }
    }

    /// Whether `path` carries datagrams (size limits and `RELIABLE` apply).
    pub(crate) fn is_datagram(&self, path: PathId) -> bool {
        self.is_primary() || path == PathId::Datagram
    }

    /// Seals a message on `path` into the right buffer. A frame too large for a datagram
    /// is taken back ([`XTMPError::PayloadTooLarge`]).
    pub(crate) fn seal(
        &mut self,
        core: &mut Session,
        wbuf: &mut Vec<u8>,
        path: PathId,
        t: MessageType,
        flags: XTMPFlags,
        payload: &[u8],
    ) -> Result<u64, XTMPError> {
        self.seal_prefixed(core, wbuf, path, t, flags, &[], payload)
    }

    /// [`DgramState::seal`] of the payload `prefix ‖ body` (no copy of the two together).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal_prefixed(
        &mut self,
        core: &mut Session,
        wbuf: &mut Vec<u8>,
        path: PathId,
        t: MessageType,
        flags: XTMPFlags,
        prefix: &[u8],
        body: &[u8],
    ) -> Result<u64, XTMPError> {
        let budget = self.opts.budget;
        let datagram = self.is_datagram(path);
        let buf = self.buffer(path, wbuf);
        let start = buf.len();
        let seq = core.seal_on_prefixed(path, t, flags, prefix, body, buf)?;
        if datagram && buf.len() - start > budget {
            buf.truncate(start);
            self.counters.too_large += 1;
            return Err(XTMPError::PayloadTooLarge {
                length: u32::try_from(prefix.len() + body.len()).unwrap_or(u32::MAX),
                max: u32::try_from(budget - HEADER_LEN).unwrap_or(u32::MAX),
            });
        }
        Ok(seq)
    }

    /// Seals `RELIABLE` message `id` (first transmission or retransmission) on the UDP path
    /// when usable, else on the primary path.
    pub(crate) fn seal_reliable(
        &mut self,
        core: &mut Session,
        wbuf: &mut Vec<u8>,
        id: u64,
        t: MessageType,
        flags: XTMPFlags,
        body: &[u8],
    ) -> Result<u64, XTMPError> {
        let path = if self.usable() {
            self.path()
        } else {
            PathId::Primary
        };
        let p = reliable_payload(id, body);
        self.seal(core, wbuf, path, t, flags | XTMPFlags::RELIABLE, &p)
    }

    /// Handles a `DatagramAck` payload; returns how many messages it acknowledged.
    pub(crate) fn on_ack(&mut self, now: Instant, payload: &[u8]) -> usize {
        let Ok(ids) = decode_datagram_ack(payload) else {
            self.counters.frames_rejected += 1;
            return 0;
        };
        ids.filter(|&id| self.sender.on_ack(now, id).is_some())
            .count()
    }

    /// The next time [`DgramState::run_timers`] has work (`None`: none until something
    /// is sent or received). A hybrid session probes its UDP path every probe interval; a
    /// `UdpFast` session that has been quiet for a whole interval skips its ticks (and so
    /// its task's wake-ups) until it is active again — the next tick then runs at the
    /// writer's next turn.
    pub(crate) fn poll_timeout(&self, core: &Session) -> Option<Instant> {
        let mut t = if self.is_primary() && self.tick_quiet && frames_seen(core) == self.tick_mark {
            None
        } else {
            Some(self.next_tick)
        };
        let min = |t: Option<Instant>, x: Instant| Some(t.map_or(x, |t| t.min(x)));
        if let Some(r) = self.sender.poll_timeout() {
            t = min(t, r);
        }
        if let Some((next, _, _)) = self.ku_retry {
            t = min(t, next);
        }
        t
    }

    /// Smoothed RTT of the path: from acknowledgements, else from its probes or heartbeats.
    pub(crate) fn srtt(&self, core: &Session) -> Option<Duration> {
        self.sender
            .rtt()
            .smoothed()
            .or_else(|| core.rtt_on(self.path()).smoothed())
    }

    /// Retransmissions, deadlines, key-update repetition (`UdpFast`), loss sampling, UDP
    /// path probes and switching (hybrid), then pending acknowledgements.
    pub(crate) fn run_timers(
        &mut self,
        now: Instant,
        core: &mut Session,
        wbuf: &mut Vec<u8>,
    ) -> TimerOutcome<T>
    where
        T: Clone,
    {
        let mut out = TimerOutcome {
            expired: Vec::new(),
            resealed: Vec::new(),
            fatal: false,
            switched: None,
            ticked: false,
        };
        let mut retransmit = Vec::new();
        self.sender.due(now, &mut retransmit, &mut out.expired);
        // Key updates on a pure datagram session: repeat until answered (PROTOCOL §9.7).
        if self.is_primary() && core.key_update_in_progress() {
            match self.ku_retry {
                None => self.ku_retry = Some((now + self.sender.rto(), now, 1)),
                Some((next, started, attempts)) if now >= next => {
                    if now.saturating_duration_since(started) > self.opts.retransmit_deadline {
                        out.fatal = true;
                    } else {
                        let _ = core.requeue_key_update();
                        let wait = self
                            .sender
                            .rto()
                            .saturating_mul(1 << attempts.min(5))
                            .min(self.opts.retransmit.max_rto);
                        self.ku_retry = Some((now + wait, started, attempts + 1));
                    }
                }
                Some(_) => {}
            }
        } else {
            self.ku_retry = None;
        }
        if now >= self.next_tick {
            self.next_tick = now + self.opts.probe_interval;
            out.ticked = true;
            let mark = frames_seen(core);
            self.tick_quiet = mark == self.tick_mark;
            self.tick_mark = mark;
            if !self.is_primary() {
                out.switched = self.probe(now, core, wbuf);
                if out.switched == Some(false) {
                    // Everything outstanding goes over TCP now, without waiting.
                    retransmit = self.sender.outstanding_ids();
                }
            }
            let st = *self.sender.stats();
            self.loss.tick(
                core.stats().frames_received,
                &st,
                (self.health.probes_sent, self.health.probes_lost),
            );
        }
        retransmit.sort_unstable();
        retransmit.dedup();
        for id in retransmit {
            let Some(item) = self.sender.get(id).cloned() else {
                continue;
            };
            match self.seal_reliable(
                core,
                wbuf,
                id,
                item.message_type(),
                item.flags(),
                item.body(),
            ) {
                Ok(seq) => {
                    self.sender.on_retransmitted(now, id);
                    out.resealed.push((id, seq));
                }
                Err(e) => debug!(error = %e, id, "cannot retransmit"),
            }
        }
        self.flush_acks(core, wbuf);
        out
    }

    /// Hybrid: one probe tick. Returns a state change of the UDP path.
    fn probe(&mut self, now: Instant, core: &mut Session, wbuf: &mut Vec<u8>) -> Option<bool> {
        match self.attach {
            Attach::Bound(_) => {}
            Attach::Granted(token) => {
                // Client: keep announcing the path until the server confirms it. (The
                // server never sends Bind: it waits.)
                if self.bind_sent.is_some() {
                    self.send_bind(now, core, wbuf, token);
                }
                return None;
            }
            _ => return None,
        }
        let h = &mut self.health;
        if core.ping_outstanding_on(PathId::Datagram) {
            h.probes_lost += 1;
            h.missed_in_row += 1;
            h.answered_in_row = 0;
        }
        h.probes_sent += 1;
        let _ = core.send_ping_on(now, PathId::Datagram);
        let lossy = self.loss.sampled && self.loss.estimate() > self.opts.loss_threshold;
        if h.up && (h.missed_in_row >= self.opts.path_down_after || lossy) {
            h.up = false;
            h.switches += 1;
            debug!(
                missed = h.missed_in_row,
                loss = self.loss.estimate(),
                "UDP path down: traffic moves to TCP"
            );
            return Some(false);
        }
        if !h.up && h.answered_in_row >= self.opts.path_up_after {
            h.up = true;
            h.switches += 1;
            // Forget the loss of the outage.
            self.loss.ewma = 0.0;
            debug!("UDP path up again: its traffic returns to UDP");
            return Some(true);
        }
        None
    }

    /// A pong arrived on the datagram path.
    pub(crate) fn on_probe_answered(&mut self) {
        self.health.missed_in_row = 0;
        self.health.answered_in_row = self.health.answered_in_row.saturating_add(1);
    }

    /// Client: sends (or repeats) `PathAttach::Bind` on the datagram path.
    pub(crate) fn send_bind(
        &mut self,
        now: Instant,
        core: &mut Session,
        wbuf: &mut Vec<u8>,
        token: [u8; PATH_TOKEN_LEN],
    ) {
        let p = xtmp_proto::datagram::PathAttach::Bind { token }.encode();
        let _ = self.seal(
            core,
            wbuf,
            PathId::Datagram,
            MessageType::PathAttach,
            XTMPFlags::empty(),
            &p,
        );
        self.bind_sent = Some(now);
    }

    /// Seals waiting `DatagramAck`s (unreliable) on the UDP path, or on TCP while it is
    /// not usable.
    pub(crate) fn flush_acks(&mut self, core: &mut Session, wbuf: &mut Vec<u8>) {
        let path = if self.usable() {
            self.path()
        } else {
            PathId::Primary
        };
        while let Some(p) = self.receiver.take_ack_payload() {
            if self
                .seal(
                    core,
                    wbuf,
                    path,
                    MessageType::DatagramAck,
                    XTMPFlags::empty(),
                    &p,
                )
                .is_err()
            {
                break;
            }
        }
    }

    /// Metrics snapshot.
    pub(crate) fn metrics(&self, core: &Session) -> DatagramPathMetrics {
        let s = self.sender.stats();
        DatagramPathMetrics {
            role: if self.is_primary() {
                "primary"
            } else {
                "hybrid"
            }
            .into(),
            state: match self.attach {
                Attach::Primary => "up",
                Attach::Bound(_) if self.health.up => "up",
                Attach::Bound(_) => "down",
                _ => "unbound",
            }
            .into(),
            peer_address: self.peer_addr().map(|a| a.to_string()),
            budget: self.opts.budget,
            srtt_ms: self.srtt(core).map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            loss: self.loss.estimate(),
            sequence_gaps: self.loss.gaps,
            reliable_sent: s.sent,
            retransmissions: s.retransmitted,
            reliable_acked: s.acked,
            reliable_expired: s.expired,
            reliable_outstanding: self.sender.outstanding() as u64,
            duplicates_suppressed: self.receiver.duplicates(),
            frames_received: self.counters.frames_received,
            frames_rejected: self.counters.frames_rejected,
            migrations: self.counters.migrations,
            path_switches: self.health.switches,
            probes_sent: self.health.probes_sent,
            probes_lost: self.health.probes_lost,
        }
    }
}

/// Global counter of UDP endpoints' malformed datagrams etc. (server status).
#[derive(Debug, Default)]
pub(crate) struct UdpCounters {
    pub(crate) datagrams_dropped: AtomicU64,
    pub(crate) unknown_session: AtomicU64,
    pub(crate) handshake_fragments: AtomicU64,
    pub(crate) reassemblies_pending: AtomicU64,
    pub(crate) reassemblies_dropped: AtomicU64,
}

impl UdpCounters {
    pub(crate) fn status(&self, io: &UdpIo) -> crate::metrics::UdpStatus {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::metrics::UdpStatus {
            datagrams_received: g(&io.datagrams_received),
            datagrams_sent: g(&io.datagrams_sent),
            send_calls: g(&io.send_calls),
            datagrams_dropped: g(&self.datagrams_dropped),
            unknown_session: g(&self.unknown_session),
            handshake_fragments: g(&self.handshake_fragments),
            reassemblies_pending: g(&self.reassemblies_pending),
            reassemblies_dropped: g(&self.reassemblies_dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use xtmp_crypto::xwing::XWingSecretKey;
    use xtmp_proto::{
        ClientConfig, ClientHandshake, ClientOutcome, InsecureDeterministicRngForTestingOnly,
        ServerConfig, ServerHandshaker, ServerOutcome,
    };

    #[derive(Clone)]
    struct Item;
    impl ReliableItem for Item {
        fn message_type(&self) -> MessageType {
            MessageType::LiveUpdates
        }
        fn flags(&self) -> XTMPFlags {
            XTMPFlags::empty()
        }
        fn body(&self) -> &[u8] {
            b""
        }
    }

    /// A client session from a real handshake.
    fn session(now: Instant) -> Session {
        let mut rng = InsecureDeterministicRngForTestingOnly::new([7; 32]);
        let key = Arc::new(XWingSecretKey::from_seed(&[0x11; 32]));
        let mut server = ServerHandshaker::new(ServerConfig::new(key.clone()));
        let cc = ClientConfig::new(key.public_key().clone());
        let (mut ch, m1) = ClientHandshake::start(cc, 1_700_000_000_000_000_000, &mut rng).unwrap();
        let ServerOutcome::Accepted { ack, .. } = server
            .handle(now, b"127.0.0.1:1", false, &m1, &mut rng)
            .unwrap()
        else {
            panic!("expected Accepted")
        };
        let ClientOutcome::Established(s) = ch.handle(now, &ack).unwrap() else {
            panic!("expected Established")
        };
        *s
    }

    /// A quiet `UdpFast` session stops ticking after one quiet probe interval (its task
    /// sleeps until the heartbeat) and ticks again once it sends; a hybrid session keeps
    /// its probe ticks.
    #[test]
    fn quiet_udp_fast_session_needs_no_tick_but_hybrid_keeps_probing() {
        let t0 = Instant::now();
        let mut core = session(t0);
        let opts = DatagramOptions::default();
        let iv = opts.probe_interval;
        let mut d: DgramState<Item> = DgramState::new(Attach::Primary, None, opts.clone(), t0);
        let mut wbuf = Vec::new();
        assert_eq!(d.poll_timeout(&core), Some(t0 + iv));
        // Traffic during the first interval: the tick after it is not quiet.
        core.seal(
            MessageType::LiveUpdates,
            XTMPFlags::empty(),
            b"x",
            &mut wbuf,
        )
        .unwrap();
        assert!(d.run_timers(t0 + iv, &mut core, &mut wbuf).ticked);
        assert_eq!(d.poll_timeout(&core), Some(t0 + 2 * iv));
        // A whole interval without a frame: no further tick is scheduled.
        assert!(d.run_timers(t0 + 2 * iv, &mut core, &mut wbuf).ticked);
        assert_eq!(d.poll_timeout(&core), None);
        // It sends again: the (overdue) tick is due at once.
        core.seal(
            MessageType::LiveUpdates,
            XTMPFlags::empty(),
            b"y",
            &mut wbuf,
        )
        .unwrap();
        assert_eq!(d.poll_timeout(&core), Some(t0 + 3 * iv));
        assert!(d.run_timers(t0 + 9 * iv, &mut core, &mut wbuf).ticked);
        assert_eq!(d.poll_timeout(&core), Some(t0 + 10 * iv));
        // Hybrid: probes every interval whatever the traffic.
        let mut h: DgramState<Item> = DgramState::new(Attach::None, None, opts, t0);
        for k in 1..4 {
            h.run_timers(t0 + k * iv, &mut core, &mut wbuf);
            assert_eq!(h.poll_timeout(&core), Some(t0 + (k + 1) * iv));
        }
    }
}
