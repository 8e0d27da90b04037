//! The log's parsers of untrusted text never panic: signed notes,
//! checkpoints, witness requests and cosignature lines, on arbitrary input.
#![allow(clippy::unwrap_used)]

use cloister_crypto::KmSigner;
use cloister_log::note::NoteSigner;
use cloister_log::witness::{
    AddCheckpoint, CosignatureVerifier, Cosigner, WitnessPolicy, note_text, witness_step,
};
use cloister_log::{Checkpoint, NoteVerifier};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,400}", bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let k = KmSigner::from_secret(&[3; 32]).unwrap();
        let signer = NoteSigner { name: "cloister-audit/acme", key: &k };
        let v = NoteVerifier::parse(&signer.verifier_key()).unwrap();
        let w = Cosigner { name: "witness.acme/w1", key: &k };
        let policy = WitnessPolicy::parse(&[w.key_string()], 1).unwrap();
        let lossy = String::from_utf8_lossy(&bytes).into_owned();
        for text in [s.as_str(), lossy.as_str()] {
            let _ = Checkpoint::parse_body(text);
            let _ = v.verify(text);
            let _ = v.verify_checkpoint(text);
            let _ = note_text(text);
            let _ = policy.check(text);
            let _ = NoteVerifier::parse(text);
            let _ = CosignatureVerifier::parse(text);
            if let Ok(req) = AddCheckpoint::parse(text) {
                let _ = witness_step(&v, Some((3, [0; 32])), &req);
                let _ = witness_step(&v, None, &req);
            }
            // a real note with arbitrary signature lines appended
            let note = signer
                .sign(&Checkpoint { origin: "cloister-audit/acme".into(), size: 3, root: [1; 32] }.body())
                .unwrap();
            let _ = policy.check(&format!("{note}{text}"));
            let _ = AddCheckpoint::parse(&format!("old 3\n{text}\n\n{note}"));
        }
    }
}
