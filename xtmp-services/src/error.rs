//! Application errors and their stable wire codes (`0x0100`–`0x01FF`).
//!
//! Every failure case of every operation has its own code, so a client can react without
//! parsing the reason text. The wire `Error` message (`PROTOCOL.md` §7.5) carries the code
//! and [`AppError::reason`], a short human-readable string that never contains secrets or
//! internal details (storage failures are reported without their cause).

use xtmp_proto::ErrorCode;

/// The application error codes, as `xtmp_proto::ErrorCode` values.
///
/// Ranges: `0x0100`–`0x010F` general, `0x0110` wallets, `0x0120` bundles, `0x0130`
/// registry, `0x0140` QLOCK, `0x0150` TLSLS, `0x0160` streams.
pub mod codes {
    use xtmp_proto::ErrorCode;

    macro_rules! app_codes {
        ($( $(#[$doc:meta])* $name:ident = $code:expr ),* $(,)?) => {
            $( $(#[$doc])* pub const $name: ErrorCode = ErrorCode($code); )*
            /// Every application code with its name, in numeric order.
            pub const ALL: &[(ErrorCode, &str)] = &[ $( (ErrorCode($code), stringify!($name)), )* ];
        };
    }

    app_codes! {
        /// The payload is not valid JSON for the message type, or a field is malformed
        /// (bad hex, wrong length, unknown `op`).
        BAD_REQUEST = 0x0100,
        /// A size limit was exceeded (bundle over 1000 transactions, registry value over
        /// 64 KiB, too many subscription keys, ...).
        TOO_LARGE = 0x0101,
        /// The operation needs a wallet bound to the session (`WalletAuth` first).
        NOT_AUTHENTICATED = 0x0102,
        /// The session is bound to a different wallet than the one the request acts for.
        WRONG_WALLET = 0x0103,
        /// The caller may not perform this operation (e.g. mint without being the mint
        /// authority, confirm someone else's bundle).
        FORBIDDEN = 0x0104,
        /// A server-side limit on state was reached (pending challenges, locks per session).
        LIMIT_REACHED = 0x0105,
        /// The store failed; nothing was applied.
        STORAGE_FAILURE = 0x010E,
        /// An unexpected internal failure; nothing was applied.
        INTERNAL = 0x010F,

        /// The public key is not a 1952-byte ML-DSA-65 public key.
        INVALID_PUBLIC_KEY = 0x0110,
        /// No wallet with this address.
        WALLET_NOT_FOUND = 0x0111,
        /// No pending challenge for this session and wallet (ask for one first).
        NO_CHALLENGE = 0x0112,
        /// The challenge expired before the signed answer arrived.
        CHALLENGE_EXPIRED = 0x0113,
        /// The ML-DSA signature does not verify.
        BAD_SIGNATURE = 0x0114,
        /// The sender's balance is below the amount.
        INSUFFICIENT_FUNDS = 0x0115,
        /// The nonce was already used by a different transaction (a replay).
        NONCE_REPLAYED = 0x0116,
        /// The nonce is above the next expected nonce.
        NONCE_GAP = 0x0117,
        /// This exact transaction was already applied.
        DUPLICATE_TRANSACTION = 0x0118,
        /// The amount is zero.
        INVALID_AMOUNT = 0x0119,
        /// Sender and recipient are the same wallet.
        SELF_TRANSFER = 0x011A,
        /// The recipient has no account.
        RECIPIENT_NOT_FOUND = 0x011B,
        /// A balance or the total supply would exceed 2^64 - 1.
        BALANCE_OVERFLOW = 0x011C,
        /// An address is not `xw` followed by 64 lowercase hex digits (any address field
        /// of any request).
        INVALID_ADDRESS = 0x011D,

        /// A bundle with no transactions.
        BUNDLE_EMPTY = 0x0120,
        /// No bundle with this id.
        BUNDLE_NOT_FOUND = 0x0121,
        /// The bundle could not be applied at confirmation and is now rejected (nothing of
        /// it was applied); the reason names the failing transaction.
        BUNDLE_REJECTED = 0x0122,
        /// The bundle is already confirmed or rejected.
        BUNDLE_FINAL = 0x0123,
        /// The same transaction appears twice in one bundle.
        BUNDLE_DUPLICATE_TX = 0x0124,

        /// No registry entry with this key.
        REGISTRY_KEY_NOT_FOUND = 0x0130,
        /// Compare-and-set failed: the entry's version is not the expected one.
        STALE_VERSION = 0x0131,
        /// The update is not by the entry's owner.
        NOT_OWNER = 0x0132,
        /// The registry key is empty, too long or contains control characters.
        INVALID_REGISTRY_KEY = 0x0133,
        /// A stamp receipt does not verify (offline check).
        INVALID_STAMP = 0x0135,

        /// The lock is held by another session.
        LOCK_HELD = 0x0140,
        /// The session does not hold this lock (never did, released, or the lease expired).
        LOCK_NOT_HELD = 0x0141,
        /// The fencing token is not the lock's current token.
        STALE_FENCING_TOKEN = 0x0142,
        /// The lease is zero or above the maximum.
        INVALID_LEASE = 0x0143,
        /// The lock name is empty, too long or contains control characters.
        INVALID_LOCK_NAME = 0x0144,

        /// No certificate with this serial.
        CERT_NOT_FOUND = 0x0150,
        /// The certificate's validity period has ended.
        CERT_EXPIRED = 0x0151,
        /// The certificate was revoked.
        CERT_REVOKED = 0x0152,
        /// The certificate's issuer signature does not verify, or another issuer signed it.
        CERT_INVALID = 0x0153,
        /// The certificate's validity period has not started.
        CERT_NOT_YET_VALID = 0x0154,
        /// The subject is empty, too long or not printable ASCII.
        INVALID_SUBJECT = 0x0155,
        /// The session has not proven possession of the certified static key (it must be a
        /// `pqIK` session with that key, or the mint authority's wallet).
        KEY_PROOF_REQUIRED = 0x0156,
        /// The requested validity is zero or above the maximum.
        INVALID_VALIDITY = 0x0157,

        /// The subscription names nothing, or a malformed key.
        INVALID_SUBSCRIPTION = 0x0160,
    }
}

/// The name of an application code, if it is one.
pub fn code_name(code: ErrorCode) -> Option<&'static str> {
    codes::ALL.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// An application-level failure. Each variant maps to one stable code ([`AppError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// Malformed request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A size limit was exceeded.
    #[error("too large: {0}")]
    TooLarge(String),
    /// No wallet is bound to the session.
    #[error("the session is not authenticated to a wallet")]
    NotAuthenticated,
    /// The session is bound to another wallet.
    #[error("the session is bound to wallet {bound}")]
    WrongWallet {
        /// The wallet the session is bound to.
        bound: String,
    },
    /// Not allowed for this caller.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A server-side state limit.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The store failed (the detail is logged, not sent).
    #[error("storage failure")]
    Storage(String),
    /// Internal failure (the detail is logged, not sent).
    #[error("internal error")]
    Internal(String),

    /// Bad ML-DSA-65 public key.
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    /// Unknown wallet.
    #[error("wallet {0} not found")]
    WalletNotFound(String),
    /// No matching pending challenge.
    #[error("no pending challenge for this session and wallet")]
    NoChallenge,
    /// The challenge expired.
    #[error("the challenge expired")]
    ChallengeExpired,
    /// Signature failure.
    #[error("bad signature")]
    BadSignature,
    /// Not enough funds.
    #[error("insufficient funds: balance {balance}, amount {amount}")]
    InsufficientFunds {
        /// The sender's balance.
        balance: u64,
        /// The amount asked for.
        amount: u64,
    },
    /// Nonce already used by another transaction.
    #[error("nonce {got} already used (next nonce is {expected})")]
    NonceReplayed {
        /// The next nonce the wallet accepts.
        expected: u64,
        /// The nonce sent.
        got: u64,
    },
    /// Nonce too high.
    #[error("nonce {got} is ahead of the next nonce {expected}")]
    NonceGap {
        /// The next nonce the wallet accepts.
        expected: u64,
        /// The nonce sent.
        got: u64,
    },
    /// Exactly this transaction was applied before.
    #[error("transaction {0} was already applied")]
    DuplicateTransaction(String),
    /// Zero amount.
    #[error("the amount must be greater than zero")]
    InvalidAmount,
    /// `from == to`.
    #[error("sender and recipient are the same wallet")]
    SelfTransfer,
    /// Unknown recipient.
    #[error("recipient {0} has no account")]
    RecipientNotFound(String),
    /// Overflow of a balance or the supply.
    #[error("balance overflow")]
    BalanceOverflow,
    /// Malformed address.
    #[error("invalid address: {0}")]
    InvalidAddress(String),

    /// Empty bundle.
    #[error("the bundle has no transactions")]
    BundleEmpty,
    /// Unknown bundle.
    #[error("bundle {0} not found")]
    BundleNotFound(String),
    /// Rejected at confirmation.
    #[error("bundle rejected: {0}")]
    BundleRejected(String),
    /// Already final.
    #[error("bundle is already {0}")]
    BundleFinal(String),
    /// The same transaction twice in a bundle.
    #[error("transaction {index} duplicates an earlier transaction of the bundle")]
    BundleDuplicateTx {
        /// Index of the duplicate.
        index: usize,
    },
    /// A transaction inside a bundle failed; the code is the inner error's.
    #[error("transaction {index}: {error}")]
    InBundle {
        /// Index of the failing transaction.
        index: usize,
        /// What failed.
        error: Box<AppError>,
    },

    /// Unknown registry key.
    #[error("registry key not found")]
    RegistryKeyNotFound,
    /// CAS failure.
    #[error("stale version: expected {expected}, current {current}")]
    StaleVersion {
        /// The version the writer expected.
        expected: u64,
        /// The entry's actual version.
        current: u64,
    },
    /// Not the owner.
    #[error("not the owner of this entry")]
    NotOwner,
    /// Bad registry key.
    #[error("invalid registry key: {0}")]
    InvalidRegistryKey(String),
    /// A stamp does not verify.
    #[error("invalid stamp: {0}")]
    InvalidStamp(String),

    /// Lock held by another session.
    #[error("lock held by another session until {expires_at_ms}")]
    LockHeld {
        /// When the holder's lease ends (Unix ms).
        expires_at_ms: u64,
    },
    /// The caller does not hold the lock.
    #[error("the session does not hold this lock")]
    LockNotHeld,
    /// Wrong fencing token.
    #[error("stale fencing token: current is {current}")]
    StaleFencingToken {
        /// The lock's current token.
        current: u64,
    },
    /// Bad lease.
    #[error("invalid lease: {0}")]
    InvalidLease(String),
    /// Bad lock name.
    #[error("invalid lock name: {0}")]
    InvalidLockName(String),

    /// Unknown certificate.
    #[error("certificate {0} not found")]
    CertNotFound(u64),
    /// Expired.
    #[error("certificate expired at {0}")]
    CertExpired(u64),
    /// Revoked.
    #[error("certificate revoked at {0}")]
    CertRevoked(u64),
    /// Bad issuer signature or issuer.
    #[error("certificate invalid: {0}")]
    CertInvalid(String),
    /// Not yet valid.
    #[error("certificate not valid before {0}")]
    CertNotYetValid(u64),
    /// Bad subject.
    #[error("invalid subject: {0}")]
    InvalidSubject(String),
    /// No proof of the static key.
    #[error("the session has not proven possession of the static key")]
    KeyProofRequired,
    /// Bad validity.
    #[error("invalid validity: {0}")]
    InvalidValidity(String),

    /// Bad subscription.
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
}

impl AppError {
    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        use codes::*;
        match self {
            AppError::BadRequest(_) => BAD_REQUEST,
            AppError::TooLarge(_) => TOO_LARGE,
            AppError::NotAuthenticated => NOT_AUTHENTICATED,
            AppError::WrongWallet { .. } => WRONG_WALLET,
            AppError::Forbidden(_) => FORBIDDEN,
            AppError::LimitReached(_) => LIMIT_REACHED,
            AppError::Storage(_) => STORAGE_FAILURE,
            AppError::Internal(_) => INTERNAL,
            AppError::InvalidPublicKey(_) => INVALID_PUBLIC_KEY,
            AppError::WalletNotFound(_) => WALLET_NOT_FOUND,
            AppError::NoChallenge => NO_CHALLENGE,
            AppError::ChallengeExpired => CHALLENGE_EXPIRED,
            AppError::BadSignature => BAD_SIGNATURE,
            AppError::InsufficientFunds { .. } => INSUFFICIENT_FUNDS,
            AppError::NonceReplayed { .. } => NONCE_REPLAYED,
            AppError::NonceGap { .. } => NONCE_GAP,
            AppError::DuplicateTransaction(_) => DUPLICATE_TRANSACTION,
            AppError::InvalidAmount => INVALID_AMOUNT,
            AppError::SelfTransfer => SELF_TRANSFER,
            AppError::RecipientNotFound(_) => RECIPIENT_NOT_FOUND,
            AppError::BalanceOverflow => BALANCE_OVERFLOW,
            AppError::InvalidAddress(_) => INVALID_ADDRESS,
            AppError::BundleEmpty => BUNDLE_EMPTY,
            AppError::BundleNotFound(_) => BUNDLE_NOT_FOUND,
            AppError::BundleRejected(_) => BUNDLE_REJECTED,
            AppError::BundleFinal(_) => BUNDLE_FINAL,
            AppError::BundleDuplicateTx { .. } => BUNDLE_DUPLICATE_TX,
            AppError::InBundle { error, .. } => error.code(),
            AppError::RegistryKeyNotFound => REGISTRY_KEY_NOT_FOUND,
            AppError::StaleVersion { .. } => STALE_VERSION,
            AppError::NotOwner => NOT_OWNER,
            AppError::InvalidRegistryKey(_) => INVALID_REGISTRY_KEY,
            AppError::InvalidStamp(_) => INVALID_STAMP,
            AppError::LockHeld { .. } => LOCK_HELD,
            AppError::LockNotHeld => LOCK_NOT_HELD,
            AppError::StaleFencingToken { .. } => STALE_FENCING_TOKEN,
            AppError::InvalidLease(_) => INVALID_LEASE,
            AppError::InvalidLockName(_) => INVALID_LOCK_NAME,
            AppError::CertNotFound(_) => CERT_NOT_FOUND,
            AppError::CertExpired(_) => CERT_EXPIRED,
            AppError::CertRevoked(_) => CERT_REVOKED,
            AppError::CertInvalid(_) => CERT_INVALID,
            AppError::CertNotYetValid(_) => CERT_NOT_YET_VALID,
            AppError::InvalidSubject(_) => INVALID_SUBJECT,
            AppError::KeyProofRequired => KEY_PROOF_REQUIRED,
            AppError::InvalidValidity(_) => INVALID_VALIDITY,
            AppError::InvalidSubscription(_) => INVALID_SUBSCRIPTION,
        }
    }

    /// The short reason sent to the peer: the display text, cut to at most 512 bytes on a
    /// character boundary. Storage and internal failures carry no detail.
    pub fn reason(&self) -> String {
        let mut s = self.to_string();
        if s.len() > 512 {
            let mut cut = 512;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        AppError::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_in_range_and_named() {
        let mut seen = std::collections::HashSet::new();
        for (c, n) in codes::ALL {
            assert!((0x0100..=0x01FF).contains(&c.0), "{n}");
            assert!(seen.insert(c.0), "duplicate {n}");
            assert_eq!(code_name(*c), Some(*n));
        }
    }

    #[test]
    fn in_bundle_takes_the_inner_code() {
        let e = AppError::InBundle {
            index: 3,
            error: Box::new(AppError::BadSignature),
        };
        assert_eq!(e.code(), codes::BAD_SIGNATURE);
        assert_eq!(e.reason(), "transaction 3: bad signature");
        assert_eq!(
            AppError::Storage("disk on fire".into()).reason(),
            "storage failure"
        );
    }
}
