//! The server side of every peer, run in a separate process (`xtmp-bench serve`, the
//! default, so the server's CPU time and memory are measured on their own) or in-process
//! on its own runtime (`--in-process`).
//!
//! A child prints one JSON line ([`ServerInfo`]) when it listens, then answers each
//! `stats` line on stdin with a JSON [`ServerStats`] line, and exits on `quit` or end of
//! input.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use xtmp::{
    builtin_router, HandlerError, Overflow, PushError, PushOutcome, Reply, RouteOptions,
    ServerHandle, ServerOptions, WebSocketListenerOptions, XTMPMessageRouter, XTMPServer,
};
use xtmp_proto::xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::{EncryptionType, ErrorCode, MessageType};
use xtmp_services::crypto::{message, Address, PublicKey};
use xtmp_services::{Services, ServicesConfig};

use crate::frame::{self, op, FrameConn};
use crate::spec::{Peer, RunSpec, Scenario, Transport};
use crate::stats::ProcStats;
use crate::{tls, wallet};

/// Message type echoed by the XTMP bench server (request-response, and the end-of-run sync).
pub const ECHO_TYPE: MessageType = MessageType::WalletBalance;
/// Message type the XTMP bench server discards (bulk).
pub const SINK_TYPE: MessageType = MessageType::RegistryStamp;
/// `session_timeout` of the XTMP bench server in the idle-sessions scenario (24 h).
pub const IDLE_SESSION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How to reach a server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Its address.
    pub addr: SocketAddr,
    /// XTMP: the server's X-Wing public key (hex).
    #[serde(default)]
    pub xtmp_public_key: Option<String>,
    /// TLS / QUIC: the certificate to trust (DER, hex).
    #[serde(default)]
    pub cert_der: Option<String>,
    /// The process id (None: in-process or external).
    #[serde(default)]
    pub pid: Option<u32>,
    /// XTMP: the UDP listener (udp and hybrid transports).
    #[serde(default)]
    pub udp_addr: Option<SocketAddr>,
    /// XTMP: the WebSocket URL (ws transport).
    #[serde(default)]
    pub ws_url: Option<String>,
}

/// A server's counters at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ServerStats {
    /// CPU and memory (the whole process when in-process).
    pub proc: ProcStats,
    /// Open connections / sessions.
    pub connections: u64,
    /// Push messages dropped (XTMP drop-oldest).
    pub dropped: u64,
    /// XTMP: session key rotations completed so far.
    #[serde(default)]
    pub key_rotations: u64,
}

/// Counters kept by the peer servers.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
}

struct ConnGuard(Arc<Counters>);
impl ConnGuard {
    fn new(c: &Arc<Counters>) -> Self {
        c.connections.fetch_add(1, Ordering::Relaxed);
        Self(c.clone())
    }
}
impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A server started by [`start`].
pub struct Running {
    /// How to reach it.
    pub info: ServerInfo,
    counters: Arc<Counters>,
    xtmp: Option<ServerHandle>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Running {
    /// Current counters.
    pub fn stats(&self) -> ServerStats {
        let (connections, dropped, key_rotations) = match &self.xtmp {
            Some(h) => {
                let s = h.status();
                (
                    s.sessions_active,
                    s.stream_messages_dropped,
                    s.key_rotations,
                )
            }
            None => (self.counters.connections.load(Ordering::Relaxed), 0, 0),
        };
        ServerStats {
            proc: ProcStats::now(),
            connections,
            dropped,
            key_rotations,
        }
    }

    /// Stops it.
    pub async fn shutdown(&self) {
        if let Some(h) = &self.xtmp {
            h.shutdown().await;
        }
    }
}

/// Starts `peer`'s server for `spec` on an ephemeral loopback port.
pub async fn start(peer: Peer, spec: &RunSpec) -> Result<Running> {
    let counters = Arc::new(Counters::default());
    let local: SocketAddr = "127.0.0.1:0".parse()?;
    match peer {
        Peer::Xtmp => start_xtmp(spec, counters).await,
        Peer::PlainTcp => {
            let l = TcpListener::bind(local).await?;
            let addr = l.local_addr()?;
            let c = counters.clone();
            tokio::spawn(async move {
                loop {
                    let Some(s) = accept(&l).await else { continue };
                    let g = ConnGuard::new(&c);
                    tokio::spawn(async move {
                        let _g = g;
                        let _ = serve_framed(s, None).await;
                    });
                }
            });
            Ok(plain_info(addr, counters, None))
        }
        Peer::Rustls => {
            let (cert, key) = tls::self_signed()?;
            let acceptor =
                tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&cert, &key, false)?));
            let l = TcpListener::bind(local).await?;
            let addr = l.local_addr()?;
            let c = counters.clone();
            tokio::spawn(async move {
                loop {
                    let Some(s) = accept(&l).await else { continue };
                    let acceptor = acceptor.clone();
                    let g = ConnGuard::new(&c);
                    tokio::spawn(async move {
                        let _g = g;
                        if let Ok(tls) = acceptor.accept(s).await {
                            let _ = serve_framed(tls, None).await;
                        }
                    });
                }
            });
            Ok(plain_info(addr, counters, Some(cert)))
        }
        Peer::Quinn => {
            let (cert, key) = tls::self_signed()?;
            let ep = quinn::Endpoint::server(tls::quinn_server(&cert, &key)?, local)
                .context("quinn server endpoint")?;
            let addr = ep.local_addr()?;
            let c = counters.clone();
            tokio::spawn(async move {
                while let Some(incoming) = ep.accept().await {
                    let g = ConnGuard::new(&c);
                    tokio::spawn(async move {
                        let _g = g;
                        let Ok(conn) = incoming.await else { return };
                        while let Ok((send, recv)) = conn.accept_bi().await {
                            let conn = conn.clone();
                            tokio::spawn(async move {
                                let _ = serve_framed(tokio::io::join(recv, send), Some(conn)).await;
                            });
                        }
                    });
                }
            });
            Ok(plain_info(addr, counters, Some(cert)))
        }
        Peer::PlainUdp => {
            let sock = Arc::new(UdpSocket::bind(local).await?);
            let addr = sock.local_addr()?;
            tokio::spawn(serve_udp(sock));
            Ok(plain_info(addr, counters, None))
        }
    }
}

