//! An established session: record protection, sequence numbers, replay protection,
//! key rotation, heartbeats and close (`PROTOCOL.md` §5–§7).
//!
//! Sans-IO: frames go in through [`Session::open`], frames the core itself wants to send
//! (key updates, heartbeat answers) come out of [`Session::poll_transmit`], and time
//! enters only as arguments ([`Session::poll_timeout`] / [`Session::handle_timeout`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use xtmp_crypto::kdf;
use xtmp_crypto::xwing::{
    XWingPublicKey, XWingSecretKey, CIPHERTEXT_LEN as CT_LEN, PUBLIC_KEY_LEN as PK_LEN,
};
use zeroize::Zeroizing;

use crate::compress;
use crate::control::DisconnectPayload;
use crate::error::{ErrorCode, XTMPError};
use crate::header::{
    parse_frame, EncryptionType, Header, MessageType, XTMPFlags, DEFAULT_MAX_STREAM_PAYLOAD,
    HEADER_LEN,
};
use crate::keys::{nonce, GenerationSecrets, Side, XTMPKeySet};
use crate::replay::ReplayWindow;
use crate::rng::SecureRandom;

/// How the receive side checks sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Ordered transports (TCP, WebSocket): exactly the next number.
    Ordered,
    /// Datagrams: a sliding window ([`crate::replay::WINDOW`] wide).
    Window,
}

/// Which path of a session a frame travels on (`PROTOCOL.md` §9.6). A session has one
/// primary path (the transport it was established on); a session established over a
/// stream transport may add a datagram path. The path is carried, authenticated, in byte
/// 13 of the `key_id`, and each path has its own replay check, so frames of one path can
/// neither be replayed on the other nor push the other's replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PathId {
    /// The transport the handshake ran on (`key_id` byte 13 = 0).
    Primary = 0,
    /// A datagram path added to a stream session (`key_id` byte 13 = 1).
    Datagram = 1,
}

impl PathId {
    /// The path a sealed frame was sealed for (from its cleartext `key_id`); `None` if the
    /// buffer is shorter than a header or the byte is not a known path.
    pub fn of_frame(frame: &[u8]) -> Option<PathId> {
        match frame.get(40 + 13)? {
            0 => Some(PathId::Primary),
            1 => Some(PathId::Datagram),
            _ => None,
        }
    }
}

fn path_key_id(base: &[u8; 16], path: PathId) -> [u8; 16] {
    let mut k = *base;
    k[13] = path as u8;
    k
}

/// Session settings. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Rotate keys after this long (default 300 s). The client uses the smaller of its
    /// own value and the server's.
    pub key_rotation_interval: Duration,
    /// How long a superseded receive key generation stays usable (default 5 s).
    pub key_overlap: Duration,
    /// Sequence-number check on receive.
    pub replay_mode: ReplayMode,
    /// Largest payload accepted or sent (default 16 MiB).
    pub max_payload: u32,
    /// Start a rotation after this many messages under one send key (default 2^24).
    pub soft_message_limit: u64,
    /// Refuse to send after this many messages under one key (default 2^30).
    pub hard_message_limit: u64,
    /// Start a rotation after this many payload bytes under one send key (default 2^34).
    pub soft_byte_limit: u64,
    /// Refuse to send after this many bytes under one key (default 2^38).
    pub hard_byte_limit: u64,
    /// In [`ReplayMode::Window`], close after this many authentication failures (default 2^20).
    pub integrity_limit: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            key_rotation_interval: Duration::from_secs(300),
            key_overlap: Duration::from_secs(5),
            replay_mode: ReplayMode::Ordered,
            max_payload: DEFAULT_MAX_STREAM_PAYLOAD,
            soft_message_limit: 1 << 24,
            hard_message_limit: 1 << 30,
            soft_byte_limit: 1 << 34,
            hard_byte_limit: 1 << 38,
            integrity_limit: 1 << 20,
        }
    }
}

/// Counters kept by a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames sealed.
    pub frames_sent: u64,
    /// Frames opened successfully.
    pub frames_received: u64,
    /// Bytes of frames sealed (header included).
    pub bytes_sent: u64,
    /// Bytes of frames opened (header included).
    pub bytes_received: u64,
    /// Frames rejected for failed authentication, wrong key id or nonce.
    pub auth_failures: u64,
    /// Frames rejected as replayed, too old or out of order.
    pub replays: u64,
    /// Frames rejected for any other reason.
    pub malformed: u64,
    /// Completed key rotations.
    pub key_updates: u64,
}

/// Something [`Session::open`] produced.
#[derive(Debug)]
pub enum Received<'a> {
    /// A message for the application (anything not handled by the core).
    Message {
        /// Its header (decoded, verified).
        header: Header,
        /// Its plaintext payload (decompressed when it was `COMPRESSED`).
        payload: Cow<'a, [u8]>,
    },
    /// A heartbeat ping; the pong is queued in [`Session::poll_transmit`].
    Ping,
    /// The answer to our ping, with the measured round-trip time.
    Pong {
        /// This sample.
        rtt: Duration,
    },
    /// A key rotation finished; both directions now use `generation`.
    KeyUpdated {
        /// The new key generation.
        generation: u32,
    },
    /// A control message the core handled with nothing for the application: a colliding
    /// key update that the client side wins, or a late/unsolicited pong.
    Handled,
    /// The peer closed the session.
    Disconnect(DisconnectPayload),
}

