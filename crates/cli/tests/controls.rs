//! Communication controls end to end: information barriers and
//! entitlements refused by the client's SDK path, by the server (no
//! routing) and by the KM (no key) when a patched client goes around the
//! server, each refusal naming what is missing and recorded in the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_crypto::signed::sign_statement;
use cloister_proto::b64::Fixed;
use cloister_proto::controls::Entitlement;
use cloister_proto::km::KmOp;
use cloister_proto::now_millis;
use cloister_proto::room::SignedStatement;
use cloister_proto::room::{Action, RoomKind, RoomSettings, Statement};
use cloister_proto::server::{AppendLog, KmAppendBatch, KmAppendBatchResponse};
use common::{World, audit_kinds, expect_error};

fn named(name: &str) -> RoomSettings {
    RoomSettings {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_barrier_blocks_ims_rooms_and_search_everywhere() {
    let w = World::new().await;
    let rita = w.user("rita").await;
    let tom = w.user("tom").await;
    let sam = w.user("sam").await;
    let raw_rita = w.raw("rita").await; // a second, hand-driven device of rita's
    w.admin
        .admin_group_set("research", &[rita.user().clone()], &[])
        .await
        .unwrap();
    w.admin
        .admin_group_set("trading", &[tom.user().clone()], &[])
        .await
        .unwrap();
    let b = w
        .admin
        .barrier_add("research", "trading", "Chinese wall: research / trading")
        .await
        .unwrap()
        .barrier;
    assert!(b.barrier.active);
    // a barrier needs existing, different groups; the same pair twice is refused
    assert_eq!(
        w.admin
            .barrier_add("research", "nobody", "x")
            .await
            .unwrap_err()
            .code(),
        Some("unknown_group")
    );
    assert_eq!(
        w.admin
            .barrier_add("research", "Research", "x")
            .await
            .unwrap_err()
            .code(),
        Some("bad_barrier")
    );
    assert_eq!(
        w.admin
            .barrier_add("trading", "research", "x")
            .await
            .unwrap_err()
            .code(),
        Some("barrier_exists")
    );

    // directory: neither side finds the other; others find both
    assert!(rita.directory_search("tom", 10).await.unwrap().is_empty());
    assert!(tom.directory_search("rita", 10).await.unwrap().is_empty());
    assert_eq!(sam.directory_search("tom", 10).await.unwrap().len(), 1);

    // an IM: refused, naming the barrier
    let e = rita.im(tom.user()).await.unwrap_err();
    assert_eq!(e.code(), Some("barrier"), "{e}");
    assert!(e.to_string().contains(&b.barrier.id), "{e}");
    // a room with both: refused at creation and at adding either
    let e = sam
        .create_room(named("deal"), &[rita.user().clone(), tom.user().clone()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("barrier"), "{e}");
    let room = sam
        .create_room(named("deal"), &[rita.user().clone()])
        .await
        .unwrap();
    let e = sam.add_member(&room, tom.user()).await.unwrap_err();
    assert_eq!(e.code(), Some("barrier"), "{e}");

    // a patched client goes to the server directly: refused there…
    let im = cloister_policy::im_room_id(&raw_rita.user, tom.user());
    let genesis = sign_statement(
        &raw_rita.keys,
        &Statement {
            room: im,
            seq: 0,
            prev: Fixed([0; 32]),
            actor: raw_rita.keys.device_id(),
            actor_user: raw_rita.user.clone(),
            ts: now_millis(),
            action: Action::Create {
                kind: RoomKind::Im,
                settings: RoomSettings::default(),
                members: vec![tom.user().clone()],
            },
            connections: Vec::new(),
        },
    )
    .unwrap();
    let r = w
        .http
        .post(format!("{}/v1/rooms/{im}/log", w.stack.server_url))
        .bearer_auth(raw_rita.token().await)
        .json(&AppendLog {
            entry: genesis.clone(),
        })
        .send()
        .await
        .unwrap();
    let msg = expect_error(r, 403, "barrier").await;
    assert!(msg.contains("separates"), "{msg}");
    // …and at the KM when it relays the log itself: no key
    let (st, body) = raw_rita
        .km(KmOp::RoomKeys {
            room: im,
            epochs: vec![0],
            log_from: 0,
            log: vec![genesis],
            certs: Vec::new(),
        })
        .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("barrier")),
        "{body}"
    );

    // every refusal and the change itself are audit records
    let audit = audit_kinds(&w).await;
    assert!(audit.iter().any(|(k, _)| k == "barrier_added"));
    let refusals = audit
        .iter()
        .filter(|(k, d)| k == "control_refused" && d.contains("\"code\":\"barrier\""))
        .count();
    assert!(refusals >= 1, "{audit:?}");

    // disabled (never deleted): the IM works, and the record stays
    w.admin
        .barrier_disable(&b.barrier.id, "wall lifted after the deal")
        .await
        .unwrap();
    let im2 = rita.im(tom.user()).await.unwrap();
    rita.send_text(&im2, "hello").await.unwrap();
    let list = w.admin.barrier_list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(!list[0].barrier.active);
    assert_eq!(list[0].disabled_reason, "wall lifted after the deal");
    assert!(
        audit_kinds(&w)
            .await
            .iter()
            .any(|(k, _)| k == "barrier_disabled")
    );
    // only admins and compliance officers change barriers
    let e = sam
        .barrier_add("research", "trading", "x")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_admin"), "{e}");
}

/// A barrier added while two walled people share a room: the KM evicts
/// one side (owners are kept first) into a new epoch, says why, and the
/// evicted member gets no key of it; the log shows the KM's statement.
#[tokio::test]
async fn a_new_barrier_evicts_the_walled_side_into_a_new_epoch() {
    let w = World::new().await;
    let rita = w.user("rita").await;
    let tom = w.user("tom").await;
    let sam = w.user("sam").await;
    let room = sam
        .create_room(named("desk"), &[rita.user().clone(), tom.user().clone()])
        .await
        .unwrap();
    // a second shared room and one the barrier leaves alone
    let other = rita
        .create_room(named("lunch"), &[tom.user().clone()])
        .await
        .unwrap();
    let alone = sam
        .create_room(named("sam-and-tom"), &[tom.user().clone()])
        .await
        .unwrap();
    let alone_seq = sam.room_state(&alone).await.unwrap().seq;
    tom.send_text(&room, "before the wall").await.unwrap();
    let before = sam.room_state(&room).await.unwrap().epoch;
    w.admin
        .admin_group_set("research", &[rita.user().clone()], &[])
        .await
        .unwrap();
    w.admin
        .admin_group_set("trading", &[tom.user().clone()], &[])
        .await
        .unwrap();
    let added = w
        .admin
        .barrier_add("research", "trading", "wall")
        .await
        .unwrap();
    assert!(added.pending.is_empty(), "{:?}", added.pending);
    // both shared rooms at once (one batch); in the lunch room rita owns
    // it, so tom leaves
    assert_eq!(added.evicted.len(), 2, "{:?}", added.evicted);
    let ev = added.evicted.iter().find(|e| e.room == room).unwrap();
    assert_eq!((ev.room, &ev.user), (room, tom.user()));
    let lunch = added.evicted.iter().find(|e| e.room == other).unwrap();
    assert_eq!(&lunch.user, tom.user());
    let l = rita.room_state(&other).await.unwrap();
    assert!(!l.members.contains(tom.user()));
    assert_eq!(sam.room_state(&alone).await.unwrap().seq, alone_seq);
    assert!(
        ev.reason.contains(&added.barrier.barrier.id),
        "{}",
        ev.reason
    );

    // every client replays the KM's statement: a new epoch without tom
    let st = sam.room_state(&room).await.unwrap();
    assert!(st.epoch > before);
    assert!(!st.members.contains(tom.user()) && st.members.contains(rita.user()));
    sam.send_text(&room, "after the wall").await.unwrap();
    rita.send_text(&room, "rita too").await.unwrap();
    let got = rita.read(&room, 10, None).await.unwrap();
    assert_eq!(got.len(), 3);
    // tom keeps the history he had, gets nothing new, cannot post
    let e = tom.send_text(&room, "after the wall").await.unwrap_err();
    assert!(e.code().is_some(), "{e}");
    let tom2 = w.device_of(tom.user()).await;
    let seen = tom2.read(&room, 10, None).await.unwrap_or_default();
    assert!(
        seen.iter().flatten().all(|m| m.epoch < st.epoch),
        "tom read a message of the new epoch"
    );
    // the audit log says who was evicted, where and why
    let audit = audit_kinds(&w).await;
    assert!(
        audit
            .iter()
            .any(|(k, d)| k == "room_control" && d.contains("\"evict\"") && d.contains("tom@acme")),
        "{audit:?}"
    );
}

/// A compliance officer locks a room (owners cannot unlock it, nobody
/// posts), bans a member (new epoch, never re-added), and unlocks it.
#[tokio::test]
async fn officers_lock_ban_and_unlock() {
    let w = World::new().await;
    let owner = w.user("olive").await;
    let bob = w.user("bob").await;
    let carl = w.user("carl").await;
    let officer = w
        .user_with("cora", &[cloister_proto::km::Role::Compliance])
        .await;
    let raw_owner = w.raw("olive").await;
    let room = owner
        .create_room(named("desk"), &[bob.user().clone(), carl.user().clone()])
        .await
        .unwrap();
    owner.send_text(&room, "hello").await.unwrap();

    // a justification is required; only compliance officers act
    let e = officer.room_lock(&room, " ").await.unwrap_err();
    assert_eq!(e.code(), Some("justification_required"), "{e}");
    let e = owner.room_lock(&room, "mine").await.unwrap_err();
    assert_eq!(e.code(), Some("not_compliance"), "{e}");

    officer
        .room_lock(&room, "case 42: preserve the desk")
        .await
        .unwrap();
    let e = bob.send_text(&room, "still here?").await.unwrap_err();
    assert!(e.to_string().contains("locked"), "{e}");
    let e = owner
        .add_member(&room, &w.user("dan").await.user().clone())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("locked"), "{e}");
    // a patched client cannot post either: the server refuses it
    let st = owner.room_state(&room).await.unwrap();
    assert!(st.locked.is_some());
    let r = raw_owner
        .get::<cloister_proto::server::RoomSummary>(&format!("/v1/rooms/{room}"))
        .await;
    assert_eq!(r.room, room);
    // an owner cannot unlock: only the KM signs Unlock, for an officer
    let e = owner.room_unlock(&room, "please").await.unwrap_err();
    assert_eq!(e.code(), Some("not_compliance"), "{e}");

    let banned = officer
        .room_ban(&room, bob.user(), "case 42: leaked a term sheet")
        .await
        .unwrap();
    assert!(banned.epoch > st.epoch);
    officer.room_unlock(&room, "case 42 closed").await.unwrap();
    owner.send_text(&room, "back to work").await.unwrap();
    let e = owner.add_member(&room, bob.user()).await.unwrap_err();
    assert!(e.to_string().contains("banned"), "{e}");
    let audit = audit_kinds(&w).await;
    for a in ["\"lock\"", "\"ban\"", "\"unlock\""] {
        assert!(
            audit
                .iter()
                .any(|(k, d)| k == "room_control" && d.contains(a)),
            "no {a}: {audit:?}"
        );
    }
}