/// The next accepted connection; `None` after a transient error (a connection reset
/// before it was accepted, or out of descriptors: wait a little), so the loop goes on.
async fn accept(l: &TcpListener) -> Option<tokio::net::TcpStream> {
    match l.accept().await {
        Ok((s, _)) => {
            let _ = s.set_nodelay(true);
            Some(s)
        }
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(1)).await;
            None
        }
    }
}

fn plain_info(addr: SocketAddr, counters: Arc<Counters>, cert: Option<Vec<u8>>) -> Running {
    Running {
        info: ServerInfo {
            addr,
            xtmp_public_key: None,
            cert_der: cert.map(hex::encode),
            pid: None,
            udp_addr: None,
            ws_url: None,
        },
        counters,
        xtmp: None,
        _data_dir: None,
    }
}

async fn start_xtmp(spec: &RunSpec, counters: Arc<Counters>) -> Result<Running> {
    let key = Arc::new(XWingSecretKey::generate().map_err(|e| anyhow!("X-Wing key: {e:?}"))?);
    let mut o = ServerOptions::new(key.clone());
    o.bind_address = "127.0.0.1:0".parse()?;
    o.max_connections = 1_000_000;
    o.handshakes_per_second_per_ip = 0;
    o.enable_compression = false;
    if let Some(k) = spec.key_rotation {
        o.key_rotation_interval = k;
    }
    if spec.scenario == Scenario::IdleSessions {
        // Sessions without application messages are closed after `session_timeout`
        // (default 3600 s); opening 100,000 sessions and holding them must not come near
        // it. Heartbeats, key rotation and every other option keep their defaults.
        o.session_timeout = IDLE_SESSION_TIMEOUT;
    }
    match spec.transport {
        Transport::Tcp => {}
        Transport::Udp | Transport::Hybrid => o.udp_bind_address = Some("127.0.0.1:0".parse()?),
        Transport::Ws => {
            o.websocket = Some(WebSocketListenerOptions::new("127.0.0.1:0".parse()?));
        }
    }
    if spec.crypto_off {
        o.allow_plaintext = true;
        o.encryption_types = vec![EncryptionType::None];
    }
    let (router, data_dir) = match spec.scenario {
        Scenario::WalletAuth | Scenario::BundleSubmit => {
            let dir = tempfile::Builder::new()
                .prefix("xtmp-bench-data")
                .tempdir()
                .context("data directory")?;
            let mut cfg = ServicesConfig::new(dir.path());
            cfg.set_genesis(wallet::genesis(&wallet::wallets(spec.wallets)?));
            cfg.set_max_sessions(1_000_000);
            let services =
                Arc::new(Services::open(cfg).map_err(|e| anyhow!("opening the services: {e}"))?);
            let mut r = XTMPMessageRouter::new();
            xtmp_services::register_all(&mut r, services);
            (r, Some(dir))
        }
        _ => (bench_router(), None),
    };
    let handle = XTMPServer::bind(o, router)
        .await
        .context("starting the XTMP server")?;
    Ok(Running {
        info: ServerInfo {
            addr: handle.local_addr(),
            xtmp_public_key: Some(hex::encode(key.public_key().as_bytes())),
            cert_der: None,
            pid: None,
            udp_addr: handle.udp_local_addr(),
            ws_url: handle
                .websocket_addr()
                .map(|a| format!("ws://{a}{}", xtmp::ws::DEFAULT_PATH)),
        },
        counters,
        xtmp: Some(handle),
        _data_dir: data_dir,
    })
}

