//! The JSON request and response payloads of every message type (see `docs/PROTOCOL.md`
//! §12).
//!
//! Byte strings are lowercase hex; amounts, nonces, versions, serials and times are JSON
//! integers (times in milliseconds since the Unix epoch, `*_ms`). Unknown fields are
//! ignored, so later versions can add optional fields.

use serde::{Deserialize, Serialize};

use crate::crypto::Address;
use crate::encoding::{Hex32, HexBytes};

// ---------------------------------------------------------------------------------------
// Wallets
// ---------------------------------------------------------------------------------------

/// `WalletRegister` (0x10) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletRegisterRequest {
    /// The ML-DSA-65 public key (1952 bytes).
    pub public_key: HexBytes,
}

/// `WalletRegister` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletRegisterResponse {
    /// The wallet's address.
    pub address: Address,
    /// False if the key was registered before (registration is idempotent).
    pub created: bool,
    /// Current balance.
    pub balance: u64,
    /// The nonce the wallet's next transaction must carry.
    pub next_nonce: u64,
}

/// `WalletAuth` (0x11) request. Step 1 names only the address and gets a challenge;
/// step 2 repeats the challenge with the wallet's signature over
/// [`crate::crypto::message::wallet_auth`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletAuthRequest {
    /// The wallet to authenticate as.
    pub address: Address,
    /// Step 2: the challenge received in step 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<Hex32>,
    /// Step 2: the ML-DSA-65 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<HexBytes>,
}

/// `WalletAuth` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletAuthResponse {
    /// The wallet.
    pub address: Address,
    /// True once the session is bound to the wallet (step 2).
    pub authenticated: bool,
    /// Step 1: the challenge to sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<Hex32>,
    /// Step 1: the session id the signature must cover (the server's view of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<u64>,
    /// Step 1: when the challenge expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// `WalletBalance` (0x12) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WalletBalanceRequest {
    /// The wallet; omitted = the session's wallet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

/// `WalletBalance` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletBalanceResponse {
    /// The wallet.
    pub address: Address,
    /// Balance.
    pub balance: u64,
    /// The nonce of the wallet's next transaction.
    pub next_nonce: u64,
    /// Whether a public key is registered for the address (an address can hold a genesis
    /// allocation before its key is registered).
    pub registered: bool,
}

/// What a transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    /// Move `amount` from `from` to `to`.
    #[default]
    Transfer,
    /// Create `amount` new units for `to`; `from` must be the mint authority.
    Mint,
}

impl TxKind {
    /// The byte used in the signed message.
    pub fn code(self) -> u8 {
        match self {
            TxKind::Transfer => 0,
            TxKind::Mint => 1,
        }
    }
}

/// A signed transaction: `WalletTransaction` (0x13) request, and the elements of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTransaction {
    /// Transfer (default) or mint.
    #[serde(default)]
    pub kind: TxKind,
    /// Sender (for a mint: the mint authority).
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Amount, greater than zero.
    pub amount: u64,
    /// Must equal the sender's `next_nonce`.
    pub nonce: u64,
    /// ML-DSA-65 signature by the sender over [`crate::crypto::message::transaction`].
    pub signature: HexBytes,
}

impl SignedTransaction {
    /// The bytes the sender signs.
    pub fn signing_message(&self) -> Vec<u8> {
        crate::crypto::message::transaction(
            self.kind.code(),
            &self.from,
            &self.to,
            self.amount,
            self.nonce,
        )
    }

    /// The transaction id: SHA-256 of the signed message (the signature is not part of it,
    /// so re-signing the same transfer gives the same id).
    pub fn txid(&self) -> Hex32 {
        Hex32(crate::crypto::sha256(&[&self.signing_message()]))
    }
}

/// `WalletTransaction` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletTransactionResponse {
    /// The transaction id.
    pub txid: Hex32,
    /// Sender's balance afterwards (unchanged for a mint).
    pub from_balance: u64,
    /// Recipient's balance afterwards.
    pub to_balance: u64,
    /// The sender's next nonce afterwards.
    pub next_nonce: u64,
}

// ---------------------------------------------------------------------------------------
// Bundles
// ---------------------------------------------------------------------------------------

/// `BundleSubmit` (0x20) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSubmitRequest {
    /// Transfers, applied in this order at confirmation (1 to 1000).
    pub transactions: Vec<SignedTransaction>,
}

/// The state of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleState {
    /// Stored, not applied.
    Pending,
    /// Applied, all transactions at once.
    Confirmed,
    /// Not applied, for the given reason; final.
    Rejected,
}

impl BundleState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BundleState::Pending => "pending",
            BundleState::Confirmed => "confirmed",
            BundleState::Rejected => "rejected",
        }
    }
}

