//! Human-readable tables for `xtmp server status` and `xtmp server metrics`.
//!
//! They work on the JSON documents the admin endpoint serves, so the CLI can talk to a
//! server of another build: known fields are shown in a fixed order with units, and any
//! field this build does not know is listed after them as it is.

use std::fmt::Write;

use serde_json::{Map, Value};

/// `1536` → `"1.5 KiB (1536)"`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({n})")
}

/// `3723.4` → `"1h 2m 3s"`.
pub fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return format!("{s}");
    }
    if s < 10.0 {
        return format!("{s:.2}s");
    }
    let t = s as u64;
    let (d, h, m, sec) = (t / 86_400, t / 3600 % 24, t / 60 % 60, t % 60);
    let mut out = String::new();
    if d > 0 {
        let _ = write!(out, "{d}d ");
    }
    if d > 0 || h > 0 {
        let _ = write!(out, "{h}h ");
    }
    if d > 0 || h > 0 || m > 0 {
        let _ = write!(out, "{m}m ");
    }
    let _ = write!(out, "{sec}s");
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn u(m: &Map<String, Value>, k: &str) -> Option<u64> {
    m.get(k).and_then(Value::as_u64)
}

fn f(m: &Map<String, Value>, k: &str) -> Option<f64> {
    m.get(k).and_then(Value::as_f64)
}

struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    fn new() -> Self {
        Self { rows: Vec::new() }
    }
    fn row(&mut self, k: impl Into<String>, v: impl Into<String>) {
        self.rows.push((k.into(), v.into()));
    }
    fn render(&self) -> String {
        let w = self
            .rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut s = String::new();
        for (k, v) in &self.rows {
            let _ = writeln!(s, "{k:<w$}  {v}");
        }
        s
    }
}

/// Renders `/status`.
pub fn status(v: &Value) -> String {
    let Some(m) = v.as_object() else {
        return format!("{v}\n");
    };
    let mut t = Table::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut mark = |k: &'static str| seen.push(k);

    if let Some(ls) = m.get("listeners").and_then(Value::as_array) {
        mark("listeners");
        let text: Vec<String> = ls
            .iter()
            .map(|l| {
                format!(
                    "{} {}",
                    l.get("kind").map(scalar).unwrap_or_default(),
                    l.get("address").map(scalar).unwrap_or_default()
                )
            })
            .collect();
        t.row("listening on", text.join(", "));
    }
    if let Some(x) = f(m, "uptime_secs") {
        mark("uptime_secs");
        t.row("uptime", secs(x));
    }
    if let Some(x) = m.get("shutting_down").and_then(Value::as_bool) {
        mark("shutting_down");
        t.row("state", if x { "shutting down" } else { "running" });
    }
    for (k, label) in [
        ("sessions_active", "sessions active"),
        ("connections_active", "connections active"),
    ] {
        if let Some(x) = u(m, k) {
            seen.push(k);
            t.row(label, x.to_string());
        }
    }
    if let Some(by) = m.get("connections_by_type").and_then(Value::as_object) {
        seen.push("connections_by_type");
        for (k, x) in by {
            t.row(format!("  {k}"), scalar(x));
        }
    }
    for (k, label) in [
        ("handshakes_completed", "handshakes completed"),
        ("handshakes_failed", "handshakes failed"),
        ("retries_sent", "retries sent"),
        ("connections_refused", "connections refused"),
        ("errors_sent", "errors sent"),
    ] {
        if let Some(x) = u(m, k) {
            seen.push(k);
            t.row(label, x.to_string());
        }
    }
    if let Some(by) = m.get("errors_by_code").and_then(Value::as_object) {
        seen.push("errors_by_code");
        for (k, x) in by {
            t.row(format!("  {k}"), scalar(x));
        }
    }
    for (k, label) in [
        ("bytes_received", "bytes received"),
        ("bytes_sent", "bytes sent"),
    ] {
        if let Some(x) = u(m, k) {
            seen.push(k);
            t.row(label, bytes(x));
        }
    }
    for (k, label) in [
        ("messages_received", "messages received"),
        ("messages_sent", "messages sent"),
        ("key_rotations", "key rotations"),
        ("stream_messages_dropped", "stream messages dropped"),
    ] {
        if let Some(x) = u(m, k) {
            seen.push(k);
            t.row(label, x.to_string());
        }
    }
    for (k, x) in m {
        if !seen.contains(&k.as_str()) {
            t.row(k.replace('_', " "), scalar(x));
        }
    }
    t.render()
}