/// The XTMP router of the transport scenarios: the built-in echo router (what
/// `xtmp server start` serves), plus a sink type and flooding push streams.
fn bench_router() -> XTMPMessageRouter {
    let mut r = builtin_router();
    r.register(SINK_TYPE, |_ctx, _req| async move { Ok(Reply::None) });
    for (t, overflow) in [
        (MessageType::LiveUpdates, Overflow::Backpressure),
        (MessageType::MetricsStream, Overflow::DropOldest),
    ] {
        r.register_with(
            t,
            RouteOptions::stream(overflow, 1024),
            move |ctx, req| async move {
                let (size, _mode, count, rate) = frame::parse_stream_params(&req.payload)
                    .ok_or_else(|| HandlerError::bad_request("stream parameters"))?;
                let sink = ctx
                    .push_sink()
                    .map_err(|e| HandlerError::new(ErrorCode::OVERLOADED, e.to_string()))?;
                tokio::spawn(async move {
                    let mut pacer = Pacer::new(rate);
                    let mut seq = 0u64;
                    while count == 0 || seq < count {
                        pacer.wait(seq).await;
                        match sink.push(frame::push_body(size as usize, seq)).await {
                            Ok(PushOutcome::Queued) => {}
                            // The writer is behind: let it run.
                            Ok(PushOutcome::DroppedOldest) => tokio::task::yield_now().await,
                            // The queue filled before the subscribe reply went out.
                            Err(PushError::NotStarted) => {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                continue;
                            }
                            Err(_) => return,
                        }
                        seq += 1;
                        if seq.is_multiple_of(256) {
                            tokio::task::yield_now().await;
                        }
                    }
                });
                Ok(Reply::Response(Vec::new()))
            },
        );
    }
    r
}

/// Paces a producer at `rate` messages per second (0: as fast as possible), in 1 ms steps.
pub struct Pacer {
    rate: u32,
    start: tokio::time::Instant,
}

