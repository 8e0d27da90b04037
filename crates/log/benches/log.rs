//! Proof generation and verification at 10^6 entries, and checkpoint signing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloister_crypto::KmSigner;
use cloister_log::note::NoteSigner;
use cloister_log::{
    Checkpoint, NoteVerifier, Tree, leaf_hash, verify_consistency, verify_inclusion,
};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

const N: u64 = 1_000_000;

fn bench(c: &mut Criterion) {
    let mut t = Tree::new();
    for i in 0..N {
        t.push(leaf_hash(&i.to_be_bytes()));
    }
    let root = t.root(N).unwrap();
    let idx = 777_777;
    let proof = t.inclusion_proof(idx, N).unwrap();
    let leaf = t.leaf(idx).unwrap();
    let old = 654_321;
    let old_root = t.root(old).unwrap();
    let cproof = t.consistency_proof(old, N).unwrap();
    let mut g = c.benchmark_group("log_1e6");
    g.bench_function("inclusion_proof_generate", |b| {
        b.iter(|| t.inclusion_proof(black_box(idx), N).unwrap())
    });
    g.bench_function("inclusion_proof_verify", |b| {
        b.iter(|| verify_inclusion(idx, N, black_box(&leaf), &proof, &root).unwrap())
    });
    g.bench_function("consistency_proof_generate", |b| {
        b.iter(|| t.consistency_proof(black_box(old), N).unwrap())
    });
    g.bench_function("consistency_proof_verify", |b| {
        b.iter(|| verify_consistency(old, N, &old_root, &root, black_box(&cproof)).unwrap())
    });
    g.bench_function("root", |b| b.iter(|| t.root(black_box(N - 3)).unwrap()));
    g.bench_function("append_leaf_hash", |b| {
        let mut t2 = t.clone();
        let mut i = N;
        b.iter(|| {
            i += 1;
            t2.push(leaf_hash(&i.to_be_bytes()))
        })
    });
    let k = KmSigner::generate().unwrap();
    let signer = NoteSigner {
        name: "cloister-audit/acme",
        key: &k,
    };
    let cp = Checkpoint {
        origin: "cloister-audit/acme".into(),
        size: N,
        root,
    };
    let note = signer.sign(&cp.body()).unwrap();
    let v = NoteVerifier::parse(&signer.verifier_key()).unwrap();
    g.bench_function("checkpoint_sign", |b| {
        b.iter(|| signer.sign(black_box(&cp.body())).unwrap())
    });
    g.bench_function("checkpoint_verify", |b| {
        b.iter(|| v.verify_checkpoint(black_box(&note)).unwrap())
    });
    // A witness's work per submission (no I/O): parse the request, verify
    // the log's signature and the consistency proof from its last size,
    // cosign; and a client's check of a 2-of-2 policy.
    use cloister_log::witness::{
        AddCheckpoint, Cosigner, WitnessPolicy, add_checkpoint_body, note_text, witness_step,
    };
    let body = add_checkpoint_body(old, &cproof, &note);
    let wk = KmSigner::generate().unwrap();
    let w = Cosigner {
        name: "witness.acme/w1",
        key: &wk,
    };
    g.bench_function("witness_add_checkpoint", |b| {
        b.iter(|| {
            let req = AddCheckpoint::parse(black_box(&body)).unwrap();
            let cp = witness_step(&v, Some((old, old_root)), &req).unwrap();
            w.cosign(note_text(req.note).unwrap(), cp.size)
        })
    });
    let wk2 = KmSigner::generate().unwrap();
    let w2 = Cosigner {
        name: "witness.acme/w2",
        key: &wk2,
    };
    let text = note_text(&note).unwrap();
    let cosigned = format!("{note}{}{}", w.cosign(text, 1), w2.cosign(text, 1));
    let policy = WitnessPolicy::parse(&[w.key_string(), w2.key_string()], 2).unwrap();
    g.bench_function("witness_policy_check_2_of_2", |b| {
        b.iter(|| policy.check(black_box(&cosigned)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
