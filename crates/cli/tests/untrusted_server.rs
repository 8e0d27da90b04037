//! Clients that do not trust their server: a malicious server (a proxy in
//! front of the real one that rewrites its answers) withholds, replays,
//! reorders, drops, renames and rewrites, and the clients notice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::{Client, Storage};
use cloister_proto::room::RoomSettings;
use common::proxy::Proxy;
use common::*;

/// A new device of user `name` (created if needed) that talks to the
/// messaging server through `proxy`.
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

fn named(n: &str) -> RoomSettings {
    RoomSettings {
        name: n.into(),
        ..Default::default()
    }
}

fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

/// alice sends `n` numbered messages into a room with bob (behind the
/// proxy); bob reads them all once, honestly.
async fn conversation(
    w: &World,
    proxy: &Proxy,
    n: usize,
) -> (Client, Client, cloister_proto::RoomId) {
    let alice = w.user("alice").await;
    let bob = behind(w, proxy, "bob").await;
    let room = alice
        .create_room(RoomSettings::default(), std::slice::from_ref(bob.user()))
        .await
        .unwrap();
    for i in 1..=n {
        alice.send_text(&room, &format!("m{i}")).await.unwrap();
    }
    (alice, bob, room)
}

fn texts(msgs: &[Result<cloister_client::Received, cloister_client::ClientError>]) -> Vec<String> {
    msgs.iter()
        .map(|m| match m {
            Ok(r) => match &r.content {
                cloister_proto::server::Content::Text { text } => text.clone(),
                _ => "file".into(),
            },
            Err(e) => format!("ERR {e}"),
        })
        .collect()
}

fn alerted(c: &Client, words: &[&str]) -> bool {
    c.alerts()
        .iter()
        .any(|a| words.iter().all(|w| a.contains(w)))
}

#[tokio::test]
async fn history_replay_reorder_drop_and_withheld_tail_are_each_reported() {
    let w = World::new().await;
    let proxy = Proxy::start(&w.stack.server_url).await;
    let (alice, bob, room) = conversation(&w, &proxy, 4).await;
    let page = format!("/v1/rooms/{room}/messages");
    assert_eq!(
        texts(&bob.read(&room, 50, None).await.unwrap()),
        ["m1", "m2", "m3", "m4"]
    );
    assert!(bob.alerts().is_empty(), "{:?}", bob.alerts());

    // replay: m1 served again as the newest message
    let p = page.clone();
    proxy.on_json(move |q, v| {
        if q.starts_with(&p) {
            let msgs = v["messages"].as_array_mut().unwrap();
            let mut old = msgs[0].clone();
            old["seq"] = (msgs.last().unwrap()["seq"].as_u64().unwrap() + 1).into();
            msgs.push(old);
        }
    });
    let got = texts(&bob.read(&room, 50, None).await.unwrap());
    assert!(got.last().unwrap().contains("replayed"), "{got:?}");
    assert!(
        alerted(&bob, &["replayed", "alice@acme"]),
        "{:?}",
        bob.alerts()
    );

    // reorder: m2 and m3 swapped (each keeps its place in the server's order)
    let p = page.clone();
    proxy.on_json(move |q, v| {
        if q.starts_with(&p) {
            let msgs = v["messages"].as_array_mut().unwrap();
            let (a, b) = (msgs[1]["envelope"].clone(), msgs[2]["envelope"].clone());
            msgs[1]["envelope"] = b;
            msgs[2]["envelope"] = a;
        }
    });
    // a new device of bob, which never saw this room, still sees the disorder
    let bob2 = behind(&w, &proxy, "bob").await;
    bob2.read(&room, 50, None).await.unwrap();
    assert!(
        alerted(&bob2, &["reordered", "alice@acme"]),
        "{:?}",
        bob2.alerts()
    );

    // drop: m2 taken out of the page
    let p = page.clone();
    proxy.on_json(move |q, v| {
        if q.starts_with(&p) {
            v["messages"].as_array_mut().unwrap().remove(1);
        }
    });
    let bob3 = behind(&w, &proxy, "bob").await;
    assert_eq!(
        texts(&bob3.read(&room, 50, None).await.unwrap()),
        ["m1", "m3", "m4"]
    );
    assert!(
        alerted(&bob3, &["missing message 2", "alice@acme"]),
        "{:?}",
        bob3.alerts()
    );

    // withheld tail: the newest message hidden from a device that saw it
    let p = page.clone();
    proxy.on_json(move |q, v| {
        if q.starts_with(&p) {
            v["messages"].as_array_mut().unwrap().pop();
        }
    });
    assert_eq!(
        texts(&bob.read(&room, 50, None).await.unwrap()),
        ["m1", "m2", "m3"]
    );
    assert!(
        alerted(&bob, &["withheld", "number 4"]),
        "{:?}",
        bob.alerts()
    );
    drop(alice);
}

