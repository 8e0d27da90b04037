//! Byte-for-byte checks of our RFC 6962 tree and C2SP signed notes against
//! two independent implementations: `ct-merkle` and `signed_note`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloister_crypto::KmSigner;
use cloister_log::note::{NoteSigner, verifier_key};
use cloister_log::{Checkpoint, NoteVerifier, Tree, leaf_hash};
use ct_merkle::mem_backed_tree::MemoryBackedTree;
use sha2::Sha256;

#[test]
fn tree_roots_and_proofs_match_ct_merkle() {
    let mut ours = Tree::new();
    let mut theirs = MemoryBackedTree::<Sha256, Vec<u8>>::new();
    for n in 1..=70u64 {
        let data = format!("entry {n}").into_bytes();
        ours.push(leaf_hash(&data));
        theirs.push(data);
        assert_eq!(
            ours.root(n).unwrap().as_slice(),
            theirs.root().as_bytes().as_slice(),
            "root at {n}"
        );
        for i in 0..n {
            let p: Vec<u8> = ours.inclusion_proof(i, n).unwrap().concat();
            assert_eq!(
                p,
                theirs.prove_inclusion(i as usize).as_bytes(),
                "inclusion {i} of {n}"
            );
        }
        for old in 1..n {
            let p: Vec<u8> = ours.consistency_proof(old, n).unwrap().concat();
            assert_eq!(
                p,
                theirs.prove_consistency((n - old) as usize).as_bytes(),
                "consistency {old} -> {n}"
            );
        }
    }
}

#[test]
fn signed_notes_match_signed_note_crate() {
    let k = KmSigner::generate().unwrap();
    let name = "cloister-audit/acme";
    let cp = Checkpoint {
        origin: name.into(),
        size: 123_456,
        root: leaf_hash(b"root"),
    };
    let ours = NoteSigner { name, key: &k }.sign(&cp.body()).unwrap();

    // Their signer, given the same private key, produces the identical note (Ed25519 is deterministic).
    let vkey = verifier_key(name, &k.public());
    let id = vkey.split('+').nth(1).unwrap();
    let mut raw = vec![0x01u8];
    raw.extend_from_slice(k.secret_bytes().expose());
    let skey = format!("PRIVATE+KEY+{name}+{id}+{}", STANDARD.encode(raw));
    let signer = signed_note::StandardSigner::new(&skey).unwrap();
    let mut note = signed_note::Note::new(cp.body().as_bytes(), &[]).unwrap();
    note.add_sigs(&[&signer]).unwrap();
    assert_eq!(String::from_utf8(note.to_bytes()).unwrap(), ours);

    // Their verifier accepts our note and our key string; ours accepts theirs.
    let verifier = signed_note::StandardVerifier::new(&vkey).unwrap();
    let list = signed_note::VerifierList::new(vec![Box::new(verifier)]);
    let parsed = signed_note::Note::from_bytes(ours.as_bytes()).unwrap();
    let (ok, _) = parsed.verify(&list).unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(
        NoteVerifier::parse(&vkey)
            .unwrap()
            .verify_checkpoint(&ours)
            .unwrap(),
        cp
    );
}
