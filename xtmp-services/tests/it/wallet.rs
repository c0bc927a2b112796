use xtmp_services::error::codes;
use xtmp_services::types::{
    SignedTransaction, TxKind, WalletAuthRequest, WalletBalanceRequest, WalletRegisterRequest,
};
use xtmp_services::{client, AppError, Caller, GenesisAllocation, Services};

use crate::common::*;

#[test]
fn register_is_idempotent_and_checks_the_key() {
    let e = env();
    let c = Caller::new(5);
    let k = key(1);
    let r1 = e
        .svc
        .wallet_register(&c, client::register_request(&k), NOW)
        .unwrap();
    assert!(r1.created);
    assert_eq!(r1.address, k.address());
    assert_eq!((r1.balance, r1.next_nonce), (0, 0));
    let r2 = e
        .svc
        .wallet_register(&c, client::register_request(&k), NOW)
        .unwrap();
    assert!(!r2.created);
    let bad = WalletRegisterRequest {
        public_key: vec![1u8; 100].into(),
    };
    assert_eq!(
        e.svc.wallet_register(&c, bad, NOW).unwrap_err().code(),
        codes::INVALID_PUBLIC_KEY
    );
}

#[test]
fn auth_challenge_flow_and_failures() {
    let e = env();
    let a = key(1);
    let b = key(2);
    let c = Caller::new(10);
    // Unknown wallet.
    let err = e
        .svc
        .wallet_auth(&c, client::auth_challenge_request(&a), NOW)
        .unwrap_err();
    assert_eq!(err.code(), codes::WALLET_NOT_FOUND);
    e.svc
        .wallet_register(&c, client::register_request(&a), NOW)
        .unwrap();
    e.svc
        .wallet_register(&c, client::register_request(&b), NOW)
        .unwrap();

    // Step 2 without step 1.
    let fake = client::auth_answer(&a, 10, [9u8; 32].into()).unwrap();
    assert_eq!(
        e.svc.wallet_auth(&c, fake, NOW).unwrap_err(),
        AppError::NoChallenge
    );

    // Wrong signer: the challenge is consumed.
    let s1 = e
        .svc
        .wallet_auth(&c, client::auth_challenge_request(&a), NOW)
        .unwrap();
    assert_eq!(s1.session_id, Some(10));
    let mut forged = client::auth_answer_request(&b, &s1).unwrap();
    forged.address = a.address();
    assert_eq!(
        e.svc.wallet_auth(&c, forged, NOW).unwrap_err().code(),
        codes::BAD_SIGNATURE
    );
    let late = client::auth_answer_request(&a, &s1).unwrap();
    assert_eq!(
        e.svc.wallet_auth(&c, late, NOW).unwrap_err(),
        AppError::NoChallenge
    );

    // A signature for another session id does not verify.
    let s1 = e
        .svc
        .wallet_auth(&c, client::auth_challenge_request(&a), NOW)
        .unwrap();
    let other_session = client::auth_answer(&a, 11, s1.challenge.unwrap()).unwrap();
    assert_eq!(
        e.svc.wallet_auth(&c, other_session, NOW).unwrap_err(),
        AppError::BadSignature
    );

    // Another session cannot answer this session's challenge.
    let s1 = e
        .svc
        .wallet_auth(&c, client::auth_challenge_request(&a), NOW)
        .unwrap();
    let stolen = client::auth_answer(&a, 11, s1.challenge.unwrap()).unwrap();
    assert_eq!(
        e.svc
            .wallet_auth(&Caller::new(11), stolen, NOW)
            .unwrap_err(),
        AppError::NoChallenge
    );

    // Expired.
    let s1 = e
        .svc
        .wallet_auth(&c, client::auth_challenge_request(&a), NOW)
        .unwrap();
    let ans = client::auth_answer_request(&a, &s1).unwrap();
    let later = s1.expires_at_ms.unwrap();
    assert_eq!(
        e.svc.wallet_auth(&c, ans, later).unwrap_err(),
        AppError::ChallengeExpired
    );

    // Success.
    let s1 = e
        .svc
        .wallet_auth(&c, client::auth_challenge_request(&a), NOW)
        .unwrap();
    let ok = e
        .svc
        .wallet_auth(&c, client::auth_answer_request(&a, &s1).unwrap(), NOW + 1)
        .unwrap();
    assert!(ok.authenticated);
    assert_eq!(e.svc.session_wallet(c.session), Some(a.address()));

    // Bound sessions cannot switch wallets.
    let err = e
        .svc
        .wallet_auth(&c, client::auth_challenge_request(&b), NOW)
        .unwrap_err();
    assert_eq!(err.code(), codes::WRONG_WALLET);

    // Half a step 2.
    let half = WalletAuthRequest {
        address: a.address(),
        challenge: s1.challenge,
        signature: None,
    };
    assert_eq!(
        e.svc.wallet_auth(&c, half, NOW).unwrap_err().code(),
        codes::BAD_REQUEST
    );

    // The session dies: the binding goes.
    e.svc.session_closed(c.session, NOW);
    assert_eq!(e.svc.session_wallet(c.session), None);
}

