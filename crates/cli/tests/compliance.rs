//! Escrow initialisation and blind-index keys, against the real KM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_crypto::escrow;
use cloister_proto::room::{Action, RoomKind, RoomSettings};
use common::*;

#[tokio::test]
async fn escrow_init_splits_k_of_n_among_custodians() {
    let w = World::new().await;
    let (c1, c2, c3, trader) = (
        w.user("cust1").await,
        w.user("cust2").await,
        w.user("cust3").await,
        w.user("trader").await,
    );
    let custodians = [c1.user().clone(), c2.user().clone(), c3.user().clone()];

    // input checks before anything is created
    assert!(w.admin.admin_escrow_init(&custodians, 4).await.is_err());
    assert!(
        w.admin
            .admin_escrow_init(&custodians[..1], 1)
            .await
            .is_err()
    );
    let e = w
        .admin
        .admin_escrow_init(&[c1.user().clone(), World::uid("ghost")], 2)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ghost"), "{e}");
    assert_eq!(
        trader.escrow_info().await.unwrap_err().code(),
        Some("no_escrow")
    );
    // only admins
    assert_eq!(
        trader
            .admin_escrow_init(&custodians, 2)
            .await
            .unwrap_err()
            .code(),
        Some("not_admin")
    );

    let d = w.admin.admin_escrow_init(&custodians, 2).await.unwrap();
    assert_eq!(d.threshold, 2);
    assert_eq!(d.custodians, custodians.to_vec());
    // every device sees the same KM-signed descriptor
    assert_eq!(trader.escrow_info().await.unwrap(), d);
    // once per tenant
    assert_eq!(
        w.admin
            .admin_escrow_init(&custodians, 2)
            .await
            .unwrap_err()
            .code(),
        Some("escrow_exists")
    );

    // each custodian opens exactly their own share; a non-custodian has none
    let s1 = c1.my_escrow_shares().await.unwrap();
    let s2 = c2.my_escrow_shares().await.unwrap();
    let s3 = c3.my_escrow_shares().await.unwrap();
    assert_eq!((s1.len(), s2.len(), s3.len()), (1, 1, 1));
    assert!(trader.my_escrow_shares().await.unwrap().is_empty());
    // any two recover the key; one does not
    for (a, b) in [(&s1, &s2), (&s2, &s3), (&s1, &s3)] {
        let k = escrow::combine(&[a[0].1.clone(), b[0].1.clone()], 2, &d.public.0).unwrap();
        assert_eq!(k.public().unwrap(), d.public.0);
    }
    assert!(escrow::combine(&[s1[0].1.clone()], 2, &d.public.0).is_err());
    // the KM's files hold only sealed shares: no share appears in clear
    for (path, data) in files_under(&w.dir.path().join("km")) {
        for s in [&s1, &s2, &s3] {
            assert!(
                !contains(&data, s[0].1.expose()),
                "{} holds a share in clear",
                path.display()
            );
        }
    }
    // the audit log recorded it
    let rows = w
        .admin
        .audit_list(0, 1000, Some("escrow_initialised".into()), None, None)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn index_keys_per_period_are_shared_by_the_tenant_and_logged() {
    let w = World::new().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let p = cloister_crypto::blind::period_of(cloister_proto::now_millis());
    let a = alice.index_keys(&[p, p - 1]).await.unwrap();
    let b = bob.index_keys(&[p]).await.unwrap();
    assert_eq!(
        a[&p], b[&p],
        "one index key per period for the whole tenant"
    );
    assert_ne!(a[&p], a[&(p - 1)], "periods have unrelated keys");
    assert_eq!(
        alice.index_keys(&[]).await.unwrap_err().code(),
        Some("bad_periods")
    );
    let rows = w
        .admin
        .audit_list(0, 1000, Some("index_keys_released".into()), None, None)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    // room id zero, under which index keys are sealed, can never be a room
    let raw = w.raw("mallory").await;
    let st = cloister_proto::room::Statement {
        room: cloister_proto::RoomId([0; 16]),
        seq: 0,
        prev: cloister_proto::b64::Fixed([0; 32]),
        actor: raw.keys.device_id(),
        actor_user: raw.user.clone(),
        ts: cloister_proto::now_millis(),
        action: Action::Create {
            kind: RoomKind::Room,
            settings: RoomSettings::default(),
            members: vec![],
        },
    };
    let e = cloister_crypto::signed::sign_statement(&raw.keys, &st).unwrap();
    let (status, body) = raw
        .km(cloister_proto::km::KmOp::RoomKeys {
            room: st.room,
            epochs: vec![p as u64],
            log_from: 0,
            log: vec![e],
        })
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("bad_statement")),
        "{body}"
    );
}

