//! `xtmp-bench`: XTMP end to end on loopback, side by side with TLS 1.3 (rustls,
//! X25519MLKEM768), QUIC (quinn) and plain TCP/UDP, in the same run on the same machine.
//!
//! ```text
//! xtmp-bench <scenario> [--compare rustls,quinn,plain] [--duration S] [--concurrency N]
//!            [--size BYTES] [--transport tcp|udp|hybrid|ws] [--json] [--crypto-off]
//!            [--rate OPS] [--in-process | --server ADDR --server-key FILE]
//! xtmp-bench all ...                 every scenario
//! xtmp-bench scale handshake|sizes|sessions|connections ...
//! xtmp-bench chart --out FILE.svg ... latency against offered load
//! ```
//!
//! Modelled on quinn's `perf` and `rustls-bench`: each peer's server runs in its own
//! process (`xtmp-bench serve`, so its CPU time and memory are measured apart from the
//! load generator's), the workload is closed-loop unless `--rate` is given, only
//! operations inside the measured window count, and every XTMP row carries
//! `ratio_vs_<peer>` = XTMP throughput / peer throughput from the same run.

mod chart;
mod client;
mod frame;
mod idle;
mod run;
mod server;
mod spec;
mod stats;
mod tls;
mod wallet;

use std::io::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::run::{RunResult, ServerMode};
use crate::spec::{Peer, RunSpec, Scenario, Transport};

#[derive(Parser)]
#[command(
    name = "xtmp-bench",
    version,
    about = "XTMP end to end on loopback against rustls (TLS 1.3, X25519MLKEM768), quinn (QUIC) and plain TCP/UDP",
    after_help = "Every figure is measured in the same run as the peers'; report ratios, not absolutes, on a shared machine."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Full handshakes per second (connect, authenticate the server, close).
    Handshake(RunArgs),
    /// ML-DSA-65 wallet authentications per second (challenge, sign, verify).
    WalletAuth(RunArgs),
    /// Durable bundle submissions per second (XTMP with xtmp-services only).
    BundleSubmit(RunArgs),
    /// Reliable server pushes per second.
    LiveUpdates(RunArgs),
    /// Unreliable server pushes per second (QUIC/UDP: datagrams).
    MetricsStream(RunArgs),
    /// Request/response (echo) rate and latency.
    RequestResponse(RunArgs),
    /// One-way messages (1 KiB and 64 KiB unless --size is given).
    Bulk(RunArgs),
    /// Server memory per idle session (--concurrency sessions).
    IdleSessions(RunArgs),
    /// Every scenario in turn.
    All(RunArgs),
    /// Scaling tables (markdown).
    Scale(ScaleArgs),
    /// Latency against offered load (request-response), as an SVG chart.
    Chart(ChartArgs),
    /// (internal) Hold idle XTMP sessions for an idle-sessions run (UDP: the clients are
    /// spread over processes, each under the descriptor limit).
    #[command(hide = true)]
    IdleClients {
        /// The run, as JSON.
        #[arg(long)]
        spec: String,
        /// The server (ServerInfo), as JSON.
        #[arg(long)]
        server: String,
        /// Index of the first session among all (source-address rotation).
        #[arg(long, default_value_t = 0)]
        first: usize,
        /// Sessions to open.
        #[arg(long)]
        count: usize,
        /// Handshakes in flight.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// Sessions opened per second at most.
        #[arg(long)]
        rate: Option<f64>,
        /// Sessions closed per second at most.
        #[arg(long)]
        close_rate: Option<f64>,
    },
    /// (internal) Serve one peer for a client process.
    #[command(hide = true)]
    Serve {
        /// Peer.
        #[arg(long)]
        peer: String,
        /// The run, as JSON.
        #[arg(long)]
        spec: String,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Peers to compare with: rustls, quinn, plain (= plain-tcp,plain-udp), plain-tcp,
    /// plain-udp, all, none.
    #[arg(long, default_value = "rustls,quinn,plain")]
    compare: String,
    /// Measured seconds per peer.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds before measuring (default: a fifth of --duration, at most 1).
    #[arg(long)]
    warmup: Option<f64>,
    /// Connections / clients (idle-sessions: sessions). Default depends on the scenario.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Message size in bytes. Default depends on the scenario.
    #[arg(long)]
    size: Option<usize>,
    /// XTMP transport.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// Print JSON (one object per scenario) instead of tables.
    #[arg(long)]
    json: bool,
    /// XTMP records with EncryptionType::None (HMAC-SHA-256 only); the handshake still runs.
    #[arg(long)]
    crypto_off: bool,
    /// Offered load in operations/s over all connections (open loop; default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Worker threads of each server's runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Run the servers inside this process (CPU and memory are then the whole process's).
    #[arg(long, conflicts_with = "server")]
    in_process: bool,
    /// Use a running `xtmp server` at this address for the XTMP rows.
    #[arg(long, requires = "server_key")]
    server: Option<String>,
    /// Its public key file (`.pub`, 2432 hex digits) or secret key file (64 hex digits).
    #[arg(long)]
    server_key: Option<String>,
    /// Its pid, to read its CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also append the JSON to this file (one line per scenario).
    #[arg(long)]
    out: Option<String>,
    /// XTMP session key rotation interval in seconds (in-process or spawned server;
    /// sessions use the smaller of the two sides' intervals). Default: 300.
    #[arg(long)]
    key_rotation: Option<f64>,
}

