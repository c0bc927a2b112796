use xtmp_services::error::codes;
use xtmp_services::types::{Certificate, TlslsRequest};
use xtmp_services::{static_key_fingerprint, verify_certificate, AppError, Caller};

use crate::common::*;

fn fp(n: u8) -> [u8; 32] {
    static_key_fingerprint(&[n; 1216]).unwrap()
}

fn issue(
    e: &Env,
    c: &Caller,
    fpr: [u8; 32],
    secs: Option<u64>,
    now: u64,
) -> Result<Certificate, AppError> {
    e.svc
        .tlsls(
            c,
            TlslsRequest::Issue {
                subject: "node-1.example".into(),
                key_fingerprint: fpr.into(),
                validity_secs: secs,
            },
            now,
        )
        .map(|r| r.certificate.unwrap())
}

fn validate(e: &Env, cert: &Certificate, now: u64) -> Result<(), AppError> {
    e.svc
        .tlsls(
            &Caller::new(500),
            TlslsRequest::Validate {
                certificate: cert.clone(),
            },
            now,
        )
        .map(|r| assert_eq!(r.valid, Some(true)))
}

#[test]
fn issue_validate_expire() {
    let e = env();
    let owner = Caller::with_client_key(40, fp(1));
    // No proof of the key.
    assert_eq!(
        issue(&e, &Caller::new(41), fp(1), None, NOW).unwrap_err(),
        AppError::KeyProofRequired
    );
    assert_eq!(
        issue(&e, &owner, fp(2), None, NOW).unwrap_err(),
        AppError::KeyProofRequired
    );
    assert!(static_key_fingerprint(&[0; 12]).is_err());

    let cert = issue(&e, &owner, fp(1), Some(3600), NOW).unwrap();
    assert_eq!(cert.serial, 1);
    assert_eq!(cert.key_fingerprint.0, fp(1));
    assert_eq!(cert.not_after_ms, NOW + 3_600_000);
    assert_eq!(cert.issuer.0, e.svc.server_key_id());
    validate(&e, &cert, NOW).unwrap();
    validate(&e, &cert, NOW + 3_599_999).unwrap();
    assert_eq!(
        validate(&e, &cert, NOW + 3_600_000).unwrap_err().code(),
        codes::CERT_EXPIRED
    );
    assert_eq!(
        validate(&e, &cert, NOW - 1).unwrap_err().code(),
        codes::CERT_NOT_YET_VALID
    );

    // Tampering.
    let mut t = cert.clone();
    t.subject = "node-2.example".into();
    assert_eq!(
        validate(&e, &t, NOW).unwrap_err().code(),
        codes::CERT_INVALID
    );
    let mut t = cert.clone();
    t.not_after_ms += 1;
    assert_eq!(
        validate(&e, &t, NOW).unwrap_err().code(),
        codes::CERT_INVALID
    );
    let mut t = cert.clone();
    t.key_fingerprint = fp(9).into();
    assert_eq!(
        validate(&e, &t, NOW).unwrap_err().code(),
        codes::CERT_INVALID
    );
    let mut t = cert.clone();
    t.version = 2;
    assert_eq!(
        validate(&e, &t, NOW).unwrap_err().code(),
        codes::CERT_INVALID
    );

    // Offline, with the issuer key from the `issuer` op.
    let iss = e
        .svc
        .tlsls(&Caller::new(1), TlslsRequest::Issuer {}, NOW)
        .unwrap();
    let ipk = iss.issuer_public_key.unwrap();
    verify_certificate(&cert, ipk.as_slice(), NOW, |_| None).unwrap();
    assert_eq!(
        verify_certificate(&cert, key(3).public_key().as_bytes(), NOW, |_| None)
            .unwrap_err()
            .code(),
        codes::CERT_INVALID
    );

    // The authority may issue for any key.
    let admin = Caller::new(AUTHORITY_SESSION);
    assert_eq!(issue(&e, &admin, fp(7), None, NOW).unwrap().serial, 2);
    // Input checks.
    assert_eq!(
        issue(&e, &owner, fp(1), Some(0), NOW).unwrap_err().code(),
        codes::INVALID_VALIDITY
    );
    assert_eq!(
        issue(&e, &owner, fp(1), Some(398 * 86_400), NOW)
            .unwrap_err()
            .code(),
        codes::INVALID_VALIDITY
    );
    let bad_subject = e.svc.tlsls(
        &owner,
        TlslsRequest::Issue {
            subject: "a\nb".into(),
            key_fingerprint: fp(1).into(),
            validity_secs: None,
        },
        NOW,
    );
    assert_eq!(bad_subject.unwrap_err().code(), codes::INVALID_SUBJECT);
}

