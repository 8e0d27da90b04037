//! Rooms and IMs between firms (issue 11, part 3): each firm's KM serves
//! only its own users; the room's home KM hands each epoch key to a
//! partner firm's KM (HPKE to its pinned exchange key, signed) only while
//! the verified log has members of that firm; the partner KM checks the
//! same log with its own policy and controls before releasing to its own
//! devices. Attempts through the APIs directly: a partner KM asking for an
//! epoch it has no members in, an unpinned KM, a revoked trust, a forged
//! acceptance, a statement without a connection, a room that is not
//! external, a user without `external_chat`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::Client;
use cloister_proto::b64::Fixed;
use cloister_proto::controls::Entitlement;
use cloister_proto::federation::ConnectionProof;
use cloister_proto::km::{KmOp, SignedBlob};
use cloister_proto::room::{Action, RoomKind, RoomSettings, Statement};
use cloister_proto::server::{AppendLog, Content};
use cloister_proto::{RoomId, TenantId, now_millis};
use common::{World, connect, entitle_external};

fn external(name: &str) -> RoomSettings {
    RoomSettings {
        name: name.into(),
        external: true,
        ..Default::default()
    }
}

fn t(s: &str) -> TenantId {
    s.parse().unwrap()
}

async fn texts(c: &Client, room: &RoomId) -> Vec<String> {
    c.read(room, 100, None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| match r.unwrap().content {
            Content::Text { text } => text,
            other => panic!("not text: {other:?}"),
        })
        .collect()
}

/// Kinds and JSON of a KM's audit records about `room`.
async fn exchanges(admin: &Client, room: &RoomId) -> Vec<(String, Vec<u64>, String)> {
    admin
        .audit_list(0, 10_000, Some("key_exchange".into()), Some(*room), None)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(_, r, _)| match r.event {
            cloister_log::AuditEvent::KeyExchange {
                epochs,
                tenant,
                step,
                ..
            } => Some((step, epochs, tenant.to_string())),
            _ => None,
        })
        .collect()
}

/// Acme and bank pinning each other, alice@acme and bob@bank entitled and
/// connected.
async fn acme_and_bank_connected() -> (World, common::Firm, Client, Client) {
    let w = World::new().await;
    let bank = w.firm("bank").await;
    w.trust_each_other(&bank).await;
    let alice = w.user("alice").await;
    let bob = bank.user("bob").await;
    entitle_external(&w.admin, &[&alice]).await;
    entitle_external(&bank.admin, &[&bob]).await;
    connect(&alice, &bob).await;
    (w, bank, alice, bob)
}

