//! What another firm's KM (or a relaying operator) sends: a key request
//! or grant as signed bytes, and connection proofs inside statements. Each
//! is decoded, checked under keys the fuzzer cannot sign with, and must be
//! refused without a panic; a proof that verifies must name two firms.
#![no_main]

use cloister_proto::federation::{ConnectionProof, KmKeyGrant, KmKeyRequest};
use cloister_proto::km::SignedBlob;
use cloister_proto::TenantId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = [7u8; 32];
    let keys_of = |t: &TenantId| (t.as_str() != "untrusted").then_some(key);
    if let Ok(b) = serde_json::from_slice::<SignedBlob>(data) {
        let _ = cloister_crypto::signed::peek_blob::<KmKeyRequest>(&b, "key request");
        let _ = cloister_crypto::signed::peek_blob::<KmKeyGrant>(&b, "key grant");
        assert!(
            cloister_crypto::signed::verify_blob::<KmKeyRequest>(
                &key,
                cloister_crypto::signed::KM_KEY_REQUEST,
                &b,
                "key request"
            )
            .is_err(),
            "nothing the fuzzer makes is signed"
        );
    }
    if let Ok(p) = serde_json::from_slice::<ConnectionProof>(data) {
        if let Ok((a, b)) = cloister_policy::federation::verify(&p, &keys_of) {
            assert_ne!(a.tenant(), b.tenant(), "a connection is between two firms");
        }
    }
    if let Ok(st) = serde_json::from_slice::<cloister_proto::room::Statement>(data) {
        let _ = st.connections.len();
    }
});