#[tokio::test]
async fn a_replay_is_recognised_across_runs() {
    let w = World::new().await;
    let proxy = Proxy::start(&w.stack.server_url).await;
    let alice = w.user("alice").await;
    let home = w.dir.path().join("bob-home");
    let user = World::uid("bob");
    let code = w.admin.admin_add_user(&user, false).await.unwrap().code;
    let bob = Client::enrol(
        w.http.clone(),
        &proxy.url,
        &w.stack.km_url,
        &user,
        &code,
        Storage::Dir {
            path: &home,
            passphrase: b"pw",
            cost: cloister_crypto::passphrase::Cost::TEST,
        },
    )
    .await
    .unwrap();
    let room = alice
        .create_room(RoomSettings::default(), std::slice::from_ref(&user))
        .await
        .unwrap();
    alice
        .send_text(&room, "wire 5mm to Harbourview")
        .await
        .unwrap();
    assert_eq!(texts(&bob.read(&room, 50, None).await.unwrap()).len(), 1);
    drop(bob);
    // a later run: the old message is served again as a new one
    let page = format!("/v1/rooms/{room}/messages");
    proxy.on_json(move |q, v| {
        if q.starts_with(&page) {
            let msgs = v["messages"].as_array_mut().unwrap();
            msgs[0]["seq"] = 99.into();
        }
    });
    let bob = Client::open(w.http.clone(), &home, b"pw").unwrap();
    let got = texts(&bob.read(&room, 50, None).await.unwrap());
    assert!(got[0].contains("replayed"), "{got:?}");
    assert!(alerted(&bob, &["replayed", "seq 99"]), "{:?}", bob.alerts());
}

#[tokio::test]
async fn the_live_stream_reports_duplicates_and_drops() {
    let w = World::new().await;
    let proxy = Proxy::start(&w.stack.server_url).await;
    let (alice, bob, room) = conversation(&w, &proxy, 1).await;
    bob.read(&room, 50, None).await.unwrap();
    // every live message delivered twice; the second of m3 dropped instead
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    proxy.on_ws(move |f| {
        if !f.contains("\"message\"") {
            return vec![f];
        }
        match n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            1 => vec![],             // m3 dropped
            _ => vec![f.clone(), f], // the others duplicated
        }
    });
    let mut stream = bob.connect_events().await.unwrap();
    for i in 2..=4 {
        alice.send_text(&room, &format!("m{i}")).await.unwrap();
    }
    let mut shown = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            bob.next_message(&mut stream, &room),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        if let cloister_proto::server::Content::Text { text } = m.content {
            shown.push(text);
        }
    }
    assert_eq!(shown, ["m2", "m4"], "each shown once; m3 never arrived");
    assert!(
        alerted(&bob, &["missing message 3", "alice@acme"]),
        "{:?}",
        bob.alerts()
    );
    // the duplicate of m2 was noticed before m4 arrived
    assert!(alerted(&bob, &["replayed"]), "{:?}", bob.alerts());
}

