//! Several server nodes on one PostgreSQL database, with live events
//! between them over NATS JetStream: real PostgreSQL (a database made for
//! each test) and the real NATS server, never a mock. Without them the
//! tests warn loudly, and fail when `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::{Client, Storage};
use cloister_proto::UserId;
use cloister_proto::room::RoomSettings;
use cloister_proto::server::Event;
use cloister_server::{ClusterConfig, Server, ServerConfig};
use cloister_store::testkit::PgDatabase;
use common::{World, opts};
use std::sync::Arc;
use std::time::Duration;

fn nats_url() -> String {
    std::env::var("CLOISTER_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// PostgreSQL and NATS for one test; dropping it deletes the cluster's
/// NATS stream (and the database).
struct Services {
    pg: PgDatabase,
}

impl std::ops::Deref for Services {
    type Target = PgDatabase;
    fn deref(&self) -> &PgDatabase {
        &self.pg
    }
}

impl Services {
    /// Delete the cluster's stream from NATS (every test makes one).
    async fn cleanup(&self) {
        let pool = sqlx::PgPool::connect(&self.pg.url).await.unwrap();
        let id: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'cluster_id'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        pool.close().await;
        if let Some(id) = id {
            let c = async_nats::connect(nats_url()).await.unwrap();
            let js = async_nats::jetstream::new(c);
            let name = format!("CLOISTER_{}", String::from_utf8_lossy(&id));
            js.delete_stream(&name).await.unwrap();
        }
    }
}

/// PostgreSQL and NATS, or `None` after a loud warning (a failure in CI).
async fn services() -> Option<Services> {
    let url = nats_url();
    let addr = url.trim_start_matches("nats://").to_owned();
    if let Err(e) = tokio::net::TcpStream::connect(&addr).await {
        let msg = format!("NATS is not reachable at {url} ({e}): the cluster test did NOT run");
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("\n*** WARNING: {msg}\n");
        return None;
    }
    Some(Services {
        pg: PgDatabase::create().await?,
    })
}

fn node_config(name: &str) -> ServerConfig {
    ServerConfig {
        cluster: Some(ClusterConfig {
            nats_url: nats_url(),
            node: name.to_owned(),
        }),
        ..Default::default()
    }
}

/// Node A is the stack's server; this starts another node on the same
/// database and returns it with its URL.
async fn node(pg: &str, name: &str, dir: &std::path::Path) -> (Arc<Server>, String) {
    let s = Server::open_url(&dir.join(name), Some(pg), node_config(name))
        .await
        .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(cloister_http::serve(
        l,
        cloister_server::router(s.clone()),
        std::future::pending(),
    ));
    (s, url)
}

async fn cluster_world(pg: &Services, node_a: &str) -> World {
    let mut o = opts();
    o.server_database = Some(pg.url.clone());
    o.server_config = node_config(node_a);
    World::with(o).await
}

/// The seqs of the next `n` messages of `room` on a live stream.
async fn live_seqs(
    c: &Client,
    stream: &mut cloister_client::EventStream,
    room: &cloister_proto::RoomId,
    n: usize,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), c.next_message(stream, room))
            .await
            .expect("a live message within 10 s")
            .unwrap()
            .expect("the stream stays open");
        seqs.push(m.seq);
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_cross_nodes_live_in_room_order() {
    let Some(pg) = services().await else { return };
    let w = cluster_world(&pg, "a").await;
    let (_b, b_url) = node(&pg.url, "b", w.dir.path()).await;
    let alice = w.user("alice").await; // on node A
    let bob = w.user_on("bob", &b_url).await; // on node B
    let carol = w.user_on("carol", &b_url).await; // on node B
    let room = alice
        .create_room(
            RoomSettings::default(),
            &[World::uid("bob"), World::uid("carol")],
        )
        .await
        .unwrap();
    let mut bob_live = bob.connect_events().await.unwrap();
    let mut alice_live = alice.connect_events().await.unwrap();

    // alice (node A) and carol (node B) write to the room at once: bob on
    // node B and alice on node A each see every message once, in seq order
    let (a, c) = tokio::join!(
        async {
            let mut s = Vec::new();
            for k in 0..20 {
                s.push(alice.send_text(&room, &format!("a{k}")).await.unwrap().1);
            }
            s
        },
        async {
            let mut s = Vec::new();
            for k in 0..20 {
                s.push(carol.send_text(&room, &format!("c{k}")).await.unwrap().1);
            }
            s
        }
    );
    let mut all: Vec<u64> = a.iter().chain(&c).copied().collect();
    all.sort();
    let got = live_seqs(&bob, &mut bob_live, &room, 40).await;
    assert_eq!(got, all, "bob (node B) sees every message once, in order");
    // alice does not get her own messages back live: carol's only
    let got = live_seqs(&alice, &mut alice_live, &room, 20).await;
    assert_eq!(got, c, "alice (node A) sees carol's messages, in order");
    pg.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_and_membership_reach_every_node() {
    let Some(pg) = services().await else { return };
    let w = cluster_world(&pg, "a").await;
    let (_b, b_url) = node(&pg.url, "b", w.dir.path()).await;
    let alice = w.user("alice").await;
    let bob = w.user_on("bob", &b_url).await;
    let mut bob_live = bob.connect_events().await.unwrap();

    // a room made on node A: bob, connected to node B, hears of it
    let room = alice
        .create_room(RoomSettings::default(), &[World::uid("bob")])
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), bob_live.next())
        .await
        .expect("a membership event within 10 s")
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev, Event::Membership { room: r, .. } if r == room),
        "{ev:?}"
    );

    // the KM pushes the revocation to node A; bob's connection to node B
    // closes, and node B refuses his session
    w.admin.admin_revoke_device(&bob.device()).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match bob_live.next().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "bob's stream on node B was not closed");
    let e = bob.send_text(&room, "still here?").await.unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
    pg.cleanup().await;
}

