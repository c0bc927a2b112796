//! idle-sessions: open N sessions, hold them idle for the measured window, and report the
//! server's resident-memory growth per session, its CPU while they sit idle, and how many
//! sessions still answer a ping at the end; then close them all.
//!
//! XTMP over UDP (`--transport udp`, `UdpFast`): the server holds every session on one
//! socket, but each `XTMPClient` owns a UDP socket, so the clients are spread over child
//! processes of this binary (`xtmp-bench idle-clients`, hidden), each under the per-process
//! descriptor limit (20,000 here: 100,000 sessions → 6 processes of 16,667). A child prints
//! one JSON line when its sessions are open ([`ChildReady`]) and answers `stats`
//! ([`ProcStats`]), `ping` ([`ChildPing`]) and `close` ([`ChildClosed`], then exits) on
//! stdin. Every other peer and transport opens its connections in this process (a TCP
//! server needs a descriptor per session, so more client processes would not help it).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures_util::stream::{self, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinSet;
use tokio::time::Instant;
use xtmp::{ClientError, XTMPClient};

use crate::client::{Conn, Ctx};
use crate::run::{open_conns, RunResult, ServerProc};
use crate::server::ServerInfo;
use crate::spec::{Peer, RunSpec, Transport};
use crate::stats::{self, ProcStats};

/// Descriptors a client process keeps for itself (runtime, pipes, libraries).
const CHILD_FD_RESERVE: u64 = 2_000;
/// Handshakes in flight over all client processes (the server does at most 64 UDP
/// handshakes' KEM work at once and drops the rest, which the clients then repeat).
const OPEN_PARALLEL: usize = 64;
/// Pings in flight per client process.
const PING_PARALLEL: usize = 64;
/// Sessions closed per second over all client processes: each close is one `Disconnect`
/// datagram, and a burst from every process at once overflows the server's socket buffer
/// (a lost `Disconnect` leaves the session to the server's heartbeat timeout, 45 s).
const CLOSE_RATE: f64 = 5_000.0;
/// Load-generator client memory per UDP session assumed by the memory check (measured
/// ~60 KB, see [`CLIENT_MALLOC_TUNABLE`]), plus the server's share.
const EST_BYTES_PER_UDP_SESSION: u64 = 96 * 1024;
/// Environment of the client processes. Each `XTMPClient` over UDP allocates 8 × 64 KiB
/// receive slots (plus 4 × 64 KiB during the handshake, freed after); with glibc's default
/// threshold those come from the heap, and reusing the freed handshake slots (`calloc`
/// clears them) makes ~300 KB resident per client — 30 GB for 100,000. Served by `mmap`
/// instead (≥ 64 KiB, and no cap on the number of mmapped chunks: glibc's default of
/// 65,536 is reached at ~8,000 clients), untouched pages stay unmapped: ~60 KB per client.
/// Only the load generator's processes get it; the server's allocator is left alone.
const CLIENT_MALLOC_TUNABLE: (&str, &str) = (
    "GLIBC_TUNABLES",
    "glibc.malloc.mmap_threshold=65536:glibc.malloc.mmap_max=16777216",
);

/// What a client process says once its sessions are open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildReady {
    /// Sessions open.
    pub opened: usize,
    /// Sessions that could not be opened (after retries).
    pub failed: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// Seconds spent opening.
    pub secs: f64,
    /// Resident memory before opening (KiB).
    pub rss_kib_before: u64,
}

/// A client process's answer to `ping`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChildPing {
    /// Sessions that answered.
    pub alive: usize,
    /// Sessions that did not (closed, or no answer to three pings).
    pub dead: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// Slowest answer (µs).
    pub max_rtt_us: f64,
}

/// A client process's answer to `close`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildClosed {
    /// Sessions closed.
    pub closed: usize,
    /// Seconds it took.
    pub secs: f64,
}

// ---------------------------------------------------------------------------------------
// The scenario (load generator side)
// ---------------------------------------------------------------------------------------