#[derive(Args)]
struct ScaleArgs {
    /// handshake (handshakes/s vs clients), sizes (latency vs message size), sessions
    /// (memory vs open sessions), connections (throughput vs connections).
    #[arg(value_parser = ["handshake", "sizes", "sessions", "connections"])]
    what: String,
    /// Points (comma-separated); defaults: handshake 1,2,4,…,512; sizes 64 B … 1 MiB;
    /// sessions 1000,10000,100000; connections 1,10,100,1000,10000.
    #[arg(long, value_delimiter = ',')]
    points: Vec<usize>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct ChartArgs {
    /// Offered loads (requests/s).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,5000,10000,20000,40000,80000"
    )]
    rates: Vec<f64>,
    /// SVG output file.
    #[arg(long, default_value = "docs/bench-latency.svg")]
    svg: String,
    #[command(flatten)]
    run: RunArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.cmd {
        Cmd::Serve { spec, .. } => serde_json::from_str::<RunSpec>(spec)
            .map(|s| s.server_threads)
            .unwrap_or(2),
        Cmd::IdleClients { spec, .. } => serde_json::from_str::<RunSpec>(spec)
            .map(|s| s.client_threads)
            .unwrap_or(2),
        Cmd::Scale(a) => a.run.threads,
        Cmd::Chart(a) => a.run.threads,
        Cmd::Handshake(a)
        | Cmd::WalletAuth(a)
        | Cmd::BundleSubmit(a)
        | Cmd::LiveUpdates(a)
        | Cmd::MetricsStream(a)
        | Cmd::RequestResponse(a)
        | Cmd::Bulk(a)
        | Cmd::IdleSessions(a)
        | Cmd::All(a) => a.threads,
    };
    if threads == 0 {
        bail!("--threads and --server-threads must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> Result<()> {
    let one = |s: Scenario, a: RunArgs| (vec![s], a);
    let (scenarios, args) = match cli.cmd {
        Cmd::Serve { peer, spec } => {
            let spec: RunSpec = serde_json::from_str(&spec).context("--spec")?;
            return server::serve_child(peer.parse()?, spec).await;
        }
        Cmd::IdleClients {
            spec,
            server,
            first,
            count,
            parallel,
            rate,
            close_rate,
        } => {
            return idle::client_child(idle::ChildArgs {
                spec: serde_json::from_str(&spec).context("--spec")?,
                info: serde_json::from_str(&server).context("--server")?,
                first,
                count,
                parallel,
                rate,
                close_rate,
            })
            .await;
        }
        Cmd::Scale(a) => return scale(a).await,
        Cmd::Chart(a) => return chart_cmd(a).await,
        Cmd::Handshake(a) => one(Scenario::Handshake, a),
        Cmd::WalletAuth(a) => one(Scenario::WalletAuth, a),
        Cmd::BundleSubmit(a) => one(Scenario::BundleSubmit, a),
        Cmd::LiveUpdates(a) => one(Scenario::LiveUpdates, a),
        Cmd::MetricsStream(a) => one(Scenario::MetricsStream, a),
        Cmd::RequestResponse(a) => one(Scenario::RequestResponse, a),
        Cmd::Bulk(a) => one(Scenario::Bulk, a),
        Cmd::IdleSessions(a) => one(Scenario::IdleSessions, a),
        Cmd::All(a) => (Scenario::ALL.to_vec(), a),
    };
    stats::raise_nofile_limit();
    let mode = server_mode(&args)?;
    let compare = spec::parse_compare(&args.compare)?;
    // Check the arguments before printing anything.
    for &s in &scenarios {
        make_spec(
            &args,
            s,
            args.size.unwrap_or(s.default_size()),
            args.concurrency.unwrap_or(s.default_concurrency()),
        )?;
    }
    if !args.json {
        print_header(&args, &compare);
    }
    for s in scenarios {
        let sizes = match (args.size, s) {
            (Some(z), _) => vec![z],
            (None, Scenario::Bulk) => vec![1024, 64 * 1024],
            (None, _) => vec![s.default_size()],
        };
        for size in sizes {
            let spec = make_spec(
                &args,
                s,
                size,
                args.concurrency.unwrap_or(s.default_concurrency()),
            )?;
            let rows = run_scenario(&spec, &compare, &mode, !args.json).await;
            emit(&args, &spec, &rows)?;
        }
    }
    Ok(())
}

fn server_mode(a: &RunArgs) -> Result<ServerMode> {
    Ok(match (&a.server, &a.server_key) {
        (Some(addr), Some(key)) => run::external_mode(addr, key, a.server_pid)?,
        (Some(_), None) => bail!("--server needs --server-key"),
        _ if a.in_process => ServerMode::InProcess,
        _ => ServerMode::Child,
    })
}

fn make_spec(a: &RunArgs, s: Scenario, size: usize, concurrency: usize) -> Result<RunSpec> {
    if !(a.duration.is_finite() && a.duration > 0.0 && a.duration <= 3600.0) {
        bail!("--duration must be between 0 and 3600 seconds");
    }
    let warmup = a.warmup.unwrap_or((a.duration / 5.0).min(1.0));
    if !(warmup.is_finite() && (0.0..=600.0).contains(&warmup)) {
        bail!("--warmup must be between 0 and 600 seconds");
    }
    if concurrency == 0 || concurrency > 1_000_000 {
        bail!("--concurrency must be between 1 and 1000000");
    }
    if size > 16 * 1024 * 1024 {
        bail!("--size must be at most 16 MiB");
    }
    if matches!(s, Scenario::LiveUpdates | Scenario::MetricsStream) && size < 16 {
        bail!("--size must be at least 16 for push streams (timestamp and sequence number)");
    }
    if let Some(r) = a.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be positive");
        }
    }
    if a.server_threads == 0 {
        bail!("--server-threads must be at least 1");
    }
    let key_rotation = match a.key_rotation {
        Some(k) if !(k.is_finite() && k >= 1.0) => bail!("--key-rotation must be at least 1 s"),
        k => k.map(Duration::from_secs_f64),
    };
    Ok(RunSpec {
        scenario: s,
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(warmup),
        concurrency,
        size,
        transport: a.transport,
        crypto_off: a.crypto_off,
        rate: a.rate,
        client_threads: a.threads,
        server_threads: a.server_threads,
        wallets: 8,
        key_rotation,
    })
}

