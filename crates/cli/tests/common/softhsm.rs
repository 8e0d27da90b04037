//! A SoftHSM2 token for the tests that keep the master key in an HSM.

use cloister_km::provider::Pkcs11Config;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PIN: &str = "4711-test-pin";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A SoftHSM token of this test process (made once, before any test loads
/// the module: SoftHSM lists its tokens when it is initialised), removed
/// when the process ends.
pub fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let st = std::process::Command::new(root().join("scripts/tools"))
            .status()
            .expect("scripts/tools runs");
        assert!(st.success(), "scripts/tools could not install softhsm2");
        assert!(
            Path::new(MODULE).exists(),
            "SoftHSM2's module is missing: {MODULE}"
        );
        cloister_cli::custody::remove_stale_softhsm_tokens("cloister-test-");
        let label = format!("cloister-test-{}", std::process::id());
        let out = std::process::Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", &label])
            .args(["--so-pin", "so-4711", "--pin", PIN])
            .output()
            .expect("softhsm2-util runs");
        assert!(
            out.status.success(),
            "cannot make a SoftHSM token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        label
    })
}

pub fn config(key_label: &str) -> Pkcs11Config {
    Pkcs11Config {
        module: MODULE.into(),
        token: token().to_owned(),
        pin: PIN.into(),
        key_label: key_label.into(),
    }
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        hex::encode(cloister_crypto::random_bytes::<6>().unwrap())
    )
}

/// A session of our own on the test token (as the bank's HSM team would
/// have), to look at and change the key from outside the KM.
pub fn admin_session() -> cryptoki::session::Session {
    let ctx = Pkcs11::new(MODULE).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token())
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    let _ = s.login(UserType::User, Some(&AuthPin::from(PIN.to_owned())));
    s
}

pub fn key_handle(s: &cryptoki::session::Session, label: &str) -> cryptoki::object::ObjectHandle {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .unwrap()
    .into_iter()
    .next()
    .unwrap_or_else(|| panic!("no key {label} in the token"))
}