/// Runs idle-sessions against one peer's server.
pub async fn idle_sessions(
    ctx: Arc<Ctx>,
    spec: &RunSpec,
    server: &mut ServerProc,
    mut res: RunResult,
) -> Result<RunResult> {
    let n = spec.concurrency;
    let limit = stats::raise_nofile_limit();
    let external = matches!(server, ServerProc::External { .. });
    let spread = ctx.peer == Peer::Xtmp && spec.transport == Transport::Udp;
    if spread {
        let need = n as u64 * EST_BYTES_PER_UDP_SESSION;
        if let Some(avail) = mem_available() {
            if need > avail {
                return Ok(RunResult {
                    status: "skipped".into(),
                    note: Some(format!(
                        "not run: {n} UDP sessions need about {} MiB (client processes and \
                         server), {} MiB available",
                        need >> 20,
                        avail >> 20
                    )),
                    ..res
                });
            }
        }
    } else if let Some(why) = fd_shortfall(&ctx, n, limit, server) {
        return Ok(RunResult {
            status: "skipped".into(),
            note: Some(why),
            ..res
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Kernel receive-buffer drops per phase (UDP only; the counter is the machine's).
    let mut drops = vec![("before", udp_rcvbuf_errors())];
    let s0 = server.stats().await;
    let c0 = ProcStats::now();
    let t = Instant::now();
    let mut clients = if spread {
        Clients::Procs(ClientProcs::spawn(&ctx, spec, n, limit).await?)
    } else {
        Clients::Local(open_idle(&ctx, n).await?)
    };
    let setup = t.elapsed().as_secs_f64();
    let (opened, failed, first_error) = clients.opened();
    // Wait until the server holds them all (an external server's count is unknown).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !external && Instant::now() < deadline {
        match server.stats().await {
            Some(s) if (s.connections as usize) < opened => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => break,
        }
    }
    // Hold them idle for the measured window.
    drops.push(("opening", udp_rcvbuf_errors()));
    let s_open = server.stats().await;
    tokio::time::sleep(spec.duration).await;
    let s1 = server.stats().await;
    drops.push(("hold", udp_rcvbuf_errors()));
    let c1 = ProcStats::now();
    let client_kib = match &mut clients {
        Clients::Local(_) => c1.rss_kib.saturating_sub(c0.rss_kib),
        Clients::Procs(p) => p.rss_growth_kib().await,
    };
    let held = match (&s1, external) {
        (Some(s), false) => (s.connections as usize).min(opened),
        _ => opened,
    };
    res.duration_s = spec.duration.as_secs_f64();
    res.ops = held as u64;
    res.throughput = held as f64;
    res.open_rate = Some(opened as f64 / setup.max(1e-9));
    res.errors = failed as u64;
    res.first_error = first_error;
    res.client_peak_rss_mib = c1.peak_rss_kib as f64 / 1024.0;
    let per = |kib: u64| kib as f64 * 1024.0 / held.max(1) as f64;
    res.client_bytes_per_session = Some(per(client_kib));
    let mut notes = Vec::new();
    if let (Some(a), Some(b)) = (s0, s1) {
        res.server_bytes_per_session = Some(per(b.proc.rss_kib.saturating_sub(a.proc.rss_kib)));
        res.server_rss_mib = Some(b.proc.rss_kib as f64 / 1024.0);
        res.server_peak_rss_mib = Some(b.proc.peak_rss_kib as f64 / 1024.0);
        res.server_cpu_s = Some(b.proc.cpu_us().saturating_sub(a.proc.cpu_us()) as f64 / 1e6);
        if !external && (b.connections as usize) < opened {
            notes.push(format!(
                "the server reported {} open sessions of {opened}",
                b.connections
            ));
        }
    }
    if let (Some(a), Some(b)) = (s_open, s1) {
        let cpu = b.proc.cpu_us().saturating_sub(a.proc.cpu_us()) as f64;
        res.server_idle_cpu_pct = Some(100.0 * cpu / 1e6 / spec.duration.as_secs_f64());
        if b.key_rotations > a.key_rotations {
            notes.push(format!(
                "{} session key rotations during the hold",
                b.key_rotations - a.key_rotations
            ));
        }
    }
    notes.push(format!(
        "opened {opened} sessions in {setup:.1} s ({:.0}/s){}",
        opened as f64 / setup.max(1e-9),
        match &clients {
            Clients::Procs(p) => format!(" from {} client processes", p.procs.len()),
            Clients::Local(_) => String::new(),
        }
    ));
    // Still alive after the hold? (XTMP: a heartbeat ping on every session.)
    if let Some(ping) = clients.ping().await {
        res.sessions_alive = Some(ping.alive as u64);
        if let Some(s) = server.stats().await.filter(|_| !external) {
            notes.push(format!(
                "{} of {opened} answered a ping after the {:.0} s hold (max RTT {:.1} ms), server sessions_active {}",
                ping.alive,
                spec.duration.as_secs_f64(),
                ping.max_rtt_us / 1000.0,
                s.connections
            ));
        } else {
            notes.push(format!("{} of {opened} answered a ping", ping.alive));
        }
        if ping.dead > 0 {
            res.errors += ping.dead as u64;
            if res.first_error.is_none() {
                res.first_error = ping.first_error.clone();
            }
        }
    }
    drops.push(("ping", udp_rcvbuf_errors()));
    if let Clients::Procs(p) = &clients {
        res.client_processes = Some(p.procs.len());
    }
    // Close them all (XTMP: Disconnect) and see the server let go of them.
    let closing = Instant::now();
    clients.close().await;
    if !external {
        // XTMP: every session must be gone (over UDP a lost `Disconnect` leaves it to the
        // heartbeat timeout, 45–60 s). The peers are only reported (quinn's close is not
        // awaited).
        let wait = match (ctx.peer, spread) {
            (Peer::Xtmp, true) => 90,
            (Peer::Xtmp, false) => 30,
            _ => 3,
        };
        let deadline = Instant::now() + Duration::from_secs(wait);
        let mut left = None;
        while let Some(s) = server.stats().await {
            left = Some(s.connections);
            if s.connections == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(l) = left {
            if l == 0 {
                notes.push(format!(
                    "all closed in {:.1} s",
                    closing.elapsed().as_secs_f64()
                ));
            } else {
                notes.push(format!(
                    "{l} sessions still open on the server {wait} s after closing"
                ));
            }
        }
    }
    drops.push(("closing", udp_rcvbuf_errors()));
    let phases: Vec<String> = drops
        .windows(2)
        .filter_map(|w| match (w[0].1, w[1].1) {
            (Some(a), Some(b)) if b > a => Some(format!("{} {}", w[1].0, b - a)),
            _ => None,
        })
        .collect();
    if spread && !phases.is_empty() {
        notes.push(format!(
            "datagrams dropped by full UDP receive buffers (kernel, whole machine): {}",
            phases.join(", ")
        ));
    }
    if let Some(x) = res.note.take() {
        notes.insert(0, x);
    }
    res.note = Some(notes.join("; "));
    if held == 0 {
        res.status = "failed".into();
    }
    Ok(res)
}

/// Why `n` sessions held by this process do not fit under the descriptor limit, if so.
fn fd_shortfall(ctx: &Ctx, n: usize, limit: u64, server: &ServerProc) -> Option<String> {
    let in_proc = matches!(server, ServerProc::InProc { .. });
    let per_conn_fds = match ctx.peer {
        Peer::Quinn => 0,
        _ => 1,
    };
    let server_fds = if ctx.peer == Peer::Quinn { 0 } else { n };
    let client_fds = per_conn_fds * n;
    let needed = if in_proc {
        server_fds + client_fds
    } else {
        server_fds.max(client_fds)
    };
    (needed + 256 > limit as usize).then(|| {
        let hint = if ctx.peer == Peer::Xtmp && ctx.spec.transport != Transport::Udp {
            "; XTMP over UDP (--transport udp) holds every session on one server socket"
        } else {
            ""
        };
        format!(
            "not run: {n} sessions need about {needed} file descriptors in one process, \
             over this machine's per-process limit of {limit} (no CAP_SYS_RESOURCE to raise it); \
             a TCP server holds one descriptor per session, so more client processes would not help{hint}"
        )
    })
}

/// The kernel's count of UDP datagrams dropped because a socket's receive buffer was full
/// (`/proc/net/snmp`, `Udp: RcvbufErrors`; every socket of the machine).
fn udp_rcvbuf_errors() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = s.lines().filter(|l| l.starts_with("Udp:"));
    let names = udp.next()?;
    let values = udp.next()?;
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// `MemAvailable` in bytes.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The sessions being held.
enum Clients {
    /// In this process.
    Local(Vec<Conn>),
    /// In client processes.
    Procs(ClientProcs),
}

impl Clients {
    /// (opened, failed, first error).
    fn opened(&self) -> (usize, usize, Option<String>) {
        match self {
            Clients::Local(v) => (
                v.iter()
                    .map(|c| match c {
                        Conn::Quic(v) => v.len(),
                        _ => 1,
                    })
                    .sum(),
                0,
                None,
            ),
            Clients::Procs(p) => (
                p.ready.iter().map(|r| r.opened).sum(),
                p.ready.iter().map(|r| r.failed).sum(),
                p.ready.iter().find_map(|r| r.first_error.clone()),
            ),
        }
    }

    /// Pings every XTMP session (`None` for the peers: they have no ping here).
    async fn ping(&mut self) -> Option<ChildPing> {
        match self {
            Clients::Local(v) => {
                let xs: Vec<&XTMPClient> = v
                    .iter()
                    .filter_map(|c| match c {
                        Conn::Xtmp(x) => Some(x),
                        _ => None,
                    })
                    .collect();
                if xs.is_empty() {
                    return None;
                }
                Some(ping_all(&xs).await)
            }
            Clients::Procs(p) => Some(p.ping().await),
        }
    }

    async fn close(self) {
        match self {
            Clients::Local(v) => {
                stream::iter(v)
                    .map(|c| c.close())
                    .buffer_unordered(PING_PARALLEL)
                    .count()
                    .await;
            }
            Clients::Procs(p) => p.close().await,
        }
    }
}

async fn open_idle(ctx: &Arc<Ctx>, n: usize) -> Result<Vec<Conn>> {
    if ctx.peer == Peer::Quinn {
        // Idle QUIC connections without a stream.
        let mut set = JoinSet::new();
        let mut next = 0usize;
        let mut holders = Vec::with_capacity(n);
        loop {
            while set.len() < 64 && next < n {
                let ctx = ctx.clone();
                set.spawn(async move { ctx.quic().await });
                next += 1;
            }
            match set.join_next().await {
                None => break,
                Some(j) => holders.push(j.map_err(|e| anyhow!("connect task: {e}"))??),
            }
        }
        return Ok(vec![Conn::Quic(holders)]);
    }
    open_conns(ctx, n, &Arc::new(Vec::new())).await
}

/// Pings every client (three tries of 5 s each: a lost datagram is not a dead session).
async fn ping_all(clients: &[&XTMPClient]) -> ChildPing {
    let results: Vec<Result<Duration, String>> = stream::iter(clients.iter())
        .map(|c| async move {
            let mut last = String::from("no answer");
            for _ in 0..3 {
                match tokio::time::timeout(Duration::from_secs(5), c.ping()).await {
                    Ok(Ok(rtt)) => return Ok(rtt),
                    Ok(Err(ClientError::Timeout)) | Err(_) => {
                        last = "no answer to 3 pings of 5 s".into();
                    }
                    Ok(Err(e)) => return Err(e.to_string()),
                }
            }
            Err(last)
        })
        .buffer_unordered(PING_PARALLEL)
        .collect()
        .await;
    let mut out = ChildPing::default();
    for r in results {
        match r {
            Ok(rtt) => {
                out.alive += 1;
                out.max_rtt_us = out.max_rtt_us.max(rtt.as_secs_f64() * 1e6);
            }
            Err(e) => {
                out.dead += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Client processes, seen from the load generator
// ---------------------------------------------------------------------------------------

struct ClientProc {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
}

impl ClientProc {
    async fn read<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T> {
        let line = tokio::time::timeout(timeout, self.out.next_line())
            .await
            .context("a client process did not answer in time")??
            .ok_or_else(|| anyhow!("a client process exited"))?;
        serde_json::from_str(&line).with_context(|| format!("client process said {line:?}"))
    }

    async fn ask<T: DeserializeOwned>(&mut self, cmd: &str, timeout: Duration) -> Result<T> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        self.read(timeout).await
    }
}

struct ClientProcs {
    procs: Vec<ClientProc>,
    ready: Vec<ChildReady>,
}

impl ClientProcs {
    /// Starts enough client processes for `n` sessions and waits until they are open.
    async fn spawn(ctx: &Ctx, spec: &RunSpec, n: usize, limit: u64) -> Result<Self> {
        let per_proc = limit.saturating_sub(CHILD_FD_RESERVE).max(1_000) as usize;
        let nprocs = n.div_ceil(per_proc).max(1);
        let parallel = (OPEN_PARALLEL / nprocs).max(8);
        let exe = std::env::current_exe().context("locating xtmp-bench")?;
        let spec_json = serde_json::to_string(spec)?;
        let info_json = serde_json::to_string(&ctx.info)?;
        let mut procs = Vec::with_capacity(nprocs);
        let mut first = 0usize;
        for i in 0..nprocs {
            let count = n / nprocs + usize::from(i < n % nprocs);
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.arg("idle-clients")
                .arg("--spec")
                .arg(&spec_json)
                .arg("--server")
                .arg(&info_json)
                .arg("--first")
                .arg(first.to_string())
                .arg("--count")
                .arg(count.to_string())
                .arg("--parallel")
                .arg(parallel.to_string());
            if let Some(r) = spec.rate {
                cmd.arg("--rate").arg((r / nprocs as f64).to_string());
            }
            cmd.arg("--close-rate")
                .arg((CLOSE_RATE / nprocs as f64).to_string());
            let mut child = cmd
                .env(CLIENT_MALLOC_TUNABLE.0, CLIENT_MALLOC_TUNABLE.1)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a client process")?;
            let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
            let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
            procs.push(ClientProc {
                child,
                stdin,
                out: BufReader::new(stdout).lines(),
            });
            first += count;
        }
        // Opening runs at a few thousand per second on 2 cores; allow 10 ms per session.
        let timeout = Duration::from_secs(120) + Duration::from_millis(10) * n as u32;
        let ready = futures_util::future::try_join_all(
            procs.iter_mut().map(|p| p.read::<ChildReady>(timeout)),
        )
        .await?;
        Ok(Self { procs, ready })
    }

    /// Resident-memory growth of all client processes since before they opened (KiB).
    async fn rss_growth_kib(&mut self) -> u64 {
        let now = futures_util::future::join_all(
            self.procs
                .iter_mut()
                .map(|p| p.ask::<ProcStats>("stats", Duration::from_secs(30))),
        )
        .await;
        now.iter()
            .zip(&self.ready)
            .map(|(s, r)| {
                s.as_ref()
                    .map_or(0, |s| s.rss_kib.saturating_sub(r.rss_kib_before))
            })
            .sum()
    }

    async fn ping(&mut self) -> ChildPing {
        let all = futures_util::future::join_all(
            self.procs
                .iter_mut()
                .map(|p| p.ask::<ChildPing>("ping", Duration::from_secs(300))),
        )
        .await;
        let mut out = ChildPing::default();
        for (r, ready) in all.into_iter().zip(&self.ready) {
            match r {
                Ok(p) => {
                    out.alive += p.alive;
                    out.dead += p.dead;
                    out.max_rtt_us = out.max_rtt_us.max(p.max_rtt_us);
                    if out.first_error.is_none() {
                        out.first_error = p.first_error;
                    }
                }
                Err(e) => {
                    out.dead += ready.opened;
                    out.first_error.get_or_insert(format!("{e:#}"));
                }
            }
        }
        out
    }

    async fn close(mut self) {
        let n: usize = self.ready.iter().map(|r| r.opened).sum();
        let timeout =
            Duration::from_secs(60) + Duration::from_secs_f64(2.0 * n as f64 / CLOSE_RATE);
        futures_util::future::join_all(
            self.procs
                .iter_mut()
                .map(|p| p.ask::<ChildClosed>("close", timeout)),
        )
        .await;
        for p in &mut self.procs {
            if tokio::time::timeout(Duration::from_secs(10), p.child.wait())
                .await
                .is_err()
            {
                let _ = p.child.kill().await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A client process (`xtmp-bench idle-clients`)
// ---------------------------------------------------------------------------------------

/// Arguments of a client process.
pub struct ChildArgs {
    /// The run.
    pub spec: RunSpec,
    /// The server.
    pub info: ServerInfo,
    /// Index of its first session among all (for the source addresses).
    pub first: usize,
    /// Sessions to open.
    pub count: usize,
    /// Handshakes in flight.
    pub parallel: usize,
    /// Sessions opened per second at most (this process).
    pub rate: Option<f64>,
    /// Sessions closed per second at most (this process).
    pub close_rate: Option<f64>,
}

/// `xtmp-bench idle-clients`: opens the sessions, says so, then serves `stats`, `ping` and
/// `close` on stdin (end of input closes too).
pub async fn client_child(a: ChildArgs) -> Result<()> {
    stats::raise_nofile_limit();
    let ctx = Ctx::new(Peer::Xtmp, &a.spec, &a.info)?;
    ctx.start_locals_at(a.first);
    let before = ProcStats::now();
    let t = Instant::now();
    let mut clients: Vec<XTMPClient> = Vec::with_capacity(a.count);
    let mut failed = 0usize;
    let mut first_error = None;
    let mut set = JoinSet::new();
    let mut next = 0usize;
    let parallel = a.parallel.max(1);
    loop {
        while set.len() < parallel && next < a.count {
            if let Some(r) = a.rate.filter(|r| *r > 0.0) {
                tokio::time::sleep_until(t + Duration::from_secs_f64(next as f64 / r)).await;
            }
            let ctx = ctx.clone();
            set.spawn(async move {
                let mut last = None;
                for attempt in 0..3u64 {
                    match ctx.xtmp().await {
                        Ok(c) => return Ok(c),
                        Err(e) => {
                            last = Some(e);
                            tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                        }
                    }
                }
                Err(last.unwrap_or_else(|| anyhow!("not attempted")))
            });
            next += 1;
        }
        match set.join_next().await {
            None => break,
            Some(Ok(Ok(c))) => clients.push(c),
            Some(Ok(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(format!("connect task: {e}"));
            }
        }
    }
    say(&ChildReady {
        opened: clients.len(),
        failed,
        first_error,
        secs: t.elapsed().as_secs_f64(),
        rss_kib_before: before.rss_kib,
    })?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "stats" => say(&ProcStats::now())?,
            "ping" => {
                let refs: Vec<&XTMPClient> = clients.iter().collect();
                say(&ping_all(&refs).await)?;
            }
            "close" => break,
            _ => println!("{{\"error\":\"unknown command\"}}"),
        }
    }
    // Paced (see CLOSE_RATE), as many in flight as handshakes were.
    let t = Instant::now();
    let closed = clients.len();
    let mut set = JoinSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        if let Some(r) = a.close_rate.filter(|r| *r > 0.0) {
            tokio::time::sleep_until(t + Duration::from_secs_f64(i as f64 / r)).await;
        }
        while set.len() >= parallel {
            set.join_next().await;
        }
        set.spawn(async move { c.close().await });
    }
    while set.join_next().await.is_some() {}
    // The parent may be gone (end of input): a failed write does not matter then.
    let _ = say(&ChildClosed {
        closed,
        secs: t.elapsed().as_secs_f64(),
    });
    Ok(())
}

fn say<T: Serialize>(v: &T) -> Result<()> {
    use std::io::Write as _;
    let line = serde_json::to_string(v)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
