//! The datagram transport's pieces that need no socket (`PROTOCOL.md` §9): walking a
//! coalesced datagram frame by frame, packing sealed frames into datagrams, handshake
//! fragmentation with bounded reassembly, and the acknowledgement / retransmission
//! bookkeeping of `RELIABLE` messages. Time is passed in; nothing here reads a clock.
//!
//! ```
//! use xtmp_proto::datagram::{next_frame, DEFAULT_DATAGRAM_BUDGET};
//! use xtmp_proto::{MessageType, XTMPMessage};
//!
//! // Two frames back to back in one datagram; the receiver walks them one by one.
//! let mut d = XTMPMessage::new(MessageType::Heartbeat, 7, 1, vec![0; 9]).encode()?;
//! d.extend(XTMPMessage::new(MessageType::Heartbeat, 7, 2, vec![1; 9]).encode()?);
//! assert!(d.len() <= DEFAULT_DATAGRAM_BUDGET);
//! let mut pos = 0;
//! let mut frames = 0;
//! while let Some(r) = next_frame(&d, pos, 1104) {
//!     let range = r?; // a framing error ends the walk
//!     pos = range.end;
//!     frames += 1;
//! }
//! assert_eq!(frames, 2);
//! # Ok::<(), xtmp_proto::XTMPError>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::error::XTMPError;
use crate::handshake::COOKIE_LEN;
use crate::header::{
    crc32, parse_frame, EncryptionType, Header, MessageType, XTMPFlags, HEADER_LEN,
};
use crate::replay::{ReplayWindow, WINDOW};
use crate::session::RttEstimator;

/// Default size of a datagram (UDP payload), header included: fits the 1280-byte IPv6
/// minimum MTU with room for IP and UDP headers, as QUIC's 1200.
pub const DEFAULT_DATAGRAM_BUDGET: usize = 1200;
/// Smallest configurable datagram budget.
pub const MIN_DATAGRAM_BUDGET: usize = 1200;
/// Largest configurable datagram budget (the largest IPv4 UDP payload).
pub const MAX_DATAGRAM_BUDGET: usize = 65_507;

#[allow(non_upper_case_globals)]
impl MessageType {
    /// Datagram paths: acknowledges `RELIABLE` messages by message id (`PROTOCOL.md` §9.7).
    pub const DatagramAck: MessageType = MessageType(0x0A);
    /// Datagram transports: one fragment of a handshake message too large for a datagram
    /// (`PROTOCOL.md` §9.4).
    pub const HandshakeFragment: MessageType = MessageType(0x0B);
    /// Adding a datagram path to a stream session (`PROTOCOL.md` §9.6).
    pub const PathAttach: MessageType = MessageType(0x0C);
    /// Datagram paths: one fragment of a sealed core frame too large for a datagram (a
    /// key update, `PROTOCOL.md` §9.7).
    pub const FrameFragment: MessageType = MessageType(0x0D);
}

/// Whether `t` belongs to the datagram layer (handled by the runtime, never by handlers).
pub fn is_datagram_control(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::DatagramAck
            | MessageType::HandshakeFragment
            | MessageType::PathAttach
            | MessageType::FrameFragment
    )
}

// ------------------------------------------------------------------------------------
// Walking and packing
// ------------------------------------------------------------------------------------

/// The frame starting at `pos` in a received datagram: `None` at the end of the datagram,
/// `Some(Ok(range))` for a whole frame whose header passed §2.3 steps 1–7 (the CRC and
/// everything after are checked when it is opened), `Some(Err(_))` for a framing error,
/// after which the rest of the datagram cannot be delimited and the walk MUST stop
/// (`PROTOCOL.md` §9.3).
pub fn next_frame(
    datagram: &[u8],
    pos: usize,
    max_payload: u32,
) -> Option<Result<Range<usize>, XTMPError>> {
    let rest = datagram.get(pos..)?;
    if rest.is_empty() {
        return None;
    }
    let h = match Header::parse(rest, max_payload) {
        Ok(h) => h,
        Err(e) => return Some(Err(e)),
    };
    let len = h.frame_len();
    if len > rest.len() {
        return Some(Err(XTMPError::Truncated {
            needed: len,
            available: rest.len(),
        }));
    }
    Some(Ok(pos..pos + len))
}

/// Iterator form of [`next_frame`]: yields the frame ranges of a datagram, then at most
/// one error.
#[derive(Debug, Clone)]
pub struct DatagramWalker<'a> {
    datagram: &'a [u8],
    pos: usize,
    max_payload: u32,
    done: bool,
}

impl<'a> DatagramWalker<'a> {
    /// Walks `datagram`, refusing frames with payloads over `max_payload`.
    pub fn new(datagram: &'a [u8], max_payload: u32) -> Self {
        Self {
            datagram,
            pos: 0,
            max_payload,
            done: false,
        }
    }
}

impl Iterator for DatagramWalker<'_> {
    type Item = Result<Range<usize>, XTMPError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = next_frame(self.datagram, self.pos, self.max_payload);
        match &r {
            Some(Ok(range)) => self.pos = range.end,
            _ => self.done = true,
        }
        r
    }
}

