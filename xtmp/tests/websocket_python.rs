//! Interoperability of the WebSocket mapping with an implementation that is not ours:
//! Python's `websockets` package (`tests/py/ws_relay.py`).
//!
//! * relay: a Rust client speaks TCP to the Python script, which carries every XTMP frame
//!   as one binary message over `websockets` to our server — a whole session (handshake,
//!   requests, acknowledged send, error reply, server push) crosses the foreign stack;
//! * probe: the script sends a Handshake message 1 built here and checks the
//!   HandshakeAck, then the refusals (text → 1003, two frames in a message → 1002,
//!   wrong path → 404).
//!
//! The test looks for a `python3` that can `import websockets` (`$XTMP_PYTHON`, then
//! `python3` on `PATH`, then `/usr/bin/python3`). Without one it is skipped with a notice,
//! except under CI (`CI` set), where that is a failure: `.ci/run` installs
//! `python3-websockets`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use xtmp::{builtin_router, ConnectionType, ServerHandle, WebSocketListenerOptions, XTMPClient};
use xtmp_proto::{ClientConfig, ClientHandshake, ErrorCode, MessageType, XTMPFlags};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/ws_relay.py")
}

/// A Python interpreter with the `websockets` package, or `None` (after a notice) when
/// the test should be skipped.
async fn python() -> Option<String> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("XTMP_PYTHON") {
        candidates.push(p);
    }
    candidates.push("python3".into());
    candidates.push("/usr/bin/python3".into());
    for p in &candidates {
        let ok = Command::new(p)
            .args(["-c", "import websockets"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if ok {
            return Some(p.clone());
        }
    }
    let msg = format!(
        "no python3 with the `websockets` package (tried {}); install it with \
         `apt-get install -y python3-websockets` or `pip install websockets`, or set XTMP_PYTHON",
        candidates.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

async fn ws_server() -> ServerHandle {
    start(builtin_router(), |o| {
        o.websocket = Some(WebSocketListenerOptions::new(
            "127.0.0.1:0".parse().unwrap(),
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_through_python_websockets() {
    let Some(py) = python().await else { return };
    let server = ws_server().await;
    let url = server.websocket_url().unwrap();
    let mut child = Command::new(&py)
        .arg(script())
        .args(["relay", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line))
        .await
        .expect("the relay did not start")
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("unexpected relay output {line:?}"))
        .parse()
        .unwrap();

    // The client speaks plain TCP to the relay; the server sees a WebSocket session.
    let mut o = client_options();
    o.reconnect.enabled = false;
    let c = XTMPClient::connect(([127, 0, 0, 1], port).into(), o)
        .await
        .unwrap();
    let r = c
        .request(
            MessageType::WalletBalance,
            br#"{"wallet":"alice"}"#.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.body, br#"{"wallet":"alice"}"#);
    c.send(MessageType::BundleSubmit, b"{}".to_vec(), true)
        .await
        .unwrap();
    let e = c
        .request(MessageType(0x77), b"?".to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNKNOWN_MESSAGE_TYPE));
    let mut sub = c
        .subscribe(
            MessageType::LiveUpdates,
            br#"{"count":3,"interval_ms":5}"#.to_vec(),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(m.flags.contains(XTMPFlags::STREAMING));
    }
    assert!(c.ping().await.is_ok());
    let sid = c.session_id().unwrap();
    assert_eq!(
        server.session_metrics(sid).unwrap().connection_type,
        ConnectionType::WebSocketFallback.name()
    );
    c.close().await;

    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the relay did not finish")
        .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).await.unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).await.unwrap();
    }
    assert!(status.success(), "relay failed: {rest}\n{err}");
    let summary = rest
        .lines()
        .find_map(|l| l.strip_prefix("RELAYED "))
        .unwrap_or_else(|| panic!("no summary in {rest:?}"));
    let count = |k: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .unwrap()
            .parse()
            .unwrap()
    };
    // Handshake, 4 requests/sends, a ping, a Disconnect at least; and their answers.
    assert!(count("up=") >= 7, "{summary}");
    assert!(count("down=") >= 8, "{summary}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_refusals_with_python_websockets() {
    let Some(py) = python().await else { return };
    let server = ws_server().await;
    let url = server.websocket_url().unwrap();
    let (_hs, m1) = ClientHandshake::start(
        ClientConfig::new(server_key().public_key().clone()),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        &mut Rng,
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(&py)
            .arg(script())
            .args(["probe", &url, &hex::encode(&m1)])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the probe did not finish")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["subprotocol"], "xtmp.v1", "{v}");
    assert_eq!(v["reply_is_binary"], true, "{v}");
    assert_eq!(v["reply_type"], 0x02, "HandshakeAck expected: {v}");
    assert_eq!(v["reply_length_ok"], true, "{v}");
    assert_eq!(v["text_close_code"], 1003, "{v}");
    assert_eq!(v["two_frames_close_code"], 1002, "{v}");
    assert_eq!(v["wrong_path_status"], 404, "{v}");
    server.shutdown().await;
}
