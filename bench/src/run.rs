//! Runs one scenario against one peer: starts (or reaches) the server, opens the
//! connections, measures a window, and collects throughput, latency, CPU and memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinSet;
use tokio::time::Instant;
use xtmp_proto::MessageType;

use crate::client::{self, Conn, Ctx, Window, WorkerOut};
use crate::server::{self, Running, ServerInfo, ServerStats};
use crate::spec::{Peer, RunSpec, Scenario, Transport};
use crate::stats::{self, Percentiles, ProcStats};
use crate::wallet;

/// Where the server under test runs.
#[derive(Debug, Clone)]
pub enum ServerMode {
    /// A child process (`xtmp-bench serve`), one per peer and run.
    Child,
    /// A runtime of its own inside this process.
    InProcess,
    /// An `xtmp server` started elsewhere (XTMP rows only; peers use a child).
    External {
        /// Its address.
        addr: SocketAddr,
        /// Its X-Wing public key (hex).
        key_hex: String,
        /// Its pid, to read its CPU time and memory from /proc.
        pid: Option<u32>,
    },
}

/// A server being measured (one per run: the size difference does not matter).
#[allow(clippy::large_enum_variant)]
pub enum ServerProc {
    /// A child process.
    Child {
        /// The process.
        child: Child,
        /// Its stdin (commands).
        stdin: ChildStdin,
        /// Its stdout (answers).
        out: Lines<BufReader<ChildStdout>>,
    },
    /// In this process.
    InProc {
        /// The server.
        running: Arc<Running>,
        /// Tells its thread to stop.
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        /// Its thread.
        thread: Option<std::thread::JoinHandle<()>>,
    },
    /// Elsewhere.
    External {
        /// Its pid, if known.
        pid: Option<u32>,
    },
}

impl ServerProc {
    /// Starts `peer`'s server for `spec`.
    pub async fn start(
        peer: Peer,
        spec: &RunSpec,
        mode: &ServerMode,
    ) -> Result<(Self, ServerInfo)> {
        match mode {
            ServerMode::External { addr, key_hex, pid } if peer == Peer::Xtmp => Ok((
                ServerProc::External { pid: *pid },
                ServerInfo {
                    addr: *addr,
                    xtmp_public_key: Some(key_hex.clone()),
                    cert_der: None,
                    pid: *pid,
                    udp_addr: None,
                    ws_url: None,
                },
            )),
            ServerMode::InProcess => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                let spec2 = spec.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("{peer}-server"))
                    .spawn(move || {
                        let rt = match tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(spec2.server_threads.max(1))
                            .thread_name("bench-server")
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => {
                                let _ = tx.send(Err(anyhow!("server runtime: {e}")));
                                return;
                            }
                        };
                        rt.block_on(async move {
                            match server::start(peer, &spec2).await {
                                Ok(r) => {
                                    let r = Arc::new(r);
                                    let _ = tx.send(Ok(r.clone()));
                                    let _ = stop_rx.await;
                                    r.shutdown().await;
                                }
                                Err(e) => {
                                    let _ = tx.send(Err(e));
                                }
                            }
                        });
                    })?;
                let running = rx.await.context("server thread ended")??;
                let info = running.info.clone();
                Ok((
                    ServerProc::InProc {
                        running,
                        stop: Some(stop_tx),
                        thread: Some(thread),
                    },
                    info,
                ))
            }
            _ => {
                let exe = std::env::current_exe().context("locating xtmp-bench")?;
                // `XTMP_BENCH_SERVER_WRAP="heaptrack"` (or "perf record -g -o s.perf", …)
                // runs the server process under that command, to profile it alone.
                let wrap = std::env::var("XTMP_BENCH_SERVER_WRAP").unwrap_or_default();
                let mut words = wrap.split_whitespace();
                let mut cmd = match words.next() {
                    Some(w) => {
                        let mut c = tokio::process::Command::new(w);
                        c.args(words).arg(exe);
                        c
                    }
                    None => tokio::process::Command::new(exe),
                };
                let mut child = cmd
                    .arg("serve")
                    .arg("--peer")
                    .arg(peer.name())
                    .arg("--spec")
                    .arg(serde_json::to_string(spec)?)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting the server process")?;
                let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
                let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
                let mut out = BufReader::new(stdout).lines();
                // A wrapper may print its own lines first: skip up to 20 that are not JSON.
                let mut skipped = 0;
                let info: ServerInfo = loop {
                    let line = tokio::time::timeout(Duration::from_secs(120), out.next_line())
                        .await
                        .context("the server process did not start in time")??
                        .ok_or_else(|| anyhow!("the server process exited before listening"))?;
                    if wrap.is_empty() || line.starts_with('{') || skipped == 20 {
                        break serde_json::from_str(&line)
                            .with_context(|| format!("server said {line:?}"))?;
                    }
                    skipped += 1;
                };
                Ok((ServerProc::Child { child, stdin, out }, info))
            }
        }
    }

    /// The server's counters now (`None` if they cannot be read).
    pub async fn stats(&mut self) -> Option<ServerStats> {
        match self {
            ServerProc::Child { stdin, out, .. } => {
                stdin.write_all(b"stats\n").await.ok()?;
                stdin.flush().await.ok()?;
                let line = tokio::time::timeout(Duration::from_secs(10), out.next_line())
                    .await
                    .ok()?
                    .ok()??;
                serde_json::from_str(&line).ok()
            }
            ServerProc::InProc { running, .. } => Some(running.stats()),
            ServerProc::External { pid } => pid.and_then(proc_stats_of),
        }
    }

    /// Stops the server.
    pub async fn stop(self) {
        match self {
            ServerProc::Child {
                mut child,
                mut stdin,
                ..
            } => {
                let _ = stdin.write_all(b"quit\n").await;
                drop(stdin);
                if tokio::time::timeout(Duration::from_secs(15), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            ServerProc::InProc {
                mut stop,
                mut thread,
                ..
            } => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
                if let Some(t) = thread.take() {
                    let _ = tokio::task::spawn_blocking(move || t.join()).await;
                }
            }
            ServerProc::External { .. } => {}
        }
    }
}