/// Room policies (Symphony's rules) with their constraints, enforced by
/// the policy code the client, the server and the KM share.
#[tokio::test]
async fn room_policies_and_their_constraints() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carl = w.user("carl").await;
    // public needs the entitlement, and a public room is discoverable
    let public = RoomSettings {
        public: true,
        discoverable: true,
        ..named("rates-chat")
    };
    let e = alice.create_room(public.clone(), &[]).await.unwrap_err();
    assert_eq!(e.code(), Some("entitlement"), "{e}");
    assert!(e.to_string().contains("create_public_rooms"));
    w.admin
        .admin_entitle(
            Some(alice.user()),
            None,
            &[Entitlement::CreatePublicRooms],
            &[],
        )
        .await
        .unwrap();
    let e = alice
        .create_room(
            RoomSettings {
                discoverable: false,
                ..public.clone()
            },
            &[],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("public room is discoverable"), "{e}");
    let room = alice.create_room(public, &[]).await.unwrap();
    // listed and joinable by anyone of the firm
    let listed = bob.room_directory().await.unwrap();
    assert!(listed.iter().any(|r| r.room == room));
    assert_eq!(bob.resolve_public_room("rates-chat").await.unwrap(), room);
    bob.join(&room).await.unwrap();
    bob.send_text(&room, "joined").await.unwrap();

    // read-only: only owners post; copy protection cannot be removed
    let ann = alice
        .create_room(
            RoomSettings {
                read_only: true,
                copy_protected: true,
                ..named("announcements")
            },
            &[bob.user().clone()],
        )
        .await
        .unwrap();
    alice.send_text(&ann, "dividend notice").await.unwrap();
    let e = bob.send_text(&ann, "me too").await.unwrap_err();
    assert!(
        e.to_string().contains("only owners") || e.to_string().contains("read-only"),
        "{e}"
    );
    let mut s = alice.room_state(&ann).await.unwrap().settings;
    s.copy_protected = false;
    let e = alice.set_settings(&ann, s).await.unwrap_err();
    assert!(
        e.to_string().contains("copy protection cannot be removed"),
        "{e}"
    );
    // joining a room that is not public is refused
    let e = carl.join(&ann).await.unwrap_err();
    assert!(
        e.code().is_some() || e.to_string().contains("public"),
        "{e}"
    );

    // max members, promote / demote
    let small = alice
        .create_room(
            RoomSettings {
                max_members: Some(2),
                ..named("pair")
            },
            &[bob.user().clone()],
        )
        .await
        .unwrap();
    let e = alice.add_member(&small, carl.user()).await.unwrap_err();
    assert!(e.to_string().contains("member limit"), "{e}");
    alice.promote(&small, bob.user()).await.unwrap();
    alice.demote(&small, bob.user()).await.unwrap();
    let e = alice.demote(&small, alice.user()).await.unwrap_err();
    assert!(e.to_string().contains("only owner"), "{e}");
    // an external room can be neither public nor discoverable
    let e = alice
        .create_room(
            RoomSettings {
                external: true,
                discoverable: true,
                ..named("ext")
            },
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("external room cannot be public or discoverable"),
        "{e}"
    );
}

