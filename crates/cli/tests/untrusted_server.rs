//! Clients that do not trust their server: a malicious server (a proxy in
//! front of the real one that rewrites its answers) withholds, replays,
//! reorders, drops, renames and rewrites, and the clients notice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::{Client, Storage};
use cloister_proto::room::RoomSettings;
use common::proxy::Proxy;
use common::*;

/// A user whose device talks to the messaging server through `proxy`.
async fn behind(w: &World, proxy: &Proxy, name: &str) -> Client {
    let user = World::uid(name);
    let code = w.admin.admin_add_user(&user, false).await.unwrap().code;
    Client::enrol(
        w.http.clone(),
        &proxy.url,
        &w.stack.km_url,
        &user,
        &code,
        Storage::Memory,
    )
    .await
    .unwrap()
}

fn header_epoch(env: &serde_json::Value) -> u64 {
    let h: cloister_proto::b64::Bytes = serde_json::from_value(env["header"].clone()).unwrap();
    let h: serde_json::Value = serde_json::from_slice(h.as_slice()).unwrap();
    h["epoch"].as_u64().unwrap()
}

/// The operator withholds carol's removal from bob, hoping he keeps sealing
/// in the epoch carol still holds. Bob's device takes the removal from the
/// KM's signed head, seals in the new epoch and raises an alert naming the
/// server; the bound is the freshness setting.
#[tokio::test]
async fn a_withheld_removal_is_taken_from_the_km_within_the_freshness_bound() {
    let w = World::new().await;
    let proxy = Proxy::start(&w.stack.server_url).await;
    let alice = w.user("alice").await;
    let carol = w.user("carol").await;
    let bob = behind(&w, &proxy, "bob").await;
    let room = alice
        .create_room(
            RoomSettings::default(),
            &[bob.user().clone(), carol.user().clone()],
        )
        .await
        .unwrap();
    alice.send_text(&room, "epoch zero").await.unwrap();
    assert!(bob.read(&room, 10, None).await.unwrap()[0].is_ok());
    // from now on the server shows bob only the room's genesis
    let path = format!("/v1/rooms/{room}/log?from=");
    proxy.on_json(move |p, v| {
        if let Some(q) = p.strip_prefix(&path) {
            let from: u64 = q.split('&').next().unwrap().parse().unwrap();
            v["entries"]
                .as_array_mut()
                .unwrap()
                .truncate(1usize.saturating_sub(from as usize));
        }
    });
    alice.remove_member(&room, carol.user()).await.unwrap();
    // within the bound, bob may still rely on the head he holds; past it he
    // must ask the KM again
    bob.set_freshness(1_000);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    bob.send_text(&room, "after carol left").await.unwrap();
    let sent = proxy.posted("/messages");
    assert_eq!(
        header_epoch(sent.last().unwrap()),
        1,
        "sealed in the new epoch"
    );
    let alerts = bob.alerts();
    assert!(
        alerts
            .iter()
            .any(|a| a.contains("withheld") && a.contains(&proxy.url)),
        "{alerts:?}"
    );
    // carol, even with the operator's help, cannot read it
    let msgs = carol.read(&room, 10, None).await;
    let readable: Vec<_> = msgs
        .iter()
        .flatten()
        .filter_map(|m| m.as_ref().ok())
        .filter(|m| matches!(&m.content, cloister_proto::server::Content::Text { text } if text == "after carol left"))
        .collect();
    assert!(readable.is_empty());
    let e = carol.room_keys(&room, &[1]).await.unwrap_err();
    assert_eq!(e.code(), Some("not_entitled"), "{e}");
}
