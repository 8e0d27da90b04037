//! Security properties, against a real KM and server over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::ClientError;
use cloister_crypto::signed::sign_statement;
use cloister_proto::b64::Fixed;
use cloister_proto::km::KmOp;
use cloister_proto::room::{Action, RoomKind, RoomSettings, Statement};
use cloister_proto::server::Content;
use cloister_proto::{RoomId, now_millis};
use common::*;

fn code(e: &ClientError) -> &str {
    e.code().unwrap_or("")
}

#[tokio::test]
async fn server_storage_holds_no_plaintext() {
    let w = World::new().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let room = alice
        .create_room(
            RoomSettings {
                name: "desk".into(),
                ..Default::default()
            },
            &[bob.user().clone()],
        )
        .await
        .unwrap();
    let texts = [
        "SECRET-ALPHA buy 100 ACME at 12.5",
        "SECRET-BRAVO client Harbourview",
        "SECRET-CHARLIE ünïcödé текст",
    ];
    for t in texts {
        alice.send_text(&room, t).await.unwrap();
    }
    let im = bob.im(alice.user()).await.unwrap();
    bob.send_text(&im, "SECRET-DELTA private note")
        .await
        .unwrap();
    let f = w.dir.path().join("doc.txt");
    let body = "SECRET-ECHO attachment line\n".repeat(10_000);
    std::fs::write(&f, &body).unwrap();
    alice.send_file(&room, &f).await.unwrap();
    // everything arrives intact for the recipient
    let got = bob.read(&room, 50, None).await.unwrap();
    assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 4);

    let files = files_under(&w.dir.path().join("server"));
    assert!(
        files
            .iter()
            .any(|(p, _)| p.extension().is_some_and(|e| e == "db")),
        "scanned the database"
    );
    let mut needles: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
    needles.extend([
        &b"SECRET-DELTA"[..],
        b"SECRET-ECHO",
        b"SECRET-",
        "текст".as_bytes(),
    ]);
    for (path, data) in &files {
        for n in &needles {
            assert!(
                !contains(data, n),
                "{} contains plaintext {:?}",
                path.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
    // and the KM's storage holds no plaintext either, nor unwrapped keys in a readable form
    for (path, data) in files_under(&w.dir.path().join("km")) {
        for n in &needles {
            assert!(!contains(&data, n), "{} contains plaintext", path.display());
        }
    }
}

#[tokio::test]
async fn key_release_refusals() {
    let w = World::new().await;
    let (alice, bob, carol, dave) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
        w.user("dave").await,
    );
    let room = alice
        .create_room(
            RoomSettings::default(),
            &[bob.user().clone(), carol.user().clone()],
        )
        .await
        .unwrap();
    alice.send_text(&room, "epoch zero").await.unwrap();

    // a non-member
    let e = dave.room_keys(&room, &[0]).await.unwrap_err();
    assert_eq!(code(&e), "not_entitled", "{e}");

    // a removed member is refused the new epoch, keeps the old one
    alice.remove_member(&room, bob.user()).await.unwrap();
    let e = bob.room_keys(&room, &[1]).await.unwrap_err();
    assert_eq!(code(&e), "not_entitled", "{e}");
    bob.clear_key_cache().unwrap();
    assert!(bob.room_keys(&room, &[0]).await.is_ok());

    // an epoch that does not exist yet
    let e = alice.room_keys(&room, &[7]).await.unwrap_err();
    assert_eq!(code(&e), "not_entitled");

    // a disabled user
    w.admin.admin_disable_user(carol.user()).await.unwrap();
    carol.clear_key_cache().unwrap();
    let e = carol.room_keys(&room, &[1]).await.unwrap_err();
    assert_eq!(code(&e), "user_disabled", "{e}");
    let e = carol.read(&room, 5, None).await.unwrap_err();
    assert_eq!(
        code(&e),
        "user_disabled",
        "server refuses a disabled user: {e}"
    );

    // a revoked device, while another device of the same user still works
    let alice2 = w.device_of(alice.user()).await;
    w.admin.admin_revoke_device(&alice.device()).await.unwrap();
    alice.clear_key_cache().unwrap();
    let e = alice.room_keys(&room, &[1]).await.unwrap_err();
    assert_eq!(code(&e), "device_revoked", "{e}");
    let e = alice
        .send_text(&room, "from a revoked device")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "device_revoked", "{e}");
    assert!(alice2.room_keys(&room, &[0, 1]).await.is_ok());

    // a disabled user cannot be given a new enrolment code
    let e = w
        .admin
        .admin_add_user(carol.user(), false)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "user_disabled", "{e}");

    // a new code for an existing admin never demotes them
    w.admin
        .admin_add_user(&World::uid("admin"), false)
        .await
        .unwrap();
    let users = w.admin.admin_list_users().await.unwrap();
    let admin = users
        .iter()
        .find(|u| u.user.as_str() == "admin@acme")
        .unwrap();
    assert!(admin.roles.contains(&cloister_proto::km::Role::Admin));

    // only admins run admin operations
    let e = dave
        .admin_add_user(&World::uid("eve"), true)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "not_admin");
}

