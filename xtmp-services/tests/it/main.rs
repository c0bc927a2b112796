//! Integration tests over the real redb store in temporary directories.
#![allow(clippy::unwrap_used)]

mod bundles;
mod common;
mod concurrency;
mod crash;
#[cfg(feature = "runtime")]
mod e2e;
mod json;
mod qlock;
mod registry;
mod tlsls;
mod wallet;