impl Pacer {
    /// A pacer starting now.
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            start: tokio::time::Instant::now(),
        }
    }

    /// Waits until message `n` is due.
    pub async fn wait(&mut self, n: u64) {
        if self.rate == 0 {
            return;
        }
        let due = self.start + Duration::from_secs_f64(n as f64 / f64::from(self.rate));
        if due > tokio::time::Instant::now() + Duration::from_micros(500) {
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Per-connection wallet-auth state of the peer servers.
#[derive(Default)]
struct AuthState {
    key: Option<(PublicKey, Address)>,
    challenge: Option<(u64, [u8; 32])>,
}

/// Serves the framed protocol on one stream.
async fn serve_framed<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    quic: Option<quinn::Connection>,
) -> Result<()> {
    let mut c = FrameConn::new(io);
    let (mut sunk, mut sunk_bytes) = (0u64, 0u64);
    let mut auth = AuthState::default();
    while let Some((o, p)) = c.recv().await? {
        match o {
            op::ECHO => c.send(op::ECHO_REPLY, &p).await?,
            op::SINK => {
                sunk += 1;
                sunk_bytes += p.len() as u64;
            }
            op::SYNC => {
                let mut r = sunk.to_be_bytes().to_vec();
                r.extend_from_slice(&sunk_bytes.to_be_bytes());
                c.send(op::SYNC_REPLY, &r).await?;
            }
            op::STREAM => {
                let (size, mode, count, rate) =
                    frame::parse_stream_params(&p).ok_or_else(|| anyhow!("stream parameters"))?;
                let mut pacer = Pacer::new(rate);
                let mut seq = 0u64;
                if mode == frame::MODE_DATAGRAM || mode == frame::MODE_DATAGRAM_DROP_OLDEST {
                    let conn = quic.clone().ok_or_else(|| anyhow!("datagrams need QUIC"))?;
                    let wait = mode == frame::MODE_DATAGRAM;
                    while count == 0 || seq < count {
                        pacer.wait(seq).await;
                        let body = Bytes::from(frame::push_body(size as usize, seq));
                        let sent = if wait {
                            conn.send_datagram_wait(body).await.is_ok()
                        } else {
                            // Never waits: quinn drops its oldest queued datagram when the
                            // send buffer is full (XTMP's drop-oldest route, which yields
                            // at each drop and every 256 pushes, likewise).
                            conn.send_datagram(body).is_ok()
                        };
                        if !sent {
                            return Ok(());
                        }
                        seq += 1;
                        if !wait && seq.is_multiple_of(256) {
                            tokio::task::yield_now().await;
                        }
                    }
                } else {
                    while count == 0 || seq < count {
                        pacer.wait(seq).await;
                        c.queue(op::PUSH, &frame::push_body(size as usize, seq));
                        seq += 1;
                        // Batch like the XTMP writer (64 KiB), but never hold a paced message.
                        if (c.queued() >= 64 * 1024 || rate != 0) && c.flush().await.is_err() {
                            return Ok(());
                        }
                    }
                    c.flush().await?;
                }
            }
            op::AUTH_REGISTER => match PublicKey::from_bytes(&p) {
                Ok(pk) => {
                    let addr = Address::of(&pk);
                    auth.key = Some((pk, addr));
                    c.send(op::OK, &[]).await?;
                }
                Err(e) => c.send(op::ERR, e.to_string().as_bytes()).await?,
            },
            op::AUTH_CHALLENGE => {
                let mut ch = [0u8; 32];
                xtmp_services::crypto::random_bytes(&mut ch).map_err(|e| anyhow!("random: {e}"))?;
                let mut sid = [0u8; 8];
                xtmp_services::crypto::random_bytes(&mut sid)
                    .map_err(|e| anyhow!("random: {e}"))?;
                let sid = u64::from_be_bytes(sid);
                auth.challenge = Some((sid, ch));
                let mut r = sid.to_be_bytes().to_vec();
                r.extend_from_slice(&ch);
                c.send(op::CHALLENGE, &r).await?;
            }
            op::AUTH_ANSWER => {
                let ok = match (&auth.key, auth.challenge.take()) {
                    (Some((pk, addr)), Some((sid, ch))) => {
                        pk.verify(&message::wallet_auth(sid, &ch, addr), &p).is_ok()
                    }
                    _ => false,
                };
                if ok {
                    c.send(op::OK, &[]).await?;
                } else {
                    c.send(op::ERR, b"authentication failed").await?;
                }
            }
            other => bail!("unknown op {other}"),
        }
    }
    c.shutdown().await;
    Ok(())
}

/// Plain UDP: `op ‖ payload` datagrams; echo, and push floods to a client until `STOP`.
async fn serve_udp(sock: Arc<UdpSocket>) {
    let floods: Arc<Mutex<HashMap<SocketAddr, Arc<AtomicBool>>>> = Arc::default();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Some((&o, p)) = buf[..n].split_first() else {
            continue;
        };
        match o {
            op::ECHO => {
                let mut r = Vec::with_capacity(n);
                r.push(op::ECHO_REPLY);
                r.extend_from_slice(p);
                let _ = sock.send_to(&r, from).await;
            }
            op::STREAM => {
                let Some((size, _, count, rate)) = frame::parse_stream_params(p) else {
                    continue;
                };
                let stop = Arc::new(AtomicBool::new(false));
                if let Ok(mut f) = floods.lock() {
                    if let Some(old) = f.insert(from, stop.clone()) {
                        old.store(true, Ordering::Relaxed);
                    }
                }
                let sock = sock.clone();
                tokio::spawn(async move {
                    let mut pacer = Pacer::new(rate);
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
                    let mut seq = 0u64;
                    let size = (size as usize).clamp(16, 65_000);
                    while (count == 0 || seq < count) && !stop.load(Ordering::Relaxed) {
                        pacer.wait(seq).await;
                        let mut d = Vec::with_capacity(size + 1);
                        d.push(op::PUSH);
                        d.extend_from_slice(&frame::push_body(size, seq));
                        if sock.send_to(&d, from).await.is_err() {
                            // Loopback refuses once the client's socket is closed.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        seq += 1;
                        if seq.is_multiple_of(64) {
                            tokio::task::yield_now().await;
                            if tokio::time::Instant::now() > deadline {
                                return;
                            }
                        }
                    }
                });
            }
            op::STOP => {
                if let Ok(mut f) = floods.lock() {
                    if let Some(s) = f.remove(&from) {
                        s.store(true, Ordering::Relaxed);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `xtmp-bench serve`: starts the server, prints its [`ServerInfo`], answers `stats`.
pub async fn serve_child(peer: Peer, spec: RunSpec) -> Result<()> {
    crate::stats::raise_nofile_limit();
    let running = start(peer, &spec).await?;
    let mut info = running.info.clone();
    info.pid = Some(std::process::id());
    println!("{}", serde_json::to_string(&info)?);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "stats" => println!("{}", serde_json::to_string(&running.stats())?),
            "quit" => break,
            _ => println!("{{\"error\":\"unknown command\"}}"),
        }
    }
    running.shutdown().await;
    Ok(())
}
