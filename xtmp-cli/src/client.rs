//! `xtmp client ping|send|request`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use xtmp::{ClientError, ClientOptions, ReconnectPolicy, XTMPClient};
use xtmp_proto::header::DEFAULT_MAX_STREAM_PAYLOAD;

use crate::cli::{ClientConn, MessageArgs};
use crate::transport_args::transport_short_name;
use crate::{keys, outln};

/// Connects with the command's settings. The CLI never reconnects: a lost connection is
/// reported as an error.
///
/// # Errors
/// Bad key arguments, or the connection or handshake fails (with a hint).
pub async fn connect(conn: &ClientConn) -> Result<(XTMPClient, Duration)> {
    let server_key = keys::parse_public_key_arg(&conn.server_key).context("--server-key")?;
    let mut opts = ClientOptions::new(server_key);
    if let Some(p) = &conn.client_key {
        opts.client_key = Some(Arc::new(keys::read_secret_key(p).context("--client-key")?));
    }
    opts.encryption_types = conn.encryption.clone();
    opts.connect_timeout = conn.timeout;
    opts.request_timeout = conn.timeout;
    opts.reconnect = ReconnectPolicy {
        enabled: false,
        ..ReconnectPolicy::default()
    };
    let address = crate::transport_args::apply(conn, &mut opts).await?;
    let started = Instant::now();
    let client = XTMPClient::connect(address, opts)
        .await
        .map_err(|e| explain(e, conn))?;
    Ok((client, started.elapsed()))
}

/// Adds a hint to the errors people hit first.
fn explain(e: ClientError, conn: &ClientConn) -> anyhow::Error {
    let hint = match &e {
        ClientError::Handshake(_) => {
            " (is --server-key the key of this server? `xtmp server start` prints it and writes <data_dir>/server.pub)"
        }
        ClientError::Refused { code, .. } if *code == xtmp::ErrorCode::UNAUTHORIZED => {
            if conn.client_key.is_some() {
                " (add this client's fingerprint to the server's authorized_keys_file)"
            } else {
                " (the server requires client authentication: pass --client-key)"
            }
        }
        ClientError::Connect { .. } | ClientError::ConnectTimeout(_) => {
            " (is the server running and is --server right?)"
        }
        ClientError::WebSocket { reason, .. } if reason.contains("TLS") => {
            " (for a private or self-signed certificate pass --ws-ca-file)"
        }
        ClientError::WebSocket { .. } => {
            " (check the URL's port and path against the server's ws_bind_address and ws_path)"
        }
        ClientError::AllTransportsFailed(_) => " (see each transport's error)",
        _ => "",
    };
    anyhow::anyhow!("{e}{hint}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn payload(msg: &MessageArgs) -> Result<Vec<u8>> {
    match (&msg.data, &msg.data_file) {
        (Some(d), _) => Ok(d.as_bytes().to_vec()),
        (None, Some(p)) => crate::read_capped(p, u64::from(DEFAULT_MAX_STREAM_PAYLOAD))
            .with_context(|| format!("--data-file {}", p.display())),
        (None, None) => Ok(Vec::new()),
    }
}

fn session_json(client: &XTMPClient) -> serde_json::Value {
    match client.session_id() {
        Some(id) => json!({ "session_id": id, "session_id_hex": format!("{id:016x}") }),
        None => json!({ "session_id": null }),
    }
}

fn session_text(client: &XTMPClient) -> String {
    match client.session_id() {
        Some(id) => format!("session {id} (0x{id:016x})"),
        None => "no session".into(),
    }
}

fn type_name(t: xtmp::MessageType) -> String {
    t.name()
        .map_or_else(|| format!("0x{:02x}", t.0), str::to_string)
}

/// The body for display: text when it is printable UTF-8, hex otherwise.
fn body_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s)
            if s.chars()
                .all(|c| !c.is_control() || c == '\n' || c == '\t' || c == '\r') =>
        {
            s.to_string()
        }
        _ => format!("hex:{}", hex::encode(b)),
    }
}

fn body_json(b: &[u8]) -> serde_json::Value {
    let mut v = json!({ "body_len": b.len() });
    match std::str::from_utf8(b) {
        Ok(s) => {
            v["body"] = json!(s);
            if let Ok(j) = serde_json::from_str::<serde_json::Value>(s) {
                v["body_json"] = j;
            }
        }
        Err(_) => v["body_hex"] = json!(hex::encode(b)),
    }
    v
}

fn error_json(e: &ClientError) -> serde_json::Value {
    json!({
        "error": e.to_string(),
        "code": e.code().map(|c| c.name().map_or_else(|| format!("0x{:04x}", c.0), str::to_string)),
    })
}

