//! Client-side helpers: build the signed requests a wallet sends.

use crate::crypto::{message, Address, SigningKey};
use crate::encoding::{Hex32, HexBytes};
use crate::error::AppError;
use crate::types::{
    RegistryUpdateRequest, SignedTransaction, TxKind, WalletAuthRequest, WalletAuthResponse,
    WalletRegisterRequest,
};

/// The `WalletRegister` request for `key`.
pub fn register_request(key: &SigningKey) -> WalletRegisterRequest {
    WalletRegisterRequest {
        public_key: HexBytes(key.public_key().as_bytes().to_vec()),
    }
}

/// The `WalletAuth` step-1 request (ask for a challenge).
pub fn auth_challenge_request(key: &SigningKey) -> WalletAuthRequest {
    WalletAuthRequest {
        address: key.address(),
        challenge: None,
        signature: None,
    }
}

/// The `WalletAuth` step-2 request answering a step-1 response.
///
/// # Errors
/// [`AppError::BadRequest`] if the response carries no challenge or session id;
/// [`AppError::Internal`] if signing fails.
pub fn auth_answer_request(
    key: &SigningKey,
    step1: &WalletAuthResponse,
) -> Result<WalletAuthRequest, AppError> {
    let (Some(challenge), Some(session_id)) = (step1.challenge, step1.session_id) else {
        return Err(AppError::BadRequest(
            "the response carries no challenge".into(),
        ));
    };
    auth_answer(key, session_id, challenge)
}

/// The `WalletAuth` step-2 request for a known session id and challenge.
///
/// # Errors
/// [`AppError::Internal`] if signing fails.
pub fn auth_answer(
    key: &SigningKey,
    session_id: u64,
    challenge: Hex32,
) -> Result<WalletAuthRequest, AppError> {
    let address = key.address();
    let sig = key.sign(&message::wallet_auth(session_id, &challenge.0, &address))?;
    Ok(WalletAuthRequest {
        address,
        challenge: Some(challenge),
        signature: Some(HexBytes(sig)),
    })
}

/// A signed transaction from `key`'s wallet.
///
/// # Errors
/// [`AppError::Internal`] if signing fails.
pub fn sign_transaction(
    key: &SigningKey,
    kind: TxKind,
    to: Address,
    amount: u64,
    nonce: u64,
) -> Result<SignedTransaction, AppError> {
    let from = key.address();
    let sig = key.sign(&message::transaction(
        kind.code(),
        &from,
        &to,
        amount,
        nonce,
    ))?;
    Ok(SignedTransaction {
        kind,
        from,
        to,
        amount,
        nonce,
        signature: HexBytes(sig),
    })
}

/// A signed registry compare-and-set by `key`'s wallet.
///
/// # Errors
/// [`AppError::Internal`] if signing fails.
pub fn sign_registry_update(
    key: &SigningKey,
    registry_key: &str,
    value: &str,
    expected_version: u64,
) -> Result<RegistryUpdateRequest, AppError> {
    let owner = key.address();
    let sig = key.sign(&message::registry_update(
        registry_key,
        expected_version,
        &owner,
        value,
    ))?;
    Ok(RegistryUpdateRequest {
        key: registry_key.to_string(),
        value: value.to_string(),
        expected_version,
        owner,
        signature: HexBytes(sig),
    })
}
