//! Signed notes as a witness, a device and `audit verify` receive them:
//! checkpoints (C2SP signed-note), cosignatures, verifier keys and the
//! witness's add-checkpoint request. The input's text is also signed with
//! the log's key, so the checkpoint parser behind the signature is reached.
#![no_main]

use cloister_crypto::KmSigner;
use cloister_log::note::{Checkpoint, NoteSigner, NoteVerifier};
use cloister_log::witness::{
    AddCheckpoint, CosignatureVerifier, Cosigner, WitnessPolicy, witness_step,
};
use libfuzzer_sys::fuzz_target;

const LOG: &str = "cloister.audit/acme";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (Ok(log_key), Ok(w_key)) = (
        KmSigner::from_secret(&[7u8; 32]),
        KmSigner::from_secret(&[9u8; 32]),
    ) else {
        return;
    };
    let signer = NoteSigner {
        name: LOG,
        key: &log_key,
    };
    let Ok(verifier) = NoteVerifier::parse(&signer.verifier_key()) else {
        return;
    };
    // untrusted as they come
    let _ = NoteVerifier::parse(s);
    let _ = CosignatureVerifier::parse(s);
    let _ = Checkpoint::parse_body(s);
    let _ = verifier.verify_checkpoint(s);
    if let Ok(req) = AddCheckpoint::parse(s) {
        let _ = witness_step(&verifier, None, &req);
        let _ = witness_step(&verifier, Some((3, [7u8; 32])), &req);
    }
    // behind a valid signature: the body parser and the witness policy
    if let Ok(note) = signer.sign(s) {
        let _ = verifier.verify_checkpoint(&note);
        let c = Cosigner {
            name: "w1",
            key: &w_key,
        };
        if let Ok(policy) = WitnessPolicy::parse(&[c.key_string()], 1) {
            let cosigned = format!("{note}{}", c.cosign(s, 1_700_000_000));
            let _ = policy.check(&cosigned);
            let _ = policy.check(&note);
        }
    }
});
