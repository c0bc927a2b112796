use xtmp_services::error::codes;
use xtmp_services::events::Event;
use xtmp_services::types::QlockRequest;
use xtmp_services::{AppError, Caller, Services, SessionId};

use crate::common::*;

fn acquire(svc: &Services, c: &Caller, name: &str, lease: u64, now: u64) -> Result<u64, AppError> {
    svc.qlock(
        c,
        QlockRequest::Acquire {
            name: name.into(),
            lease_ms: lease,
        },
        now,
    )
    .map(|r| r.fencing_token.unwrap())
}

#[test]
fn acquire_renew_release_inspect() {
    let e = env();
    let (s1, s2) = (Caller::new(1), Caller::new(2));
    let t1 = acquire(&e.svc, &s1, "db", 10_000, NOW).unwrap();
    // Held by someone else.
    assert_eq!(
        acquire(&e.svc, &s2, "db", 10_000, NOW).unwrap_err(),
        AppError::LockHeld {
            expires_at_ms: NOW + 10_000
        }
    );
    // Re-acquiring our own lock extends it and keeps the token.
    assert_eq!(acquire(&e.svc, &s1, "db", 20_000, NOW + 1).unwrap(), t1);
    let ins = e
        .svc
        .qlock(&s2, QlockRequest::Inspect { name: "db".into() }, NOW + 2)
        .unwrap();
    assert!(ins.held && !ins.held_by_you);
    assert_eq!(ins.fencing_token, Some(t1));
    assert_eq!(ins.expires_at_ms, Some(NOW + 20_001));
    // The holder's wallet is shown (session 1 is the authority's).
    assert_eq!(ins.holder_wallet, Some(e.authority.address()));

    let renew = |c: &Caller, tok, now| {
        e.svc.qlock(
            c,
            QlockRequest::Renew {
                name: "db".into(),
                fencing_token: tok,
                lease_ms: 5_000,
            },
            now,
        )
    };
    assert_eq!(renew(&s2, t1, NOW + 3).unwrap_err(), AppError::LockNotHeld);
    assert_eq!(
        renew(&s1, t1 + 7, NOW + 3).unwrap_err(),
        AppError::StaleFencingToken { current: t1 }
    );
    let r = renew(&s1, t1, NOW + 3).unwrap();
    assert_eq!(r.expires_at_ms, Some(NOW + 5_003));
    assert!(r.held_by_you);

    let release = |c: &Caller, tok| {
        e.svc.qlock(
            c,
            QlockRequest::Release {
                name: "db".into(),
                fencing_token: tok,
            },
            NOW + 4,
        )
    };
    assert_eq!(release(&s2, t1).unwrap_err(), AppError::LockNotHeld);
    assert_eq!(
        release(&s1, t1 + 1).unwrap_err().code(),
        codes::STALE_FENCING_TOKEN
    );
    assert!(!release(&s1, t1).unwrap().held);
    assert_eq!(release(&s1, t1).unwrap_err(), AppError::LockNotHeld);
    let ins = e
        .svc
        .qlock(&s2, QlockRequest::Inspect { name: "db".into() }, NOW + 5)
        .unwrap();
    assert!(!ins.held);

    let t2 = acquire(&e.svc, &s2, "db", 1_000, NOW + 6).unwrap();
    assert!(t2 > t1);

    // Input checks.
    assert_eq!(
        acquire(&e.svc, &s1, "x", 0, NOW).unwrap_err().code(),
        codes::INVALID_LEASE
    );
    assert_eq!(
        acquire(&e.svc, &s1, "x", 3_600_001, NOW)
            .unwrap_err()
            .code(),
        codes::INVALID_LEASE
    );
    assert_eq!(
        acquire(&e.svc, &s1, "", 10, NOW).unwrap_err().code(),
        codes::INVALID_LOCK_NAME
    );
    assert_eq!(
        acquire(&e.svc, &s1, &"n".repeat(257), 10, NOW)
            .unwrap_err()
            .code(),
        codes::INVALID_LOCK_NAME
    );
}

#[test]
fn expiry_and_session_death_free_the_lock() {
    let e = env();
    let (s1, s2) = (Caller::new(1), Caller::new(2));
    let mut events = e.svc.subscribe();
    let t1 = acquire(&e.svc, &s1, "job", 1_000, NOW).unwrap();
    assert_eq!(
        acquire(&e.svc, &s2, "job", 1_000, NOW + 999)
            .unwrap_err()
            .code(),
        codes::LOCK_HELD
    );
    // At the end of the lease the lock is free; a new holder gets a larger token.
    let t2 = acquire(&e.svc, &s2, "job", 1_000, NOW + 1_000).unwrap();
    assert!(t2 > t1);
    // The old holder can no longer renew or release.
    let r = e.svc.qlock(
        &s1,
        QlockRequest::Renew {
            name: "job".into(),
            fencing_token: t1,
            lease_ms: 10,
        },
        NOW + 1_001,
    );
    assert_eq!(r.unwrap_err(), AppError::LockNotHeld);

    // Session death.
    e.svc.session_closed(SessionId(2), NOW + 1_002);
    let t3 = acquire(&e.svc, &s1, "job", 1_000, NOW + 1_003).unwrap();
    assert!(t3 > t2);

    // tick() reclaims expired leases with an event.
    e.svc.tick(NOW + 5_000);
    assert_eq!(e.svc.metrics().unwrap().locks_held, 0);

    let mut states = Vec::new();
    while let Ok(n) = events.try_recv() {
        if let Event::Lock {
            state,
            fencing_token,
            ..
        } = n.event
        {
            states.push((state, fencing_token));
        }
    }
    assert_eq!(
        states,
        vec![
            ("acquired".to_string(), t1),
            ("expired".to_string(), t1),
            ("acquired".to_string(), t2),
            ("released".to_string(), t2),
            ("acquired".to_string(), t3),
            ("expired".to_string(), t3),
        ]
    );
}

#[test]
fn per_session_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.set_lock_limits(100, 2);
    let svc = Services::open(cfg).unwrap();
    let c = Caller::new(1);
    acquire(&svc, &c, "a", 100, NOW).unwrap();
    acquire(&svc, &c, "b", 100, NOW).unwrap();
    assert_eq!(
        acquire(&svc, &c, "c", 100, NOW).unwrap_err().code(),
        codes::LIMIT_REACHED
    );
    // Another session is not affected.
    acquire(&svc, &Caller::new(2), "c", 100, NOW).unwrap();
}

#[test]
fn fencing_tokens_increase_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for round in 0..3 {
        let svc = Services::open(config(dir.path())).unwrap();
        for i in 0..5 {
            let t = acquire(&svc, &Caller::new(i), &format!("l{round}-{i}"), 100, NOW).unwrap();
            assert!(t > last, "token {t} after {last}");
            last = t;
        }
    }
}