/// CPU time and memory of another process, from /proc (10 ms CPU resolution).
fn proc_stats_of(pid: u32) -> Option<ServerStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state(0) ... utime(11) stime(12).
    let tick_us = 10_000u64;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ServerStats {
        proc: ProcStats {
            cpu_user_us: utime * tick_us,
            cpu_sys_us: stime * tick_us,
            peak_rss_kib: kib("VmHWM:"),
            rss_kib: kib("VmRSS:"),
        },
        connections: 0,
        dropped: 0,
        key_rotations: 0,
    })
}

/// One row of the report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Peer name.
    pub peer: String,
    /// Transport (XTMP) or the peer's own.
    pub transport: String,
    /// `ok`, `skipped` or `failed`.
    pub status: String,
    /// Why skipped / failed, or a remark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Connections / clients / sessions.
    pub concurrency: usize,
    /// Message size.
    pub size: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Operations counted.
    pub ops: u64,
    /// Operations per second (for idle-sessions: sessions held).
    pub throughput: f64,
    /// Unit of `throughput`.
    pub unit: String,
    /// Payload MiB/s (bulk, streams).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mib_per_s: Option<f64>,
    /// Latency percentiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Percentiles>,
    /// Failed operations.
    pub errors: u64,
    /// The first failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Push streams: messages lost (sequence gaps), percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_pct: Option<f64>,
    /// Client CPU seconds in the window.
    pub client_cpu_s: f64,
    /// Client peak RSS (MiB).
    pub client_peak_rss_mib: f64,
    /// Server CPU seconds in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    /// Server CPU µs per operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_op: Option<f64>,
    /// Operations/s the server's CPU would sustain on all cores (cores / CPU per op).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_capacity_per_s: Option<f64>,
    /// Server RSS at the end (MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_mib: Option<f64>,
    /// Server peak RSS (MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_peak_rss_mib: Option<f64>,
    /// idle-sessions: server memory per session (bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_bytes_per_session: Option<f64>,
    /// idle-sessions: client memory per session (bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_bytes_per_session: Option<f64>,
    /// idle-sessions: server CPU while the sessions were held idle, percent of one core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_idle_cpu_pct: Option<f64>,
    /// idle-sessions: sessions that answered a ping after the hold (XTMP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_alive: Option<u64>,
    /// idle-sessions: sessions opened per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_rate: Option<f64>,
    /// idle-sessions: client processes the sessions were spread over (XTMP over UDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_processes: Option<usize>,
    /// Load average when the row was measured.
    pub load_avg: String,
    /// XTMP rows: `ratio_vs_<peer>` (XTMP throughput / peer throughput; idle-sessions:
    /// peer bytes per session / XTMP bytes per session) and `p50_ratio_vs_<peer>`.
    #[serde(flatten)]
    pub ratios: BTreeMap<String, f64>,
}