/// Splits `frames` (whole sealed frames back to back, as a sender accumulates them) into
/// datagrams of at most `budget` bytes, each holding whole frames in order. The ranges are
/// appended to `out`; consecutive datagrams are adjacent in `frames`, so equal-sized runs
/// can go out as one segmentation-offload send.
///
/// # Errors
/// A frame larger than `budget` ([`XTMPError::PayloadTooLarge`]) or a buffer that is not
/// whole frames; the ranges before it are in `out`.
pub fn pack_datagrams(
    frames: &[u8],
    budget: usize,
    out: &mut Vec<Range<usize>>,
) -> Result<(), XTMPError> {
    let mut start = 0;
    let mut pos = 0;
    while pos < frames.len() {
        let h = Header::parse(&frames[pos..], u32::MAX)?;
        let len = h.frame_len();
        let end =
            pos.checked_add(len)
                .filter(|&e| e <= frames.len())
                .ok_or(XTMPError::Truncated {
                    needed: len,
                    available: frames.len() - pos,
                })?;
        if len > budget {
            if pos > start {
                out.push(start..pos);
            }
            return Err(XTMPError::PayloadTooLarge {
                length: h.payload_length,
                max: u32::try_from(budget.saturating_sub(HEADER_LEN)).unwrap_or(u32::MAX),
            });
        }
        if end - start > budget {
            out.push(start..pos);
            start = pos;
        }
        pos = end;
    }
    if pos > start {
        out.push(start..pos);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------
// Handshake fragments
// ------------------------------------------------------------------------------------

/// Bytes of a `HandshakeFragment` payload before the data: cookie (16), message id (8),
/// total length (2), offset (2).
pub const FRAGMENT_OVERHEAD: usize = COOKIE_LEN + 8 + 2 + 2;
/// Largest handshake frame that is fragmented and reassembled (pqIK message 1 with a
/// cookie is 3712 bytes).
pub const MAX_REASSEMBLED_LEN: usize = 4096;
/// Most fragments one handshake message may arrive in.
pub const MAX_FRAGMENTS: usize = 16;

/// A parsed `HandshakeFragment` (`PROTOCOL.md` §9.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The cookie from a `Retry` (all zero when the sender has none).
    pub cookie: [u8; COOKIE_LEN],
    /// Chosen by the sender of message 1; the answer's fragments echo it.
    pub message_id: u64,
    /// Length of the whole handshake frame being carried.
    pub total_len: u16,
    /// Where `data` starts in it.
    pub offset: u16,
    /// The bytes.
    pub data: &'a [u8],
}

impl Fragment<'_> {
    /// Whether the cookie field is empty (all zero).
    pub fn has_cookie(&self) -> bool {
        self.cookie != [0; COOKIE_LEN]
    }
}

fn plain_frame(message_type: MessageType, payload: &[u8]) -> Vec<u8> {
    plain_frame_in(message_type, 0, payload)
}

fn plain_frame_in(message_type: MessageType, session_id: u64, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        message_type,
        flags: XTMPFlags::empty(),
        session_id,
        sequence_number: 0,
        payload_length: payload.len() as u32,
        checksum: crc32(payload),
        encryption_type: EncryptionType::None,
        key_id: [0; 16],
        nonce: [0; 24],
        auth_tag: [0; 16],
    };
    let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
    f.extend_from_slice(&header.to_bytes());
    f.extend_from_slice(payload);
    f
}

/// Cuts a handshake frame (`Handshake` or `HandshakeAck`, header included) into
/// `HandshakeFragment` frames of at most `budget` bytes each.
///
/// # Errors
/// [`XTMPError::InvalidMessage`] for an empty frame, one over [`MAX_REASSEMBLED_LEN`], or
/// a budget too small for [`MAX_FRAGMENTS`] fragments.
pub fn fragment_handshake(
    frame: &[u8],
    cookie: Option<&[u8; COOKIE_LEN]>,
    message_id: u64,
    budget: usize,
) -> Result<Vec<Vec<u8>>, XTMPError> {
    let chunk = budget.saturating_sub(HEADER_LEN + FRAGMENT_OVERHEAD);
    if frame.is_empty() || frame.len() > MAX_REASSEMBLED_LEN || chunk == 0 {
        return Err(XTMPError::InvalidMessage(
            "handshake frame cannot be fragmented".into(),
        ));
    }
    if frame.len().div_ceil(chunk) > MAX_FRAGMENTS {
        return Err(XTMPError::InvalidMessage(
            "datagram budget too small for the handshake".into(),
        ));
    }
    let total = frame.len() as u16;
    let mut out = Vec::new();
    for (i, data) in frame.chunks(chunk).enumerate() {
        let mut p = Vec::with_capacity(FRAGMENT_OVERHEAD + data.len());
        p.extend_from_slice(cookie.unwrap_or(&[0; COOKIE_LEN]));
        p.extend_from_slice(&message_id.to_be_bytes());
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&((i * chunk) as u16).to_be_bytes());
        p.extend_from_slice(data);
        out.push(plain_frame(MessageType::HandshakeFragment, &p));
    }
    Ok(out)
}

