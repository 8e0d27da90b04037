//! Bad input at the HTTP edge: malformed, truncated, oversized, replayed and
//! unauthorized requests each get a precise 4xx with a JSON body, no panic,
//! and change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_proto::b64::Fixed;
use cloister_proto::km::KmOp;
use cloister_proto::room::RoomSettings;
use common::*;
use proptest::prelude::*;

async fn post_raw(http: &reqwest::Client, url: &str, body: Vec<u8>, ct: &str) -> reqwest::Response {
    http.post(url)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn server_edge_errors_change_nothing() {
    let w = World::new().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "one").await.unwrap();
    let s = &w.stack.server_url;
    let h = &w.http;
    let raw = w.raw("rawuser").await;
    let token = raw.token().await;

    // unknown route, missing token, garbage token
    expect_error(
        h.get(format!("{s}/v1/nope")).send().await.unwrap(),
        404,
        "no_such_endpoint",
    )
    .await;
    expect_error(
        h.get(format!("{s}/v1/rooms")).send().await.unwrap(),
        401,
        "no_token",
    )
    .await;
    expect_error(
        h.get(format!("{s}/v1/rooms"))
            .bearer_auth("xyz")
            .send()
            .await
            .unwrap(),
        401,
        "bad_token",
    )
    .await;
    // malformed path parameter
    expect_error(
        h.get(format!("{s}/v1/rooms/ZZZ/messages"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        400,
        "bad_parameter",
    )
    .await;
    // bad query
    expect_error(
        h.get(format!("{s}/v1/rooms/{room}/messages?limit=banana"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        400,
        "bad_parameter",
    )
    .await;
    // wrong content type, malformed and truncated JSON, unknown fields
    let url = format!("{s}/v1/rooms/{room}/messages");
    let r = h
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_error(r, 415, "unsupported_media_type").await;
    let r = h
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"header\":")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "malformed_json").await;
    let r = h
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"header":"","ciphertext":"","sig":"AA","extra":1}"#)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "malformed_json").await;
    // oversized body
    let big = vec![b' '; cloister_proto::limits::MAX_JSON_BODY + 10];
    let r = h
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "too_large").await;
    // oversized ciphertext inside a well-formed envelope
    let mut env = alice
        .seal(
            &room,
            &cloister_proto::server::Content::Text { text: "x".into() },
        )
        .await
        .unwrap();
    env.ciphertext.0 = vec![0; cloister_proto::limits::MAX_MESSAGE_CIPHERTEXT + 1];
    let e = alice.post_envelope(&room, &env).await.unwrap_err();
    assert_eq!(e.code(), Some("too_large"));
    // a non-member posting a well-formed message gets the uniform 404
    let r = h
        .post(&url)
        .bearer_auth(&token)
        .json(&env)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    // register a tenant without the operator token
    let r = h
        .post(format!("{s}/v1/tenants"))
        .json(&cloister_proto::server::RegisterTenant {
            tenant: "evil".parse().unwrap(),
            km_sign_pk: Fixed([1; 32]),
        })
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "not_operator").await;
    // re-register acme with another KM key, even with the operator token
    let r = h
        .post(format!("{s}/v1/tenants"))
        .bearer_auth(&w.stack.operator_token)
        .json(&cloister_proto::server::RegisterTenant {
            tenant: "acme".parse().unwrap(),
            km_sign_pk: Fixed([1; 32]),
        })
        .send()
        .await
        .unwrap();
    expect_error(r, 409, "tenant_exists").await;
    // a certificate signed by another KM
    let fake_km = cloister_crypto::KmSigner::generate().unwrap();
    let mut cert = raw.cert.clone();
    cert.user = "mallory@acme".parse().unwrap();
    let forged = cloister_crypto::signed::sign_cert(&fake_km, &cert).unwrap();
    let r = h
        .post(format!("{s}/v1/devices"))
        .json(&cloister_proto::server::RegisterDevice { cert: forged })
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "bad_certificate").await;
    // a notice not signed by the tenant's KM
    let n = cloister_crypto::signed::sign_notice(
        &fake_km,
        &cloister_proto::km::Notice::UserDisabled {
            tenant: "acme".parse().unwrap(),
            user: alice.user().clone(),
            ts: 1,
        },
    )
    .unwrap();
    let r = h
        .post(format!("{s}/v1/notices"))
        .json(&cloister_proto::server::PostNotice { notice: n })
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "bad_signature").await;

    // Nothing changed: alice still works, history has exactly one message.
    let got = bob.read(&room, 10, None).await.unwrap();
    assert_eq!(got.len(), 1);
    alice.send_text(&room, "still fine").await.unwrap();
}

