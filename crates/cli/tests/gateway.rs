//! The gateway against a real Matrix homeserver (Synapse from PyPI, which
//! `scripts/tools` installs; missing, these tests fail): messages both
//! ways between a Cloister user and a Matrix user, captured both ways in
//! the firm's vault; a user without `federation` refused; a restarted
//! gateway losing and repeating nothing; the homeserver's retried
//! transactions taken once; a patched client's fake relayed message
//! refused; a gateway device refused every other room's keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::Client;
use cloister_crypto::blind::Field;
use cloister_gateway::matrix::{Matrix, MatrixConfig};
use cloister_gateway::{Connector, Gateway};
use cloister_proto::controls::Entitlement;
use cloister_proto::km::Role::{Compliance, Custodian, Gateway as GatewayRole};
use cloister_proto::room::{Bridge, RoomSettings};
use cloister_proto::server::Content;
use cloister_proto::{RoomId, UserId};
use cloister_store::GatewayStore;
use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Synapse, or a loud failure saying how to get it.
fn synapse_python() -> std::path::PathBuf {
    cloister_cli::synapse::python().unwrap_or_else(|| {
        panic!(
            "Synapse is not installed: run scripts/tools (it installs matrix-synapse into {})",
            cloister_cli::synapse::VENV
        )
    })
}

struct Bridged {
    w: World,
    synapse: cloister_cli::synapse::Synapse,
    cfg: MatrixConfig,
    gw_dir: std::path::PathBuf,
    listen: std::net::SocketAddr,
    http: reqwest::Client,
    /// The Matrix user and their access token.
    mat: (String, String),
    /// The Matrix user's sync position.
    since: std::sync::Mutex<Option<String>>,
}