#[tokio::test]
async fn view_history_off_newcomer_gets_no_earlier_epoch_and_new_device_reads_history() {
    let w = World::new().await;
    let (alice, bob, dave) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("dave").await,
    );
    let room = alice
        .create_room(
            RoomSettings {
                view_history: false,
                ..Default::default()
            },
            &[bob.user().clone()],
        )
        .await
        .unwrap();
    alice.send_text(&room, "before dave").await.unwrap();
    let st = alice.add_member(&room, dave.user()).await.unwrap();
    assert_eq!(
        st.epoch, 1,
        "adding a member starts an epoch when history is hidden"
    );
    alice.send_text(&room, "after dave").await.unwrap();
    assert_eq!(
        code(&dave.room_keys(&room, &[0]).await.unwrap_err()),
        "not_entitled"
    );
    let seen = dave.read(&room, 10, None).await.unwrap();
    let texts: Vec<String> = seen
        .iter()
        .filter_map(|r| match r {
            Ok(r) => match &r.content {
                Content::Text { text } => Some(text.clone()),
                _ => None,
            },
            Err(_) => None,
        })
        .collect();
    assert_eq!(texts, vec!["after dave".to_string()]);

    // bob's brand-new device reads both epochs
    let bob2 = w.device_of(bob.user()).await;
    let all = bob2.read(&room, 10, None).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|r| r.is_ok()));
}

/// A statement the server would never accept, stored directly in its
/// database (a malicious operator), must still be refused by the KM.
#[tokio::test]
async fn km_rejects_forged_membership_even_if_server_stored_it() {
    let w = World::new().await;
    let alice = w.raw("alice").await;
    let mallory = w.raw("mallory").await;
    let bob = w.raw("bob").await;
    let room = RoomId([42; 16]);
    let genesis = Statement {
        room,
        seq: 0,
        prev: Fixed([0; 32]),
        actor: alice.keys.device_id(),
        actor_user: alice.user.clone(),
        ts: now_millis(),
        action: Action::Create {
            kind: RoomKind::Room,
            settings: RoomSettings::default(),
            members: vec![bob.user.clone()],
        },
        connections: Vec::new(),
    };
    let g = sign_statement(&alice.keys, &genesis).unwrap();
    let head = cloister_crypto::signed::entry_hash(&g);
    let keys = |log: Vec<_>| KmOp::RoomKeys {
        room,
        epochs: vec![0],
        log_from: 0,
        log,
        certs: Vec::new(),
    };

    // 1. mallory (not a member) adds herself: actor without rights
    let add_self = Statement {
        seq: 1,
        prev: Fixed(head),
        actor: mallory.keys.device_id(),
        actor_user: mallory.user.clone(),
        action: Action::Add {
            user: mallory.user.clone(),
        },
        ..genesis.clone()
    };
    let forged = sign_statement(&mallory.keys, &add_self).unwrap();
    let (st, b) = mallory.km(keys(vec![g.clone(), forged])).await;
    assert_eq!(
        (st, b["error"].as_str()),
        (403, Some("bad_statement")),
        "{b}"
    );
    assert!(
        b["message"].as_str().unwrap().contains("not a member"),
        "{b}"
    );

    // 2. a statement claiming to be alice's but signed by mallory: bad signature
    let claim = Statement {
        actor: alice.keys.device_id(),
        actor_user: alice.user.clone(),
        ..add_self.clone()
    };
    let mut bad_sig = sign_statement(&mallory.keys, &claim).unwrap();
    bad_sig.actor = alice.keys.device_id();
    let (st, b) = mallory.km(keys(vec![g.clone(), bad_sig])).await;
    assert_eq!(
        (st, b["error"].as_str()),
        (403, Some("bad_statement")),
        "{b}"
    );
    assert!(
        b["message"].as_str().unwrap().contains("bad signature"),
        "{b}"
    );

    // 3. a broken chain: alice's real statement with a wrong prev hash
    let broken = Statement {
        seq: 1,
        prev: Fixed([7; 32]),
        action: Action::Add {
            user: mallory.user.clone(),
        },
        ..genesis.clone()
    };
    let broken = sign_statement(&alice.keys, &broken).unwrap();
    let (st, b) = mallory.km(keys(vec![g.clone(), broken])).await;
    assert_eq!(
        (st, b["error"].as_str()),
        (403, Some("bad_statement")),
        "{b}"
    );
    assert!(
        b["message"].as_str().unwrap().contains("chain broken"),
        "{b}"
    );

    // Now a malicious server really stores the forged entry and serves it:
    // write the room straight into its database, bypassing its checks.
    let store = cloister_store::SqlServerStore::open(&cloister_store::sqlite_url(
        &w.dir.path().join("server/server.db"),
    ))
    .await
    .unwrap();
    use cloister_store::RoomLogStore;
    let row = |seq, e: &cloister_proto::room::SignedStatement| cloister_store::LogRow {
        seq,
        entry: serde_json::to_vec(e).unwrap(),
        hash: cloister_crypto::signed::entry_hash(e).to_vec(),
    };
    store
        .append_log(&room, None, &[row(0, &g)], b"{}", &[])
        .await
        .unwrap();
    let forged = sign_statement(&mallory.keys, &add_self).unwrap();
    store
        .append_log(&room, Some(0), &[row(1, &forged)], b"{}", &[])
        .await
        .unwrap();
    // mallory relays the server's log to the KM: still refused, nothing stored at the KM
    let (st, _) = mallory.km(keys(vec![g.clone(), forged])).await;
    assert_eq!(st, 403);
    // bob, a real member, gets his key with the genuine genesis only
    let (st, b) = bob.km(keys(vec![g.clone()])).await;
    assert_eq!(st, 200, "{b}");
    // and the KM detects a rewritten history (fork) afterwards
    let other_genesis = sign_statement(
        &alice.keys,
        &Statement {
            ts: 1,
            ..genesis.clone()
        },
    )
    .unwrap();
    let (st, b) = bob.km(keys(vec![other_genesis])).await;
    assert_eq!((st, b["error"].as_str()), (409, Some("log_fork")), "{b}");
}

