//! TLSLS: certificates binding a subject name to an XTMP static key (its SHA-256
//! fingerprint), signed by the server's ML-DSA-65 issuer key, with expiry and revocation.
//!
//! Who may do what: issuing, renewing or revoking a certificate for a key fingerprint
//! needs proof of that key — a `pqIK` session whose client static key has that
//! fingerprint — or a session authenticated as the mint authority's wallet (the
//! administrator). Validation, the revocation list and the issuer key are public.
//! Certificates and revocations are stored durably before the answer.

use crate::crypto::PublicKey;
use crate::encoding::{Hex32, HexBytes};
use crate::error::AppError;
use crate::events::Event;
use crate::records::{self, meta};
use crate::services::{Caller, Services};
use crate::store::Table;
use crate::types::{Certificate, Revocation, TlslsRequest, TlslsResponse};

/// The certificate format version.
pub const CERT_VERSION: u8 = 1;
/// Longest subject in bytes.
pub const MAX_SUBJECT_LEN: usize = 255;
/// Longest revocation reason in bytes.
pub const MAX_REASON_LEN: usize = 256;

fn check_subject(s: &str) -> Result<(), AppError> {
    if s.is_empty() || s.len() > MAX_SUBJECT_LEN || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(AppError::InvalidSubject(format!(
            "1 to {MAX_SUBJECT_LEN} printable ASCII characters"
        )));
    }
    Ok(())
}

/// Checks a certificate offline: format, issuer, signature and validity period at
/// `now_ms`. Revocation needs the issuer's list: pass `is_revoked` (return `Some(time)` for
/// a revoked serial) or `|_| None` to skip it.
///
/// # Errors
/// [`AppError::CertInvalid`], [`AppError::CertRevoked`], [`AppError::CertNotYetValid`],
/// [`AppError::CertExpired`] — checked in that order.
pub fn verify_certificate(
    cert: &Certificate,
    issuer_public_key: &[u8],
    now_ms: u64,
    is_revoked: impl FnOnce(u64) -> Option<u64>,
) -> Result<(), AppError> {
    if cert.version != CERT_VERSION {
        return Err(AppError::CertInvalid(format!(
            "unknown version {}",
            cert.version
        )));
    }
    check_subject(&cert.subject).map_err(|_| AppError::CertInvalid("bad subject".into()))?;
    let pk = PublicKey::from_bytes(issuer_public_key)
        .map_err(|e| AppError::CertInvalid(e.to_string()))?;
    if pk.key_id() != cert.issuer.0 {
        return Err(AppError::CertInvalid("issued by another key".into()));
    }
    pk.verify(&cert.signing_message(), cert.signature.as_slice())
        .map_err(|_| AppError::CertInvalid("bad issuer signature".into()))?;
    if let Some(at) = is_revoked(cert.serial) {
        return Err(AppError::CertRevoked(at));
    }
    if now_ms < cert.not_before_ms {
        return Err(AppError::CertNotYetValid(cert.not_before_ms));
    }
    if now_ms >= cert.not_after_ms {
        return Err(AppError::CertExpired(cert.not_after_ms));
    }
    Ok(())
}

impl Services {
    fn may_manage(&self, caller: &Caller, fingerprint: &Hex32) -> Result<(), AppError> {
        if caller.client_key == Some(fingerprint.0) || self.is_authority(caller) {
            Ok(())
        } else {
            Err(AppError::KeyProofRequired)
        }
    }

    fn validity_ms(&self, secs: Option<u64>) -> Result<u64, AppError> {
        let secs = secs.unwrap_or(self.config.default_cert_validity_secs());
        if secs == 0 || secs > self.config.max_cert_validity_secs() {
            return Err(AppError::InvalidValidity(format!(
                "validity must be 1 to {} seconds",
                self.config.max_cert_validity_secs()
            )));
        }
        Ok(secs.saturating_mul(1000))
    }

    fn issue_cert(
        &self,
        subject: String,
        fingerprint: Hex32,
        validity_ms: u64,
        now_ms: u64,
    ) -> Result<Certificate, AppError> {
        // Sign inside the write so the stored certificate is exactly the one returned.
        // Issuance is rare; the signature (~0.2 ms) briefly holds up the writer.
        let signer_id = Hex32(self.server_key_id());
        let signer = self.signer.clone();
        let cert = self.write_ev(now_ms, move |tx| {
            let serial = records::next_counter(tx, meta::CERT_SERIAL)?;
            let mut cert = Certificate {
                version: CERT_VERSION,
                serial,
                subject,
                key_fingerprint: fingerprint,
                issuer: signer_id,
                not_before_ms: now_ms,
                not_after_ms: now_ms.saturating_add(validity_ms),
                signature: HexBytes(Vec::new()),
            };
            cert.signature = HexBytes(signer.sign(&cert.signing_message())?);
            records::put_json(tx, Table::Certs, &serial.to_be_bytes(), &cert)?;
            let ev = Event::Certificate {
                serial,
                subject: cert.subject.clone(),
                state: "issued".into(),
            };
            Ok((cert, vec![ev]))
        })?;
        Ok(cert)
    }