/// A running gateway: its task, stopped by `stop`.
struct Running {
    gateway: Arc<Gateway>,
    stop: tokio::sync::oneshot::Sender<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Bridged {
    async fn new() -> Bridged {
        let py = synapse_python();
        let w = World::new().await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = listener.local_addr().unwrap();
        drop(listener);
        let mut cfg = MatrixConfig::generate("http://unset", "localhost").unwrap();
        let synapse = cloister_cli::synapse::Synapse::start(
            &py,
            &w.dir.path().join("synapse"),
            &cfg.registration(&format!("http://{listen}")),
        )
        .await
        .unwrap();
        cfg.homeserver = synapse.url.clone();
        let http = reqwest::Client::new();
        let mat = synapse
            .register(&http, "mat", "mat-password")
            .await
            .unwrap();
        let gw_dir = w.dir.path().join("gateway");
        std::fs::create_dir_all(&gw_dir).unwrap();
        Bridged {
            w,
            synapse,
            cfg,
            gw_dir,
            listen,
            http,
            mat,
            since: std::sync::Mutex::new(None),
        }
    }

    /// Start (or restart) the gateway from its folder.
    async fn start(&self, client: Client) -> Running {
        let store = Arc::new(
            GatewayStore::open(&cloister_store::sqlite_url(&self.gw_dir.join("gateway.db")))
                .await
                .unwrap(),
        );
        let matrix: Arc<dyn Connector> = Matrix::new(self.cfg.clone(), self.http.clone());
        let gw = Gateway::new(Arc::new(client), store, vec![matrix]);
        let router = gw.router();
        let l = tokio::net::TcpListener::bind(self.listen).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serve = tokio::spawn(async move {
            let _ = axum::serve(l, router).await;
        });
        let run = tokio::spawn(gw.clone().run(Duration::from_millis(300), async move {
            let _ = rx.await;
        }));
        Running {
            gateway: gw,
            stop: tx,
            tasks: vec![serve, run],
        }
    }

    /// A Matrix client-server call as the Matrix user.
    async fn mat_call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.synapse.url))
            .bearer_auth(&self.mat.1)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// The Matrix user's view: texts in `room` from others, oldest first.
    async fn mat_texts(&self, room: &str) -> Vec<(String, String)> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=100",
            urlenc(room)
        );
        let v = self
            .mat_call(reqwest::Method::GET, &path, Value::Null)
            .await;
        v["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message" && e["sender"] != self.mat.0.as_str())
            .map(|e| {
                (
                    e["sender"].as_str().unwrap().to_owned(),
                    e["content"]["body"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// The rooms the Matrix user was invited to since the last call (an
    /// incremental sync: Synapse caches an identical one for a while).
    async fn mat_invites(&self) -> Vec<String> {
        let since = self.since.lock().unwrap().clone();
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=1000&since={}", urlenc(s)),
            None => "/_matrix/client/v3/sync?timeout=0".into(),
        };
        let v = self
            .mat_call(reqwest::Method::GET, &path, Value::Null)
            .await;
        if let Some(n) = v["next_batch"].as_str() {
            *self.since.lock().unwrap() = Some(n.to_owned());
        }
        v["rooms"]["invite"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn mat_send(&self, room: &str, txn: &str, text: &str) {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            urlenc(room)
        );
        self.mat_call(
            reqwest::Method::PUT,
            &path,
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    }
}

fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Wait (at most 30 s) until `f` gives `Some`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..300 {
        if let Some(t) = f().await {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The texts `c` reads in `room`, with who wrote each (`contact` for a
/// relayed message).
async fn cloister_texts(c: &Client, room: &RoomId) -> Vec<(String, String)> {
    c.read(room, 100, None)
        .await
        .unwrap()
        .into_iter()
        .filter_map(Result::ok)
        .map(|m| match &m.content {
            Content::Text { text } => (m.sender.to_string(), text.clone()),
            Content::Relayed { from, content, .. } => match &**content {
                Content::Text { text } => (from.clone(), text.clone()),
                other => (from.clone(), format!("{other:?}")),
            },
            other => (m.sender.to_string(), format!("{other:?}")),
        })
        .collect()
}

fn bridged(name: &str, contact: &str, gateway: &UserId) -> RoomSettings {
    RoomSettings {
        name: name.into(),
        bridge: Some(Bridge {
            network: "matrix".into(),
            contact: contact.into(),
            gateway: gateway.clone(),
        }),
        ..Default::default()
    }
}

async fn entitle(w: &World, users: &[&UserId]) {
    for u in users {
        w.admin
            .admin_entitle(Some(u), None, &[Entitlement::Federation], &[])
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloister_user_and_a_matrix_user_talk_through_the_gateway() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_test_writer()
        .try_init();
    let b = Bridged::new().await;
    let w = &b.w;
    // the firm's record: escrow, its vault with capture required
    let (c1, c2, officer) = (
        w.user_with("cust1", &[Custodian]).await,
        w.user_with("cust2", &[Custodian]).await,
        w.user_with("officer", &[Compliance]).await,
    );
    w.admin
        .admin_escrow_init(&[c1.user().clone(), c2.user().clone()], 2)
        .await
        .unwrap();
    w.register_vault(true).await;
    officer.use_registered_vault().await.unwrap().unwrap();
    let gw_client = w
        .disk_user_with("gateway", &[GatewayRole], &b.gw_dir.join("device"))
        .await;
    gw_client.use_registered_vault().await.unwrap().unwrap();
    let gw_user = gw_client.user().clone();
    let alice = w.user("alice").await;
    alice.use_registered_vault().await.unwrap().unwrap();
    entitle(w, &[alice.user(), &gw_user]).await;
    let running = b.start(gw_client).await;

    // alice opens a bridged room with the Matrix user
    let room = alice
        .create_room(
            bridged("mat", &b.mat.0, &gw_user),
            std::slice::from_ref(&gw_user),
        )
        .await
        .unwrap();
    alice
        .send_text(&room, "GWTEST hello from cloister")
        .await
        .unwrap();
    // the Matrix user is invited by alice's puppet and joins
    let mroom = eventually("the Matrix invitation", || async {
        b.mat_invites().await.into_iter().next()
    })
    .await;
    b.mat_call(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/join/{}", urlenc(&mroom)),
        json!({}),
    )
    .await;
    let got = eventually("alice's message on Matrix", || async {
        let t = b.mat_texts(&mroom).await;
        (!t.is_empty()).then_some(t)
    })
    .await;
    assert_eq!(
        got,
        [(
            "@cloister_alice=40acme:localhost".to_owned(),
            "GWTEST hello from cloister".to_owned()
        )]
    );

    // and answers: alice reads it as the contact's, through the gateway
    b.mat_send(&mroom, "m1", "GWTEST hello from matrix").await;
    let seen = eventually("the Matrix reply in Cloister", || async {
        let t = cloister_texts(&alice, &room).await;
        (t.len() >= 2).then_some(t)
    })
    .await;
    assert_eq!(
        seen,
        [
            (
                alice.user().to_string(),
                "GWTEST hello from cloister".into()
            ),
            (b.mat.0.clone(), "GWTEST hello from matrix".into()),
        ]
    );

    // the gateway holds the room's keys on the record, and no other room's
    let who = w.admin.who_has_keys(&room).await.unwrap();
    assert!(
        who.iter().any(|k| k.user == gw_user && k.gateway),
        "{who:?}"
    );
    assert!(who.iter().all(|k| k.gateway == (k.user == gw_user)));
    let other = alice
        .create_room(RoomSettings::default(), std::slice::from_ref(&gw_user))
        .await
        .unwrap();
    alice
        .send_text(&other, "not for the gateway")
        .await
        .unwrap();
    let e = running
        .gateway
        .client()
        .room_keys(&other, &[0])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_bridged"), "{e}");

    // both directions are in the firm's vault: the officer finds them
    let now = cloister_proto::now_millis();
    for (word, n) in [("gwtest", 2), ("matrix", 1)] {
        let hits = eventually("the captures", || async {
            let h = officer
                .compliance_search(
                    &[(Field::Keyword, word.into())],
                    now - 3_600_000,
                    now + 3_600_000,
                    10,
                )
                .await
                .unwrap();
            (h.len() >= n).then_some(h)
        })
        .await;
        assert!(hits.iter().all(|h| h.room == room), "{hits:?}");
    }
    // and by the Matrix user as a participant
    let hits = officer
        .compliance_search(
            &[(Field::Participant, b.mat.0.clone())],
            now - 3_600_000,
            now + 3_600_000,
            10,
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_resumes_after_a_restart_and_refuses_what_it_must() {
    let b = Bridged::new().await;
    let w = &b.w;
    let device_dir = b.gw_dir.join("device");
    let gw_client = w
        .disk_user_with("gateway", &[GatewayRole], &device_dir)
        .await;
    let gw_user = gw_client.user().clone();
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    entitle(w, &[alice.user(), &gw_user]).await;
    let running = b.start(gw_client).await;

    let room = alice
        .create_room(
            bridged("mat", &b.mat.0, &gw_user),
            std::slice::from_ref(&gw_user),
        )
        .await
        .unwrap();
    alice.send_text(&room, "one").await.unwrap();
    let mroom = eventually("the Matrix invitation", || async {
        b.mat_invites().await.into_iter().next()
    })
    .await;
    b.mat_call(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/join/{}", urlenc(&mroom)),
        json!({}),
    )
    .await;
    b.mat_send(&mroom, "m1", "uno").await;
    eventually("the first exchange", || async {
        (cloister_texts(&alice, &room).await.len() == 2 && b.mat_texts(&mroom).await.len() == 1)
            .then_some(())
    })
    .await;

    // the gateway stops; both sides go on writing
    running.stop().await;
    alice.send_text(&room, "two").await.unwrap();
    alice.send_text(&room, "three").await.unwrap();
    b.mat_send(&mroom, "m2", "dos").await;
    b.mat_send(&mroom, "m3", "tres").await;
    // it starts again from its folder: everything crosses, once, in order
    let gw_client = Client::open(w.http.clone(), &device_dir, b"pw").unwrap();
    let running = b.start(gw_client).await;
    let theirs = eventually("the Matrix side after the restart", || async {
        let t = b.mat_texts(&mroom).await;
        (t.len() >= 3).then_some(t)
    })
    .await;
    let mine = eventually("the Cloister side after the restart", || async {
        let t = cloister_texts(&alice, &room).await;
        (t.len() >= 6).then_some(t)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let theirs_after: Vec<String> = b.mat_texts(&mroom).await.into_iter().map(|t| t.1).collect();
    assert_eq!(theirs_after, ["one", "two", "three"], "{theirs:?}");
    let mut from_mat: Vec<String> = cloister_texts(&alice, &room)
        .await
        .into_iter()
        .filter(|(who, _)| *who == b.mat.0)
        .map(|t| t.1)
        .collect();
    assert_eq!(from_mat, ["uno", "dos", "tres"], "{mine:?}");

    // the homeserver's token is required; a retried transaction is taken once
    let txn_url = format!("http://{}/_matrix/app/v1/transactions/t-dup", b.listen);
    let txn = json!({"events": [{
        "event_id": "$dup-check", "room_id": mroom, "sender": b.mat.0,
        "type": "m.room.message", "content": {"msgtype": "m.text", "body": "only once"}
    }]});
    let r = b.http.put(&txn_url).json(&txn).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = b
        .http
        .put(&txn_url)
        .bearer_auth("not-the-token")
        .json(&txn)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    for _ in 0..2 {
        let r = b
            .http
            .put(&txn_url)
            .bearer_auth(&b.cfg.hs_token)
            .json(&txn)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    // malformed and oversized transactions: a precise error, nothing taken
    let put = |txn: &str, body: Vec<u8>| {
        b.http
            .put(format!(
                "http://{}/_matrix/app/v1/transactions/{txn}",
                b.listen
            ))
            .bearer_auth(&b.cfg.hs_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (txn, body, status, code) in [
        ("bad-1", b"not json".to_vec(), 400, "M_NOT_JSON"),
        ("bad-2", br#"{"no": []}"#.to_vec(), 400, "M_BAD_JSON"),
        (
            "bad-3",
            serde_json::to_vec(&json!({"events": vec![json!({}); 1001]})).unwrap(),
            400,
            "M_TOO_LARGE",
        ),
    ] {
        let r = put(txn, body).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{txn}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errcode"], code, "{txn}: {v}");
    }
    let long_txn = "t".repeat(300);
    let r = put(
        &long_txn,
        serde_json::to_vec(&json!({"events": []})).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // (on a connection of its own: the gateway answers 413 before reading
    // the body, then closes the connection)
    let r = reqwest::Client::new()
        .put(format!(
            "http://{}/_matrix/app/v1/transactions/bad-4",
            b.listen
        ))
        .bearer_auth(&b.cfg.hs_token)
        .header("content-type", "application/json")
        .body(vec![b' '; 9 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // the same event again under another transaction id: once too
    let r = b
        .http
        .put(format!(
            "http://{}/_matrix/app/v1/transactions/t-dup-2",
            b.listen
        ))
        .bearer_auth(&b.cfg.hs_token)
        .json(&txn)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    eventually("the pushed message", || async {
        cloister_texts(&alice, &room)
            .await
            .iter()
            .any(|t| t.1 == "only once")
            .then_some(())
    })
    .await;
    running.gateway.pass().await.unwrap();
    from_mat = cloister_texts(&alice, &room)
        .await
        .into_iter()
        .filter(|(who, _)| *who == b.mat.0)
        .map(|t| t.1)
        .collect();
    assert_eq!(from_mat, ["uno", "dos", "tres", "only once"]);

    // a user without `federation`: no bridged room with them, either way
    let e = alice
        .create_room(
            bridged("bob too", &b.mat.0, &gw_user),
            &[gw_user.clone(), bob.user().clone()],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("entitlement"), "{e}");
    let created = b
        .mat_call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            json!({"invite": ["@cloister_bob=40acme:localhost"], "is_direct": true}),
        )
        .await;
    let bob_room = created["room_id"].as_str().unwrap().to_owned();
    let state = eventually("the gateway declining for bob", || async {
        let v = b
            .mat_call(
                reqwest::Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    urlenc(&bob_room),
                    urlenc("@cloister_bob=40acme:localhost")
                ),
                Value::Null,
            )
            .await;
        (v["membership"] == "leave").then_some(v)
    })
    .await;
    assert!(
        state["reason"]
            .as_str()
            .unwrap_or("")
            .contains("federation"),
        "{state}"
    );
    let failures = running.gateway.store().failures(10).await.unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.direction == "inbound" && f.reason.contains("federation")),
        "{failures:?}"
    );

    // a patched client's message that claims to be relayed from the
    // contact is refused by every reader, and never reaches Matrix
    alice
        .send(
            &room,
            &Content::Relayed {
                network: "matrix".into(),
                from: b.mat.0.clone(),
                id: "$forged".into(),
                content: Box::new(Content::Text {
                    text: "I, mat, agree".into(),
                }),
            },
        )
        .await
        .unwrap();
    let last = alice.read(&room, 100, None).await.unwrap().pop().unwrap();
    let e = last.unwrap_err().to_string();
    assert!(e.contains("is not the room's gateway"), "{e}");
    running.gateway.pass().await.unwrap();
    assert!(
        !b.mat_texts(&mroom)
            .await
            .iter()
            .any(|t| t.1.contains("agree"))
    );
    let _ = bob;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_cross_both_ways_and_a_locked_room_is_reported_to_the_contact() {
    let b = Bridged::new().await;
    let w = &b.w;
    let officer = w.user_with("officer", &[Compliance]).await;
    let gw_client = w
        .disk_user_with("gateway", &[GatewayRole], &b.gw_dir.join("device"))
        .await;
    let gw_user = gw_client.user().clone();
    let alice = w.user("alice").await;
    entitle(w, &[alice.user(), &gw_user]).await;
    // (before alice's device first loads the firm's DLP rules)
    w.admin
        .dlp_put(cloister_proto::controls::DlpPolicy {
            id: "no-mnpi".into(),
            name: "No inside information outside".into(),
            action: cloister_proto::controls::DlpAction::Block,
            keywords: vec!["falcon".into()],
            patterns: vec![],
            file_types: vec![],
            max_file_bytes: None,
            message: "Project names stay inside".into(),
            active: true,
        })
        .await
        .unwrap();
    let running = b.start(gw_client).await;
    let room = alice
        .open_bridge("matrix", &b.mat.0, &gw_user, &[])
        .await
        .unwrap();

    // a file out: the Matrix user downloads exactly its bytes
    let out = w.dir.path().join("term-sheet.txt");
    std::fs::write(&out, b"TERM SHEET v3: 5y at 2.41").unwrap();
    alice.send_file(&room, &out).await.unwrap();
    let mroom = eventually("the Matrix invitation", || async {
        b.mat_invites().await.into_iter().next()
    })
    .await;
    b.mat_call(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/join/{}", urlenc(&mroom)),
        json!({}),
    )
    .await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=100",
        urlenc(&mroom)
    );
    let url = eventually("the file on Matrix", || async {
        let v = b.mat_call(reqwest::Method::GET, &path, Value::Null).await;
        v["chunk"].as_array().unwrap().iter().find_map(|e| {
            (e["content"]["msgtype"] == "m.file" && e["content"]["body"] == "term-sheet.txt")
                .then(|| e["content"]["url"].as_str().unwrap().to_owned())
        })
    })
    .await;
    let mxc = url.strip_prefix("mxc://").unwrap();
    let bytes = b
        .http
        .get(format!(
            "{}/_matrix/client/v1/media/download/{mxc}",
            b.synapse.url
        ))
        .bearer_auth(&b.mat.1)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"TERM SHEET v3: 5y at 2.41");

    // a file in: alice gets it, relayed from the contact, checked on download
    let up: Value = b
        .http
        .post(format!(
            "{}/_matrix/media/v3/upload?filename=signed.pdf",
            b.synapse.url
        ))
        .bearer_auth(&b.mat.1)
        .header("content-type", "application/pdf")
        .body(b"%PDF signed by mat".to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    b.mat_call(
        reqwest::Method::PUT,
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/f1",
            urlenc(&mroom)
        ),
        json!({"msgtype": "m.file", "body": "signed.pdf", "url": up["content_uri"]}),
    )
    .await;
    let got = eventually("the Matrix file in Cloister", || async {
        alice
            .read(&room, 100, None)
            .await
            .unwrap()
            .into_iter()
            .filter_map(Result::ok)
            .find(|m| matches!(&m.content, Content::Relayed { content, .. } if matches!(&**content, Content::File { .. })))
    })
    .await;
    let dest = w.dir.path().join("signed-in.pdf");
    alice.get_file(&got.content, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"%PDF signed by mat");

    // the firm's DLP rules hold at alice's device: a blocked text never
    // leaves it, so it never reaches the gateway or Matrix
    let e = alice
        .send_text(&room, "Project Falcon signs Friday")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("dlp_blocked"), "{e}");
    running.gateway.pass().await.unwrap();
    let v = b.mat_call(reqwest::Method::GET, &path, Value::Null).await;
    assert!(!v.to_string().contains("Falcon"), "{v}");

    // the officer locks the room: alice cannot post, and what the contact
    // sends is not posted either: the contact is told, the failure kept
    officer.room_lock(&room, "investigation 42").await.unwrap();
    let e = alice.send_text(&room, "still there?").await.unwrap_err();
    assert!(e.to_string().contains("lock"), "{e}");
    b.mat_send(&mroom, "m-locked", "after the lock").await;
    let notice = eventually("the notice to the contact", || async {
        let v = b.mat_call(reqwest::Method::GET, &path, Value::Null).await;
        v["chunk"].as_array().unwrap().iter().find_map(|e| {
            (e["content"]["msgtype"] == "m.notice")
                .then(|| e["content"]["body"].as_str().unwrap_or("").to_owned())
        })
    })
    .await;
    assert!(notice.contains("Not delivered"), "{notice}");
    let failures = running.gateway.store().failures(10).await.unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.direction == "inbound" && f.room.as_deref() == Some(room.to_hex().as_str())),
        "{failures:?}"
    );
    running.stop().await;
}

/// The commands: `gateway matrix-register` writes its tokens privately and
/// a registration the homeserver loads; `gateway status` reads the state;
/// `gateway run` refuses a device without the gateway role; `room bridge`
/// refuses a malformed network or contact, and a user without
/// `federation`, each with one clear line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_and_bridge_commands() {
    use common::procs::{cmd, fails, json};
    let w = World::new().await;
    let dir = w.dir.path().join("gw-cli");
    let out = json(
        cmd(None)
            .args(["--json", "gateway", "matrix-register", "--data-dir"])
            .arg(&dir)
            .args([
                "--homeserver",
                "http://127.0.0.1:1",
                "--server-name",
                "example.org",
                "--url",
                "http://127.0.0.1:9",
            ])
            .output()
            .unwrap(),
    );
    let settings = std::path::PathBuf::from(out["settings"].as_str().unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&settings).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let reg: Value =
        serde_json::from_slice(&std::fs::read(dir.join("registration.yaml")).unwrap()).unwrap();
    let secret: Value = serde_json::from_slice(&std::fs::read(&settings).unwrap()).unwrap();
    assert_eq!(reg["hs_token"], secret["hs_token"]);
    assert_eq!(
        reg["namespaces"]["users"][0]["regex"],
        "@cloister_.*:example\\.org"
    );
    assert_eq!(reg["url"], "http://127.0.0.1:9");
    let status = json(
        cmd(None)
            .args(["--json", "gateway", "status", "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap(),
    );
    assert_eq!(status["conversations"], json!([]));
    assert_eq!(status["failures"], json!([]));

    // a device that is not the firm's gateway cannot run it
    let home = w.dir.path().join("home-alice");
    let code = w
        .admin
        .admin_add_user_roles(&World::uid("alice"), &[])
        .await
        .unwrap()
        .code;
    json(
        cmd(Some(&home))
            .args([
                "--json",
                "enrol",
                "--server",
                &w.stack.server_url,
                "--km",
                &w.stack.km_url,
            ])
            .args(["--user", "alice@acme", "--code", &code])
            .output()
            .unwrap(),
    );
    let e = fails(
        cmd(Some(&home))
            .args(["gateway", "run", "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap(),
    );
    assert!(e.contains("does not hold the gateway role"), "{e}");
    // room bridge: malformed input, then a user without `federation`
    let e = fails(
        cmd(Some(&home))
            .args(["room", "bridge", "Matrix!", "@mat:example.org"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("network"), "{e}");
    let e = fails(
        cmd(Some(&home))
            .args(["room", "bridge", "matrix", ""])
            .output()
            .unwrap(),
    );
    assert!(e.contains("contact"), "{e}");
    w.user_with("gateway", &[GatewayRole]).await;
    let e = fails(
        cmd(Some(&home))
            .args(["room", "bridge", "matrix", "@mat:example.org"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("federation"), "{e}");
}
