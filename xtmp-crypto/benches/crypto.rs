//! Criterion benchmarks: AEAD seal/open per algorithm and message size, and
//! the X-Wing operations.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use xtmp_crypto::aead::{AeadAlgorithm, AeadKey};
use xtmp_crypto::xwing::{XWingPublicKey, XWingSecretKey};

const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB")];
const ALGS: [(AeadAlgorithm, &str); 3] = [
    (AeadAlgorithm::Aes256Gcm, "aes256gcm"),
    (AeadAlgorithm::ChaCha20Poly1305, "chacha20poly1305"),
    (AeadAlgorithm::Xaes256Gcm, "xaes256gcm"),
];

fn aead(c: &mut Criterion) {
    let key = [0x42u8; 32];
    let prefix = [0x24u8; 12];
    let mut nonce = [0u8; 24];
    nonce[..12].copy_from_slice(&prefix);
    let aad = [0u8; 16];

    for (op, name) in [(false, "aead_seal"), (true, "aead_open")] {
        let mut group = c.benchmark_group(name);
        for (len, len_name) in SIZES {
            group.throughput(Throughput::Bytes(len as u64));
            for (alg, alg_name) in ALGS {
                // XTMP uses a per-connection nonce prefix: hint it.
                let k = AeadKey::new(alg, &key, Some(prefix));
                let mut buf = vec![0u8; len];
                let id = BenchmarkId::new(alg_name, len_name);
                if op {
                    let tag = k.seal_in_place(&nonce, &aad, &mut buf).unwrap();
                    let ct = buf.clone();
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            buf.copy_from_slice(&ct);
                            k.open_in_place(black_box(&nonce), &aad, &mut buf, &tag)
                                .unwrap();
                        })
                    });
                } else {
                    group.bench_function(id, |b| {
                        b.iter(|| k.seal_in_place(black_box(&nonce), &aad, &mut buf).unwrap())
                    });
                }
            }
        }
        group.finish();
    }

    // XAES-256-GCM with a nonce prefix that is not the cached one (per-call
    // key derivation), for reference.
    let mut group = c.benchmark_group("aead_seal_xaes_uncached");
    let k = AeadKey::new(AeadAlgorithm::Xaes256Gcm, &key, None);
    for (len, len_name) in SIZES {
        group.throughput(Throughput::Bytes(len as u64));
        let mut buf = vec![0u8; len];
        group.bench_function(BenchmarkId::new("xaes256gcm", len_name), |b| {
            b.iter(|| k.seal_in_place(black_box(&nonce), &aad, &mut buf).unwrap())
        });
    }
    group.finish();
}

fn xwing(c: &mut Criterion) {
    let mut group = c.benchmark_group("xwing");
    let seed = [7u8; 32];
    let eseed = [9u8; 64];
    let sk = XWingSecretKey::from_seed(&seed);
    let pk = XWingPublicKey::from_bytes(sk.public_key().as_bytes()).unwrap();
    let (ct, _) = pk.encapsulate_derand(&eseed).unwrap();

    group.bench_function("from_seed", |b| {
        b.iter(|| XWingSecretKey::from_seed(black_box(&seed)))
    });
    group.bench_function("public_key_from_bytes", |b| {
        b.iter(|| XWingPublicKey::from_bytes(black_box(sk.public_key().as_bytes())).unwrap())
    });
    group.bench_function("encapsulate_derand", |b| {
        b.iter(|| pk.encapsulate_derand(black_box(&eseed)).unwrap())
    });
    group.bench_function("decapsulate", |b| {
        b.iter(|| sk.decapsulate(black_box(&ct)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, aead, xwing);
criterion_main!(benches);
