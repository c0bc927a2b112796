use std::sync::Arc;

use xtmp_services::error::codes;
use xtmp_services::types::{RegistryQueryRequest, RegistryStampRequest};
use xtmp_services::{client, verify_stamp, AppError, Caller, Services};

use crate::common::*;

fn get(svc: &Services, k: &str) -> Result<xtmp_services::types::RegistryEntry, AppError> {
    svc.registry_query(RegistryQueryRequest {
        key: Some(k.into()),
        ..Default::default()
    })
    .map(|r| r.entries[0].clone())
}

#[test]
fn compare_and_set_by_the_owner() {
    let e = env();
    let (a, b) = (key(1), key(2));
    login(&e.svc, 20, &a);
    login(&e.svc, 21, &b);
    let c = Caller::new(30); // Updates need no session binding, only the owner's signature.
    let up = |k: &xtmp_services::SigningKey, key: &str, v: &str, ver| {
        e.svc.registry_update(
            &c,
            client::sign_registry_update(k, key, v, ver).unwrap(),
            NOW,
        )
    };

    assert_eq!(
        get(&e.svc, "svc/a").unwrap_err(),
        AppError::RegistryKeyNotFound
    );
    let r = up(&a, "svc/a", "one", 0).unwrap();
    assert_eq!((r.version, r.owner), (1, a.address()));
    let r = up(&a, "svc/a", "two", 1).unwrap();
    assert_eq!(r.version, 2);
    let ent = get(&e.svc, "svc/a").unwrap();
    assert_eq!((ent.value.as_str(), ent.version), ("two", 2));

    // A writer that read version 1 loses.
    assert_eq!(
        up(&a, "svc/a", "stale", 1).unwrap_err(),
        AppError::StaleVersion {
            expected: 1,
            current: 2
        }
    );
    // Creating with a nonzero version.
    assert_eq!(
        up(&a, "svc/new", "x", 3).unwrap_err().code(),
        codes::STALE_VERSION
    );
    // Someone else, signing as themselves.
    assert_eq!(up(&b, "svc/a", "mine", 2).unwrap_err(), AppError::NotOwner);
    // Someone else, claiming to be the owner.
    let mut forged = client::sign_registry_update(&b, "svc/a", "mine", 2).unwrap();
    forged.owner = a.address();
    assert_eq!(
        e.svc.registry_update(&c, forged, NOW).unwrap_err(),
        AppError::BadSignature
    );
    // Value changed after signing.
    let mut tampered = client::sign_registry_update(&a, "svc/a", "three", 2).unwrap();
    tampered.value = "evil".into();
    assert_eq!(
        e.svc.registry_update(&c, tampered, NOW).unwrap_err(),
        AppError::BadSignature
    );
    // Unregistered owner.
    assert_eq!(
        up(&key(9), "svc/z", "x", 0).unwrap_err().code(),
        codes::WALLET_NOT_FOUND
    );
    // Limits.
    let big = "v".repeat(64 * 1024 + 1);
    assert_eq!(
        up(&a, "svc/big", &big, 0).unwrap_err().code(),
        codes::TOO_LARGE
    );
    up(&a, "svc/max", &"v".repeat(64 * 1024), 0).unwrap();
    assert_eq!(
        up(&a, "", "x", 0).unwrap_err().code(),
        codes::INVALID_REGISTRY_KEY
    );
    assert_eq!(
        up(&a, "a\u{0}b", "x", 0).unwrap_err().code(),
        codes::INVALID_REGISTRY_KEY
    );
    assert_eq!(get(&e.svc, "svc/a").unwrap().value, "two");
}