async fn run_scenario(
    spec: &RunSpec,
    compare: &[Peer],
    mode: &ServerMode,
    progress: bool,
) -> Vec<RunResult> {
    let mut rows = Vec::new();
    for peer in std::iter::once(Peer::Xtmp).chain(compare.iter().copied()) {
        if peer != Peer::Xtmp && !spec.scenario.supports(peer) {
            continue;
        }
        if progress {
            eprint!(
                "  {} {} (c={}, {} B) ... ",
                spec.scenario, peer, spec.concurrency, spec.size
            );
            let _ = std::io::stderr().flush();
        }
        let r = run::run(peer, spec, mode).await;
        if progress {
            eprintln!("{}", r.status);
        }
        rows.push(r);
    }
    run::add_ratios(&mut rows);
    rows
}

fn print_header(a: &RunArgs, compare: &[Peer]) {
    println!(
        "xtmp-bench {} | {} | load {} | duration {} s | compare: {} | crypto {}",
        env!("CARGO_PKG_VERSION"),
        stats::machine_description(),
        stats::load_average(),
        a.duration,
        if compare.is_empty() {
            "none".to_string()
        } else {
            compare
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(",")
        },
        if a.crypto_off {
            "off (XTMP EncryptionType::None: HMAC-SHA-256 records, full X-Wing handshake; no null cipher exists in xtmp-proto)"
        } else {
            "on"
        }
    );
}