#[test]
fn balance_queries() {
    let e = env();
    let a = key(1);
    let anon = Caller::new(50);
    assert_eq!(
        e.svc
            .wallet_balance(&anon, WalletBalanceRequest::default())
            .unwrap_err(),
        AppError::NotAuthenticated
    );
    assert_eq!(
        e.svc
            .wallet_balance(
                &anon,
                WalletBalanceRequest {
                    address: Some(a.address())
                }
            )
            .unwrap_err()
            .code(),
        codes::WALLET_NOT_FOUND
    );
    let c = login(&e.svc, 51, &a);
    fund(&e, a.address(), 42);
    let b = e
        .svc
        .wallet_balance(&c, WalletBalanceRequest::default())
        .unwrap();
    assert_eq!(
        (b.address, b.balance, b.next_nonce, b.registered),
        (a.address(), 42, 0, true)
    );
}

#[test]
fn transfers_and_every_failure_case() {
    let e = env();
    let a = key(1);
    let b = key(2);
    let stranger = key(3);
    let ca = login(&e.svc, 20, &a);
    let cb = login(&e.svc, 21, &b);
    fund(&e, a.address(), 100);

    let ok = client::sign_transaction(&a, TxKind::Transfer, b.address(), 30, 0).unwrap();
    let r = e.svc.wallet_transaction(&ca, ok.clone(), NOW).unwrap();
    assert_eq!((r.from_balance, r.to_balance, r.next_nonce), (70, 30, 1));
    assert_eq!(r.txid, ok.txid());
    assert!(e.svc.transaction_applied(&ok.txid()).unwrap().is_some());

    let code = |c: &Caller, tx: SignedTransaction| {
        e.svc.wallet_transaction(c, tx, NOW).unwrap_err().code()
    };
    // Exact replay.
    assert_eq!(code(&ca, ok.clone()), codes::DUPLICATE_TRANSACTION);
    // Same content re-signed (ML-DSA signatures are randomized): still the same txid.
    let resigned = client::sign_transaction(&a, TxKind::Transfer, b.address(), 30, 0).unwrap();
    assert_eq!(code(&ca, resigned), codes::DUPLICATE_TRANSACTION);
    // Used nonce, different content.
    let reuse = client::sign_transaction(&a, TxKind::Transfer, b.address(), 31, 0).unwrap();
    assert_eq!(code(&ca, reuse), codes::NONCE_REPLAYED);
    // Nonce gap.
    let gap = client::sign_transaction(&a, TxKind::Transfer, b.address(), 1, 5).unwrap();
    assert_eq!(code(&ca, gap), codes::NONCE_GAP);
    // Insufficient funds.
    let big = client::sign_transaction(&a, TxKind::Transfer, b.address(), 71, 1).unwrap();
    assert_eq!(code(&ca, big), codes::INSUFFICIENT_FUNDS);
    // Bad signature: signed by someone else.
    let mut forged =
        client::sign_transaction(&stranger, TxKind::Transfer, b.address(), 1, 1).unwrap();
    forged.from = a.address();
    assert_eq!(code(&ca, forged), codes::BAD_SIGNATURE);
    // Bad signature: amount changed after signing.
    let mut tampered = client::sign_transaction(&a, TxKind::Transfer, b.address(), 1, 1).unwrap();
    tampered.amount = 70;
    assert_eq!(code(&ca, tampered), codes::BAD_SIGNATURE);
    // Garbage signature bytes.
    let mut garbage = client::sign_transaction(&a, TxKind::Transfer, b.address(), 1, 1).unwrap();
    garbage.signature = vec![0xff; 3].into();
    assert_eq!(code(&ca, garbage), codes::BAD_SIGNATURE);
    // Another wallet's funds: B's session sends A's (validly signed) transaction.
    let theirs = client::sign_transaction(&a, TxKind::Transfer, b.address(), 1, 1).unwrap();
    assert_eq!(code(&cb, theirs.clone()), codes::WRONG_WALLET);
    // Unauthenticated session.
    assert_eq!(code(&Caller::new(77), theirs), codes::NOT_AUTHENTICATED);
    // Zero amount, self transfer, unknown recipient.
    let zero = client::sign_transaction(&a, TxKind::Transfer, b.address(), 0, 1).unwrap();
    assert_eq!(code(&ca, zero), codes::INVALID_AMOUNT);
    let selfie = client::sign_transaction(&a, TxKind::Transfer, a.address(), 1, 1).unwrap();
    assert_eq!(code(&ca, selfie), codes::SELF_TRANSFER);
    let nowhere = client::sign_transaction(&a, TxKind::Transfer, stranger.address(), 1, 1).unwrap();
    assert_eq!(code(&ca, nowhere), codes::RECIPIENT_NOT_FOUND);
    // Mint by a non-authority.
    let mint = client::sign_transaction(&a, TxKind::Mint, b.address(), 1, 1).unwrap();
    assert_eq!(code(&ca, mint), codes::FORBIDDEN);

    // Nothing of the failures was applied.
    assert_eq!(balance(&e.svc, a.address()), (70, 1));
    assert_eq!(balance(&e.svc, b.address()), (30, 0));
    assert_eq!(total_balances(&e.svc), e.svc.supply().unwrap());
    assert_eq!(e.svc.supply().unwrap(), 100);

    // The supply cannot overflow.
    let (_, n) = balance(&e.svc, e.authority.address());
    let huge =
        client::sign_transaction(&e.authority, TxKind::Mint, b.address(), u64::MAX, n).unwrap();
    assert_eq!(
        code(&Caller::new(AUTHORITY_SESSION), huge),
        codes::BALANCE_OVERFLOW
    );
}