#[tokio::test]
async fn entitlements_are_enforced_and_named() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let raw_alice = w.raw("alice").await;
    let mut mine = alice.my_entitlements().await.unwrap();
    mine.sort();
    assert_eq!(mine, vec![Entitlement::CreateRooms, Entitlement::SendFiles]);

    w.admin
        .admin_entitle(
            Some(alice.user()),
            None,
            &[],
            &[Entitlement::CreateRooms, Entitlement::SendFiles],
        )
        .await
        .unwrap();
    let e = alice
        .create_room(named("x"), &[bob.user().clone()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("entitlement"), "{e}");
    assert!(e.to_string().contains("create_rooms"), "{e}");
    // IMs need no entitlement
    let im = alice.im(bob.user()).await.unwrap();
    alice.send_text(&im, "hi").await.unwrap();
    // files: refused at the server
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b"term sheet").unwrap();
    let e = alice.send_file(&im, f.path()).await.unwrap_err();
    assert_eq!(e.code(), Some("entitlement"), "{e}");
    assert!(e.to_string().contains("send_files"), "{e}");
    // a patched client that relays a room creation to the KM gets no key
    let room = cloister_policy::room_id_from_random([7; 16]);
    let genesis = sign_statement(
        &raw_alice.keys,
        &Statement {
            room,
            seq: 0,
            prev: Fixed([0; 32]),
            actor: raw_alice.keys.device_id(),
            actor_user: raw_alice.user.clone(),
            ts: now_millis(),
            action: Action::Create {
                kind: RoomKind::Room,
                settings: named("side"),
                members: vec![bob.user().clone()],
            },
            connections: Vec::new(),
        },
    )
    .unwrap();
    let (st, body) = raw_alice
        .km(KmOp::RoomKeys {
            room,
            epochs: vec![0],
            log_from: 0,
            log: vec![genesis],
            certs: Vec::new(),
        })
        .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("entitlement")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("create_rooms"));

    // a group grant reaches its members; an admin's denial beats it
    w.admin
        .admin_group_set(
            "desk-heads",
            &[alice.user().clone(), bob.user().clone()],
            &[],
        )
        .await
        .unwrap();
    w.admin
        .admin_entitle(
            None,
            Some("desk-heads"),
            &[Entitlement::CreateRooms, Entitlement::ExternalChat],
            &[],
        )
        .await
        .unwrap();
    let a = alice.my_entitlements().await.unwrap();
    assert!(
        a.contains(&Entitlement::ExternalChat) && !a.contains(&Entitlement::CreateRooms),
        "{a:?}"
    );
    assert!(
        bob.my_entitlements()
            .await
            .unwrap()
            .contains(&Entitlement::ExternalChat)
    );
    // granted back: works again
    w.admin
        .admin_entitle(Some(alice.user()), None, &[Entitlement::CreateRooms], &[])
        .await
        .unwrap();
    alice
        .create_room(named("x"), &[bob.user().clone()])
        .await
        .unwrap();
    // only admins change entitlements
    let e = bob
        .admin_entitle(Some(bob.user()), None, &[Entitlement::Surveillance], &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_admin"), "{e}");
    assert!(
        audit_kinds(&w)
            .await
            .iter()
            .any(|(k, _)| k == "entitlements_changed")
    );
}