#[derive(Serialize)]
struct ScenarioJson<'a> {
    scenario: &'a str,
    size: usize,
    concurrency: usize,
    machine: String,
    load_avg: String,
    results: &'a [RunResult],
    #[serde(flatten)]
    ratios: std::collections::BTreeMap<String, f64>,
}

fn emit(a: &RunArgs, spec: &RunSpec, rows: &[RunResult]) -> Result<()> {
    let ratios = rows
        .iter()
        .find(|r| r.peer == "xtmp")
        .map(|r| r.ratios.clone())
        .unwrap_or_default();
    let j = ScenarioJson {
        scenario: spec.scenario.name(),
        size: spec.size,
        concurrency: spec.concurrency,
        machine: stats::machine_description(),
        load_avg: stats::load_average(),
        results: rows,
        ratios,
    };
    let line = serde_json::to_string(&j)?;
    if let Some(path) = &a.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("--out {path}"))?;
        writeln!(f, "{line}")?;
    }
    if a.json {
        println!("{line}");
    } else {
        print_table(spec, rows);
    }
    Ok(())
}

fn fmt_num(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn print_table(spec: &RunSpec, rows: &[RunResult]) {
    println!();
    println!(
        "## {} (concurrency {}, {} B{}) — load {}",
        spec.scenario,
        spec.concurrency,
        spec.size,
        spec.rate
            .map(|r| format!(", offered {r:.0}/s"))
            .unwrap_or_default(),
        stats::load_average()
    );
    println!();
    if spec.scenario == Scenario::IdleSessions {
        println!("| peer | transport | sessions | alive | server B/session | client B/session | server RSS MiB | server idle CPU % | XTMP advantage | note |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
        let x = rows.iter().find(|r| r.peer == "xtmp");
        for r in rows {
            let ratio = x
                .and_then(|x| {
                    x.ratios
                        .get(&format!("ratio_vs_{}", r.peer.replace('-', "_")))
                })
                .map(|v| format!("{v:.2}×"))
                .unwrap_or_default();
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.peer,
                r.transport,
                if r.is_ok() {
                    r.ops.to_string()
                } else {
                    "-".into()
                },
                opt(r.sessions_alive.map(|v| v as f64), |v| format!("{v:.0}")),
                opt(r.server_bytes_per_session, |v| format!("{v:.0}")),
                opt(r.client_bytes_per_session, |v| format!("{v:.0}")),
                opt(r.server_rss_mib, |v| format!("{v:.1}")),
                opt(r.server_idle_cpu_pct, |v| format!("{v:.1}")),
                ratio,
                note(r)
            );
        }
        if let Some(x) = x.filter(|x| x.is_ok()) {
            for line in targets(spec, x) {
                println!("target: {line}");
            }
        }
        return;
    }
    println!(
        "| peer | transport | {} | MiB/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/op | server RSS MiB | client CPU s | loss | XTMP/peer | note |",
        spec.scenario.unit()
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let x = rows.iter().find(|r| r.peer == "xtmp");
    for r in rows {
        let ratio = x
            .and_then(|x| {
                x.ratios
                    .get(&format!("ratio_vs_{}", r.peer.replace('-', "_")))
            })
            .map(|v| format!("{v:.2}×"))
            .unwrap_or_default();
        let l = r.latency;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.peer,
            r.transport,
            if r.is_ok() {
                fmt_num(r.throughput)
            } else {
                "-".into()
            },
            opt(r.mib_per_s, |v| format!("{v:.1}")),
            opt(l.map(|l| l.p50_us), |v| format!("{v:.1}")),
            opt(l.map(|l| l.p99_us), |v| format!("{v:.1}")),
            opt(l.map(|l| l.p999_us), |v| format!("{v:.1}")),
            opt(r.server_cpu_us_per_op, |v| format!("{v:.1}")),
            opt(r.server_rss_mib, |v| format!("{v:.1}")),
            if r.is_ok() {
                format!("{:.2}", r.client_cpu_s)
            } else {
                "-".into()
            },
            opt(r.loss_pct, |v| format!("{v:.1}%")),
            ratio,
            note(r)
        );
    }
    if let Some(x) = x.filter(|x| x.is_ok()) {
        for line in targets(spec, x) {
            println!("target: {line}");
        }
    }
}

fn note(r: &RunResult) -> String {
    let mut n = match (&r.status[..], &r.note) {
        ("ok", Some(n)) => n.clone(),
        ("ok", None) => String::new(),
        (s, Some(n)) => format!("{s}: {n}"),
        (s, None) => s.to_string(),
    };
    if r.errors > 0 && r.is_ok() {
        if !n.is_empty() {
            n.push_str("; ");
        }
        n.push_str(&format!(
            "{} errors ({})",
            r.errors,
            r.first_error.as_deref().unwrap_or("?")
        ));
    }
    n.replace('|', "/")
}

/// The issue's targets that this run can check, with the measured values.
fn targets(spec: &RunSpec, x: &RunResult) -> Vec<String> {
    let mut v = Vec::new();
    let ratio = |p: &str| x.ratios.get(&format!("ratio_vs_{p}")).copied();
    let p50 = x.latency.map(|l| l.p50_us);
    let p99 = x.latency.map(|l| l.p99_us);
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    match spec.scenario {
        Scenario::Handshake => {
            if let Some(r) = ratio("rustls") {
                v.push(format!(
                    "handshakes/s >= 1.5x rustls: {r:.2}x — {}",
                    mark(r >= 1.5)
                ));
            }
            if spec.concurrency == 1 {
                if let Some(p) = p50 {
                    v.push(format!(
                        "median at concurrency 1 < 250 µs: {p:.0} µs — {}",
                        mark(p < 250.0)
                    ));
                }
            } else if let Some(p) = p99 {
                v.push(format!(
                    "p99 < 2 ms at saturation: {:.2} ms — {}",
                    p / 1000.0,
                    mark(p < 2000.0)
                ));
            }
        }
        Scenario::RequestResponse => {
            if let Some(r) = ratio("rustls") {
                v.push(format!("rate >= rustls: {r:.2}x — {}", mark(r >= 1.0)));
            }
            if let Some(r) = x.ratios.get("p50_ratio_vs_plain_tcp") {
                v.push(format!(
                    "median <= 1.3x plain TCP: {r:.2}x — {}",
                    mark(*r <= 1.3)
                ));
            }
        }
        Scenario::WalletAuth => {
            if let Some(c) = x.server_capacity_per_s {
                v.push(format!(
                    "server capacity >= 20,000 auths/s (from server CPU {:.1} µs/auth): {c:.0}/s — {}",
                    x.server_cpu_us_per_op.unwrap_or(0.0),
                    mark(c >= 20_000.0)
                ));
            }
            if let Some(p) = p50 {
                v.push(format!(
                    "median < 200 µs (includes the client's ML-DSA signing): {p:.0} µs — {}",
                    mark(p < 200.0)
                ));
            }
        }
        Scenario::BundleSubmit => {
            v.push(format!(
                "durable >= 10,000/s: {:.0}/s — {}",
                x.throughput,
                mark(x.throughput >= 10_000.0)
            ));
            if let Some(p) = p99 {
                v.push(format!(
                    "p99 < 5 ms: {:.2} ms — {}",
                    p / 1000.0,
                    mark(p < 5000.0)
                ));
            }
        }
        Scenario::LiveUpdates => {
            if spec.rate.is_none() {
                v.push(format!(
                    ">= 500,000 msgs/s: {:.0}/s — {}",
                    x.throughput,
                    mark(x.throughput >= 500_000.0)
                ));
            }
            if let Some(p) = p50 {
                v.push(format!(
                    "median < 50 µs: {p:.0} µs — {}{}",
                    mark(p < 50.0),
                    if spec.rate.is_none() {
                        " (flood: queueing included; use --rate for unloaded latency)"
                    } else {
                        ""
                    }
                ));
            }
        }
        Scenario::MetricsStream if spec.rate.is_some() => {}
        Scenario::MetricsStream => {
            v.push(format!(
                ">= 1,000,000 msgs/s: {:.0}/s — {}",
                x.throughput,
                mark(x.throughput >= 1_000_000.0)
            ));
            if let Some(r) = ratio("quinn") {
                v.push(format!(
                    ">= half of quinn datagrams: {r:.2}x — {}",
                    mark(r >= 0.5)
                ));
            }
        }
        Scenario::Bulk => {
            if let Some(r) = ratio("rustls") {
                v.push(format!(
                    "throughput >= rustls at {} B: {r:.2}x — {}",
                    spec.size,
                    mark(r >= 1.0)
                ));
            }
        }
        Scenario::IdleSessions => {
            if let Some(b) = x.server_bytes_per_session {
                v.push(format!(
                    "<= 4 KiB per idle session: {b:.0} B — {}",
                    mark(b <= 4096.0)
                ));
            }
            if spec.concurrency >= 100_000 {
                let alive = x.sessions_alive.unwrap_or(x.ops);
                v.push(format!(
                    "100,000 idle sessions held: {alive} alive after the hold — {}",
                    mark(alive >= 100_000)
                ));
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------------
// Scaling tables
// ---------------------------------------------------------------------------------------

async fn scale(a: ScaleArgs) -> Result<()> {
    stats::raise_nofile_limit();
    let args = a.run;
    let mode = server_mode(&args)?;
    let compare = spec::parse_compare(&args.compare)?;
    let (scenario, points, by_size): (Scenario, Vec<usize>, bool) = match a.what.as_str() {
        "handshake" => (
            Scenario::Handshake,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
            false,
        ),
        "sizes" => (
            Scenario::RequestResponse,
            vec![64, 256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576],
            true,
        ),
        "sessions" => (Scenario::IdleSessions, vec![1000, 10_000, 100_000], false),
        "connections" => (
            Scenario::RequestResponse,
            vec![1, 10, 100, 1000, 10_000],
            false,
        ),
        other => bail!("unknown scaling table {other}"),
    };
    let points = if a.points.is_empty() {
        points
    } else {
        a.points
    };
    let peers: Vec<Peer> = std::iter::once(Peer::Xtmp)
        .chain(compare.iter().copied().filter(|p| scenario.supports(*p)))
        .collect();
    if !args.json {
        print_header(&args, &compare);
        println!();
        let param = if by_size {
            "size (B)"
        } else if scenario == Scenario::IdleSessions {
            "sessions"
        } else {
            "concurrency"
        };
        let mut head = format!("| {param} |");
        let mut sep = "|---:|".to_string();
        for p in &peers {
            if scenario == Scenario::IdleSessions {
                head.push_str(&format!(" {p} B/session |"));
                sep.push_str("---:|");
            } else {
                head.push_str(&format!(
                    " {p} {} | {p} p50 µs | {p} p99 µs |",
                    scenario.unit()
                ));
                sep.push_str("---:|---:|---:|");
            }
        }
        if scenario == Scenario::IdleSessions {
            head.push_str(" xtmp alive | xtmp server idle CPU % |");
            sep.push_str("---:|---:|");
        }
        head.push_str(" XTMP/rustls | load |");
        sep.push_str("---:|---|");
        println!("{head}");
        println!("{sep}");
    }
    for pt in points {
        let (size, conc) = if by_size {
            (pt, args.concurrency.unwrap_or(1))
        } else {
            (args.size.unwrap_or(scenario.default_size()), pt)
        };
        let spec = make_spec(&args, scenario, size, conc)?;
        let rows = run_scenario(&spec, &compare, &mode, false).await;
        if args.json {
            emit(&args, &spec, &rows)?;
            continue;
        }
        if let Some(path) = &args.out {
            let line = serde_json::to_string(&rows)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(f, "{line}")?;
        }
        let mut line = format!("| {pt} |");
        for p in &peers {
            let r = rows.iter().find(|r| r.peer == p.name());
            match r {
                Some(r) if r.is_ok() && scenario == Scenario::IdleSessions => {
                    line.push_str(&format!(
                        " {} |",
                        opt(r.server_bytes_per_session, |v| format!("{v:.0}"))
                    ))
                }
                Some(r) if r.is_ok() => line.push_str(&format!(
                    " {} | {} | {} |",
                    fmt_num(r.throughput),
                    opt(r.latency.map(|l| l.p50_us), |v| format!("{v:.1}")),
                    opt(r.latency.map(|l| l.p99_us), |v| format!("{v:.1}"))
                )),
                Some(r) => {
                    let n = note(r);
                    let short: String = n.chars().take(60).collect();
                    if scenario == Scenario::IdleSessions {
                        line.push_str(&format!(" {} ({short}) |", r.status));
                    } else {
                        line.push_str(&format!(" {} ({short}) | - | - |", r.status));
                    }
                }
                None => line.push_str(if scenario == Scenario::IdleSessions {
                    " - |"
                } else {
                    " - | - | - |"
                }),
            }
        }
        let x = rows.iter().find(|r| r.peer == "xtmp");
        if scenario == Scenario::IdleSessions {
            line.push_str(&format!(
                " {} | {} |",
                opt(
                    x.and_then(|x| x.sessions_alive).map(|v| v as f64),
                    |v| format!("{v:.0}")
                ),
                opt(x.and_then(|x| x.server_idle_cpu_pct), |v| format!("{v:.1}"))
            ));
        }
        let ratio = x
            .and_then(|x| x.ratios.get("ratio_vs_rustls"))
            .map(|v| format!("{v:.2}×"))
            .unwrap_or_else(|| "-".into());
        line.push_str(&format!(" {ratio} | {} |", stats::load_average()));
        println!("{line}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Chart
// ---------------------------------------------------------------------------------------

async fn chart_cmd(a: ChartArgs) -> Result<()> {
    stats::raise_nofile_limit();
    let args = a.run;
    let mode = server_mode(&args)?;
    let compare = spec::parse_compare(&args.compare)?;
    let peers: Vec<Peer> = std::iter::once(Peer::Xtmp)
        .chain(compare.iter().copied())
        .collect();
    let conc = args.concurrency.unwrap_or(16);
    let size = args.size.unwrap_or(100);
    let mut series: Vec<(String, Vec<chart::Point>)> = peers
        .iter()
        .map(|p| (p.name().to_string(), Vec::new()))
        .collect();
    if !args.json {
        print_header(&args, &compare);
        println!();
        println!("| offered req/s | peer | achieved req/s | p50 µs | p99 µs | p99.9 µs | load |");
        println!("|---:|---|---:|---:|---:|---:|---|");
    }
    for &rate in &a.rates {
        let mut args2 = args.clone();
        args2.rate = Some(rate);
        let spec = make_spec(&args2, Scenario::RequestResponse, size, conc)?;
        for (i, &p) in peers.iter().enumerate() {
            let r = run::run(p, &spec, &mode).await;
            if let (true, Some(l)) = (r.is_ok(), r.latency) {
                series[i].1.push(chart::Point {
                    offered: rate,
                    achieved: r.throughput,
                    p50_us: l.p50_us,
                    p99_us: l.p99_us,
                });
                if !args.json {
                    println!(
                        "| {rate:.0} | {p} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
                        r.throughput, l.p50_us, l.p99_us, l.p999_us, r.load_avg
                    );
                }
            } else if !args.json {
                println!(
                    "| {rate:.0} | {p} | - | - | - | - | {} ({}) |",
                    r.load_avg,
                    note(&r)
                );
            }
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
    }
    let svg = chart::render(
        "Request/response latency against offered load",
        &format!(
            "{size} B echo, {conc} connections, open loop (latency from the send time, or from the intended time when behind schedule)\n{}; load {}",
            stats::machine_description(),
            stats::load_average()
        ),
        &series,
    );
    if let Some(dir) = std::path::Path::new(&a.svg).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    std::fs::write(&a.svg, svg).with_context(|| format!("writing {}", a.svg))?;
    if !args.json {
        println!("\nchart written to {}", a.svg);
    }
    Ok(())
}
