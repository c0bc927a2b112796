//! Test vectors in `docs/test-vectors/`: checked on every test run, regenerated with
//! `XTMP_WRITE_VECTORS=1 cargo test -p xtmp-proto --test vectors`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/test-vectors")
}

/// Writes (when asked) or compares the vector file.
fn check_or_write(name: &str, v: &Value) {
    let path = dir().join(name);
    let text = serde_json::to_string_pretty(v).unwrap() + "\n";
    if std::env::var_os("XTMP_WRITE_VECTORS").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let on_disk =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let disk: Value = serde_json::from_str(&on_disk).unwrap();
    assert_eq!(
        &disk, v,
        "{name} differs from what the implementation produces"
    );
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn arr32(v: &Value) -> [u8; 32] {
    unhex(v).try_into().unwrap()
}

/// Records every draw so the vectors can list the randomness in order.
struct Recording {
    inner: InsecureDeterministicRngForTestingOnly,
    draws: Vec<String>,
}

impl SecureRandom for Recording {
    fn fill(&mut self, dest: &mut [u8]) {
        self.inner.fill(dest);
        self.draws.push(hex::encode(&*dest));
    }
}

/// Replays recorded draws (what a second implementation does with the vector file).
struct Replay(std::collections::VecDeque<Vec<u8>>);

impl SecureRandom for Replay {
    fn fill(&mut self, dest: &mut [u8]) {
        let next = self.0.pop_front().expect("vector ran out of randomness");
        assert_eq!(
            next.len(),
            dest.len(),
            "randomness drawn in a different order"
        );
        dest.copy_from_slice(&next);
    }
}

fn enc_name(e: EncryptionType) -> &'static str {
    e.name()
}

#[test]
fn frame_vectors() {
    let session_key: [u8; 32] = core::array::from_fn(|i| i as u8);
    let auth_key: [u8; 32] = core::array::from_fn(|i| 0x20 + i as u8);
    let session_id = 0x0123_4567_89AB_CDEFu64;
    let now = Instant::now();
    let mut cases = Vec::new();
    let plaintext = br#"{"wallet":"xtmp1qexample","amount":42}"#;
    for (i, enc) in [
        EncryptionType::None,
        EncryptionType::Aes256Gcm,
        EncryptionType::ChaCha20Poly1305,
        EncryptionType::PostQuantum,
    ]
    .into_iter()
    .enumerate()
    {
        let dir = if i % 2 == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let generation = i as u32;
        let seq = 1000 + i as u64;
        let flags = XTMPFlags::REQUIRES_ACK;
        let ks = XTMPKeySet::from_keys(
            &session_key,
            &auth_key,
            dir,
            generation,
            session_id,
            enc,
            now,
        );
        let frame = ks
            .seal_message(
                session_id,
                seq,
                MessageType::WalletTransaction,
                flags,
                plaintext,
            )
            .unwrap();
        // The receiver side opens it.
        let mut copy = frame.clone();
        let h = ks.open_message(&mut copy).unwrap();
        assert_eq!(&copy[HEADER_LEN..], plaintext);
        assert_eq!(h.sequence_number, seq);
        cases.push(json!({
            "encryption_type": enc_name(enc),
            "session_id": format!("{session_id:016x}"),
            "direction": dir as u8,
            "key_generation": generation,
            "sequence_number": seq,
            "message_type": MessageType::WalletTransaction.0,
            "flags_in": flags.bits(),
            "plaintext": hex::encode(plaintext),
            "session_key": hex::encode(session_key),
            "auth_key": hex::encode(auth_key),
            "key_id": hex::encode(ks.key_id()),
            "nonce": hex::encode(&frame[56..80]),
            "frame": hex::encode(&frame),
        }));
    }
    let v = json!({
        "description": "One sealed frame per encryption type (PROTOCOL.md §5.2-5.4). Seal `plaintext` with the given keys; the result must equal `frame` (header and payload). `flags_in` is what the application asked for; ENCRYPTED is added for encrypted types.",
        "cases": cases,
    });
    check_or_write("frames.json", &v);

    // Independent check from the file alone.
    for c in load("frames.json")["cases"].as_array().unwrap() {
        let enc = EncryptionType::from_name(c["encryption_type"].as_str().unwrap()).unwrap();
        let dir = match c["direction"].as_u64().unwrap() {
            1 => Direction::ClientToServer,
            _ => Direction::ServerToClient,
        };
        let sid = u64::from_str_radix(c["session_id"].as_str().unwrap(), 16).unwrap();
        let ks = XTMPKeySet::from_keys(
            &arr32(&c["session_key"]),
            &arr32(&c["auth_key"]),
            dir,
            c["key_generation"].as_u64().unwrap() as u32,
            sid,
            enc,
            now,
        );
        let mut frame = unhex(&c["frame"]);
        ks.open_message(&mut frame).unwrap();
        assert_eq!(frame[HEADER_LEN..], unhex(&c["plaintext"])[..]);
    }
}

