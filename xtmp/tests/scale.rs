//! 10,000 concurrent sessions (the seed's `max_connections`) held at once, one more refused
//! with `SERVER_BUSY`.
//!
//! The server runs in this test's process and the 10,000 clients in a child process (this
//! same test binary running the ignored `scale_client_child` test), so each process needs
//! only ~10,000 file descriptors: the test raises RLIMIT_NOFILE as far as the hard limit
//! allows, which works without privileges wherever the hard limit is at least ~10,500.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rlimit::Resource;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;
use xtmp::{builtin_router, ClientError, XTMPClient};
use xtmp_proto::{ErrorCode, MessageType};

const SESSIONS: usize = 10_000;
const ADDR_ENV: &str = "XTMP_SCALE_SERVER";

fn raise_nofile(want: u64) {
    let (soft, hard) = Resource::NOFILE.get().unwrap();
    if soft >= want {
        return;
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE; try, then settle for the hard limit.
    if Resource::NOFILE.set(want, hard.max(want)).is_err() {
        let _ = Resource::NOFILE.set(hard.min(want), hard);
    }
    let (soft, hard) = Resource::NOFILE.get().unwrap();
    assert!(
        soft >= want,
        "cannot raise RLIMIT_NOFILE to {want} (soft {soft}, hard {hard}): raise the hard limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_sessions() {
    raise_nofile(SESSIONS as u64 + 1_000);
    let server = start(builtin_router(), |o| {
        o.max_connections = SESSIONS;
        o.heartbeat_interval = Duration::from_secs(600);
        o.handshake_timeout = Duration::from_secs(60);
        o.read_timeout = Duration::from_secs(60);
    })
    .await;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "scale_client_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ADDR_ENV, server.local_addr().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut wait_for = async |marker: &str| loop {
        let line = tokio::time::timeout(Duration::from_secs(100), lines.next_line())
            .await
            .expect("child too slow")
            .unwrap()
            .unwrap_or_else(|| panic!("child exited before {marker}"));
        if line.contains("XTMP-SCALE-FAILED") {
            panic!("child failed: {line}");
        }
        if line.contains(marker) {
            return;
        }
    };
    wait_for("XTMP-SCALE-CONNECTED").await;
    eprintln!("{SESSIONS} sessions established in {:?}", started.elapsed());
    let status = server.status();
    assert_eq!(status.sessions_active, SESSIONS as u64);
    assert_eq!(status.connections_active, SESSIONS as u64);
    assert_eq!(status.handshakes_completed, SESSIONS as u64);
    assert_eq!(server.sessions().len(), SESSIONS);

    // One more is refused with an Error, and counted.
    let e = XTMPClient::connect(server.local_addr(), client_options())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Refused {
                code: ErrorCode::SERVER_BUSY,
                ..
            }
        ),
        "{e:?}"
    );
    let status = server.status();
    assert_eq!(status.connections_refused, 1);
    assert_eq!(status.errors_by_code["SERVER_BUSY"], 1);

    // Every session is alive: one request each.
    let t = Instant::now();
    stdin.write_all(b"request\n").await.unwrap();
    wait_for("XTMP-SCALE-REQUESTED").await;
    eprintln!("{SESSIONS} requests in {:?}", t.elapsed());
    assert_eq!(server.status().messages_received, SESSIONS as u64);

    stdin.write_all(b"exit\n").await.unwrap();
    assert!(child.wait().await.unwrap().success());
    eventually("all sessions closed", || {
        server.status().connections_active == 0
    })
    .await;
    server.shutdown().await;
    eprintln!("total {:?}", started.elapsed());
}

/// The client half of [`ten_thousand_concurrent_sessions`], run in a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by ten_thousand_concurrent_sessions in a child process"]
async fn scale_client_child() {
    let Ok(addr) = std::env::var(ADDR_ENV) else {
        return;
    };
    let addr = addr.parse().unwrap();
    raise_nofile(SESSIONS as u64 + 1_000);
    let mut opts = client_options();
    opts.heartbeat_interval = Duration::from_secs(600);
    opts.connect_timeout = Duration::from_secs(60);
    opts.reconnect.enabled = false;

    let gate = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let gate = gate.clone();
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            XTMPClient::connect(addr, opts).await
        }));
    }
    let mut clients = Vec::with_capacity(SESSIONS);
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => clients.push(c),
            Err(e) => {
                println!("XTMP-SCALE-FAILED connect: {e}");
                return;
            }
        }
    }
    println!("XTMP-SCALE-CONNECTED");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(cmd)) = stdin.next_line().await {
        match cmd.as_str() {
            "request" => {
                let gate = Arc::new(Semaphore::new(256));
                let mut tasks = Vec::with_capacity(SESSIONS);
                for (i, c) in clients.iter().enumerate() {
                    let c = c.clone();
                    let gate = gate.clone();
                    tasks.push(tokio::spawn(async move {
                        let _p = gate.acquire().await.unwrap();
                        let body = (i as u64).to_be_bytes().to_vec();
                        let r = c.request(MessageType::WalletBalance, body.clone()).await?;
                        assert_eq!(r.body, body);
                        Ok::<(), ClientError>(())
                    }));
                }
                for t in tasks {
                    if let Err(e) = t.await.unwrap() {
                        println!("XTMP-SCALE-FAILED request: {e}");
                        return;
                    }
                }
                println!("XTMP-SCALE-REQUESTED");
            }
            _ => break,
        }
    }
    for c in &clients {
        c.close().await;
    }
}
