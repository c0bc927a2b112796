//! Bad input over raw TCP. After each offence the offender got a specific `Error` (plain
//! before a session exists, sealed inside one, followed by `Disconnect`) and a clean close,
//! and the server still serves other clients.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use xtmp::{builtin_router, ServerHandle, XTMPClient};
use xtmp_proto::{
    ClientConfig, ClientHandshake, EncryptionType, ErrorCode, Header, MessageType, XTMPFlags,
    HEADER_LEN,
};

async fn bad_server() -> ServerHandle {
    start(builtin_router(), |o| {
        o.read_timeout = Duration::from_millis(300);
        o.max_payload = 1 << 20;
    })
    .await
}

async fn assert_still_serving(server: &ServerHandle) {
    let c = client(server).await;
    let r = c
        .request(MessageType::WalletBalance, b"still here".to_vec())
        .await
        .unwrap();
    assert_eq!(r.body, b"still here");
    c.close().await;
}

/// Expects exactly one error with `code`, then the close (and a Disconnect when a session existed).
async fn expect_error_and_close(raw: &mut RawClient, code: ErrorCode) {
    let (errors, disconnected) = raw.errors_until_close(Duration::from_secs(5)).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, code, "{errors:?}");
    assert_eq!(
        disconnected,
        raw.session.is_some(),
        "Disconnect expected only inside a session"
    );
}