/// A bundle's status: `BundleStatus` response, also inside other bundle responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleStatusResponse {
    /// `SHA-256("XTMP/v1/bundle\0" ‖ count(4) ‖ txid_1 ‖ … ‖ txid_n)`.
    pub bundle_id: Hex32,
    /// State.
    pub state: BundleState,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The submitting wallet.
    pub submitter: Address,
    /// Number of transactions.
    pub transaction_count: u32,
    /// When it was stored.
    pub submitted_at_ms: u64,
    /// When it was confirmed or rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalized_at_ms: Option<u64>,
    /// The bundle-log position of its latest state change (a `BundleSync` cursor).
    pub log_seq: u64,
}

/// `BundleSubmit` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSubmitResponse {
    /// False if an identical bundle was submitted before (its status is returned).
    pub created: bool,
    /// The bundle.
    #[serde(flatten)]
    pub status: BundleStatusResponse,
}

/// `BundleStatus` (0x21) and `BundleConfirm` (0x22) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleIdRequest {
    /// The bundle.
    pub bundle_id: Hex32,
}

/// `BundleSync` (0x23) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BundleSyncRequest {
    /// Return log entries after this position (0 = from the start; then the previous
    /// response's `next_cursor`).
    #[serde(default)]
    pub cursor: u64,
    /// Most entries to return (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Include each bundle's transactions (then at most 1000 transactions per response).
    #[serde(default)]
    pub include_transactions: bool,
}

/// One `BundleSync` entry: a bundle state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSyncEntry {
    /// The log position of this change.
    pub cursor: u64,
    /// The state this change moved the bundle to.
    pub state: BundleState,
    /// The bundle's current status.
    pub bundle: BundleStatusResponse,
    /// Its transactions, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactions: Option<Vec<SignedTransaction>>,
}

/// `BundleSync` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSyncResponse {
    /// Changes in log order.
    pub entries: Vec<BundleSyncEntry>,
    /// The cursor for the next request.
    pub next_cursor: u64,
    /// Whether more entries follow.
    pub more: bool,
}

// ---------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------

/// A registry entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    /// Key.
    pub key: String,
    /// Value (UTF-8, at most 64 KiB).
    pub value: String,
    /// Version: 1 after the first write, +1 per update.
    pub version: u64,
    /// The wallet that owns the entry (its first writer).
    pub owner: Address,
    /// Time of the last update.
    pub updated_at_ms: u64,
}

/// `RegistryQuery` (0x30) request: exactly one of `key` or `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RegistryQueryRequest {
    /// One entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// All entries whose key starts with this (may be empty), in key order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// With `prefix`: continue after this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// With `prefix`: most entries (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `RegistryQuery` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryQueryResponse {
    /// The entries.
    pub entries: Vec<RegistryEntry>,
    /// Whether more entries match.
    pub more: bool,
}

/// `RegistryUpdate` (0x31) request: compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryUpdateRequest {
    /// Key.
    pub key: String,
    /// New value.
    pub value: String,
    /// The entry's current version (0 to create it).
    pub expected_version: u64,
    /// The owner (for a new entry: the wallet that will own it).
    pub owner: Address,
    /// The owner's signature over [`crate::crypto::message::registry_update`].
    pub signature: HexBytes,
}

/// `RegistryUpdate` response: the entry's new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryUpdateResponse {
    /// Key.
    pub key: String,
    /// New version.
    pub version: u64,
    /// Owner.
    pub owner: Address,
    /// Time of this update.
    pub updated_at_ms: u64,
}

/// `RegistryStamp` (0x32) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStampRequest {
    /// The 32-byte digest to timestamp (e.g. SHA-256 of a document).
    pub digest: Hex32,
}

/// A timestamp receipt (`RegistryStamp` response), checked offline with
/// [`crate::verify_stamp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampReceipt {
    /// Unique, increasing.
    pub serial: u64,
    /// The digest.
    pub digest: Hex32,
    /// The server's time of stamping.
    pub timestamp_ms: u64,
    /// SHA-256 of the server's ML-DSA-65 public key.
    pub server_key_id: Hex32,
    /// The server's signature over [`crate::crypto::message::stamp`].
    pub signature: HexBytes,
}

// ---------------------------------------------------------------------------------------
// QLOCK
// ---------------------------------------------------------------------------------------

/// `QLOCKRequest` (0x50), tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum QlockRequest {
    /// Take the lock for `lease_ms`; answers with a new fencing token. Acquiring a lock the
    /// session already holds extends the lease and keeps the token.
    Acquire {
        /// Lock name.
        name: String,
        /// Lease length.
        lease_ms: u64,
    },
    /// Extend the lease from now.
    Renew {
        /// Lock name.
        name: String,
        /// The token from `acquire`.
        fencing_token: u64,
        /// New lease length from now.
        lease_ms: u64,
    },
    /// Give the lock up.
    Release {
        /// Lock name.
        name: String,
        /// The token from `acquire`.
        fencing_token: u64,
    },
    /// Who holds the lock.
    Inspect {
        /// Lock name.
        name: String,
    },
}

