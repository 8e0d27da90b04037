//! Posting over the live socket (`/v1/ws` `post` frames): the same checks
//! and answers as `POST /v1/rooms/{room}/messages`, many posts in flight,
//! and bad frames answered precisely without losing the socket or writing
//! anything. Against a real KM and server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::ClientError;
use cloister_proto::room::RoomSettings;
use cloister_proto::server::{ClientFrame, Content, Event};
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn code(e: &ClientError) -> &str {
    e.code().unwrap_or("")
}

fn text(t: &str) -> Content {
    Content::Text { text: t.into() }
}

#[tokio::test]
async fn posts_over_the_live_socket_pass_every_check_of_the_http_path() {
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
    let other = alice
        .create_room(RoomSettings::default(), &[carol.user().clone()])
        .await
        .unwrap();
    let mut bobs = bob.connect_live().await.unwrap();
    let live = alice.connect_live().await.unwrap();
    let post = live.poster();

    // accepted: the seq, bob's socket gets it live, history has it
    let env = alice.seal(&room, &text("over the socket")).await.unwrap();
    let seq = post.post(&room, &env).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Event::Message {
                seq: s, envelope, ..
            }) = bobs.next().await.unwrap()
            {
                return (s, envelope);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got.0, seq);
    assert_eq!(
        bob.receive(&room, got.0, &got.1).await.unwrap().content,
        text("over the socket")
    );

    // replayed, on the socket and then over HTTP
    let e = post.post(&room, &env).await.unwrap_err();
    assert_eq!(
        (code(&e), e.status()),
        ("duplicate_message", Some(409)),
        "{e}"
    );
    assert_eq!(
        code(&alice.post_envelope(&room, &env).await.unwrap_err()),
        "duplicate_message"
    );
    // re-addressed to another room
    let e = post.post(&other, &env).await.unwrap_err();
    assert_eq!(code(&e), "wrong_room", "{e}");
    // tampered
    let mut t = alice.seal(&room, &text("tamper me")).await.unwrap();
    t.ciphertext.0[3] ^= 0x40;
    let e = post.post(&room, &t).await.unwrap_err();
    assert_eq!((code(&e), e.status()), ("bad_signature", Some(401)), "{e}");
    // carol's socket posting alice's envelope: it names another sender
    let carols = carol.connect_live().await.unwrap();
    let fresh = alice.seal(&other, &text("alice's")).await.unwrap();
    let e = carols.poster().post(&other, &fresh).await.unwrap_err();
    assert_eq!((code(&e), e.status()), ("not_sender", Some(403)), "{e}");
    // carol posting into a room she is not in
    let hers = carol.seal(&other, &text("mine")).await.unwrap();
    let e = carols.poster().post(&room, &hers).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}"); // header names another room
    // a well-formed envelope of hers for `room`, where she is no member
    let into = carol.seal(&other, &text("x")).await.unwrap();
    let mut h = cloister_crypto::message::peek_header(&into).unwrap();
    h.room = room;
    let mut forged = into.clone();
    forged.header = serde_json::to_vec(&h).unwrap().into();
    // (a non-member learns nothing of the room: the HTTP path's answer)
    let e = carols.poster().post(&room, &forged).await.unwrap_err();
    assert_eq!((code(&e), e.status()), ("no_such_room", Some(404)), "{e}");
    let e = carol.post_envelope(&room, &forged).await.unwrap_err();
    assert_eq!((code(&e), e.status()), ("no_such_room", Some(404)), "{e}");

    // many in flight, every third tampered: exactly those are refused
    let mut envs = Vec::new();
    for k in 0..30 {
        let mut e = alice.seal(&room, &text(&format!("n{k}"))).await.unwrap();
        if k % 3 == 0 {
            e.sig.0[10] ^= 1;
        }
        envs.push(e);
    }
    let answers = futures_util::future::join_all(envs.iter().map(|e| post.post(&room, e))).await;
    for (k, a) in answers.iter().enumerate() {
        match (k % 3 == 0, a) {
            (true, Err(e)) => assert_eq!(code(e), "bad_signature"),
            (false, Ok(_)) => {}
            (bad, a) => panic!("post {k} (tampered: {bad}) answered {a:?}"),
        }
    }
    let stored = alice.read(&room, 100, None).await.unwrap();
    assert_eq!(
        stored.len(),
        1 + 20,
        "the first message and the 20 good ones"
    );
    assert!(stored.iter().all(Result::is_ok));
}

