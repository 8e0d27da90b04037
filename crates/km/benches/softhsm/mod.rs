//! A SoftHSM2 token of this bench process, for the PKCS#11 provider.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use cloister_km::provider::{Pkcs11Config, Pkcs11KeyProvider};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

pub fn softhsm() -> Option<Pkcs11KeyProvider> {
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

/// Remove the bench's token.
pub fn drop_token(h: Pkcs11KeyProvider) {
    let token = h.token().to_owned();
    drop(h);
    let _ = std::process::Command::new("softhsm2-util")
        .args(["--delete-token", "--token", &token])
        .output();
}
