//! Measurement helpers: HDR latency histograms, CPU time (getrusage), resident memory
//! (/proc), the machine's load average, and wall-clock timestamps carried in payloads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram in nanoseconds (1 ns .. 100 s, 3 significant digits).
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // 1 ns to 100 s at 3 significant digits; `new_with_bounds` only fails for bad bounds.
        match Histogram::new_with_bounds(1, 100_000_000_000, 3) {
            Ok(h) => Self(h),
            Err(_) => unreachable!("constant histogram bounds are valid"),
        }
    }

    /// Records one sample (clamped into the histogram's range).
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(ns.max(1));
    }

    /// Records one sample given in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// Adds `other`'s samples.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: `add` cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The percentiles, or `None` without samples.
    pub fn summary(&self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Percentiles {
            p50_us: us(self.0.value_at_quantile(0.50)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p999_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
            mean_us: self.0.mean() / 1000.0,
            samples: self.0.len(),
        })
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Number of samples.
    pub samples: u64,
}

/// CPU time and memory of one process at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcStats {
    /// User CPU time (µs), from getrusage(RUSAGE_SELF).
    pub cpu_user_us: u64,
    /// System CPU time (µs).
    pub cpu_sys_us: u64,
    /// Peak resident set size (KiB), getrusage's ru_maxrss.
    pub peak_rss_kib: u64,
    /// Current resident set size (KiB), /proc/self/status VmRSS.
    pub rss_kib: u64,
}

impl ProcStats {
    /// This process, now.
    pub fn now() -> Self {
        let (cpu_user_us, cpu_sys_us, peak_rss_kib) =
            match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
                Ok(u) => {
                    let us = |t: nix::sys::time::TimeVal| {
                        (t.tv_sec() as u64) * 1_000_000 + t.tv_usec() as u64
                    };
                    (
                        us(u.user_time()),
                        us(u.system_time()),
                        u.max_rss().max(0) as u64,
                    )
                }
                Err(_) => (0, 0, 0),
            };
        Self {
            cpu_user_us,
            cpu_sys_us,
            peak_rss_kib,
            rss_kib: current_rss_kib().unwrap_or(0),
        }
    }

    /// Total CPU time (µs).
    pub fn cpu_us(&self) -> u64 {
        self.cpu_user_us + self.cpu_sys_us
    }
}

/// VmRSS of this process in KiB.
pub fn current_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The 1-, 5- and 15-minute load averages as `uptime` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Nanoseconds since the Unix epoch (the realtime clock is shared by every process on the
/// machine, so a client can compare a server's timestamp with its own).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A short description of the machine: CPU model, cores, memory, kernel.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}")
}

/// The per-process open-file limit (soft, hard).
pub fn nofile_limit() -> Result<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .context("getrlimit(RLIMIT_NOFILE)")
}

/// Raises the soft open-file limit to the hard limit (best effort).
pub fn raise_nofile_limit() -> u64 {
    match nofile_limit() {
        Ok((soft, hard)) => {
            if soft < hard
                && nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    hard,
                    hard,
                )
                .is_ok()
            {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}
