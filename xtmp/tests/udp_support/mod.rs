//! Test support for the datagram transport: an in-process lossy UDP relay (this machine's
//! kernel has no `netem` qdisc), deterministic, bounded.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Impairments applied to every datagram, in both directions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairments {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Probability a datagram is sent twice.
    pub duplicate: f64,
    /// Probability a datagram is held back and sent after the next one.
    pub reorder: f64,
}

#[derive(Default)]
pub struct RelayStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
}

struct Shared {
    imp: Mutex<Impairments>,
    blocked: AtomicBool,
    rng: Mutex<u64>,
    client: Mutex<Option<SocketAddr>>,
    upstream: Mutex<Arc<UdpSocket>>,
    stats: RelayStats,
}

impl Shared {
    fn roll(&self) -> f64 {
        let mut x = self.rng.lock().unwrap();
        // xorshift64*: deterministic for a seed.
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A relay between one client and a UDP server: the client talks to `addr()`, the server
/// sees the relay's upstream socket as the client.
pub struct LossyRelay {
    addr: SocketAddr,
    server: SocketAddr,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    front: Arc<UdpSocket>,
}

/// Sends `d` out of `sock` to `to` with the impairments; `held` is the reordering slot.
async fn impair_send(
    shared: &Shared,
    sock: &UdpSocket,
    to: SocketAddr,
    d: Vec<u8>,
    held: &mut Option<(SocketAddr, Vec<u8>)>,
) {
    if shared.blocked.load(Ordering::Relaxed) {
        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let imp = *shared.imp.lock().unwrap();
    if shared.roll() < imp.loss {
        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if held.is_none() && shared.roll() < imp.reorder {
        shared.stats.reordered.fetch_add(1, Ordering::Relaxed);
        *held = Some((to, d));
        return;
    }
    let dup = shared.roll() < imp.duplicate;
    let _ = sock.send_to(&d, to).await;
    shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    if dup {
        shared.stats.duplicated.fetch_add(1, Ordering::Relaxed);
        let _ = sock.send_to(&d, to).await;
    }
    if let Some((t, h)) = held.take() {
        let _ = sock.send_to(&h, t).await;
    }
}

async fn flush_held(sock: &UdpSocket, held: &mut Option<(SocketAddr, Vec<u8>)>) {
    if let Some((t, h)) = held.take() {
        let _ = sock.send_to(&h, t).await;
    }
}

impl LossyRelay {
    pub async fn start(server: SocketAddr, imp: Impairments, seed: u64) -> Arc<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let shared = Arc::new(Shared {
            imp: Mutex::new(imp),
            blocked: AtomicBool::new(false),
            rng: Mutex::new(seed | 1),
            client: Mutex::new(None),
            upstream: Mutex::new(upstream.clone()),
            stats: RelayStats::default(),
        });
        let relay = Arc::new(Self {
            addr: front.local_addr().unwrap(),
            server,
            shared: shared.clone(),
            tasks: Mutex::new(Vec::new()),
            front: front.clone(),
        });
        // Client → server.
        let (s, f) = (shared.clone(), front.clone());
        let t1 = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut held = None;
            loop {
                let r = tokio::time::timeout(Duration::from_millis(3), f.recv_from(&mut buf)).await;
                let up = s.upstream.lock().unwrap().clone();
                match r {
                    Ok(Ok((n, from))) => {
                        *s.client.lock().unwrap() = Some(from);
                        impair_send(&s, &up, server, buf[..n].to_vec(), &mut held).await;
                    }
                    Ok(Err(_)) => {}
                    Err(_) => flush_held(&up, &mut held).await,
                }
            }
        });
        relay.tasks.lock().unwrap().push(t1);
        relay.spawn_downstream(upstream);
        relay
    }

    fn spawn_downstream(&self, up: Arc<UdpSocket>) {
        let (s, f) = (self.shared.clone(), self.front.clone());
        let t = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut held = None;
            loop {
                let r =
                    tokio::time::timeout(Duration::from_millis(3), up.recv_from(&mut buf)).await;
                match r {
                    Ok(Ok((n, _))) => {
                        let Some(c) = *s.client.lock().unwrap() else {
                            continue;
                        };
                        impair_send(&s, &f, c, buf[..n].to_vec(), &mut held).await;
                    }
                    Ok(Err(_)) => {}
                    Err(_) => flush_held(&f, &mut held).await,
                }
            }
        });
        self.tasks.lock().unwrap().push(t);
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops everything while `on` (UDP blocked entirely).
    pub fn block(&self, on: bool) {
        self.shared.blocked.store(on, Ordering::Relaxed);
    }

    pub fn set_impairments(&self, imp: Impairments) {
        *self.shared.imp.lock().unwrap() = imp;
    }