async fn post_exchange(w: &World, blob: &SignedBlob) -> (u16, serde_json::Value) {
    let r = w
        .http
        .post(format!("{}/v1/federation/room-keys", w.stack.km_url))
        .json(blob)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_room_between_two_firms_each_km_serving_its_own_users() {
    let (w, bank, alice, bob) = acme_and_bank_connected().await;

    // an external room homed at acme, with bob of bank
    let room = alice
        .create_room(external("deal"), &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "term sheet v1").await.unwrap();
    // bob's own KM (bank) gets epoch 0 from acme's KM and releases it to him
    assert_eq!(texts(&bob, &room).await, ["term sheet v1"]);
    bob.send_text(&room, "agreed").await.unwrap();
    assert_eq!(texts(&alice, &room).await, ["term sheet v1", "agreed"]);

    // each KM logs its side: acme sent epoch 0 to bank, bank received it
    assert_eq!(
        exchanges(&w.admin, &room).await,
        [("sent".to_owned(), vec![0], "bank".to_owned())]
    );
    assert_eq!(
        exchanges(&bank.admin, &room).await,
        [("received".to_owned(), vec![0], "acme".to_owned())]
    );
    // who-has-keys on either side shows only its own users
    let mine: Vec<String> = w
        .admin
        .who_has_keys(&room)
        .await
        .unwrap()
        .iter()
        .map(|r| r.user.to_string())
        .collect();
    assert!(mine.iter().all(|u| u == "alice@acme"), "{mine:?}");
    let theirs: Vec<String> = bank
        .admin
        .who_has_keys(&room)
        .await
        .unwrap()
        .iter()
        .map(|r| r.user.to_string())
        .collect();
    assert!(
        !theirs.is_empty() && theirs.iter().all(|u| u == "bob@bank"),
        "{theirs:?}"
    );

    // an IM between the firms works the same way
    let im = bob.im(alice.user()).await.unwrap();
    bob.send_text(&im, "call me").await.unwrap();
    assert_eq!(texts(&alice, &im).await, ["call me"]);

    // bob is removed: epoch 1; bank's KM never gets it, bob is refused
    alice.remove_member(&room, bob.user()).await.unwrap();
    alice.send_text(&room, "internal only").await.unwrap();
    let e = bob.room_keys(&room, &[1]).await.unwrap_err();
    assert_eq!(e.code(), Some("not_entitled"), "{e}");
    // and acme's KM refuses bank's KM if it asks itself (no bank member
    // may read epoch 1): a partner KM's request signed with its own key
    let st = alice.room_state(&room).await.unwrap();
    let blob = bank.km.key_request(&st, &[1]).await.unwrap();
    let (s, b) = post_exchange(&w, &blob).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("no_members")), "{b}");
    // the same request replayed is refused before anything else
    let (s, b) = post_exchange(&w, &blob).await;
    assert_eq!(s, 409, "{b}");
    let sent: Vec<_> = exchanges(&w.admin, &room)
        .await
        .into_iter()
        .filter(|(step, _, _)| step == "sent")
        .collect();
    assert_eq!(sent, [("sent".to_owned(), vec![0], "bank".to_owned())]);
    assert!(
        exchanges(&w.admin, &room)
            .await
            .iter()
            .any(|(step, e, t)| step == "refused" && e == &[1] && t == "bank")
    );

    // the operator's storage holds no plaintext of either firm
    let dir = w.stack.dir.join("server");
    for (path, bytes) in common::files_under(&dir) {
        for p in ["term sheet v1", "agreed", "call me", "internal only"] {
            assert!(!common::contains(&bytes, p.as_bytes()), "{p} in {path:?}");
        }
    }
}

