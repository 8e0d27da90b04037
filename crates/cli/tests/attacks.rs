//! Attacks by an insider with a patched client and by an operator with the
//! database files, each against the real KM, server and vault over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::ClientError;
use cloister_crypto::signed::sign_statement;
use cloister_proto::b64::Fixed;
use cloister_proto::km::KmOp;
use cloister_proto::now_millis;
use cloister_proto::room::{Action, RoomKind, RoomSettings, Statement};
use cloister_proto::server::AppendLog;
use common::*;

/// A third user creates a group room at the id of alice and bob's 1:1
/// conversation, with both of them in it, to read what alice sends bob.
#[tokio::test]
async fn a_third_user_cannot_squat_a_one_to_one_conversation() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let mallory = w.raw("mallory").await;
    let room = cloister_policy::im_room_id(alice.user(), bob.user());
    let genesis = sign_statement(
        &mallory.keys,
        &Statement {
            room,
            seq: 0,
            prev: Fixed([0; 32]),
            actor: mallory.keys.device_id(),
            actor_user: mallory.user.clone(),
            ts: now_millis(),
            action: Action::Create {
                kind: RoomKind::Room,
                settings: RoomSettings::default(),
                members: vec![alice.user().clone(), bob.user().clone()],
            },
        },
    )
    .unwrap();

    // 1. the server refuses it
    let r = w
        .http
        .post(format!("{}/v1/rooms/{room}/log", w.stack.server_url))
        .bearer_auth(mallory.token().await)
        .json(&AppendLog {
            entry: genesis.clone(),
        })
        .send()
        .await
        .unwrap();
    let msg = expect_error(r, 403, "policy").await;
    assert!(msg.contains("1:1 id space"), "{msg}");

    // 2. so does the KM when mallory relays the forged log herself
    let (st, b) = mallory
        .km(KmOp::RoomKeys {
            room,
            epochs: vec![0],
            log_from: 0,
            log: vec![genesis.clone()],
        })
        .await;
    assert_eq!(
        (st, b["error"].as_str()),
        (403, Some("bad_statement")),
        "{b}"
    );
    assert!(
        b["message"].as_str().unwrap().contains("1:1 id space"),
        "{b}"
    );

    // 3. an operator writes the squatted room into the server's database:
    //    alice's client replays the log, refuses it, and sends nothing.
    let state = cloister_policy::RoomState {
        room,
        tenant: "acme".parse().unwrap(),
        kind: RoomKind::Room,
        settings: RoomSettings::default(),
        epoch: 0,
        seq: 0,
        head: cloister_crypto::signed::entry_hash(&genesis),
        owners: [mallory.user.clone()].into(),
        members: [
            mallory.user.clone(),
            alice.user().clone(),
            bob.user().clone(),
        ]
        .into(),
        grants: Default::default(),
    };
    let store = cloister_store::SqliteServerStore::open(&w.dir.path().join("server/server.db"))
        .await
        .unwrap();
    use cloister_store::ServerStore;
    store
        .append_log(
            &room.to_hex(),
            &cloister_store::LogRow {
                seq: 0,
                entry: serde_json::to_vec(&genesis).unwrap(),
                hash: state.head.to_vec(),
            },
            &serde_json::to_vec(&state).unwrap(),
            &state
                .members
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let e = alice.im(bob.user()).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Policy(cloister_policy::PolicyError::ImSpace(r)) if *r == room),
        "{e}"
    );
    let e = alice.send_text(&room, "for bob only").await.unwrap_err();
    assert!(matches!(e, ClientError::Policy(_)), "{e}");
    // nothing reached the server for that room
    let r = w
        .http
        .get(format!("{}/v1/rooms/{room}/messages", w.stack.server_url))
        .bearer_auth(mallory.token().await)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: cloister_proto::server::HistoryPage = r.json().await.unwrap();
    assert!(page.messages.is_empty());
}

/// Certificates (user names, roles) and tenant names are not for strangers.
#[tokio::test]
async fn metadata_stays_within_the_tenant() {
    let w = World::new().await;
    let alice = w.raw("alice").await;
    let globex = w.foreign("globex").await;
    let cert_of = |token: String, device: cloister_proto::DeviceId| {
        w.http
            .get(format!("{}/v1/devices/{device}", w.stack.server_url))
            .bearer_auth(token)
            .send()
    };
    // a colleague may fetch alice's certificate
    let r = cert_of(w.raw("bob").await.token().await, alice.keys.device_id())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // another firm's device gets the same answer as for a device that does not exist
    let r = cert_of(globex.device.token().await, alice.keys.device_id())
        .await
        .unwrap();
    let msg = expect_error(r, 404, "unknown_device").await;
    assert!(!msg.contains("alice"), "{msg}");
    let r = cert_of(
        globex.device.token().await,
        cloister_proto::DeviceId([9; 16]),
    )
    .await
    .unwrap();
    expect_error(r, 404, "unknown_device").await;

    // without a session nobody learns which tenants exist: a wrong key and
    // a missing tenant are answered alike, and only the right key matches
    let pin = |tenant: &str, key: [u8; 32]| {
        w.http
            .post(format!("{}/v1/tenants/{tenant}/pin", w.stack.server_url))
            .json(&cloister_proto::server::PinCheck {
                km_sign_pk: Fixed(key),
            })
            .send()
    };
    let answer = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    let wrong_key = answer(pin("acme", [1; 32]).await.unwrap()).await;
    let missing = answer(pin("initech", [1; 32]).await.unwrap()).await;
    assert_eq!(wrong_key, missing);
    assert_eq!(wrong_key, r#"{"pinned":false}"#);
    let right = answer(pin("acme", w.stack.km.info().sign_pk.0).await.unwrap()).await;
    assert_eq!(right, r#"{"pinned":true}"#);
    // the old, open lookup is gone
    let r = w
        .http
        .get(format!("{}/v1/tenants/acme", w.stack.server_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