fn handshake_frame() -> Vec<u8> {
    let (_, m1) = ClientHandshake::start(
        ClientConfig::new(server_key().public_key().clone()),
        1,
        &mut Rng,
    )
    .unwrap();
    m1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes() {
    let server = bad_server().await;
    let mut raw = RawClient::tcp(server.local_addr()).await;
    raw.send_raw(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await;
    expect_error_and_close(&mut raw, ErrorCode::MALFORMED_FRAME).await;
    // Garbage inside a session.
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    raw.send_raw(&[0xAB; 200]).await;
    expect_error_and_close(&mut raw, ErrorCode::MALFORMED_FRAME).await;
    assert_still_serving(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_header_then_silence() {
    let server = bad_server().await;
    let mut raw = RawClient::tcp(server.local_addr()).await;
    raw.send_raw(&handshake_frame()[..50]).await;
    expect_error_and_close(&mut raw, ErrorCode::TIMEOUT).await;
    // Mid-frame stall inside a session.
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    let f = raw.seal(MessageType::WalletAuth, XTMPFlags::empty(), b"hello");
    raw.send_raw(&f[..50]).await;
    expect_error_and_close(&mut raw, ErrorCode::TIMEOUT).await;
    assert_still_serving(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_length() {
    let server = bad_server().await;
    let mut f = handshake_frame();
    f[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut raw = RawClient::tcp(server.local_addr()).await;
    raw.send_raw(&f[..HEADER_LEN]).await;
    expect_error_and_close(&mut raw, ErrorCode::PAYLOAD_TOO_LARGE).await;

    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    let mut f = raw.seal(MessageType::WalletAuth, XTMPFlags::empty(), b"hello");
    f[24..28].copy_from_slice(&(64u32 << 20).to_be_bytes());
    raw.send_raw(&f).await;
    expect_error_and_close(&mut raw, ErrorCode::PAYLOAD_TOO_LARGE).await;
    assert_still_serving(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_crc() {
    let server = bad_server().await;
    let mut f = handshake_frame();
    let last = f.len() - 1;
    f[last] ^= 0x01;
    let mut raw = RawClient::tcp(server.local_addr()).await;
    raw.send_raw(&f).await;
    expect_error_and_close(&mut raw, ErrorCode::CHECKSUM_MISMATCH).await;

    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    let mut f = raw.seal(MessageType::WalletAuth, XTMPFlags::empty(), b"hello");
    f[HEADER_LEN] ^= 0x01;
    raw.send_raw(&f).await;
    expect_error_and_close(&mut raw, ErrorCode::CHECKSUM_MISMATCH).await;
    assert_still_serving(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tag() {
    let server = bad_server().await;
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    let mut f = raw.seal(MessageType::WalletAuth, XTMPFlags::empty(), b"hello");
    f[85] ^= 0x40;
    raw.send_raw(&f).await;
    expect_error_and_close(&mut raw, ErrorCode::AUTHENTICATION_FAILED).await;
    assert!(server.status().errors_by_code["AUTHENTICATION_FAILED"] >= 1);
    assert_still_serving(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_frame() {
    let server = bad_server().await;
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    let f = raw.seal(MessageType::WalletAuth, XTMPFlags::empty(), b"once");
    raw.send_raw(&f).await;
    let (h, _) = raw.recv_message(Duration::from_secs(5)).await.unwrap();
    assert_eq!(h.message_type, MessageType::Response);
    raw.send_raw(&f).await;
    expect_error_and_close(&mut raw, ErrorCode::REPLAY).await;
    assert_still_serving(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_session_id() {
    let server = bad_server().await;
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    let mut f = raw.seal(MessageType::WalletAuth, XTMPFlags::empty(), b"hello");
    f[15] ^= 0x01;
    raw.send_raw(&f).await;
    expect_error_and_close(&mut raw, ErrorCode::UNKNOWN_SESSION).await;
    assert_still_serving(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_or_plaintext_frames_in_a_session() {
    let server = bad_server().await;
    // A second Handshake inside a session.
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    let mut f = handshake_frame();
    f[8..16].copy_from_slice(&raw.session.as_ref().unwrap().session_id().to_be_bytes());
    raw.send_raw(&f).await;
    expect_error_and_close(&mut raw, ErrorCode::PROTOCOL_VIOLATION).await;
    // A plaintext frame where PostQuantum was negotiated.
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    let payload = b"plain";
    let h = Header {
        message_type: MessageType::WalletAuth,
        flags: XTMPFlags::empty(),
        session_id: raw.session.as_ref().unwrap().session_id(),
        sequence_number: 0,
        payload_length: payload.len() as u32,
        checksum: xtmp_proto::crc32(payload),
        encryption_type: EncryptionType::None,
        key_id: [0; 16],
        nonce: [0; 24],
        auth_tag: [0; 16],
    };
    let mut f = h.to_bytes().to_vec();
    f.extend_from_slice(payload);
    raw.send_raw(&f).await;
    expect_error_and_close(&mut raw, ErrorCode::ENCRYPTION_NOT_PERMITTED).await;
    assert_still_serving(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_handshakes() {
    let server = start(builtin_router(), |o| o.handshakes_per_second_per_ip = 5).await;
    let m1 = handshake_frame();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let addr = server.local_addr();
        let m1 = m1.clone();
        tasks.push(tokio::spawn(async move {
            let mut raw = RawClient::tcp(addr).await;
            raw.send_raw(&m1).await;
            match raw.read_frame(Duration::from_secs(10)).await {
                RawEvent::Frame(f) => xtmp::parse_plain_error(&f).map(|e| e.code),
                other => panic!("no answer: {other:?}"),
            }
        }));
    }
    let mut limited = 0;
    let mut answered = 0;
    for t in tasks {
        match t.await.unwrap() {
            Some(ErrorCode::RATE_LIMITED) => limited += 1,
            None => answered += 1, // a HandshakeAck
            Some(other) => panic!("unexpected error code {other:?}"),
        }
    }
    assert!(limited >= 20, "only {limited} rate limited");
    assert!(
        (1..=10).contains(&answered),
        "{answered} handshakes answered"
    );
    assert!(server.status().errors_by_code["RATE_LIMITED"] >= 20);
    // Another address is not affected.
    let mut o = client_options();
    o.local_address = Some("127.0.0.2:0".parse().unwrap());
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    c.request(MessageType::WalletAuth, b"x".to_vec())
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_without_reading_is_bounded_and_closed() {
    let server = start(builtin_router(), |o| {
        o.write_timeout = Duration::from_millis(500)
    })
    .await;
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    let mut flood = Vec::new();
    {
        let s = raw.session.as_mut().unwrap();
        for _ in 0..60_000 {
            s.send_ping(std::time::Instant::now()).unwrap();
            while let Some(f) = s.poll_transmit() {
                flood.extend_from_slice(&f);
            }
        }
    }
    // Write the flood without ever reading the answers.
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = raw.stream.write_all(&flood).await;
        raw
    });
    eventually("offender closed", || server.status().sessions_active == 0).await;
    assert_still_serving(&server).await;
    let mut raw = writer.await.unwrap();
    // What it finally reads ends in a close.
    loop {
        match raw.read_frame(Duration::from_secs(10)).await {
            RawEvent::Frame(_) => {}
            RawEvent::Eof => break,
            RawEvent::Timeout => panic!("not closed"),
        }
    }
    server.shutdown().await;
}
