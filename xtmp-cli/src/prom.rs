//! Prometheus text exposition format, version 0.0.4, for the admin endpoint's `/metrics`.
//!
//! Every family gets `# HELP` and `# TYPE`; counters end in `_total`; units are base units
//! (`_seconds`, `_bytes`) as `promtool check metrics` expects.

use std::fmt::Write;

use xtmp::{ServerStatus, SessionMetrics};

/// Metric family type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter (name ends in `_total`).
    Counter,
    /// Value that can go up and down.
    Gauge,
}

/// Accumulates an exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// Writes one family with its samples (each a label set and a value).
    pub fn family(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: &[(Vec<(&str, String)>, f64)],
    ) {
        debug_assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(
            self.out,
            "# TYPE {name} {}",
            match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            }
        );
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {}", format_value(*value));
        }
    }

    /// One unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help, &[(Vec::new(), value)]);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The `/metrics` document for a server.
pub fn render(status: &ServerStatus, sessions: &[SessionMetrics]) -> String {
    use Kind::{Counter, Gauge};
    let mut e = Exposition::default();
    e.family(
        "xtmp_build_info",
        Gauge,
        "Build information of the running xtmp server (always 1).",
        &[(
            vec![("version", env!("CARGO_PKG_VERSION").to_string())],
            1.0,
        )],
    );
    e.single(
        "xtmp_uptime_seconds",
        Gauge,
        "Seconds since the server started.",
        status.uptime_secs,
    );
    e.single(
        "xtmp_sessions_active",
        Gauge,
        "Established sessions.",
        status.sessions_active as f64,
    );
    e.single(
        "xtmp_connections_active",
        Gauge,
        "Open connections (handshaking or established).",
        status.connections_active as f64,
    );
    let by_type: Vec<_> = status
        .connections_by_type
        .iter()
        .map(|(k, v)| (vec![("type", k.clone())], *v as f64))
        .collect();
    e.family(
        "xtmp_connections_by_type",
        Gauge,
        "Open connections per connection type.",
        &by_type,
    );
    for (name, help, v) in [
        (
            "xtmp_handshakes_completed_total",
            "Handshakes completed.",
            status.handshakes_completed,
        ),
        (
            "xtmp_handshakes_failed_total",
            "Handshakes that failed (bad message, timeout, unauthorized, rate limited).",
            status.handshakes_failed,
        ),
        (
            "xtmp_retries_sent_total",
            "Retry (address validation cookie) answers sent.",
            status.retries_sent,
        ),
        (
            "xtmp_connections_refused_total",
            "Connections refused at max_connections.",
            status.connections_refused,
        ),
        (
            "xtmp_errors_sent_total",
            "Error messages sent.",
            status.errors_sent,
        ),
        (
            "xtmp_received_bytes_total",
            "Bytes read from all connections.",
            status.bytes_received,
        ),
        (
            "xtmp_sent_bytes_total",
            "Bytes written to all connections.",
            status.bytes_sent,
        ),
        (
            "xtmp_messages_received_total",
            "Application messages received.",
            status.messages_received,
        ),
        (
            "xtmp_messages_sent_total",
            "Application messages sent (responses, acks, errors, pushes).",
            status.messages_sent,
        ),
        (
            "xtmp_key_rotations_total",
            "Completed session key rotations.",
            status.key_rotations,
        ),
        (
            "xtmp_stream_messages_dropped_total",
            "Streaming messages dropped by a drop-oldest overflow policy.",
            status.stream_messages_dropped,
        ),
    ] {
        e.single(name, Counter, help, v as f64);
    }
    let by_code: Vec<_> = status
        .errors_by_code
        .iter()
        .map(|(k, v)| (vec![("code", k.clone())], *v as f64))
        .collect();
    e.family(
        "xtmp_errors_sent_by_code_total",
        Counter,
        "Error messages sent, per error code.",
        &by_code,
    );
    e.single(
        "xtmp_shutting_down",
        Gauge,
        "1 while a graceful shutdown is in progress.",
        if status.shutting_down { 1.0 } else { 0.0 },
    );
    let listeners: Vec<_> = status
        .listeners
        .iter()
        .map(|l| {
            (
                vec![("kind", l.kind.clone()), ("address", l.address.clone())],
                1.0,
            )
        })
        .collect();
    e.family(
        "xtmp_listener_info",
        Gauge,
        "Listening sockets (always 1).",
        &listeners,
    );

    // Aggregates over the live sessions (per-session series would grow without bound).
    let n = sessions.len() as f64;
    let max_latency = sessions
        .iter()
        .map(|s| s.quality.latency_ms)
        .fold(0.0, f64::max);
    let mean_latency = if sessions.is_empty() {
        0.0
    } else {
        sessions.iter().map(|s| s.quality.latency_ms).sum::<f64>() / n
    };
    e.single(
        "xtmp_session_latency_max_seconds",
        Gauge,
        "Largest smoothed heartbeat round-trip time over live sessions.",
        max_latency / 1000.0,
    );
    e.single(
        "xtmp_session_latency_mean_seconds",
        Gauge,
        "Mean smoothed heartbeat round-trip time over live sessions.",
        mean_latency / 1000.0,
    );
    // Link quality the hybrid switch also uses.
    let loss = |s: &SessionMetrics| s.quality.packet_loss;
    e.single(
        "xtmp_session_packet_loss_max",
        Gauge,
        "Largest estimated packet loss (0..1) over live sessions.",
        sessions.iter().map(loss).fold(0.0, f64::max),
    );
    e.single(
        "xtmp_session_packet_loss_mean",
        Gauge,
        "Mean estimated packet loss (0..1) over live sessions.",
        if sessions.is_empty() {
            0.0
        } else {
            sessions.iter().map(loss).sum::<f64>() / n
        },
    );
    let dg = |f: fn(&xtmp::DatagramPathMetrics) -> u64| -> f64 {
        sessions
            .iter()
            .filter_map(|s| s.datagram.as_ref())
            .map(|d| f(d) as f64)
            .sum()
    };
    e.single(
        "xtmp_session_datagram_retransmissions",
        Gauge,
        "Retransmissions of RELIABLE messages, summed over live UDP and hybrid sessions.",
        dg(|d| d.retransmissions),
    );
    e.single(
        "xtmp_session_datagram_paths_down",
        Gauge,
        "Hybrid sessions whose UDP path is down (their traffic runs over TCP).",
        sessions
            .iter()
            .filter(|s| s.datagram.as_ref().is_some_and(|d| d.state == "down"))
            .count() as f64,
    );
    if let Some(u) = &status.udp {
        for (name, help, v) in [
            ("xtmp_udp_datagrams_received_total", "Datagrams received by the UDP listener.", u.datagrams_received),
            ("xtmp_udp_datagrams_sent_total", "Datagrams sent by the UDP listener.", u.datagrams_sent),
            ("xtmp_udp_send_calls_total", "Send system calls of the UDP listener (GSO batches many datagrams per call).", u.send_calls),
            ("xtmp_udp_datagrams_dropped_total", "Datagrams dropped before reaching a session (unparsable, bad handshake fragments).", u.datagrams_dropped),
            ("xtmp_udp_unknown_session_total", "Datagrams naming no live session.", u.unknown_session),
        ] {
            e.single(name, Counter, help, v as f64);
        }
    }
    e.single(
        "xtmp_session_requests_in_flight",
        Gauge,
        "Requests whose handler is still running, over live sessions.",
        sessions.iter().map(|s| s.requests_in_flight as f64).sum(),
    );
    let mut gens: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for s in sessions {
        *gens.entry(s.key_generation).or_insert(0) += 1;
    }
    let gens: Vec<_> = gens
        .into_iter()
        .map(|(g, c)| (vec![("generation", g.to_string())], c as f64))
        .collect();
    e.family(
        "xtmp_sessions_by_key_generation",
        Gauge,
        "Live sessions per current send key generation.",
        &gens,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_values() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        let mut e = Exposition::default();
        e.family(
            "x_total",
            Kind::Counter,
            "help\nline",
            &[(vec![("code", "A\"B".into())], 2.0)],
        );
        let t = e.finish();
        assert_eq!(
            t,
            "# HELP x_total help\\nline\n# TYPE x_total counter\nx_total{code=\"A\\\"B\"} 2\n"
        );
    }
}