fn handshake_case(ik: bool) -> Value {
    let server_seed = [0x5Au8; 32];
    let client_seed = [0xC1u8; 32];
    let server_key = Arc::new(XWingSecretKey::from_seed(&server_seed));
    let client_key = Arc::new(XWingSecretKey::from_seed(&client_seed));
    let mut sc = ServerConfig::new(server_key.clone());
    if ik {
        sc.require_client_auth = true;
        sc.authorized_clients = [fingerprint(client_key.public_key())].into_iter().collect();
    }
    let mut server = ServerHandshaker::new(sc);
    let mut cc = ClientConfig::new(server_key.public_key().clone());
    if ik {
        cc.client_key = Some(client_key.clone());
    }
    let ts = 1_767_225_600_000_000_000u64; // 2026-01-01T00:00:00Z
    let mut crng = Recording {
        inner: InsecureDeterministicRngForTestingOnly::new([0xA1; 32]),
        draws: vec![],
    };
    let mut srng = Recording {
        inner: InsecureDeterministicRngForTestingOnly::new([0xB2; 32]),
        draws: vec![],
    };
    let now = Instant::now();
    let (mut ch, m1) = ClientHandshake::start(cc.clone(), ts, &mut crng).unwrap();
    let ServerOutcome::Accepted {
        ack, session: s, ..
    } = server
        .handle(now, b"192.0.2.1:4000", false, &m1, &mut srng)
        .unwrap()
    else {
        panic!()
    };
    let ClientOutcome::Established(c) = ch.handle(now, &ack).unwrap() else {
        panic!()
    };
    assert_eq!(c.handshake_hash(), s.handshake_hash());
    json!({
        "pattern": if ik { "pqIK" } else { "pqNK" },
        "server_static_seed_key": hex::encode(server_seed),
        "server_static_public_key": hex::encode(server_key.public_key().as_bytes()),
        "client_static_seed_key": if ik { json!(hex::encode(client_seed)) } else { Value::Null },
        "client_static_public_key": if ik { json!(hex::encode(client_key.public_key().as_bytes())) } else { Value::Null },
        "timestamp_ns": ts,
        "client_randomness": crng.draws,
        "server_randomness": srng.draws,
        "message1": hex::encode(&m1),
        "message2": hex::encode(&ack),
        "session_id": format!("{:016x}", s.session_id()),
        "encryption_type": c.encryption_type().name(),
        "handshake_hash": hex::encode(c.handshake_hash()),
        "c2s_session_key": hex::encode(c.send_keys().session_key()),
        "c2s_auth_key": hex::encode(c.send_keys().auth_key()),
        "s2c_session_key": hex::encode(c.recv_keys().session_key()),
        "s2c_auth_key": hex::encode(c.recv_keys().auth_key()),
        "rekey_0_key": hex::encode(c.dangerous_rekey_secret_for_test_vectors()),
    })
}

#[test]
fn handshake_vectors() {
    let v = json!({
        "description": "Full handshakes with fixed static keys, timestamp and randomness (PROTOCOL.md §4, §5.1). client_randomness in draw order: X-Wing encapsulation seed to the server key (64 bytes: ML-KEM m || X25519 ephemeral), ephemeral key seed (32). server_randomness in draw order: cookie secret (32, unused when no cookie is required), session id (8, redrawn while zero), encapsulation seed to e (64), then in pqIK the encapsulation seed to the client key (64).",
        "cases": [handshake_case(false), handshake_case(true)],
    });
    check_or_write("handshake.json", &v);

    // Replay the file's randomness through both roles and compare bytes.
    for c in load("handshake.json")["cases"].as_array().unwrap() {
        let server_key = Arc::new(XWingSecretKey::from_seed(&arr32(
            &c["server_static_seed_key"],
        )));
        assert_eq!(
            server_key.public_key().as_bytes()[..],
            unhex(&c["server_static_public_key"])[..]
        );
        let mut cc = ClientConfig::new(server_key.public_key().clone());
        let mut sc = ServerConfig::new(server_key.clone());
        if !c["client_static_seed_key"].is_null() {
            let k = Arc::new(XWingSecretKey::from_seed(&arr32(
                &c["client_static_seed_key"],
            )));
            sc.require_client_auth = true;
            sc.authorized_clients = [fingerprint(k.public_key())].into_iter().collect();
            cc.client_key = Some(k);
        }
        let draws = |k: &str| Replay(c[k].as_array().unwrap().iter().map(unhex).collect());
        let mut crng = draws("client_randomness");
        let mut srng = draws("server_randomness");
        let (mut ch, m1) =
            ClientHandshake::start(cc, c["timestamp_ns"].as_u64().unwrap(), &mut crng).unwrap();
        assert_eq!(hex::encode(&m1), c["message1"].as_str().unwrap());
        let mut server = ServerHandshaker::new(sc);
        let now = Instant::now();
        let ServerOutcome::Accepted { ack, .. } = server
            .handle(now, b"192.0.2.1:4000", false, &m1, &mut srng)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(hex::encode(&ack), c["message2"].as_str().unwrap());
        let ClientOutcome::Established(s) = ch.handle(now, &ack).unwrap() else {
            panic!()
        };
        assert_eq!(
            hex::encode(s.handshake_hash()),
            c["handshake_hash"].as_str().unwrap()
        );
        assert_eq!(
            hex::encode(s.send_keys().session_key()),
            c["c2s_session_key"].as_str().unwrap()
        );
    }
}