impl RunResult {
    fn new(peer: Peer, spec: &RunSpec) -> Self {
        Self {
            scenario: spec.scenario.name().into(),
            peer: peer.name().into(),
            transport: transport_name(peer, spec),
            status: "ok".into(),
            concurrency: spec.concurrency,
            size: spec.size,
            unit: spec.scenario.unit().into(),
            load_avg: stats::load_average(),
            ..Self::default()
        }
    }

    /// A row for a peer that did not run.
    pub fn skipped(peer: Peer, spec: &RunSpec, why: impl Into<String>) -> Self {
        let mut r = Self::new(peer, spec);
        r.status = "skipped".into();
        r.note = Some(why.into());
        r
    }

    fn failed(peer: Peer, spec: &RunSpec, e: &anyhow::Error) -> Self {
        let mut r = Self::new(peer, spec);
        r.status = "failed".into();
        r.note = Some(format!("{e:#}"));
        r
    }

    /// Whether it produced figures.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

fn transport_name(peer: Peer, spec: &RunSpec) -> String {
    match peer {
        Peer::Xtmp => {
            let mut t = spec.transport.name().to_string();
            if spec.crypto_off {
                t.push_str(" (crypto off)");
            }
            t
        }
        Peer::Rustls => "tls1.3/tcp".into(),
        Peer::Quinn => match spec.scenario {
            Scenario::LiveUpdates | Scenario::MetricsStream => "quic datagrams".into(),
            _ => "quic stream".into(),
        },
        Peer::PlainTcp => "tcp".into(),
        Peer::PlainUdp => "udp".into(),
    }
}

/// Runs `spec` against `peer`, never failing: problems become a `failed` row.
pub async fn run(peer: Peer, spec: &RunSpec, mode: &ServerMode) -> RunResult {
    if !spec.scenario.supports(peer) {
        return RunResult::skipped(
            peer,
            spec,
            "no implementation of this workload for this peer",
        );
    }
    if peer == Peer::Xtmp
        && spec.transport != Transport::Tcp
        && matches!(mode, ServerMode::External { .. })
    {
        return RunResult::skipped(
            peer,
            spec,
            "not run: with --server only the tcp transport is measured",
        );
    }
    if peer == Peer::Xtmp && matches!(mode, ServerMode::External { .. }) {
        match spec.scenario {
            Scenario::BundleSubmit => {
                return RunResult::skipped(
                    peer,
                    spec,
                    "not run against --server: the bench wallets need genesis balances on the server",
                )
            }
            Scenario::LiveUpdates | Scenario::MetricsStream | Scenario::Bulk => {
                return RunResult::skipped(
                    peer,
                    spec,
                    "not run against --server: the built-in router paces its streams (>= 1 ms) and echoes every message",
                )
            }
            _ => {}
        }
    }
    let (mut server, info) = match ServerProc::start(peer, spec, mode).await {
        Ok(s) => s,
        Err(e) => return RunResult::failed(peer, spec, &e),
    };
    let mut r = match measure(peer, spec, mode, &mut server, &info).await {
        Ok(r) => r,
        Err(e) => RunResult::failed(peer, spec, &e),
    };
    if peer == Peer::Xtmp
        && !r.is_ok()
        && spec.scenario == Scenario::RequestResponse
        && matches!(mode, ServerMode::External { .. })
    {
        r.note = Some(format!(
            "{}; request-response against --server needs the built-in echo handlers \
             (`[xtmp_services] enabled = false` in the server's configuration)",
            r.note.as_deref().unwrap_or("failed")
        ));
    }
    server.stop().await;
    r
}

pub(crate) async fn open_conns(
    ctx: &Arc<Ctx>,
    n: usize,
    wallets: &Arc<Vec<Arc<xtmp_services::SigningKey>>>,
) -> Result<Vec<Conn>> {
    let mut set = JoinSet::new();
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let mut next = 0usize;
    let parallel = 64usize;
    loop {
        while set.len() < parallel && next < n {
            let ctx = ctx.clone();
            let w = wallets.clone();
            let i = next;
            set.spawn(async move { (i, client::connect(&ctx, i, &w).await) });
            next += 1;
        }
        match set.join_next().await {
            None => break,
            Some(j) => {
                let (i, c) = j.map_err(|e| anyhow!("connect task: {e}"))?;
                conns[i] = Some(c.with_context(|| format!("connection {i}"))?);
            }
        }
    }
    Ok(conns.into_iter().flatten().collect())
}

async fn measure(
    peer: Peer,
    spec: &RunSpec,
    mode: &ServerMode,
    server: &mut ServerProc,
    info: &ServerInfo,
) -> Result<RunResult> {
    let ctx = Ctx::new(peer, spec, info)?;
    let mut res = RunResult::new(peer, spec);
    if matches!(mode, ServerMode::InProcess) {
        res.note = Some("in-process server: CPU and memory are the whole process's".into());
    }
    if spec.scenario == Scenario::IdleSessions {
        return crate::idle::idle_sessions(ctx, spec, server, res).await;
    }
    let needs_wallets = matches!(spec.scenario, Scenario::WalletAuth | Scenario::BundleSubmit);
    let wallets = Arc::new(if needs_wallets {
        wallet::wallets(spec.wallets)?
    } else {
        Vec::new()
    });
    let mut pool = None;
    if spec.scenario == Scenario::BundleSubmit {
        // Every sender's key must be registered before its transfers can be checked.
        let c = ctx.xtmp().await?;
        for w in wallets.iter() {
            c.request_json::<_, serde_json::Value>(
                MessageType::WalletRegister,
                &xtmp_services::client::register_request(w),
            )
            .await
            .context("registering the wallets")?;
        }
        c.close().await;
        let secs = (spec.duration + spec.warmup).as_secs_f64();
        let n = ((secs * 12_000.0 / 25_000.0).ceil() as usize).clamp(1, 16) * 25_000;
        let w2 = wallets.clone();
        let t = Instant::now();
        let p = tokio::task::spawn_blocking(move || wallet::transfer_pool(&w2, n)).await??;
        if t.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "  (signed {n} transfers for the bundle pool in {:.1} s; cached for later runs)",
                t.elapsed().as_secs_f64()
            );
        }
        pool = Some(Arc::new(p));
    }

    let conns = if spec.scenario == Scenario::Handshake {
        Vec::new()
    } else {
        open_conns(&ctx, spec.concurrency, &wallets).await?
    };

    let now = Instant::now();
    let w = Window {
        start: now + spec.warmup,
        end: now + spec.warmup + spec.duration,
    };
    let mut set: JoinSet<WorkerOut> = JoinSet::new();
    let per_conn_rate = spec.rate.map(|r| r / spec.concurrency.max(1) as f64);
    let next = Arc::new(AtomicUsize::new(0));
    let exhausted = Arc::new(AtomicU64::new(0));
    match spec.scenario {
        Scenario::Handshake => {
            for _ in 0..spec.concurrency {
                set.spawn(client::handshake_worker(ctx.clone(), w));
            }
        }
        _ => {
            for (i, c) in conns.into_iter().enumerate() {
                match spec.scenario {
                    Scenario::RequestResponse => {
                        set.spawn(client::request_worker(c, spec.size, w, per_conn_rate));
                    }
                    Scenario::Bulk => {
                        set.spawn(client::bulk_worker(c, spec.size, w));
                    }
                    Scenario::LiveUpdates | Scenario::MetricsStream => {
                        let rate = per_conn_rate.map_or(0, |r| r.round() as u32);
                        set.spawn(client::stream_worker(ctx.clone(), c, spec.size, rate, w));
                    }
                    Scenario::WalletAuth => {
                        let senders = wallets.len().saturating_sub(1).max(1);
                        let key = wallets[i % senders].clone();
                        set.spawn(client::wallet_auth_worker(c, key, w));
                    }
                    Scenario::BundleSubmit => {
                        let p = pool.clone().ok_or_else(|| anyhow!("no pool"))?;
                        set.spawn(client::bundle_worker(
                            c,
                            p,
                            next.clone(),
                            exhausted.clone(),
                            w,
                        ));
                    }
                    Scenario::Handshake | Scenario::IdleSessions => {}
                }
            }
        }
    }
    tokio::time::sleep_until(w.start).await;
    let s0 = server.stats().await;
    let c0 = ProcStats::now();
    tokio::time::sleep_until(w.end).await;
    let s1 = server.stats().await;
    let c1 = ProcStats::now();
    let mut out = WorkerOut::default();
    while let Some(j) = set.join_next().await {
        out.merge(j.map_err(|e| anyhow!("worker: {e}"))?);
    }

    let secs = spec.duration.as_secs_f64();
    res.duration_s = secs;
    res.ops = out.ops;
    res.throughput = out.ops as f64 / secs;
    res.latency = out.hist.summary();
    res.errors = out.errors;
    res.first_error = out.first_error;
    if matches!(
        spec.scenario,
        Scenario::Bulk
            | Scenario::LiveUpdates
            | Scenario::MetricsStream
            | Scenario::RequestResponse
    ) {
        res.mib_per_s = Some(out.bytes as f64 / secs / (1024.0 * 1024.0));
    }
    if out.expected_total > 0 {
        res.loss_pct = Some(
            100.0 * (out.expected_total.saturating_sub(out.received_total)) as f64
                / out.expected_total as f64,
        );
    }
    res.client_cpu_s = (c1.cpu_us().saturating_sub(c0.cpu_us())) as f64 / 1e6;
    res.client_peak_rss_mib = c1.peak_rss_kib as f64 / 1024.0;
    if let (Some(a), Some(b)) = (s0, s1) {
        let cpu = b.proc.cpu_us().saturating_sub(a.proc.cpu_us()) as f64;
        res.server_cpu_s = Some(cpu / 1e6);
        if out.ops > 0 {
            let per = cpu / out.ops as f64;
            res.server_cpu_us_per_op = Some(per);
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as f64;
            if per > 0.0 {
                res.server_capacity_per_s = Some(cores * 1e6 / per);
            }
        }
        res.server_rss_mib = Some(b.proc.rss_kib as f64 / 1024.0);
        res.server_peak_rss_mib = Some(b.proc.peak_rss_kib as f64 / 1024.0);
    }
    if exhausted.load(Ordering::Relaxed) > 0 {
        res.note = Some(format!(
            "the pre-signed pool ({} bundles) ran out before the window ended",
            pool.map_or(0, |p| p.len())
        ));
    }
    if out.ops == 0 {
        res.status = "failed".into();
        if res.note.is_none() {
            res.note = Some(
                res.first_error
                    .clone()
                    .unwrap_or_else(|| "no operation completed in the window".into()),
            );
        }
    }
    Ok(res)
}