#[tokio::test]
async fn rooms_between_firms_need_trust_a_connection_entitlements_and_an_external_room() {
    let w = World::new().await;
    let bank = w.firm("bank").await;
    let alice = w.user("alice").await;
    let bob = bank.user("bob").await;
    entitle_external(&w.admin, &[&alice]).await;
    entitle_external(&bank.admin, &[&bob]).await;

    // no trust yet: no connection, no room
    assert!(alice.connect_request(bob.user()).await.is_err());
    w.trust_each_other(&bank).await;
    connect(&alice, &bob).await;

    // not an external room
    let e = alice
        .create_room(
            RoomSettings {
                name: "plain".into(),
                ..Default::default()
            },
            &[bob.user().clone()],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_external"), "{e}");

    // no connection with carol: the SDK refuses, and so does the server
    // for a patched client that sends the statement without a proof
    let carol = bank.user("carol").await;
    entitle_external(&bank.admin, &[&carol]).await;
    let e = alice
        .create_room(external("no-conn"), &[carol.user().clone()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_connected"), "{e}");

    // a patched client sends such statements anyway: without a proof, with
    // the proof of another pair, with an acceptance of another request.
    // The server and acme's KM both refuse them.
    let mallory = w.raw("mallory").await;
    w.admin
        .admin_entitle(Some(&mallory.user), None, &[Entitlement::ExternalChat], &[])
        .await
        .unwrap();
    let pending = alice.connect_request(carol.user()).await.unwrap();
    let conns = alice.connections().await.unwrap();
    let with_bob = conns
        .iter()
        .find(|c| c.answer.is_some())
        .expect("alice's accepted connection");
    let to_carol = conns
        .iter()
        .find(|c| hex::encode(c.id.0) == pending.id)
        .unwrap();
    let cases = [
        (mallory.user.clone(), vec![], "not_connected"),
        (
            mallory.user.clone(),
            vec![ConnectionProof {
                request: with_bob.request.clone(),
                answer: with_bob.answer.clone().unwrap(),
            }],
            "not_connected",
        ),
        (
            mallory.user.clone(),
            vec![ConnectionProof {
                request: to_carol.request.clone(),
                answer: with_bob.answer.clone().unwrap(),
            }],
            "bad_connection",
        ),
    ];
    for (i, (actor_user, proofs, code)) in cases.into_iter().enumerate() {
        let room = cloister_policy::room_id_from_random([i as u8 + 1; 16]);
        let member = if code == "bad_connection" {
            carol.user()
        } else {
            bob.user()
        };
        let st = Statement {
            room,
            seq: 0,
            prev: Fixed([0; 32]),
            actor: mallory.keys.device_id(),
            actor_user,
            ts: now_millis(),
            action: Action::Create {
                kind: RoomKind::Room,
                settings: external("forged"),
                members: vec![member.clone()],
            },
            connections: proofs,
        };
        let entry = cloister_crypto::signed::sign_statement(&mallory.keys, &st).unwrap();
        let r = w
            .http
            .post(format!("{}/v1/rooms/{room}/log", w.stack.server_url))
            .bearer_auth(mallory.token().await)
            .json(&AppendLog {
                entry: entry.clone(),
            })
            .send()
            .await
            .unwrap();
        common::expect_error(r, 403, code).await;
        let (s, b) = mallory
            .km(KmOp::RoomHead {
                room,
                log_from: 0,
                log: vec![entry],
                certs: vec![],
            })
            .await;
        assert_eq!((s, b["error"].as_str()), (403, Some(code)), "{b}");
    }

    // external_chat revoked at acme: the key is refused by acme's KM
    let dave = w.user("dave").await;
    entitle_external(&w.admin, &[&dave]).await;
    let room = alice
        .create_room(external("deal"), &[bob.user().clone(), dave.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "hello").await.unwrap();
    assert_eq!(texts(&bob, &room).await, ["hello"]);
    w.admin
        .admin_entitle(Some(alice.user()), None, &[], &[Entitlement::ExternalChat])
        .await
        .unwrap();
    alice.clear_key_cache().unwrap();
    let e = alice.room_keys(&room, &[0]).await.unwrap_err();
    assert_eq!(e.code(), Some("entitlement"), "{e}");
    // bank's side: bob without the entitlement is refused by bank's KM
    bank.admin
        .admin_entitle(Some(bob.user()), None, &[], &[Entitlement::ExternalChat])
        .await
        .unwrap();
    bob.clear_key_cache().unwrap();
    let e = bob.room_keys(&room, &[0]).await.unwrap_err();
    assert_eq!(e.code(), Some("entitlement"), "{e}");
    bank.admin
        .admin_entitle(Some(bob.user()), None, &[Entitlement::ExternalChat], &[])
        .await
        .unwrap();

    // acme stops trusting bank: bank's KM gets no new epoch key
    w.admin
        .trust_remove(&t("bank"), "deal closed")
        .await
        .unwrap();
    w.admin
        .admin_entitle(Some(alice.user()), None, &[Entitlement::ExternalChat], &[])
        .await
        .unwrap();
    alice.remove_member(&room, dave.user()).await.unwrap();
    let e = bob.room_keys(&room, &[1]).await.unwrap_err();
    assert_eq!(e.code(), Some("home_km_refused"), "{e}");
    assert!(e.to_string().contains("not_trusted"), "{e}");
    // and bank's KM asking itself is refused and audited at acme
    let st = alice.room_state(&room).await.unwrap();
    let blob = bank.km.key_request(&st, &[1]).await.unwrap();
    let (s, b) = post_exchange(&w, &blob).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("not_trusted")), "{b}");
    assert!(
        exchanges(&w.admin, &room)
            .await
            .iter()
            .any(|(step, _, t)| step == "refused" && t == "bank")
    );
}

#[tokio::test]
async fn an_unpinned_firm_gets_nothing() {
    let w = World::new().await;
    let bank = w.firm("bank").await;
    let fund = w.firm("fund").await;
    w.trust_each_other(&bank).await;
    // fund pins acme, but acme never pinned fund
    fund.trust_acme(&w).await;
    let alice = w.user("alice").await;
    let bob = bank.user("bob").await;
    entitle_external(&w.admin, &[&alice]).await;
    entitle_external(&bank.admin, &[&bob]).await;
    connect(&alice, &bob).await;
    let room = alice
        .create_room(external("deal"), &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "x").await.unwrap();
    let st = alice.room_state(&room).await.unwrap();
    // fund's KM asks acme's for the room's key: not pinned, refused, audited
    let blob = fund.km.key_request(&st, &[0]).await.unwrap();
    let (s, b) = post_exchange(&w, &blob).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("not_trusted")), "{b}");
    // a device of a third firm asking bank's KM (or acme's) for the key:
    // each KM serves only devices it certified
    let code = fund
        .admin
        .admin_add_user(&fund.uid("eve"), false)
        .await
        .unwrap()
        .code;
    let eve = common::RawDevice::enrol_at(
        &w.http,
        &fund.km_url,
        &fund.km.info().sign_pk.0,
        &w.stack.server_url,
        &fund.uid("eve"),
        &code,
    )
    .await;
    for km in [&bank.km_url, &w.stack.km_url] {
        let (s, b) = eve
            .km_at(
                km,
                KmOp::RoomKeys {
                    room,
                    epochs: vec![0],
                    log_from: 0,
                    log: vec![],
                    certs: vec![],
                },
            )
            .await;
        assert_eq!(
            (s, b["error"].as_str()),
            (401, Some("unknown_device")),
            "{b}"
        );
    }
    // bank's request altered in transit (another room): the signature fails
    let blob = bank.km.key_request(&st, &[0]).await.unwrap();
    let mut body: serde_json::Value = serde_json::from_slice(blob.body.as_slice()).unwrap();
    body["epochs"] = serde_json::json!([0, 1]);
    let forged = SignedBlob {
        body: serde_json::to_vec(&body).unwrap().into(),
        sig: blob.sig,
    };
    let (s, b) = post_exchange(&w, &forged).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (403, Some("bad_signature")),
        "{b}"
    );
    // malformed and oversized bodies
    let r = w
        .http
        .post(format!("{}/v1/federation/room-keys", w.stack.km_url))
        .header("content-type", "application/json")
        .body("{\"body\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = w
        .http
        .post(format!("{}/v1/federation/room-keys", w.stack.km_url))
        .header("content-type", "application/json")
        .body(vec![b' '; cloister_proto::limits::MAX_JSON_BODY + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let refused: Vec<_> = exchanges(&w.admin, &room)
        .await
        .into_iter()
        .filter(|(step, _, _)| step == "refused")
        .map(|(_, _, t)| t)
        .collect();
    assert!(refused.contains(&"fund".to_owned()), "{refused:?}");
}

/// Each firm keeps its own record: every device captures what its user
/// sends and receives into its own firm's vault, under its own escrow key;
/// each firm exports its side and the export verifies offline against its
/// own KM key (the other firm's senders under the partner key its KM signed).
#[tokio::test]
async fn each_firm_captures_and_exports_its_own_side() {
    use cloister_proto::km::Role::{Compliance, Custodian};
    let w = World::new().await;
    let bank = w.firm("bank").await;
    w.trust_each_other(&bank).await;
    // acme: escrow 2-of-2, its vault, capture required
    let acme_cust = [
        w.user_with("cust1", &[Custodian]).await,
        w.user_with("cust2", &[Custodian]).await,
    ];
    let acme_officer = w.user_with("officer", &[Compliance]).await;
    w.admin
        .admin_escrow_init(
            &[acme_cust[0].user().clone(), acme_cust[1].user().clone()],
            2,
        )
        .await
        .unwrap();
    w.register_vault(true).await;
    // bank: the same, with its own vault and escrow
    let bank_cust = [
        bank.user_with("cust1", &[Custodian]).await,
        bank.user_with("cust2", &[Custodian]).await,
    ];
    let bank_officer = bank.user_with("officer", &[Compliance]).await;
    bank.admin
        .admin_escrow_init(
            &[bank_cust[0].user().clone(), bank_cust[1].user().clone()],
            2,
        )
        .await
        .unwrap();
    bank.admin
        .admin_vault_register(&bank.vault_url, true)
        .await
        .unwrap();
    let alice = w.user("alice").await;
    let bob = bank.user("bob").await;
    for c in [&alice, &acme_officer] {
        c.use_registered_vault().await.unwrap().unwrap();
    }
    for c in [&bob, &bank_officer] {
        c.use_registered_vault().await.unwrap().unwrap();
    }
    entitle_external(&w.admin, &[&alice]).await;
    entitle_external(&bank.admin, &[&bob]).await;
    connect(&alice, &bob).await;
    let room = alice
        .create_room(external("deal"), &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "acme offers 101.5").await.unwrap();
    assert_eq!(texts(&bob, &room).await, ["acme offers 101.5"]);
    bob.send_text(&room, "bank takes it").await.unwrap();
    assert_eq!(
        texts(&alice, &room).await,
        ["acme offers 101.5", "bank takes it"]
    );

    // each firm's officer exports the room from its own vault
    let scope = || {
        let now = now_millis();
        cloister_proto::km::CaseScope {
            custodians: vec![],
            rooms: vec![room],
            from_ms: now - 3_600_000,
            to_ms: now + 3_600_000,
            reseal: None,
        }
    };
    let mut exports = Vec::new();
    for (officer, cust, dir, km_pk) in [
        (
            &acme_officer,
            &acme_cust,
            w.dir.path().join("export-acme"),
            w.stack.km.info().sign_pk.0,
        ),
        (
            &bank_officer,
            &bank_cust,
            bank.dir.path().join("export-bank"),
            bank.km.info().sign_pk.0,
        ),
    ] {
        officer
            .case_open("deal", "the deal", scope(), false)
            .await
            .unwrap();
        for c in cust {
            c.case_approve("deal").await.unwrap();
        }
        let s = officer.case_export("deal", &dir, &|_, _| {}).await.unwrap();
        assert_eq!(
            (s.summary.messages, s.summary.unattributable),
            (2, 0),
            "{s:?}"
        );
        let report = cloister_client::export::verify(&dir, Some(km_pk)).unwrap();
        assert_eq!(report.messages, 2);
        let jl = std::fs::read_to_string(dir.join("messages.jsonl")).unwrap();
        assert!(
            jl.contains("acme offers 101.5") && jl.contains("bank takes it"),
            "{jl}"
        );
        exports.push((dir, km_pk));
    }
    // an export verifies only under its own firm's KM key
    let e = cloister_client::export::verify(&exports[0].0, Some(exports[1].1)).unwrap_err();
    assert!(e.contains("TAMPERED"), "{e}");
    // neither vault holds plaintext; each holds only envelopes sealed to
    // its own escrow key (the other firm's officer cannot open them)
    for dir in [w.stack.dir.join("vault"), bank.dir.path().join("vault")] {
        for (path, bytes) in common::files_under(&dir) {
            for p in ["acme offers 101.5", "bank takes it"] {
                assert!(!common::contains(&bytes, p.as_bytes()), "{p} in {path:?}");
            }
        }
    }
}

/// Private external communities: a firm sponsors a guest (their
/// organisation runs no KM) under its own KM. The guest takes part only in
/// rooms the firm's users put them in: they create no room or IM, join and
/// invite no one, never share a room with another firm (whatever an admin
/// grants), and the sponsor's admins remove them.
#[tokio::test]
async fn a_sponsored_guest_takes_part_only_where_the_firm_puts_them() {
    use cloister_proto::km::Role;
    let (w, _bank, alice, bob) = acme_and_bank_connected().await;
    let gina = w.user_with("gina", &[Role::Guest]).await;
    // a guest holds no other role
    let e = w
        .admin
        .admin_add_user_roles(&World::uid("gus"), &[Role::Guest, Role::Admin])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_roles"), "{e}");

    // no room, no IM of their own: refused by the server
    let e = gina
        .create_room(RoomSettings::default(), &[alice.user().clone()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("guest"), "{e}");
    let e = gina.im(alice.user()).await.unwrap_err();
    assert_eq!(e.code(), Some("guest"), "{e}");
    // … and by the KM, for a patched client relaying the statement itself
    let gino = w.raw_with("gino", &[Role::Guest]).await;
    let room = cloister_policy::room_id_from_random([42; 16]);
    let st = Statement {
        room,
        seq: 0,
        prev: Fixed([0; 32]),
        actor: gino.keys.device_id(),
        actor_user: gino.user.clone(),
        ts: now_millis(),
        action: Action::Create {
            kind: RoomKind::Room,
            settings: RoomSettings::default(),
            members: vec![alice.user().clone()],
        },
        connections: vec![],
    };
    let entry = cloister_crypto::signed::sign_statement(&gino.keys, &st).unwrap();
    let (s, b) = gino
        .km(KmOp::RoomHead {
            room,
            log_from: 0,
            log: vec![entry],
            certs: vec![],
        })
        .await;
    assert_eq!((s, b["error"].as_str()), (403, Some("guest")), "{b}");
    // no connection with another firm either
    let e = gina.connect_request(bob.user()).await.unwrap_err();
    assert_eq!(e.code(), Some("entitlement"), "{e}");

    // alice puts gina in her room: gina reads and writes there
    let room = alice
        .create_room(
            RoomSettings {
                name: "client-desk".into(),
                members_may_invite: true,
                ..Default::default()
            },
            &[gina.user().clone()],
        )
        .await
        .unwrap();
    alice.send_text(&room, "welcome, Gina").await.unwrap();
    assert_eq!(texts(&gina, &room).await, ["welcome, Gina"]);
    gina.send_text(&room, "thanks").await.unwrap();
    assert_eq!(texts(&alice, &room).await, ["welcome, Gina", "thanks"]);
    // … but invites no one, even where members may invite
    let carol = w.user("carol").await;
    let e = gina.add_member(&room, carol.user()).await.unwrap_err();
    assert_eq!(e.code(), Some("guest"), "{e}");

    // never with another firm, even if an admin grants external_chat
    w.admin
        .admin_entitle(Some(gina.user()), None, &[Entitlement::ExternalChat], &[])
        .await
        .unwrap();
    let e = alice
        .create_room(
            external("with-bank"),
            &[bob.user().clone(), gina.user().clone()],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("entitlement"), "{e}");
    assert!(e.to_string().contains("gina@acme"), "{e}");

    // the guest may leave; the sponsor's admin removes them
    gina.leave(&room).await.unwrap();
    w.admin.admin_disable_user(gina.user()).await.unwrap();
    gina.clear_key_cache().unwrap();
    assert!(gina.room_keys(&room, &[0]).await.is_err());
}

/// The shared directory: each firm publishes the profile fields it
/// chooses; a trusted firm's entitled users search them through their own
/// KM, which asks the other firm's KM; guests, people without
/// `external_chat` and people a barrier of either firm walls off are never
/// shown, and unpublished fields are neither shown nor searchable. A firm's
/// barrier may wall one of its groups off from a whole other firm: no
/// search, no connection, no shared room.
#[tokio::test]
async fn the_shared_directory_shows_what_each_firm_publishes() {
    use cloister_proto::km::{ProfileUpdate, Role};
    let w = World::new().await;
    let bank = w.firm("bank").await;
    let fund = w.firm("fund").await;
    w.trust_each_other(&bank).await;
    let (alice, carol, dave) = (
        w.user("alice").await,
        w.user("carol").await,
        w.user("dave").await,
    );
    let (bob, bea, sam) = (
        bank.user("bob").await,
        bank.user("bea").await,
        bank.user("sam").await,
    );
    let _gil = bank.user_with("gil", &[Role::Guest]).await;
    entitle_external(&w.admin, &[&alice, &dave]).await;
    entitle_external(&bank.admin, &[&bob, &sam]).await;
    for (u, title, dept) in [
        (&bob, "Rates PM", "Fixed Income"),
        (&bea, "Rates analyst", "Fixed Income"),
        (&sam, "Rates sales", "Sales"),
    ] {
        bank.admin
            .admin_profile_set(
                u.user(),
                ProfileUpdate {
                    display_name: Some(format!("{} of Bank", u.user().name())),
                    title: Some(title.into()),
                    department: Some(dept.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    bank.admin
        .admin_profile_set(
            &bank.uid("gil"),
            ProfileUpdate {
                title: Some("Rates guest".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // nothing published yet: bank cannot be searched
    let e = alice
        .partner_directory_search(&t("bank"), "rates", 10)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("partner_km_refused"), "{e}");
    assert!(e.to_string().contains("not_published"), "{e}");
    // a field that cannot be published; only admins publish
    let e = bank
        .admin
        .admin_directory_publish(&["salary"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_field"), "{e}");
    assert!(bob.admin_directory_publish(&["title"]).await.is_err());
    bank.admin
        .admin_directory_publish(&["display_name", "title"])
        .await
        .unwrap();

    let hits = alice
        .partner_directory_search(&t("bank"), "rates", 10)
        .await
        .unwrap();
    let users: Vec<String> = hits.iter().map(|e| e.user.to_string()).collect();
    // bea lacks external_chat, gil is a guest: neither is shown
    assert_eq!(users, ["bob@bank", "sam@bank"], "{hits:?}");
    assert_eq!(hits[0].title, "Rates PM");
    assert_eq!(hits[0].department, "", "unpublished fields are not shown");
    // … nor searchable
    assert!(
        alice
            .partner_directory_search(&t("bank"), "income", 10)
            .await
            .unwrap()
            .is_empty()
    );
    // only entitled users search; only trusted firms are asked
    let e = carol
        .partner_directory_search(&t("bank"), "rates", 10)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("entitlement"), "{e}");
    let e = alice
        .partner_directory_search(&fund.tenant, "x", 10)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_trusted"), "{e}");

    // bank walls its sales group off from acme: sam is no longer shown
    bank.admin
        .admin_group_set("sales", &[sam.user().clone()], &[])
        .await
        .unwrap();
    bank.admin
        .barrier_add("sales", "firm:acme", "sales does not talk to acme")
        .await
        .unwrap();
    let users: Vec<String> = alice
        .partner_directory_search(&t("bank"), "rates", 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.user.to_string())
        .collect();
    assert_eq!(users, ["bob@bank"]);
    // acme walls research off from bank: dave sees no one there, cannot
    // connect, and cannot share a room with bank's users
    w.admin
        .admin_group_set("research", &[dave.user().clone()], &[])
        .await
        .unwrap();
    for bad in ["firm:acme", "firm:Not A Tenant"] {
        let e = w.admin.barrier_add("research", bad, "x").await.unwrap_err();
        assert_eq!(e.code(), Some("bad_barrier"), "{bad}: {e}");
    }
    w.admin
        .barrier_add("research", "firm:bank", "research is walled off from bank")
        .await
        .unwrap();
    assert!(
        dave.partner_directory_search(&t("bank"), "rates", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let e = dave.connect_request(bob.user()).await.unwrap_err();
    assert_eq!(e.code(), Some("barrier"), "{e}");
    connect(&alice, &bob).await;
    let e = alice
        .create_room(
            external("mixed"),
            &[bob.user().clone(), dave.user().clone()],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("barrier"), "{e}");
}
