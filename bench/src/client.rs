//! The load generator: connects to each peer and runs the workloads. Every worker is
//! closed-loop (one operation outstanding per connection) unless a rate is given; only
//! operations that start and end inside the measured window are counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::time::Instant;
use xtmp::{ClientOptions, ReconnectPolicy, TransportStep, WsUrl, XTMPClient};
use xtmp_proto::xtmp_crypto::xwing::XWingPublicKey;
use xtmp_proto::{EncryptionType, MessageType};
use xtmp_services::crypto::message;
use xtmp_services::types::{
    BundleSubmitRequest, BundleSubmitResponse, SignedTransaction, WalletAuthResponse,
};
use xtmp_services::{client as wclient, SigningKey};

use crate::frame::{self, op, FrameConn};
use crate::server::{ServerInfo, ECHO_TYPE, SINK_TYPE};
use crate::spec::{Peer, RunSpec, Scenario, Transport};
use crate::stats::{unix_ns, Latency};
use crate::tls;

/// A byte stream of any peer.
pub trait Rw: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Rw for T {}

/// A framed connection of a stream peer (plain TCP, TLS, a QUIC bidirectional stream).
pub type Framed = FrameConn<Box<dyn Rw>>;

/// Connection parameters for one peer.
pub struct Ctx {
    /// The peer.
    pub peer: Peer,
    /// The run.
    pub spec: RunSpec,
    /// The server.
    pub info: ServerInfo,
    tls: Option<tokio_rustls::TlsConnector>,
    endpoints: Vec<quinn::Endpoint>,
    next_ep: AtomicUsize,
    next_local: AtomicUsize,
    xtmp_opts: Option<ClientOptions>,
}

/// Loopback source addresses the TCP connections rotate through (127.0.0.2 …
/// 127.0.0.201): closing handshakes leave each local port in TIME_WAIT for 60 s, and one
/// source address has only ~28,000 ephemeral ports, so thousands of handshakes per second
/// from a single address would stall on port allocation (1 s SYN retries).
const SOURCE_ADDRESSES: usize = 200;

