//! The demo's custody section: Acme's master key is locked (the HSM team
//! disables it in the token, or, with the development file provider, the
//! key file is withdrawn) and the tenant is crypto-locked at once; then
//! the key comes back and everything reads again.

use super::{Demo, render};
use crate::{BoxError, Stack, StackOptions};
use cloister_client::Client;
use cloister_km::provider::{Pkcs11Config, Pkcs11KeyProvider};
use cloister_proto::RoomId;
use std::path::Path;
use std::time::Instant;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 token for this demo run, when SoftHSM2 is installed
/// (`scripts/tools` installs it); else `None` and the demo uses the file
/// provider.
/// `CLOISTER_DEMO_FILE_KEY=1` asks for the file provider even so.
pub(super) fn demo_token() -> Option<Pkcs11Config> {
    if !Path::new(MODULE).exists() || std::env::var_os("CLOISTER_DEMO_FILE_KEY").is_some() {
        return None;
    }
    crate::custody::remove_stale_softhsm_tokens("cloister-demo-");
    let label = format!("cloister-demo-{}", std::process::id());
    let pin = hex::encode(cloister_crypto::random_bytes::<8>().ok()?);
    let so = hex::encode(cloister_crypto::random_bytes::<8>().ok()?);
    let ok = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", &label])
        .args(["--so-pin", &so, "--pin", &pin])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| Pkcs11Config {
        module: MODULE.into(),
        token: label,
        pin,
        key_label: "acme-tmk".into(),
    })
}

/// Remove the demo's token.
pub(super) fn drop_token(cfg: &Pkcs11Config) {
    let _ = std::process::Command::new("softhsm2-util")
        .args(["--delete-token", "--token", &cfg.token])
        .output();
}

pub(super) struct Cast<'a> {
    pub admin: &'a Client,
    /// A member of `room` whose device is active.
    pub reader: &'a Client,
    pub room: RoomId,
    pub dir: &'a Path,
}

/// Lock, show the refusals, restore, show everything reads again. Returns
/// the stack (restarted, with the file provider).
pub(super) async fn run(
    d: &mut Demo,
    stack: Stack,
    hsm: Option<&Pkcs11Config>,
    opts: impl Fn() -> StackOptions,
    c: Cast<'_>,
) -> Result<Stack, BoxError> {
    d.section("The firm's keys, controlled by the firm: a crypto-lock");
    let before = c.reader.read(&c.room, 50, None).await?.len();
    match hsm {
        Some(cfg) => {
            d.say(
                "key custodian",
                format!(
                    "Acme's master key is in an HSM: SoftHSM2 token {:?} over PKCS#11, key {:?} (sensitive, never extractable)",
                    cfg.token, cfg.key_label
                ),
            );
            let t = Instant::now();
            Pkcs11KeyProvider::set_master_key_usable(cfg, false)?;
            d.say("HSM team", "disables the master key in the token");
            c.reader.clear_key_cache()?;
            let refused = c.reader.room_keys(&c.room, &[0]).await;
            let took = t.elapsed();
            let st = c.admin.admin_lock_status().await?;
            match &refused {
                Err(e) => d.say(c.reader.user().name(), format!("asks for a key: {e}")),
                Ok(_) => d.say(c.reader.user().name(), "was given a key!"),
            }
            d.check(
                refused.as_ref().err().and_then(|e| e.code()) == Some("crypto_locked") && st.locked,
                &format!(
                    "the tenant is crypto-locked at once ({} ms from the lock to the first refusal); lock-status says so",
                    took.as_millis()
                ),
            );
            d.say(
                "admin",
                format!(
                    "devices holding keys lose them when their lease ends (at most {} s)",
                    st.lease_secs
                ),
            );
            Pkcs11KeyProvider::set_master_key_usable(cfg, true)?;
            d.say("HSM team", "enables the master key again");
            reads_again(d, &c, before).await?;
            Ok(stack)
        }
        None => {
            d.say(
                "key custodian",
                "SoftHSM2 is not installed (scripts/tools installs it) or CLOISTER_DEMO_FILE_KEY is set: Acme's master key is the development file provider's tmk.sealed",
            );
            let (km_addr, server_addr) = (stack.km_addr, stack.server_addr);
            stack.stop().await;
            let tmk = cloister_km::tmk_path(&c.dir.join("km"));
            let away = c.dir.join("tmk.sealed.withdrawn");
            std::fs::rename(&tmk, &away)?;
            d.say(
                "key custodian",
                "withdraws the master key file; the KM restarts",
            );
            // the same addresses: the devices know them
            let same_place = || {
                let mut o = opts();
                o.km_addr = km_addr;
                o.server_addr = server_addr;
                o
            };
            let locked = Stack::start(c.dir, same_place()).await;
            match &locked {
                Err(e) => d.say("KM", format!("refuses to start: {e}")),
                Ok(_) => d.say("KM", "started without its key!"),
            }
            d.check(
                locked.is_err(),
                "without its master key the KM cannot start: the tenant is crypto-locked",
            );
            if let Ok(s) = locked {
                s.stop().await;
            }
            std::fs::rename(&away, &tmk)?;
            d.say("key custodian", "puts the key back; the KM restarts");
            let stack = Stack::start(c.dir, same_place()).await?;
            c.reader.clear_key_cache()?;
            reads_again(d, &c, before).await?;
            Ok(stack)
        }
    }
}

/// After the key is back: all `before` messages of the room read again.
async fn reads_again(d: &mut Demo, c: &Cast<'_>, before: usize) -> Result<(), BoxError> {
    let after = c.reader.read(&c.room, 50, None).await?;
    let ok = after.iter().all(|m| m.is_ok()) && after.len() == before;
    if let Some(Ok(m)) = after.last() {
        d.say(
            c.reader.user().name(),
            format!("reads again: {}", render(m)),
        );
    }
    d.check(
        ok,
        "service resumes with nothing lost: all history reads again",
    );
    Ok(())
}
