//! Integration tests over the real redb store in temporary directories.

mod bundles;
mod common;
mod concurrency;
mod crash;
mod json;
mod qlock;
mod registry;
mod tlsls;
mod wallet;
