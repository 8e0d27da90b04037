//! Enrolment evidence as a device sends it: any bytes in any accepted
//! format are refused or accepted without a panic, and accepted evidence
//! speaks of the enrolling device only.
#![no_main]

use cloister_attest::{Subject, Verifiers};
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::km::{AttestationPolicy, Evidence};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tenant = "acme".parse().unwrap();
    let user = "alice@acme".parse().unwrap();
    let (sign_pk, hpke_pk) = ([1u8; 32], [2u8; 32]);
    let subject = Subject {
        tenant: &tenant,
        user: &user,
        sign_pk: &sign_pk,
        hpke_pk: &hpke_pk,
    };
    let policy = AttestationPolicy {
        required: true,
        formats: vec!["mdm".into()],
        mdm_keys: vec![Fixed([3; 32])],
        max_age_secs: 3_600,
    };
    let evidence = Evidence {
        format: "mdm".into(),
        body: Bytes(data.to_vec()),
    };
    // no key signs for [3; 32]'s secret here: nothing may be accepted
    let r = Verifiers::standard().check(&policy, Some(&evidence), &subject, 1_000);
    assert!(r.is_err(), "accepted evidence without a trusted signature");
});