#[test]
fn prefix_queries_page_in_key_order() {
    let e = env();
    let a = key(1);
    login(&e.svc, 20, &a);
    let c = Caller::new(20);
    for k in ["app/1", "app/2", "app/3", "apq", "ap", "zzz"] {
        e.svc
            .registry_update(
                &c,
                client::sign_registry_update(&a, k, "v", 0).unwrap(),
                NOW,
            )
            .unwrap();
    }
    let q = |prefix: &str, after: Option<&str>, limit| {
        let r = e
            .svc
            .registry_query(RegistryQueryRequest {
                key: None,
                prefix: Some(prefix.into()),
                after: after.map(Into::into),
                limit: Some(limit),
            })
            .unwrap();
        (
            r.entries.into_iter().map(|x| x.key).collect::<Vec<_>>(),
            r.more,
        )
    };
    assert_eq!(
        q("app/", None, 10),
        (vec!["app/1".into(), "app/2".into(), "app/3".into()], false)
    );
    assert_eq!(
        q("app/", None, 2),
        (vec!["app/1".into(), "app/2".into()], true)
    );
    assert_eq!(q("app/", Some("app/2"), 2), (vec!["app/3".into()], false));
    assert_eq!(q("ap", None, 10).0.len(), 5);
    assert_eq!(q("", None, 10).0.len(), 6);
    let both = RegistryQueryRequest {
        key: Some("a".into()),
        prefix: Some("a".into()),
        ..Default::default()
    };
    assert_eq!(
        e.svc.registry_query(both).unwrap_err().code(),
        codes::BAD_REQUEST
    );
    assert_eq!(
        e.svc
            .registry_query(RegistryQueryRequest::default())
            .unwrap_err()
            .code(),
        codes::BAD_REQUEST
    );
}

#[test]
fn concurrent_writers_cannot_overwrite_each_other_unseen() {
    let e = env();
    let a = key(1);
    login(&e.svc, 20, &a);
    let svc = Arc::new(e.svc);
    let c = Caller::new(20);
    svc.registry_update(
        &c,
        client::sign_registry_update(&a, "k", "v0", 0).unwrap(),
        NOW,
    )
    .unwrap();
    // 8 writers all read version 1 and try to write version 2.
    let reqs: Vec<_> = (0..8)
        .map(|i| client::sign_registry_update(&a, "k", &format!("w{i}"), 1).unwrap())
        .collect();
    let handles: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let svc = svc.clone();
            std::thread::spawn(move || svc.registry_update(&c, r, NOW))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(r.as_ref().unwrap_err().code(), codes::STALE_VERSION);
    }
    assert_eq!(get(&svc, "k").unwrap().version, 2);
}

#[test]
fn stamps_verify_offline_and_serials_persist() {
    let dir = tempfile::tempdir().unwrap();
    let (pk, first) = {
        let svc = Services::open(config(dir.path())).unwrap();
        let s1 = svc
            .registry_stamp(
                RegistryStampRequest {
                    digest: [1u8; 32].into(),
                },
                NOW,
            )
            .unwrap();
        let s2 = svc
            .registry_stamp(
                RegistryStampRequest {
                    digest: [2u8; 32].into(),
                },
                NOW + 1,
            )
            .unwrap();
        assert_eq!((s1.serial, s2.serial), (1, 2));
        assert_eq!(s2.timestamp_ms, NOW + 1);
        let pk = svc.server_public_key().as_bytes().to_vec();
        verify_stamp(&s1, &pk).unwrap();
        verify_stamp(&s2, &pk).unwrap();
        // Tampering with any field breaks it.
        let mut t = s1.clone();
        t.timestamp_ms += 1;
        assert_eq!(
            verify_stamp(&t, &pk).unwrap_err().code(),
            codes::INVALID_STAMP
        );
        let mut t = s1.clone();
        t.digest = [3u8; 32].into();
        assert_eq!(
            verify_stamp(&t, &pk).unwrap_err().code(),
            codes::INVALID_STAMP
        );
        let mut t = s1.clone();
        t.signature = vec![0; 3309].into();
        assert_eq!(
            verify_stamp(&t, &pk).unwrap_err().code(),
            codes::INVALID_STAMP
        );
        // Another server's key.
        let other = key(5);
        assert_eq!(
            verify_stamp(&s1, other.public_key().as_bytes())
                .unwrap_err()
                .code(),
            codes::INVALID_STAMP
        );
        assert_eq!(
            verify_stamp(&s1, &[1, 2, 3]).unwrap_err().code(),
            codes::INVALID_STAMP
        );
        // The receipt round-trips through JSON.
        let j = serde_json::to_string(&s1).unwrap();
        verify_stamp(&serde_json::from_str(&j).unwrap(), &pk).unwrap();
        (pk, s1)
    };
    let svc = Services::open(config(dir.path())).unwrap();
    assert_eq!(svc.server_public_key().as_bytes(), pk.as_slice());
    let s3 = svc
        .registry_stamp(
            RegistryStampRequest {
                digest: [1u8; 32].into(),
            },
            NOW,
        )
        .unwrap();
    assert_eq!(s3.serial, 3);
    verify_stamp(&first, svc.server_public_key().as_bytes()).unwrap();
}
