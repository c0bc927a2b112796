//! [`XTMPConnectionPool`]: one multiplexed client connection per peer, reused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use crate::client::{ClientOptions, XTMPClient};
use crate::error::ClientError;
use crate::router::lock;

/// Reuses [`XTMPClient`]s per peer (address and pinned server key). One connection per
/// peer is enough: requests are multiplexed and correlated by sequence number.
#[derive(Default)]
pub struct XTMPConnectionPool {
    clients: Mutex<HashMap<(SocketAddr, [u8; 32]), XTMPClient>>,
}

impl std::fmt::Debug for XTMPConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XTMPConnectionPool")
            .field("peers", &self.len())
            .finish()
    }
}

impl XTMPConnectionPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pooled client for `address` (connecting if there is none or the pooled one is
    /// closed for good).
    ///
    /// # Errors
    /// As [`XTMPClient::connect`].
    pub async fn get(
        &self,
        address: SocketAddr,
        options: ClientOptions,
    ) -> Result<XTMPClient, ClientError> {
        let key = (address, xtmp_proto::fingerprint(&options.server_key));
        if let Some(c) = lock(&self.clients).get(&key) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let fresh = XTMPClient::connect(address, options).await?;
        let mut m = lock(&self.clients);
        match m.get(&key) {
            // Another caller connected meanwhile: use theirs, drop ours.
            Some(existing) if !existing.is_closed() => Ok(existing.clone()),
            _ => {
                m.insert(key, fresh.clone());
                Ok(fresh)
            }
        }
    }

    /// Peers with a pooled client.
    pub fn len(&self) -> usize {
        lock(&self.clients).len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes (and closes, once unused elsewhere) the clients for `address`.
    pub fn remove(&self, address: SocketAddr) -> usize {
        let mut m = lock(&self.clients);
        let before = m.len();
        m.retain(|(a, _), _| *a != address);
        before - m.len()
    }

    /// Closes every pooled client.
    pub async fn close_all(&self) {
        let clients: Vec<XTMPClient> = lock(&self.clients).drain().map(|(_, c)| c).collect();
        for c in clients {
            c.close().await;
        }
    }
}
