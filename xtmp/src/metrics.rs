//! Quality metrics per session and server-wide counters, plus the serializable snapshots
//! the admin endpoint and the CLI print ([`ServerStatus`], [`SessionMetrics`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use xtmp_proto::ErrorCode;

/// The seed's per-session link quality.
///
/// * `latency_ms`: smoothed round-trip time (RFC 6298 SRTT), 0 before the first sample:
///   of the datagram path (acknowledgements, probes) on `UdpFast` and hybrid sessions, else
///   of the heartbeats.
/// * `packet_loss`: fraction of heartbeat pings that went unanswered before the next one;
///   on `UdpFast` and hybrid sessions at least the datagram path's smoothed loss estimate
///   (sequence gaps, retransmissions, unanswered probes; `PROTOCOL.md` §9.9).
/// * `throughput_mbps`: bytes in both directions per second over the last heartbeat
///   period, smoothed, in megabits per second.
/// * `error_rate`: `Error` replies sent per application message received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct XTMPQualityMetrics {
    /// Smoothed heartbeat RTT in milliseconds.
    pub latency_ms: f64,
    /// Fraction of heartbeats lost, 0.0 ..= 1.0.
    pub packet_loss: f64,
    /// Smoothed throughput in Mbit/s.
    pub throughput_mbps: f64,
    /// Errors per received message, 0.0 ..= 1.0 (can exceed 1 only with error floods).
    pub error_rate: f64,
}

/// Keeps the inputs of [`XTMPQualityMetrics`] between heartbeats.
#[derive(Debug, Clone)]
pub(crate) struct QualityTracker {
    pings_sent: u64,
    pings_lost: u64,
    ping_outstanding: bool,
    last_tick: Instant,
    last_bytes: u64,
    throughput_mbps: f64,
}

impl QualityTracker {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            pings_sent: 0,
            pings_lost: 0,
            ping_outstanding: false,
            last_tick: now,
            last_bytes: 0,
            throughput_mbps: 0.0,
        }
    }

    /// A ping is about to be sent; `total_bytes` is sent + received so far.
    pub(crate) fn on_ping(&mut self, now: Instant, total_bytes: u64) {
        if self.ping_outstanding {
            self.pings_lost += 1;
        }
        self.pings_sent += 1;
        self.ping_outstanding = true;
        self.sample_throughput(now, total_bytes);
    }

    /// A throughput sample (heartbeats, and the datagram path's probe interval, so UDP and
    /// hybrid sessions report it live); `total_bytes` is sent + received so far.
    pub(crate) fn sample_throughput(&mut self, now: Instant, total_bytes: u64) {
        let dt = now.saturating_duration_since(self.last_tick).as_secs_f64();
        if dt > 0.0 {
            let bytes = total_bytes.saturating_sub(self.last_bytes) as f64;
            let sample = bytes * 8.0 / dt / 1e6;
            self.throughput_mbps = if self.throughput_mbps == 0.0 {
                sample
            } else {
                0.7 * self.throughput_mbps + 0.3 * sample
            };
        }
        self.last_tick = now;
        self.last_bytes = total_bytes;
    }

    pub(crate) fn on_pong(&mut self) {
        self.ping_outstanding = false;
    }

    /// Whether the last ping is still unanswered.
    pub(crate) fn ping_outstanding(&self) -> bool {
        self.ping_outstanding
    }

    pub(crate) fn snapshot(
        &self,
        srtt: Option<Duration>,
        errors_sent: u64,
        messages_received: u64,
    ) -> XTMPQualityMetrics {
        let answered_or_lost = self.pings_sent - u64::from(self.ping_outstanding);
        XTMPQualityMetrics {
            latency_ms: srtt.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            packet_loss: if answered_or_lost == 0 {
                0.0
            } else {
                self.pings_lost as f64 / answered_or_lost as f64
            },
            throughput_mbps: self.throughput_mbps,
            error_rate: if messages_received == 0 {
                0.0
            } else {
                errors_sent as f64 / messages_received as f64
            },
        }
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerInfo {
    /// Transport kind: `"tcp"`, `"udp"`, `"websocket"` or `"websocket-tls"`.
    pub kind: String,
    /// The bound address; for a WebSocket listener the URL clients use
    /// (`ws://127.0.0.1:8082/xtmp`, `wss://...`).
    pub address: String,
}

/// Server-wide status (the `/status` document and `xtmp server status`).
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// Seconds since the server was bound.
    pub uptime_secs: f64,
    /// Established sessions.
    pub sessions_active: u64,
    /// Open connections (handshaking or established).
    pub connections_active: u64,
    /// Open connections per [`crate::ConnectionType`] name.
    pub connections_by_type: BTreeMap<String, u64>,
    /// Handshakes completed since start.
    pub handshakes_completed: u64,
    /// Handshakes that failed (bad message, timeout, unauthorized, rate limited).
    pub handshakes_failed: u64,
    /// `Retry` (cookie) answers sent.
    pub retries_sent: u64,
    /// Connections refused at `max_connections` (each got a `SERVER_BUSY` error).
    pub connections_refused: u64,
    /// `Error` messages sent (plain and in sessions).
    pub errors_sent: u64,
    /// `Error` messages sent per code name.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Bytes read from all connections.
    pub bytes_received: u64,
    /// Bytes written to all connections.
    pub bytes_sent: u64,
    /// Application messages received.
    pub messages_received: u64,
    /// Application messages sent (responses, acks, errors, pushes).
    pub messages_sent: u64,
    /// Completed key rotations over all sessions.
    pub key_rotations: u64,
    /// Streaming messages dropped by a drop-oldest overflow policy.
    pub stream_messages_dropped: u64,
    /// Whether a graceful shutdown is in progress.
    pub shutting_down: bool,
    /// Listeners.
    pub listeners: Vec<ListenerInfo>,
    /// The UDP listener's counters (when there is one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpStatus>,
}

