//! RFC 9180 known-answer tests for the HPKE suite Cloister uses
//! (base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM), plus the
//! RFC's own Appendix A.1.1 (AES-128-GCM) vector for the shared KEM and KDF.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hpke::{Deserializable, Kem as _, OpModeR, Serializable};
use serde_json::Value;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;

fn h(v: &Value, k: &str) -> Vec<u8> {
    hex::decode(v[k].as_str().unwrap()).unwrap()
}

fn vectors() -> Vec<Value> {
    serde_json::from_str(include_str!("vectors/rfc9180.json")).unwrap()
}

fn check<A: hpke::aead::Aead>(v: &Value) {
    assert_eq!(v["mode"], 0);
    assert_eq!(v["kem_id"], 32);
    assert_eq!(v["kdf_id"], 1);
    // Key derivation from the published input keying material.
    let (sk_r, pk_r) = Kem::derive_keypair(&h(v, "ikmR"));
    // The crate stores X25519 scalars clamped (RFC 7748); the RFC prints them raw.
    let mut sk_rm = h(v, "skRm");
    sk_rm[0] &= 248;
    sk_rm[31] &= 127;
    sk_rm[31] |= 64;
    assert_eq!(sk_r.to_bytes().to_vec(), sk_rm);
    assert_eq!(pk_r.to_bytes().to_vec(), h(v, "pkRm"));
    let (_sk_e, pk_e) = Kem::derive_keypair(&h(v, "ikmE"));
    assert_eq!(pk_e.to_bytes().to_vec(), h(v, "enc"));
    assert_eq!(pk_e.to_bytes().to_vec(), h(v, "pkEm"));

    // Receiver: open every published ciphertext in sequence.
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&h(v, "enc")).unwrap();
    let mut ctx =
        hpke::setup_receiver::<A, Kdf, Kem>(&OpModeR::Base, &sk_r, &enc, &h(v, "info")).unwrap();
    for e in v["encryptions"].as_array().unwrap() {
        let pt = ctx.open(&h(e, "ct"), &h(e, "aad")).unwrap();
        assert_eq!(pt, h(e, "pt"));
    }
}

#[test]
fn rfc9180_x25519_sha256_aes256gcm() {
    let v = vectors().into_iter().find(|v| v["aead_id"] == 2).unwrap();
    check::<hpke::aead::AesGcm256>(&v);

    // Cloister's own wrapper opens the first published ciphertext, proving it
    // runs exactly this suite.
    let sk: [u8; 32] = h(&v, "skRm").try_into().unwrap();
    let enc: [u8; 32] = h(&v, "enc").try_into().unwrap();
    let e0 = &v["encryptions"][0];
    let pt =
        cloister_crypto::hpke_seal::open(&sk, &enc, &h(&v, "info"), &h(e0, "aad"), &h(e0, "ct"))
            .unwrap();
    assert_eq!(pt, h(e0, "pt"));
    // and refuses it with the wrong associated data
    assert!(
        cloister_crypto::hpke_seal::open(&sk, &enc, &h(&v, "info"), b"other", &h(e0, "ct"))
            .is_err()
    );
}

#[test]
fn rfc9180_appendix_a11_x25519_sha256_aes128gcm() {
    let v = vectors().into_iter().find(|v| v["aead_id"] == 1).unwrap();
    check::<hpke::aead::AesGcm128>(&v);
}
