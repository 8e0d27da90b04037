//! A vault pinned to a jurisdiction: the captures of users certified there
//! go to it and only to it; compliance searches, exports, retention and
//! escrow retirement cover every vault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::Client;
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::km::Role::{Admin, Compliance, Custodian};
use cloister_proto::km::{KmOp, ProfileUpdate};
use cloister_proto::room::RoomSettings;
use cloister_proto::vault::VaultOp;
use common::*;
use std::sync::Arc;

/// A second vault of the tenant, pinned to `j`, served over TLS and
/// pulling the KM's deny list like the stack's own.
async fn pinned_vault(w: &World, j: &str) -> (Arc<cloister_vault::Vault>, String) {
    let info = w.stack.km.info();
    let v = cloister_vault::Vault::open_dir(
        &w.dir.path().join(format!("vault-{j}")),
        Some((&info.tenant, info.sign_pk.0)),
    )
    .await
    .unwrap();
    assert_eq!(v.set_jurisdiction(&j.to_lowercase()).await.unwrap(), j);
    let v = Arc::new(v);
    v.set_km_url(&w.stack.km_url).await.unwrap();
    let tls = test_tls();
    let (l, server_tls, url) = cloister_cli::tls_args::bind_local("vault", Some(&tls))
        .await
        .unwrap();
    let router = cloister_vault::router(v.clone());
    tokio::spawn(async move {
        let _ =
            cloister_http::serve_with(l, server_tls.as_ref(), router, std::future::pending()).await;
    });
    tokio::spawn(v.clone().keep_standing(
        std::time::Duration::from_millis(200),
        std::future::pending(),
    ));
    (v, url)
}

