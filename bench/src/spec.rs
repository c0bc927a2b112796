//! What to run: scenarios, peers, transports and the run parameters shared by the client
//! and the server process.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Full handshakes (connect, authenticate the server, close).
    Handshake,
    /// ML-DSA-65 wallet authentication: challenge, sign, verify.
    WalletAuth,
    /// Durable bundle submission (xtmp-services, group commit on redb).
    BundleSubmit,
    /// Reliable server pushes (subscribe, then a flood of messages).
    LiveUpdates,
    /// Unreliable server pushes (drop-oldest / datagrams).
    MetricsStream,
    /// Request and reply of the same size (default 100 bytes).
    RequestResponse,
    /// One-way messages (default 1 KiB and 64 KiB).
    Bulk,
    /// Server memory with N open idle sessions.
    IdleSessions,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 8] = [
        Scenario::Handshake,
        Scenario::WalletAuth,
        Scenario::BundleSubmit,
        Scenario::LiveUpdates,
        Scenario::MetricsStream,
        Scenario::RequestResponse,
        Scenario::Bulk,
        Scenario::IdleSessions,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Handshake => "handshake",
            Scenario::WalletAuth => "wallet-auth",
            Scenario::BundleSubmit => "bundle-submit",
            Scenario::LiveUpdates => "live-updates",
            Scenario::MetricsStream => "metrics-stream",
            Scenario::RequestResponse => "request-response",
            Scenario::Bulk => "bulk",
            Scenario::IdleSessions => "idle-sessions",
        }
    }

    /// The unit of the throughput figure.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Handshake => "handshakes/s",
            Scenario::WalletAuth => "auths/s",
            Scenario::BundleSubmit => "bundles/s",
            Scenario::LiveUpdates | Scenario::MetricsStream | Scenario::Bulk => "msgs/s",
            Scenario::RequestResponse => "req/s",
            Scenario::IdleSessions => "sessions",
        }
    }

    /// Default message size.
    pub fn default_size(self) -> usize {
        match self {
            Scenario::MetricsStream => 64,
            Scenario::Bulk => 1024,
            _ => 100,
        }
    }

    /// Default concurrency (connections or clients).
    pub fn default_concurrency(self) -> usize {
        match self {
            Scenario::Handshake => 8,
            Scenario::WalletAuth | Scenario::BundleSubmit => 32,
            Scenario::RequestResponse => 1,
            Scenario::LiveUpdates | Scenario::MetricsStream | Scenario::Bulk => 1,
            Scenario::IdleSessions => 1000,
        }
    }

    /// Whether `peer` has an implementation of this workload.
    pub fn supports(self, peer: Peer) -> bool {
        match self {
            Scenario::BundleSubmit => peer == Peer::Xtmp,
            Scenario::Handshake
            | Scenario::Bulk
            | Scenario::WalletAuth
            | Scenario::IdleSessions => peer != Peer::PlainUdp,
            Scenario::RequestResponse | Scenario::LiveUpdates | Scenario::MetricsStream => true,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// XTMP (this project).
    Xtmp,
    /// TLS 1.3 over TCP, rustls with aws-lc-rs and X25519MLKEM768.
    Rustls,
    /// QUIC, quinn (same rustls configuration).
    Quinn,
    /// TCP without cryptography.
    PlainTcp,
    /// UDP without cryptography.
    PlainUdp,
}

impl Peer {
    /// The name used on the command line and in JSON (`ratio_vs_<name>` uses `_`).
    pub fn name(self) -> &'static str {
        match self {
            Peer::Xtmp => "xtmp",
            Peer::Rustls => "rustls",
            Peer::Quinn => "quinn",
            Peer::PlainTcp => "plain-tcp",
            Peer::PlainUdp => "plain-udp",
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Peer {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "xtmp" => Peer::Xtmp,
            "rustls" | "tls" => Peer::Rustls,
            "quinn" | "quic" => Peer::Quinn,
            "plain-tcp" | "tcp" => Peer::PlainTcp,
            "plain-udp" | "udp" => Peer::PlainUdp,
            other => bail!("unknown peer {other:?} (rustls, quinn, plain, plain-tcp, plain-udp)"),
        })
    }
}

/// Parses `--compare` (`plain` means both plain TCP and plain UDP; `none` means none).
pub fn parse_compare(s: &str) -> Result<Vec<Peer>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.to_ascii_lowercase().as_str() {
            "none" => {}
            "plain" => out.extend([Peer::PlainTcp, Peer::PlainUdp]),
            "all" => out.extend([Peer::Rustls, Peer::Quinn, Peer::PlainTcp, Peer::PlainUdp]),
            _ => out.push(part.parse()?),
        }
    }
    out.retain(|p| *p != Peer::Xtmp);
    out.sort();
    out.dedup();
    Ok(out)
}

/// XTMP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// TCP (reliable, ordered).
    Tcp,
    /// UDP datagrams.
    Udp,
    /// UDP with TCP for large messages.
    Hybrid,
    /// WebSocket.
    Ws,
}

impl Transport {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Hybrid => "hybrid",
            Transport::Ws => "ws",
        }
    }
}

/// Everything a client run and its server process need to agree on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// The workload.
    pub scenario: Scenario,
    /// Measured time.
    pub duration: Duration,
    /// Warm-up before measuring (not counted).
    pub warmup: Duration,
    /// Connections / clients.
    pub concurrency: usize,
    /// Message size in bytes.
    pub size: usize,
    /// XTMP transport.
    pub transport: Transport,
    /// XTMP with `EncryptionType::None` (HMAC-SHA-256 only).
    pub crypto_off: bool,
    /// Offered load (operations per second, open loop), when set.
    pub rate: Option<f64>,
    /// Worker threads of the client runtime.
    pub client_threads: usize,
    /// Worker threads of the server runtime.
    pub server_threads: usize,
    /// Wallets to provision (wallet-auth, bundle-submit).
    pub wallets: usize,
    /// XTMP server's session key rotation interval (default: the server's, 300 s).
    #[serde(default)]
    pub key_rotation: Option<Duration>,
}
