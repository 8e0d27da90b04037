//! Witness cosigning latency over loopback HTTP: one `add-checkpoint`
//! (parse, log signature, consistency check, durable state update with
//! fsync, cosignature) per request, keep-alive connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloister_crypto::KmSigner;
use cloister_log::note::NoteSigner;
use cloister_log::witness::add_checkpoint_body;
use cloister_log::{Checkpoint, Tree, leaf_hash};
use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::Arc;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let origin = "cloister-audit/acme";
    let lk = KmSigner::generate().unwrap();
    let signer = NoteSigner {
        name: origin,
        key: &lk,
    };
    let mut tree = Tree::new();
    for i in 0..100_000u64 {
        tree.push(leaf_hash(&i.to_be_bytes()));
    }
    // a sequence of growing checkpoints, each with its consistency proof
    let mut steps = Vec::new();
    let mut size = 1_000u64;
    while size <= 100_000 {
        let cp = Checkpoint {
            origin: origin.into(),
            size,
            root: tree.root(size).unwrap(),
        };
        steps.push((size, signer.sign(&cp.body()).unwrap()));
        size += 1;
    }
    let url = rt.block_on(async {
        let w = Arc::new(
            cloister_witness::Witness::open_dir(dir.path(), Some("witness.bench/w1"))
                .await
                .unwrap(),
        );
        w.follow(&signer.verifier_key()).await.unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let r = cloister_witness::router(w);
        tokio::spawn(async move {
            let _ = cloister_http::serve(l, r, std::future::pending()).await;
        });
        url
    });
    let http = cloister_tls::http_client();
    let mut last = 0u64;
    let mut i = 0usize;
    c.bench_function("witness/add_checkpoint_http_fsync", |b| {
        b.iter(|| {
            let (size, note) = &steps[i % steps.len()];
            i += 1;
            let proof = if last == 0 || last >= *size {
                vec![]
            } else {
                tree.consistency_proof(last, *size).unwrap()
            };
            let old = if last >= *size { 0 } else { last };
            let body = add_checkpoint_body(old, &proof, note);
            let r = rt.block_on(http.post(format!("{url}/add-checkpoint")).body(body).send());
            let r = r.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            last = *size;
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
