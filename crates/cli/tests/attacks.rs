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
            connections: Vec::new(),
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
            certs: Vec::new(),
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
        locked: None,
        banned: Default::default(),
    };
    let store = cloister_store::SqlServerStore::open(&cloister_store::sqlite_url(
        &w.dir.path().join("server/server.db"),
    ))
    .await
    .unwrap();
    use cloister_store::RoomLogStore;
    store
        .append_log(
            &room,
            None,
            &[cloister_store::LogRow {
                seq: 0,
                entry: serde_json::to_vec(&genesis).unwrap(),
                hash: state.head.to_vec(),
            }],
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

/// Every call a device can make to the server, the KM and the vault, with
/// `token` (a session obtained while it was in good standing). Returns
/// (what, status, error code) for each.
async fn every_call(
    w: &World,
    dev: &RawDevice,
    token: &str,
    room: cloister_proto::RoomId,
) -> Vec<(String, u16, String)> {
    use cloister_proto::km::{Role, SignedBlob};
    use cloister_proto::vault::{Capture, PeriodQuery, VaultOp};
    let s = &w.stack.server_url;
    let mut out = Vec::new();
    let mut push = |what: &str, status: u16, body: serde_json::Value| {
        out.push((
            what.to_owned(),
            status,
            body["error"].as_str().unwrap_or("").to_owned(),
        ));
    };
    let send = |rb: reqwest::RequestBuilder| async move {
        let r = rb.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json::<serde_json::Value>().await.unwrap_or_default())
    };
    // server
    let ts = now_millis();
    let nonce = cloister_crypto::random_bytes::<16>().unwrap();
    let login = cloister_proto::server::LoginRequest {
        device: dev.keys.device_id(),
        ts,
        nonce: Fixed(nonce),
        sig: Fixed(dev.keys.sign(
            cloister_crypto::signed::LOGIN,
            &cloister_crypto::signed::login_transcript(&dev.keys.device_id(), ts, &nonce),
        )),
    };
    let (st, b) = send(w.http.post(format!("{s}/v1/session")).json(&login)).await;
    push("server login", st, b);
    let (st, b) = send(w.http.post(format!("{s}/v1/devices")).json(
        &cloister_proto::server::RegisterDevice {
            cert: dev.signed_cert.clone(),
        },
    ))
    .await;
    push("server register device", st, b);
    let get = |path: String| w.http.get(format!("{s}{path}")).bearer_auth(token);
    for path in [
        "/v1/rooms".to_owned(),
        format!("/v1/rooms/{room}"),
        format!("/v1/rooms/{room}/log"),
        format!("/v1/rooms/{room}/messages"),
        format!("/v1/devices/{}", dev.keys.device_id()),
        format!("/v1/blobs/{}", "AAAAAAAAAAAAAAAAAAAAAA"),
    ] {
        let (st, b) = send(get(path.clone())).await;
        push(&format!("server GET {path}"), st, b);
    }
    let leave = sign_statement(
        &dev.keys,
        &Statement {
            room,
            seq: 1,
            prev: Fixed([0; 32]),
            actor: dev.keys.device_id(),
            actor_user: dev.user.clone(),
            ts: now_millis(),
            action: Action::Leave,
            connections: Vec::new(),
        },
    )
    .unwrap();
    let (st, b) = send(
        w.http
            .post(format!("{s}/v1/rooms/{room}/log"))
            .bearer_auth(token)
            .json(&AppendLog { entry: leave }),
    )
    .await;
    push("server append log", st, b);
    let (st, b) = send(
        w.http
            .post(format!("{s}/v1/rooms/{room}/messages"))
            .bearer_auth(token)
            .json(&serde_json::json!({"header": "", "ciphertext": "", "sig": ""})),
    )
    .await;
    push("server post message", st, b);
    let (st, b) = send(
        w.http
            .put(format!("{s}/v1/rooms/{room}/blobs/AAAAAAAAAAAAAAAAAAAAAA"))
            .bearer_auth(token)
            .body(vec![1u8; 100]),
    )
    .await;
    push("server put blob", st, b);
    let (st, b) = send(
        w.http
            .get(format!("{s}/v1/ws"))
            .bearer_auth(token)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    )
    .await;
    push("server websocket", st, b);
    // KM
    for op in [
        KmOp::RoomKeys {
            room,
            epochs: vec![0],
            log_from: 0,
            log: vec![],
            certs: Vec::new(),
        },
        KmOp::AuditCheckpoint,
        KmOp::IndexKeys { periods: vec![1] },
        KmOp::EscrowInfo,
        KmOp::VaultInfo,
        KmOp::CaseList,
        KmOp::WhoHasKeys { room },
        KmOp::AddUser {
            user: World::uid("zed"),
            roles: vec![Role::Admin],
        },
    ] {
        let what = format!("KM {}", serde_json::to_value(&op).unwrap()["op"]);
        let (st, b) = dev.km_at(&w.stack.km_url, op).await;
        push(&what, st, b);
    }
    // vault
    let garbage = SignedBlob {
        body: cloister_proto::b64::Bytes(b"{}".to_vec()),
        sig: Fixed([0; 64]),
    };
    let q = vec![PeriodQuery {
        period: 1,
        tokens: vec![Fixed([1; 16])],
    }];
    for op in [
        VaultOp::Capture {
            ts: now_millis(),
            capture: Capture {
                envelope: cloister_proto::b64::Bytes(b"{}".to_vec()),
                period: 1,
                tokens: vec![],
                received: false,
                header: cloister_proto::b64::Bytes(b"{}".to_vec()),
                sig: Fixed([0; 64]),
                sender_cert: dev.signed_cert.clone(),
            },
        },
        VaultOp::Search {
            ts: now_millis(),
            queries: q.clone(),
            from_ms: 0,
            to_ms: u64::MAX,
            limit: 10,
        },
        VaultOp::Checkpoint { ts: now_millis() },
        VaultOp::Fetch {
            ts: now_millis(),
            case: garbage.clone(),
            tokens: q,
            after: None,
            limit: 10,
            size: 0,
        },
        VaultOp::Purge {
            ts: now_millis(),
            order: garbage.clone(),
        },
    ] {
        let what = format!("vault {}", serde_json::to_value(&op).unwrap()["op"]);
        let (st, b) = dev.vault(&w.stack.vault_url, &op).await;
        push(&what, st, b);
    }
    out
}