/// Renders one `/sessions/{id}` document.
pub fn session(v: &Value) -> String {
    let Some(m) = v.as_object() else {
        return format!("{v}\n");
    };
    let mut t = Table::new();
    let mut seen: Vec<&str> = vec!["session_id", "session_id_hex"];
    let id = u(m, "session_id").map_or_else(|| "?".into(), |x| x.to_string());
    let hex = m.get("session_id_hex").map(scalar).unwrap_or_default();
    t.row("session", format!("{id} (0x{hex})"));
    for (k, label) in [
        ("peer_address", "peer address"),
        ("connection_type", "connection type"),
        ("encryption_type", "encryption type"),
        ("client_key", "client key (sha256)"),
    ] {
        if let Some(x) = m.get(k) {
            seen.push(k);
            t.row(label, scalar(x));
        }
    }
    for (k, label) in [("established_secs", "established"), ("idle_secs", "idle")] {
        if let Some(x) = f(m, k) {
            seen.push(k);
            t.row(
                label,
                if k == "established_secs" {
                    format!("{} ago", secs(x))
                } else {
                    secs(x)
                },
            );
        }
    }
    if let Some(x) = u(m, "key_generation") {
        seen.push("key_generation");
        t.row("key generation", x.to_string());
    }
    if let Some(q) = m.get("quality").and_then(Value::as_object) {
        seen.push("quality");
        t.row("quality", "");
        for (k, x) in q {
            t.row(format!("  {k}"), scalar(x));
        }
    }
    if let Some(q) = m.get("datagram").and_then(Value::as_object) {
        seen.push("datagram");
        t.row("datagram path", "");
        for (k, x) in q {
            t.row(format!("  {k}"), scalar(x));
        }
    }
    for (k, label) in [
        ("frames_sent", "frames sent"),
        ("frames_received", "frames received"),
    ] {
        if let Some(x) = u(m, k) {
            seen.push(k);
            t.row(label, x.to_string());
        }
    }
    for (k, label) in [
        ("bytes_sent", "bytes sent"),
        ("bytes_received", "bytes received"),
    ] {
        if let Some(x) = u(m, k) {
            seen.push(k);
            t.row(label, bytes(x));
        }
    }
    for (k, label) in [
        ("messages_sent", "messages sent"),
        ("messages_received", "messages received"),
        ("errors_sent", "errors sent"),
        ("auth_failures", "auth failures"),
        ("replays", "replays"),
        ("stream_dropped", "stream messages dropped"),
        ("requests_in_flight", "requests in flight"),
    ] {
        if let Some(x) = u(m, k) {
            seen.push(k);
            t.row(label, x.to_string());
        }
    }
    for (k, x) in m {
        if !seen.contains(&k.as_str()) {
            t.row(k.replace('_', " "), scalar(x));
        }
    }
    t.render()
}

/// Renders `/sessions` as one line per session.
pub fn sessions(v: &Value) -> String {
    let Some(list) = v.as_array() else {
        return format!("{v}\n");
    };
    if list.is_empty() {
        return "no sessions\n".into();
    }
    let mut s = format!(
        "{:<20} {:<16} {:<22} {:<17} {:>4} {:>10} {:>10} {:>9}\n",
        "SESSION", "HEX", "PEER", "ENCRYPTION", "GEN", "ESTABLISHED", "IDLE", "RTT(ms)"
    );
    for e in list {
        let g = |k: &str| e.get(k).map(scalar).unwrap_or_default();
        let fs = |k: &str| {
            e.get(k)
                .and_then(Value::as_f64)
                .map(secs)
                .unwrap_or_default()
        };
        let rtt = e
            .get("quality")
            .and_then(|q| q.get("latency_ms"))
            .and_then(Value::as_f64)
            .map_or_else(String::new, |x| format!("{x:.2}"));
        let _ = writeln!(
            s,
            "{:<20} {:<16} {:<22} {:<17} {:>4} {:>10} {:>10} {:>9}",
            g("session_id"),
            g("session_id_hex"),
            g("peer_address"),
            g("encryption_type"),
            g("key_generation"),
            fs("established_secs"),
            fs("idle_secs"),
            rtt
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB (1536)");
        assert_eq!(secs(3723.4), "1h 2m 3s");
        assert_eq!(secs(1.5), "1.50s");
        assert_eq!(secs(90061.0), "1d 1h 1m 1s");
    }

    #[test]
    fn tables_show_known_and_unknown_fields() {
        let v = serde_json::json!({
            "uptime_secs": 12.5, "sessions_active": 2, "connections_by_type": {"tcp": 2},
            "bytes_received": 2048, "errors_by_code": {"UNKNOWN_MESSAGE_TYPE": 1},
            "listeners": [{"kind": "tcp", "address": "127.0.0.1:8080"}], "new_field": 7
        });
        let t = status(&v);
        assert!(t.contains("listening on"), "{t}");
        assert!(t.contains("  tcp"), "{t}");
        assert!(t.contains("2.0 KiB (2048)"), "{t}");
        assert!(t.contains("new field"), "{t}");
        let s = serde_json::json!({"session_id": 42, "session_id_hex": "000000000000002a",
            "quality": {"latency_ms": 0.5}, "key_generation": 1});
        let t = session(&s);
        assert!(t.contains("42 (0x000000000000002a)"), "{t}");
        assert!(t.contains("latency_ms"), "{t}");
        assert!(sessions(&serde_json::json!([s])).contains("000000000000002a"));
        assert_eq!(sessions(&serde_json::json!([])), "no sessions\n");
        let _ = status(&serde_json::json!("x"));
    }
}