struct PreviousKeys {
    keys: XTMPKeySet,
    discard_at: Instant,
}

enum Rekey {
    Idle,
    /// We sent `KeyUpdate` and wait for the answer.
    Initiated {
        generation: u32,
        ephemeral: Box<XWingSecretKey>,
        request: Vec<u8>,
    },
}

const HB_PING: u8 = 0;
const HB_PONG: u8 = 1;
const KU_LEN: usize = 4 + PK_LEN;
const KUA_LEN: usize = 4 + CT_LEN;

/// RFC 6298 smoothed RTT estimator.
#[derive(Debug, Clone, Copy, Default)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    latest: Duration,
}

impl RttEstimator {
    /// Adds a sample.
    pub fn update(&mut self, sample: Duration) {
        self.latest = sample;
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
    }
    /// Smoothed RTT, if any sample was taken.
    pub fn smoothed(&self) -> Option<Duration> {
        self.srtt
    }
    /// RTT variation.
    pub fn variation(&self) -> Duration {
        self.rttvar
    }
    /// Retransmission timeout (SRTT + 4·RTTVAR, at least 200 ms, 1 s before any sample).
    pub fn rto(&self) -> Duration {
        match self.srtt {
            None => Duration::from_secs(1),
            Some(s) => (s + self.rttvar * 4).max(Duration::from_millis(200)),
        }
    }
    /// The most recent sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }
}

