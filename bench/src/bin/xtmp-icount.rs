//! Deterministic XTMP work for instruction counting under callgrind (see `bench/icount.sh`):
//!
//! * `handshake` — one full pqNK handshake, both sides (client start, server accept,
//!   client finish), keys from fixed seeds and `InsecureDeterministicRngForTestingOnly`;
//! * `seal` — 1,000 100-byte messages sealed with the default record protection
//!   (`PostQuantum`, XAES-256-GCM) on an established session;
//! * `open` — the same 1,000 frames opened by the peer;
//! * `session-bytes N` (not for callgrind) — establishes N sessions and prints the
//!   resident memory per server-side `Session` of the sans-IO core (the runtime's
//!   per-connection state comes on top; compare with `xtmp-bench idle-sessions`).
//!
//! Only the functions named `measured_*` are counted (`--toggle-collect`), so set-up
//! (key expansion from the seeds, session establishment for `seal`/`open`) stays out.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use xtmp_proto::xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::{
    ClientConfig, ClientHandshake, ClientOutcome, InsecureDeterministicRngForTestingOnly,
    MessageType, Received, ServerConfig, ServerHandshaker, ServerOutcome, Session, XTMPError,
    XTMPFlags,
};

const PEER: &[u8] = b"127.0.0.1:40000";
const MESSAGES: usize = 1000;
const SIZE: usize = 100;

struct Setup {
    server: ServerHandshaker,
    client_cfg: ClientConfig,
    rng: InsecureDeterministicRngForTestingOnly,
    now: Instant,
}

fn setup() -> Setup {
    let key = Arc::new(XWingSecretKey::from_seed(&[7; 32]));
    Setup {
        server: ServerHandshaker::new(ServerConfig::new(key.clone())),
        client_cfg: ClientConfig::new(key.public_key().clone()),
        rng: InsecureDeterministicRngForTestingOnly::new([9; 32]),
        now: Instant::now(),
    }
}

#[inline(never)]
fn measured_handshake(s: &mut Setup) -> Result<(Box<Session>, Box<Session>), XTMPError> {
    let (mut client, msg1) = ClientHandshake::start(s.client_cfg.clone(), 1, &mut s.rng)?;
    let ServerOutcome::Accepted {
        ack, session: srv, ..
    } = s.server.handle(s.now, PEER, false, &msg1, &mut s.rng)?
    else {
        return Err(XTMPError::UnexpectedMessage(MessageType::Retry));
    };
    let ClientOutcome::Established(cli) = client.handle(s.now, &ack)? else {
        return Err(XTMPError::UnexpectedMessage(MessageType::Retry));
    };
    Ok((cli, srv))
}

#[inline(never)]
fn measured_seal(
    c: &mut Session,
    payload: &[u8],
    frames: &mut Vec<Vec<u8>>,
) -> Result<(), XTMPError> {
    for _ in 0..MESSAGES {
        let mut f = Vec::with_capacity(96 + payload.len());
        c.seal(
            MessageType::WalletBalance,
            XTMPFlags::empty(),
            payload,
            &mut f,
        )?;
        frames.push(f);
    }
    Ok(())
}

#[inline(never)]
fn measured_open(
    s: &mut Session,
    now: Instant,
    frames: &mut [Vec<u8>],
    rng: &mut InsecureDeterministicRngForTestingOnly,
) -> Result<usize, XTMPError> {
    let mut total = 0;
    for f in frames.iter_mut() {
        if let Received::Message { payload, .. } = s.open(now, f, rng)? {
            total += payload.len();
        }
    }
    Ok(total)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let what = std::env::args().nth(1).unwrap_or_default();
    let mut s = setup();
    match what.as_str() {
        "handshake" => {
            let (c, srv) = measured_handshake(&mut s)?;
            black_box((c.session_id(), srv.session_id()));
        }
        "seal" | "open" => {
            let (mut c, mut srv) = measured_handshake(&mut s)?;
            let payload = vec![0x5Au8; SIZE];
            let mut frames = Vec::with_capacity(MESSAGES);
            if what == "seal" {
                measured_seal(&mut c, &payload, &mut frames)?;
                black_box(frames.len());
            } else {
                // Sealing is set-up here; only opening is counted.
                for _ in 0..MESSAGES {
                    let mut f = Vec::with_capacity(96 + SIZE);
                    c.seal(
                        MessageType::WalletBalance,
                        XTMPFlags::empty(),
                        &payload,
                        &mut f,
                    )?;
                    frames.push(f);
                }
                let n = measured_open(&mut srv, s.now, &mut frames, &mut s.rng)?;
                black_box(n);
            }
        }
        "session-bytes" => {
            let n: usize = std::env::args()
                .nth(2)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            let mut keep = Vec::with_capacity(n);
            let before = rss_kib();
            for _ in 0..n {
                let (c, srv) = measured_handshake(&mut s)?;
                drop(c);
                keep.push(srv);
            }
            let after = rss_kib();
            println!(
                "{} bytes per server Session ({n} sessions, RSS {before} -> {after} KiB)",
                (after.saturating_sub(before) * 1024) / n.max(1) as u64
            );
            black_box(keep.len());
        }
        _ => {
            eprintln!("usage: xtmp-icount handshake|seal|open|session-bytes [N]");
            std::process::exit(2);
        }
    }
    Ok(())
}