#[tokio::test]
async fn km_edge_errors_and_replay() {
    let w = World::new().await;
    let k = &w.stack.km_url;
    let h = &w.http;
    let dev = w.raw("alice").await;

    expect_error(
        post_raw(
            h,
            &format!("{k}/v1/request"),
            b"not json".to_vec(),
            "application/json",
        )
        .await,
        400,
        "malformed_json",
    )
    .await;
    expect_error(
        post_raw(
            h,
            &format!("{k}/v1/enrol"),
            b"{}".to_vec(),
            "application/json",
        )
        .await,
        400,
        "malformed_json",
    )
    .await;
    expect_error(
        post_raw(
            h,
            &format!("{k}/v1/request"),
            vec![b'['; cloister_proto::limits::MAX_JSON_BODY + 1],
            "application/json",
        )
        .await,
        413,
        "too_large",
    )
    .await;

    // a used code cannot be used again; a wrong code fails the same way
    let code = w
        .admin
        .admin_add_user(&World::uid("bob"), false)
        .await
        .unwrap()
        .code;
    let _bob = RawDevice::enrol(&w, &World::uid("bob"), &code).await;
    let keys = cloister_crypto::DeviceKeys::generate().unwrap();
    let u = World::uid("bob");
    let pop = keys.sign(
        cloister_crypto::signed::ENROL,
        &cloister_crypto::signed::enrol_transcript(&u, &code, &keys.sign_pk(), &keys.hpke_pk()),
    );
    let req = cloister_proto::km::EnrolRequest {
        user: u.clone(),
        code: code.clone(),
        sign_pk: Fixed(keys.sign_pk()),
        hpke_pk: Fixed(keys.hpke_pk()),
        pop: Fixed(pop),
        evidence: None,
    };
    let m = expect_error(
        h.post(format!("{k}/v1/enrol"))
            .json(&req)
            .send()
            .await
            .unwrap(),
        401,
        "invalid_code",
    )
    .await;
    assert!(!m.contains(&code), "the code never appears in an error");
    // proof of possession with the wrong key
    let mut bad = req.clone();
    bad.pop = Fixed([0; 64]);
    expect_error(
        h.post(format!("{k}/v1/enrol"))
            .json(&bad)
            .send()
            .await
            .unwrap(),
        401,
        "bad_proof",
    )
    .await;

    // replay of a signed admin request (by an admin device)
    let admin_code = w
        .admin
        .admin_add_user(&World::uid("boss"), true)
        .await
        .unwrap()
        .code;
    let boss = RawDevice::enrol(&w, &World::uid("boss"), &admin_code).await;
    let body = cloister_proto::km::RequestBody {
        device: boss.keys.device_id(),
        ts: cloister_proto::now_millis(),
        nonce: Fixed([5; 16]),
        op: KmOp::AddUser {
            user: World::uid("newbie"),
            roles: vec![],
        },
    };
    let signed = cloister_crypto::signed::sign_request(&boss.keys, &body).unwrap();
    let r = h
        .post(format!("{k}/v1/request"))
        .json(&signed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .post(format!("{k}/v1/request"))
        .json(&signed)
        .send()
        .await
        .unwrap();
    expect_error(r, 409, "replayed_request").await;
    // a stale request
    let old = cloister_proto::km::RequestBody {
        ts: 1_000,
        nonce: Fixed([6; 16]),
        ..body.clone()
    };
    let r = h
        .post(format!("{k}/v1/request"))
        .json(&cloister_crypto::signed::sign_request(&boss.keys, &old).unwrap())
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "stale_request").await;
    // a request signed by another key than the device's
    let mut wrong = cloister_crypto::signed::sign_request(
        &dev.keys,
        &cloister_proto::km::RequestBody {
            nonce: Fixed([7; 16]),
            ..body.clone()
        },
    )
    .unwrap();
    wrong.device = boss.keys.device_id();
    let r = h
        .post(format!("{k}/v1/request"))
        .json(&wrong)
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "bad_signature").await;
    // a non-admin asking for an admin operation
    let (st, b) = dev.km(KmOp::ListUsers).await;
    assert_eq!((st, b["error"].as_str()), (403, Some("not_admin")));
    // too many epochs / none
    let (st, b) = dev
        .km(KmOp::RoomKeys {
            room: cloister_proto::RoomId([1; 16]),
            epochs: vec![],
            log_from: 0,
            log: vec![],
            certs: Vec::new(),
        })
        .await;
    assert_eq!((st, b["error"].as_str()), (400, Some("bad_epochs")));
    let (st, b) = dev
        .km(KmOp::RoomKeys {
            room: cloister_proto::RoomId([1; 16]),
            epochs: (0..5000).collect(),
            log_from: 0,
            log: vec![],
            certs: Vec::new(),
        })
        .await;
    assert_eq!((st, b["error"].as_str()), (400, Some("bad_epochs")));
    let (st, b) = dev
        .km(KmOp::RoomKeys {
            room: cloister_proto::RoomId([1; 16]),
            epochs: vec![0],
            log_from: 0,
            log: vec![],
            certs: Vec::new(),
        })
        .await;
    assert_eq!((st, b["error"].as_str()), (404, Some("unknown_room")));
    // an unknown device
    let stranger = cloister_crypto::DeviceKeys::generate().unwrap();
    let r = h
        .post(format!("{k}/v1/request"))
        .json(
            &cloister_crypto::signed::sign_request(
                &stranger,
                &cloister_proto::km::RequestBody {
                    device: stranger.device_id(),
                    ..body
                },
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unknown_device").await;
    // the users list shows exactly what was created: nothing partial
    let users = w.admin.admin_list_users().await.unwrap();
    let names: Vec<String> = users.iter().map(|u| u.user.to_string()).collect();
    assert_eq!(
        names,
        [
            "admin@acme",
            "alice@acme",
            "bob@acme",
            "boss@acme",
            "newbie@acme"
        ]
    );
}

#[tokio::test]
async fn login_replay_and_stale_login_are_refused() {
    let w = World::new().await;
    let raw = w.raw("alice").await;
    let ts = cloister_proto::now_millis();
    let nonce = [3u8; 16];
    let sig = raw.keys.sign(
        cloister_crypto::signed::LOGIN,
        &cloister_crypto::signed::login_transcript(&raw.keys.device_id(), ts, &nonce),
    );
    let req = cloister_proto::server::LoginRequest {
        device: raw.keys.device_id(),
        ts,
        nonce: Fixed(nonce),
        sig: Fixed(sig),
    };
    let url = format!("{}/v1/session", w.stack.server_url);
    assert_eq!(
        w.http.post(&url).json(&req).send().await.unwrap().status(),
        200
    );
    expect_error(
        w.http.post(&url).json(&req).send().await.unwrap(),
        409,
        "replayed_request",
    )
    .await;
    let mut bad = req.clone();
    bad.nonce = Fixed([4; 16]);
    expect_error(
        w.http.post(&url).json(&bad).send().await.unwrap(),
        401,
        "bad_signature",
    )
    .await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Arbitrary bytes to every JSON endpoint: always a 4xx JSON error, never a 5xx or a hang.
    #[test]
    fn arbitrary_bodies_get_4xx(body in proptest::collection::vec(any::<u8>(), 0..512), which in 0usize..7) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let w = shared_world().await;
            let urls = [
                format!("{}/v1/request", w.0),
                format!("{}/v1/enrol", w.0),
                format!("{}/v1/session", w.1),
                format!("{}/v1/devices", w.1),
                format!("{}/v1/notices", w.1),
                format!("{}/v1/tenants", w.1),
                format!("{}/v1/request", w.2),
            ];
            let r = cloister_tls::http_client().post(&urls[which]).header("content-type", "application/json").body(body).send().await.unwrap();
            let st = r.status().as_u16();
            prop_assert!((400..500).contains(&st), "status {st}");
            let b: cloister_proto::ErrorBody = r.json().await.unwrap();
            prop_assert!(!b.error.is_empty());
            Ok(())
        })?;
    }
}

/// One stack shared by the property test's cases, on its own runtime thread.
async fn shared_world() -> (String, String, String) {
    use std::sync::OnceLock;
    static URLS: OnceLock<(String, String, String)> = OnceLock::new();
    if let Some(u) = URLS.get() {
        return u.clone();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let w = World::new().await;
            tx.send((
                w.stack.km_url.clone(),
                w.stack.server_url.clone(),
                w.stack.vault_url.clone(),
            ))
            .unwrap();
            std::future::pending::<()>().await;
        });
    });
    let u = rx.recv().unwrap();
    let _ = URLS.set(u.clone());
    URLS.get().cloned().unwrap_or(u)
}