/// What an attacker could have changed, counted in the services' databases.
async fn footprint(w: &World) -> String {
    let count = |db: &'static str, tables: &'static [&'static str]| {
        let path = w.dir.path().join(db);
        async move {
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&path)
                    .read_only(true),
            )
            .await
            .unwrap();
            let mut out = Vec::new();
            for t in tables {
                let n: i64 =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                out.push(format!("{db}:{t}={n}"));
            }
            pool.close().await;
            out.join(" ")
        }
    };
    format!(
        "{} {} {} vault: {} envelopes, log {}",
        count(
            "server/server.db",
            &["messages", "room_log", "blobs", "devices", "rooms"]
        )
        .await,
        count(
            "km/km.db",
            &["users", "devices", "room_log", "room_keys", "cases"]
        )
        .await,
        count("vault/vault.db", &["envelopes", "tokens"]).await,
        w.stack.vault.envelope_count().await.unwrap(),
        w.stack.vault.log_size()
    )
}

fn assert_all_refused(calls: &[(String, u16, String)], codes: &[&str]) {
    let bad: Vec<_> = calls
        .iter()
        .filter(|(_, st, code)| !(*st >= 400 && codes.contains(&code.as_str())))
        .collect();
    assert!(bad.is_empty(), "not refused as {codes:?}: {bad:#?}");
    assert!(calls.len() >= 25, "{}", calls.len());
}

/// A room with `dev` and `member` in it, one message, and the vault registered.
async fn setup_room(w: &World, dev: &RawDevice, member: &RawDevice) -> cloister_proto::RoomId {
    let room = cloister_policy::room_id_from_random(cloister_crypto::random_bytes().unwrap());
    let genesis = sign_statement(
        &member.keys,
        &Statement {
            room,
            seq: 0,
            prev: Fixed([0; 32]),
            actor: member.keys.device_id(),
            actor_user: member.user.clone(),
            ts: now_millis(),
            action: Action::Create {
                kind: RoomKind::Room,
                settings: RoomSettings::default(),
                members: vec![dev.user.clone()],
            },
            connections: Vec::new(),
        },
    )
    .unwrap();
    let r = w
        .http
        .post(format!("{}/v1/rooms/{room}/log", w.stack.server_url))
        .bearer_auth(member.token().await)
        .json(&AppendLog { entry: genesis })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    room
}