/// Counters of the UDP listener (`ServerStatus::udp`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UdpStatus {
    /// Datagrams received (GRO trains counted per datagram).
    pub datagrams_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Send system calls (one carries many datagrams with segmentation offload).
    pub send_calls: u64,
    /// Datagrams dropped before reaching a session: unparsable, not a handshake fragment,
    /// or a fragment rejected by reassembly.
    pub datagrams_dropped: u64,
    /// Datagrams naming no live session (dropped, never answered).
    pub unknown_session: u64,
    /// Handshake fragments received.
    pub handshake_fragments: u64,
    /// Handshake reassemblies in progress.
    pub reassemblies_pending: u64,
    /// Handshake reassemblies dropped (timed out, evicted, broken).
    pub reassemblies_dropped: u64,
}

/// One session's metrics (`/sessions/{id}` and `xtmp server metrics --session-id`).
#[derive(Debug, Clone, Serialize)]
pub struct SessionMetrics {
    /// Session id.
    pub session_id: u64,
    /// Session id as 16 hex digits (ids above 2^53 do not survive JSON numbers in every tool).
    pub session_id_hex: String,
    /// The client's address.
    pub peer_address: String,
    /// [`crate::ConnectionType`] name.
    pub connection_type: String,
    /// Seconds since the handshake completed.
    pub established_secs: f64,
    /// Seconds since the last application message in either direction.
    pub idle_secs: f64,
    /// Current send key generation (0 before the first rotation).
    pub key_generation: u32,
    /// Negotiated record protection (`"PostQuantum"`, ...).
    pub encryption_type: String,
    /// Link quality.
    pub quality: XTMPQualityMetrics,
    /// Frames sealed by this session.
    pub frames_sent: u64,
    /// Frames opened by this session.
    pub frames_received: u64,
    /// Bytes of sealed frames.
    pub bytes_sent: u64,
    /// Bytes of opened frames.
    pub bytes_received: u64,
    /// Frames rejected for failed authentication.
    pub auth_failures: u64,
    /// Frames rejected as replays.
    pub replays: u64,
    /// Application messages received.
    pub messages_received: u64,
    /// Application messages sent.
    pub messages_sent: u64,
    /// `Error` messages sent.
    pub errors_sent: u64,
    /// Streaming messages dropped by drop-oldest overflow.
    pub stream_dropped: u64,
    /// Requests whose handler is still running.
    pub requests_in_flight: u64,
    /// Whether the session's AEAD contexts are in memory: a session without application
    /// messages for a second frees them (keeping only its keys) and rebuilds them for its
    /// next frame.
    pub aead_contexts_resident: bool,
    /// SHA-256 fingerprint of the client's static key (hex), for `pqIK` sessions.
    pub client_key: Option<String>,
    /// The datagram path (`UdpFast` sessions, and the UDP path of `TcpUdpHybrid` ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datagram: Option<crate::udp::DatagramPathMetrics>,
}

/// Server-wide counters, updated lock-free on the hot path.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    pub connections_active: AtomicU64,
    pub handshakes_in_progress: AtomicU64,
    pub handshakes_completed: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub retries_sent: AtomicU64,
    pub connections_refused: AtomicU64,
    pub errors_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub key_rotations: AtomicU64,
    pub stream_dropped: AtomicU64,
    errors_by_code: Mutex<BTreeMap<u16, u64>>,
}

impl ServerCounters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(crate) fn error_sent(&self, code: ErrorCode) {
        Self::add(&self.errors_sent, 1);
        if let Ok(mut m) = self.errors_by_code.lock() {
            *m.entry(code.0).or_insert(0) += 1;
        }
    }

    pub(crate) fn errors_by_code(&self) -> BTreeMap<String, u64> {
        let m = match self.errors_by_code.lock() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        };
        m.into_iter()
            .map(|(c, n)| (code_name(ErrorCode(c)), n))
            .collect()
    }
}

/// The registered name of an error code, or `0x....` for an unregistered one.
pub fn code_name(code: ErrorCode) -> String {
    match code.name() {
        Some(n) => n.to_string(),
        None => format!("0x{:04x}", code.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_tracker_counts_loss_and_throughput() {
        let t0 = Instant::now();
        let mut q = QualityTracker::new(t0);
        q.on_ping(t0 + Duration::from_secs(1), 125_000);
        let s = q.snapshot(None, 0, 0);
        assert!((s.throughput_mbps - 1.0).abs() < 1e-9);
        assert_eq!(s.packet_loss, 0.0);
        q.on_ping(t0 + Duration::from_secs(2), 125_000); // previous unanswered
        q.on_pong();
        let s = q.snapshot(Some(Duration::from_millis(3)), 1, 4);
        assert!((s.packet_loss - 0.5).abs() < 1e-9);
        assert!((s.latency_ms - 3.0).abs() < 1e-9);
        assert!((s.error_rate - 0.25).abs() < 1e-9);
    }
}