async fn move_to(w: &World, c: &Client, j: &str) {
    w.admin
        .admin_profile_set(
            c.user(),
            ProfileUpdate {
                jurisdiction: Some(j.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // the next certificate carries it
    let cert = c.renew_cert().await.unwrap();
    assert_eq!(cert.jurisdiction, j);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_of_a_pinned_jurisdiction_go_only_to_its_vault() {
    let w = World::new().await;
    let (alice, ursula, bob, carol) = (
        w.user("alice").await,
        w.user("ursula").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let officer = w.user_with("officer", &[Compliance]).await;
    let (c1, c2) = (
        w.user_with("cust1", &[Custodian]).await,
        w.user_with("cust2", &[Custodian]).await,
    );
    w.admin
        .admin_escrow_init(&[c1.user().clone(), c2.user().clone()], 2)
        .await
        .unwrap();
    for c in [&alice, &ursula] {
        move_to(&w, c, "UK").await;
    }
    // the default vault, then one pinned to the UK
    w.register_vault(true).await;
    let (uk, uk_url) = pinned_vault(&w, "UK").await;
    assert_eq!(uk.info().jurisdiction, "UK");
    let d = w.admin.admin_vault_register(&uk_url, true).await.unwrap();
    assert_eq!(d.jurisdiction, "UK");
    let all = officer.vaults().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|d| d.jurisdiction.as_str())
            .collect::<Vec<_>>(),
        ["", "UK"]
    );
    // a plain user may not list them, and learns only their own
    assert!(bob.vaults().await.is_err());
    assert_eq!(
        alice.use_registered_vault().await.unwrap().unwrap().url,
        uk_url.trim_end_matches('/')
    );
    assert_eq!(
        bob.use_registered_vault().await.unwrap().unwrap().url,
        w.stack.vault_url.trim_end_matches('/')
    );
    for c in [&ursula, &carol, &officer] {
        c.use_registered_vault().await.unwrap().unwrap();
    }
    // a UK device cannot be pointed at the default vault
    let e = alice.set_vault(&w.stack.vault_url).await.unwrap_err();
    assert!(
        e.to_string().contains("not the one the KM registered"),
        "{e}"
    );

    let uk_room = alice
        .create_room(RoomSettings::default(), &[ursula.user().clone()])
        .await
        .unwrap();
    let other_room = bob
        .create_room(RoomSettings::default(), &[carol.user().clone()])
        .await
        .unwrap();
    alice.send_text(&uk_room, "GILT switch 40mm").await.unwrap();
    ursula.send_text(&uk_room, "GILT done").await.unwrap();
    bob.send_text(&other_room, "TREASURY bid").await.unwrap();
    let default_vault = &w.stack.vault;
    assert_eq!(uk.envelope_count().await.unwrap(), 2);
    assert_eq!(default_vault.envelope_count().await.unwrap(), 1);

    // the vaults refuse the other side's devices, whatever they send
    let raw_uk = {
        let user = World::uid("mallory");
        let code = w.admin.admin_add_user_roles(&user, &[]).await.unwrap().code;
        w.admin
            .admin_profile_set(
                &user,
                ProfileUpdate {
                    jurisdiction: Some("UK".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        RawDevice::enrol(&w, &user, &code).await
    };
    assert_eq!(raw_uk.cert.jurisdiction, "UK");
    let raw_none = w.raw("nigel").await;
    let junk = |raw: &RawDevice| VaultOp::Capture {
        ts: cloister_proto::now_millis(),
        capture: cloister_proto::vault::Capture {
            envelope: Bytes(b"{}".to_vec()),
            period: 0,
            tokens: vec![],
            received: false,
            header: Bytes(vec![]),
            sig: Fixed([0; 64]),
            sender_cert: raw.signed_cert.clone(),
        },
    };
    let sealed = {
        let d = alice.escrow_info().await.unwrap();
        let s = cloister_proto::vault::SealedEnvelope {
            tenant: "acme".parse().unwrap(),
            message_id: cloister_proto::MessageId([1; 16]),
            room: uk_room,
            ts: cloister_proto::now_millis(),
            ciphertext_sha256: Fixed([2; 32]),
            enc: Fixed([3; 32]),
            ct: Bytes(vec![4; 40]),
            generation: d.generation,
        };
        Bytes(serde_json::to_vec(&s).unwrap())
    };
    let with = |op: VaultOp| match op {
        VaultOp::Capture { ts, mut capture } => {
            capture.envelope = sealed.clone();
            VaultOp::Capture { ts, capture }
        }
        op => op,
    };
    let (s, b) = raw_uk.vault(&w.stack.vault_url, &with(junk(&raw_uk))).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("wrong_vault")), "{b}");
    let (s, b) = raw_none.vault(&uk_url, &with(junk(&raw_none))).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("wrong_vault")), "{b}");
    assert_eq!(uk.envelope_count().await.unwrap(), 2);
    assert_eq!(default_vault.envelope_count().await.unwrap(), 1);

    // a move out of the UK reaches the device at its next certificate
    move_to(&w, &ursula, "US-NY").await;
    let t = ursula.use_registered_vault().await.unwrap().unwrap();
    assert_eq!(t.url, w.stack.vault_url.trim_end_matches('/'));

    // compliance searches every vault
    let hits = officer
        .compliance_search(
            &[(cloister_crypto::blind::Field::Keyword, "gilt".into())],
            cloister_proto::now_millis() - 3_600_000,
            cloister_proto::now_millis() + 3_600_000,
            50,
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 2);
    let hits = officer
        .compliance_search(
            &[(cloister_crypto::blind::Field::Keyword, "treasury".into())],
            cloister_proto::now_millis() - 3_600_000,
            cloister_proto::now_millis() + 3_600_000,
            50,
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);

    // an export reads the vault it is pointed at, and verifies offline
    // under that vault's registered key
    officer.use_vault_in("uk").await.unwrap();
    officer
        .case_open("uk-desk", "", today_scope(vec![], vec![uk_room]), false)
        .await
        .unwrap();
    c1.case_approve("uk-desk").await.unwrap();
    c2.case_approve("uk-desk").await.unwrap();
    let out = w.dir.path().join("uk-export");
    let x = officer
        .case_export("uk-desk", &out, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(x.summary.messages, 2);
    let v = cloister_client::export::verify(&out, Some(w.stack.km.info().sign_pk.0)).unwrap();
    assert_eq!(v.messages, 2);
    let e = officer.use_vault_in("FR").await.unwrap_err();
    assert!(
        e.to_string()
            .contains("no vault is registered for jurisdiction FR"),
        "{e}"
    );

    // retention reaches both vaults
    let (_, p) = officer.retention_run().await.unwrap();
    assert_eq!((p.deleted, p.kept_for_hold), (0, 0));

    // escrow retirement needs every vault's count
    w.admin
        .admin_escrow_rotate(&[c1.user().clone(), c2.user().clone()], 2, 0)
        .await
        .unwrap();
    for v in [&uk, default_vault] {
        v.pull_deny_list().await.unwrap();
    }
    let e = w.admin.admin_escrow_retire(1).await.unwrap_err();
    assert_eq!(e.code(), Some("envelopes_remain"), "{e}");
    // one vault's count alone is not enough
    let admin_raw = w.raw_with("root", &[Admin]).await;
    let (s, count) = admin_raw
        .vault(
            &uk_url,
            &VaultOp::EscrowCount {
                ts: cloister_proto::now_millis(),
                generation: 1,
            },
        )
        .await;
    assert_eq!(s, 200, "{count}");
    let (s, b) = admin_raw
        .km(KmOp::EscrowRetire {
            generation: 1,
            counts: vec![serde_json::from_value(count).unwrap()],
        })
        .await;
    assert_eq!((s, b["error"].as_str()), (401, Some("bad_count")), "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("every registered vault counts"),
        "{b}"
    );
    let mut everything = today_scope(vec![], vec![]);
    everything.reseal = Some(1);
    officer
        .case_open("reseal-1", "", everything, false)
        .await
        .unwrap();
    c1.case_approve("reseal-1").await.unwrap();
    c2.case_approve("reseal-1").await.unwrap();
    for j in ["UK", ""] {
        officer.use_vault_in(j).await.unwrap();
        officer.case_reseal("reseal-1", &|_| {}).await.unwrap();
    }
    let c = w.admin.admin_escrow_retire(1).await.unwrap();
    assert_eq!((c.remaining, c.newest), (0, 2));
}

/// The deny list goes only to a registered vault; a vault registered for
/// one place cannot be registered again for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_vaults_pull_the_deny_list_and_each_has_one_place() {
    let w = World::new().await;
    w.register_vault(false).await;
    let (uk, uk_url) = pinned_vault(&w, "UK").await;
    let e = uk.pull_deny_list().await.unwrap_err();
    assert!(e.contains("not_vault"), "{e}");
    w.admin.admin_vault_register(&uk_url, false).await.unwrap();
    uk.pull_deny_list().await.unwrap();
    // the same vault as the default one: refused
    let e = w
        .admin
        .km_request::<serde_json::Value>(KmOp::VaultRegister {
            url: uk_url.clone(),
            receipt_pk: uk.info().receipt_pk,
            log_key: uk.info().log_key,
            capture_required: false,
            jurisdiction: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("vault_registered"), "{e}");
    let e = w
        .admin
        .km_request::<serde_json::Value>(KmOp::VaultRegister {
            url: uk_url,
            receipt_pk: uk.info().receipt_pk,
            log_key: uk.info().log_key,
            capture_required: false,
            jurisdiction: "Britain".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_vault"), "{e}");
    // the vault will not be pinned to something that is not a jurisdiction
    assert!(uk.set_jurisdiction("Britain").await.is_err());
}