/// Parses one `HandshakeFragment` frame (exactly one frame, as delimited by the walker).
/// Checks the header like a handshake header (no flags, session 0, sequence 0, encryption
/// `None`, zero key id, nonce and tag), the CRC, and that the data lies inside the total
/// length, which is at most [`MAX_REASSEMBLED_LEN`].
///
/// # Errors
/// Framing errors, [`XTMPError::UnexpectedMessage`] for another type, or
/// [`XTMPError::MalformedPayload`].
pub fn parse_fragment(frame: &[u8]) -> Result<Fragment<'_>, XTMPError> {
    let (h, p) = parse_frame(frame, MAX_DATAGRAM_BUDGET as u32)?;
    if h.message_type != MessageType::HandshakeFragment {
        return Err(XTMPError::UnexpectedMessage(h.message_type));
    }
    let bad = || XTMPError::MalformedPayload(MessageType::HandshakeFragment);
    if h.encryption_type != EncryptionType::None
        || !h.flags.is_empty()
        || h.session_id != 0
        || h.sequence_number != 0
        || h.key_id != [0; 16]
        || h.nonce != [0; 24]
        || h.auth_tag != [0; 16]
        || p.len() <= FRAGMENT_OVERHEAD
    {
        return Err(bad());
    }
    let mut cookie = [0u8; COOKIE_LEN];
    cookie.copy_from_slice(&p[..COOKIE_LEN]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&p[COOKIE_LEN..COOKIE_LEN + 8]);
    let total_len = u16::from_be_bytes([p[24], p[25]]);
    let offset = u16::from_be_bytes([p[26], p[27]]);
    let data = &p[FRAGMENT_OVERHEAD..];
    let end = usize::from(offset) + data.len();
    if total_len == 0 || usize::from(total_len) > MAX_REASSEMBLED_LEN || end > total_len.into() {
        return Err(bad());
    }
    Ok(Fragment {
        cookie,
        message_id: u64::from_be_bytes(id),
        total_len,
        offset,
        data,
    })
}

/// Bytes of a `FrameFragment` payload before the data: fragment id (8), total length (2),
/// offset (2).
pub const FRAME_FRAGMENT_OVERHEAD: usize = 8 + 2 + 2;

/// Cuts a sealed session frame that does not fit a datagram (the core's `KeyUpdate`,
/// 1316 bytes, and `KeyUpdateAck`, 1220 bytes) into `FrameFragment` frames of at most
/// `budget` bytes (`PROTOCOL.md` §9.7). The fragments are not protected themselves: the
/// reassembled frame is opened (authenticated) like any other.
///
/// # Errors
/// [`XTMPError::InvalidMessage`] as for [`fragment_handshake`], or a buffer that is not
/// one frame.
pub fn fragment_frame(
    frame: &[u8],
    fragment_id: u64,
    budget: usize,
) -> Result<Vec<Vec<u8>>, XTMPError> {
    let h = Header::parse(frame, u32::MAX)?;
    let chunk = budget.saturating_sub(HEADER_LEN + FRAME_FRAGMENT_OVERHEAD);
    if h.frame_len() != frame.len()
        || frame.len() > MAX_REASSEMBLED_LEN
        || chunk == 0
        || frame.len().div_ceil(chunk) > MAX_FRAGMENTS
    {
        return Err(XTMPError::InvalidMessage(
            "frame cannot be fragmented".into(),
        ));
    }
    let total = frame.len() as u16;
    Ok(frame
        .chunks(chunk)
        .enumerate()
        .map(|(i, data)| {
            let mut p = Vec::with_capacity(FRAME_FRAGMENT_OVERHEAD + data.len());
            p.extend_from_slice(&fragment_id.to_be_bytes());
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&((i * chunk) as u16).to_be_bytes());
            p.extend_from_slice(data);
            plain_frame_in(MessageType::FrameFragment, h.session_id, &p)
        })
        .collect())
}

/// Parses one `FrameFragment` frame: returns its session id and the fragment (cookie
/// all zero, `message_id` = the fragment id).
///
/// # Errors
/// As [`parse_fragment`].
pub fn parse_frame_fragment(frame: &[u8]) -> Result<(u64, Fragment<'_>), XTMPError> {
    let (h, p) = parse_frame(frame, MAX_DATAGRAM_BUDGET as u32)?;
    if h.message_type != MessageType::FrameFragment {
        return Err(XTMPError::UnexpectedMessage(h.message_type));
    }
    let bad = || XTMPError::MalformedPayload(MessageType::FrameFragment);
    if h.encryption_type != EncryptionType::None
        || !h.flags.is_empty()
        || h.session_id == 0
        || h.sequence_number != 0
        || h.key_id != [0; 16]
        || h.nonce != [0; 24]
        || h.auth_tag != [0; 16]
        || p.len() <= FRAME_FRAGMENT_OVERHEAD
    {
        return Err(bad());
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&p[..8]);
    let total_len = u16::from_be_bytes([p[8], p[9]]);
    let offset = u16::from_be_bytes([p[10], p[11]]);
    let data = &p[FRAME_FRAGMENT_OVERHEAD..];
    let end = usize::from(offset) + data.len();
    if usize::from(total_len) < HEADER_LEN
        || usize::from(total_len) > MAX_REASSEMBLED_LEN
        || end > total_len.into()
    {
        return Err(bad());
    }
    Ok((
        h.session_id,
        Fragment {
            cookie: [0; COOKIE_LEN],
            message_id: u64::from_be_bytes(id),
            total_len,
            offset,
            data,
        },
    ))
}

/// Limits of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Reassemblies in progress at once (default 256); the oldest is dropped for a new one.
    pub max_pending: usize,
    /// Reassemblies in progress per peer (default 4).
    pub max_pending_per_peer: usize,
    /// A reassembly not complete within this long is dropped (default 5 s).
    pub timeout: Duration,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            max_pending: 256,
            max_pending_per_peer: 4,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a fragment was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentRejected {
    /// Its total length disagrees with earlier fragments of the same message.
    LengthMismatch,
    /// It overlaps another fragment of the message without being identical to it.
    Overlap,
    /// The message came in more than [`MAX_FRAGMENTS`] pieces (the reassembly is dropped).
    TooManyFragments,
}

struct Pending {
    buf: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    received: usize,
    started: Instant,
}