#[test]
fn renew_revoke_and_crl() {
    let e = env();
    let owner = Caller::with_client_key(40, fp(1));
    let other = Caller::with_client_key(41, fp(2));
    let cert = issue(&e, &owner, fp(1), Some(60), NOW).unwrap();

    // Renew (even after expiry) gives a new serial and a fresh validity.
    let later = NOW + 120_000;
    let renew = |c: &Caller, serial| {
        e.svc.tlsls(
            c,
            TlslsRequest::Renew {
                serial,
                validity_secs: Some(60),
            },
            later,
        )
    };
    assert_eq!(
        renew(&other, cert.serial).unwrap_err(),
        AppError::KeyProofRequired
    );
    assert_eq!(renew(&owner, 99).unwrap_err().code(), codes::CERT_NOT_FOUND);
    let renewed = renew(&owner, cert.serial).unwrap().certificate.unwrap();
    assert_eq!(renewed.serial, cert.serial + 1);
    assert_eq!(
        (renewed.subject.as_str(), renewed.key_fingerprint),
        (cert.subject.as_str(), cert.key_fingerprint)
    );
    assert_eq!(renewed.not_before_ms, later);
    validate(&e, &renewed, later).unwrap();

    // Revoke.
    let revoke = |c: &Caller, serial| {
        e.svc.tlsls(
            c,
            TlslsRequest::Revoke {
                serial,
                reason: Some("key compromise".into()),
            },
            later + 1,
        )
    };
    assert_eq!(
        revoke(&other, renewed.serial).unwrap_err(),
        AppError::KeyProofRequired
    );
    let r = revoke(&owner, renewed.serial).unwrap().revocation.unwrap();
    assert_eq!(r.revoked_at_ms, later + 1);
    // Idempotent.
    assert_eq!(
        revoke(&owner, renewed.serial).unwrap().revocation.unwrap(),
        r
    );
    assert_eq!(
        validate(&e, &renewed, later + 2).unwrap_err(),
        AppError::CertRevoked(later + 1)
    );
    assert_eq!(
        renew(&owner, renewed.serial).unwrap_err().code(),
        codes::CERT_REVOKED
    );
    let long_reason = e.svc.tlsls(
        &owner,
        TlslsRequest::Revoke {
            serial: 1,
            reason: Some("x".repeat(300)),
        },
        NOW,
    );
    assert_eq!(long_reason.unwrap_err().code(), codes::TOO_LARGE);

    // The authority revokes the first one too; the CRL lists both in serial order.
    e.svc
        .tlsls(
            &Caller::new(AUTHORITY_SESSION),
            TlslsRequest::Revoke {
                serial: cert.serial,
                reason: None,
            },
            later + 3,
        )
        .unwrap();
    let crl = e
        .svc
        .tlsls(
            &Caller::new(3),
            TlslsRequest::Crl {
                after: 0,
                limit: None,
            },
            NOW,
        )
        .unwrap();
    let serials: Vec<u64> = crl.revocations.unwrap().iter().map(|r| r.serial).collect();
    assert_eq!(serials, vec![cert.serial, renewed.serial]);
    assert_eq!(crl.more, Some(false));
    let page = e
        .svc
        .tlsls(
            &Caller::new(3),
            TlslsRequest::Crl {
                after: cert.serial,
                limit: Some(1),
            },
            NOW,
        )
        .unwrap();
    assert_eq!(page.revocations.unwrap().len(), 1);
    assert_eq!(page.more, Some(false));
}