#[tokio::test]
async fn tampered_replayed_readdressed_and_forged_messages_are_rejected() {
    let w = World::new().await;
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let room = alice
        .create_room(
            RoomSettings::default(),
            &[bob.user().clone(), carol.user().clone()],
        )
        .await
        .unwrap();
    let other = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    let env = alice
        .seal(
            &room,
            &Content::Text {
                text: "original".into(),
            },
        )
        .await
        .unwrap();
    alice.post_envelope(&room, &env).await.unwrap();

    // replay
    let e = alice.post_envelope(&room, &env).await.unwrap_err();
    assert_eq!(code(&e), "duplicate_message", "{e}");
    // re-addressed to another room
    let e = alice.post_envelope(&other, &env).await.unwrap_err();
    assert_eq!(code(&e), "wrong_room", "{e}");
    // tampered ciphertext
    let mut t = alice
        .seal(
            &room,
            &Content::Text {
                text: "tamper me".into(),
            },
        )
        .await
        .unwrap();
    t.ciphertext.0[3] ^= 0x40;
    assert_eq!(
        code(&alice.post_envelope(&room, &t).await.unwrap_err()),
        "bad_signature"
    );
    // bob forwards alice's envelope as if it were his own: the header names
    // alice's device (refused before its signature is even checked)
    let fresh = alice
        .seal(
            &room,
            &Content::Text {
                text: "mine".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        code(&bob.post_envelope(&room, &fresh).await.unwrap_err()),
        "not_sender"
    );
    // bob forges a message naming alice as sender, signed with his own key
    let mut h = cloister_crypto::message::peek_header(&fresh).unwrap();
    h.device = bob.device();
    h.id = cloister_proto::MessageId([9; 16]);
    let forged_hdr = serde_json::to_vec(&h).unwrap();
    let mut forged = bob
        .seal(
            &room,
            &Content::Text {
                text: "forged".into(),
            },
        )
        .await
        .unwrap();
    forged.header = forged_hdr.into();
    assert_eq!(
        code(&bob.post_envelope(&room, &forged).await.unwrap_err()),
        "not_sender"
    );
    // ... or naming himself, over a header his signature does not cover
    h.sender = bob.user().clone();
    forged.header = serde_json::to_vec(&h).unwrap().into();
    assert_eq!(
        code(&bob.post_envelope(&room, &forged).await.unwrap_err()),
        "bad_signature"
    );
    // ... or with a header that is not one
    forged.header = b"{not a header".to_vec().into();
    assert_eq!(
        code(&bob.post_envelope(&room, &forged).await.unwrap_err()),
        "bad_header"
    );

    // A malicious server injects a replayed copy, a tampered copy and a
    // re-addressed copy straight into storage: the client flags each one.
    use cloister_store::ServerStore;
    let store = cloister_store::SqlServerStore::open(&cloister_store::sqlite_url(
        &w.dir.path().join("server/server.db"),
    ))
    .await
    .unwrap();
    let mk = |id: &str, room: &RoomId, e: &cloister_proto::server::Envelope| {
        cloister_store::NewMessage {
            room: room.to_hex(),
            msg_id: id.into(),
            epoch: 0,
            device: alice.device().to_hex(),
            ts: now_millis(),
            header: e.header.0.clone(),
            ciphertext: e.ciphertext.0.clone(),
            sig: e.sig.0.to_vec(),
        }
    };
    let mut tampered = env.clone();
    tampered.ciphertext.0[0] ^= 1;
    let moved = bob
        .seal(
            &other,
            &Content::Text {
                text: "for the other room".into(),
            },
        )
        .await
        .unwrap();
    store
        .insert_messages(&[
            mk("x1", &room, &env),
            mk("x2", &room, &tampered),
            mk("x3", &room, &moved),
        ])
        .await
        .unwrap();
    let got = carol.read(&room, 10, None).await.unwrap();
    assert_eq!(got.len(), 4);
    assert!(got[0].is_ok());
    let errs: Vec<String> = got[1..]
        .iter()
        .map(|r| r.as_ref().unwrap_err().to_string())
        .collect();
    assert!(errs[0].contains("replayed"), "{errs:?}");
    assert!(errs[1].contains("forged or tampered"), "{errs:?}");
    assert!(errs[2].contains("re-addressed"), "{errs:?}");

    // Signatures are checked in batches: 24 posts at once, every third one
    // tampered. Each tampered one is refused, every other one is stored.
    let mut envs = Vec::new();
    for n in 0..24 {
        let mut e = alice
            .seal(
                &room,
                &Content::Text {
                    text: format!("batch {n}"),
                },
            )
            .await
            .unwrap();
        if n % 3 == 0 {
            e.ciphertext.0[0] ^= 1;
        }
        envs.push(e);
    }
    let results =
        futures_util::future::join_all(envs.iter().map(|e| alice.post_envelope(&room, e))).await;
    for (n, r) in results.iter().enumerate() {
        match r {
            Ok(_) => assert!(n % 3 != 0, "tampered message {n} was accepted"),
            Err(e) => assert_eq!((n % 3, code(e)), (0, "bad_signature"), "{e}"),
        }
    }
    let stored = carol.read(&room, 40, None).await.unwrap();
    assert_eq!(stored.iter().filter(|m| m.is_ok()).count(), 1 + 16);
}

#[tokio::test]
async fn server_refuses_what_policy_forbids() {
    let w = World::new().await;
    let (alice, bob, mallory) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("mallory").await,
    );
    let room = alice
        .create_room(
            RoomSettings {
                read_only: true,
                ..Default::default()
            },
            &[bob.user().clone()],
        )
        .await
        .unwrap();
    // a non-owner cannot post in a read-only room
    assert_eq!(
        code(&bob.send_text(&room, "hi").await.unwrap_err()),
        "read_only"
    );
    // a non-member cannot see, post or upload
    assert_eq!(
        code(&mallory.read(&room, 5, None).await.unwrap_err()),
        "no_such_room"
    );
    assert!(mallory.room_state(&room).await.is_err());
    // non-owners cannot remove members; checked locally and by the server
    let e = bob.remove_member(&room, alice.user()).await.unwrap_err();
    assert!(e.to_string().contains("not an owner"), "{e}");
    // a user of another firm needs a connection (and an external room;
    // tests/cross_firm.rs)
    let e = alice
        .add_member(&room, &"zed@otherbank".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(code(&e), "not_connected", "{e}");
    let st = alice.room_state(&room).await.unwrap();
    assert_eq!(st.members.len(), 2, "nothing was written");
}