/// Bounded reassembly of handshake fragments, keyed by peer and message id
/// (`PROTOCOL.md` §9.4). Memory is at most `max_pending` × [`MAX_REASSEMBLED_LEN`].
pub struct Reassembler<K> {
    limits: ReassemblyLimits,
    pending: HashMap<(K, u64), Pending>,
    evicted: u64,
}

impl<K> core::fmt::Debug for Reassembler<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reassembler")
            .field("pending", &self.pending.len())
            .field("evicted", &self.evicted)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone> Reassembler<K> {
    /// An empty reassembler.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            limits,
            pending: HashMap::new(),
            evicted: 0,
        }
    }

    /// Reassemblies in progress.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is in progress.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Reassemblies dropped so far (timed out, evicted for newer ones, or broken).
    pub fn dropped(&self) -> u64 {
        self.evicted
    }

    fn evict_oldest(&mut self, peer: Option<&K>) {
        let oldest = self
            .pending
            .iter()
            .filter(|((p, _), _)| peer.is_none_or(|want| p == want))
            .min_by_key(|(_, v)| v.started)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.pending.remove(&k);
            self.evicted += 1;
        }
    }

    /// Drops reassemblies older than the timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.limits.timeout;
        let before = self.pending.len();
        self.pending
            .retain(|_, v| now.saturating_duration_since(v.started) < timeout);
        self.evicted += (before - self.pending.len()) as u64;
    }

    /// The next time [`Reassembler::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|v| v.started + self.limits.timeout)
            .min()
    }

    /// Adds a fragment from `peer`. Returns the whole handshake frame once every byte of
    /// it arrived. A duplicate fragment is ignored.
    ///
    /// # Errors
    /// [`FragmentRejected`]; the fragment is dropped (and with `TooManyFragments` the
    /// whole reassembly).
    pub fn handle(
        &mut self,
        now: Instant,
        peer: K,
        fragment: &Fragment<'_>,
    ) -> Result<Option<Vec<u8>>, FragmentRejected> {
        self.handle_timeout(now);
        let total = usize::from(fragment.total_len);
        let start = usize::from(fragment.offset);
        let end = start + fragment.data.len();
        let key = (peer, fragment.message_id);
        if !self.pending.contains_key(&key) {
            // A single fragment holding the whole message needs no state.
            if start == 0 && end == total {
                return Ok(Some(fragment.data.to_vec()));
            }
            let per_peer = self.pending.keys().filter(|(p, _)| *p == key.0).count();
            if per_peer >= self.limits.max_pending_per_peer {
                self.evict_oldest(Some(&key.0));
            }
            if self.pending.len() >= self.limits.max_pending.max(1) {
                self.evict_oldest(None);
            }
            self.pending.insert(
                key.clone(),
                Pending {
                    buf: vec![0; total],
                    ranges: Vec::new(),
                    received: 0,
                    started: now,
                },
            );
        }
        let Some(p) = self.pending.get_mut(&key) else {
            return Ok(None);
        };
        if p.buf.len() != total {
            return Err(FragmentRejected::LengthMismatch);
        }
        for &(s, e) in &p.ranges {
            if s == start && e == end {
                return Ok(None); // duplicate
            }
            if start < e && s < end {
                return Err(FragmentRejected::Overlap);
            }
        }
        if p.ranges.len() >= MAX_FRAGMENTS {
            self.pending.remove(&key);
            self.evicted += 1;
            return Err(FragmentRejected::TooManyFragments);
        }
        p.buf[start..end].copy_from_slice(fragment.data);
        p.ranges.push((start, end));
        p.received += end - start;
        if p.received == total {
            return Ok(self.pending.remove(&key).map(|p| p.buf));
        }
        Ok(None)
    }
}

// ------------------------------------------------------------------------------------
// RELIABLE messages: ids, acknowledgements, retransmission
// ------------------------------------------------------------------------------------

/// Length of the message id that starts a `RELIABLE` payload.
pub const MESSAGE_ID_LEN: usize = 8;
/// Most message ids in one `DatagramAck`.
pub const MAX_ACK_IDS: usize = 128;
/// Most `RELIABLE` message ids a sender may have between its oldest unacknowledged one and
/// the next it assigns. Below the replay window (1984) so the receiver's duplicate check
/// never has to forget an id that may still be retransmitted.
pub const MAX_RELIABLE_SPAN: u64 = 1024;
const _: () = assert!(MAX_RELIABLE_SPAN < WINDOW);

/// Splits a `RELIABLE` payload into its message id and body.
///
/// # Errors
/// [`XTMPError::InvalidMessage`] when shorter than 8 bytes or the id is 0.
pub fn split_reliable(payload: &[u8]) -> Result<(u64, &[u8]), XTMPError> {
    let Some((id, body)) = payload.split_first_chunk::<MESSAGE_ID_LEN>() else {
        return Err(XTMPError::InvalidMessage(
            "RELIABLE payload too short".into(),
        ));
    };
    let id = u64::from_be_bytes(*id);
    if id == 0 {
        return Err(XTMPError::InvalidMessage("message id 0".into()));
    }
    Ok((id, body))
}

