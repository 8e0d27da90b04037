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
use cloister_proto::room::{Action, RoomKind, RoomSettings, Statement};
use cloister_proto::server::AppendLog;
use common::{World, expect_error};

fn named(name: &str) -> RoomSettings {
    RoomSettings {
        name: name.into(),
        ..Default::default()
    }
}

async fn audit_kinds(w: &World) -> Vec<(String, String)> {
    w.admin
        .audit_list(0, 10_000, None, None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r, b)| {
            (
                r.event.kind().to_owned(),
                String::from_utf8_lossy(&b).into_owned(),
            )
        })
        .collect()
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
        .unwrap();
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

/// A barrier added while two walled people share a room: until they are
/// separated neither gets a key at the KM nor has a message routed.
#[tokio::test]
async fn a_new_barrier_stops_keys_and_routing_in_a_shared_room() {
    let w = World::new().await;
    let rita = w.user("rita").await;
    let tom = w.user("tom").await;
    let sam = w.user("sam").await;
    let room = sam
        .create_room(named("desk"), &[rita.user().clone(), tom.user().clone()])
        .await
        .unwrap();
    tom.send_text(&room, "before the wall").await.unwrap();
    w.admin
        .admin_group_set("research", &[rita.user().clone()], &[])
        .await
        .unwrap();
    w.admin
        .admin_group_set("trading", &[tom.user().clone()], &[])
        .await
        .unwrap();
    w.admin
        .barrier_add("research", "trading", "wall")
        .await
        .unwrap();
    let tom2 = w.device_of(tom.user()).await; // no cached keys
    let e = tom2.read(&room, 10, None).await.unwrap_err();
    assert_eq!(e.code(), Some("barrier"), "{e}");
    let e = tom.send_text(&room, "after the wall").await.unwrap_err();
    assert_eq!(e.code(), Some("barrier"), "{e}");
    // sam is walled from no one
    sam.send_text(&room, "sam still talks").await.unwrap();
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
        },
    )
    .unwrap();
    let (st, body) = raw_alice
        .km(KmOp::RoomKeys {
            room,
            epochs: vec![0],
            log_from: 0,
            log: vec![genesis],
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
