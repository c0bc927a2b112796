//! The change-notification bus behind `LiveUpdates`, `EventStream` and `MetricsStream`.
//!
//! Every state change is published as a [`Notification`] on a
//! [`tokio::sync::broadcast`] channel **after** the change is durable, and notifications of
//! stored changes come out in commit order (a ticket taken inside the write operation
//! orders them; see [`EventBus::ticket`]). A runtime hooks in
//! with [`crate::Services::subscribe`] and filters per subscriber ([`LiveFilter`],
//! [`KindFilter`]). A receiver that falls behind loses the oldest notifications
//! (`RecvError::Lagged`) and should tell its peer, which can resynchronize with
//! `WalletBalance` / `BundleSync` / `RegistryQuery`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::crypto::Address;
use crate::encoding::Hex32;
use crate::error::AppError;
use crate::types::{BundleState, EventStreamRequest, LiveUpdatesRequest};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A wallet's balance or nonce changed, or it was registered.
    Wallet {
        /// The wallet.
        address: Address,
        /// Its balance now.
        balance: u64,
        /// Its next nonce now.
        next_nonce: u64,
        /// The transaction that caused it, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        txid: Option<Hex32>,
    },
    /// A bundle was stored, confirmed or rejected.
    Bundle {
        /// The bundle.
        bundle_id: Hex32,
        /// Its new state.
        state: BundleState,
        /// Rejection reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A registry entry was written.
    Registry {
        /// Key.
        key: String,
        /// New version.
        version: u64,
        /// Owner.
        owner: Address,
    },
    /// A lock changed hands.
    Lock {
        /// Lock name.
        name: String,
        /// `acquired`, `released` or `expired`.
        state: String,
        /// The fencing token concerned.
        fencing_token: u64,
    },
    /// A certificate was issued or revoked.
    Certificate {
        /// Serial.
        serial: u64,
        /// Subject.
        subject: String,
        /// `issued` or `revoked`.
        state: String,
    },
    /// A digest was stamped.
    Stamp {
        /// Receipt serial.
        serial: u64,
        /// The digest.
        digest: Hex32,
    },
}

impl Event {
    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Wallet { .. } => "wallet",
            Event::Bundle { .. } => "bundle",
            Event::Registry { .. } => "registry",
            Event::Lock { .. } => "lock",
            Event::Certificate { .. } => "certificate",
            Event::Stamp { .. } => "stamp",
        }
    }
}

/// Every event kind.
pub const EVENT_KINDS: &[&str] = &[
    "wallet",
    "bundle",
    "registry",
    "lock",
    "certificate",
    "stamp",
];

/// An event as pushed to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Position in this server process's event sequence (starts at 1; a gap means the
    /// subscriber lagged).
    pub seq: u64,
    /// When the change became durable (the `now` of the operation).
    pub at_ms: u64,
    /// The change.
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Default)]
struct Order {
    /// Next ticket to hand out (in commit order).
    next_ticket: u64,
    /// Next ticket to publish.
    next_publish: u64,
    /// Tickets whose operation finished, waiting for earlier ones.
    done: BTreeMap<u64, (u64, Vec<Event>)>,
}

/// An ordering ticket, taken inside a write operation (so in commit order) and redeemed
/// with [`EventBus::publish_ticket`] once the commit's outcome is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// The broadcast channel, its sequence counter, and the reordering buffer that makes
/// notifications of committed writes come out in commit order.
#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Notification>,
    seq: AtomicU64,
    order: Mutex<Order>,
}