/// `message_id ‖ body`.
pub fn reliable_payload(message_id: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(MESSAGE_ID_LEN + body.len());
    v.extend_from_slice(&message_id.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// `DatagramAck` payload: `count(2) ‖ message_id(8) × count`, 1 ≤ count ≤ 128.
pub fn encode_datagram_ack(ids: &[u64]) -> Vec<u8> {
    let ids = &ids[..ids.len().min(MAX_ACK_IDS)];
    let mut v = Vec::with_capacity(2 + 8 * ids.len());
    v.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        v.extend_from_slice(&id.to_be_bytes());
    }
    v
}

/// Decodes a `DatagramAck` payload (exact length, 1 to 128 ids).
///
/// # Errors
/// [`XTMPError::MalformedPayload`].
pub fn decode_datagram_ack(p: &[u8]) -> Result<impl Iterator<Item = u64> + '_, XTMPError> {
    let bad = || XTMPError::MalformedPayload(MessageType::DatagramAck);
    let (n, rest) = p.split_first_chunk::<2>().ok_or_else(bad)?;
    let n = usize::from(u16::from_be_bytes(*n));
    if n == 0 || n > MAX_ACK_IDS || rest.len() != n * 8 {
        return Err(bad());
    }
    Ok(rest.chunks_exact(8).map(|c| {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        u64::from_be_bytes(a)
    }))
}

/// Retransmission settings of a [`ReliableSender`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// Lower bound of the retransmission timeout (default 100 ms).
    pub min_rto: Duration,
    /// Upper bound of the (backed-off) retransmission timeout (default 2 s).
    pub max_rto: Duration,
    /// Timeout before the first RTT sample (default 500 ms).
    pub initial_rto: Duration,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        Self {
            min_rto: Duration::from_millis(100),
            max_rto: Duration::from_secs(2),
            initial_rto: Duration::from_millis(500),
        }
    }
}

/// Counters of a [`ReliableSender`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReliableStats {
    /// Messages registered (first transmissions).
    pub sent: u64,
    /// Retransmissions.
    pub retransmitted: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages given up at their deadline.
    pub expired: u64,
}

struct Entry<T> {
    item: T,
    first_sent: Instant,
    next_at: Instant,
    attempts: u32,
    deadline: Instant,
}

/// Sender side of `RELIABLE` messages (`PROTOCOL.md` §9.7): assigns message ids, keeps
/// each message until a `DatagramAck` names it, says when to retransmit (RFC 6298 RTO from
/// acknowledgement samples, Karn's rule, exponential backoff) and when to give up.
/// A retransmission is sealed again by the caller: a new frame, a new sequence number, the
/// same message id.
pub struct ReliableSender<T> {
    config: RetransmitConfig,
    next_id: u64,
    outstanding: BTreeMap<u64, Entry<T>>,
    rtt: RttEstimator,
    stats: ReliableStats,
}

impl<T> core::fmt::Debug for ReliableSender<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReliableSender")
            .field("next_id", &self.next_id)
            .field("outstanding", &self.outstanding.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T> ReliableSender<T> {
    /// An empty sender; message ids start at 1.
    pub fn new(config: RetransmitConfig) -> Self {
        Self {
            config,
            next_id: 1,
            outstanding: BTreeMap::new(),
            rtt: RttEstimator::default(),
            stats: ReliableStats::default(),
        }
    }

    /// Whether a new message id may be assigned: false while the oldest unacknowledged
    /// message is [`MAX_RELIABLE_SPAN`] ids behind the next one.
    pub fn can_send(&self) -> bool {
        match self.outstanding.keys().next() {
            None => true,
            Some(&oldest) => self.next_id - oldest < MAX_RELIABLE_SPAN,
        }
    }

    /// Assigns the next message id, or `None` when [`ReliableSender::can_send`] is false.
    pub fn reserve_id(&mut self) -> Option<u64> {
        if !self.can_send() {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        Some(id)
    }

    /// The retransmission timeout now (before backoff).
    pub fn rto(&self) -> Duration {
        let base = match self.rtt.smoothed() {
            None => self.config.initial_rto,
            Some(s) => s + self.rtt.variation() * 4,
        };
        base.clamp(self.config.min_rto, self.config.max_rto)
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(16);
        self.rto()
            .saturating_mul(1u32 << shift)
            .min(self.config.max_rto)
    }

    /// Records the first transmission of message `id` (from [`ReliableSender::reserve_id`]).
    pub fn on_sent(&mut self, now: Instant, id: u64, item: T, deadline: Instant) {
        let next_at = now + self.backoff(1);
        self.outstanding.insert(
            id,
            Entry {
                item,
                first_sent: now,
                next_at,
                attempts: 1,
                deadline,
            },
        );
        self.stats.sent += 1;
    }

    /// Records a retransmission of `id` at `now`.
    pub fn on_retransmitted(&mut self, now: Instant, id: u64) {
        let Some(attempts) = self.outstanding.get(&id).map(|e| e.attempts + 1) else {
            return;
        };
        let wait = self.backoff(attempts);
        if let Some(e) = self.outstanding.get_mut(&id) {
            e.attempts = attempts;
            e.next_at = now + wait;
        }
        self.stats.retransmitted += 1;
    }

    /// An acknowledgement for `id`: returns the message if it was outstanding. The RTT is
    /// sampled only from messages sent once (Karn's rule).
    pub fn on_ack(&mut self, now: Instant, id: u64) -> Option<T> {
        let e = self.outstanding.remove(&id)?;
        if e.attempts == 1 {
            self.rtt.update(now.saturating_duration_since(e.first_sent));
        }
        self.stats.acked += 1;
        Some(e.item)
    }

    /// The earliest retransmission or deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outstanding
            .values()
            .map(|e| e.next_at.min(e.deadline))
            .min()
    }

    /// Messages due at `now`: ids to retransmit go to `retransmit` (call
    /// [`ReliableSender::on_retransmitted`] after sealing each again), messages past their
    /// deadline are removed and go to `expired`.
    pub fn due(&mut self, now: Instant, retransmit: &mut Vec<u64>, expired: &mut Vec<(u64, T)>) {
        let gone: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, e)| now >= e.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(e) = self.outstanding.remove(&id) {
                self.stats.expired += 1;
                expired.push((id, e.item));
            }
        }
        retransmit.extend(
            self.outstanding
                .iter()
                .filter(|(_, e)| now >= e.next_at)
                .map(|(id, _)| *id),
        );
    }

    /// The message kept for `id`.
    pub fn get(&self, id: u64) -> Option<&T> {
        self.outstanding.get(&id).map(|e| &e.item)
    }

    /// Ids of the messages not yet acknowledged, oldest first.
    pub fn outstanding_ids(&self) -> Vec<u64> {
        self.outstanding.keys().copied().collect()
    }

    /// Messages not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Removes and returns every outstanding message (the path or session is gone).
    pub fn drain(&mut self) -> Vec<(u64, T)> {
        std::mem::take(&mut self.outstanding)
            .into_iter()
            .map(|(id, e)| (id, e.item))
            .collect()
    }

    /// RTT estimator fed by acknowledgements.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Counters.
    pub fn stats(&self) -> &ReliableStats {
        &self.stats
    }
}