impl Ctx {
    /// Prepares the client side for `peer`.
    pub fn new(peer: Peer, spec: &RunSpec, info: &ServerInfo) -> Result<Arc<Self>> {
        let cert = || -> Result<Vec<u8>> {
            hex::decode(
                info.cert_der
                    .as_deref()
                    .ok_or_else(|| anyhow!("the server sent no certificate"))?,
            )
            .context("certificate hex")
        };
        let mut ctx = Ctx {
            peer,
            spec: spec.clone(),
            info: info.clone(),
            tls: None,
            endpoints: Vec::new(),
            next_ep: AtomicUsize::new(0),
            next_local: AtomicUsize::new(0),
            xtmp_opts: None,
        };
        match peer {
            Peer::Rustls => {
                ctx.tls = Some(tokio_rustls::TlsConnector::from(Arc::new(
                    tls::client_config(&cert()?, false)?,
                )));
            }
            Peer::Quinn => {
                let cfg = tls::quinn_client(&cert()?)?;
                // One endpoint (UDP socket and driver task) per connection up to 64, then shared.
                let n = spec.concurrency.clamp(1, 64);
                for _ in 0..n {
                    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)
                        .context("quinn client endpoint")?;
                    ep.set_default_client_config(cfg.clone());
                    ctx.endpoints.push(ep);
                }
            }
            Peer::Xtmp => {
                let key_hex = info
                    .xtmp_public_key
                    .as_deref()
                    .ok_or_else(|| anyhow!("no XTMP server key"))?;
                let key = XWingPublicKey::from_bytes(&hex::decode(key_hex.trim())?)
                    .map_err(|e| anyhow!("XTMP server key: {e:?}"))?;
                let mut o = ClientOptions::new(key);
                o.reconnect = ReconnectPolicy {
                    enabled: false,
                    ..ReconnectPolicy::default()
                };
                o.enable_compression = false;
                o.connect_timeout = Duration::from_secs(30);
                o.request_timeout = Duration::from_secs(30);
                o.subscription_capacity = 1024;
                if spec.crypto_off {
                    o.encryption_types = vec![EncryptionType::None];
                }
                if spec.scenario == Scenario::IdleSessions {
                    // On a UdpFast session the client's probe tick (default every second)
                    // only samples its local loss estimate and sends nothing; at 100,000
                    // clients it would cost the load generator 100,000 wake-ups/s. Tick
                    // with the heartbeat instead (15 s). The server keeps its defaults.
                    o.datagram.probe_interval = o.heartbeat_interval;
                }
                o.transport_order = match spec.transport {
                    Transport::Tcp => Vec::new(),
                    Transport::Udp => vec![TransportStep::udp_to(
                        info.udp_addr
                            .ok_or_else(|| anyhow!("the server has no UDP listener"))?,
                    )],
                    Transport::Hybrid => vec![TransportStep::hybrid()],
                    Transport::Ws => {
                        let url = info
                            .ws_url
                            .as_deref()
                            .ok_or_else(|| anyhow!("the server has no WebSocket listener"))?;
                        let url: WsUrl = url.parse().map_err(|e| anyhow!("{url}: {e}"))?;
                        vec![TransportStep::websocket(url)]
                    }
                };
                ctx.xtmp_opts = Some(o);
            }
            Peer::PlainTcp | Peer::PlainUdp => {}
        }
        Ok(Arc::new(ctx))
    }

    fn addr(&self) -> SocketAddr {
        self.info.addr
    }

    /// Starts the rotation through the source addresses at `i` (an idle-sessions client
    /// process continues where the previous one's share ends).
    pub fn start_locals_at(&self, i: usize) {
        self.next_local.store(i, Ordering::Relaxed);
    }

    /// The next source address (port 0: any).
    fn local(&self) -> SocketAddr {
        let n = self.next_local.fetch_add(1, Ordering::Relaxed) % SOURCE_ADDRESSES;
        SocketAddr::from(([127, 0, 0, 2 + n as u8], 0))
    }

    /// A TCP connection from the next source address.
    async fn tcp(&self) -> Result<TcpStream> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(self.local())?;
        let s = sock.connect(self.addr()).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// A new XTMP client (full handshake).
    pub async fn xtmp(&self) -> Result<XTMPClient> {
        let mut o = self
            .xtmp_opts
            .clone()
            .ok_or_else(|| anyhow!("not an XTMP context"))?;
        // TCP: TIME_WAIT (above). idle-sessions over UDP: every client owns a socket, and
        // 100,000 of them from one address would need more ports than the ephemeral range.
        let rotate = match self.spec.transport {
            Transport::Tcp => true,
            Transport::Udp => self.spec.scenario == Scenario::IdleSessions,
            Transport::Hybrid | Transport::Ws => false,
        };
        if rotate && self.info.addr.ip().is_loopback() {
            o.local_address = Some(self.local());
        }
        Ok(XTMPClient::connect(self.addr(), o).await?)
    }

    /// A new QUIC connection.
    pub async fn quic(&self) -> Result<quinn::Connection> {
        let i = self.next_ep.fetch_add(1, Ordering::Relaxed) % self.endpoints.len().max(1);
        let ep = self
            .endpoints
            .get(i)
            .ok_or_else(|| anyhow!("not a QUIC context"))?;
        Ok(ep.connect(self.addr(), tls::SERVER_NAME)?.await?)
    }

    /// A new framed connection (TCP connect, plus the TLS handshake or the QUIC handshake
    /// and a bidirectional stream).
    pub async fn framed(&self) -> Result<(Framed, Option<quinn::Connection>)> {
        match self.peer {
            Peer::PlainTcp => {
                let s = self.tcp().await?;
                Ok((FrameConn::new(Box::new(s)), None))
            }
            Peer::Rustls => {
                let s = self.tcp().await?;
                let connector = self.tls.clone().ok_or_else(|| anyhow!("no TLS config"))?;
                let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME)?;
                let t = connector.connect(name, s).await?;
                Ok((FrameConn::new(Box::new(t)), None))
            }
            Peer::Quinn => {
                let conn = self.quic().await?;
                let (send, recv) = conn.open_bi().await?;
                Ok((
                    FrameConn::new(Box::new(tokio::io::join(recv, send))),
                    Some(conn),
                ))
            }
            p => bail!("{p} has no framed stream"),
        }
    }
}

/// The measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Counting starts.
    pub start: Instant,
    /// Counting stops.
    pub end: Instant,
}

impl Window {
    fn contains(&self, t0: Instant, t1: Instant) -> bool {
        t0 >= self.start && t1 <= self.end
    }
}

/// What one worker measured.
#[derive(Default)]
pub struct WorkerOut {
    /// Operations counted.
    pub ops: u64,
    /// Payload bytes counted.
    pub bytes: u64,
    /// Latencies of the counted operations.
    pub hist: Latency,
    /// Failed operations.
    pub errors: u64,
    /// Push streams: messages received over the whole run, and the highest sequence + 1.
    pub received_total: u64,
    /// See `received_total`.
    pub expected_total: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
}

