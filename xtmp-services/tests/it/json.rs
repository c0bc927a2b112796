//! The JSON entry point: payload formats as documented, and no panic on any input.

use serde_json::{json, Value};
use xtmp_proto::MessageType;
use xtmp_services::error::codes;
use xtmp_services::events::{Event, LiveFilter};
use xtmp_services::types::{LiveUpdatesRequest, TxKind};
use xtmp_services::{client, Caller};

use crate::common::*;

const TYPES: &[MessageType] = &[
    MessageType::WalletRegister,
    MessageType::WalletAuth,
    MessageType::WalletBalance,
    MessageType::WalletTransaction,
    MessageType::BundleSubmit,
    MessageType::BundleStatus,
    MessageType::BundleConfirm,
    MessageType::BundleSync,
    MessageType::RegistryQuery,
    MessageType::RegistryUpdate,
    MessageType::RegistryStamp,
    MessageType::QLOCKRequest,
    MessageType::TLSLSRequest,
];

#[test]
fn documented_json_round_trip() {
    let e = env();
    let a = key(1);
    let c = Caller::new(77);
    let call = |t, v: Value| -> Value {
        let out = e.svc.handle(&c, t, v.to_string().as_bytes(), NOW).unwrap();
        serde_json::from_slice(&out).unwrap()
    };
    let pk = hex::encode(a.public_key().as_bytes());
    let r = call(MessageType::WalletRegister, json!({ "public_key": pk }));
    assert_eq!(r["address"], a.address().to_string());
    assert_eq!(r["created"], true);

    let s1 = call(MessageType::WalletAuth, json!({ "address": a.address() }));
    assert_eq!(s1["authenticated"], false);
    assert_eq!(s1["session_id"], 77);
    let step1: xtmp_services::types::WalletAuthResponse = serde_json::from_value(s1).unwrap();
    let ans = serde_json::to_value(client::auth_answer_request(&a, &step1).unwrap()).unwrap();
    assert_eq!(call(MessageType::WalletAuth, ans)["authenticated"], true);

    fund(&e, a.address(), 9);
    let b = call(MessageType::WalletBalance, json!({}));
    assert_eq!(
        (b["balance"].as_u64(), b["next_nonce"].as_u64()),
        (Some(9), Some(0))
    );
    // An empty payload is the default request.
    let out = e
        .svc
        .handle(&c, MessageType::WalletBalance, b"", NOW)
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["balance"], 9);

    let tx = serde_json::to_value(
        client::sign_transaction(&a, TxKind::Transfer, e.authority.address(), 4, 0).unwrap(),
    )
    .unwrap();
    assert_eq!(tx["kind"], "transfer");
    let r = call(MessageType::WalletTransaction, tx);
    assert_eq!(r["from_balance"], 5);

    let q = call(
        MessageType::QLOCKRequest,
        json!({"op": "acquire", "name": "n", "lease_ms": 100}),
    );
    assert_eq!(q["held_by_you"], true);
    let st = call(
        MessageType::RegistryStamp,
        json!({"digest": "00".repeat(32)}),
    );
    assert_eq!(st["serial"], 1);
    let iss = call(MessageType::TLSLSRequest, json!({"op": "issuer"}));
    assert_eq!(iss["issuer_key_id"], hex::encode(e.svc.server_key_id()));
    let sync = call(MessageType::BundleSync, json!({"cursor": 0}));
    assert_eq!(sync["entries"], json!([]));

    // Errors carry application codes.
    let err = e
        .svc
        .handle(
            &c,
            MessageType::QLOCKRequest,
            br#"{"op":"explode","name":"n"}"#,
            NOW,
        )
        .unwrap_err();
    assert_eq!(err.code(), codes::BAD_REQUEST);
    let bad_addr = br#"{"address":"xwXYZ"}"#;
    let err = e
        .svc
        .handle(&c, MessageType::WalletBalance, bad_addr, NOW)
        .unwrap_err();
    assert_eq!(err.code(), codes::INVALID_ADDRESS);
    let err = e
        .svc
        .handle(&c, MessageType::Heartbeat, b"{}", NOW)
        .unwrap_err();
    assert_eq!(err.code(), codes::BAD_REQUEST);
    let m = e.svc.metrics().unwrap();
    let wt = m
        .operations
        .iter()
        .find(|o| o.message_type == "WalletTransaction")
        .unwrap();
    assert_eq!((wt.requests, wt.errors), (1, 0));
    let q = m
        .operations
        .iter()
        .find(|o| o.message_type == "QLOCKRequest")
        .unwrap();
    assert_eq!((q.requests, q.errors), (2, 1));
    let wb = m
        .operations
        .iter()
        .find(|o| o.message_type == "WalletBalance")
        .unwrap();
    assert_eq!((wb.requests, wb.errors), (3, 1));
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn hostile_payloads_never_panic() {
    let e = env();
    let c = Caller::new(5);
    let long_hex = "0".repeat(200_000);
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut payloads: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"\"\xff\xfe\"".to_vec(),
        nested.into_bytes(),
        br#"{"public_key":"zz"}"#.to_vec(),
        format!(r#"{{"public_key":"{long_hex}"}}"#).into_bytes(),
        br#"{"address":"xw00","challenge":"00","signature":"00"}"#.to_vec(),
        br#"{"from":"xw","to":"xw","amount":-1,"nonce":1e400,"signature":""}"#.to_vec(),
        br#"{"transactions":[{}]}"#.to_vec(),
        br#"{"transactions":null}"#.to_vec(),
        br#"{"bundle_id":"00"}"#.to_vec(),
        br#"{"cursor":18446744073709551615,"limit":4294967295,"include_transactions":true}"#.to_vec(),
        br#"{"key":"","prefix":""}"#.to_vec(),
        br#"{"prefix":"\u0000\uffff","after":"\uffff","limit":0}"#.to_vec(),
        br#"{"key":"k","value":"v","expected_version":18446744073709551615,"owner":"xw","signature":""}"#.to_vec(),
        br#"{"digest":"gg"}"#.to_vec(),
        br#"{"op":"acquire","name":"n","lease_ms":18446744073709551615}"#.to_vec(),
        br#"{"op":"renew","name":"n","fencing_token":0,"lease_ms":1}"#.to_vec(),
        br#"{"op":"validate","certificate":{"version":1,"serial":1,"subject":"s","key_fingerprint":"00","issuer":"00","not_before_ms":0,"not_after_ms":0,"signature":""}}"#.to_vec(),
        br#"{"op":"crl","after":18446744073709551615,"limit":0}"#.to_vec(),
        br#"{"op":"revoke","serial":0}"#.to_vec(),
    ];
    for i in 0..200u64 {
        payloads.push(noise(i, (i as usize * 37) % 700));
    }
    for t in TYPES {
        for p in &payloads {
            // Any outcome but a panic is fine; errors must be application codes.
            if let Err(err) = e.svc.handle(&c, *t, p, NOW) {
                assert!((0x0100..=0x01FF).contains(&err.code().0), "{t:?}: {err:?}");
                assert!(err.reason().len() <= 512);
            }
        }
    }
    assert_eq!(total_balances(&e.svc), e.svc.supply().unwrap());
}

