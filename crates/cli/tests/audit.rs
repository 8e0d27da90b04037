//! The audit transparency log: every security event is recorded, proofs
//! verify, and tampering (altered, deleted, reordered entries, rollback,
//! fork) is detected by the KM, by clients and by the offline verifier.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_cli::Stack;
use cloister_client::ClientError;
use cloister_proto::room::RoomSettings;
use common::*;
use std::collections::BTreeSet;

async fn scenario(
    w: &World,
) -> (
    cloister_client::Client,
    cloister_client::Client,
    cloister_client::Client,
    cloister_proto::RoomId,
) {
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let room = alice
        .create_room(
            RoomSettings {
                name: "desk".into(),
                ..Default::default()
            },
            &[bob.user().clone(), carol.user().clone()],
        )
        .await
        .unwrap();
    alice
        .send_text(&room, "AUDIT-SECRET message text")
        .await
        .unwrap();
    bob.read(&room, 10, None).await.unwrap();
    carol.read(&room, 10, None).await.unwrap();
    alice.remove_member(&room, carol.user()).await.unwrap();
    carol.clear_key_cache().unwrap();
    assert!(carol.room_keys(&room, &[1]).await.is_err());
    (alice, bob, carol, room)
}

#[tokio::test]
async fn every_security_event_is_logged_without_secrets() {
    let w = World::new().await;
    let (alice, _bob, carol, room) = scenario(&w).await;
    w.admin.admin_revoke_device(&carol.device()).await.unwrap();
    // straight to the KM (the server already refuses carol)
    let r: Result<serde_json::Value, _> = carol
        .km_request(cloister_proto::km::KmOp::RoomKeys {
            room,
            epochs: vec![0],
            log_from: 0,
            log: vec![],
            certs: Vec::new(),
        })
        .await;
    assert_eq!(r.unwrap_err().code(), Some("device_revoked"));
    w.admin.admin_disable_user(alice.user()).await.unwrap();

    let rows = w.admin.audit_list(0, 1000, None, None, None).await.unwrap();
    let kinds: BTreeSet<&str> = rows.iter().map(|(_, r, _)| r.event.kind()).collect();
    for k in cloister_log::AuditEvent::KINDS {
        // (compliance events are covered by tests/compliance.rs, controls
        // by tests/controls.rs and tests/scim.rs, trust by tests/federation.rs,
        // the KM-to-KM key exchange by tests/cross_firm.rs, burned codes
        // by tests/limits.rs, restores by tests/backup.rs)
        if ![
            "enrolment_code_burned",
            "log_restored",
            "key_exchange",
            "trust_added",
            "trust_removed",
            "connection",
            "directory_changed",
            "user_enabled",
            "entitlements_changed",
            "barrier_added",
            "barrier_disabled",
            "scim_token_issued",
            "scim_token_revoked",
            "control_refused",
            "room_control",
            "dlp_changed",
            "mls_policy_set",
            "membership_rejected",
            "escrow_initialised",
            "index_keys_released",
            "vault_registered",
            "case_opened",
            "case_approved",
            "case_step",
            "retention_set",
            "key_shredded",
            "envelope_ingested",
            "envelope_deleted",
            // tests/escrow_rotation.rs
            "envelope_resealed",
            // tests/rotation.rs
            "key_rotation",
            // tests/devices.rs
            "device_renewed",
            // tests/attestation.rs
            "attestation_policy_set",
        ]
        .contains(&k)
        {
            assert!(kinds.contains(k), "missing {k}: {kinds:?}");
        }
    }
    // indexes are contiguous from 0
    assert!(
        rows.iter()
            .enumerate()
            .all(|(i, (idx, _, _))| *idx == i as u64)
    );
    // the refusal of the revoked device says why
    assert!(rows.iter().any(|(_, r, _)| matches!(&r.event,
        cloister_log::AuditEvent::KeyRefused { reason, device, .. } if reason == "device_revoked" && *device == carol.device())));
    // no message content, no enrolment code, no key material
    for (_, _, data) in &rows {
        let s = String::from_utf8_lossy(data);
        assert!(!s.contains("AUDIT-SECRET"));
    }
    // filters
    let rel = w
        .admin
        .audit_list(0, 1000, Some("key_released".into()), Some(room), None)
        .await
        .unwrap();
    assert!(!rel.is_empty() && rel.iter().all(|(_, r, _)| r.event.kind() == "key_released"));
    let e = w
        .admin
        .audit_list(0, 10, Some("nonsense".into()), None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_kind"));
    // only admins list the log
    let bob2 = w.user("bob2").await;
    assert_eq!(
        bob2.audit_list(0, 10, None, None, None)
            .await
            .unwrap_err()
            .code(),
        Some("not_admin")
    );
}

#[tokio::test]
async fn proofs_verify_and_who_has_keys() {
    let w = World::new().await;
    let (alice, bob, carol, room) = scenario(&w).await;
    let (cp1, _) = alice.audit_checkpoint().await.unwrap();
    let (p, _) = w.admin.audit_prove(3).await.unwrap();
    assert_eq!(p.index, 3);
    // more activity; the client checks consistency from what it saw
    bob.send_text(&room, "more").await.unwrap();
    let (cp2, _) = alice.audit_checkpoint().await.unwrap();
    assert!(cp2.size >= cp1.size);
    let (c, _) = alice.audit_consistency(cp1.size).await.unwrap();
    let proof: Vec<[u8; 32]> = c.proof.iter().map(|h| h.0).collect();
    cloister_log::verify_consistency(
        cp1.size,
        c.new,
        &cp1.root,
        &alice.audit_checkpoint().await.unwrap().0.root,
        &proof,
    )
    .unwrap();

    let rel = bob.who_has_keys(&room).await.unwrap();
    let users: BTreeSet<String> = rel.iter().map(|r| r.user.to_string()).collect();
    assert!(
        users.contains("alice@acme") && users.contains("bob@acme") && users.contains("carol@acme"),
        "{users:?}"
    );
    assert!(
        rel.iter()
            .any(|r| r.user == *carol.user() && r.epochs == vec![0])
    );
    assert!(
        !rel.iter()
            .any(|r| r.user == *carol.user() && r.epochs.contains(&1)),
        "carol never got epoch 1"
    );
    // a stranger may not ask
    let mallory = w.user("mallory").await;
    assert_eq!(
        mallory.who_has_keys(&room).await.unwrap_err().code(),
        Some("not_entitled")
    );
    // a proof for altered data does not verify
    let (mut p, note) = w.admin.audit_prove(5).await.unwrap();
    p.data.0[3] ^= 1;
    let cp = cloister_log::NoteVerifier::parse(&w.stack.km.info().log_key)
        .unwrap()
        .verify_checkpoint(&note)
        .unwrap();
    assert!(cloister_client::check_inclusion(&p, &cp).is_err());
}

fn km_db(w: &std::path::Path) -> std::path::PathBuf {
    w.join("km/km.db")
}

async fn sql(db: &std::path::Path, stmts: &[&'static str]) {
    let pool = cloister_store::open_sqlite(db, 1).await.unwrap();
    for s in stmts {
        sqlx_exec(&pool, s).await;
    }
    pool.close().await;
}

async fn sqlx_exec(pool: &sqlx::SqlitePool, s: &'static str) {
    sqlx::query(s).execute(pool).await.unwrap();
}

async fn restart(
    w: World,
    tamper: &[&'static str],
) -> (
    tempfile::TempDir,
    Result<Stack, String>,
    cloister_client::Client,
) {
    restart_with(w, tamper, opts()).await
}

async fn restart_with(
    w: World,
    tamper: &[&'static str],
    mut o: cloister_cli::StackOptions,
) -> (
    tempfile::TempDir,
    Result<Stack, String>,
    cloister_client::Client,
) {
    let World {
        dir, stack, admin, ..
    } = w;
    let (k, s) = (stack.km_addr, stack.server_addr);
    stack.stop().await;
    sql(&km_db(dir.path()), tamper).await;
    o.km_addr = k;
    o.server_addr = s;
    let st = Stack::start(dir.path(), o).await.map_err(|e| e.to_string());
    (dir, st, admin)
}

#[tokio::test]
async fn the_km_refuses_to_start_on_an_altered_deleted_or_reordered_log() {
    let cases: [&[&'static str]; 3] = [
        &[
            "UPDATE audit_log SET data = CAST(REPLACE(CAST(data AS TEXT), 'alice', 'alicf') AS BLOB) WHERE idx = 3",
        ],
        &["DELETE FROM audit_log WHERE idx = 2"],
        &[
            "UPDATE audit_log SET idx = -1 WHERE idx = 4",
            "UPDATE audit_log SET idx = 4 WHERE idx = 5",
            "UPDATE audit_log SET idx = 5 WHERE idx = -1",
        ],
    ];
    for tamper in cases {
        let w = World::new().await;
        scenario(&w).await;
        w.admin.audit_checkpoint().await.unwrap(); // the KM signs and remembers a checkpoint
        let (_dir, st, _) = restart(w, tamper).await;
        let e = st
            .err()
            .unwrap_or_else(|| panic!("KM started on a tampered log ({tamper:?})"));
        assert!(e.contains("audit log"), "{tamper:?}: {e}");
    }
}

/// Roll the KM back to an older consistent state, as restoring an old
/// backup would: the entries after a stored checkpoint of at least 5, and
/// the checkpoints after it, are gone.
const RESTORE_OLD_BACKUP: &[&str] = &[
    "DELETE FROM audit_log WHERE idx >= (SELECT MIN(size) FROM audit_checkpoints WHERE size >= 5)",
    "DELETE FROM audit_checkpoints WHERE size > (SELECT MIN(size) FROM audit_checkpoints WHERE size >= 5)",
];

#[tokio::test]
async fn clients_detect_rollback_and_fork() {
    // Rollback: the KM is restored from an old backup.
    let w = World::new().await;
    let (alice, ..) = scenario(&w).await;
    let (seen, _) = alice.audit_checkpoint().await.unwrap();
    let (_dir, st, _) = restart(w, RESTORE_OLD_BACKUP).await;
    let st = st.unwrap();
    let e = alice.audit_checkpoint().await.unwrap_err();
    assert!(matches!(e, ClientError::Audit(_)), "{e}");
    assert!(e.to_string().contains("rolled back"), "{e}");
    assert!(seen.size > 5);
    st.stop().await;

    // Fork: the restored KM grows another history past what alice saw.
    let w = World::new().await;
    let (alice, ..) = scenario(&w).await;
    let (seen, _) = alice.audit_checkpoint().await.unwrap();
    let (_dir, st, admin) = restart(w, RESTORE_OLD_BACKUP).await;
    let st = st.unwrap();
    for i in 0..seen.size {
        admin
            .admin_add_user(&World::uid(&format!("fork{i}")), false)
            .await
            .unwrap();
    }
    let e = alice.audit_checkpoint().await.unwrap_err();
    assert!(matches!(e, ClientError::Audit(_)), "{e}");
    assert!(e.to_string().contains("forked"), "{e}");
    st.stop().await;
}

/// Every acknowledged record is under a signed checkpoint, even if nobody
/// asked for one: an edit made after the last one a client requested is
/// caught when the KM starts.
#[tokio::test]
async fn an_acknowledged_record_cannot_be_rewritten_even_without_a_requested_checkpoint() {
    let cases: [&[&'static str]; 2] = [
        // `user_added x2@acme` becomes `zz@acme`
        &[
            "UPDATE audit_log SET data = CAST(REPLACE(CAST(data AS TEXT), 'x2@acme', 'zz@acme') AS BLOB) WHERE kind = 'user_added'",
        ],
        // and the newest signed checkpoint cannot simply be dropped with the newest entry altered
        &[
            "UPDATE audit_log SET data = CAST(REPLACE(CAST(data AS TEXT), 'x2@acme', 'zz@acme') AS BLOB) WHERE kind = 'user_added'",
            "DELETE FROM audit_checkpoints WHERE size = (SELECT MAX(size) FROM audit_checkpoints)",
        ],
    ];
    for tamper in cases {
        let w = World::new().await;
        let (alice, ..) = scenario(&w).await;
        alice.audit_checkpoint().await.unwrap();
        // acknowledged after the last checkpoint anyone asked for
        w.admin
            .admin_add_user(&World::uid("x2"), false)
            .await
            .unwrap();
        let (_dir, st, _) = restart(w, tamper).await;
        let e = st
            .err()
            .unwrap_or_else(|| panic!("KM started on a rewritten log ({tamper:?})"));
        assert!(e.contains("audit log"), "{tamper:?}: {e}");
    }
}

#[tokio::test]
async fn offline_verifier_detects_tampering() {
    let w = World::new().await;
    let (alice, ..) = scenario(&w).await;
    let tmp = tempfile::tempdir().unwrap();
    let old_dir = tmp.path().join("old");
    let old_size = cloister_cli::audit::export(&w.admin, &old_dir)
        .await
        .unwrap();
    alice
        .send_text(&alice.im(&World::uid("bob")).await.unwrap(), "later")
        .await
        .unwrap();
    let dir = tmp.path().join("new");
    let size = cloister_cli::audit::export(&w.admin, &dir).await.unwrap();
    assert!(size > old_size);
    let key = std::fs::read_to_string(dir.join("log.key"))
        .unwrap()
        .trim()
        .to_owned();
    let (cons, _) = w.admin.audit_consistency(old_size).await.unwrap();
    let cons_file = tmp.path().join("cons.json");
    std::fs::write(&cons_file, serde_json::to_vec(&cons).unwrap()).unwrap();
    let (incl, _) = w.admin.audit_prove(2).await.unwrap();
    let incl_file = tmp.path().join("incl.json");
    std::fs::write(&incl_file, serde_json::to_vec(&incl).unwrap()).unwrap();

    let entries = dir.join("entries.jsonl");
    let checkpoint = dir.join("checkpoint.note");
    let previous = old_dir.join("checkpoint.note");
    let inclusion = vec![incl_file.clone()];
    let run = |entries: Option<&std::path::Path>,
               previous: Option<&std::path::Path>,
               checkpoint: &std::path::Path| {
        cloister_cli::audit::verify(&cloister_cli::audit::VerifyInput {
            key: &key,
            checkpoint,
            entries,
            previous,
            consistency: Some(&cons_file),
            inclusion: &inclusion,
        })
    };
    let ok = run(Some(&entries), Some(&previous), &checkpoint).unwrap();
    assert!(
        ok.iter().any(|l| l.contains("reproduce the signed root")),
        "{ok:?}"
    );

    let original = std::fs::read_to_string(&entries).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let write = |s: String| std::fs::write(&entries, s).unwrap();
    // altered
    let mut e5: cloister_cli::audit::ExportedEntry = serde_json::from_str(lines[5]).unwrap();
    e5.data.0[2] ^= 1;
    let mut v = lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    v[5] = serde_json::to_string(&e5).unwrap();
    write(v.join("\n"));
    assert!(
        run(Some(&entries), None, &checkpoint)
            .unwrap_err()
            .contains("TAMPERED")
    );
    // deleted
    let mut v: Vec<&str> = lines.clone();
    v.remove(4);
    write(v.join("\n"));
    assert!(
        run(Some(&entries), None, &checkpoint)
            .unwrap_err()
            .contains("TAMPERED")
    );
    // reordered (indexes kept in order, data swapped)
    let mut a: cloister_cli::audit::ExportedEntry = serde_json::from_str(lines[6]).unwrap();
    let mut b: cloister_cli::audit::ExportedEntry = serde_json::from_str(lines[7]).unwrap();
    std::mem::swap(&mut a.data, &mut b.data);
    let mut v = lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    v[6] = serde_json::to_string(&a).unwrap();
    v[7] = serde_json::to_string(&b).unwrap();
    write(v.join("\n"));
    assert!(
        run(Some(&entries), None, &checkpoint)
            .unwrap_err()
            .contains("TAMPERED")
    );
    write(original);
    // rollback: a checkpoint older than the one remembered
    assert!(
        run(None, Some(&checkpoint), &previous)
            .unwrap_err()
            .contains("ROLLBACK")
    );
    // a forged checkpoint (edited size) fails its signature
    let forged = tmp.path().join("forged.note");
    std::fs::write(
        &forged,
        std::fs::read_to_string(&checkpoint).unwrap().replacen(
            &format!("\n{size}\n"),
            &format!("\n{}\n", size + 1),
            1,
        ),
    )
    .unwrap();
    assert!(run(None, None, &forged).is_err());
}

/// A KM restored from an old backup grows a different history: the
/// witnesses, which cosigned the honest one, refuse to cosign it, so a
/// device requiring their quorum refuses the forked log even though it
/// never saw the honest one itself.
#[tokio::test]
async fn witnesses_refuse_a_split_view_and_so_do_clients_that_require_them() {
    let (w1, u1, _d1) = start_witness("witness.acme-vault/w1").await;
    let (w2, u2, _d2) = start_witness("witness.operator/w2").await;
    let mut o = opts();
    o.km_config.witnesses = vec![u1.clone(), u2.clone()];
    let w = World::with(o).await;
    let info = w.stack.km.info();
    for wit in [&w1, &w2] {
        wit.follow(&info.log_key).await.unwrap();
    }
    let origin = cloister_log::NoteVerifier::parse(&info.log_key)
        .unwrap()
        .name;
    let keys = vec![w1.key(), w2.key()];
    let (alice, ..) = scenario(&w).await;
    alice.set_witness_policy(&keys, 2).unwrap();
    let (honest, note) = alice.audit_checkpoint().await.unwrap();
    assert_eq!(note.matches('\u{2014}').count(), 3, "{note}");
    assert_eq!(w1.cosigned_size(&origin).await, Some(honest.size));
    assert_eq!(w2.cosigned_size(&origin).await, Some(honest.size));
    // a policy naming a witness that did not cosign is not met
    let (w3, _, _d3) = start_witness("witness.elsewhere/w3").await;
    alice
        .set_witness_policy(&[keys[0].clone(), w3.key()], 2)
        .unwrap();
    let e = alice.audit_checkpoint().await.unwrap_err();
    assert!(e.to_string().contains("1 of the 2"), "{e}");
    alice.set_witness_policy(&keys, 2).unwrap();
    // bad policies are refused up front
    assert!(alice.set_witness_policy(&keys, 3).is_err());
    assert!(alice.set_witness_policy(&["junk".into()], 1).is_err());

    // the KM is restored from an old backup and grows another history
    let mut o = opts();
    o.km_config.witnesses = vec![u1, u2];
    let (_dir, st, admin) = restart_with(w, RESTORE_OLD_BACKUP, o).await;
    let st = st.unwrap();
    for i in 0..honest.size {
        admin
            .admin_add_user(&World::uid(&format!("fork{i}")), false)
            .await
            .unwrap();
    }
    // a device that never saw the honest log, with the witness policy
    let http = cloister_tls::http_client();
    let enrol = |name: &'static str| {
        let (admin, http, st) = (&admin, http.clone(), &st);
        async move {
            let u = World::uid(name);
            let code = admin.admin_add_user(&u, false).await.unwrap().code;
            cloister_client::Client::enrol(
                http,
                &st.server_url,
                &st.km_url,
                &u,
                &code,
                cloister_client::Storage::Memory,
            )
            .await
            .unwrap()
        }
    };
    let carol = enrol("newcomer").await;
    carol.set_witness_policy(&keys, 2).unwrap();
    let e = carol.audit_checkpoint().await.unwrap_err();
    assert!(matches!(e, ClientError::Audit(_)), "{e}");
    assert!(e.to_string().contains("0 of the 2"), "{e}");
    // without the policy it would have believed the forked log
    let dave = enrol("trusting").await;
    let (forked, _) = dave.audit_checkpoint().await.unwrap();
    assert!(forked.size > honest.size);
    // alice, who saw the honest log, also detects the fork herself
    let e = alice.audit_checkpoint().await.unwrap_err();
    assert!(matches!(e, ClientError::Audit(_)), "{e}");
    // the witnesses still vouch for the honest history only
    assert_eq!(w1.cosigned_size(&origin).await, Some(honest.size));
    assert_eq!(w2.cosigned_size(&origin).await, Some(honest.size));
    st.stop().await;
}

/// The witness's HTTP edge speaks C2SP tlog-witness: status codes and the
/// `text/x.tlog.size` conflict body.
#[tokio::test]
async fn the_witness_http_interface() {
    let (wit, url, _d) = start_witness("witness.test/w").await;
    let w = World::new().await;
    let http = cloister_tls::http_client();
    let post = |body: String| http.post(format!("{url}/add-checkpoint")).body(body).send();
    let (_, note) = w.admin.audit_checkpoint().await.unwrap();
    // an unknown log: 404
    let r = post(format!("old 0\n\n{note}")).await.unwrap();
    assert_eq!(r.status(), 404);
    wit.follow(&w.stack.km.info().log_key).await.unwrap();
    // malformed: 400
    let r = post("old x\n\nnothing".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    // not signed by the log's key: 403
    let r = post(format!(
        "old 0\n\n{}",
        note.replace("cloister-audit", "cloister-audiu")
    ))
    .await
    .unwrap();
    assert!(r.status() == 403 || r.status() == 404, "{}", r.status());
    // first submission from 0: cosigned
    let r = post(format!("old 0\n\n{note}")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .starts_with("\u{2014} witness.test/w ")
    );
    // the log grows; a submission claiming old 0 gets the witness's size back
    w.admin
        .admin_add_user(&World::uid("grow"), false)
        .await
        .unwrap();
    let (cp2, note2) = w.admin.audit_checkpoint().await.unwrap();
    let r = post(format!("old 0\n\n{note2}")).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/x.tlog.size"
    );
    let size: u64 = r.text().await.unwrap().trim().parse().unwrap();
    // a wrong consistency proof: 422
    let bad = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let r = post(format!("old {size}\n{bad}\n\n{note2}")).await.unwrap();
    assert_eq!(r.status(), 422);
    // old above new: 400
    let r = post(format!("old {}\n\n{note2}", cp2.size + 1))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // an oversized body is refused without reading it all
    let r = post("old 0\n".repeat(20_000)).await.unwrap();
    assert_eq!(r.status(), 413);
}