    pub fn stats(&self) -> &RelayStats {
        &self.shared.stats
    }

    /// The client "roams": the server sees its datagrams from a new address from now on.
    pub async fn rebind_upstream(&self) -> SocketAddr {
        let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let a = up.local_addr().unwrap();
        *self.shared.upstream.lock().unwrap() = up.clone();
        self.spawn_downstream(up);
        a
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

// ------------------------------------------------------------------------------------
// A protocol client over UDP driven frame by frame (through xtmp-proto directly)
// ------------------------------------------------------------------------------------

use xtmp_proto::datagram::{fragment_handshake, next_frame, parse_fragment, Reassembler};
use xtmp_proto::xtmp_crypto::xwing::XWingPublicKey;
use xtmp_proto::{
    ClientConfig, ClientHandshake, ClientOutcome, Header, MessageType, ReplayMode, Session,
    XTMPFlags, HEADER_LEN,
};

pub struct RawRng;
impl xtmp_proto::SecureRandom for RawRng {
    fn fill(&mut self, d: &mut [u8]) {
        xtmp::OsRng.fill(d)
    }
}

pub struct RawUdp {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub session: Option<Box<Session>>,
}

pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

impl RawUdp {
    pub async fn new(server: SocketAddr) -> Self {
        Self {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            session: None,
        }
    }

    pub async fn send(&self, d: &[u8]) {
        self.sock.send_to(d, self.server).await.unwrap();
    }

    /// The next datagram, or `None` after `timeout`.
    pub async fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout(timeout, self.sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    /// The whole UDP handshake: probe, Retry, fragments with the cookie, answer fragments.
    pub async fn handshake(&mut self, key: &XWingPublicKey) {
        let (mut hs, m1) =
            ClientHandshake::start(ClientConfig::new(key.clone()), unix_ns(), &mut RawRng).unwrap();
        let frags = fragment_handshake(&m1, None, 1, 1200).unwrap();
        self.send(&frags[0]).await;
        let retry = self.recv(Duration::from_secs(5)).await.expect("a Retry");
        assert_eq!(retry.len(), 112);
        let ClientOutcome::Retry(m1c) = hs.handle(std::time::Instant::now(), &retry).unwrap()
        else {
            panic!("expected Retry")
        };
        let cookie: [u8; 16] = retry[HEADER_LEN..].try_into().unwrap();
        let frags = fragment_handshake(&m1c, Some(&cookie), 2, 1200).unwrap();
        for f in &frags {
            self.send(f).await;
        }
        let mut r: Reassembler<()> = Reassembler::new(Default::default());
        loop {
            let d = self
                .recv(Duration::from_secs(5))
                .await
                .expect("answer fragments");
            let mut pos = 0;
            while let Some(Ok(range)) = next_frame(&d, pos, u32::MAX) {
                pos = range.end;
                let f = parse_fragment(&d[range]).unwrap();
                if let Some(whole) = r.handle(std::time::Instant::now(), (), &f).unwrap() {
                    let ClientOutcome::Established(mut s) =
                        hs.handle(std::time::Instant::now(), &whole).unwrap()
                    else {
                        panic!("expected Established")
                    };
                    s.set_replay_mode(ReplayMode::Window);
                    self.session = Some(s);
                    return;
                }
            }
        }
    }

    pub fn seal(&mut self, t: MessageType, flags: XTMPFlags, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.session
            .as_mut()
            .unwrap()
            .seal(t, flags, payload, &mut out)
            .unwrap();
        out
    }

    /// A `RELIABLE` request: message id ‖ body.
    pub fn seal_reliable(&mut self, t: MessageType, id: u64, body: &[u8]) -> Vec<u8> {
        let p = xtmp_proto::datagram::reliable_payload(id, body);
        self.seal(t, XTMPFlags::RELIABLE, &p)
    }

    /// Opens every frame of the datagrams that arrive within `timeout`; returns the
    /// application messages (type, flags, plaintext).
    pub async fn collect(&mut self, timeout: Duration) -> Vec<(Header, Vec<u8>)> {
        self.collect_until(timeout, |_| false).await
    }

    /// As [`RawUdp::collect`], returning as soon as `done` holds for what arrived.
    pub async fn collect_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[(Header, Vec<u8>)]) -> bool,
    ) -> Vec<(Header, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            if done(&out) {
                return out;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(mut d) = self.recv(left).await else {
                return out;
            };
            let mut pos = 0;
            while let Some(Ok(range)) = next_frame(&d, pos, u32::MAX) {
                pos = range.end;
                let s = self.session.as_mut().unwrap();
                if let Ok(xtmp_proto::Received::Message { header, payload }) =
                    s.open(std::time::Instant::now(), &mut d[range], &mut RawRng)
                {
                    out.push((header, payload.into_owned()));
                }
            }
        }
    }
}