/// An established XTMP session (one per peer; the transport is the caller's).
pub struct Session {
    side: Side,
    session_id: u64,
    encryption_type: EncryptionType,
    config: SessionConfig,
    handshake_hash: [u8; 32],
    peer_key: Option<[u8; 32]>,
    send: XTMPKeySet,
    recv: XTMPKeySet,
    /// Boxed: present only during a rotation's overlap.
    recv_prev: Option<Box<PreviousKeys>>,
    rekey_secret: Zeroizing<[u8; 32]>,
    rekey: Rekey,
    rekey_wanted: bool,
    next_rotation: Instant,
    send_seq: u64,
    recv_next: u64,
    /// Allocated on first use (window mode only), so an ordered session does not
    /// carry 264 unused bytes.
    window: Option<Box<ReplayWindow>>,
    outgoing: VecDeque<Vec<u8>>,
    ping: Option<(u64, Instant)>,
    ping_counter: u64,
    rtt: RttEstimator,
    /// A datagram path was added ([`Session::enable_datagram_path`]).
    dgram_path: bool,
    /// Allocated on first use (a datagram path was added).
    dgram_window: Option<Box<ReplayWindow>>,
    dgram_ping: Option<(u64, Instant)>,
    dgram_rtt: RttEstimator,
    /// Window mode: the last `KeyUpdate` payload answered and the sealed `KeyUpdateAck`,
    /// re-sent unchanged if the same `KeyUpdate` arrives again (its answer was lost).
    last_key_update_answer: Option<(Vec<u8>, Vec<u8>)>,
    stats: SessionStats,
    closed: Option<XTMPError>,
    confirmed: bool,
    last_now: Instant,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("side", &self.side)
            .field("session_id", &format_args!("{:016x}", self.session_id))
            .field("encryption_type", &self.encryption_type)
            .field("key_generation", &self.send.key_generation)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A replay window allocated on first use (one small allocation per session and path).
fn lazy_window(slot: &mut Option<Box<ReplayWindow>>) -> &mut ReplayWindow {
    slot.get_or_insert_with(|| Box::new(ReplayWindow::new()))
}

/// When a side starts the next key update on its own (`PROTOCOL.md` §5.7): the client
/// after `interval × (1 − j)` with `j` in `[0, 0.1)` derived from the generation's rekey
/// secret, so sessions opened together (a reconnect storm, a load test) do not all rotate
/// in the same second; the server after `1.1 × interval`, so the client normally starts.
fn rotation_delay(side: Side, interval: Duration, rekey: &[u8; 32]) -> Duration {
    match side {
        Side::Client => {
            let h = kdf::sha256(&[b"xtmp v1 rotation jitter", rekey]);
            let j = u64::from(u16::from_be_bytes([h[0], h[1]]));
            // interval / 10 × j / 65536, in nanoseconds (u128: no overflow).
            let cut = interval.as_nanos() * u128::from(j) / (10 * 65_536);
            interval.saturating_sub(Duration::from_nanos(u64::try_from(cut).unwrap_or(0)))
        }
        Side::Server => interval + interval / 10,
    }
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        side: Side,
        session_id: u64,
        encryption_type: EncryptionType,
        secrets: &GenerationSecrets,
        handshake_hash: [u8; 32],
        config: SessionConfig,
        now: Instant,
        peer_key: Option<[u8; 32]>,
    ) -> Self {
        let expires = now + rotation_delay(side, config.key_rotation_interval, &secrets.rekey);
        let sd = side.send_direction();
        let rd = side.recv_direction();
        let send = XTMPKeySet::derive(
            secrets.for_direction(sd),
            sd,
            0,
            session_id,
            encryption_type,
            expires,
        );
        let recv = XTMPKeySet::derive(
            secrets.for_direction(rd),
            rd,
            0,
            session_id,
            encryption_type,
            expires,
        );
        Self {
            side,
            session_id,
            encryption_type,
            handshake_hash,
            peer_key,
            send,
            recv,
            recv_prev: None,
            rekey_secret: Zeroizing::new(*secrets.rekey),
            rekey: Rekey::Idle,
            rekey_wanted: false,
            next_rotation: expires,
            // Sequence number 0 belongs to the handshake; session frames start at 1.
            send_seq: 1,
            recv_next: 1,
            window: None,
            outgoing: VecDeque::new(),
            ping: None,
            ping_counter: 0,
            rtt: RttEstimator::default(),
            dgram_path: false,
            dgram_window: None,
            dgram_ping: None,
            dgram_rtt: RttEstimator::default(),
            last_key_update_answer: None,
            stats: SessionStats::default(),
            closed: None,
            // The client is confirmed by the server's ack; the server by the client's
            // first message under the new keys.
            confirmed: side == Side::Client,
            last_now: now,
            config,
        }
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }
    /// The session id assigned by the server.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }
    /// The negotiated record protection.
    pub fn encryption_type(&self) -> EncryptionType {
        self.encryption_type
    }
    /// The current send key generation.
    pub fn key_generation(&self) -> u32 {
        self.send.key_generation
    }
    /// The current receive key generation.
    pub fn recv_key_generation(&self) -> u32 {
        self.recv.key_generation
    }
    /// Whether a superseded receive generation is still held.
    pub fn has_previous_keys(&self) -> bool {
        self.recv_prev.is_some()
    }
    /// The final handshake hash (channel binding).
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }
    /// Server side: fingerprint of the client's static key (`pqIK`).
    pub fn peer_key(&self) -> Option<&[u8; 32]> {
        self.peer_key.as_ref()
    }
    /// Server side: whether the client proved it holds the keys (first message opened).
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }
    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }
    /// RTT estimator fed by heartbeats.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }
    /// Session settings.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }
    /// Changes how received sequence numbers are checked (e.g. when a datagram path is added).
    pub fn set_replay_mode(&mut self, mode: ReplayMode) {
        if mode == ReplayMode::Window && self.config.replay_mode == ReplayMode::Ordered {
            // Seed the window with everything below the next expected number.
            if let Some(last) = self.recv_next.checked_sub(1) {
                lazy_window(&mut self.window).mark(last);
            }
        }
        self.config.replay_mode = mode;
    }
    /// Adds a datagram path ([`PathId::Datagram`]) to this session (`PROTOCOL.md` §9.6):
    /// frames of that path are accepted with their own replay window, and, because the
    /// two paths share the sequence numbers, the primary path's ordered check accepts gaps
    /// (each number must still be greater than the last one accepted on that path).
    /// Superseded receive keys are then kept for the whole overlap on both paths.
    pub fn enable_datagram_path(&mut self) {
        self.dgram_path = true;
    }
    /// Whether [`Session::enable_datagram_path`] was called.
    pub fn has_datagram_path(&self) -> bool {
        self.dgram_path
    }
    /// RTT estimator of one path (heartbeats sent with [`Session::send_ping_on`]).
    pub fn rtt_on(&self, path: PathId) -> &RttEstimator {
        match path {
            PathId::Primary => &self.rtt,
            PathId::Datagram => &self.dgram_rtt,
        }
    }
    /// Whether a heartbeat ping on `path` awaits its pong.
    pub fn ping_outstanding_on(&self, path: PathId) -> bool {
        match path {
            PathId::Primary => self.ping.is_some(),
            PathId::Datagram => self.dgram_ping.is_some(),
        }
    }
    /// The send-side key set (read-only; for diagnostics and test vectors).
    pub fn send_keys(&self) -> &XTMPKeySet {
        &self.send
    }
    /// The receive-side key set (read-only).
    pub fn recv_keys(&self) -> &XTMPKeySet {
        &self.recv
    }
    /// Frees the AEAD contexts of this session's key sets (about 1.2 KB with the
    /// AES-GCM-based types), keeping the keys they are built from: the next frame sealed
    /// or opened builds its context again (about 1 µs). For a runtime holding many idle
    /// sessions. Returns whether anything was freed.
    pub fn release_idle_keys(&mut self) -> bool {
        let mut freed = self.send.release_aead();
        freed |= self.recv.release_aead();
        if let Some(p) = &mut self.recv_prev {
            freed |= p.keys.release_aead();
        }
        freed
    }
    /// Whether any AEAD context of this session is built (see
    /// [`Session::release_idle_keys`]).
    pub fn aead_resident(&self) -> bool {
        self.send.aead_ready()
            || self.recv.aead_ready()
            || self.recv_prev.as_ref().is_some_and(|p| p.keys.aead_ready())
    }
    /// The sequence number the next sealed frame will carry.
    pub fn next_send_sequence(&self) -> u64 {
        self.send_seq
    }
    /// Whether a key rotation is in progress (our `KeyUpdate` awaits its answer).
    pub fn key_update_in_progress(&self) -> bool {
        matches!(self.rekey, Rekey::Initiated { .. })
    }
    /// The secret the next key update is mixed with (`rekey_g` in `PROTOCOL.md` §5.1).
    /// Exposed only so test vectors can publish it: never log or store it.
    pub fn dangerous_rekey_secret_for_test_vectors(&self) -> &[u8; 32] {
        &self.rekey_secret
    }

    /// The sticky error once the session is closed.
    pub fn close_reason(&self) -> Option<&XTMPError> {
        self.closed.as_ref()
    }

    fn check_open(&self) -> Result<(), XTMPError> {
        match &self.closed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Seals one application message and appends the frame to `out`. With
    /// `XTMPFlags::COMPRESSED` in `flags`, the payload is LZ4-compressed when that makes it
    /// smaller (the flag is cleared otherwise). `ENCRYPTED` is set by the core.
    /// Returns the sequence number used.
    ///
    /// # Errors
    /// [`XTMPError::UnexpectedMessage`] for types the core owns (handshake, key update,
    /// retry), [`XTMPError::PayloadTooLarge`], [`XTMPError::KeyExhausted`] at the hard
    /// limit, or the sticky close error.
    pub fn seal(
        &mut self,
        message_type: MessageType,
        flags: XTMPFlags,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, XTMPError> {
        self.seal_on(PathId::Primary, message_type, flags, payload, out)
    }

    /// [`Session::seal`] for a given path (its `key_id` names the path).
    ///
    /// # Errors
    /// As [`Session::seal`]; [`XTMPError::InvalidMessage`] for [`PathId::Datagram`] on a
    /// session without a datagram path.
    pub fn seal_on(
        &mut self,
        path: PathId,
        message_type: MessageType,
        flags: XTMPFlags,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, XTMPError> {
        self.seal_on_prefixed(path, message_type, flags, &[], payload, out)
    }

    /// [`Session::seal_on`] of the payload `prefix ‖ body`, without first copying the two
    /// parts together (e.g. a stream id or correlation number in front of a pushed body).
    /// The frame is byte for byte the one `seal_on` makes of the concatenation.
    ///
    /// # Errors
    /// As [`Session::seal_on`].
    pub fn seal_on_prefixed(
        &mut self,
        path: PathId,
        message_type: MessageType,
        flags: XTMPFlags,
        prefix: &[u8],
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, XTMPError> {
        if path == PathId::Datagram && !self.dgram_path {
            return Err(XTMPError::InvalidMessage("no datagram path".into()));
        }
        if matches!(
            message_type,
            MessageType::Handshake
                | MessageType::HandshakeAck
                | MessageType::KeyUpdate
                | MessageType::KeyUpdateAck
                | MessageType::Retry
        ) {
            return Err(XTMPError::UnexpectedMessage(message_type));
        }
        if flags.contains(XTMPFlags::COMPRESSED) {
            let c = if prefix.is_empty() {
                compress::compress(body, self.config.max_payload)
            } else {
                compress::compress(&[prefix, body].concat(), self.config.max_payload)
            };
            if let Some(c) = c {
                return self.seal_raw(path, message_type, flags, &[], &c, out);
            }
        }
        self.seal_raw(
            path,
            message_type,
            flags - XTMPFlags::COMPRESSED,
            prefix,
            body,
            out,
        )
    }

    fn seal_raw(
        &mut self,
        path: PathId,
        message_type: MessageType,
        flags: XTMPFlags,
        prefix: &[u8],
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, XTMPError> {
        self.check_open()?;
        let payload_len = prefix.len().saturating_add(body.len());
        let len = u32::try_from(payload_len).map_err(|_| XTMPError::PayloadTooLarge {
            length: u32::MAX,
            max: self.config.max_payload,
        })?;
        if len > self.config.max_payload {
            return Err(XTMPError::PayloadTooLarge {
                length: len,
                max: self.config.max_payload,
            });
        }
        // Key-update and close messages may exceed the hard limit (by a handful of
        // frames, far inside the AEAD bounds) so that a rotation can always complete.
        let exempt = matches!(
            message_type,
            MessageType::KeyUpdate | MessageType::KeyUpdateAck | MessageType::Disconnect
        );
        if !exempt
            && (self.send.nonce_counter >= self.config.hard_message_limit
                || self.send.bytes >= self.config.hard_byte_limit)
        {
            return Err(XTMPError::KeyExhausted);
        }
        let seq = self.send_seq;
        let mut flags = flags & XTMPFlags::all();
        flags.set(
            XTMPFlags::ENCRYPTED,
            self.encryption_type != EncryptionType::None,
        );
        let header = Header {
            message_type,
            flags,
            session_id: self.session_id,
            sequence_number: seq,
            payload_length: len,
            checksum: 0,
            encryption_type: self.encryption_type,
            key_id: path_key_id(self.send.key_id(), path),
            nonce: nonce(
                self.encryption_type,
                self.send.direction(),
                self.send.key_generation,
                seq,
            ),
            auth_tag: [0; 16],
        };
        let start = out.len();
        out.reserve(HEADER_LEN + payload_len);
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(prefix);
        out.extend_from_slice(body);
        if let Err(e) = self.send.seal_frame(&mut out[start..]) {
            out.truncate(start);
            return Err(e);
        }
        self.send_seq += 1;
        self.send.nonce_counter += 1;
        self.send.bytes += u64::from(len);
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += (HEADER_LEN + payload_len) as u64;
        if self.send.nonce_counter >= self.config.soft_message_limit
            || self.send.bytes >= self.config.soft_byte_limit
        {
            self.rekey_wanted = true;
        }
        Ok(seq)
    }

    fn queue_control(&mut self, t: MessageType, payload: &[u8]) -> Result<(), XTMPError> {
        self.queue_control_on(PathId::Primary, t, payload)
    }

    fn queue_control_on(
        &mut self,
        path: PathId,
        t: MessageType,
        payload: &[u8],
    ) -> Result<(), XTMPError> {
        let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
        self.seal_raw(path, t, XTMPFlags::empty(), &[], payload, &mut f)?;
        self.outgoing.push_back(f);
        Ok(())
    }

    /// A frame the core wants sent (key update, heartbeat answer), in order.
    /// Call after [`Session::open`] and [`Session::handle_timeout`]. A frame goes out on
    /// the path [`PathId::of_frame`] names (a pong on the path its ping came in on;
    /// everything else on the primary path).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outgoing.pop_front()
    }

    /// Queues a heartbeat ping (RTT probe).
    ///
    /// # Errors
    /// The sticky close error.
    pub fn send_ping(&mut self, now: Instant) -> Result<(), XTMPError> {
        self.send_ping_on(now, PathId::Primary)
    }

    /// Queues a heartbeat ping on `path`; its pong feeds that path's RTT estimator
    /// ([`Session::rtt_on`]). A ping still outstanding on that path is forgotten.
    ///
    /// # Errors
    /// The sticky close error; [`XTMPError::InvalidMessage`] for a missing datagram path.
    pub fn send_ping_on(&mut self, now: Instant, path: PathId) -> Result<(), XTMPError> {
        if path == PathId::Datagram && !self.dgram_path {
            return Err(XTMPError::InvalidMessage("no datagram path".into()));
        }
        self.ping_counter += 1;
        let mut p = [0u8; 9];
        p[0] = HB_PING;
        p[1..].copy_from_slice(&self.ping_counter.to_be_bytes());
        self.queue_control_on(path, MessageType::Heartbeat, &p)?;
        match path {
            PathId::Primary => self.ping = Some((self.ping_counter, now)),
            PathId::Datagram => self.dgram_ping = Some((self.ping_counter, now)),
        }
        Ok(())
    }

    /// Seals a `Disconnect` into `out` and closes the session; every later call returns
    /// [`XTMPError::Closed`].
    ///
    /// # Errors
    /// The sticky close error if already closed.
    pub fn close(
        &mut self,
        code: ErrorCode,
        reason: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), XTMPError> {
        let p = DisconnectPayload {
            code,
            reason: reason.to_string(),
        }
        .encode();
        self.seal_raw(
            PathId::Primary,
            MessageType::Disconnect,
            XTMPFlags::empty(),
            &[],
            &p,
            out,
        )?;
        self.closed = Some(XTMPError::Closed);
        Ok(())
    }

    /// The next time [`Session::handle_timeout`] has work: key rotation or discarding a
    /// superseded key generation.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let mut t = match self.rekey {
            Rekey::Idle if self.rekey_wanted => Some(self.last_now),
            Rekey::Idle => Some(self.next_rotation),
            Rekey::Initiated { .. } => None,
        };
        if let Some(p) = &self.recv_prev {
            t = Some(t.map_or(p.discard_at, |x| x.min(p.discard_at)));
        }
        t
    }

    /// Runs what is due at `now`: starts a key rotation (queuing `KeyUpdate`) and
    /// zeroizes superseded receive keys past their overlap.
    ///
    /// # Errors
    /// The sticky close error, or [`XTMPError::KeyExhausted`].
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        rng: &mut dyn SecureRandom,
    ) -> Result<(), XTMPError> {
        self.check_open()?;
        self.last_now = self.last_now.max(now);
        if self.recv_prev.as_ref().is_some_and(|p| now >= p.discard_at) {
            self.recv_prev = None;
            // A repeated KeyUpdate would be sealed under the discarded keys: it can no
            // longer arrive, so its stored answer goes too.
            self.last_key_update_answer = None;
        }
        if matches!(self.rekey, Rekey::Idle) && (self.rekey_wanted || now >= self.next_rotation) {
            self.initiate_key_update(rng)?;
        }
        Ok(())
    }

    /// Starts a key rotation now: a fresh ephemeral X-Wing key goes to the peer in
    /// `KeyUpdate` (queued in [`Session::poll_transmit`]). No-op if one is in progress.
    ///
    /// # Errors
    /// The sticky close error, or [`XTMPError::KeyExhausted`].
    pub fn initiate_key_update(&mut self, rng: &mut dyn SecureRandom) -> Result<(), XTMPError> {
        self.check_open()?;
        if !matches!(self.rekey, Rekey::Idle) {
            return Ok(());
        }
        let generation = self
            .send
            .key_generation
            .checked_add(1)
            .ok_or(XTMPError::KeyExhausted)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill(&mut seed[..]);
        let eph = XWingSecretKey::from_seed(&seed);
        let mut p = Vec::with_capacity(KU_LEN);
        p.extend_from_slice(&generation.to_be_bytes());
        p.extend_from_slice(eph.public_key().as_bytes());
        self.queue_control(MessageType::KeyUpdate, &p)?;
        self.rekey = Rekey::Initiated {
            generation,
            ephemeral: Box::new(eph),
            request: p,
        };
        self.rekey_wanted = false;
        Ok(())
    }

    /// Datagram transports: seals the outstanding `KeyUpdate` again, under a new sequence
    /// number (same payload, so the same rekey transcript), because the first one or its
    /// answer may have been lost (`PROTOCOL.md` §9.7). A peer that already answered it
    /// re-sends its stored `KeyUpdateAck`. Returns `false` when no key update is
    /// outstanding.
    ///
    /// # Errors
    /// The sticky close error.
    pub fn requeue_key_update(&mut self) -> Result<bool, XTMPError> {
        let Rekey::Initiated { request, .. } = &self.rekey else {
            return Ok(false);
        };
        let p = request.clone();
        self.queue_control(MessageType::KeyUpdate, &p)?;
        Ok(true)
    }

    fn rekey_transcript(&self, request: &[u8], answer: &[u8]) -> [u8; 32] {
        kdf::sha256(&[
            b"xtmp v1 rekey transcript",
            &self.session_id.to_be_bytes(),
            request,
            answer,
        ])
    }

    /// Installs generation `secrets` for both directions.
    fn install(&mut self, now: Instant, secrets: &GenerationSecrets, generation: u32) {
        let expires =
            now + rotation_delay(self.side, self.config.key_rotation_interval, &secrets.rekey);
        let sd = self.side.send_direction();
        let rd = self.side.recv_direction();
        self.send = XTMPKeySet::derive(
            secrets.for_direction(sd),
            sd,
            generation,
            self.session_id,
            self.encryption_type,
            expires,
        );
        let new_recv = XTMPKeySet::derive(
            secrets.for_direction(rd),
            rd,
            generation,
            self.session_id,
            self.encryption_type,
            expires,
        );
        let old = core::mem::replace(&mut self.recv, new_recv);
        // Dropping the older `recv_prev` (if any) zeroizes it.
        self.recv_prev = Some(Box::new(PreviousKeys {
            keys: old,
            discard_at: now + self.config.key_overlap,
        }));
        self.rekey_secret = Zeroizing::new(*secrets.rekey);
        self.next_rotation = expires;
        self.rekey = Rekey::Idle;
        self.rekey_wanted = false;
        self.stats.key_updates += 1;
    }

    fn handle_key_update(
        &mut self,
        now: Instant,
        p: &[u8],
        rng: &mut dyn SecureRandom,
    ) -> Result<Received<'static>, XTMPError> {
        if p.len() != KU_LEN {
            return Err(XTMPError::MalformedPayload(MessageType::KeyUpdate));
        }
        if let Some((request, answer)) = &self.last_key_update_answer {
            if request[..] == p[..] {
                // The same KeyUpdate again: our answer was lost. Send it again unchanged
                // (sealed under the previous generation, which the peer still uses).
                let again = answer.clone();
                self.outgoing.push_back(again);
                return Ok(Received::Handled);
            }
        }
        let generation = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        if Some(generation) != self.send.key_generation.checked_add(1) {
            return Err(XTMPError::MalformedPayload(MessageType::KeyUpdate));
        }
        if matches!(self.rekey, Rekey::Initiated { .. }) {
            match self.side {
                // Collision: the client's rotation wins; the server's is dropped by the server.
                Side::Client => return Ok(Received::Handled),
                Side::Server => self.rekey = Rekey::Idle,
            }
        }
        let e_pk = XWingPublicKey::from_bytes(&p[4..])
            .map_err(|_| XTMPError::MalformedPayload(MessageType::KeyUpdate))?;
        let mut eseed = Zeroizing::new([0u8; 64]);
        rng.fill(&mut eseed[..]);
        let (ct, ss) = e_pk
            .encapsulate_derand(&eseed)
            .map_err(|_| XTMPError::MalformedPayload(MessageType::KeyUpdate))?;
        let mut answer = Vec::with_capacity(KUA_LEN);
        answer.extend_from_slice(&generation.to_be_bytes());
        answer.extend_from_slice(&ct);
        let th = self.rekey_transcript(p, &answer);
        let secrets = GenerationSecrets::next(&self.rekey_secret, ss.as_bytes(), &th);
        // The answer goes out under the current generation, then we switch.
        self.queue_control(MessageType::KeyUpdateAck, &answer)?;
        let keep_answer = self.config.replay_mode == ReplayMode::Window || self.dgram_path;
        let sealed_answer = self.outgoing.back().filter(|_| keep_answer).cloned();
        self.install(now, &secrets, generation);
        self.last_key_update_answer = sealed_answer.map(|a| (p.to_vec(), a));
        Ok(Received::KeyUpdated { generation })
    }

    fn handle_key_update_ack(
        &mut self,
        now: Instant,
        p: &[u8],
    ) -> Result<Received<'static>, XTMPError> {
        let Rekey::Initiated {
            generation,
            ephemeral,
            request,
        } = &self.rekey
        else {
            if p.len() == KUA_LEN && p[0..4] == self.send.key_generation.to_be_bytes() {
                // A repeated answer to the key update that already completed (datagram
                // transports re-send it when our KeyUpdate was repeated).
                return Ok(Received::Handled);
            }
            return Err(XTMPError::UnexpectedMessage(MessageType::KeyUpdateAck));
        };
        if p.len() != KUA_LEN || p[0..4] != generation.to_be_bytes() {
            return Err(XTMPError::MalformedPayload(MessageType::KeyUpdateAck));
        }
        let ss = ephemeral
            .decapsulate(&p[4..])
            .map_err(|_| XTMPError::MalformedPayload(MessageType::KeyUpdateAck))?;
        let generation = *generation;
        let th = self.rekey_transcript(request, p);
        let secrets = GenerationSecrets::next(&self.rekey_secret, ss.as_bytes(), &th);
        self.install(now, &secrets, generation);
        Ok(Received::KeyUpdated { generation })
    }
}