#[tokio::test]
async fn a_revoked_device_or_disabled_user_is_refused_by_every_service() {
    let w = World::new().await;
    w.register_vault(false).await;
    let member = w.raw("bob").await;
    for case in ["revoked", "disabled"] {
        let dev = w
            .raw_with(&format!("m{case}"), &[cloister_proto::km::Role::Compliance])
            .await;
        let room = setup_room(&w, &dev, &member).await;
        let token = dev.token().await;
        // in good standing, the vault answers it
        let (st, b) = dev
            .vault(
                &w.stack.vault_url,
                &cloister_proto::vault::VaultOp::Checkpoint { ts: now_millis() },
            )
            .await;
        assert_eq!(st, 200, "{b}");
        if case == "revoked" {
            w.admin
                .admin_revoke_device(&dev.keys.device_id())
                .await
                .unwrap();
        } else {
            w.admin.admin_disable_user(&dev.user).await.unwrap();
        }
        // the vault learns it from the KM by itself, within its refresh interval
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (st, _) = dev
                .vault(
                    &w.stack.vault_url,
                    &cloister_proto::vault::VaultOp::Checkpoint { ts: now_millis() },
                )
                .await;
            if st == 403 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the vault never learnt"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let before = footprint(&w).await;
        let calls = every_call(&w, &dev, &token, room).await;
        let code = if case == "revoked" {
            "device_revoked"
        } else {
            "user_disabled"
        };
        assert_all_refused(&calls, &[code]);
        assert_eq!(footprint(&w).await, before, "nothing written");
    }
}

