//! Rotating the tenant's master key: every stored key re-wrapped under a
//! new master key while the KM serves, the old key retired at the end, and
//! a KM killed in the middle of it goes on after a restart with no key lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_cli::custody::Custody;
use cloister_proto::room::RoomSettings;
use common::procs::{Procs, cmd, ok, spawn_service};
use common::softhsm::*;
use common::*;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use std::io::BufRead;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_key_rotation_runs_online_and_keeps_every_key() {
    let w = World::new().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "before the rotation").await.unwrap();
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 1);
    let km = &w.stack.km;
    km.seed_index_keys(0, 2_500).await.unwrap();
    let (n0, d0) = km.digest_keys().await.unwrap();
    assert!(n0 > 2_500, "{n0}");

    // Only an admin rotates; a step's size is bounded.
    let e = bob.admin_rotate_tmk(100).await.unwrap_err();
    assert_eq!(e.code(), Some("not_admin"), "{e}");
    for bad in [0, 10_001] {
        let e = w.admin.admin_rotate_tmk(bad).await.unwrap_err();
        assert_eq!(e.code(), Some("bad_batch"), "{e}");
    }
    assert_eq!(km.tmk_versions(), vec![1], "a refused step starts nothing");

    let first = w.admin.admin_rotate_tmk(1_000).await.unwrap();
    assert_eq!((first.from, first.to), (1, 2));
    assert_eq!(first.rewrapped, 1_000);
    assert_eq!(first.remaining, n0 - 1_000);
    assert!(!first.finished);
    assert_eq!(km.tmk_versions(), vec![1, 2]);
    // lock-status tells the admin a rotation is unfinished
    let st = w.admin.admin_lock_status().await.unwrap();
    assert!(!st.locked && st.tmk_versions == vec![1, 2], "{st:?}");

    // Mid-rotation the tenant works: keys are released (the room's key is
    // under one master key or the other), and new messages flow.
    bob.clear_key_cache().unwrap();
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 1);
    alice.send_text(&room, "during the rotation").await.unwrap();
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 2);

    let mut steps = 1;
    let last = loop {
        let s = w.admin.admin_rotate_tmk(1_000).await.unwrap();
        steps += 1;
        assert!(steps < 10, "the rotation does not end: {s:?}");
        if s.finished {
            break s;
        }
    };
    assert_eq!(last.remaining, 0);
    assert_eq!(km.tmk_versions(), vec![2], "the old master key is retired");
    assert_eq!(
        w.admin.admin_lock_status().await.unwrap().tmk_versions,
        vec![2]
    );
    assert_eq!(
        km.digest_keys().await.unwrap(),
        (n0, d0),
        "every key is there, with the same value"
    );
    bob.clear_key_cache().unwrap();
    let got = bob.read(&room, 10, None).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.is_ok()), "{got:?}");

    // The audit log has the start and the end, with the count.
    let entries = w
        .admin
        .audit_list(0, 1_000, Some("key_rotation".into()), None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.1.event)
        .collect::<Vec<_>>();
    assert_eq!(entries.len(), 2, "{entries:?}");
    match &entries[1] {
        cloister_log::AuditEvent::KeyRotation {
            key,
            step,
            from,
            to,
            count,
        } => {
            assert_eq!((key.as_str(), step.as_str()), ("master_key", "finished"));
            assert_eq!((from.as_str(), to.as_str()), ("v1", "v2"));
            assert_eq!(*count, n0);
        }
        e => panic!("{e:?}"),
    }

    // And again: v2 to v3 in one step.
    let s = w.admin.admin_rotate_tmk(10_000).await.unwrap();
    assert!(s.finished && (s.from, s.to) == (2, 3), "{s:?}");
    assert_eq!(km.digest_keys().await.unwrap(), (n0, d0));
}