#[tokio::test]
async fn bad_frames_get_a_precise_answer_and_write_nothing() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    let before = alice.read(&room, 100, None).await.unwrap().len();
    let dev = w.raw("mallory").await;
    let token = dev.token().await;
    let url = ws_url(&w.stack.server_url) + "?token=" + &token;
    let mut ws = ws_connect(url.as_str()).await.unwrap();
    let answer = async |ws: &mut _| -> serde_json::Value {
        let ws: &mut tokio_tungstenite::WebSocketStream<_> = ws;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    };
    let refused = |v: &serde_json::Value, req: serde_json::Value, status: u64, error: &str| {
        assert_eq!(v["type"], "refused", "{v}");
        assert_eq!(v["req"], req, "{v}");
        assert_eq!(v["status"], status, "{v}");
        assert_eq!(v["error"], error, "{v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    };
    // not JSON, an unknown frame type, an unknown field, a binary frame
    for bad in [
        "{not json",
        r#"{"type":"shout","req":1}"#,
        r#"{"type":"post","req":1,"room":"00","envelope":{},"extra":1}"#,
    ] {
        ws.send(Message::Text(bad.into())).await.unwrap();
        refused(
            &answer(&mut ws).await,
            serde_json::Value::Null,
            400,
            "bad_frame",
        );
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    refused(
        &answer(&mut ws).await,
        serde_json::Value::Null,
        400,
        "bad_frame",
    );
    // the socket still answers: a post into a room mallory is not in
    let env = alice.seal(&room, &text("alice's")).await.unwrap();
    let frame = ClientFrame::Post {
        req: 7,
        room,
        envelope: env.clone(),
    };
    ws.send(Message::Text(serde_json::to_string(&frame).unwrap().into()))
        .await
        .unwrap();
    refused(&answer(&mut ws).await, 7.into(), 403, "not_sender");
    // an oversized ciphertext inside a frame the socket accepts
    let mut big = env.clone();
    big.ciphertext = vec![0; cloister_proto::limits::MAX_MESSAGE_CIPHERTEXT + 1].into();
    let frame = ClientFrame::Post {
        req: 8,
        room,
        envelope: big,
    };
    ws.send(Message::Text(serde_json::to_string(&frame).unwrap().into()))
        .await
        .unwrap();
    refused(&answer(&mut ws).await, 8.into(), 413, "too_large");
    // a frame past the socket's limit: closed with a reason
    let huge = "x".repeat(cloister_proto::limits::MAX_LIVE_FRAME + 1);
    let _ = ws.send(Message::Text(huge.into())).await;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    let f = closed.expect("a close frame with a reason");
    assert_eq!(u16::from(f.code), 1008);
    assert!(f.reason.contains("too long"), "{}", f.reason);
    // nothing was written
    assert_eq!(alice.read(&room, 100, None).await.unwrap().len(), before);
}

#[tokio::test]
async fn a_revoked_device_loses_its_socket_and_cannot_post() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    let mut live = bob.connect_live().await.unwrap();
    let post = live.poster();
    let env = bob.seal(&room, &text("before")).await.unwrap();
    post.post(&room, &env).await.unwrap();
    let late = bob.seal(&room, &text("after")).await.unwrap();
    w.admin.admin_revoke_device(&bob.device()).await.unwrap();
    // the server closes the socket once it learns; a post is refused or
    // finds the socket closed, and is never stored
    match post.post(&room, &late).await {
        Err(e) if code(&e) == "device_revoked" => {}
        Err(ClientError::Network { .. }) => {}
        Err(e) => panic!("unexpected refusal: {e}"),
        Ok(_) => panic!("a revoked device posted"),
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match live.next().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket stayed open");
    let texts: Vec<_> = alice
        .read(&room, 100, None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.unwrap().content)
        .collect();
    assert_eq!(texts, vec![text("before")]);
}

/// A follower whose live stream dies (its node went away) reconnects,
/// reads from history what it missed, and returns every message once, in
/// seq order.
#[tokio::test]
async fn a_follower_reconnects_and_catches_up_each_message_once_in_order() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let front = common::proxy::Proxy::start(&w.stack.server_url).await;
    let user = World::uid("bob");
    let bob = w.user_on("bob", &front.url).await;
    let room = alice
        .create_room(RoomSettings::default(), std::slice::from_ref(&user))
        .await
        .unwrap();
    let (_, first) = alice.send_text(&room, "before").await.unwrap();
    let mut follow = bob.follow(room, bob.newest_seq(&room).await.unwrap(), 5);
    assert_eq!(follow.last_seq(), first);
    let next = async |f: &mut cloister_client::Follow<'_>| {
        tokio::time::timeout(Duration::from_secs(15), f.next())
            .await
            .expect("a message within 15 s")
            .unwrap()
    };
    let mut got = Vec::new();
    for k in 0..3 {
        alice.send_text(&room, &format!("n{k}")).await.unwrap();
        got.push(next(&mut follow).await);
    }
    // the stream dies; three messages are sent while it is down
    front.cut();
    for k in 3..6 {
        alice.send_text(&room, &format!("n{k}")).await.unwrap();
    }
    for _ in 3..6 {
        got.push(next(&mut follow).await);
    }
    // and live again
    for k in 6..8 {
        alice.send_text(&room, &format!("n{k}")).await.unwrap();
        got.push(next(&mut follow).await);
    }
    assert_eq!(follow.connections(), 2, "one reconnection");
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (first + 1..=first + 8).collect::<Vec<_>>());
    let texts: Vec<Content> = got.into_iter().map(|m| m.content).collect();
    assert_eq!(
        texts,
        (0..8).map(|k| text(&format!("n{k}"))).collect::<Vec<_>>()
    );
}
