//! Restart safety, attachments (limits, tampering, bounded streaming) and live delivery.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_cli::Stack;
use cloister_client::Client;
use cloister_proto::room::RoomSettings;
use cloister_proto::server::Content;
use common::*;
use std::time::Duration;

#[tokio::test]
async fn everything_acknowledged_survives_a_restart() {
    let w = World::new().await;
    let homes = tempfile::tempdir().unwrap();
    let alice = w.disk_user("alice", &homes.path().join("alice")).await;
    let bob = w.disk_user("bob", &homes.path().join("bob")).await;
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
    let mut sent = Vec::new();
    for i in 0..25 {
        sent.push(
            alice
                .send_text(&room, &format!("message {i}"))
                .await
                .unwrap()
                .0,
        );
    }
    alice.remove_member(&room, bob.user()).await.unwrap();
    alice.send_text(&room, "after removal").await.unwrap();
    let f = homes.path().join("f.bin");
    std::fs::write(&f, vec![9u8; 200_000]).unwrap();
    let (_, fseq) = alice.send_file(&room, &f).await.unwrap();

    // Crash both services (abort, no graceful drain) and start them again on the same ports.
    let World {
        dir,
        stack,
        admin,
        http,
    } = w;
    let (km_addr, server_addr) = (stack.km_addr, stack.server_addr);
    stack.stop().await;
    drop((alice, bob, admin));
    let mut o = opts();
    o.km_addr = km_addr;
    o.server_addr = server_addr;
    let stack = Stack::start(dir.path(), o).await.unwrap();
    assert!(
        stack.admin_code.is_none(),
        "the KM reopened, not re-initialised"
    );

    // Devices reopen from disk; keys come from the leased cache or the KM.
    let alice = Client::open(http.clone(), &homes.path().join("alice"), b"pw").unwrap();
    alice.clear_key_cache().unwrap();
    let got = alice.read(&room, 100, None).await.unwrap();
    let ids: Vec<_> = got.iter().map(|r| r.as_ref().unwrap().id).collect();
    assert_eq!(got.len(), 27);
    assert_eq!(&ids[..25], &sent[..]);
    let file = got
        .iter()
        .find_map(|r| r.as_ref().ok().filter(|m| m.seq == fseq))
        .unwrap();
    let out = homes.path().join("out.bin");
    alice.get_file(&file.content, &out).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), vec![9u8; 200_000]);
    // the removal survived too: bob is still refused the new epoch
    let bob = Client::open(http.clone(), &homes.path().join("bob"), b"pw").unwrap();
    bob.clear_key_cache().unwrap();
    assert_eq!(
        bob.room_keys(&room, &[1]).await.unwrap_err().code(),
        Some("not_entitled")
    );
    // a wrong passphrase does not open the keystore, and says so
    let e = Client::open(http, &homes.path().join("bob"), b"wrong").unwrap_err();
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    stack.stop().await;
}

#[tokio::test]
async fn attachments_limits_tampering_and_no_partial_output() {
    let mut o = opts();
    o.server_config.max_attachment = 300_000;
    let w = World::with(o).await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // too large for this server: 413, nothing left behind
    let big = tmp.path().join("big.bin");
    std::fs::write(&big, vec![1u8; 400_000]).unwrap();
    let e = alice.send_file(&room, &big).await.unwrap_err();
    assert_eq!(e.code(), Some("too_large"), "{e}");
    let blobs = w.dir.path().join("server/blobs");
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "no partial blob remains"
    );
    assert!(
        bob.read(&room, 10, None).await.unwrap().is_empty(),
        "no message was sent"
    );

    // a file that is not there, a directory
    assert!(matches!(
        alice.send_file(&room, &tmp.path().join("missing")).await,
        Err(cloister_client::ClientError::Input(_))
    ));
    assert!(matches!(
        alice.send_file(&room, tmp.path()).await,
        Err(cloister_client::ClientError::Input(_))
    ));

    // a good file, then the stored ciphertext is altered by the operator
    let ok = tmp.path().join("ok.bin");
    let data: Vec<u8> = (0..250_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&ok, &data).unwrap();
    let (_, seq) = alice.send_file(&room, &ok).await.unwrap();
    let msg = bob
        .read(&room, 10, None)
        .await
        .unwrap()
        .into_iter()
        .find_map(|r| r.ok().filter(|m| m.seq == seq))
        .unwrap();
    let out = tmp.path().join("copy.bin");
    assert_eq!(bob.get_file(&msg.content, &out).await.unwrap(), 250_000);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let Content::File { blob, .. } = &msg.content else {
        panic!()
    };
    let path = blobs.join(blob);
    let mut stored = std::fs::read(&path).unwrap();
    stored[70_000] ^= 1;
    std::fs::write(&path, &stored).unwrap();
    let out2 = tmp.path().join("copy2.bin");
    let e = bob.get_file(&msg.content, &out2).await.unwrap_err();
    assert!(e.to_string().contains("altered"), "{e}");
    assert!(!out2.exists(), "nothing is written when a check fails");
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("part"))
    );
    // truncated by the operator
    std::fs::write(&path, &stored[..100_000]).unwrap();
    assert!(bob.get_file(&msg.content, &out2).await.is_err());
    assert!(!out2.exists());
}