#[test]
fn live_filters_and_events_after_commit() {
    let e = env();
    let (a, b) = (key(1), key(2));
    let ca = login(&e.svc, 20, &a);
    login(&e.svc, 21, &b);
    fund(&e, a.address(), 50);
    let filter = LiveFilter::from_request(&LiveUpdatesRequest {
        wallets: vec![b.address()],
        ..Default::default()
    })
    .unwrap();
    assert!(LiveFilter::from_request(&LiveUpdatesRequest::default()).is_err());
    let too_many = LiveUpdatesRequest {
        registry_keys: (0..300).map(|i| format!("k{i}")).collect(),
        ..Default::default()
    };
    assert_eq!(
        LiveFilter::from_request(&too_many).unwrap_err().code(),
        codes::TOO_LARGE
    );

    let mut rx = e.svc.subscribe();
    transfer(&e.svc, &ca, &a, b.address(), 7).unwrap();
    // A failed transfer publishes nothing.
    assert!(transfer(&e.svc, &ca, &a, b.address(), 1_000).is_err());
    let mut seen = Vec::new();
    while let Ok(n) = rx.try_recv() {
        if filter.matches(&n.event) {
            seen.push(n.event);
        }
    }
    assert_eq!(seen.len(), 1);
    match &seen[0] {
        Event::Wallet {
            address,
            balance,
            txid,
            ..
        } => {
            assert_eq!((*address, *balance), (b.address(), 7));
            assert!(txid.is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    let j = serde_json::to_value(&seen[0]).unwrap();
    assert_eq!(j["kind"], "wallet");
}