/// The server renames mallory's room to "rates" in bob's room list; bob's
/// `send rates` still goes to the room whose verified log names it so.
#[tokio::test]
async fn room_names_come_from_the_verified_log_not_the_server() {
    let w = World::new().await;
    let proxy = Proxy::start(&w.stack.server_url).await;
    let alice = w.user("alice").await;
    let mallory = w.user("mallory").await;
    let bob = behind(&w, &proxy, "bob").await;
    let rates = alice
        .create_room(named("rates"), std::slice::from_ref(bob.user()))
        .await
        .unwrap();
    let trap = mallory
        .create_room(named("lunch"), std::slice::from_ref(bob.user()))
        .await
        .unwrap();
    let (rates_s, trap_s) = (rates.to_string(), trap.to_string());
    proxy.on_json(move |q, v| {
        if q == "/v1/rooms" {
            for r in v.as_array_mut().unwrap() {
                let id = r["room"].as_str().unwrap().to_owned();
                if id == trap_s {
                    r["settings"]["name"] = "rates".into();
                } else if id == rates_s {
                    r["settings"]["name"] = "archive".into();
                }
            }
        }
    });
    assert_eq!(bob.resolve_room_name("rates").await.unwrap(), rates);
    let e = bob.resolve_room_name("archive").await.unwrap_err();
    assert!(e.to_string().contains("no room named"), "{e}");
    // two rooms really named alike: refused, not guessed
    let twin = alice
        .create_room(named("rates"), std::slice::from_ref(bob.user()))
        .await
        .unwrap();
    let e = bob.resolve_room_name("rates").await.unwrap_err();
    assert!(
        e.to_string().contains("several") && e.to_string().contains(&twin.to_string()),
        "{e}"
    );
}