/// Start the tenant's vault in this process on an ephemeral port.
async fn start_vault(w: &World) -> String {
    let km = w.stack.km.info();
    let v = cloister_vault::Vault::open_dir(
        &w.dir.path().join("vault"),
        Some((&km.tenant, km.sign_pk.0)),
    )
    .await
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let r = cloister_vault::router(std::sync::Arc::new(v));
    tokio::spawn(async move { cloister_http::serve(l, r, std::future::pending()).await });
    url
}

#[tokio::test]
async fn sent_messages_are_captured_and_searchable_by_token_only() {
    use cloister_crypto::blind::Field;
    let w = World::new().await;
    let (alice, bob, c1, c2) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("cust1").await,
        w.user("cust2").await,
    );
    w.admin
        .admin_escrow_init(&[c1.user().clone(), c2.user().clone()], 2)
        .await
        .unwrap();
    let vault = start_vault(&w).await;
    alice.set_vault(&vault).await.unwrap();
    w.admin.set_vault(&vault).await.unwrap();
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    alice
        .send_text(&room, "VAULTSECRET sell Harbourview bonds")
        .await
        .unwrap();
    alice.send_text(&room, "lunch at noon").await.unwrap();

    let now = cloister_proto::now_millis();
    let (from, to) = (now - 86_400_000, now + 86_400_000);
    let hits = w
        .admin
        .compliance_search(&[(Field::Keyword, "harbourview".into())], from, to, 50)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].room, room);
    // AND of terms, sender
    let both = w
        .admin
        .compliance_search(
            &[
                (Field::Keyword, "sell".into()),
                (Field::Sender, "alice@acme".into()),
            ],
            from,
            to,
            50,
        )
        .await
        .unwrap();
    assert_eq!(both.len(), 1);
    let none = w
        .admin
        .compliance_search(
            &[
                (Field::Keyword, "sell".into()),
                (Field::Keyword, "lunch".into()),
            ],
            from,
            to,
            50,
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "AND semantics");
    let never = w
        .admin
        .compliance_search(&[(Field::Keyword, "neversent".into())], from, to, 50)
        .await
        .unwrap();
    assert!(never.is_empty());
    let room_hits = w
        .admin
        .compliance_search(&[(Field::Room, room.to_hex())], from, to, 50)
        .await
        .unwrap();
    assert_eq!(room_hits.len(), 2);
    // a non-compliance user may not search
    bob.set_vault(&vault).await.unwrap();
    let e = bob
        .compliance_search(&[(Field::Keyword, "sell".into())], from, to, 50)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_compliance"));
    // the vault's files hold no plaintext and no term
    for (path, data) in files_under(&w.dir.path().join("vault")) {
        for n in [
            &b"VAULTSECRET"[..],
            b"Harbourview",
            b"harbourview",
            b"lunch",
        ] {
            assert!(
                !contains(&data, n),
                "{} holds {:?}",
                path.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
    // a request signed by another key than the certificate's is refused
    let raw = w.raw("mallory").await;
    let op = cloister_proto::vault::VaultOp::Search {
        ts: cloister_proto::now_millis(),
        queries: vec![],
        from_ms: 0,
        to_ms: 1,
        limit: 1,
    };
    let mut req =
        cloister_crypto::signed::sign_vault_request(&raw.keys, &raw.signed_cert, &op).unwrap();
    req.sig.0[0] ^= 1;
    let r = w
        .http
        .post(format!("{vault}/v1/request"))
        .json(&req)
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "bad_request_signature").await;
}