/// Taking a privileged entitlement away takes the role away at once, even
/// though the device's certificate still names it.
#[tokio::test]
async fn a_revoked_role_entitlement_stops_the_officer_at_once() {
    let w = World::new().await;
    let officer = w
        .user_with("olga", &[cloister_proto::km::Role::Compliance])
        .await;
    officer.retention_set("im", 30).await.unwrap();
    w.admin
        .admin_entitle(Some(officer.user()), None, &[], &[Entitlement::Compliance])
        .await
        .unwrap();
    let e = officer.retention_set("im", 30).await.unwrap_err();
    assert_eq!(e.code(), Some("role_revoked"), "{e}");
}

/// A patched client cannot sign what only the KM signs, nor post into a
/// locked room, nor join a room that is not public: the server and the KM
/// each refuse it on their own.
#[tokio::test]
async fn patched_clients_cannot_forge_controls() {
    let w = World::new().await;
    let owner = w.user("olive").await;
    let mallory = w.raw("mallory").await;
    let officer = w
        .user_with("cora", &[cloister_proto::km::Role::Compliance])
        .await;
    let room = owner
        .create_room(named("desk"), std::slice::from_ref(&mallory.user))
        .await
        .unwrap();
    let st = owner.room_state(&room).await.unwrap();
    let stmt = |actor, actor_user: cloister_proto::UserId, action| Statement {
        room,
        seq: st.seq + 1,
        prev: Fixed(st.head),
        actor,
        actor_user,
        ts: now_millis(),
        action,
        connections: Vec::new(),
    };
    let post = |path: String, entry| {
        let w = &w;
        let mallory = &mallory;
        async move {
            w.http
                .post(format!("{}{path}", w.stack.server_url))
                .bearer_auth(mallory.token().await)
                .json(&AppendLog { entry })
                .send()
                .await
                .unwrap()
        }
    };
    // 1. an unlock / ban signed by a member's own device: policy refuses it
    let forged = sign_statement(
        &mallory.keys,
        &stmt(
            mallory.keys.device_id(),
            mallory.user.clone(),
            Action::Ban {
                user: owner.user().clone(),
                by: mallory.user.clone(),
                justification: "mine now".into(),
            },
        ),
    )
    .unwrap();
    let r = post(format!("/v1/rooms/{room}/log"), forged.clone()).await;
    let msg = expect_error(r, 403, "policy").await;
    assert!(msg.contains("only the tenant's KM"), "{msg}");
    let (st_km, b) = mallory
        .km(KmOp::RoomKeys {
            room,
            epochs: vec![0],
            log_from: st.seq + 1,
            log: vec![forged],
            certs: Vec::new(),
        })
        .await;
    assert_eq!(
        (st_km, b["error"].as_str()),
        (403, Some("bad_statement")),
        "{b}"
    );
    // 2. the same claiming to be the KM, signed with the device's key
    let body = serde_json::to_vec(&stmt(
        cloister_proto::room::KM_DEVICE,
        cloister_policy::km_user(&"acme".parse().unwrap()),
        Action::Ban {
            user: owner.user().clone(),
            by: mallory.user.clone(),
            justification: "x".into(),
        },
    ))
    .unwrap();
    let sig = mallory.keys.sign(cloister_crypto::signed::STATEMENT, &body);
    let claims_km = cloister_proto::room::SignedStatement {
        actor: cloister_proto::room::KM_DEVICE,
        body: cloister_proto::b64::Bytes(body),
        sig: Fixed(sig),
    };
    let r = post(format!("/v1/km/rooms/{room}/log"), claims_km.clone()).await;
    expect_error(r, 401, "bad_signature").await;
    let (s2, b2) = mallory
        .km(KmOp::RoomKeys {
            room,
            epochs: vec![0],
            log_from: st.seq + 1,
            log: vec![claims_km],
            certs: Vec::new(),
        })
        .await;
    assert_eq!(
        (s2, b2["error"].as_str()),
        (403, Some("bad_statement")),
        "{b2}"
    );
    // 3. posting into a locked room through the API: refused by the server
    officer.room_lock(&room, "case 7").await.unwrap();
    let locked = owner.room_state(&room).await.unwrap();
    let add = sign_statement(
        &mallory.keys,
        &Statement {
            room,
            seq: locked.seq + 1,
            prev: Fixed(locked.head),
            actor: mallory.keys.device_id(),
            actor_user: mallory.user.clone(),
            ts: now_millis(),
            action: Action::Leave,
            connections: Vec::new(),
        },
    )
    .unwrap();
    let r = post(format!("/v1/rooms/{room}/log"), add).await;
    let msg = expect_error(r, 403, "locked").await;
    assert!(msg.contains("case 7"), "{msg}");
    // 4. joining a room that is not public
    let private = owner.create_room(named("private"), &[]).await.unwrap();
    let p = owner.room_state(&private).await.unwrap();
    let join = sign_statement(
        &mallory.keys,
        &Statement {
            room: private,
            seq: p.seq + 1,
            prev: Fixed(p.head),
            actor: mallory.keys.device_id(),
            actor_user: mallory.user.clone(),
            ts: now_millis(),
            action: Action::Join,
            connections: Vec::new(),
        },
    )
    .unwrap();
    let r = post(format!("/v1/rooms/{private}/log"), join.clone()).await;
    let msg = expect_error(r, 403, "policy").await;
    assert!(msg.contains("public"), "{msg}");
    let (s3, b3) = mallory
        .km(KmOp::RoomKeys {
            room: private,
            epochs: vec![0],
            log_from: p.seq + 1,
            log: vec![join],
            certs: Vec::new(),
        })
        .await;
    assert_eq!(
        (s3, b3["error"].as_str()),
        (403, Some("bad_statement")),
        "{b3}"
    );
}