/// alice (an owner colluding with the operator) signs two different
/// entries for the same place in the log; bob verified one of them, and
/// after a restart the server serves the other history: bob's device,
/// which remembers what it verified, refuses it as a fork.
#[tokio::test]
async fn a_rewritten_history_is_refused_by_a_device_that_remembers() {
    use cloister_crypto::signed::{entry_hash, sign_statement};
    use cloister_proto::b64::Fixed;
    use cloister_proto::room::{Action, RoomKind, Statement};
    let w = World::new().await;
    let proxy = Proxy::start(&w.stack.server_url).await;
    let alice = w.raw("alice").await;
    let home = w.dir.path().join("bob-home");
    let user = World::uid("bob");
    let code = w.admin.admin_add_user(&user, false).await.unwrap().code;
    let disk = || Storage::Dir {
        path: &home,
        passphrase: b"pw",
        cost: cloister_crypto::passphrase::Cost::TEST,
    };
    let bob = Client::enrol(
        w.http.clone(),
        &proxy.url,
        &w.stack.km_url,
        &user,
        &code,
        disk(),
    )
    .await
    .unwrap();
    let dave = World::uid("dave");
    let erin = World::uid("erin");
    w.admin.admin_add_user(&dave, false).await.unwrap();
    w.admin.admin_add_user(&erin, false).await.unwrap();
    let room = cloister_policy::room_id_from_random([0x11; 16]);
    let st = |seq, prev, action| Statement {
        room,
        seq,
        prev: Fixed(prev),
        actor: alice.keys.device_id(),
        actor_user: alice.user.clone(),
        ts: cloister_proto::now_millis(),
        action,
        connections: Vec::new(),
    };
    let g = sign_statement(
        &alice.keys,
        &st(
            0,
            [0; 32],
            Action::Create {
                kind: RoomKind::Room,
                settings: RoomSettings::default(),
                members: vec![user.clone()],
            },
        ),
    )
    .unwrap();
    let a = sign_statement(
        &alice.keys,
        &st(1, entry_hash(&g), Action::Add { user: dave.clone() }),
    )
    .unwrap();
    let b = sign_statement(
        &alice.keys,
        &st(1, entry_hash(&g), Action::Add { user: erin.clone() }),
    )
    .unwrap();
    let c = sign_statement(
        &alice.keys,
        &st(2, entry_hash(&b), Action::Promote { user: erin.clone() }),
    )
    .unwrap();
    let token = alice.token().await;
    for e in [&g, &a] {
        let r = w
            .http
            .post(format!("{}/v1/rooms/{room}/log", w.stack.server_url))
            .bearer_auth(&token)
            .json(&cloister_proto::server::AppendLog { entry: e.clone() })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let seen = bob.room_state(&room).await.unwrap();
    assert!(seen.members.contains(&dave));
    drop(bob);
    // the operator now serves the other branch, extended
    let forked = serde_json::to_value([&g, &b, &c]).unwrap();
    let path = format!("/v1/rooms/{room}/log?from=");
    proxy.on_json(move |q, v| {
        if let Some(rest) = q.strip_prefix(&path) {
            let from: usize = rest.split('&').next().unwrap().parse().unwrap();
            let all = forked.as_array().unwrap();
            v["entries"] = all[from.min(all.len())..].to_vec().into();
        }
    });
    let bob = Client::open(w.http.clone(), &home, b"pw").unwrap();
    let e = bob.room_state(&room).await.unwrap_err();
    assert!(matches!(e, cloister_client::ClientError::Audit(_)), "{e}");
    assert!(e.to_string().contains("fork"), "{e}");
    assert!(
        alerted(&bob, &["contradicts", &proxy.url]),
        "{:?}",
        bob.alerts()
    );
    // and its remembered state is still the one it verified
    let (st, _) = bob
        .with_state(&room, false, |s| (s.clone(), ()))
        .await
        .unwrap();
    assert!(st.members.contains(&dave) && !st.members.contains(&erin));
}

/// The server withholds alice's settings change from bob, another owner:
/// bob's own change is signed on the newest state the KM knows.
#[tokio::test]
async fn a_change_is_never_signed_on_stale_settings() {
    let w = World::new().await;
    let proxy = Proxy::start(&w.stack.server_url).await;
    let alice = w.user("alice").await;
    let bob = behind(&w, &proxy, "bob").await;
    let room = alice
        .create_room(RoomSettings::default(), std::slice::from_ref(bob.user()))
        .await
        .unwrap();
    alice.promote(&room, bob.user()).await.unwrap();
    bob.room_state(&room).await.unwrap();
    let path = format!("/v1/rooms/{room}/log?from=");
    proxy.on_json(move |q, v| {
        if q.starts_with(&path) {
            // nothing after what bob has (seq 1) is shown
            let from: u64 = q[path.len()..].split('&').next().unwrap().parse().unwrap();
            if from >= 2 {
                v["entries"] = serde_json::json!([]);
            }
        }
    });
    alice
        .set_settings(
            &room,
            RoomSettings {
                read_only: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    bob.set_freshness(0);
    let st = bob
        .set_settings(
            &room,
            RoomSettings {
                name: "rates".into(),
                read_only: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(st.seq, 3, "signed after alice's change");
    assert!(alerted(&bob, &["withheld"]), "{:?}", bob.alerts());
}

/// The same attacks as a person at the command line sees them: `cloister
/// send rates` goes to the verified "rates" although the server renamed
/// another room, and `cloister read` prints the replay as an ALERT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_the_alerts() {
    let w = World::new().await;
    let proxy = Proxy::start(&w.stack.server_url).await;
    let alice = w.user("alice").await;
    let mallory = w.user("mallory").await;
    let home = w.dir.path().join("bob-cli");
    let code = w
        .admin
        .admin_add_user(&World::uid("bob"), false)
        .await
        .unwrap()
        .code;
    let cli = |args: Vec<String>| {
        let home = home.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_cloister"))
                .env_remove("CLOISTER_HOME")
                .env("CLOISTER_PASSPHRASE", "device pass")
                .env("CLOISTER_CA_FILE", common::test_tls().ca_file())
                .arg("--home")
                .arg(&home)
                .args(&args)
                .output()
                .unwrap()
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let out = cli(s(&[
        "enrol",
        "--server",
        &proxy.url,
        "--km",
        &w.stack.km_url,
        "--user",
        "bob@acme",
        "--code",
        &code,
    ]))
    .await
    .unwrap();
    succeeded(&out);
    let bob = World::uid("bob");
    let rates = alice
        .create_room(named("rates"), std::slice::from_ref(&bob))
        .await
        .unwrap();
    let trap = mallory
        .create_room(named("lunch"), std::slice::from_ref(&bob))
        .await
        .unwrap();
    let trap_s = trap.to_string();
    proxy.on_json(move |q, v| {
        if q == "/v1/rooms" {
            for r in v.as_array_mut().unwrap() {
                if r["room"].as_str() == Some(&trap_s) {
                    r["settings"]["name"] = "rates".into();
                }
            }
        }
    });
    let out = cli(s(&["--json", "send", "rates", "UST 10y 4.12 bid"]))
        .await
        .unwrap();
    succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["room"].as_str().unwrap(), rates.to_string());
    assert!(mallory.read(&trap, 10, None).await.unwrap().is_empty());
    // bob reads, then the server replays alice's message as a new one
    alice.send_text(&rates, "10y 4.13 offered").await.unwrap();
    let out = cli(s(&["read", "rates"])).await.unwrap();
    succeeded(&out);
    let page = format!("/v1/rooms/{rates}/messages");
    proxy.on_json(move |q, v| {
        if q.starts_with(&page) {
            let msgs = v["messages"].as_array_mut().unwrap();
            let mut old = msgs[0].clone();
            old["seq"] = 999.into();
            msgs.push(old);
        }
    });
    let out = cli(s(&["read", rates.to_string().as_str()])).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ALERT:") && err.contains("replayed"), "{err}");
}

#[tokio::test]
async fn the_live_stream_reports_reordering() {
    let w = World::new().await;
    let proxy = Proxy::start(&w.stack.server_url).await;
    let (alice, bob, room) = conversation(&w, &proxy, 1).await;
    bob.read(&room, 50, None).await.unwrap();
    // the server holds m2 back and delivers it after m3
    let held: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let h2 = held.clone();
    let h2_done: std::sync::Arc<std::sync::Mutex<bool>> = Default::default();
    proxy.on_ws(move |f| {
        if !f.contains("\"message\"") {
            return vec![f];
        }
        let mut h = h2.lock().unwrap();
        match h.take() {
            // the first message frame is held, then sent after the second
            None if !*h2_done.lock().unwrap() => {
                *h2_done.lock().unwrap() = true;
                *h = Some(f);
                vec![]
            }
            Some(first) => vec![f, first],
            None => vec![f],
        }
    });
    let mut stream = bob.connect_events().await.unwrap();
    alice.send_text(&room, "m2").await.unwrap();
    alice.send_text(&room, "m3").await.unwrap();
    let mut shown = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            bob.next_message(&mut stream, &room),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        if let cloister_proto::server::Content::Text { text } = m.content {
            shown.push(text);
        }
    }
    assert_eq!(shown, ["m3", "m2"]);
    assert!(alerted(&bob, &["missing message 2"]), "{:?}", bob.alerts());
    assert!(alerted(&bob, &["out of order"]), "{:?}", bob.alerts());
}

/// The server claims, without the KM's signature, that the room's keys
/// were destroyed: bob keeps his keys, reads on, and is told.
#[tokio::test]
async fn an_unsigned_retention_claim_is_ignored() {
    let w = World::new().await;
    let proxy = Proxy::start(&w.stack.server_url).await;
    let (alice, bob, room) = conversation(&w, &proxy, 2).await;
    let page = format!("/v1/rooms/{room}/messages");
    let forged = cloister_proto::km::Notice::KeysShredded {
        tenant: "acme".parse().unwrap(),
        shredded: vec![(room, 0)],
        ts: cloister_proto::now_secs(),
    };
    let forged = cloister_proto::km::SignedNotice {
        body: serde_json::to_vec(&forged).unwrap().into(),
        sig: cloister_proto::b64::Fixed([7; 64]),
    };
    let forged = serde_json::to_value(&forged).unwrap();
    proxy.on_json(move |q, v| {
        if q.starts_with(&page) {
            v["shredded"] = serde_json::json!([forged.clone()]);
        }
    });
    assert_eq!(
        texts(&bob.read(&room, 50, None).await.unwrap()),
        ["m1", "m2"]
    );
    assert!(alerted(&bob, &["did not sign"]), "{:?}", bob.alerts());
    drop(alice);
}
