//! The key provider's cost per key release: one unwrap of a room-epoch key
//! (and one wrap, when a key is made), with the TMK in a sealed file and in
//! SoftHSM2 over PKCS#11. Needs `softhsm2-util` (scripts/tools installs
//! it); without it only the file provider is measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloister_crypto::passphrase::Cost;
use cloister_km::provider::{FileKeyProvider, KeyProvider, Pkcs11Config, Pkcs11KeyProvider};
use criterion::{Criterion, criterion_group, criterion_main};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn softhsm() -> Option<Pkcs11KeyProvider> {
    if !std::path::Path::new(MODULE).exists() {
        eprintln!("SoftHSM2 is not installed (scripts/tools): measuring the file provider only");
        return None;
    }
    let label = format!("cloister-bench-{}", std::process::id());
    let ok = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", &label])
        .args(["--so-pin", "so-bench", "--pin", "bench-pin"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("cannot make a SoftHSM token: measuring the file provider only");
        return None;
    }
    Some(
        Pkcs11KeyProvider::create(&Pkcs11Config {
            module: MODULE.into(),
            token: label,
            pin: "bench-pin".into(),
            key_label: "bench-tmk".into(),
        })
        .unwrap(),
    )
}

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
        let token = h.token().to_owned();
        drop(h);
        let _ = std::process::Command::new("softhsm2-util")
            .args(["--delete-token", "--token", &token])
            .output();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