/// What [`ReliableReceiver::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Not delivered before: deliver it, then [`ReliableReceiver::accept`].
    New,
    /// Delivered before (a retransmission or a duplicate): acknowledge it again, do not
    /// deliver it.
    Duplicate,
}

/// Receiver side of `RELIABLE` messages: delivers each message id once (a sliding window
/// over ids, like the replay window over sequence numbers) and collects the ids to
/// acknowledge.
#[derive(Debug, Default)]
pub struct ReliableReceiver {
    /// Allocated with the first accepted id: most sessions never receive a `RELIABLE`
    /// message on a datagram path, and the window is 264 bytes.
    window: Option<Box<ReplayWindow>>,
    acks: Vec<u64>,
    duplicates: u64,
}

/// Acknowledgements kept before the oldest are dropped (the sender retransmits).
const MAX_PENDING_ACKS: usize = 4 * MAX_ACK_IDS;

impl ReliableReceiver {
    /// An empty receiver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether message `id` is new. Ids behind the window count as duplicates: a sender
    /// keeps its unacknowledged ids within [`MAX_RELIABLE_SPAN`], so such an id was
    /// delivered (or given up) long ago.
    pub fn check(&self, id: u64) -> Delivery {
        // Without a window nothing was accepted yet: every non-zero id is new.
        let new = id != 0 && self.window.as_ref().is_none_or(|w| w.check(id).is_ok());
        if new {
            Delivery::New
        } else {
            Delivery::Duplicate
        }
    }

    /// Message `id` was delivered: remember it and acknowledge it.
    pub fn accept(&mut self, id: u64) {
        if id != 0 {
            let w = self.window.get_or_insert_with(Default::default);
            if w.check(id).is_ok() {
                w.mark(id);
            }
        }
        self.queue_ack(id);
    }

    /// Message `id` arrived again: acknowledge it again.
    pub fn duplicate(&mut self, id: u64) {
        self.duplicates += 1;
        self.queue_ack(id);
    }

    fn queue_ack(&mut self, id: u64) {
        if id == 0 || self.acks.contains(&id) {
            return;
        }
        if self.acks.len() >= MAX_PENDING_ACKS {
            self.acks.remove(0);
        }
        self.acks.push(id);
    }

    /// Whether acknowledgements are waiting.
    pub fn has_acks(&self) -> bool {
        !self.acks.is_empty()
    }

    /// The next `DatagramAck` payload (up to [`MAX_ACK_IDS`] ids), if any are waiting.
    pub fn take_ack_payload(&mut self) -> Option<Vec<u8>> {
        if self.acks.is_empty() {
            return None;
        }
        let n = self.acks.len().min(MAX_ACK_IDS);
        let p = encode_datagram_ack(&self.acks[..n]);
        self.acks.drain(..n);
        Some(p)
    }

    /// Duplicates seen (retransmissions of delivered messages).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

// ------------------------------------------------------------------------------------
// Path attach
// ------------------------------------------------------------------------------------

/// Length of a path token.
pub const PATH_TOKEN_LEN: usize = 16;

/// `PathAttach` payloads (`PROTOCOL.md` §9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathAttach {
    /// Client → server on the stream path: please add a datagram path (`0x01`).
    Request,
    /// Server → client on the stream path: use this token and UDP port (`0x02`).
    Grant {
        /// Binds the datagram path to this grant.
        token: [u8; PATH_TOKEN_LEN],
        /// The server's UDP port (on the address the stream path is connected to).
        port: u16,
    },
    /// Client → server on the datagram path, sealed on it: here I am (`0x03`).
    Bind {
        /// The granted token.
        token: [u8; PATH_TOKEN_LEN],
    },
    /// Server → client on the datagram path: the path works both ways (`0x04`).
    Bound {
        /// The granted token.
        token: [u8; PATH_TOKEN_LEN],
    },
}

