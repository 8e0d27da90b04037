//! The time to rotate the master key over many wrapped keys (10^5 by
//! default; `CLOISTER_BENCH_KEYS` to change), with the key in a sealed file
//! and in SoftHSM2 over PKCS#11. One run each, whole rotation timed (steps
//! of 10,000 keys, as `cloister admin rotate master-key --batch 10000`
//! drives it), not a criterion loop: a sample takes seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloister_crypto::passphrase::Cost;
use cloister_km::provider::{FileKeyProvider, KeyProvider};
use cloister_km::{Km, KmConfig};
use std::sync::Arc;
use std::time::Instant;

mod softhsm;

async fn rotate(name: &str, provider: Arc<dyn KeyProvider>, keys: u32) {
    let dir = tempfile::tempdir().unwrap();
    let url = cloister_store::sqlite_url(&dir.path().join("km.db"));
    let store = Arc::new(cloister_store::SqlKmStore::open(&url).await.unwrap());
    let (km, _) = Km::init(
        store.clone(),
        store,
        provider,
        "acme".parse().unwrap(),
        KmConfig::default(),
    )
    .await
    .unwrap();
    let t = Instant::now();
    km.seed_index_keys(0, keys).await.unwrap();
    let seeded = t.elapsed();
    let before = km.digest_keys().await.unwrap();
    let t = Instant::now();
    let mut steps = 0;
    while !km.rotate_tmk_step(None, 10_000).await.unwrap().finished {
        steps += 1;
    }
    let took = t.elapsed();
    assert_eq!(km.digest_keys().await.unwrap(), before, "no key lost");
    println!(
        "{name}: rotated {} keys in {:.2} s ({:.0} keys/s, {} steps); storing them took {:.2} s",
        before.0,
        took.as_secs_f64(),
        before.0 as f64 / took.as_secs_f64(),
        steps + 1,
        seeded.as_secs_f64()
    );
}

fn main() {
    // `cargo test --benches` runs bench targets once in test mode: keep it short.
    let test_mode = std::env::args().any(|a| a == "--test" || a == "--list");
    let keys = std::env::var("CLOISTER_BENCH_KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(if test_mode { 100 } else { 100_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = FileKeyProvider::create(&dir.path().join("tmk"), b"pw", Cost::TEST).unwrap();
    rt.block_on(rotate("file", Arc::new(file), keys));
    if let Some(h) = softhsm::softhsm() {
        let token = h.token().to_owned();
        rt.block_on(rotate("pkcs11_softhsm", Arc::new(h), keys));
        let _ = std::process::Command::new("softhsm2-util")
            .args(["--delete-token", "--token", &token])
            .output();
    }
}
