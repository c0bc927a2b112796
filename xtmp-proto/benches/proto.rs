//! Criterion benchmarks of the protocol core: header codec, record protection per
//! encryption type and size, and handshake CPU per role.
//!
//! `cargo bench -p xtmp-proto --bench proto`
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::*;

fn pair(enc: EncryptionType) -> (Session, Session, InsecureDeterministicRngForTestingOnly) {
    let mut r = InsecureDeterministicRngForTestingOnly::new([1; 32]);
    let sk = Arc::new(XWingSecretKey::from_seed(&[2; 32]));
    let mut sc = ServerConfig::new(sk.clone());
    sc.encryption_types = vec![enc];
    let mut sc_cfg = SessionConfig::default();
    sc_cfg.replay_mode = ReplayMode::Window;
    sc.session = sc_cfg.clone();
    let mut server = ServerHandshaker::new(sc);
    let mut cc = ClientConfig::new(sk.public_key().clone());
    cc.encryption_types = vec![enc];
    cc.session = sc_cfg;
    let now = Instant::now();
    let (mut ch, m1) = ClientHandshake::start(cc, 1, &mut r).expect("start");
    let ServerOutcome::Accepted { ack, session, .. } = server
        .handle(now, b"b", false, &m1, &mut r)
        .expect("accept")
    else {
        panic!("retry")
    };
    let ClientOutcome::Established(c) = ch.handle(now, &ack).expect("ack") else {
        panic!("retry")
    };
    (*c, *session, r)
}

fn header(c: &mut Criterion) {
    let mut m = XTMPMessage::new(MessageType::MetricsStream, 42, 7, vec![0; 64]);
    m.key_id = [1; 16];
    let h = m.header();
    let bytes = m.encode().expect("encode");
    let mut g = c.benchmark_group("header");
    g.bench_function("encode", |b| {
        let mut out = [0u8; HEADER_LEN];
        b.iter(|| black_box(&h).write(&mut out));
    });
    g.bench_function("decode", |b| {
        b.iter(|| Header::parse(black_box(&bytes), u32::MAX).expect("parse"))
    });
    g.bench_function("parse_frame_64B_with_crc", |b| {
        b.iter(|| parse_frame(black_box(&bytes), u32::MAX).expect("parse"))
    });
    g.finish();
}

fn records(c: &mut Criterion) {
    for enc in [
        EncryptionType::None,
        EncryptionType::Aes256Gcm,
        EncryptionType::ChaCha20Poly1305,
        EncryptionType::PostQuantum,
    ] {
        let mut g = c.benchmark_group(format!("record/{}", enc.name()));
        for size in [64usize, 1024, 65536] {
            let (mut cl, mut sv, mut r) = pair(enc);
            let payload = vec![0x5Au8; size];
            g.throughput(Throughput::Bytes(size as u64));
            let mut out = Vec::with_capacity(size + HEADER_LEN);
            g.bench_function(format!("seal/{size}"), |b| {
                b.iter(|| {
                    out.clear();
                    cl.seal(
                        MessageType::MetricsStream,
                        XTMPFlags::empty(),
                        &payload,
                        &mut out,
                    )
                    .expect("seal")
                })
            });
            let now = Instant::now();
            g.bench_function(format!("seal+open/{size}"), |b| {
                b.iter(|| {
                    out.clear();
                    cl.seal(
                        MessageType::MetricsStream,
                        XTMPFlags::empty(),
                        &payload,
                        &mut out,
                    )
                    .expect("seal");
                    match sv.open(now, &mut out, &mut r).expect("open") {
                        Received::Message { payload, .. } => {
                            black_box(payload.len());
                        }
                        _ => unreachable!(),
                    }
                })
            });
        }
        g.finish();
    }
}

fn handshakes(c: &mut Criterion) {
    let sk = Arc::new(XWingSecretKey::from_seed(&[2; 32]));
    let ck = Arc::new(XWingSecretKey::from_seed(&[3; 32]));
    let mut g = c.benchmark_group("handshake");
    for ik in [false, true] {
        let name = if ik { "pqIK" } else { "pqNK" };
        let mut cc = ClientConfig::new(sk.public_key().clone());
        let mut sc = ServerConfig::new(sk.clone());
        if ik {
            cc.client_key = Some(ck.clone());
            sc.authorized_clients = [fingerprint(ck.public_key())].into_iter().collect();
            sc.require_client_auth = true;
        }
        let now = Instant::now();
        let mut r = InsecureDeterministicRngForTestingOnly::new([9; 32]);
        let mut ts = 1u64;
        // Server CPU per handshake: message 1 → accepted session + message 2.
        let mut server = ServerHandshaker::new(sc.clone());
        g.bench_function(format!("{name}/server"), |b| {
            b.iter_batched(
                || {
                    ts += 1;
                    ClientHandshake::start(cc.clone(), ts, &mut r)
                        .expect("start")
                        .1
                },
                |m1| {
                    let mut r2 = InsecureDeterministicRngForTestingOnly::new([4; 32]);
                    server
                        .handle(now, b"addr", false, &m1, &mut r2)
                        .expect("accept")
                },
                BatchSize::SmallInput,
            )
        });
        // Client CPU: message 1 + processing message 2.
        let mut server = ServerHandshaker::new(sc.clone());
        g.bench_function(format!("{name}/client"), |b| {
            b.iter_batched(
                || {
                    ts += 1;
                    let (_, m1) = ClientHandshake::start(cc.clone(), ts, &mut r).expect("start");
                    let _ = m1;
                    ts
                },
                |t| {
                    let mut r2 =
                        InsecureDeterministicRngForTestingOnly::new(xtmp_crypto::kdf::sha256(&[
                            &t.to_be_bytes(),
                        ]));
                    let (mut ch, m1) = ClientHandshake::start(cc.clone(), t, &mut r2).expect("s");
                    // Server work happens here too; subtract `server` for the client's share.
                    let ServerOutcome::Accepted { ack, .. } = server
                        .handle(now, b"addr", false, &m1, &mut r2)
                        .expect("accept")
                    else {
                        panic!("retry")
                    };
                    ch.handle(now, &ack).expect("ack")
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, header, records, handshakes);
criterion_main!(benches);