impl WorkerOut {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    /// Adds another worker's figures.
    pub fn merge(&mut self, o: WorkerOut) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.hist.merge(&o.hist);
        self.errors += o.errors;
        self.received_total += o.received_total;
        self.expected_total += o.expected_total;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// A connection held by a worker.
pub enum Conn {
    /// XTMP.
    Xtmp(XTMPClient),
    /// A framed stream (and the QUIC connection under it).
    Framed(Box<Framed>, Option<quinn::Connection>),
    /// A connected UDP socket.
    Udp(UdpSocket),
    /// Idle QUIC connections (idle-sessions).
    Quic(Vec<quinn::Connection>),
}

impl Conn {
    /// Closes it cleanly.
    pub async fn close(self) {
        match self {
            Conn::Xtmp(c) => c.close().await,
            Conn::Framed(mut f, q) => {
                f.shutdown().await;
                if let Some(q) = q {
                    q.close(0u32.into(), b"done");
                }
            }
            Conn::Udp(_) => {}
            Conn::Quic(v) => {
                for q in v {
                    q.close(0u32.into(), b"done");
                }
            }
        }
    }
}

/// Opens the connection a worker of `ctx.spec.scenario` uses.
pub async fn connect(ctx: &Ctx, worker: usize, wallets: &[Arc<SigningKey>]) -> Result<Conn> {
    let conn = match ctx.peer {
        Peer::Xtmp => Conn::Xtmp(ctx.xtmp().await?),
        Peer::PlainUdp => {
            let s = UdpSocket::bind("127.0.0.1:0").await?;
            s.connect(ctx.addr()).await?;
            Conn::Udp(s)
        }
        _ => {
            let (f, q) = ctx.framed().await?;
            Conn::Framed(Box::new(f), q)
        }
    };
    // Per-connection setup outside the measured window.
    match (ctx.spec.scenario, &conn) {
        (Scenario::IdleSessions, Conn::Framed(..)) if ctx.peer == Peer::PlainTcp => {
            // One round trip: the session exists once the server served it.
            let Conn::Framed(mut f, q) = conn else {
                unreachable!()
            };
            f.call(op::ECHO, b"x", op::ECHO_REPLY).await?;
            return Ok(Conn::Framed(f, q));
        }
        (Scenario::WalletAuth | Scenario::BundleSubmit, Conn::Xtmp(c)) => {
            let key = wallet_of(wallets, worker)?;
            c.request_json::<_, serde_json::Value>(
                MessageType::WalletRegister,
                &wclient::register_request(key),
            )
            .await
            .context("WalletRegister")?;
            if ctx.spec.scenario == Scenario::BundleSubmit {
                xtmp_wallet_auth(c, key).await?;
            }
        }
        (Scenario::WalletAuth, Conn::Framed(..)) => {
            let Conn::Framed(mut f, q) = conn else {
                unreachable!()
            };
            let key = wallet_of(wallets, worker)?;
            f.call(op::AUTH_REGISTER, key.public_key().as_bytes(), op::OK)
                .await?;
            return Ok(Conn::Framed(f, q));
        }
        _ => {}
    }
    Ok(conn)
}

fn wallet_of(wallets: &[Arc<SigningKey>], worker: usize) -> Result<&SigningKey> {
    let senders = wallets.len().saturating_sub(1).max(1);
    wallets
        .get(worker % senders)
        .map(|w| &**w)
        .ok_or_else(|| anyhow!("no wallets"))
}

async fn xtmp_wallet_auth(c: &XTMPClient, key: &SigningKey) -> Result<()> {
    let step1: WalletAuthResponse = c
        .request_json(
            MessageType::WalletAuth,
            &wclient::auth_challenge_request(key),
        )
        .await
        .context("WalletAuth step 1")?;
    let answer = wclient::auth_answer_request(key, &step1).map_err(|e| anyhow!("{e}"))?;
    let step2: WalletAuthResponse = c
        .request_json(MessageType::WalletAuth, &answer)
        .await
        .context("WalletAuth step 2")?;
    if !step2.authenticated {
        bail!("wallet authentication refused");
    }
    Ok(())
}

async fn framed_wallet_auth(f: &mut Framed, key: &SigningKey) -> Result<()> {
    let ch = f.call(op::AUTH_CHALLENGE, &[], op::CHALLENGE).await?;
    if ch.len() != 40 {
        bail!("bad challenge");
    }
    let sid = u64::from_be_bytes(ch[..8].try_into()?);
    let challenge: [u8; 32] = ch[8..40].try_into()?;
    let sig = key
        .sign(&message::wallet_auth(sid, &challenge, &key.address()))
        .map_err(|e| anyhow!("{e}"))?;
    f.call(op::AUTH_ANSWER, &sig, op::OK).await?;
    Ok(())
}

fn payload(size: usize) -> Vec<u8> {
    // Not compressible (XTMP compression is off in the bench anyway).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Handshake worker: connect, complete the handshake, close; repeat.
pub async fn handshake_worker(ctx: Arc<Ctx>, w: Window) -> WorkerOut {
    let mut out = WorkerOut::default();
    while Instant::now() < w.end {
        let t0 = Instant::now();
        let r: Result<Conn> = async {
            Ok(match ctx.peer {
                Peer::Xtmp => Conn::Xtmp(ctx.xtmp().await?),
                Peer::PlainTcp => {
                    // Connect plus one round trip (the TLS and XTMP handshakes carry data
                    // too, and a connection is only counted once the server served it).
                    let (mut f, _) = ctx.framed().await?;
                    f.call(op::ECHO, b"x", op::ECHO_REPLY).await?;
                    Conn::Framed(Box::new(f), None)
                }
                Peer::Rustls => {
                    let (f, _) = ctx.framed().await?;
                    Conn::Framed(Box::new(f), None)
                }
                Peer::Quinn => {
                    let q = ctx.quic().await?;
                    q.close(0u32.into(), b"done");
                    Conn::Udp(UdpSocket::bind("127.0.0.1:0").await?)
                }
                Peer::PlainUdp => bail!("no handshake"),
            })
        }
        .await;
        let t1 = Instant::now();
        match r {
            Ok(c) => {
                if w.contains(t0, t1) {
                    out.ops += 1;
                    out.hist.record(t1 - t0);
                }
                c.close().await;
            }
            Err(e) => {
                out.error(format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

/// Request-response worker (echo of `size` bytes), closed loop, or paced at `rate`
/// requests/s for this worker (latency then counts from the intended send time).
pub async fn request_worker(
    mut conn: Conn,
    size: usize,
    w: Window,
    rate: Option<f64>,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    let body = payload(size);
    let mut n = 0u64;
    let paced_start = Instant::now();
    let mut udp_buf = vec![0u8; 65_536];
    while Instant::now() < w.end {
        let t0 = match rate {
            Some(r) if r > 0.0 => {
                let due = paced_start + Duration::from_secs_f64(n as f64 / r);
                n += 1;
                if due > Instant::now() {
                    // On time: the timer's own lateness (tokio's wheel has 1 ms steps) is
                    // the harness's, not the server's, so latency counts from the wake-up.
                    tokio::time::sleep_until(due).await;
                    Instant::now()
                } else {
                    // Behind schedule because earlier requests were slow: count from the
                    // intended send time (no coordinated omission).
                    due
                }
            }
            _ => Instant::now(),
        };
        let r: Result<()> = async {
            match &mut conn {
                Conn::Xtmp(c) => {
                    let resp = c.request(ECHO_TYPE, body.clone()).await?;
                    if resp.body.len() != size {
                        bail!("echo of {} bytes for {size}", resp.body.len());
                    }
                }
                Conn::Framed(f, _) => {
                    let r = f.call(op::ECHO, &body, op::ECHO_REPLY).await?;
                    if r.len() != size {
                        bail!("echo of {} bytes for {size}", r.len());
                    }
                }
                Conn::Udp(s) => {
                    let mut d = Vec::with_capacity(size + 1);
                    d.push(op::ECHO);
                    d.extend_from_slice(&body);
                    s.send(&d).await?;
                    match tokio::time::timeout(Duration::from_secs(1), s.recv(&mut udp_buf)).await {
                        Ok(r) => {
                            r?;
                        }
                        Err(_) => bail!("datagram lost"),
                    }
                }
                Conn::Quic(_) => bail!("idle connections carry no requests"),
            }
            Ok(())
        }
        .await;
        let t1 = Instant::now();
        match r {
            Ok(()) => {
                if w.contains(t0, t1) {
                    out.ops += 1;
                    out.bytes += size as u64;
                    out.hist.record(t1 - t0);
                }
            }
            Err(e) => {
                out.error(format!("{e:#}"));
                if !matches!(conn, Conn::Udp(_)) {
                    break;
                }
            }
        }
    }
    conn.close().await;
    out
}

/// Bulk worker: one-way messages of `size` bytes as fast as the connection takes them.
/// XTMP keeps 32 `send`s outstanding so its writer can batch; the peers write through a
/// 64 KiB buffer (the same batching). A message counts when it was handed to the socket.
pub async fn bulk_worker(mut conn: Conn, size: usize, w: Window) -> WorkerOut {
    let mut out = WorkerOut::default();
    let body = payload(size);
    match &mut conn {
        Conn::Xtmp(c) => {
            // `send_batch` seals a batch straight into the connection's write buffer (one
            // wake-up of its writer per batch), as the framed peers queue 64 KiB into
            // their buffer and flush it: batches of 64 KiB here too.
            let per_batch = (64 * 1024 / size.max(1)).max(1);
            let batch: Vec<&[u8]> = vec![&body[..]; per_batch];
            let mut tally = Tally::new(size);
            while Instant::now() < w.end {
                if let Err(e) = c.send_batch(SINK_TYPE, &batch).await {
                    out.error(e);
                    break;
                }
                tally.batch += per_batch as u64;
                tally.count(&mut out, &w);
            }
            // Everything sent was read by the server once this echo comes back.
            if let Err(e) = c.request(ECHO_TYPE, vec![0u8; 8]).await {
                out.error(e);
            }
        }
        Conn::Framed(f, _) => {
            let mut tally = Tally::new(size);
            loop {
                if Instant::now() >= w.end {
                    break;
                }
                f.queue(op::SINK, &body);
                tally.batch += 1;
                if f.queued() >= 64 * 1024 {
                    if let Err(e) = f.flush().await {
                        out.error(e);
                        break;
                    }
                    tally.count(&mut out, &w);
                }
            }
            match f.call(op::SYNC, &[], op::SYNC_REPLY).await {
                Ok(_) => {}
                Err(e) => out.error(e),
            }
        }
        Conn::Udp(_) | Conn::Quic(_) => out.error("bulk needs a reliable stream"),
    }
    conn.close().await;
    out
}

/// Bulk messages counted a batch at a time: a batch counts if it started and ended inside
/// the measured window.
struct Tally {
    size: u64,
    batch: u64,
    t0: Instant,
}

impl Tally {
    fn new(size: usize) -> Self {
        Self {
            size: size as u64,
            batch: 0,
            t0: Instant::now(),
        }
    }

    /// Closes the current batch (now) and starts the next.
    fn count(&mut self, out: &mut WorkerOut, w: &Window) {
        let t1 = Instant::now();
        if w.contains(self.t0, t1) {
            out.ops += self.batch;
            out.bytes += self.batch * self.size;
        }
        self.batch = 0;
        self.t0 = t1;
    }
}

/// Push-stream worker: subscribes (XTMP) or starts a stream (peers: frames on the stream,
/// QUIC and plain UDP: datagrams) and receives until the window ends. Latency is one-way
/// (server send time to client receive time, both from the machine's realtime clock).
pub async fn stream_worker(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    size: usize,
    rate: u32,
    w: Window,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    let mut max_seq: Option<u64> = None;
    let mut on_msg = |out: &mut WorkerOut, body: &[u8]| {
        let now = Instant::now();
        let Some((ts, seq)) = frame::parse_push(body) else {
            out.error("malformed push");
            return;
        };
        out.received_total += 1;
        max_seq = Some(max_seq.map_or(seq, |m: u64| m.max(seq)));
        if now >= w.start && now <= w.end {
            out.ops += 1;
            out.bytes += body.len() as u64;
            out.hist.record_ns(unix_ns().saturating_sub(ts));
        }
    };
    let datagrams = matches!(ctx.peer, Peer::Quinn | Peer::PlainUdp);
    let params = frame::stream_params(
        u32::try_from(size).unwrap_or(u32::MAX),
        match (datagrams, ctx.spec.scenario) {
            // The same overflow policy as the XTMP route of the scenario.
            (true, Scenario::MetricsStream) => frame::MODE_DATAGRAM_DROP_OLDEST,
            (true, _) => frame::MODE_DATAGRAM,
            (false, _) => frame::MODE_STREAM,
        },
        0,
        rate,
    );
    // One timer for the whole window (not one per message received).
    let end = tokio::time::sleep_until(w.end);
    tokio::pin!(end);
    let r: Result<()> = async {
        match &mut conn {
            Conn::Xtmp(c) => {
                let t = if ctx.spec.scenario == Scenario::MetricsStream {
                    MessageType::MetricsStream
                } else {
                    MessageType::LiveUpdates
                };
                let mut sub = c.subscribe(t, params).await?;
                loop {
                    match before(&mut end, sub.recv()).await {
                        None => break,
                        Some(None) => bail!("subscription ended"),
                        Some(Some(Err(e))) => bail!("subscription: {e}"),
                        Some(Some(Ok(m))) => on_msg(&mut out, &m.body),
                    }
                }
            }
            Conn::Framed(f, q) => {
                f.send(op::STREAM, &params).await?;
                if let (true, Some(q)) = (datagrams, q) {
                    loop {
                        match before(&mut end, q.read_datagram()).await {
                            None => break,
                            Some(d) => on_msg(&mut out, &d?),
                        }
                    }
                } else {
                    loop {
                        match before(&mut end, f.recv()).await {
                            None => break,
                            Some(Ok(Some((op::PUSH, b)))) => on_msg(&mut out, &b),
                            Some(Ok(Some((o, _)))) => bail!("unexpected op {o}"),
                            Some(Ok(None)) => bail!("stream ended"),
                            Some(Err(e)) => return Err(e),
                        }
                    }
                }
            }
            Conn::Udp(s) => {
                let mut d = vec![op::STREAM];
                d.extend_from_slice(&params);
                s.send(&d).await?;
                let mut buf = vec![0u8; 65_536];
                loop {
                    match before(&mut end, s.recv(&mut buf)).await {
                        None => break,
                        Some(n) => {
                            let n = n?;
                            if let Some((&op::PUSH, b)) = buf[..n].split_first() {
                                on_msg(&mut out, b);
                            }
                        }
                    }
                }
                for _ in 0..3 {
                    let _ = s.send(&[op::STOP]).await;
                }
            }
            Conn::Quic(_) => bail!("idle connections carry no streams"),
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        out.error(format!("{e:#}"));
    }
    out.expected_total = max_seq.map_or(0, |m| m + 1);
    conn.close().await;
    out
}

/// `f`, unless `end` passes first (`None`). The deadline is checked before each wait.
async fn before<F: std::future::Future>(
    end: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    f: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = end.as_mut() => None,
        r = f => Some(r),
    }
}

/// Wallet-auth worker: challenge, ML-DSA-65 signature, verification; repeat.
pub async fn wallet_auth_worker(mut conn: Conn, key: Arc<SigningKey>, w: Window) -> WorkerOut {
    let mut out = WorkerOut::default();
    while Instant::now() < w.end {
        let t0 = Instant::now();
        let r = match &mut conn {
            Conn::Xtmp(c) => xtmp_wallet_auth(c, &key).await,
            Conn::Framed(f, _) => framed_wallet_auth(f, &key).await,
            Conn::Udp(_) | Conn::Quic(_) => Err(anyhow!("no datagram wallet auth")),
        };
        let t1 = Instant::now();
        match r {
            Ok(()) if w.contains(t0, t1) => {
                out.ops += 1;
                out.hist.record(t1 - t0);
            }
            Ok(()) => {}
            Err(e) => {
                out.error(format!("{e:#}"));
                break;
            }
        }
    }
    conn.close().await;
    out
}

/// Bundle-submit worker: one pre-signed transfer per bundle from the shared pool.
pub async fn bundle_worker(
    conn: Conn,
    pool: Arc<Vec<SignedTransaction>>,
    next: Arc<AtomicUsize>,
    exhausted: Arc<AtomicU64>,
    w: Window,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    let Conn::Xtmp(c) = &conn else {
        out.error("bundle-submit is XTMP only");
        return out;
    };
    while Instant::now() < w.end {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(tx) = pool.get(i) else {
            exhausted.fetch_add(1, Ordering::Relaxed);
            break;
        };
        let req = BundleSubmitRequest {
            transactions: vec![tx.clone()],
        };
        let t0 = Instant::now();
        let r: Result<BundleSubmitResponse, _> =
            c.request_json(MessageType::BundleSubmit, &req).await;
        let t1 = Instant::now();
        match r {
            Ok(resp) if resp.created => {
                if w.contains(t0, t1) {
                    out.ops += 1;
                    out.hist.record(t1 - t0);
                }
            }
            Ok(_) => out.error("bundle was not new (created: false)"),
            Err(e) => {
                out.error(e);
                break;
            }
        }
    }
    conn.close().await;
    out
}