/// Fills the `ratio_vs_<peer>` fields of the XTMP row from the other rows.
pub fn add_ratios(rows: &mut [RunResult]) {
    let Some(xi) = rows.iter().position(|r| r.peer == "xtmp" && r.is_ok()) else {
        return;
    };
    let x = rows[xi].clone();
    let mut ratios = BTreeMap::new();
    for r in rows.iter().filter(|r| r.peer != "xtmp" && r.is_ok()) {
        let key = r.peer.replace('-', "_");
        if x.scenario == Scenario::IdleSessions.name() {
            if let (Some(xb), Some(pb)) = (x.server_bytes_per_session, r.server_bytes_per_session) {
                if xb > 0.0 {
                    ratios.insert(format!("ratio_vs_{key}"), pb / xb);
                }
            }
            continue;
        }
        if r.throughput > 0.0 {
            ratios.insert(format!("ratio_vs_{key}"), x.throughput / r.throughput);
        }
        if let (Some(xl), Some(pl)) = (x.latency, r.latency) {
            if pl.p50_us > 0.0 {
                ratios.insert(format!("p50_ratio_vs_{key}"), xl.p50_us / pl.p50_us);
            }
        }
    }
    rows[xi].ratios = ratios;
}

/// Checks `--server` arguments early.
pub fn external_mode(addr: &str, key_file: &str, pid: Option<u32>) -> Result<ServerMode> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("--server {addr:?} is not an address like 127.0.0.1:8080"))?;
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("cannot read --server-key {key_file}"))?;
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    let bytes = hex::decode(&body).context("--server-key: not hex")?;
    let key_hex = match bytes.len() {
        // A public key file (`xtmp keygen` writes `server.pub`).
        1216 => body.to_ascii_lowercase(),
        // A secret key file (32-byte seed): derive the public key.
        32 => {
            let seed: [u8; 32] = bytes.as_slice().try_into()?;
            let sk = xtmp_proto::xtmp_crypto::xwing::XWingSecretKey::from_seed(&seed);
            hex::encode(sk.public_key().as_bytes())
        }
        n => bail!("--server-key: {n} bytes; expected a 1216-byte public key or a 32-byte seed"),
    };
    Ok(ServerMode::External { addr, key_hex, pid })
}