/// `xtmp client ping`: handshake, then `count` heartbeats `interval` apart.
///
/// # Errors
/// Connection or handshake failure, or a heartbeat without answer.
pub async fn ping(conn: &ClientConn, count: u32, interval: Duration, json_out: bool) -> Result<()> {
    let (client, took) = connect(conn).await?;
    if json_out {
        let mut v = session_json(&client);
        v["event"] = json!("connected");
        v["server"] = json!(conn.server.to_string());
        v["handshake_ms"] = json!(ms(took));
        if let Some(t) = client.transport_info() {
            v["transport"] = json!(transport_short_name(t.connection_type));
            v["connection_type"] = json!(t.connection_type.name());
            v["endpoint"] = json!(t.endpoint);
            v["transports_skipped"] = json!(t.skipped);
        }
        v["key_generation"] = json!(client.key_generation());
        outln!("{v}");
    } else {
        let info = client.transport_info();
        let via = info.as_ref().map_or_else(String::new, |t| {
            let mut via = format!(" over {}", transport_short_name(t.connection_type));
            if t.endpoint != conn.server.to_string() {
                via.push_str(&format!(" ({})", t.endpoint));
            }
            via
        });
        outln!(
            "connected to {}{via} in {:.2} ms: {}",
            conn.server,
            ms(took),
            session_text(&client)
        );
        for sk in info.iter().flat_map(|t| &t.skipped) {
            outln!(
                "  ({} was tried first: {})",
                transport_short_name(sk.connection_type),
                sk.error
            );
        }
    }
    let mut rtts = Vec::new();
    let mut failure = None;
    for i in 1..=count {
        if i > 1 {
            tokio::time::sleep(interval).await;
        }
        match client.ping().await {
            Ok(rtt) => {
                rtts.push(ms(rtt));
                if json_out {
                    outln!(
                        "{}",
                        json!({ "event": "pong", "seq": i, "rtt_ms": ms(rtt) })
                    );
                } else {
                    outln!("heartbeat {i}: rtt {:.3} ms", ms(rtt));
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    client.close().await;
    let answered = rtts.len();
    let (min, max) = rtts.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| {
        (lo.min(r), hi.max(r))
    });
    let avg = if answered == 0 {
        0.0
    } else {
        rtts.iter().sum::<f64>() / answered as f64
    };
    if json_out {
        outln!(
            "{}",
            json!({ "event": "summary", "sent": count, "answered": answered,
                    "rtt_min_ms": if answered == 0 { 0.0 } else { min },
                    "rtt_avg_ms": avg, "rtt_max_ms": max })
        );
    } else if answered > 0 {
        outln!(
            "--- {count} heartbeats, {answered} answered, rtt min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms"
        );
    }
    match failure {
        Some(e) => Err(explain(e, conn).context(format!("heartbeat {} failed", answered + 1))),
        None => Ok(()),
    }
}

/// `xtmp client request`: send a request and print the correlated response.
///
/// # Errors
/// Connection failure, or the server answered with an `Error`.
pub async fn request(conn: &ClientConn, msg: &MessageArgs, json_out: bool) -> Result<()> {
    let body = payload(msg)?;
    let (client, _) = connect(conn).await?;
    let started = Instant::now();
    let result = client.request(msg.message_type, body).await;
    let took = started.elapsed();
    let session = session_json(&client);
    client.close().await;
    match result {
        Ok(resp) => {
            if json_out {
                let mut v = body_json(&resp.body);
                v["type"] = json!(type_name(resp.message_type));
                v["request_seq"] = json!(resp.request_seq);
                v["rtt_ms"] = json!(ms(took));
                v["session_id"] = session["session_id"].clone();
                outln!("{v}");
            } else {
                eprintln!(
                    "{} answered {} in {:.2} ms ({} bytes)",
                    conn.server,
                    type_name(resp.message_type),
                    ms(took),
                    resp.body.len()
                );
                outln!("{}", body_text(&resp.body));
            }
            Ok(())
        }
        Err(e) => {
            if json_out {
                outln!("{}", error_json(&e));
            }
            Err(explain(e, conn))
        }
    }
}

/// `xtmp client send`: send one message, optionally waiting for its acknowledgement.
///
/// # Errors
/// Connection failure, a refused message, or no acknowledgement in time.
pub async fn send(conn: &ClientConn, msg: &MessageArgs, ack: bool, json_out: bool) -> Result<()> {
    let body = payload(msg)?;
    let len = body.len();
    let (client, _) = connect(conn).await?;
    let started = Instant::now();
    let result = client.send(msg.message_type, body, ack).await;
    let took = started.elapsed();
    let session = session_json(&client);
    client.close().await;
    match result {
        Ok(()) => {
            if json_out {
                outln!(
                    "{}",
                    json!({ "sent": type_name(msg.message_type), "bytes": len,
                            "acknowledged": ack, "ms": ms(took), "session_id": session["session_id"] })
                );
            } else if ack {
                outln!(
                    "{} ({len} bytes) acknowledged in {:.2} ms",
                    type_name(msg.message_type),
                    ms(took)
                );
            } else {
                outln!("{} ({len} bytes) sent", type_name(msg.message_type));
            }
            Ok(())
        }
        Err(e) => {
            if json_out {
                outln!("{}", error_json(&e));
            }
            Err(explain(e, conn))
        }
    }
}
