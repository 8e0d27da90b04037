//! The key provider's cost per key release: one unwrap of a room-epoch key
//! (and one wrap, when a key is made), with the TMK in a sealed file and in
//! SoftHSM2 over PKCS#11. Needs `softhsm2-util` (scripts/tools installs
//! it); without it only the file provider is measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloister_crypto::passphrase::Cost;
use cloister_km::provider::{FileKeyProvider, KeyProvider};
use criterion::{Criterion, criterion_group, criterion_main};

mod softhsm;
use softhsm::{drop_token, softhsm};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let file = FileKeyProvider::create(&dir.path().join("tmk"), b"pw", Cost::TEST).unwrap();
    let hsm = softhsm();
    let mut providers: Vec<(&str, &dyn KeyProvider)> = vec![("file", &file)];
    if let Some(h) = &hsm {
        providers.push(("pkcs11_softhsm", h));
    }
    let mut g = c.benchmark_group("provider");
    for (name, p) in providers {
        let wrapped = p.wrap_destroyable(b"room/epoch", &[7u8; 32]).unwrap();
        g.bench_function(format!("{name}/unwrap_room_key"), |b| {
            b.iter(|| p.unwrap_destroyable(b"room/epoch", &wrapped).unwrap())
        });
        g.bench_function(format!("{name}/wrap_room_key"), |b| {
            b.iter(|| p.wrap_destroyable(b"room/epoch", &[7u8; 32]).unwrap())
        });
    }
    g.finish();
    if let Some(h) = hsm {
        drop_token(h);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