impl Session {
    /// Verifies, decrypts and processes one received frame, in place.
    ///
    /// `frame` must hold exactly one frame (a stream deframer or a datagram walker
    /// delimits it). The checks run in the order of `PROTOCOL.md` §5.6. A failure before
    /// authentication leaves the session unchanged except for the counters. A failure
    /// after it (bad compressed payload, malformed control payload, unexpected
    /// `KeyUpdateAck`) has consumed the frame's sequence number. Either way, on an ordered
    /// transport the caller should then close the connection: the stream can no longer
    /// be trusted.
    /// `rng` is used only to answer a peer's `KeyUpdate`.
    ///
    /// # Errors
    /// The specific [`XTMPError`] of the failed check, or the sticky close error.
    pub fn open<'a>(
        &mut self,
        now: Instant,
        frame: &'a mut [u8],
        rng: &mut dyn SecureRandom,
    ) -> Result<Received<'a>, XTMPError> {
        self.open_on(PathId::Primary, now, frame, rng)
    }

    /// [`Session::open`] for a frame that arrived on `path`: its `key_id` must name that
    /// path, and the path's own replay check applies.
    ///
    /// # Errors
    /// As [`Session::open`]; a frame sealed for the other path (or for a datagram path
    /// this session does not have) fails with [`XTMPError::UnknownKeyId`].
    pub fn open_on<'a>(
        &mut self,
        path: PathId,
        now: Instant,
        frame: &'a mut [u8],
        rng: &mut dyn SecureRandom,
    ) -> Result<Received<'a>, XTMPError> {
        self.check_open()?;
        self.last_now = self.last_now.max(now);
        let r = self.open_inner(path, now, frame, rng);
        if let Err(e) = &r {
            match e {
                XTMPError::AuthenticationFailed
                | XTMPError::UnknownKeyId
                | XTMPError::NonceMismatch => {
                    self.stats.auth_failures += 1;
                    if (self.config.replay_mode == ReplayMode::Window || self.dgram_path)
                        && self.stats.auth_failures >= self.config.integrity_limit
                    {
                        self.closed = Some(XTMPError::IntegrityLimit);
                        return Err(XTMPError::IntegrityLimit);
                    }
                }
                XTMPError::Replay(_) | XTMPError::TooOld(_) | XTMPError::OutOfOrder { .. } => {
                    self.stats.replays += 1
                }
                _ => self.stats.malformed += 1,
            }
        }
        r
    }

    fn open_inner<'a>(
        &mut self,
        path: PathId,
        now: Instant,
        frame: &'a mut [u8],
        rng: &mut dyn SecureRandom,
    ) -> Result<Received<'a>, XTMPError> {
        // 1–7: header checks and CRC-32.
        let (header, _) = parse_frame(frame, self.config.max_payload)?;
        // 8: session id.
        if header.session_id != self.session_id {
            return Err(XTMPError::WrongSession {
                got: header.session_id,
            });
        }
        // 9: type allowed inside a session.
        if matches!(
            header.message_type,
            MessageType::Handshake | MessageType::HandshakeAck | MessageType::Retry
        ) {
            return Err(XTMPError::UnexpectedMessage(header.message_type));
        }
        // 10: encryption type as negotiated.
        if header.encryption_type != self.encryption_type {
            return Err(XTMPError::EncryptionNotPermitted(header.encryption_type));
        }
        // 11: key id → current or previous generation, on this path.
        if path == PathId::Datagram && !self.dgram_path {
            return Err(XTMPError::UnknownKeyId);
        }
        let use_prev = if header.key_id == path_key_id(self.recv.key_id(), path) {
            false
        } else if self
            .recv_prev
            .as_ref()
            .is_some_and(|p| header.key_id == path_key_id(p.keys.key_id(), path))
        {
            true
        } else {
            return Err(XTMPError::UnknownKeyId);
        };
        let keys = match (&self.recv_prev, use_prev) {
            (Some(p), true) => &p.keys,
            _ => &self.recv,
        };
        // 12: nonce is the one the sequence number implies.
        let seq = header.sequence_number;
        let expect_nonce = nonce(
            self.encryption_type,
            keys.direction(),
            keys.key_generation,
            seq,
        );
        if header.nonce != expect_nonce {
            return Err(XTMPError::NonceMismatch);
        }
        // 13: replay check (cheap, before the AEAD). 0 is the handshake's number, and
        // u64::MAX is never sent (the window could not record it).
        if seq == 0 || seq == u64::MAX {
            return Err(XTMPError::Replay(seq));
        }
        match (path, self.config.replay_mode) {
            (PathId::Datagram, _) => lazy_window(&mut self.dgram_window).check(seq)?,
            (PathId::Primary, ReplayMode::Ordered) => {
                // With a datagram path the numbers are shared: gaps are expected, going
                // backwards is not.
                let ok = if self.dgram_path {
                    seq >= self.recv_next
                } else {
                    seq == self.recv_next
                };
                if !ok {
                    return Err(XTMPError::OutOfOrder {
                        expected: self.recv_next,
                        got: seq,
                    });
                }
            }
            (PathId::Primary, ReplayMode::Window) => lazy_window(&mut self.window).check(seq)?,
        }
        // 14: authenticate and decrypt.
        keys.open_frame(frame)?;
        // Accepted: only now does state change.
        match (path, self.config.replay_mode) {
            (PathId::Datagram, _) => lazy_window(&mut self.dgram_window).mark(seq),
            (PathId::Primary, ReplayMode::Ordered) => self.recv_next = seq.wrapping_add(1),
            (PathId::Primary, ReplayMode::Window) => lazy_window(&mut self.window).mark(seq),
        }
        self.confirmed = true;
        let frame_len = frame.len();
        self.stats.frames_received += 1;
        self.stats.bytes_received += frame_len as u64;
        if use_prev {
            if let Some(p) = self.recv_prev.as_mut() {
                p.keys.nonce_counter += 1;
            }
        } else {
            self.recv.nonce_counter += 1;
            self.recv.bytes += u64::from(header.payload_length);
            // On an ordered transport nothing older can follow a frame of the new
            // generation: drop (and zeroize) the previous one now.
            if self.config.replay_mode == ReplayMode::Ordered && !self.dgram_path {
                self.recv_prev = None;
            }
        }
        let payload: &'a [u8] = &frame[HEADER_LEN..];
        // 15: decompression (bounded).
        let payload: Cow<'a, [u8]> = if header.flags.contains(XTMPFlags::COMPRESSED) {
            Cow::Owned(compress::decompress(payload, self.config.max_payload)?)
        } else {
            Cow::Borrowed(payload)
        };
        // 16: control messages the core handles itself.
        match header.message_type {
            MessageType::Heartbeat => {
                if payload.len() != 9 {
                    return Err(XTMPError::MalformedPayload(MessageType::Heartbeat));
                }
                match payload[0] {
                    HB_PING => {
                        let mut p = [0u8; 9];
                        p.copy_from_slice(&payload);
                        p[0] = HB_PONG;
                        // The pong goes back on the path the ping came in on.
                        self.queue_control_on(path, MessageType::Heartbeat, &p)?;
                        Ok(Received::Ping)
                    }
                    HB_PONG => {
                        let id = u64::from_be_bytes(arr8(&payload[1..9]));
                        let (ping, rtt_est) = match path {
                            PathId::Primary => (&mut self.ping, &mut self.rtt),
                            PathId::Datagram => (&mut self.dgram_ping, &mut self.dgram_rtt),
                        };
                        match *ping {
                            Some((pid, sent)) if pid == id => {
                                *ping = None;
                                let rtt = now.saturating_duration_since(sent);
                                rtt_est.update(rtt);
                                Ok(Received::Pong { rtt })
                            }
                            // A late or unsolicited pong carries no sample.
                            _ => Ok(Received::Handled),
                        }
                    }
                    _ => Err(XTMPError::MalformedPayload(MessageType::Heartbeat)),
                }
            }
            MessageType::KeyUpdate => self.handle_key_update(now, &payload, rng),
            MessageType::KeyUpdateAck => self.handle_key_update_ack(now, &payload),
            MessageType::Disconnect => {
                let d = DisconnectPayload::decode(&payload)?;
                self.closed = Some(XTMPError::Closed);
                Ok(Received::Disconnect(d))
            }
            _ => Ok(Received::Message { header, payload }),
        }
    }
}

fn arr8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}
