//! X-Wing draft test vectors through the public API only
//! (`docs/test-vectors/xwing.json`).
#![allow(missing_docs, clippy::unwrap_used)]

use xtmp_crypto::xwing::{XWingPublicKey, XWingSecretKey, CIPHERTEXT_LEN, PUBLIC_KEY_LEN};

#[derive(serde::Deserialize)]
struct VectorFile {
    vectors: Vec<Vector>,
}

#[derive(serde::Deserialize)]
struct Vector {
    seed: String,
    eseed: String,
    pk: String,
    ct: String,
    ss: String,
}

#[test]
fn xwing_draft_vectors_public_api() {
    let file: VectorFile =
        serde_json::from_str(include_str!("../../docs/test-vectors/xwing.json")).unwrap();
    assert_eq!(file.vectors.len(), 3);
    for v in file.vectors {
        let seed: [u8; 32] = hex::decode(&v.seed).unwrap().try_into().unwrap();
        let eseed: [u8; 64] = hex::decode(&v.eseed).unwrap().try_into().unwrap();
        let pk_bytes = hex::decode(&v.pk).unwrap();
        let ct_bytes = hex::decode(&v.ct).unwrap();
        let ss_bytes = hex::decode(&v.ss).unwrap();
        assert_eq!(pk_bytes.len(), PUBLIC_KEY_LEN);
        assert_eq!(ct_bytes.len(), CIPHERTEXT_LEN);

        let sk = XWingSecretKey::from_seed(&seed);
        assert_eq!(sk.seed(), &seed);
        assert_eq!(&sk.public_key().as_bytes()[..], &pk_bytes[..]);

        let pk = XWingPublicKey::from_bytes(&pk_bytes).unwrap();
        let (ct, ss) = pk.encapsulate_derand(&eseed).unwrap();
        assert_eq!(&ct[..], &ct_bytes[..]);
        assert_eq!(&ss.as_bytes()[..], &ss_bytes[..]);

        let ss2 = sk.decapsulate(&ct_bytes).unwrap();
        assert_eq!(&ss2.as_bytes()[..], &ss_bytes[..]);
    }
}