impl EventBus {
    /// A bus keeping up to `capacity` notifications for slow receivers.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            seq: AtomicU64::new(0),
            order: Mutex::new(Order::default()),
        }
    }

    /// Takes the next ticket. Call it inside a write operation, after it succeeded (write
    /// operations run one at a time, in commit order), and always redeem it.
    pub fn ticket(&self) -> Ticket {
        let mut o = crate::services::lock(&self.order);
        let t = o.next_ticket;
        o.next_ticket = o.next_ticket.saturating_add(1);
        Ticket(t)
    }

    /// Redeems a ticket: publishes `events` once every earlier ticket was redeemed
    /// (pass no events if the commit failed).
    pub fn publish_ticket(&self, ticket: Ticket, at_ms: u64, events: Vec<Event>) {
        let mut o = crate::services::lock(&self.order);
        o.done.insert(ticket.0, (at_ms, events));
        loop {
            let next = o.next_publish;
            let Some((at, evs)) = o.done.remove(&next) else {
                break;
            };
            o.next_publish = next.saturating_add(1);
            // Sending on a broadcast channel never blocks.
            self.publish_all(at, evs);
        }
    }

    /// Publishes (no-op without receivers).
    pub fn publish(&self, at_ms: u64, event: Event) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let _ = self.tx.send(Notification { seq, at_ms, event });
    }

    /// Publishes several events.
    pub fn publish_all(&self, at_ms: u64, events: Vec<Event>) {
        for e in events {
            self.publish(at_ms, e);
        }
    }

    /// A new receiver of everything published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.tx.subscribe()
    }

    /// Notifications published so far.
    pub fn published(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Current receivers.
    pub fn receivers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Most keys in one `LiveUpdates` subscription.
pub const MAX_LIVE_KEYS: usize = 256;

/// A `LiveUpdates` subscription's filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveFilter {
    wallets: HashSet<Address>,
    bundles: HashSet<Hex32>,
    registry_keys: HashSet<String>,
}

impl LiveFilter {
    /// Builds a filter from a request.
    ///
    /// # Errors
    /// [`AppError::InvalidSubscription`] if it names nothing, [`AppError::TooLarge`] above
    /// [`MAX_LIVE_KEYS`] keys.
    pub fn from_request(req: &LiveUpdatesRequest) -> Result<Self, AppError> {
        let n = req
            .wallets
            .len()
            .saturating_add(req.bundles.len())
            .saturating_add(req.registry_keys.len());
        if n == 0 {
            return Err(AppError::InvalidSubscription(
                "name at least one wallet, bundle or registry key".into(),
            ));
        }
        if n > MAX_LIVE_KEYS {
            return Err(AppError::TooLarge(format!(
                "at most {MAX_LIVE_KEYS} keys per subscription"
            )));
        }
        for k in &req.registry_keys {
            crate::registry::check_key(k)
                .map_err(|e| AppError::InvalidSubscription(e.to_string()))?;
        }
        Ok(Self {
            wallets: req.wallets.iter().copied().collect(),
            bundles: req.bundles.iter().copied().collect(),
            registry_keys: req.registry_keys.iter().cloned().collect(),
        })
    }

    /// Whether `event` is one the subscriber asked for.
    pub fn matches(&self, event: &Event) -> bool {
        match event {
            Event::Wallet { address, .. } => self.wallets.contains(address),
            Event::Bundle { bundle_id, .. } => self.bundles.contains(bundle_id),
            Event::Registry { key, .. } => self.registry_keys.contains(key),
            _ => false,
        }
    }
}

/// An `EventStream` subscription's filter (by kind).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindFilter {
    kinds: HashSet<&'static str>,
}

impl KindFilter {
    /// Builds a filter from a request (empty = everything).
    ///
    /// # Errors
    /// [`AppError::InvalidSubscription`] for an unknown kind.
    pub fn from_request(req: &EventStreamRequest) -> Result<Self, AppError> {
        let mut kinds = HashSet::new();
        for k in &req.kinds {
            let known = EVENT_KINDS
                .iter()
                .find(|x| **x == k.as_str())
                .ok_or_else(|| {
                    AppError::InvalidSubscription(format!(
                        "unknown event kind (known: {})",
                        EVENT_KINDS.join(", ")
                    ))
                })?;
            kinds.insert(*known);
        }
        Ok(Self { kinds })
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.kinds.is_empty() || self.kinds.contains(event.kind())
    }
}