#[tokio::test]
async fn an_expired_certificate_is_refused_by_every_service() {
    let mut o = opts();
    o.km_config.cert_secs = 4;
    let w = World::with(o).await;
    w.register_vault(false).await;
    let member = w.raw("bob").await;
    let dev = w
        .raw_with("old", &[cloister_proto::km::Role::Compliance])
        .await;
    let room = setup_room(&w, &dev, &member).await;
    let token = dev.token().await;
    while cloister_proto::now_secs() <= dev.cert.not_after {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let before = footprint(&w).await;
    let calls = every_call(&w, &dev, &token, room).await;
    assert_all_refused(&calls, &["cert_expired"]);
    assert_eq!(footprint(&w).await, before, "nothing written");
}

#[tokio::test]
async fn another_tenants_device_gets_nothing_of_this_tenant() {
    let w = World::new().await;
    w.register_vault(false).await;
    let member = w.raw("bob").await;
    let alice = w.raw("alice").await;
    let room = setup_room(&w, &alice, &member).await;
    let globex = w.foreign("globex").await;
    let token = globex.device.token().await;
    let before = footprint(&w).await;
    let calls = every_call(&w, &globex.device, &token, room).await;
    // Its own session and its own room list are its tenant's business; every
    // call on acme's room, acme's KM or acme's vault is refused.
    let on_acme: Vec<_> = calls
        .into_iter()
        .filter(|(what, _, _)| {
            !matches!(
                what.as_str(),
                "server login"
                    | "server register device"
                    | "server GET /v1/rooms"
                    | "server websocket"
            ) && !what.starts_with("server GET /v1/devices")
        })
        .collect();
    let bad: Vec<_> = on_acme.iter().filter(|(_, st, _)| *st < 400).collect();
    assert!(bad.is_empty(), "{bad:#?}");
    // the KM does not know it; the vault finds its certificate is not signed
    // by this tenant's KM
    for (what, st, code) in &on_acme {
        if what.starts_with("KM") {
            assert_eq!((*st, code.as_str()), (401, "unknown_device"), "{what}");
        }
        if what.starts_with("vault") {
            assert_eq!(
                (*st, code.as_str()),
                (401, "bad_request_signature"),
                "{what}"
            );
        }
    }
    assert_eq!(footprint(&w).await, before, "nothing written");
    // its own room list holds nothing of acme's
    let r = w
        .http
        .get(format!("{}/v1/rooms", w.stack.server_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "[]");
}

#[tokio::test]
async fn the_vault_fails_closed_when_it_cannot_reach_the_km() {
    let w = World::new().await;
    w.register_vault(false).await;
    let dev = w
        .raw_with("olivia", &[cloister_proto::km::Role::Compliance])
        .await;
    let op = cloister_proto::vault::VaultOp::Checkpoint { ts: now_millis() };
    assert_eq!(dev.vault(&w.stack.vault_url, &op).await.0, 200);
    // the KM moves out of reach, and the list the vault holds gets old
    w.stack
        .vault
        .set_km_url("http://127.0.0.1:9")
        .await
        .unwrap();
    w.stack.vault.set_standing_max_age(1);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (st, b) = dev.vault(&w.stack.vault_url, &op).await;
    assert_eq!(
        (st, b["error"].as_str()),
        (503, Some("standing_unknown")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("cannot be confirmed"),
        "{b}"
    );
    // back in reach: answered again
    w.stack.vault.set_km_url(&w.stack.km_url).await.unwrap();
    w.stack.vault.set_standing_max_age(60_000);
    assert_eq!(dev.vault(&w.stack.vault_url, &op).await.0, 200);
    // and the deny list endpoint of the KM answers only the registered vault
    let r = w
        .http
        .post(format!("{}/v1/deny-list", w.stack.km_url))
        .json(&cloister_proto::km::DenyListRequest {
            tenant: "acme".parse().unwrap(),
            ts: now_millis(),
            sig: Fixed([0; 64]),
        })
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "not_vault").await;
}

/// An insider captures envelopes that lie about who wrote a message: the
/// vault checks the sender's signature and certificate before it stores
/// anything.
#[tokio::test]
async fn the_vault_refuses_an_envelope_that_lies_about_its_sender() {
    use cloister_proto::vault::{Capture, SealedEnvelope, VaultOp};
    let w = World::new().await;
    let mut custodians = Vec::new();
    for n in ["cust1", "cust2"] {
        let c = w.user_with(n, &[cloister_proto::km::Role::Custodian]).await;
        custodians.push(c.user().clone());
    }
    w.admin.admin_escrow_init(&custodians, 2).await.unwrap();
    w.register_vault(true).await;
    let alice = w.user("alice").await;
    let bob = w.raw("bob").await;
    let room = alice
        .create_room(RoomSettings::default(), std::slice::from_ref(&bob.user))
        .await
        .unwrap();
    // an honest message from alice, captured by her device
    alice.send_text(&room, "buy 10mm").await.unwrap();
    // bob (a member) sees its envelope at the server
    let page: cloister_proto::server::HistoryPage =
        bob.get(&format!("/v1/rooms/{room}/messages")).await;
    let real = &page.messages[0].envelope;
    let h = cloister_crypto::message::peek_header(real).unwrap();
    let alice_cert: cloister_proto::km::SignedCert =
        bob.get(&format!("/v1/devices/{}", h.device)).await;
    let count = w.stack.vault.envelope_count().await.unwrap();
    let log = w.stack.vault.log_size();
    let sealed = |id: cloister_proto::MessageId, ct_sha: [u8; 32], ts: u64| {
        serde_json::to_vec(&SealedEnvelope {
            tenant: "acme".parse().unwrap(),
            message_id: id,
            room,
            ts,
            ciphertext_sha256: Fixed(ct_sha),
            enc: Fixed([2; 32]),
            ct: cloister_proto::b64::Bytes(vec![3; 64]),
            generation: 1,
        })
        .unwrap()
    };
    let capture = |envelope: Vec<u8>,
                   header: &cloister_proto::b64::Bytes,
                   sig: Fixed<64>,
                   cert: &cloister_proto::km::SignedCert,
                   received: bool| VaultOp::Capture {
        ts: now_millis(),
        capture: Capture {
            envelope: envelope.into(),
            period: 0,
            tokens: vec![],
            received,
            header: header.clone(),
            sig,
            sender_cert: cert.clone(),
        },
    };
    let ct_sha = cloister_crypto::sha256(real.ciphertext.as_slice());
    let new_id = cloister_proto::MessageId([0x5a; 16]);
    // a message bob signed whose header names alice as its sender
    let mut lie = h.clone();
    lie.id = new_id;
    let lie_env = cloister_crypto::message::seal_raw(
        &bob.keys,
        &cloister_crypto::RoomKey::from_bytes([1; 32]),
        new_id.as_bytes(),
        serde_json::to_vec(&lie).unwrap(),
        b"{}",
    )
    .unwrap();
    let lie_sha = cloister_crypto::sha256(lie_env.ciphertext.as_slice());
    let cases = [
        // alice's real header, captured by bob as if he were its sender
        (
            "bob as the sender of alice's message",
            capture(
                sealed(h.id, ct_sha, h.ts),
                &real.header,
                real.sig,
                &alice_cert,
                false,
            ),
            "the messages it signed",
        ),
        // alice's header and signature moved onto another message id
        (
            "alice's signature on another message",
            capture(
                sealed(new_id, ct_sha, h.ts),
                &real.header,
                real.sig,
                &alice_cert,
                true,
            ),
            "differ from the signed header",
        ),
        // alice's header over another ciphertext
        (
            "alice's header over other bytes",
            capture(
                sealed(h.id, [9; 32], h.ts),
                &real.header,
                real.sig,
                &alice_cert,
                true,
            ),
            "signature does not cover",
        ),
        // a header bob signed that names alice, with alice's certificate
        (
            "bob's signature offered as alice's",
            capture(
                sealed(new_id, lie_sha, h.ts),
                &lie_env.header,
                lie_env.sig,
                &alice_cert,
                true,
            ),
            "signature does not cover",
        ),
        // the same, with bob's own certificate: the header names someone else
        (
            "a header naming alice under bob's certificate",
            capture(
                sealed(new_id, lie_sha, h.ts),
                &lie_env.header,
                lie_env.sig,
                &bob.signed_cert,
                false,
            ),
            "not the certificate's holder",
        ),
    ];
    for (what, op, why) in cases {
        let (st, b) = bob.vault(&w.stack.vault_url, &op).await;
        assert_eq!(
            (st, b["error"].as_str()),
            (403, Some("unattributable")),
            "{what}: {b}"
        );
        assert!(b["message"].as_str().unwrap().contains(why), "{what}: {b}");
    }
    assert_eq!(w.stack.vault.envelope_count().await.unwrap(), count);
    assert_eq!(w.stack.vault.log_size(), log);
}

/// The KM's room head and verified log are for the room's members (past
/// and present) only: a stranger, another tenant's device and a revoked
/// member get nothing.
#[tokio::test]
async fn the_kms_room_head_and_log_are_not_for_strangers() {
    let w = World::new().await;
    let alice = w.raw("alice").await;
    let member = w.raw("bob").await;
    let room = setup_room(&w, &member, &alice).await;
    let head = |room| KmOp::RoomHead {
        room,
        log_from: 1,
        log: vec![],
        certs: Vec::new(),
    };
    let log = |room| KmOp::RoomLog { room, from: 0 };
    // a member gives the KM the room's log and gets the signed head
    let page: cloister_proto::server::LogPage =
        member.get(&format!("/v1/rooms/{room}/log?from=0")).await;
    let (st, b) = member
        .km(KmOp::RoomHead {
            room,
            log_from: 0,
            log: page.entries,
            certs: Vec::new(),
        })
        .await;
    assert_eq!(st, 200, "{b}");
    // the members get both
    assert_eq!(st, 200, "{b}");
    let (st, b) = member.km(log(room)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["entries"].as_array().unwrap().len(), 1);
    // a stranger: the same answer as for a room that does not exist
    let mallory = w.raw("mallory").await;
    for op in [head(room), log(room)] {
        let (st, b) = mallory.km(op).await;
        assert_eq!(
            (st, b["error"].as_str()),
            (404, Some("unknown_room")),
            "{b}"
        );
        assert!(!b.to_string().contains("bob@acme"), "{b}");
    }
    let nowhere = cloister_policy::room_id_from_random([0x44; 16]);
    let (st, b) = mallory.km(log(nowhere)).await;
    assert_eq!(
        (st, b["error"].as_str()),
        (404, Some("unknown_room")),
        "{b}"
    );
    // another tenant's device is not known to this KM at all
    let globex = w.foreign("globex").await;
    let (st, b) = globex.device.km_at(&w.stack.km_url, log(room)).await;
    assert_eq!(
        (st, b["error"].as_str()),
        (401, Some("unknown_device")),
        "{b}"
    );
    // a revoked member: refused by standing
    w.admin
        .admin_revoke_device(&member.keys.device_id())
        .await
        .unwrap();
    let (st, b) = member.km(log(room)).await;
    assert_eq!(
        (st, b["error"].as_str()),
        (403, Some("device_revoked")),
        "{b}"
    );
}
