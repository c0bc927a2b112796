//! Shared helpers for the integration tests.
#![allow(dead_code)]

use xtmp_services::types::{TxKind, WalletBalanceRequest};
use xtmp_services::{client, Address, AppError, Caller, Services, ServicesConfig, SigningKey};

pub const NOW: u64 = 1_700_000_000_000;
/// The session the authority uses.
pub const AUTHORITY_SESSION: u64 = 1;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub svc: Services,
    pub authority: SigningKey,
}

pub fn key(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32]).unwrap()
}

pub fn config(dir: &std::path::Path) -> ServicesConfig {
    let mut c = ServicesConfig::new(dir);
    c.set_mint_authority(Some(key(0xAA).public_key().as_bytes().to_vec()));
    c
}

/// Services over redb in a fresh temp dir, with key(0xAA) as mint authority, registered
/// and authenticated on session 1.
pub fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let svc = Services::open(config(dir.path())).unwrap();
    let authority = key(0xAA);
    login(&svc, AUTHORITY_SESSION, &authority);
    Env {
        dir,
        svc,
        authority,
    }
}

/// Registers `k` and binds `session` to it.
pub fn login(svc: &Services, session: u64, k: &SigningKey) -> Caller {
    let c = Caller::new(session);
    svc.wallet_register(&c, client::register_request(k), NOW)
        .unwrap();
    let s1 = svc
        .wallet_auth(&c, client::auth_challenge_request(k), NOW)
        .unwrap();
    let r = svc
        .wallet_auth(&c, client::auth_answer_request(k, &s1).unwrap(), NOW)
        .unwrap();
    assert!(r.authenticated);
    c
}

pub fn balance(svc: &Services, a: Address) -> (u64, u64) {
    let b = svc
        .wallet_balance(
            &Caller::new(999_999),
            WalletBalanceRequest { address: Some(a) },
        )
        .unwrap();
    (b.balance, b.next_nonce)
}

/// Mints `amount` to `to` from the authority.
pub fn fund(env: &Env, to: Address, amount: u64) {
    let (_, nonce) = balance(&env.svc, env.authority.address());
    let tx = client::sign_transaction(&env.authority, TxKind::Mint, to, amount, nonce).unwrap();
    env.svc
        .wallet_transaction(&Caller::new(AUTHORITY_SESSION), tx, NOW)
        .unwrap();
}

/// Sends a transfer from `from` (whose session is `c`) with its current nonce.
pub fn transfer(
    svc: &Services,
    c: &Caller,
    from: &SigningKey,
    to: Address,
    amount: u64,
) -> Result<(), AppError> {
    let (_, nonce) = balance(svc, from.address());
    let tx = client::sign_transaction(from, TxKind::Transfer, to, amount, nonce).unwrap();
    svc.wallet_transaction(c, tx, NOW).map(|_| ())
}

pub fn total_balances(svc: &Services) -> u64 {
    svc.accounts().unwrap().iter().map(|(_, b, _)| *b).sum()
}
