//! An emergency rotation of the escrow key: new shares now; what was
//! sealed to the old key stays openable by the old quorum until a case
//! approved by that quorum re-seals it; then the old generation retires.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::Client;
use cloister_crypto::signed;
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::km::Role::{Compliance, Custodian};
use cloister_proto::km::{CaseScope, KmOp, SignedBlob};
use cloister_proto::room::RoomSettings;
use cloister_proto::vault::{FetchResponse, SealedEnvelope, VaultOp};
use common::*;

async fn users(w: &World, names: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for n in names {
        out.push(w.user_with(n, &[Custodian]).await);
    }
    out
}

fn ids(cs: &[&Client]) -> Vec<cloister_proto::UserId> {
    cs.iter().map(|c| c.user().clone()).collect()
}

/// The escrow generations a custodian holds a share of.
async fn held(c: &Client) -> Vec<u32> {
    c.my_escrow_shares()
        .await
        .unwrap()
        .into_iter()
        .map(|(g, _, _)| g)
        .collect()
}

async fn export(officer: &Client, case: &str, dir: &std::path::Path) -> (u64, String) {
    let out = dir.join(case);
    let r = officer.case_export(case, &out, &|_, _| {}).await.unwrap();
    let text = std::fs::read_to_string(out.join("messages.jsonl")).unwrap_or_default();
    (r.summary.messages, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_escrow_key_rotates_and_old_envelopes_stay_openable_until_resealed() {
    let w = World::new().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let officer = w.user_with("officer", &[Compliance]).await;
    let old = users(&w, &["cust1", "cust2", "cust3"]).await;
    let new = users(&w, &["nova", "nash"]).await;
    let g1 = w
        .admin
        .admin_escrow_init(&ids(&[&old[0], &old[1], &old[2]]), 2)
        .await
        .unwrap();
    assert_eq!(g1.generation, 1);
    w.register_vault(true).await;
    for c in [&alice, &bob, &officer] {
        c.use_registered_vault().await.unwrap().unwrap();
    }
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "BEFORE one").await.unwrap();
    bob.send_text(&room, "BEFORE two").await.unwrap();

    // only an admin rotates, and a rotation passes the same checks as a split
    let e = alice
        .admin_escrow_rotate(&ids(&[&new[0], &new[1]]), 2, 0)
        .await
        .unwrap_err();
    assert!(
        e.code() == Some("not_admin") || e.to_string().contains("admin"),
        "{e}"
    );
    let e = w
        .admin
        .admin_escrow_rotate(&ids(&[&new[0], &alice]), 2, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_escrow"), "{e}");
    // the new key: cust1 stays a custodian, two new ones join
    let g2 = w
        .admin
        .admin_escrow_rotate(&ids(&[&old[0], &new[0], &new[1]]), 2, 0)
        .await
        .unwrap();
    assert_eq!(g2.generation, 2);
    assert_ne!(g2.public, g1.public);
    let live = bob.escrow_history().await.unwrap();
    assert_eq!(
        live.iter().map(|d| d.generation).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(bob.escrow_info().await.unwrap(), g2);
    // cust1 holds a share of each generation, cust2 of the old one only
    assert_eq!(held(&old[0]).await, [1, 2]);
    assert_eq!(held(&old[1]).await, [1]);
    assert_eq!(held(&new[0]).await, [2]);

    // the vault learns the new generation from the KM; a device still
    // sealing to the old one is refused and seals again to the new one
    w.stack.vault.pull_deny_list().await.unwrap();
    alice.send_text(&room, "AFTER three").await.unwrap();
    let raw = w.raw_with("olga", &[Compliance]).await;
    let stale = SealedEnvelope {
        generation: 1,
        ..sealed_of(&w, &raw, &room).await[0].clone()
    };
    let (status, body) = raw
        .vault(
            &w.stack.vault_url,
            &VaultOp::Capture {
                ts: cloister_proto::now_millis(),
                capture: cloister_proto::vault::Capture {
                    envelope: serde_json::to_vec(&stale).unwrap().into(),
                    period: 0,
                    tokens: vec![],
                    received: false,
                    header: Bytes(vec![]),
                    sig: Fixed([0; 64]),
                    sender_cert: raw.signed_cert.clone(),
                },
            },
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("stale_escrow")),
        "{body}"
    );
    let gens: Vec<u32> = sealed_of(&w, &raw, &room)
        .await
        .iter()
        .map(|s| s.generation)
        .collect();
    assert_eq!(gens, [1, 1, 2], "two before, one after the rotation");

    // the old generation cannot retire while envelopes are sealed to it
    let e = w.admin.admin_escrow_retire(1).await.unwrap_err();
    assert_eq!(e.code(), Some("envelopes_remain"), "{e}");
    assert!(e.to_string().contains("2 envelope(s)"), "{e}");
    let e = w.admin.admin_escrow_retire(2).await.unwrap_err();
    assert_eq!(e.code(), Some("newest_generation"), "{e}");

    // the old quorum still opens the old envelopes, and only those
    officer
        .case_open(
            "old-quorum",
            "before the rotation",
            today_scope(vec![], vec![room]),
            false,
        )
        .await
        .unwrap();
    old[1].case_approve("old-quorum").await.unwrap();
    old[2].case_approve("old-quorum").await.unwrap();
    let (n, text) = export(&officer, "old-quorum", w.dir.path()).await;
    assert_eq!(n, 2, "{text}");
    assert!(text.contains("BEFORE one") && !text.contains("AFTER three"));
    // the new quorum opens the new ones
    officer
        .case_open(
            "new-quorum",
            "after",
            today_scope(vec![], vec![room]),
            false,
        )
        .await
        .unwrap();
    new[0].case_approve("new-quorum").await.unwrap();
    new[1].case_approve("new-quorum").await.unwrap();
    let (n, text) = export(&officer, "new-quorum", w.dir.path()).await;
    assert_eq!(n, 1, "{text}");
    assert!(text.contains("AFTER three"));

    // re-seal under a case the old quorum approved: the new quorum's
    // case cannot (it opens no old envelope)
    let r = officer.case_reseal("new-quorum", &|_| {}).await.unwrap();
    assert_eq!((r.resealed, r.current, r.unopened), (0, 1, 2));
    // a re-seal case covers every room, but only generation 1's envelopes,
    // and only an older live generation
    let mut everything = today_scope(vec![], vec![]);
    everything.reseal = Some(2);
    let e = officer
        .case_open("reseal-x", "", everything.clone(), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_scope"), "{e}");
    everything.reseal = Some(1);
    officer
        .case_open("reseal-1", "re-seal generation 1", everything, false)
        .await
        .unwrap();
    old[0].case_approve("reseal-1").await.unwrap(); // releases both of cust1's shares
    old[2].case_approve("reseal-1").await.unwrap();
    let r = officer.case_reseal("reseal-1", &|_| {}).await.unwrap();
    assert_eq!((r.resealed, r.generation, r.unopened), (2, 2, 0));
    let again = officer.case_reseal("reseal-1", &|_| {}).await.unwrap();
    assert_eq!(
        (again.resealed, again.unopened),
        (0, 0),
        "a re-run finds it done"
    );
    // a re-seal case exports nothing
    let e = officer
        .case_export("reseal-1", &w.dir.path().join("x"), &|_, _| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exports nothing"), "{e}");

    // now the new quorum reads everything, and the export verifies offline
    officer
        .case_open("all", "everything", today_scope(vec![], vec![room]), false)
        .await
        .unwrap();
    new[0].case_approve("all").await.unwrap();
    new[1].case_approve("all").await.unwrap();
    let (n, text) = export(&officer, "all", w.dir.path()).await;
    assert_eq!(n, 3, "{text}");
    assert!(text.contains("BEFORE one") && text.contains("BEFORE two"));
    let v = cloister_client::export::verify(
        &w.dir.path().join("all"),
        Some(w.stack.km.info().sign_pk.0),
    )
    .unwrap();
    assert_eq!(v.messages, 3);
    // ... and the old quorum alone reads nothing any more
    officer
        .case_open("old-again", "", today_scope(vec![], vec![room]), false)
        .await
        .unwrap();
    old[1].case_approve("old-again").await.unwrap();
    old[2].case_approve("old-again").await.unwrap();
    let (n, _) = export(&officer, "old-again", w.dir.path()).await;
    assert_eq!(n, 0);

    // retire: the vault counts zero, the KM deletes the old shares
    let count = w.admin.admin_escrow_retire(1).await.unwrap();
    assert_eq!((count.remaining, count.newest), (0, 2));
    assert_eq!(
        bob.escrow_history()
            .await
            .unwrap()
            .iter()
            .map(|d| d.generation)
            .collect::<Vec<_>>(),
        [2]
    );
    assert_eq!(held(&old[1]).await, Vec::<u32>::new());
    assert_eq!(held(&old[0]).await, [2]);
    let e = w.admin.admin_escrow_retire(1).await.unwrap_err();
    assert_eq!(e.code(), Some("no_such_generation"), "{e}");
    let e = old[1].case_approve("all").await.unwrap_err();
    assert!(e.to_string().contains("no escrow share"), "{e}");

    // the audit log has the rotation; the vault's log every re-seal
    let kinds = audit_kinds(&w).await;
    let rotations: Vec<&String> = kinds
        .iter()
        .filter(|(k, _)| k == "key_rotation")
        .map(|(_, d)| d)
        .collect();
    assert!(
        rotations
            .iter()
            .any(|d| d.contains("escrow") && d.contains("started")),
        "{rotations:?}"
    );
    assert!(
        rotations
            .iter()
            .any(|d| d.contains("escrow") && d.contains("finished")),
        "{rotations:?}"
    );
    let resealed = w
        .stack
        .vault
        .log_kinds()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k == "envelope_resealed")
        .count();
    assert_eq!(resealed, 2);
    // no plaintext in the vault's files, before or after
    for (path, data) in files_under(&w.dir.path().join("vault")) {
        assert!(!contains(&data, b"BEFORE"), "{}", path.display());
    }
}

/// The envelopes of a room as the vault stores them, fetched through a
/// case the raw compliance device opens for itself.
async fn sealed_of(
    w: &World,
    raw: &RawDevice,
    room: &cloister_proto::RoomId,
) -> Vec<SealedEnvelope> {
    let case = raw_case(raw, today_scope(vec![], vec![*room])).await;
    let (status, body) = raw
        .vault(
            &w.stack.vault_url,
            &VaultOp::Fetch {
                ts: cloister_proto::now_millis(),
                case,
                tokens: vec![],
                after: None,
                limit: 100,
                size: w.stack.vault.log_size(),
            },
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let page: FetchResponse = serde_json::from_value(body).unwrap();
    page.items
        .iter()
        .map(|i| serde_json::from_slice(i.envelope.as_slice()).unwrap())
        .collect()
}

async fn raw_case(raw: &RawDevice, scope: CaseScope) -> SignedBlob {
    let (pk, _) = cloister_crypto::escrow::generate().unwrap();
    let name = format!("raw-{}", cloister_proto::now_millis());
    let (status, body) = raw
        .km(KmOp::CaseOpen {
            case: name,
            title: String::new(),
            scope,
            session_pk: Fixed(pk),
            hold: false,
        })
        .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

/// An insider with a compliance device and a patched client: a re-seal
/// must keep the message where it was, be the case officer's, be inside
/// the case, be to the newest key; a count must be the vault's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseal_or_retirement_that_lies_is_refused() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let cs = users(&w, &["cust1", "cust2"]).await;
    w.admin
        .admin_escrow_init(&ids(&[&cs[0], &cs[1]]), 2)
        .await
        .unwrap();
    w.register_vault(true).await;
    alice.use_registered_vault().await.unwrap().unwrap();
    let room = alice
        .create_room(RoomSettings::default(), &[])
        .await
        .unwrap();
    alice.send_text(&room, "hello").await.unwrap();
    let g2 = w
        .admin
        .admin_escrow_rotate(&ids(&[&cs[0], &cs[1]]), 2, 0)
        .await
        .unwrap();
    w.stack.vault.pull_deny_list().await.unwrap();
    let raw = w.raw_with("mallory", &[Compliance]).await;
    let stored = sealed_of(&w, &raw, &room).await.remove(0);
    let case = raw_case(&raw, today_scope(vec![], vec![room])).await;
    let reseal = |env: SealedEnvelope, case: SignedBlob| VaultOp::Reseal {
        ts: cloister_proto::now_millis(),
        case,
        envelopes: vec![serde_json::to_vec(&env).unwrap().into()],
    };
    let moved = SealedEnvelope {
        ts: stored.ts + 1,
        generation: 2,
        ..stored.clone()
    };
    let (s, b) = raw
        .vault(&w.stack.vault_url, &reseal(moved, case.clone()))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("reseal_mismatch")),
        "{b}"
    );
    let (s, b) = raw
        .vault(&w.stack.vault_url, &reseal(stored.clone(), case.clone()))
        .await;
    assert_eq!((s, b["error"].as_str()), (409, Some("stale_escrow")), "{b}");
    let elsewhere = SealedEnvelope {
        room: cloister_proto::RoomId([7; 16]),
        generation: 2,
        ..stored.clone()
    };
    let (s, b) = raw
        .vault(&w.stack.vault_url, &reseal(elsewhere, case.clone()))
        .await;
    assert_eq!((s, b["error"].as_str()), (403, Some("outside_case")), "{b}");
    let unknown = SealedEnvelope {
        message_id: cloister_proto::MessageId([9; 16]),
        generation: 2,
        ..stored.clone()
    };
    let (s, b) = raw
        .vault(&w.stack.vault_url, &reseal(unknown, case.clone()))
        .await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_captured")), "{b}");
    // another officer's case
    let other = w.raw_with("otto", &[Compliance]).await;
    let ok = SealedEnvelope {
        generation: 2,
        ..stored.clone()
    };
    let (s, b) = other
        .vault(&w.stack.vault_url, &reseal(ok.clone(), case.clone()))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (403, Some("not_case_officer")),
        "{b}"
    );
    // a plain user may not re-seal even with a case of their own
    let plain = w.raw("pat").await;
    let (s, b) = plain
        .vault(&w.stack.vault_url, &reseal(ok, case.clone()))
        .await;
    assert_eq!(s, 403, "{b}");
    // nothing changed
    assert_eq!(sealed_of(&w, &raw, &room).await, vec![stored]);

    // a count signed by anyone but the registered vault
    let fake = cloister_proto::km::EscrowCount {
        tenant: "acme".parse().unwrap(),
        generation: 1,
        remaining: 0,
        newest: 2,
        ts: cloister_proto::now_millis(),
    };
    let forger = cloister_crypto::KmSigner::generate().unwrap();
    let count = signed::km_sign_blob(&forger, signed::ESCROW_COUNT, &fake).unwrap();
    let admin_raw = w.raw_with("root", &[cloister_proto::km::Role::Admin]).await;
    let (s, b) = admin_raw
        .km(KmOp::EscrowRetire {
            generation: 1,
            counts: vec![count],
        })
        .await;
    assert_eq!((s, b["error"].as_str()), (401, Some("bad_count")), "{b}");
    // the vault's real count, for another generation than asked
    let (s, real) = admin_raw
        .vault(
            &w.stack.vault_url,
            &VaultOp::EscrowCount {
                ts: cloister_proto::now_millis(),
                generation: 2,
            },
        )
        .await;
    assert_eq!(s, 200, "{real}");
    let real: SignedBlob = serde_json::from_value(real).unwrap();
    let (s, b) = admin_raw
        .km(KmOp::EscrowRetire {
            generation: 1,
            counts: vec![real.clone()],
        })
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_count")), "{b}");
    // a non-admin with the vault's count
    let (s, b) = raw
        .km(KmOp::EscrowRetire {
            generation: 1,
            counts: vec![real],
        })
        .await;
    assert_eq!((s, b["error"].as_str()), (403, Some("not_admin")), "{b}");
    // a plain user may not ask the vault to count
    let (s, _) = plain
        .vault(
            &w.stack.vault_url,
            &VaultOp::EscrowCount {
                ts: cloister_proto::now_millis(),
                generation: 1,
            },
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(w.admin.escrow_history().await.unwrap().len(), 2);
    assert_eq!(alice.escrow_info().await.unwrap(), g2);
}