#[tokio::test]
async fn live_delivery_and_revocation_closes_the_stream() {
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
    let mut bob_stream = bob.connect_events().await.unwrap();
    let mut carol_stream = carol.connect_events().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    alice.send_text(&room, "live one").await.unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        bob.next_message(&mut bob_stream, &room),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(
        got.content,
        Content::Text {
            text: "live one".into()
        }
    );
    assert_eq!(&got.sender, alice.user());
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        carol.next_message(&mut carol_stream, &room),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(
        got.content,
        Content::Text {
            text: "live one".into()
        }
    );

    // revoking carol's device drops her live stream
    w.admin.admin_revoke_device(&carol.device()).await.unwrap();
    alice.send_text(&room, "after revocation").await.unwrap();
    let end = tokio::time::timeout(
        Duration::from_secs(5),
        carol.next_message(&mut carol_stream, &room),
    )
    .await
    .unwrap();
    assert!(
        matches!(end, Ok(None) | Err(_)),
        "stream closed, got {end:?}"
    );
    // bob still gets it
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        bob.next_message(&mut bob_stream, &room),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(
        got.content,
        Content::Text {
            text: "after revocation".into()
        }
    );
    // and a removed member stops receiving
    alice.remove_member(&room, bob.user()).await.unwrap();
    alice
        .send_text(&room, "bob should not see this")
        .await
        .unwrap();
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        bob.next_message(&mut bob_stream, &room),
    )
    .await;
    assert!(r.is_err(), "nothing delivered to a removed member");
}

#[tokio::test]
async fn history_pages_and_ims() {
    let w = World::new().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let im = alice.im(bob.user()).await.unwrap();
    assert_eq!(
        bob.im(alice.user()).await.unwrap(),
        im,
        "both sides find the same IM"
    );
    for i in 0..12 {
        bob.send_text(&im, &format!("m{i}")).await.unwrap();
    }
    let page1 = alice.read(&im, 5, None).await.unwrap();
    let last_seq = page1[0].as_ref().unwrap().seq;
    let page2 = alice.read(&im, 5, Some(last_seq)).await.unwrap();
    let text =
        |r: &cloister_client::Result<cloister_client::Received>| match &r.as_ref().unwrap().content
        {
            Content::Text { text } => text.clone(),
            _ => String::new(),
        };
    assert_eq!(
        page1.iter().map(text).collect::<Vec<_>>(),
        ["m7", "m8", "m9", "m10", "m11"]
    );
    assert_eq!(
        page2.iter().map(text).collect::<Vec<_>>(),
        ["m2", "m3", "m4", "m5", "m6"]
    );
    let carol = w.user("carol").await;
    assert!(
        alice.add_member(&im, carol.user()).await.is_err(),
        "IMs are fixed"
    );
    assert!(carol.read(&im, 5, None).await.is_err());
}

/// Many devices enrolling, creating rooms and fetching keys at once: every
/// write transaction (enrolment, nonces, log, keys, audit) must serialise
/// cleanly, with no "database is locked" failures.
#[tokio::test]
async fn concurrent_enrolments_rooms_and_releases() {
    let w = std::sync::Arc::new(World::new().await);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let a = w.user(&format!("a{i}")).await;
            let b = w.user(&format!("b{i}")).await;
            let room = a
                .create_room(RoomSettings::default(), &[b.user().clone()])
                .await
                .unwrap();
            a.send_text(&room, "hello").await.unwrap();
            b.read(&room, 5, None)
                .await
                .unwrap()
                .into_iter()
                .for_each(|r| {
                    r.unwrap();
                });
            a.remove_member(&room, b.user()).await.unwrap();
            a.send_text(&room, "epoch 1").await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows = w
        .admin
        .audit_list(0, 10_000, Some("key_released".into()), None, None)
        .await
        .unwrap();
    assert!(rows.len() >= 48, "{} releases logged", rows.len());
}