    fn load_cert(&self, serial: u64) -> Result<Certificate, AppError> {
        records::get_json(&*self.read()?, Table::Certs, &serial.to_be_bytes())?
            .ok_or(AppError::CertNotFound(serial))
    }

    fn revocation(&self, serial: u64) -> Result<Option<Revocation>, AppError> {
        records::get_json(&*self.read()?, Table::Revoked, &serial.to_be_bytes())
    }

    /// `TLSLSRequest` (see the module docs and [`TlslsRequest`]).
    ///
    /// # Errors
    /// [`AppError::KeyProofRequired`], [`AppError::InvalidSubject`],
    /// [`AppError::InvalidValidity`], [`AppError::CertNotFound`], [`AppError::CertInvalid`],
    /// [`AppError::CertRevoked`], [`AppError::CertNotYetValid`], [`AppError::CertExpired`],
    /// [`AppError::TooLarge`], storage errors.
    pub fn tlsls(
        &self,
        caller: &Caller,
        req: TlslsRequest,
        now_ms: u64,
    ) -> Result<TlslsResponse, AppError> {
        match req {
            TlslsRequest::Issue {
                subject,
                key_fingerprint,
                validity_secs,
            } => {
                check_subject(&subject)?;
                self.may_manage(caller, &key_fingerprint)?;
                let validity = self.validity_ms(validity_secs)?;
                let cert = self.issue_cert(subject, key_fingerprint, validity, now_ms)?;
                Ok(TlslsResponse {
                    certificate: Some(cert),
                    ..TlslsResponse::default()
                })
            }
            TlslsRequest::Validate { certificate } => {
                let revoked = self.revocation(certificate.serial)?;
                verify_certificate(
                    &certificate,
                    self.server_public_key().as_bytes(),
                    now_ms,
                    |_| revoked.map(|r| r.revoked_at_ms),
                )?;
                Ok(TlslsResponse {
                    certificate: Some(certificate),
                    valid: Some(true),
                    ..TlslsResponse::default()
                })
            }
            TlslsRequest::Renew {
                serial,
                validity_secs,
            } => {
                let old = self.load_cert(serial)?;
                self.may_manage(caller, &old.key_fingerprint)?;
                if let Some(r) = self.revocation(serial)? {
                    return Err(AppError::CertRevoked(r.revoked_at_ms));
                }
                let validity = self.validity_ms(validity_secs)?;
                let cert = self.issue_cert(old.subject, old.key_fingerprint, validity, now_ms)?;
                Ok(TlslsResponse {
                    certificate: Some(cert),
                    ..TlslsResponse::default()
                })
            }
            TlslsRequest::Revoke { serial, reason } => {
                if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_LEN) {
                    return Err(AppError::TooLarge(format!(
                        "a reason has at most {MAX_REASON_LEN} bytes"
                    )));
                }
                let cert = self.load_cert(serial)?;
                self.may_manage(caller, &cert.key_fingerprint)?;
                let subject = cert.subject;
                let revocation = self.write_ev(now_ms, move |tx| {
                    if let Some(r) = records::get_json::<_, Revocation>(
                        tx,
                        Table::Revoked,
                        &serial.to_be_bytes(),
                    )? {
                        return Ok((r, Vec::new()));
                    }
                    let r = Revocation {
                        serial,
                        revoked_at_ms: now_ms,
                        reason,
                    };
                    records::put_json(tx, Table::Revoked, &serial.to_be_bytes(), &r)?;
                    let ev = Event::Certificate {
                        serial,
                        subject,
                        state: "revoked".into(),
                    };
                    Ok((r, vec![ev]))
                })?;
                Ok(TlslsResponse {
                    revocation: Some(revocation),
                    ..TlslsResponse::default()
                })
            }
            TlslsRequest::Crl { after, limit } => {
                let limit = limit.unwrap_or(1000).clamp(1, 1000) as usize;
                let start = after.saturating_add(1);
                let mut page =
                    self.read()?
                        .scan(Table::Revoked, &start.to_be_bytes(), None, limit + 1)?;
                let more = page.len() > limit;
                page.truncate(limit);
                let revocations = page
                    .into_iter()
                    .map(|(_, v)| {
                        serde_json::from_slice(&v).map_err(|_| records::corrupt("revocation"))
                    })
                    .collect::<Result<Vec<Revocation>, _>>()?;
                Ok(TlslsResponse {
                    revocations: Some(revocations),
                    more: Some(more),
                    ..TlslsResponse::default()
                })
            }
            TlslsRequest::Issuer {} => Ok(TlslsResponse {
                issuer_public_key: Some(HexBytes(self.server_public_key().as_bytes().to_vec())),
                issuer_key_id: Some(Hex32(self.server_key_id())),
                ..TlslsResponse::default()
            }),
        }
    }
}
