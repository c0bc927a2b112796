//! # xtmp-services — the XTMP application layer
//!
//! Wallets, bundles, registry, QLOCK, TLSLS and live change notifications for XTMP, on a
//! durable embedded store. The protocol crates (`xtmp-proto`, `xtmp`) do not depend on
//! this crate; a server plugs it into its router with `register_all` (feature `runtime`,
//! on by default) or calls [`Services`] directly.
//!
//! ## Architecture
//! * [`Services`] is a plain, synchronous Rust API: one method per operation taking a
//!   [`Caller`] (session id and optional client-key fingerprint), a typed request from
//!   [`types`], and the current time `now_ms` (the domain logic never reads a clock).
//!   [`Services::handle`] does the same from JSON bytes to JSON bytes, for a router.
//! * State lives behind the [`store::Store`] trait: byte-keyed tables, snapshot reads,
//!   and atomic write operations that return only once durable. The default backend,
//!   [`store::RedbStore`], group-commits concurrent operations into one fsync'd redb
//!   transaction. Session-bound state (wallet binding, challenges, locks) is in memory
//!   because sessions do not outlive the process.
//! * Changes are published on a broadcast bus ([`events`]) after they are durable; a
//!   runtime turns them into `LiveUpdates` / `EventStream` pushes.
//! * Failures are [`AppError`]s with stable codes in `0x0100..=0x01FF` ([`error::codes`]).
//! * Signatures are ML-DSA-65 (FIPS 204) through aws-lc-rs ([`crypto`]).
//!
//! ## Example
//! ```
//! use xtmp_services::{client, Caller, Services, ServicesConfig, SigningKey};
//! use xtmp_services::types::{TxKind, WalletBalanceRequest};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let authority = SigningKey::generate()?;
//! let mut config = ServicesConfig::new(dir.path());
//! config.set_mint_authority(Some(authority.public_key().as_bytes().to_vec()));
//! let services = Services::open(config)?;
//! let now = 1_700_000_000_000;
//!
//! // The authority registers, authenticates its session and mints 100 for alice.
//! let alice = SigningKey::generate()?;
//! let session = Caller::new(7);
//! services.wallet_register(&session, client::register_request(&authority), now)?;
//! services.wallet_register(&session, client::register_request(&alice), now)?;
//! let step1 = services.wallet_auth(&session, client::auth_challenge_request(&authority), now)?;
//! services.wallet_auth(&session, client::auth_answer_request(&authority, &step1)?, now)?;
//! let mint = client::sign_transaction(&authority, TxKind::Mint, alice.address(), 100, 0)?;
//! services.wallet_transaction(&session, mint, now)?;
//!
//! let bal = services.wallet_balance(&session, WalletBalanceRequest { address: Some(alice.address()) })?;
//! assert_eq!(bal.balance, 100);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub mod client;
pub mod config;
pub mod crypto;
pub mod encoding;
pub mod error;
pub mod events;
pub mod qlock;
mod records;
pub mod registry;
#[cfg(feature = "runtime")]
pub mod runtime;
mod services;
pub mod store;
pub mod tlsls;
pub mod types;
pub mod wallet;

pub use config::{GenesisAllocation, ServicesConfig};
pub use crypto::{static_key_fingerprint, Address, PublicKey, SigningKey};
pub use error::AppError;
pub use registry::verify_stamp;
#[cfg(feature = "runtime")]
pub use runtime::register_all;
pub use services::{
    load_or_create_signing_key, parse, parse_or_default, public_key_path, Caller, MetricsSnapshot,
    OpMetrics, Services, SessionId,
};
pub use tlsls::verify_certificate;