#[test]
fn rotation_vector() {
    let server_key = Arc::new(XWingSecretKey::from_seed(&[0x5A; 32]));
    let mut server = ServerHandshaker::new(ServerConfig::new(server_key.clone()));
    let cc = ClientConfig::new(server_key.public_key().clone());
    let mut r = InsecureDeterministicRngForTestingOnly::new([0xD4; 32]);
    let now = Instant::now();
    let (mut ch, m1) = ClientHandshake::start(cc, 1, &mut r).unwrap();
    let ServerOutcome::Accepted {
        ack,
        session: mut s,
        ..
    } = server.handle(now, b"a", false, &m1, &mut r).unwrap()
    else {
        panic!()
    };
    let ClientOutcome::Established(mut c) = ch.handle(now, &ack).unwrap() else {
        panic!()
    };
    let gen0 = json!({
        "c2s_session_key": hex::encode(c.send_keys().session_key()),
        "s2c_session_key": hex::encode(c.recv_keys().session_key()),
        "rekey_0_key": hex::encode(c.dangerous_rekey_secret_for_test_vectors()),
    });
    let mut crng = Recording {
        inner: InsecureDeterministicRngForTestingOnly::new([0xE5; 32]),
        draws: vec![],
    };
    let mut srng = Recording {
        inner: InsecureDeterministicRngForTestingOnly::new([0xF6; 32]),
        draws: vec![],
    };
    c.initiate_key_update(&mut crng).unwrap();
    let ku = c.poll_transmit().unwrap();
    let mut kuc = ku.clone();
    s.open(now, &mut kuc, &mut srng).unwrap();
    let kua = s.poll_transmit().unwrap();
    let mut kuac = kua.clone();
    c.open(now, &mut kuac, &mut srng).unwrap();
    assert_eq!(c.key_generation(), 1);
    let mut frame = Vec::new();
    c.seal(
        MessageType::LiveUpdates,
        XTMPFlags::empty(),
        b"after rotation",
        &mut frame,
    )
    .unwrap();
    let v = json!({
        "description": "A key update (PROTOCOL.md §5.7) after a pqNK handshake. The client draws the ephemeral seed (client_randomness); the server draws the encapsulation seed (server_randomness). The KeyUpdate and KeyUpdateAck frames are sealed under generation 0; `frame` is the client's next message, sealed under generation 1.",
        "session_id": format!("{:016x}", c.session_id()),
        "encryption_type": c.encryption_type().name(),
        "generation_0": gen0,
        "client_randomness": crng.draws,
        "server_randomness": srng.draws,
        "key_update": hex::encode(&ku),
        "key_update_ack": hex::encode(&kua),
        "generation_1": {
            "c2s_session_key": hex::encode(c.send_keys().session_key()),
            "c2s_auth_key": hex::encode(c.send_keys().auth_key()),
            "s2c_session_key": hex::encode(c.recv_keys().session_key()),
            "s2c_auth_key": hex::encode(c.recv_keys().auth_key()),
            "rekey_1_key": hex::encode(c.dangerous_rekey_secret_for_test_vectors()),
        },
        "plaintext": hex::encode(b"after rotation"),
        "frame": hex::encode(&frame),
    });
    check_or_write("rotation.json", &v);
    // The generation-1 frame opens with the generation-1 keys from the file alone.
    let f = load("rotation.json");
    let sid = u64::from_str_radix(f["session_id"].as_str().unwrap(), 16).unwrap();
    let ks = XTMPKeySet::from_keys(
        &arr32(&f["generation_1"]["c2s_session_key"]),
        &arr32(&f["generation_1"]["c2s_auth_key"]),
        Direction::ClientToServer,
        1,
        sid,
        EncryptionType::PostQuantum,
        now,
    );
    let mut fr = unhex(&f["frame"]);
    ks.open_message(&mut fr).unwrap();
    assert_eq!(&fr[HEADER_LEN..], b"after rotation");
}
