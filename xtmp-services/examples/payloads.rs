//! Prints one real JSON request and response per message type (long hex shortened), the
//! material of `docs/PROTOCOL.md` §12.9: `cargo run -p xtmp-services --example payloads`.
#![allow(clippy::unwrap_used)]

use serde::Serialize;
use serde_json::Value;
use xtmp_proto::MessageType;
use xtmp_services::events::{Event, Notification};
use xtmp_services::types::*;
use xtmp_services::{client, static_key_fingerprint, Caller, Services, ServicesConfig, SigningKey};

fn shorten(v: Value) -> Value {
    match v {
        Value::String(s) if s.len() > 80 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Value::String(format!("{}…({} bytes)", &s[..16], s.len() / 2))
        }
        Value::Array(a) => Value::Array(a.into_iter().map(shorten).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, shorten(v))).collect()),
        other => other,
    }
}

fn show(
    title: &str,
    t: MessageType,
    req: &impl Serialize,
    svc: &Services,
    c: &Caller,
    now: u64,
) -> Value {
    let body = serde_json::to_vec(req).unwrap();
    let out = svc.handle(c, t, &body, now);
    println!("#### {title} (`{t}`, 0x{:02X})\n", t.0);
    println!(
        "Request:\n```json\n{}\n```",
        serde_json::to_string_pretty(&shorten(serde_json::to_value(req).unwrap())).unwrap()
    );
    match out {
        Ok(b) => {
            let v = serde_json::from_slice::<Value>(&b).unwrap();
            println!(
                "Response:\n```json\n{}\n```\n",
                serde_json::to_string_pretty(&shorten(v.clone())).unwrap()
            );
            v
        }
        Err(e) => {
            let name = xtmp_services::error::code_name(e.code()).unwrap_or("?");
            println!(
                "Reply: `Error` with code `0x{:04X}` (`{name}`), reason `{}`\n",
                e.code().0,
                e.reason()
            );
            Value::Null
        }
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::from_seed(&[0xAA; 32]).unwrap();
    let alice = SigningKey::from_seed(&[1; 32]).unwrap();
    let bob = SigningKey::from_seed(&[2; 32]).unwrap();
    let mut cfg = ServicesConfig::new(dir.path());
    cfg.set_mint_authority(Some(authority.public_key().as_bytes().to_vec()));
    let svc = Services::open(cfg).unwrap();
    let now = 1_767_225_600_000u64;
    let ca = Caller::new(0x1111);
    let c = Caller::new(0x5a17_c0de_0000_0001);
    let cb = Caller::new(0x2222);
    for (k, cc) in [(&authority, &ca), (&bob, &cb)] {
        svc.wallet_register(cc, client::register_request(k), now)
            .unwrap();
        let s1 = svc
            .wallet_auth(cc, client::auth_challenge_request(k), now)
            .unwrap();
        svc.wallet_auth(cc, client::auth_answer_request(k, &s1).unwrap(), now)
            .unwrap();
    }

    show(
        "WalletRegister",
        MessageType::WalletRegister,
        &client::register_request(&alice),
        &svc,
        &c,
        now,
    );
    let s1 = show(
        "WalletAuth, step 1",
        MessageType::WalletAuth,
        &client::auth_challenge_request(&alice),
        &svc,
        &c,
        now,
    );
    let s1: WalletAuthResponse = serde_json::from_value(s1).unwrap();
    show(
        "WalletAuth, step 2",
        MessageType::WalletAuth,
        &client::auth_answer_request(&alice, &s1).unwrap(),
        &svc,
        &c,
        now,
    );
    let mint =
        client::sign_transaction(&authority, TxKind::Mint, alice.address(), 1000, 0).unwrap();
    show(
        "WalletTransaction (mint, by the authority)",
        MessageType::WalletTransaction,
        &mint,
        &svc,
        &ca,
        now,
    );
    show(
        "WalletBalance",
        MessageType::WalletBalance,
        &WalletBalanceRequest { address: None },
        &svc,
        &c,
        now,
    );
    let pay = client::sign_transaction(&alice, TxKind::Transfer, bob.address(), 250, 0).unwrap();
    show(
        "WalletTransaction (transfer)",
        MessageType::WalletTransaction,
        &pay,
        &svc,
        &c,
        now,
    );
    show(
        "WalletTransaction replayed (error)",
        MessageType::WalletTransaction,
        &pay,
        &svc,
        &c,
        now,
    );

    let txs = vec![
        client::sign_transaction(&alice, TxKind::Transfer, bob.address(), 10, 1).unwrap(),
        client::sign_transaction(&bob, TxKind::Transfer, alice.address(), 5, 0).unwrap(),
    ];
    let sub = show(
        "BundleSubmit",
        MessageType::BundleSubmit,
        &BundleSubmitRequest { transactions: txs },
        &svc,
        &c,
        now,
    );
    let id: xtmp_services::encoding::Hex32 =
        serde_json::from_value(sub["bundle_id"].clone()).unwrap();
    show(
        "BundleStatus",
        MessageType::BundleStatus,
        &BundleIdRequest { bundle_id: id },
        &svc,
        &c,
        now,
    );
    show(
        "BundleConfirm",
        MessageType::BundleConfirm,
        &BundleIdRequest { bundle_id: id },
        &svc,
        &c,
        now + 1,
    );
    show(
        "BundleSync",
        MessageType::BundleSync,
        &BundleSyncRequest {
            cursor: 0,
            limit: Some(2),
            include_transactions: false,
        },
        &svc,
        &c,
        now,
    );
    let up =
        client::sign_registry_update(&alice, "services/alice/endpoint", "tcp://10.0.0.7:7000", 0)
            .unwrap();
    show(
        "RegistryUpdate",
        MessageType::RegistryUpdate,
        &up,
        &svc,
        &c,
        now,
    );
    let stale =
        client::sign_registry_update(&alice, "services/alice/endpoint", "tcp://10.0.0.8:7000", 0)
            .unwrap();
    show(
        "RegistryUpdate with a stale version (error)",
        MessageType::RegistryUpdate,
        &stale,
        &svc,
        &c,
        now,
    );
    show(
        "RegistryQuery (one key)",
        MessageType::RegistryQuery,
        &RegistryQueryRequest {
            key: Some("services/alice/endpoint".into()),
            ..Default::default()
        },
        &svc,
        &c,
        now,
    );
    show(
        "RegistryQuery (prefix)",
        MessageType::RegistryQuery,
        &RegistryQueryRequest {
            prefix: Some("services/".into()),
            limit: Some(10),
            ..Default::default()
        },
        &svc,
        &c,
        now,
    );
    show(
        "RegistryStamp",
        MessageType::RegistryStamp,
        &RegistryStampRequest {
            digest: [0x5e; 32].into(),
        },
        &svc,
        &c,
        now,
    );

    show(
        "QLOCKRequest acquire",
        MessageType::QLOCKRequest,
        &QlockRequest::Acquire {
            name: "ledger-export".into(),
            lease_ms: 30_000,
        },
        &svc,
        &c,
        now,
    );
    show(
        "QLOCKRequest acquire by another session (error)",
        MessageType::QLOCKRequest,
        &QlockRequest::Acquire {
            name: "ledger-export".into(),
            lease_ms: 30_000,
        },
        &svc,
        &cb,
        now,
    );
    show(
        "QLOCKRequest renew",
        MessageType::QLOCKRequest,
        &QlockRequest::Renew {
            name: "ledger-export".into(),
            fencing_token: 1,
            lease_ms: 30_000,
        },
        &svc,
        &c,
        now + 10_000,
    );
    show(
        "QLOCKRequest inspect",
        MessageType::QLOCKRequest,
        &QlockRequest::Inspect {
            name: "ledger-export".into(),
        },
        &svc,
        &cb,
        now + 10_000,
    );
    show(
        "QLOCKRequest release",
        MessageType::QLOCKRequest,
        &QlockRequest::Release {
            name: "ledger-export".into(),
            fencing_token: 1,
        },
        &svc,
        &c,
        now + 20_000,
    );

    let fp = static_key_fingerprint(&[7u8; 1216]).unwrap();
    let node = Caller::with_client_key(0x3333, fp);
    let issued = show(
        "TLSLSRequest issue",
        MessageType::TLSLSRequest,
        &TlslsRequest::Issue {
            subject: "bpi-node-7.example".into(),
            key_fingerprint: fp.into(),
            validity_secs: Some(86_400),
        },
        &svc,
        &node,
        now,
    );
    let cert: Certificate = serde_json::from_value(issued["certificate"].clone()).unwrap();
    show(
        "TLSLSRequest validate",
        MessageType::TLSLSRequest,
        &TlslsRequest::Validate {
            certificate: cert.clone(),
        },
        &svc,
        &c,
        now + 1,
    );
    show(
        "TLSLSRequest renew",
        MessageType::TLSLSRequest,
        &TlslsRequest::Renew {
            serial: cert.serial,
            validity_secs: None,
        },
        &svc,
        &node,
        now + 2,
    );
    show(
        "TLSLSRequest revoke",
        MessageType::TLSLSRequest,
        &TlslsRequest::Revoke {
            serial: cert.serial,
            reason: Some("superseded".into()),
        },
        &svc,
        &node,
        now + 3,
    );
    show(
        "TLSLSRequest validate a revoked certificate (error)",
        MessageType::TLSLSRequest,
        &TlslsRequest::Validate { certificate: cert },
        &svc,
        &c,
        now + 4,
    );
    show(
        "TLSLSRequest crl",
        MessageType::TLSLSRequest,
        &TlslsRequest::Crl {
            after: 0,
            limit: None,
        },
        &svc,
        &c,
        now,
    );
    show(
        "TLSLSRequest issuer",
        MessageType::TLSLSRequest,
        &TlslsRequest::Issuer {},
        &svc,
        &c,
        now,
    );

    println!("#### Streams (`LiveUpdates` 0x40, `EventStream` 0x41, `MetricsStream` 0x42)\n");
    let live = LiveUpdatesRequest {
        wallets: vec![bob.address()],
        bundles: vec![id],
        registry_keys: vec!["services/alice/endpoint".into()],
    };
    println!(
        "LiveUpdates request:\n```json\n{}\n```",
        serde_json::to_string_pretty(&live).unwrap()
    );
    let n = Notification {
        seq: 42,
        at_ms: now,
        event: Event::Wallet {
            address: bob.address(),
            balance: 255,
            next_nonce: 1,
            txid: Some(pay.txid()),
        },
    };
    println!(
        "push:\n```json\n{}\n```",
        serde_json::to_string_pretty(&n).unwrap()
    );
    println!(
        "EventStream request:\n```json\n{}\n```",
        serde_json::to_string_pretty(&EventStreamRequest {
            kinds: vec!["bundle".into(), "lock".into()]
        })
        .unwrap()
    );
    println!(
        "MetricsStream services part:\n```json\n{}\n```",
        serde_json::to_string_pretty(&svc.metrics().unwrap()).unwrap()
    );
}