#[test]
fn state_survives_reopen_and_genesis_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = key(1);
    let b = key(2);
    let mut cfg = config(dir.path());
    cfg.set_genesis(vec![
        GenesisAllocation {
            address: a.address(),
            amount: 500,
        },
        GenesisAllocation {
            address: b.address(),
            amount: 5,
        },
    ]);
    {
        let svc = Services::open(cfg.clone()).unwrap();
        assert_eq!(svc.supply().unwrap(), 505);
        // Allocated before registration: the balance is there, the key is not.
        let bal = svc
            .wallet_balance(
                &Caller::new(1),
                WalletBalanceRequest {
                    address: Some(a.address()),
                },
            )
            .unwrap();
        assert_eq!((bal.balance, bal.registered), (500, false));
        let ca = login(&svc, 2, &a);
        login(&svc, 3, &b);
        transfer(&svc, &ca, &a, b.address(), 100).unwrap();
    }
    {
        // Same genesis: not applied twice.
        let svc = Services::open(cfg.clone()).unwrap();
        assert_eq!(svc.supply().unwrap(), 505);
        assert_eq!(balance(&svc, a.address()), (400, 1));
        assert_eq!(balance(&svc, b.address()), (105, 0));
        // Sessions do not survive a restart.
        assert_eq!(svc.session_wallet(xtmp_services::SessionId(2)), None);
    }
    // A different genesis is refused.
    cfg.set_genesis(vec![GenesisAllocation {
        address: a.address(),
        amount: 1,
    }]);
    assert_eq!(
        Services::open(cfg.clone()).unwrap_err().code(),
        codes::BAD_REQUEST
    );
    // No genesis in the configuration any more: fine.
    cfg.set_genesis(Vec::new());
    let svc = Services::open(cfg).unwrap();
    assert_eq!(svc.supply().unwrap(), 505);
    // The signing key persisted.
    let key_file = dir.path().join("services-signing.key");
    let k2 = xtmp_services::load_or_create_signing_key(&key_file).unwrap();
    assert_eq!(k2.public_key(), svc.server_public_key());
    let pub_hex = std::fs::read_to_string(xtmp_services::public_key_path(&key_file)).unwrap();
    assert_eq!(
        hex::decode(pub_hex.trim()).unwrap(),
        svc.server_public_key().as_bytes()
    );
}
