//! A device's life: its certificate renewed without a code while it is in
//! good standing, renewal refused once expired or revoked, and a lost
//! device revoked by its user from another device, at the KM and the
//! server at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_proto::room::RoomSettings;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_renews_without_a_code_and_a_user_revokes_a_lost_one() {
    let mut o = opts();
    o.km_config.cert_secs = 3_600;
    let w = World::with(o).await;
    let laptop = w.user("alice").await;
    let phone = w.device_of(laptop.user()).await;
    let bob = w.user("bob").await;
    let room = laptop
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    laptop.send_text(&room, "from the laptop").await.unwrap();

    let (issued, not_after) = laptop.cert_validity().unwrap();
    assert_eq!(not_after - issued, 3_600);
    let old_cert = laptop.cert();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let renewed = laptop.renew_cert().await.unwrap();
    assert!(renewed.issued_at > issued && renewed.not_after > not_after);
    assert_eq!(laptop.cert_validity().unwrap().1, renewed.not_after);
    laptop
        .send_text(&room, "under the renewed certificate")
        .await
        .unwrap();
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 2);
    // the old certificate cannot be put back at the server (it is public:
    // anyone could present it)
    let r = cloister_tls::http_client()
        .post(format!("{}/v1/devices", w.stack.server_url))
        .json(&cloister_proto::server::RegisterDevice { cert: old_cert })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let body: cloister_proto::ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error, "stale_certificate");
    let renewals = w
        .admin
        .audit_list(0, 1_000, Some("device_renewed".into()), None, None)
        .await
        .unwrap();
    assert_eq!(renewals.len(), 1);

    // The laptop is lost. From her phone alice sees both devices and
    // revokes the laptop; bob may not revoke it, nor may anyone revoke a
    // device that does not exist (the same answer: not yours).
    let mine = phone.my_devices().await.unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|d| d.status == "active"));
    let e = bob.revoke_device(&laptop.device()).await.unwrap_err();
    assert_eq!(e.code(), Some("not_your_device"), "{e}");
    let e = bob
        .revoke_device(&cloister_proto::DeviceId([9; 16]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_your_device"), "{e}");
    phone.revoke_device(&laptop.device()).await.unwrap();

    // at once: no key from the KM, no post at the server, no renewal
    laptop.clear_key_cache().unwrap();
    let e = laptop.room_keys(&room, &[0]).await.unwrap_err();
    assert!(
        matches!(e.code(), Some("device_revoked") | Some("revoked")),
        "{e}"
    );
    assert!(laptop.send_text(&room, "from a thief").await.is_err());
    assert!(laptop.renew_cert().await.is_err());
    let mine = phone.my_devices().await.unwrap();
    let laptop_row = mine.iter().find(|d| d.device == laptop.device()).unwrap();
    assert_eq!(laptop_row.status, "revoked");
    // the phone goes on
    phone.send_text(&room, "from the phone").await.unwrap();
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_certificate_renews_itself_and_an_expired_one_cannot() {
    let mut o = opts();
    o.km_config.cert_secs = 4;
    let w = World::with(o).await;
    let alice = w.user("alice").await;
    let (_, first) = alice.cert_validity().unwrap();
    // two thirds of its life gone: the next request renews it first
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    alice.my_devices().await.unwrap();
    let (_, second) = alice.cert_validity().unwrap();
    assert!(second > first, "renewed by itself: {first} -> {second}");
    // left alone past its expiry: refused everywhere, renewal included
    // (the device must enrol again with a code)
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    let e = alice.renew_cert().await.unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    let e = alice.my_devices().await.unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
}