impl PathAttach {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PathAttach::Request => vec![1],
            PathAttach::Grant { token, port } => {
                let mut v = vec![2];
                v.extend_from_slice(token);
                v.extend_from_slice(&port.to_be_bytes());
                v
            }
            PathAttach::Bind { token } => [&[3u8][..], token].concat(),
            PathAttach::Bound { token } => [&[4u8][..], token].concat(),
        }
    }

    /// Decodes a payload (exact lengths).
    ///
    /// # Errors
    /// [`XTMPError::MalformedPayload`].
    pub fn decode(p: &[u8]) -> Result<Self, XTMPError> {
        let bad = || XTMPError::MalformedPayload(MessageType::PathAttach);
        let token = |b: &[u8]| -> Result<[u8; PATH_TOKEN_LEN], XTMPError> {
            b.try_into().map_err(|_| bad())
        };
        match p.split_first() {
            Some((1, [])) => Ok(PathAttach::Request),
            Some((2, rest)) if rest.len() == PATH_TOKEN_LEN + 2 => Ok(PathAttach::Grant {
                token: token(&rest[..PATH_TOKEN_LEN])?,
                port: u16::from_be_bytes([rest[PATH_TOKEN_LEN], rest[PATH_TOKEN_LEN + 1]]),
            }),
            Some((3, rest)) => Ok(PathAttach::Bind {
                token: token(rest)?,
            }),
            Some((4, rest)) => Ok(PathAttach::Bound {
                token: token(rest)?,
            }),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::header::XTMPMessage;

    fn frame(seq: u64, len: usize) -> Vec<u8> {
        XTMPMessage::new(MessageType::Heartbeat, 9, seq, vec![7; len])
            .encode()
            .unwrap()
    }

    #[test]
    fn walk_stops_at_a_framing_error() {
        let mut d = frame(1, 10);
        d.extend(frame(2, 20));
        let good = d.len();
        d.extend_from_slice(b"garbage that is not a frame at all, long enough for a header......................................................");
        d.extend(frame(3, 5));
        let r: Vec<_> = DatagramWalker::new(&d, 1104).collect();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].as_ref().unwrap(), &(0..106));
        assert_eq!(r[1].as_ref().unwrap(), &(106..good));
        assert_eq!(r[2], Err(XTMPError::BadMagic));
        // Truncated last frame.
        let mut t = frame(1, 10);
        t.extend_from_slice(&frame(2, 50)[..120]);
        let r: Vec<_> = DatagramWalker::new(&t, 1104).collect();
        assert!(matches!(r[1], Err(XTMPError::Truncated { .. })));
        // Oversized declared payload.
        let big = frame(1, 2000);
        assert!(matches!(
            next_frame(&big, 0, 1104),
            Some(Err(XTMPError::PayloadTooLarge { .. }))
        ));
        assert!(next_frame(&[], 0, 1104).is_none());
        assert!(next_frame(&big, 5000, 1104).is_none());
    }

    #[test]
    fn pack_fills_datagrams_in_order() {
        let mut b = Vec::new();
        for i in 0..30 {
            b.extend(frame(i + 1, 100)); // 196 bytes each: 6 per 1200-byte datagram
        }
        let mut out = Vec::new();
        pack_datagrams(&b, 1200, &mut out).unwrap();
        assert_eq!(out.len(), 5);
        assert!(out.iter().all(|r| r.len() == 6 * 196));
        let mut pos = 0;
        for r in &out {
            assert_eq!(r.start, pos);
            pos = r.end;
        }
        let mut too_big = frame(1, 10);
        too_big.extend(frame(2, 1200));
        out.clear();
        assert!(pack_datagrams(&too_big, 1200, &mut out).is_err());
        assert_eq!(out, vec![0..106]);
    }

    #[test]
    fn fragments_round_trip_and_limits() {
        let msg: Vec<u8> = (0..3712u32).map(|i| i as u8).collect();
        let frags = fragment_handshake(&msg, Some(&[5; 16]), 77, 1200).unwrap();
        assert_eq!(frags.len(), 4);
        assert!(frags.iter().all(|f| f.len() <= 1200));
        let mut r: Reassembler<u32> = Reassembler::new(ReassemblyLimits::default());
        let t0 = Instant::now();
        // Out of order and duplicated.
        let mut got = None;
        for i in [3usize, 1, 1, 0, 2] {
            let f = parse_fragment(&frags[i]).unwrap();
            assert!(f.has_cookie());
            assert_eq!(f.message_id, 77);
            if let Some(m) = r.handle(t0, 1, &f).unwrap() {
                got = Some(m);
            }
        }
        assert_eq!(got.unwrap(), msg);
        assert!(r.is_empty());
        // Per-peer limit: the oldest reassembly is evicted.
        for id in 0..10u64 {
            let fr = fragment_handshake(&msg, None, id, 1200).unwrap();
            r.handle(t0, 2, &parse_fragment(&fr[0]).unwrap()).unwrap();
        }
        assert_eq!(r.len(), 4);
        // Global limit.
        for peer in 100..500u32 {
            let fr = fragment_handshake(&msg, None, 1, 1200).unwrap();
            r.handle(t0, peer, &parse_fragment(&fr[0]).unwrap())
                .unwrap();
        }
        assert_eq!(r.len(), 256);
        // Timeout.
        r.handle_timeout(t0 + Duration::from_secs(6));
        assert!(r.is_empty());
        // Too large, bad header.
        assert!(fragment_handshake(&vec![0; 5000], None, 1, 1200).is_err());
        let mut bad = frags[0].clone();
        bad[8] = 1; // session id
        assert!(parse_fragment(&bad).is_err());
    }

    #[test]
    fn frame_fragments_round_trip() {
        let f = frame(3, 1220); // a KeyUpdate-sized frame
        let parts = fragment_frame(&f, 5, 1200).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= 1200));
        let mut r: Reassembler<()> = Reassembler::new(ReassemblyLimits::default());
        let t0 = Instant::now();
        let (sid, a) = parse_frame_fragment(&parts[1]).unwrap();
        assert_eq!(sid, 9);
        assert_eq!(r.handle(t0, (), &a), Ok(None));
        let (_, b) = parse_frame_fragment(&parts[0]).unwrap();
        assert_eq!(r.handle(t0, (), &b).unwrap().unwrap(), f);
        assert!(parse_fragment(&parts[0]).is_err());
        assert!(parse_frame_fragment(&fragment_handshake(&f, None, 1, 1200).unwrap()[0]).is_err());
    }

    #[test]
    fn overlapping_fragments_are_rejected() {
        let mut r: Reassembler<u8> = Reassembler::new(ReassemblyLimits::default());
        let t0 = Instant::now();
        let f = |off: u16, len: usize| Fragment {
            cookie: [0; 16],
            message_id: 1,
            total_len: 100,
            offset: off,
            data: &[1; 100][..len],
        };
        assert_eq!(r.handle(t0, 0, &f(0, 50)), Ok(None));
        assert_eq!(r.handle(t0, 0, &f(40, 20)), Err(FragmentRejected::Overlap));
        let mut g = f(50, 50);
        g.total_len = 120;
        assert_eq!(r.handle(t0, 0, &g), Err(FragmentRejected::LengthMismatch));
        assert_eq!(r.handle(t0, 0, &f(50, 50)).unwrap().unwrap().len(), 100);
    }

    #[test]
    fn reliable_sender_retransmits_and_expires() {
        let t0 = Instant::now();
        let mut s: ReliableSender<&str> = ReliableSender::new(RetransmitConfig::default());
        let a = s.reserve_id().unwrap();
        let b = s.reserve_id().unwrap();
        s.on_sent(t0, a, "a", t0 + Duration::from_secs(3));
        s.on_sent(t0, b, "b", t0 + Duration::from_secs(1));
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        let (mut re, mut ex) = (Vec::new(), Vec::new());
        s.due(t0 + Duration::from_millis(499), &mut re, &mut ex);
        assert!(re.is_empty());
        s.due(t0 + Duration::from_millis(500), &mut re, &mut ex);
        assert_eq!(re, vec![a, b]);
        for id in re.drain(..) {
            s.on_retransmitted(t0 + Duration::from_millis(500), id);
        }
        // Backoff doubles: next at 500 + 1000.
        s.due(t0 + Duration::from_millis(1000), &mut re, &mut ex);
        assert!(re.is_empty());
        assert_eq!(ex, vec![(b, "b")]);
        // Karn: no sample from a retransmitted message.
        assert_eq!(s.on_ack(t0 + Duration::from_millis(1200), a), Some("a"));
        assert!(s.rtt().smoothed().is_none());
        let c = s.reserve_id().unwrap();
        s.on_sent(t0, c, "c", t0 + Duration::from_secs(5));
        s.on_ack(t0 + Duration::from_millis(10), c);
        assert_eq!(s.rtt().smoothed(), Some(Duration::from_millis(10)));
        assert_eq!(s.rto(), Duration::from_millis(100)); // min_rto
        assert_eq!(s.stats().expired, 1);
    }

    #[test]
    fn reliable_span_is_bounded() {
        let t0 = Instant::now();
        let mut s: ReliableSender<()> = ReliableSender::new(RetransmitConfig::default());
        let first = s.reserve_id().unwrap();
        s.on_sent(t0, first, (), t0 + Duration::from_secs(9));
        for _ in 1..MAX_RELIABLE_SPAN {
            let id = s.reserve_id().unwrap();
            s.on_sent(t0, id, (), t0 + Duration::from_secs(9));
            s.on_ack(t0, id);
        }
        assert!(s.reserve_id().is_none());
        s.on_ack(t0, first);
        assert!(s.reserve_id().is_some());
    }

    #[test]
    fn receiver_delivers_once_and_acks_every_copy() {
        let mut r = ReliableReceiver::new();
        assert_eq!(r.check(5), Delivery::New);
        r.accept(5);
        assert_eq!(r.check(5), Delivery::Duplicate);
        r.duplicate(5);
        assert_eq!(r.check(0), Delivery::Duplicate);
        let p = r.take_ack_payload().unwrap();
        assert_eq!(
            decode_datagram_ack(&p).unwrap().collect::<Vec<_>>(),
            vec![5]
        );
        assert!(r.take_ack_payload().is_none());
        for id in 1..=300 {
            r.accept(id + 10);
        }
        let p = r.take_ack_payload().unwrap();
        assert_eq!(decode_datagram_ack(&p).unwrap().count(), MAX_ACK_IDS);
        assert!(decode_datagram_ack(&[0, 0]).is_err());
        assert!(decode_datagram_ack(&[0, 1, 1]).is_err());
    }

    #[test]
    fn path_attach_round_trip() {
        for m in [
            PathAttach::Request,
            PathAttach::Grant {
                token: [3; 16],
                port: 4433,
            },
            PathAttach::Bind { token: [4; 16] },
            PathAttach::Bound { token: [5; 16] },
        ] {
            assert_eq!(PathAttach::decode(&m.encode()).unwrap(), m);
        }
        assert!(PathAttach::decode(&[]).is_err());
        assert!(PathAttach::decode(&[3, 1]).is_err());
        assert!(PathAttach::decode(&[9]).is_err());
        assert_eq!(
            split_reliable(&[0, 0, 0, 0, 0, 0, 0, 3, 9]).unwrap(),
            (3, &[9][..])
        );
        assert!(split_reliable(&[0; 8]).is_err());
        assert!(split_reliable(&[1; 7]).is_err());
    }
}
