//! The tenant master key in an HSM: SoftHSM2 over PKCS#11. The key is
//! made in the token and never leaves it; room keys are wrapped and
//! unwrapped by the token; disabling the key crypto-locks the tenant at
//! once and enabling it again resumes service with nothing lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_cli::custody::Custody;
use cloister_proto::room::RoomSettings;
use common::procs::{Procs, cmd, json};
use common::softhsm::*;
use common::*;
use cryptoki::object::{Attribute, AttributeType};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_with_the_master_key_in_the_token_and_a_lock_stops_releases() {
    let label = unique("tmk");
    let mut o = opts();
    o.km_custody = Some(Custody::Pkcs11(config(&label)));
    let w = World::with(o).await;
    assert_eq!(w.stack.km.provider_name(), "pkcs11");
    assert!(
        !cloister_km::tmk_path(&w.stack.dir.join("km")).exists(),
        "no sealed key file beside an HSM key"
    );
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "HSM-held keys").await.unwrap();
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 1);

    // The token holds the master key as a sensitive, never-extractable
    // AES-256 key: its value cannot be read.
    let s = admin_session();
    let tmk = key_handle(&s, &label);
    let attrs = s
        .get_attributes(
            tmk,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::ValueLen,
            ],
        )
        .unwrap();
    for a in &attrs {
        match a {
            Attribute::Sensitive(b) => assert!(*b, "sensitive"),
            Attribute::Extractable(b) => assert!(!*b, "not extractable"),
            Attribute::NeverExtractable(b) => assert!(*b, "never extractable"),
            Attribute::ValueLen(n) => assert_eq!(u64::from(*n), 32),
            _ => {}
        }
    }
    let value = s.get_attributes(tmk, &[AttributeType::Value]).unwrap();
    assert!(
        !value
            .iter()
            .any(|a| matches!(a, Attribute::Value(v) if !v.is_empty())),
        "the key's value never leaves the token"
    );

    // Disable the key in the token: the tenant is crypto-locked at once.
    s.update_attributes(tmk, &[Attribute::Decrypt(false), Attribute::Encrypt(false)])
        .unwrap();
    bob.clear_key_cache().unwrap();
    let e = bob.room_keys(&room, &[0]).await.unwrap_err();
    assert_eq!(e.code(), Some("crypto_locked"), "{e}");
    assert!(e.to_string().contains("crypto-locked"), "{e}");
    let r = cloister_tls::http_client()
        .get(format!("{}/readyz", w.stack.km_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503, "not ready while locked");
    let st = w.admin.admin_lock_status().await.unwrap();
    assert!(st.locked && st.provider == "pkcs11", "{st:?}");
    assert!(st.reason.is_some_and(|r| !r.contains(PIN)));

    // Enable it again: service resumes, nothing lost.
    s.update_attributes(tmk, &[Attribute::Decrypt(true), Attribute::Encrypt(true)])
        .unwrap();
    let st = w.admin.admin_lock_status().await.unwrap();
    assert!(!st.locked, "{st:?}");
    assert_eq!(st.lease_secs, cloister_km::DEFAULT_LEASE_SECS);
    let got = bob.read(&room, 10, None).await.unwrap();
    assert_eq!(got.len(), 1);
    alice.send_text(&room, "after the lock").await.unwrap();
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_generations_are_token_keys_and_destroyed_ones_are_gone() {
    use cloister_km::provider::{KeyProvider, Pkcs11KeyProvider, ProviderError};
    let label = unique("gen");
    let p = Pkcs11KeyProvider::create(&config(&label)).unwrap();
    assert!(
        matches!(
            Pkcs11KeyProvider::create(&config(&label)),
            Err(ProviderError::Exists(_))
        ),
        "a second create never replaces a master key"
    );
    let w = p.wrap(b"aad", b"a signing key").unwrap();
    assert_eq!(p.unwrap(b"aad", &w).unwrap().expose(), b"a signing key");
    assert!(p.unwrap(b"other aad", &w).is_err(), "bound to its context");
    let old = p.wrap_destroyable(b"e", b"epoch key").unwrap();
    let g = p.rotate().unwrap();
    assert_eq!(g, 2);
    p.destroy_before(g).unwrap();
    assert!(matches!(
        p.unwrap_destroyable(b"e", &old),
        Err(ProviderError::Destroyed(1))
    ));
    // reopened (a restart): the same generations, from the token
    drop(p);
    let p = Pkcs11KeyProvider::open(&config(&label)).unwrap();
    assert_eq!(p.generation(), 2);
    assert_eq!(p.generations(), 1);
    assert_eq!(p.unwrap(b"aad", &w).unwrap().expose(), b"a signing key");
    // an unknown token or key is refused with the reason (a wrong PIN is
    // checked in a process of its own below: a token's login is shared by
    // the whole process)
    let mut bad = config(&label);
    bad.token = "no-such-token".into();
    let e = Pkcs11KeyProvider::open(&bad).err().unwrap().to_string();
    assert!(e.contains("no token labelled"), "{e}");
    let e = Pkcs11KeyProvider::open(&config("no-such-key"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("crypto-locked"), "{e}");
}

#[test]
fn km_init_and_serve_say_where_the_key_is_and_never_take_the_pin_as_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let km_dir = dir.path().join("km");
    let label = unique("cli");
    let init = json(
        cmd(None)
            .args(["--json", "km", "init", "--tenant", "acme", "--data-dir"])
            .arg(&km_dir)
            .args(["--pkcs11-module", MODULE, "--pkcs11-token-label", token()])
            .args(["--pkcs11-key-label", &label, "--pkcs11-pin-file"])
            .arg(&pin_file)
            .output()
            .unwrap(),
    );
    assert_eq!(init["key_provider"], "pkcs11");
    let record = std::fs::read_to_string(km_dir.join("provider.json")).unwrap();
    assert!(record.contains(&label) && !record.contains(PIN), "{record}");
    assert!(!km_dir.join("tmk.sealed").exists());
    // serve: the PIN from the environment; the provider is stated
    let mut c = cmd(None);
    c.env("CLOISTER_PKCS11_PIN", PIN)
        .env_remove("CLOISTER_KM_PASSPHRASE")
        .args(["km", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&km_dir);
    let mut child = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let _p = Procs(vec![child]);
    let mut seen = Vec::new();
    let line = lines
        .map_while(Result::ok)
        .find(|l| {
            seen.push(l.clone());
            l.contains("listening on")
        })
        .unwrap_or_else(|| panic!("km serve stopped: {seen:?}"));
    assert!(
        line.contains("key provider: pkcs11") && line.contains(&label) && !line.contains(PIN),
        "{line}"
    );
    // without a PIN: a clear refusal
    let out = cmd(None)
        .env_remove("CLOISTER_PKCS11_PIN")
        .args(["km", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&km_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no PKCS#11 PIN"),
        "{err}"
    );
    // a wrong PIN: refused at start, the PIN never printed
    let out = cmd(None)
        .env("CLOISTER_PKCS11_PIN", "wrong-pin-0000")
        .args(["km", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&km_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("login") && !err.contains("wrong-pin-0000"),
        "{err}"
    );
    // a PIN is never a flag
    let out = cmd(None)
        .args(["km", "serve", "--pkcs11-pin", PIN])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// From the lock on, a device that holds a key keeps reading only until
/// its lease ends: the lease bounds how long a lock takes to reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_reaches_a_device_holding_keys_when_its_lease_ends() {
    let label = unique("lease");
    let mut o = opts();
    o.km_custody = Some(Custody::Pkcs11(config(&label)));
    o.km_config.lease_secs = 2;
    let w = World::with(o).await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "before the lock").await.unwrap();
    bob.read(&room, 10, None).await.unwrap();
    let s = admin_session();
    let tmk = key_handle(&s, &label);
    s.update_attributes(tmk, &[Attribute::Decrypt(false), Attribute::Encrypt(false)])
        .unwrap();
    let locked = std::time::Instant::now();
    // within the lease: the cached key still reads
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 1);
    // then no longer
    let mut last_readable = locked.elapsed();
    loop {
        match bob.read(&room, 10, None).await {
            Ok(_) => last_readable = locked.elapsed(),
            Err(e) => {
                assert_eq!(e.code(), Some("crypto_locked"), "{e}");
                break;
            }
        }
        assert!(locked.elapsed().as_secs() < 10, "the lease never ended");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // (a measurement, not an assertion: docs/benchmarks.md)
    eprintln!("lock to last readable message: {last_readable:?} (lease 2 s)");
    s.update_attributes(tmk, &[Attribute::Decrypt(true), Attribute::Encrypt(true)])
        .unwrap();
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 1);
}