/// The KM's batch append (`POST /v1/km/log`, a barrier's evictions across
/// rooms) takes only statements the room's KM signed: a member's own
/// statement, one that claims the KM but is signed by a device, one for a
/// room of another tenant, an oversized or malformed batch are refused, and
/// a refused entry changes nothing while the rest of the batch goes on.
#[tokio::test]
async fn the_kms_batch_append_takes_only_the_kms_statements() {
    let w = World::new().await;
    let owner = w.user("olive").await;
    let mallory = w.raw("mallory").await;
    let room = owner
        .create_room(named("desk"), std::slice::from_ref(&mallory.user))
        .await
        .unwrap();
    let st = owner.room_state(&room).await.unwrap();
    let km_user = cloister_policy::km_user(&"acme".parse().unwrap());
    let evict = Action::Evict {
        user: owner.user().clone(),
        reason: "forged".into(),
    };
    let stmt = |actor, actor_user: cloister_proto::UserId| Statement {
        room,
        seq: st.seq + 1,
        prev: Fixed(st.head),
        actor,
        actor_user,
        ts: now_millis(),
        action: evict.clone(),
        connections: Vec::new(),
    };
    // a member's own device
    let own = sign_statement(
        &mallory.keys,
        &stmt(mallory.keys.device_id(), mallory.user.clone()),
    )
    .unwrap();
    // claims to be the KM, signed by the device
    let body = serde_json::to_vec(&stmt(cloister_proto::room::KM_DEVICE, km_user.clone())).unwrap();
    let claims_km = SignedStatement {
        actor: cloister_proto::room::KM_DEVICE,
        body: cloister_proto::b64::Bytes(body.clone()),
        sig: Fixed(mallory.keys.sign(cloister_crypto::signed::STATEMENT, &body)),
    };
    // signed by another firm's KM key
    let other_km = cloister_crypto::KmSigner::generate().unwrap();
    let foreign = cloister_crypto::signed::sign_statement_km(
        &other_km,
        &stmt(cloister_proto::room::KM_DEVICE, km_user),
    )
    .unwrap();
    let post = |body: serde_json::Value| {
        let w = &w;
        async move {
            w.http
                .post(format!("{}/v1/km/log", w.stack.server_url))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let codes = |out: &KmAppendBatchResponse| -> Vec<String> {
        out.results
            .iter()
            .map(|o| o.error.as_ref().map_or("ok".into(), |e| e.error.clone()))
            .collect()
    };
    // a refused entry refuses the room's later entries
    let r = post(serde_json::json!(KmAppendBatch {
        entries: vec![own.clone(), claims_km.clone()]
    }))
    .await;
    assert_eq!(r.status(), 200);
    let out: KmAppendBatchResponse = r.json().await.unwrap();
    assert_eq!(codes(&out), ["not_actor", "after_refused"], "{out:?}");
    let r = post(serde_json::json!(KmAppendBatch {
        entries: vec![claims_km.clone(), foreign.clone()]
    }))
    .await;
    let out: KmAppendBatchResponse = r.json().await.unwrap();
    assert_eq!(codes(&out), ["bad_signature", "after_refused"], "{out:?}");
    let r = post(serde_json::json!(KmAppendBatch {
        entries: vec![foreign.clone()]
    }))
    .await;
    let out: KmAppendBatchResponse = r.json().await.unwrap();
    assert_eq!(codes(&out), ["bad_signature"], "{out:?}");
    // a forged statement ends the reading of the batch: another room's
    // entry after it is not even checked
    let second = owner.create_room(named("second"), &[]).await.unwrap();
    let s2 = owner.room_state(&second).await.unwrap();
    let body2 = serde_json::to_vec(&Statement {
        room: second,
        seq: s2.seq + 1,
        prev: Fixed(s2.head),
        ..stmt(
            cloister_proto::room::KM_DEVICE,
            cloister_policy::km_user(&"acme".parse().unwrap()),
        )
    })
    .unwrap();
    let later = SignedStatement {
        actor: cloister_proto::room::KM_DEVICE,
        body: cloister_proto::b64::Bytes(body2.clone()),
        sig: Fixed(
            mallory
                .keys
                .sign(cloister_crypto::signed::STATEMENT, &body2),
        ),
    };
    let r = post(serde_json::json!(KmAppendBatch {
        entries: vec![foreign.clone(), later]
    }))
    .await;
    let out: KmAppendBatchResponse = r.json().await.unwrap();
    let mut got = codes(&out);
    got.sort();
    assert_eq!(got, ["after_forged", "bad_signature"], "{out:?}");
    assert_eq!(owner.room_state(&second).await.unwrap().seq, s2.seq);
    assert!(out.results.iter().all(|o| o.head.is_none()));
    // nothing was appended
    let after = owner.room_state(&room).await.unwrap();
    assert_eq!((after.seq, after.head), (st.seq, st.head));
    assert!(after.members.contains(owner.user()));
    // too many, malformed, unknown fields
    let many = vec![own.clone(); cloister_proto::limits::MAX_KM_BATCH + 1];
    let r = post(serde_json::json!(KmAppendBatch { entries: many })).await;
    expect_error(r, 413, "too_large").await;
    let r = post(serde_json::json!({"entries": "nope"})).await;
    assert_eq!(r.status(), 400);
    let r = post(serde_json::json!({"entries": [], "room": room.to_hex()})).await;
    assert_eq!(r.status(), 400);
    let r = post(serde_json::json!({"entries": []})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(owner.room_state(&room).await.unwrap().seq, st.seq);
}

/// DLP: a blocking policy stops a message or a file before it is sealed
/// or uploaded, naming the policy; a patched client could skip it, so the
/// policies never leave the firm (signed by the KM, fetched from it).
#[tokio::test]
async fn dlp_blocks_before_sealing_and_names_the_policy() {
    use cloister_proto::controls::{DlpAction, DlpPolicy};
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let officer = w
        .user_with("cora", &[cloister_proto::km::Role::Compliance])
        .await;
    let room = alice
        .create_room(named("desk"), &[bob.user().clone()])
        .await
        .unwrap();
    let policy = DlpPolicy {
        id: "mna-falcon".into(),
        name: "Project Falcon (M&A)".into(),
        action: DlpAction::Block,
        keywords: vec!["project falcon".into()],
        patterns: vec![r"\b\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}\b".into()],
        file_types: vec!["exe".into()],
        max_file_bytes: None,
        message: "deal names stay off chat".into(),
        active: true,
    };
    // only admins and compliance officers set policies; bad ones are refused
    let e = alice.dlp_put(policy.clone()).await.unwrap_err();
    assert_eq!(e.code(), Some("not_admin"), "{e}");
    let e = officer
        .dlp_put(DlpPolicy {
            patterns: vec!["(".into()],
            ..policy.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_policy"), "{e}");
    officer.dlp_put(policy.clone()).await.unwrap();

    let e = alice
        .send_text(&room, "Project FALCON signs Friday")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("dlp_blocked"), "{e}");
    assert!(
        e.to_string().contains("Project Falcon (M&A)")
            && e.to_string().contains("deal names stay off chat"),
        "{e}"
    );
    let e = alice
        .send_text(&room, "card 4111 1111 1111 1111")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("dlp_blocked"), "{e}");
    let f = w.dir.path().join("setup.exe");
    std::fs::write(&f, b"MZ").unwrap();
    let e = alice.send_file(&room, &f).await.unwrap_err();
    assert_eq!(e.code(), Some("dlp_blocked"), "{e}");
    alice.send_text(&room, "falconry weekend").await.unwrap();
    // nothing blocked reached the server
    let got = bob.read(&room, 10, None).await.unwrap();
    assert_eq!(got.len(), 1);
    // the server never holds the policies
    for (path, bytes) in common::files_under(&w.dir.path().join("server")) {
        assert!(
            !common::contains(&bytes, b"project falcon"),
            "{}",
            path.display()
        );
    }
    // disabled (never deleted): allowed again, and audited
    officer
        .dlp_put(DlpPolicy {
            active: false,
            ..policy
        })
        .await
        .unwrap();
    // (a device uses the set it fetched for up to a minute; a new one
    // fetches it at once)
    let alice2 = w.device_of(alice.user()).await;
    alice2
        .send_text(&room, "Project Falcon is public now")
        .await
        .unwrap();
    let pols = alice.dlp_policies().await.unwrap();
    assert_eq!(pols.len(), 1);
    assert!(!pols[0].active);
    assert_eq!(
        audit_kinds(&w)
            .await
            .iter()
            .filter(|(k, _)| k == "dlp_changed")
            .count(),
        2
    );
}