/// Someone who can publish on the NATS server but cannot read the database
/// forges the event of a room's next message, with and without a tag: node
/// B drops both, and delivers the real message at that seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_cluster_event_is_dropped() {
    let Some(pg) = services().await else { return };
    let w = cluster_world(&pg, "a").await;
    let (_b, b_url) = node(&pg.url, "b", w.dir.path()).await;
    let alice = w.user("alice").await; // on node A
    let bob = w.user_on("bob", &b_url).await; // on node B
    let room = alice
        .create_room(RoomSettings::default(), &[World::uid("bob")])
        .await
        .unwrap();
    let mut bob_live = bob.connect_events().await.unwrap();
    let (_, s1) = alice.send_text(&room, "one").await.unwrap();
    assert_eq!(live_seqs(&bob, &mut bob_live, &room, 1).await, vec![s1]);

    // a real, alice-signed envelope that was never posted, as the next message
    let env = alice
        .seal(
            &room,
            &cloister_proto::server::Content::Text {
                text: "forged".into(),
            },
        )
        .await
        .unwrap();
    let event = serde_json::to_string(&Event::Message {
        room,
        seq: s1 + 1,
        envelope: env,
    })
    .unwrap();
    let body = serde_json::json!({
        "node": "mallory",
        "t": "message",
        "room": room,
        "seq": s1 + 1,
        "prev": s1,
        "d": {
            "tenant": alice.tenant(),
            "users": [World::uid("bob")],
            "skip": null,
            "watchers": false,
            "event": event,
        },
    });
    let body = serde_json::to_vec(&body).unwrap();
    let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let id: Vec<u8> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'cluster_id'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    let subject = format!(
        "cloister.{}.{}.room.{}",
        String::from_utf8_lossy(&id),
        alice.tenant(),
        room.to_hex()
    );
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut tagged = cloister_crypto::random_bytes::<32>().unwrap().to_vec();
    tagged.extend_from_slice(&body);
    for payload in [body.clone(), tagged] {
        nats.publish(subject.clone(), payload.into()).await.unwrap();
    }
    nats.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (_, s2) = alice.send_text(&room, "two").await.unwrap();
    assert_eq!(s2, s1 + 1);
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        bob.next_message(&mut bob_live, &room),
    )
    .await
    .expect("a live message within 10 s")
    .unwrap()
    .expect("the stream stays open");
    assert_eq!(m.seq, s2);
    assert_eq!(
        m.content,
        cloister_proto::server::Content::Text { text: "two".into() },
        "node B delivered the forged event"
    );
    pg.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_and_an_attachment_are_good_on_every_node() {
    let Some(pg) = services().await else { return };
    let w = cluster_world(&pg, "a").await;
    let (_b, b_url) = node(&pg.url, "b", w.dir.path()).await;
    let alice = w.user("alice").await;
    let bob = w.user_on("bob", &b_url).await;
    let room = alice
        .create_room(RoomSettings::default(), &[World::uid("bob")])
        .await
        .unwrap();
    // a file uploaded through node A is downloaded through node B
    let src = w.dir.path().join("report.bin");
    let data: Vec<u8> = (0..300_000u32).map(|k| (k % 253) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let (_, seq) = alice.send_file(&room, &src).await.unwrap();
    let got = bob.read(&room, 10, None).await.unwrap();
    let file = got
        .iter()
        .find_map(|r| r.as_ref().ok().filter(|m| m.seq == seq))
        .unwrap();
    let out = w.dir.path().join("copy.bin");
    bob.get_file(&file.content, &out).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // its ciphertext is in the shared database, in chunks
    let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let chunks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blob_chunks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(chunks >= 2, "{chunks} chunks");
    pool.close().await;

    // a session made on node A is good on node B; the login itself is
    // good once, on any node
    let dave = w.raw("dave").await;
    let ts = cloister_proto::now_millis();
    let nonce = [7u8; 16];
    let sig = dave.keys.sign(
        cloister_crypto::signed::LOGIN,
        &cloister_crypto::signed::login_transcript(&dave.keys.device_id(), ts, &nonce),
    );
    let login = cloister_proto::server::LoginRequest {
        device: dave.keys.device_id(),
        ts,
        nonce: cloister_proto::b64::Fixed(nonce),
        sig: cloister_proto::b64::Fixed(sig),
    };
    let r = w
        .http
        .post(format!("{}/v1/session", w.stack.server_url))
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r
        .json::<cloister_proto::server::LoginResponse>()
        .await
        .unwrap()
        .token;
    let r = w
        .http
        .get(format!("{b_url}/v1/rooms"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = w
        .http
        .post(format!("{b_url}/v1/session"))
        .json(&login)
        .send()
        .await
        .unwrap();
    common::expect_error(r, 409, "replayed_request").await;
    pg.cleanup().await;
}

/// Follow `room` across node failures: connect (through the balancer),
/// catch up from history after the last seq seen, then live; on a closed
/// stream, again. Returns every seq received, in the order received. A
/// node that sends one event twice on one connection fails the test.
async fn follow(
    c: Arc<Client>,
    room: cloister_proto::RoomId,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<u64> {
    use std::sync::atomic::Ordering;
    let mut seen: Vec<u64> = Vec::new();
    let last = |s: &Vec<u64>| s.last().copied().unwrap_or(0);
    while !stop.load(Ordering::Relaxed) {
        // the stream first, so nothing falls between history and live
        let Ok(mut stream) = c.connect_events().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut on_this_connection = std::collections::HashSet::new();
        let page = match c.read(&room, 500, None).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{}: catch-up error: {e}", c.user());
                continue;
            }
        };
        for e in page.iter().filter_map(|m| m.as_ref().err()) {
            eprintln!("{}: catch-up message error: {e}", c.user());
        }
        let mut missed: Vec<u64> = page
            .iter()
            .filter_map(|m| m.as_ref().ok())
            .filter(|m| m.seq > last(&seen) && m.sender != *c.user())
            .map(|m| m.seq)
            .collect();
        missed.sort();
        seen.extend(missed);
        loop {
            let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
            match next {
                Ok(Ok(Some(Event::Message {
                    room: r,
                    seq,
                    envelope,
                }))) if r == room => {
                    assert!(
                        on_this_connection.insert(seq),
                        "{}: event {seq} delivered twice on one connection",
                        c.user()
                    );
                    // an event the catch-up already read is skipped here
                    if seq <= last(&seen) {
                        continue;
                    }
                    match c.receive(&room, seq, &envelope).await {
                        Ok(_) => seen.push(seq),
                        Err(e) => eprintln!("{}: live message {seq}: {e}", c.user()),
                    }
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => break, // the node went away: reconnect
                Ok(Err(e)) => {
                    eprintln!("{}: live error: {e}", c.user());
                    break;
                }
                Err(_) if stop.load(Ordering::Relaxed) => return seen,
                Err(_) => {}
            }
        }
    }
    seen
}

/// A database of its own for one more service of the cluster.
async fn another_database() -> PgDatabase {
    PgDatabase::create()
        .await
        .expect("PostgreSQL was reachable a moment ago")
}

/// The whole cluster as processes: three server nodes on one PostgreSQL
/// database and NATS, two KMs on another (one active, one standing by) and
/// a vault on a third, capture required. Each client is behind a balancer
/// that prefers another node. While two clients send, two server nodes and
/// the active KM are killed with -9: every acknowledged message reaches
/// every other member exactly once, in the room's order; the standby KM
/// takes over; the audit log verifies and a device's pinned checkpoint sees
/// no fork.
#[test]
fn a_cluster_survives_losing_server_nodes_and_the_active_km() {
    use common::procs::{Procs, cmd, init_km_pair, ok, spawn_service, wait_http};
    use std::sync::atomic::{AtomicBool, Ordering};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = rt.block_on(services()) else {
        return;
    };
    let (km_db, vault_db) =
        rt.block_on(async { (another_database().await, another_database().await) });
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let mut procs = Procs(Vec::new());

    // three server nodes
    let mut nodes = Vec::new();
    for n in 0..3 {
        let mut c = cmd(None);
        c.env("CLOISTER_DATABASE_URL", &pg.url)
            .env("CLOISTER_NATS_URL", nats_url())
            .args(["server", "--listen", "127.0.0.1:0", "--node"])
            .arg(format!("n{n}"))
            .arg("--data-dir")
            .arg(root.join(format!("n{n}")));
        let (child, url) = spawn_service(c);
        wait_http(&url);
        procs.0.push(child);
        nodes.push(url);
    }
    // balancers: client k prefers node k
    let fronts = rt.block_on(async {
        let mut fronts = Vec::new();
        for k in 0..3 {
            let order: Vec<&str> = (0..3).map(|j| nodes[(k + j) % 3].as_str()).collect();
            fronts.push(common::proxy::Proxy::failover(&order).await);
        }
        fronts
    });

    // two KMs on one database, the second a copy of the first's directory
    let (k1, k2) = (root.join("km1"), root.join("km2"));
    let init = init_km_pair(&k1, &k2, &km_db.url);
    let mut kms = Vec::new();
    for d in [&k1, &k2] {
        let mut c = cmd(None);
        c.env("CLOISTER_DATABASE_URL", &km_db.url)
            .args(["km", "serve", "--listen", "127.0.0.1:0", "--server"])
            .arg(&fronts[2].url)
            .arg("--data-dir")
            .arg(d);
        let (child, url) = spawn_service(c);
        wait_http(&url);
        procs.0.push(child);
        kms.push(url);
        // the first holds the lease before the second starts
        std::thread::sleep(Duration::from_millis(300));
    }
    let km_front = rt.block_on(common::proxy::Proxy::failover(&[&kms[0], &kms[1]]));
    let km = km_front.url.clone();
    ok(cmd(None)
        .args([
            "admin",
            "register-tenant",
            "--server",
            &nodes[0],
            "--km",
            &km,
        ])
        .arg("--operator-token-file")
        .arg(root.join("n0/operator.token"))
        .output()
        .unwrap());

    // the vault, on its own database
    let vdir = root.join("vault");
    ok(cmd(None)
        .env("CLOISTER_DATABASE_URL", &vault_db.url)
        .args(["vault", "init", "--km", &km, "--data-dir"])
        .arg(&vdir)
        .output()
        .unwrap());
    let mut c = cmd(None);
    c.env("CLOISTER_DATABASE_URL", &vault_db.url)
        .args([
            "vault",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--km",
            &km,
            "--refresh-secs",
            "1",
            "--data-dir",
        ])
        .arg(&vdir);
    let (child, vault) = spawn_service(c);
    wait_http(&vault);
    procs.0.push(child);
    // procs: 0..3 server nodes, 3 and 4 the KMs, 5 the vault

    rt.block_on(async move {
        let http = cloister_tls::http_client();
        let admin = Client::enrol(
            http.clone(),
            &fronts[0].url,
            &km,
            &"admin@acme".parse().unwrap(),
            init["code"].as_str().unwrap(),
            Storage::Memory,
        )
        .await
        .unwrap();
        // the firm's escrow (2 of 2 custodians), then capture required
        let mut custodians = Vec::new();
        for name in ["cust1", "cust2"] {
            let user: UserId = World::uid(name);
            let code = admin
                .admin_add_user_roles(&user, &[cloister_proto::km::Role::Custodian])
                .await
                .unwrap()
                .code;
            Client::enrol(
                http.clone(),
                &fronts[0].url,
                &km,
                &user,
                &code,
                Storage::Memory,
            )
            .await
            .unwrap();
            custodians.push(user);
        }
        admin.admin_escrow_init(&custodians, 2).await.unwrap();
        admin.admin_vault_register(&vault, true).await.unwrap();
        let mut users = Vec::new();
        for (k, name) in ["alice", "bob", "carol"].iter().enumerate() {
            let user: UserId = World::uid(name);
            let code = admin.admin_add_user(&user, false).await.unwrap().code;
            let c = Client::enrol(
                http.clone(),
                &fronts[k].url,
                &km,
                &user,
                &code,
                Storage::Memory,
            )
            .await
            .unwrap();
            users.push(Arc::new(c));
        }
        let room = users[0]
            .create_room(
                RoomSettings::default(),
                &[World::uid("bob"), World::uid("carol")],
            )
            .await
            .unwrap();
        // bob pins the audit log's checkpoint
        users[1].audit_checkpoint().await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let followers: Vec<_> = users
            .iter()
            .map(|u| tokio::spawn(follow(u.clone(), room, stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // alice (on n0) and carol (on n2) send, each message captured by
        // the vault first; what was acknowledged must reach the others
        let senders: Vec<_> = [0usize, 2]
            .into_iter()
            .map(|k| {
                let u = users[k].clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..60 {
                        match u.send_text(&room, &format!("m{k}-{i}")).await {
                            Ok((_, seq)) => acked.push(seq),
                            Err(e) => eprintln!("{}: send {i}: {e}", u.user()),
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    (k, acked)
                })
            })
            .collect();
        // kill -9 bob's node, the active KM, then alice's node
        tokio::time::sleep(Duration::from_millis(300)).await;
        for victim in [1, 3, 0] {
            procs.0[victim].kill().unwrap();
            procs.0[victim].wait().unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let mut acked: Vec<(usize, Vec<u64>)> = Vec::new();
        for s in senders {
            acked.push(s.await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let mut got = Vec::new();
        for f in followers {
            got.push(f.await.unwrap());
        }
        for (k, seen) in got.iter().enumerate() {
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "user {k}: out of order or duplicated: {seen:?}"
            );
            for (sender, seqs) in &acked {
                if *sender == k {
                    continue;
                }
                let lost: Vec<&u64> = seqs.iter().filter(|s| !seen.contains(s)).collect();
                assert!(lost.is_empty(), "user {k} lost {lost:?} of user {sender}");
            }
        }
        let total: usize = acked.iter().map(|(_, s)| s.len()).sum();
        assert!(total >= 60, "only {total} of 120 sends acknowledged");
        eprintln!(
            "acknowledged {total} of 120 sends across two node kills and a KM kill; received {:?}",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
        // the standby KM serves; bob's pinned checkpoint is consistent with
        // the log it extends (no fork)
        users[1].audit_checkpoint().await.unwrap();
        // every acknowledged message is in the vault's record
        let n: i64 = {
            let pool = sqlx::PgPool::connect(&vault_db.url).await.unwrap();
            let n = sqlx::query_scalar("SELECT COUNT(*) FROM envelopes")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            n
        };
        assert!(
            n as usize >= total,
            "{n} captures for {total} acknowledged messages"
        );
        drop(procs);
        pg.cleanup().await;
        drop((km_db, vault_db));
    });
}