/// `QLOCKResponse` (0x51) body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QlockResponse {
    /// Lock name.
    pub name: String,
    /// Whether the lock is held (by anyone) after the operation.
    pub held: bool,
    /// The holder's fencing token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
    /// When the lease ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Whether the asking session is the holder.
    pub held_by_you: bool,
    /// The holder's wallet, if its session is bound to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_wallet: Option<Address>,
}

// ---------------------------------------------------------------------------------------
// TLSLS
// ---------------------------------------------------------------------------------------

/// A TLSLS certificate: binds `subject` to an XTMP static key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Format version (1).
    pub version: u8,
    /// Serial number, unique per issuer.
    pub serial: u64,
    /// Subject name (printable ASCII, 1 to 255 bytes).
    pub subject: String,
    /// SHA-256 of the subject's 1216-byte X-Wing static public key.
    pub key_fingerprint: Hex32,
    /// SHA-256 of the issuer's ML-DSA-65 public key.
    pub issuer: Hex32,
    /// Start of validity.
    pub not_before_ms: u64,
    /// End of validity (exclusive).
    pub not_after_ms: u64,
    /// The issuer's signature over [`crate::crypto::message::certificate`].
    pub signature: HexBytes,
}

impl Certificate {
    /// The bytes the issuer signs.
    pub fn signing_message(&self) -> Vec<u8> {
        crate::crypto::message::certificate(
            self.version,
            self.serial,
            &self.subject,
            &self.key_fingerprint.0,
            &self.issuer.0,
            self.not_before_ms,
            self.not_after_ms,
        )
    }
}

/// `TLSLSRequest` (0x52), the seed's `TlslsCertificateRequest`, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TlslsRequest {
    /// Issue a certificate for `subject` and the static key with this fingerprint.
    /// `generate` is accepted as a synonym.
    #[serde(alias = "generate")]
    Issue {
        /// Subject.
        subject: String,
        /// SHA-256 of the X-Wing static public key.
        key_fingerprint: Hex32,
        /// Validity from now (default and maximum are server settings).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        validity_secs: Option<u64>,
    },
    /// Check a certificate: issuer signature, validity period, revocation.
    Validate {
        /// The certificate.
        certificate: Certificate,
    },
    /// Issue a fresh certificate (new serial, validity from now) for the same subject and
    /// key as `serial`, which must not be revoked.
    Renew {
        /// The certificate to renew.
        serial: u64,
        /// Validity from now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        validity_secs: Option<u64>,
    },
    /// Revoke a certificate.
    Revoke {
        /// The certificate.
        serial: u64,
        /// Free-text reason (at most 256 bytes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The revocation list, in serial order.
    Crl {
        /// Continue after this serial.
        #[serde(default)]
        after: u64,
        /// Most entries (default and maximum 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// The issuer's public key.
    Issuer {},
}

/// A revocation-list entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The revoked certificate.
    pub serial: u64,
    /// When.
    pub revoked_at_ms: u64,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `TLSLSResponse` (0x53) body; the fields present depend on the `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TlslsResponse {
    /// `issue`, `renew`: the new certificate; `validate`: the certificate checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
    /// `validate`: always true (failures are errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    /// `revoke`: the revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<Revocation>,
    /// `crl`: revocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocations: Option<Vec<Revocation>>,
    /// `crl`: whether more follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<bool>,
    /// `issuer`: the issuer's ML-DSA-65 public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_public_key: Option<HexBytes>,
    /// `issuer`: SHA-256 of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_key_id: Option<Hex32>,
}

// ---------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------

/// `LiveUpdates` (0x40) subscribe request: what to watch (at least one key, at most 256 in
/// all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LiveUpdatesRequest {
    /// Wallets whose balance changes are pushed.
    #[serde(default)]
    pub wallets: Vec<Address>,
    /// Bundles whose state changes are pushed.
    #[serde(default)]
    pub bundles: Vec<Hex32>,
    /// Registry keys whose updates are pushed.
    #[serde(default)]
    pub registry_keys: Vec<String>,
}

/// `EventStream` (0x41) subscribe request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EventStreamRequest {
    /// Event kinds to receive (`wallet`, `bundle`, `registry`, `lock`, `certificate`,
    /// `stamp`); empty = all.
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// `MetricsStream` (0x42) subscribe request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetricsStreamRequest {
    /// Push interval (default 1000, clamped to 100..=3 600 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

/// The answer to any subscribe request (pushes follow as `STREAMING` messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResponse {
    /// The message type subscribed to.
    pub subscribed: String,
    /// The stream id (the subscribe request's sequence number).
    pub stream_id: u64,
}
