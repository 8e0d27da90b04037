//! Rate limits: 429 with Retry-After on every costly endpoint, counted
//! only for requests the device really signed; enrolment codes burned
//! after a few wrong tries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::{Client, Storage};
use cloister_crypto::blind::Field;
use cloister_proto::km::Role::{Compliance, Custodian};
use cloister_proto::room::RoomSettings;
use common::*;

fn tight() -> cloister_cli::StackOptions {
    let mut o = opts();
    // bursts are ten seconds' worth: 1/s allows 10 at once
    o.km_config.limits.key_requests_per_sec = 1;
    o.km_config.limits.enrolments_per_min = 30;
    o.server_config.limits.posts_per_sec = 1;
    o.vault_limits.searches_per_sec = 1;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_key_requests_and_searches_are_limited_per_device() {
    let w = World::with(tight()).await;
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    // posts: ten at once, then refused; another device has its own allowance
    let mut refused = None;
    for i in 0..12 {
        if let Err(e) = alice.send_text(&room, &format!("m{i}")).await {
            refused = Some((i, e));
            break;
        }
    }
    let (at, e) = refused.expect("the 11th post at once is refused");
    assert!(at >= 9, "the burst holds ten: refused at {at}");
    assert_eq!(e.code(), Some("rate_limited"), "{e}");
    assert!(e.to_string().contains("retry in"), "{e}");
    bob.send_text(&room, "bob still posts").await.unwrap();

    // key requests: the same, per device
    let mut refused = None;
    for i in 0..12 {
        bob.clear_key_cache().unwrap();
        if let Err(e) = bob.room_keys(&room, &[0]).await {
            refused = Some((i, e));
            break;
        }
    }
    let (_, e) = refused.expect("key requests are limited");
    assert_eq!(e.code(), Some("rate_limited"), "{e}");
    // a non-member's refusals count against its own device only
    carol.clear_key_cache().unwrap();
    assert_eq!(
        carol.room_keys(&room, &[0]).await.unwrap_err().code(),
        Some("not_entitled")
    );

    // searches at the vault
    let officer = w.user_with("officer", &[Compliance]).await;
    let cust = [
        w.user_with("c1", &[Custodian]).await,
        w.user_with("c2", &[Custodian]).await,
    ];
    w.admin
        .admin_escrow_init(&[cust[0].user().clone(), cust[1].user().clone()], 2)
        .await
        .unwrap();
    w.register_vault(false).await;
    officer.use_registered_vault().await.unwrap().unwrap();
    let now = cloister_proto::now_millis();
    let mut refused = None;
    for i in 0..12 {
        let r = officer
            .compliance_search(&[(Field::Keyword, "bonds".into())], now - 1000, now, 10)
            .await;
        if let Err(e) = r {
            refused = Some((i, e));
            break;
        }
    }
    let (_, e) = refused.expect("searches are limited");
    assert_eq!(e.code(), Some("rate_limited"), "{e}");
}

/// A forged request naming another device's id is refused for its
/// signature and does not spend that device's allowance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_requests_do_not_spend_another_devices_allowance() {
    let mut o = opts();
    o.km_config.limits.requests_per_sec = 1;
    let w = World::with(o).await;
    let alice = w.raw("alice").await;
    let mallory = cloister_crypto::DeviceKeys::generate().unwrap();
    for _ in 0..40 {
        // signed by another key, in alice's device's name
        let body = cloister_proto::km::RequestBody {
            device: alice.keys.device_id(),
            ts: cloister_proto::now_millis(),
            nonce: cloister_proto::b64::Fixed(cloister_crypto::random_bytes::<16>().unwrap()),
            op: cloister_proto::km::KmOp::EscrowInfo,
        };
        let mut forged = cloister_crypto::signed::sign_request(&mallory, &body).unwrap();
        forged.device = alice.keys.device_id();
        let r = w
            .http
            .post(format!("{}/v1/request", w.stack.km_url))
            .json(&forged)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    let (status, body) = alice.km(cloister_proto::km::KmOp::EscrowInfo).await;
    assert_ne!(status, 429, "{body}");
    assert_ne!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolments_are_limited_per_address_with_retry_after() {
    let mut o = opts();
    o.km_config.limits.enrolments_per_min = 3;
    let w = World::with(o).await;
    // The admin's own enrolment took one; two more, then 429.
    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..4 {
        let r = w
            .http
            .post(format!("{}/v1/enrol", w.stack.km_url))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status().as_u16() == 429 {
            retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], "rate_limited");
            break;
        }
    }
    assert_eq!(statuses, [400, 400, 429], "{statuses:?}");
    let retry = retry.expect("Retry-After on a 429");
    assert!((1..=20).contains(&retry), "{retry}");
    // other endpoints are not affected
    let r = w
        .http
        .get(format!("{}/v1/info", w.stack.km_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_code_is_burned_after_five_wrong_tries() {
    let w = World::new().await;
    let dave = World::uid("dave");
    let code = w.admin.admin_add_user(&dave, false).await.unwrap().code;
    let enrol = |code: String| {
        let http = w.http.clone();
        let (server, km, dave) = (
            w.stack.server_url.clone(),
            w.stack.km_url.clone(),
            dave.clone(),
        );
        async move { Client::enrol(http, &server, &km, &dave, &code, Storage::Memory).await }
    };
    for i in 0..cloister_km::MAX_CODE_TRIES {
        let e = enrol(format!("AAAAA-AAAAA-AAAAA-AAAA{i}"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("invalid_code"), "{e}");
        assert!(e.to_string().contains("burned after 5 wrong tries"), "{e}");
    }
    // the right code no longer works
    let e = enrol(code).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_code"), "{e}");
    let kinds = audit_kinds(&w).await;
    assert!(
        kinds.iter().any(|(k, _)| k == "enrolment_code_burned"),
        "the burning is audited: {kinds:?}"
    );
    // a new code from the admin works
    let code = w.admin.admin_add_user(&dave, false).await.unwrap().code;
    enrol(code).await.unwrap();
}