/// The KM is killed while an admin's `rotate master-key` runs; after a
/// restart the same command finishes the rotation, and every key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_km_killed_mid_rotation_resumes_and_loses_no_key() {
    const KEYS: u32 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let km_dir = dir.path().join("km");
    let label = unique("rotate");
    let custody = Custody::Pkcs11(config(&label));
    let (km, code) = cloister_cli::open_km_with(
        &km_dir,
        None,
        Some(&"acme".parse().unwrap()),
        &custody,
        cloister_crypto::passphrase::Cost::TEST,
        cloister_km::KmConfig::default(),
    )
    .await
    .unwrap();
    km.seed_index_keys(0, KEYS).await.unwrap();
    let (n0, d0) = km.digest_keys().await.unwrap();
    drop(km);

    let km_serve = |listen: &str| {
        let mut c = cmd(None);
        c.env("CLOISTER_PKCS11_PIN", PIN)
            .env_remove("CLOISTER_KM_PASSPHRASE")
            .args(["km", "serve", "--listen", listen, "--data-dir"])
            .arg(&km_dir);
        spawn_service(c)
    };
    let (mut km_child, km_url) = km_serve("127.0.0.1:0");
    let km_addr = km_url.rsplit("//").next().unwrap().to_owned();
    let mut server = cmd(None);
    server
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("srv"));
    let (server_child, server_url) = spawn_service(server);
    let _p = Procs(vec![server_child]);
    ok(cmd(None)
        .args(["admin", "register-tenant", "--server", &server_url])
        .args(["--km", &km_url, "--operator-token-file"])
        .arg(dir.path().join("srv/operator.token"))
        .output()
        .unwrap());
    let admin = dir.path().join("admin");
    ok(cmd(Some(&admin))
        .args(["enrol", "--server", &server_url, "--km", &km_url])
        .args(["--user", "admin@acme", "--code", code.as_deref().unwrap()])
        .output()
        .unwrap());

    // Small steps; the KM dies once a tenth of the keys has moved.
    let mut rotate = cmd(Some(&admin))
        .args(["admin", "rotate", "master-key", "--batch", "250"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let progress = std::io::BufReader::new(rotate.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in progress.lines().map_while(Result::ok) {
        let done = line
            .split(": ")
            .nth(1)
            .and_then(|p| p.split('/').next())
            .and_then(|d| d.parse::<u32>().ok());
        seen.push(line);
        if done.is_some_and(|d| d >= KEYS / 10) {
            km_child.kill().unwrap();
            km_child.wait().unwrap();
            break;
        }
    }
    let out = rotate.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the rotation outlived its KM: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("master key v1 -> v2")),
        "{seen:?}"
    );

    // Both master keys are in the token (the old one until the end).
    let s = admin_session();
    key_handle(&s, &label);
    key_handle(&s, &format!("{label}-v2"));

    // Restarted (same address: the device knows it), the same command
    // finishes the job.
    let (km_child, _) = km_serve(&km_addr);
    let _k = Procs(vec![km_child]);
    let done = ok(cmd(Some(&admin))
        .args(["admin", "rotate", "master-key"])
        .output()
        .unwrap());
    assert!(done.contains("master key rotated: v1 -> v2"), "{done}");
    drop(_k);

    // The old master key is gone from the token, the new one is sensitive
    // and never leaves it, and every key opens with its old value.
    let old = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap();
    assert!(old.is_empty(), "the old master key was destroyed");
    let new = key_handle(&s, &format!("{label}-v2"));
    let attrs = s
        .get_attributes(new, &[AttributeType::Sensitive, AttributeType::Extractable])
        .unwrap();
    assert!(
        attrs
            .iter()
            .any(|a| matches!(a, Attribute::Sensitive(true))),
        "{attrs:?}"
    );
    assert!(
        attrs
            .iter()
            .any(|a| matches!(a, Attribute::Extractable(false))),
        "{attrs:?}"
    );
    let (km, _) = cloister_cli::open_km_with(
        &km_dir,
        None,
        None,
        &custody,
        cloister_crypto::passphrase::Cost::TEST,
        cloister_km::KmConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(km.tmk_versions(), vec![2]);
    assert_eq!(km.digest_keys().await.unwrap(), (n0, d0));
}

/// An emergency rotation of one room's key: a new epoch now, signed by the
/// KM into the room's log, for the room's owners and the firm's staff only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_key_rotated_in_an_emergency_starts_a_new_epoch_now() {
    let w = World::new().await;
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "under the old key").await.unwrap();
    let e0 = bob.read(&room, 10, None).await.unwrap()[0]
        .as_ref()
        .unwrap()
        .epoch;

    // bob is a member, not an owner; carol is not in the room
    for (who, code) in [(&bob, "not_allowed"), (&carol, "not_allowed")] {
        let e = who.room_rekey(&room, "suspected leak").await.unwrap_err();
        assert_eq!(e.code(), Some(code), "{e}");
    }
    let e = alice.room_rekey(&room, "  ").await.unwrap_err();
    assert_eq!(e.code(), Some("reason_required"), "{e}");
    let e = w
        .admin
        .room_rekey(&cloister_proto::RoomId([7; 16]), "no such room")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unknown_room"), "{e}");

    // the owner rotates; then an admin (who is not in the room) again
    let r = alice.room_rekey(&room, "laptop stolen").await.unwrap();
    assert_eq!(r.epoch, e0 + 1);
    alice.send_text(&room, "under the new key").await.unwrap();
    let r = w
        .admin
        .room_rekey(&room, "key-management drill")
        .await
        .unwrap();
    assert_eq!(r.epoch, e0 + 2);
    bob.send_text(&room, "after the drill").await.unwrap();

    bob.clear_key_cache().unwrap();
    let got = bob.read(&room, 10, None).await.unwrap();
    let texts: Vec<(String, u64)> = got
        .into_iter()
        .map(|m| {
            let m = m.unwrap();
            match m.content {
                cloister_proto::server::Content::Text { text } => (text, m.epoch),
                c => panic!("{c:?}"),
            }
        })
        .collect();
    assert_eq!(
        texts,
        // each message under the epoch current when it was sent
        [
            ("under the old key".to_owned(), e0),
            ("under the new key".to_owned(), e0 + 1),
            ("after the drill".to_owned(), e0 + 2)
        ]
    );
    let audit = w
        .admin
        .audit_list(0, 100, Some("room_control".into()), Some(room), None)
        .await
        .unwrap();
    let rekeys: Vec<_> = audit
        .iter()
        .filter_map(|(_, r, _)| match &r.event {
            cloister_log::AuditEvent::RoomControl {
                action, by, reason, ..
            } if action == "rekey" => Some((by.clone().unwrap(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(rekeys.len(), 2, "{rekeys:?}");
    assert_eq!(rekeys[0].0, *alice.user());
    assert_eq!(rekeys[0].1, "laptop stolen");
}

/// The audit log's key rotates: the log records the hand-over in a
/// checkpoint both keys sign; a device that pinned the old key and the
/// witnesses follow it; old checkpoints stay verifiable under the old key;
/// a KM stopped between the hand-over and its bookkeeping finishes it at
/// start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_key_rotates_and_devices_and_witnesses_follow() {
    let (w1, u1, _d1) = start_witness("witness.acme-vault/w1").await;
    let (w2, u2, _d2) = start_witness("witness.operator/w2").await;
    let with_witnesses = || {
        let mut o = opts();
        o.km_config.witnesses = vec![u1.clone(), u2.clone()];
        o
    };
    let w = World::with(with_witnesses()).await;
    let old_key = w.stack.km.info().log_key;
    for wit in [&w1, &w2] {
        wit.follow(&old_key).await.unwrap();
    }
    let origin = cloister_log::NoteVerifier::parse(&old_key).unwrap().name;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    alice.set_witness_policy(&[w1.key(), w2.key()], 2).unwrap();
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "before").await.unwrap();
    let (before, before_note) = alice.audit_checkpoint().await.unwrap();

    let e = bob.admin_rotate_log_key().await.unwrap_err();
    assert_eq!(e.code(), Some("not_admin"), "{e}");
    let kms_db = w.dir.path().join("km/km.db");
    let old_wrapped = meta(&kms_db, "log_signer_wrapped@tmk").await;

    let h = w.admin.admin_rotate_log_key().await.unwrap();
    assert_eq!(h.from, old_key);
    assert_ne!(h.to, old_key);
    assert_eq!(
        w.stack.km.info().log_key,
        h.to,
        "new devices pin the new key"
    );
    let old = cloister_log::NoteVerifier::parse(&h.from).unwrap();
    let new = cloister_log::NoteVerifier::parse(&h.to).unwrap();
    old.verify_checkpoint(&h.checkpoint).unwrap();
    new.verify_checkpoint(&h.checkpoint).unwrap();

    // alice pinned the old key: she learns the new one and goes on, with
    // both witnesses cosigning under it
    bob.clear_key_cache().unwrap();
    bob.read(&room, 10, None).await.unwrap();
    let (after, note) = alice.audit_checkpoint().await.unwrap();
    assert!(after.size > before.size);
    assert_eq!(alice.log_keys(), vec![h.from.clone(), h.to.clone()]);
    assert_eq!(note.matches('\u{2014}').count(), 3, "{note}");
    assert!(
        old.verify_checkpoint(&note).is_err(),
        "the old key signs no more"
    );
    new.verify_checkpoint(&note).unwrap();
    old.verify_checkpoint(&before_note)
        .expect("a checkpoint from before stays verifiable under the old key");
    for wit in [&w1, &w2] {
        assert_eq!(wit.cosigned_size(&origin).await, Some(after.size));
    }
    // the hand-over is an entry of the log itself
    let entries = w
        .admin
        .audit_list(0, 1_000, Some("key_rotation".into()), None, None)
        .await
        .unwrap();
    assert!(entries.iter().any(|(i, r, _)| *i == h.index
        && matches!(&r.event, cloister_log::AuditEvent::KeyRotation { key, from, to, .. }
            if key == "audit_log" && *from == h.from && *to == h.to)));

    // A stop after the hand-over was published but before the KM switched
    // keys (the new key only in `log_signer_next`): the KM finishes it at
    // start, and the published hand-over still carries both signatures.
    let World {
        dir, stack, admin, ..
    } = w;
    let (k, s) = (stack.km_addr, stack.server_addr);
    stack.stop().await;
    let new_wrapped = meta(&kms_db, "log_signer_wrapped@tmk").await;
    set_meta(&kms_db, "log_signer_next@tmk", &new_wrapped).await;
    set_meta(&kms_db, "log_signer_wrapped@tmk", &old_wrapped).await;
    let mut o = with_witnesses();
    o.km_addr = k;
    o.server_addr = s;
    let stack = cloister_cli::Stack::start(dir.path(), o).await.unwrap();
    assert_eq!(stack.km.info().log_key, h.to);
    let keys: cloister_proto::km::AuditKeys = admin
        .km_request(cloister_proto::km::KmOp::AuditKeys)
        .await
        .unwrap();
    assert_eq!(keys.current, h.to);
    assert_eq!(keys.handovers.len(), 1);
    old.verify_checkpoint(&keys.handovers[0].checkpoint)
        .expect("the old key signed the published hand-over");
    new.verify_checkpoint(&keys.handovers[0].checkpoint)
        .unwrap();
    let (again, _) = alice.audit_checkpoint().await.unwrap();
    assert!(again.size >= after.size);

    // A stop before the entry reached the log (a next key the log never
    // named): the KM drops it and keeps its key.
    stack.stop().await;
    set_meta(&kms_db, "log_signer_next@tmk", &old_wrapped).await;
    let mut o = with_witnesses();
    o.km_addr = k;
    o.server_addr = s;
    let stack = cloister_cli::Stack::start(dir.path(), o).await.unwrap();
    assert_eq!(stack.km.info().log_key, h.to);
    assert!(meta(&kms_db, "log_signer_next@tmk").await.is_empty());
    alice.audit_checkpoint().await.unwrap();
    stack.stop().await;
}

async fn meta(db: &std::path::Path, key: &str) -> Vec<u8> {
    let pool = cloister_store::open_sqlite(db, 1).await.unwrap();
    let v: Vec<u8> = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
        .bind(key)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    v
}

async fn set_meta(db: &std::path::Path, key: &str, value: &[u8]) {
    let pool = cloister_store::open_sqlite(db, 1).await.unwrap();
    sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// A witness takes a new log key only from a checkpoint the key it follows
/// and the new key both signed, along the history it cosigned.
#[tokio::test]
async fn a_witness_follows_a_new_log_key_only_when_the_old_one_vouches() {
    use cloister_crypto::KmSigner;
    use cloister_log::note::verifier_key;
    use cloister_log::witness::add_checkpoint_body;
    use cloister_log::{Checkpoint, NoteSigner, Tree, leaf_hash};
    let (w, _, _d) = start_witness("witness.test/w").await;
    let origin = "cloister-audit/acme";
    let (a, b, c) = (
        KmSigner::generate().unwrap(),
        KmSigner::generate().unwrap(),
        KmSigner::generate().unwrap(),
    );
    let (ka, kb) = (
        verifier_key(origin, &a.public()),
        verifier_key(origin, &b.public()),
    );
    w.follow(&ka).await.unwrap();
    let mut t = Tree::new();
    let note = |t: &Tree, keys: &[&KmSigner]| {
        let cp = Checkpoint {
            origin: origin.into(),
            size: t.len(),
            root: t.root(t.len()).unwrap(),
        };
        let mut out = String::new();
        for k in keys {
            let n = NoteSigner {
                name: origin,
                key: k,
            }
            .sign(&cp.body())
            .unwrap();
            if out.is_empty() {
                out = n;
            } else {
                out.push_str(cloister_log::note::split_note(&n).unwrap().1);
            }
        }
        out
    };
    for i in 0..2 {
        t.push(leaf_hash(format!("e{i}").as_bytes()));
    }
    w.add_checkpoint(&add_checkpoint_body(0, &[], &note(&t, &[&a])))
        .await
        .unwrap();
    t.push(leaf_hash(b"the hand-over"));
    let proof = t.consistency_proof(2, 3).unwrap();
    let hand = |n: &str, key: &str| format!("{key}\n{}", add_checkpoint_body(2, &proof, n));
    for (signed_by, claimed) in [
        (vec![&a], &kb),     // the new key did not sign
        (vec![&b], &kb),     // the followed key did not sign
        (vec![&a, &c], &kb), // another key signed, not the one claimed
        (vec![&a, &b], &ka), // "hand over" to the key it follows: no
    ] {
        let e = w.hand_over(&hand(&note(&t, &signed_by), claimed)).await;
        assert!(
            e.is_err(),
            "accepted a hand-over signed by {}",
            signed_by.len()
        );
    }
    assert_eq!(w.cosigned_size(origin).await, Some(2), "nothing moved");
    w.add_checkpoint(&add_checkpoint_body(2, &proof, &note(&t, &[&a])))
        .await
        .unwrap();
    // a dual-signed checkpoint off the cosigned history is refused too
    let mut fork = Tree::new();
    for i in 0..3 {
        fork.push(leaf_hash(format!("f{i}").as_bytes()));
    }
    let e = w
        .hand_over(&format!(
            "{kb}\n{}",
            add_checkpoint_body(3, &[], &note(&fork, &[&a, &b]))
        ))
        .await;
    assert!(e.is_err(), "a fork was accepted");

    t.push(leaf_hash(b"after"));
    let p = t.consistency_proof(3, 4).unwrap();
    // still following A: a checkpoint by B alone is refused...
    assert!(
        w.add_checkpoint(&add_checkpoint_body(3, &p, &note(&t, &[&b])))
            .await
            .is_err()
    );
    // ...until A hands over to B (at size 4, both signing)
    w.hand_over(&format!(
        "{kb}\n{}",
        add_checkpoint_body(3, &p, &note(&t, &[&a, &b]))
    ))
    .await
    .unwrap();
    t.push(leaf_hash(b"later"));
    let p = t.consistency_proof(4, 5).unwrap();
    assert!(
        w.add_checkpoint(&add_checkpoint_body(4, &p, &note(&t, &[&a])))
            .await
            .is_err(),
        "the old key alone no longer counts"
    );
    w.add_checkpoint(&add_checkpoint_body(4, &p, &note(&t, &[&b])))
        .await
        .unwrap();
    assert_eq!(w.cosigned_size(origin).await, Some(5));
}
