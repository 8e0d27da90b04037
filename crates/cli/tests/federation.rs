//! Trust between firms (issue 11, part 1): an admin pins another firm's KM
//! identity after comparing its fingerprint out of band. Nothing is trusted
//! by default; a wrong fingerprint, a key of another tenant, the firm's own
//! key, a malformed or oversized key, a second key for a trusted firm, a
//! non-admin and a replayed request are refused and pin nothing; a removal
//! is kept in the record; every change is an audit record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_crypto::signed;
use cloister_proto::b64::Fixed;
use cloister_proto::federation::{KmIdentity, OwnIdentity, TrustedFirm};
use cloister_proto::km::{KmOp, RequestBody};
use cloister_proto::{TenantId, now_millis};
use common::World;

fn t(s: &str) -> TenantId {
    s.parse().unwrap()
}

#[tokio::test]
async fn admins_pin_partner_kms_explicitly_and_every_change_is_audited() {
    let w = World::new().await;
    let bank = w.foreign("bank").await;
    // nothing is trusted by default
    assert!(w.admin.trust_list().await.unwrap().is_empty());

    // each firm's admin reads its own KM identity
    let acme_id = w.admin.trust_self().await.unwrap();
    assert_eq!(acme_id.tenant, t("acme"));
    assert_eq!(acme_id.fingerprint.split(' ').count(), 10);
    let parsed = KmIdentity::parse(&acme_id.km_key).unwrap();
    assert_eq!(parsed.sign_pk, w.stack.km.info().sign_pk.0);
    let (s, b) = bank.device.km_at(&bank.km_url, KmOp::TrustSelf).await;
    assert_eq!(s, 200, "{b}");
    let bank_id: OwnIdentity = serde_json::from_value(b).unwrap();
    assert_eq!(bank_id.tenant, t("bank"));
    assert_ne!(bank_id.km_key, acme_id.km_key);

    // refusals pin nothing
    let expect = |r: Result<TrustedFirm, cloister_client::ClientError>, code: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Some(code), "{e}");
    };
    // a fingerprint other than the one compared
    expect(
        w.admin
            .trust_add(&t("bank"), &bank_id.km_key, Some("0000 1111 2222"))
            .await,
        "fingerprint_mismatch",
    );
    // bank's key offered as another firm's
    expect(
        w.admin.trust_add(&t("fund"), &bank_id.km_key, None).await,
        "bad_km_key",
    );
    // the firm's own key
    expect(
        w.admin.trust_add(&t("acme"), &acme_id.km_key, None).await,
        "own_tenant",
    );
    // malformed and oversized keys
    for bad in [
        "garbage".to_owned(),
        "cloister-km1.bank.AAAA".to_owned(),
        format!("cloister-km1.bank.{}", "A".repeat(400)),
    ] {
        expect(
            w.admin.trust_add(&t("bank"), &bad, None).await,
            "bad_km_key",
        );
    }
    assert!(w.admin.trust_list().await.unwrap().is_empty());

    // pinned with the fingerprint read out of band (spacing and case ignored)
    let fp = bank_id.fingerprint.to_uppercase().replace(' ', "");
    let rec = w
        .admin
        .trust_add(&t("bank"), &bank_id.km_key, Some(&fp))
        .await
        .unwrap();
    assert!(rec.active());
    assert_eq!(rec.fingerprint, bank_id.fingerprint);
    assert_eq!(rec.added_by, World::uid("admin"));
    // the same key again changes nothing; another key for bank is refused
    assert_eq!(
        w.admin
            .trust_add(&t("bank"), &bank_id.km_key, None)
            .await
            .unwrap(),
        rec
    );
    let other = KmIdentity {
        tenant: t("bank"),
        sign_pk: w.stack.km.info().sign_pk.0,
        exchange_pk: [7; 32],
    };
    expect(
        w.admin
            .trust_add(&t("bank"), &other.to_key_string(), None)
            .await,
        "trust_exists",
    );

    // a user who is not an admin, through the KM's API
    let mallory = w.raw("mallory").await;
    for op in [
        KmOp::TrustSelf,
        KmOp::TrustList,
        KmOp::TrustAdd {
            tenant: t("evil"),
            km_key: other.to_key_string().replace("bank", "evil"),
            fingerprint: None,
            km_url: None,
        },
        KmOp::TrustRemove {
            tenant: t("bank"),
            reason: "mine".into(),
        },
    ] {
        let (s, b) = mallory.km(op).await;
        assert_eq!(s, 403, "{b}");
    }
    // another firm's admin at acme's KM
    let (s, b) = bank
        .device
        .km_at(
            &w.stack.km_url,
            KmOp::TrustRemove {
                tenant: t("bank"),
                reason: "x".into(),
            },
        )
        .await;
    assert!(s == 401 || s == 403, "{s} {b}");

    // a replayed admin request is refused
    let admin = w.raw_with("ada", &[cloister_proto::km::Role::Admin]).await;
    let body = RequestBody {
        device: admin.keys.device_id(),
        ts: now_millis(),
        nonce: Fixed(cloister_crypto::random_bytes::<16>().unwrap()),
        op: KmOp::TrustRemove {
            tenant: t("bank"),
            reason: "deal closed".into(),
        },
    };
    let req = signed::sign_request(&admin.keys, &body).unwrap();
    let send = || async {
        w.http
            .post(format!("{}/v1/request", w.stack.km_url))
            .json(&req)
            .send()
            .await
            .unwrap()
    };
    let first = send().await;
    assert_eq!(first.status(), 200);
    let removed: TrustedFirm = first.json().await.unwrap();
    assert_eq!(removed.removed.as_ref().unwrap().reason, "deal closed");
    common::expect_error(send().await, 409, "replayed_request").await;

    // removal: kept in the record, refused twice, needs a reason
    let list = w.admin.trust_list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(!list[0].active());
    expect(
        w.admin.trust_remove(&t("bank"), "again").await,
        "not_trusted",
    );
    w.admin
        .trust_add(&t("bank"), &bank_id.km_key, None)
        .await
        .unwrap();
    expect(
        w.admin.trust_remove(&t("bank"), " ").await,
        "reason_required",
    );
    assert!(w.admin.trust_list().await.unwrap()[0].active());

    // every change is in the audit log, with the fingerprint
    let audit = common::audit_kinds(&w).await;
    let kinds: Vec<&str> = audit
        .iter()
        .filter(|(k, _)| k.starts_with("trust_"))
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(kinds, ["trust_added", "trust_removed", "trust_added"]);
    assert!(
        audit
            .iter()
            .filter(|(k, _)| k.starts_with("trust_"))
            .all(|(_, d)| d.contains(&bank_id.fingerprint) && d.contains("bank")),
        "{audit:?}"
    );
}

/// A bank user's device, enrolled through bank's KM by its admin.
async fn bank_user(w: &World, bank: &common::Foreign, name: &str) -> cloister_client::Client {
    let user: cloister_proto::UserId = format!("{name}@bank").parse().unwrap();
    let (s, b) = bank
        .device
        .km_at(
            &bank.km_url,
            KmOp::AddUser {
                user: user.clone(),
                roles: vec![cloister_proto::km::Role::User],
            },
        )
        .await;
    assert_eq!(s, 200, "{b}");
    cloister_client::Client::enrol(
        w.http.clone(),
        &w.stack.server_url,
        &bank.km_url,
        &user,
        b["code"].as_str().unwrap(),
        cloister_client::Storage::Memory,
    )
    .await
    .unwrap()
}

/// Connections (issue 11, part 2): a user asks a user of another firm; both
/// firms' KMs vouch for their own user's step and believe the other's only
/// under the pinned key; both need `external_chat`. Refused and audited: a
/// request to an unpinned firm, an answer whose KM does not trust the
/// asker's, users without the entitlement, a third user answering, a
/// forged or misplaced answer at the server, a replayed request.
#[tokio::test]
async fn connections_need_both_firms_trust_and_entitlements() {
    use cloister_proto::controls::Entitlement;
    let w = World::new().await;
    let bank = w.foreign("bank").await;
    let alice = w.user("alice").await;
    let bob = bank_user(&w, &bank, "bob").await;
    let carol = bank_user(&w, &bank, "carol").await;
    let code = |r: cloister_client::Result<cloister_client::ConnectionView>| {
        r.unwrap_err().code().map(str::to_owned)
    };

    // acme does not trust bank yet; alice is not entitled either
    assert_eq!(
        code(alice.connect_request(bob.user()).await).as_deref(),
        Some("not_trusted")
    );
    let bank_id: OwnIdentity =
        serde_json::from_value(bank.device.km_at(&bank.km_url, KmOp::TrustSelf).await.1).unwrap();
    w.admin
        .trust_add(&t("bank"), &bank_id.km_key, Some(&bank_id.fingerprint))
        .await
        .unwrap();
    assert_eq!(
        code(alice.connect_request(bob.user()).await).as_deref(),
        Some("entitlement")
    );
    w.admin
        .admin_entitle(Some(alice.user()), None, &[Entitlement::ExternalChat], &[])
        .await
        .unwrap();
    // colleagues need no connection
    let dan = w.user("dan").await;
    assert_eq!(
        code(alice.connect_request(dan.user()).await).as_deref(),
        Some("same_firm")
    );

    let req = alice.connect_request(bob.user()).await.unwrap();
    assert_eq!(
        (req.state, &req.from, &req.to),
        ("pending", alice.user(), bob.user())
    );
    let seen = bob.connections().await.unwrap();
    assert_eq!(seen.len(), 1);
    assert!(carol.connections().await.unwrap().is_empty());

    // bank does not trust acme yet: its KM cannot believe the request
    assert_eq!(
        code(bob.connect_answer(&req.id, true).await).as_deref(),
        Some("not_trusted")
    );
    let acme_id = w.admin.trust_self().await.unwrap();
    let (s, b) = bank
        .device
        .km_at(
            &bank.km_url,
            KmOp::TrustAdd {
                tenant: t("acme"),
                km_key: acme_id.km_key.clone(),
                fingerprint: Some(acme_id.fingerprint.clone()),
                km_url: None,
            },
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // bob is not entitled; carol is not the one asked
    assert_eq!(
        code(bob.connect_answer(&req.id, true).await).as_deref(),
        Some("entitlement")
    );
    let e = carol
        .km_request::<serde_json::Value>(KmOp::ConnectAnswer {
            request: seen[0].request.clone(),
            accept: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(403), Some("not_yours")),
        "{e}"
    );
    let (s, b) = bank
        .device
        .km_at(
            &bank.km_url,
            KmOp::Entitle {
                user: Some(bob.user().clone()),
                group: None,
                grant: vec![Entitlement::ExternalChat],
                revoke: vec![],
            },
        )
        .await;
    assert_eq!(s, 200, "{b}");

    // at the server: an answer not signed by bank's KM, and one for
    // another connection, are refused
    let forged = cloister_crypto::signed::km_sign_blob(
        &cloister_crypto::KmSigner::generate().unwrap(),
        cloister_crypto::signed::CONNECTION_ANSWER,
        &cloister_proto::federation::ConnectionAnswer {
            request: seen[0].id,
            from: alice.user().clone(),
            to: bob.user().clone(),
            accept: true,
            ts: now_millis(),
        },
    )
    .unwrap();
    let post = |id: String, blob| {
        let bob = &bob;
        let w = &w;
        async move {
            let token = bob.session_token().await.unwrap();
            w.http
                .post(format!("{}/v1/connections/{id}/answer", w.stack.server_url))
                .bearer_auth(token)
                .json(&cloister_proto::federation::ConnectionPost { blob })
                .send()
                .await
                .unwrap()
        }
    };
    common::expect_error(post(req.id.clone(), forged).await, 403, "bad_signature").await;
    common::expect_error(
        post("00".repeat(32), seen[0].request.clone()).await,
        404,
        "unknown_connection",
    )
    .await;
    common::expect_error(
        post("zz".into(), seen[0].request.clone()).await,
        400,
        "bad_param",
    )
    .await;

    // accepted, seen alike by both
    let ok = bob.connect_answer(&req.id, true).await.unwrap();
    assert_eq!(ok.state, "accepted");
    let mine = alice.connections().await.unwrap();
    assert_eq!(
        cloister_client::ConnectionView::of(&mine[0]).unwrap().state,
        "accepted"
    );
    // answered once only
    assert_eq!(
        code(bob.connect_answer(&req.id, false).await).as_deref(),
        Some("answered")
    );
    // the request cannot be posted again
    let again = w
        .http
        .post(format!("{}/v1/connections", w.stack.server_url))
        .bearer_auth(alice.session_token().await.unwrap())
        .json(&cloister_proto::federation::ConnectionPost {
            blob: mine[0].request.clone(),
        })
        .send()
        .await
        .unwrap();
    common::expect_error(again, 409, "replayed_request").await;
    // nor by someone else
    let by_carol = w
        .http
        .post(format!("{}/v1/connections", w.stack.server_url))
        .bearer_auth(carol.session_token().await.unwrap())
        .json(&cloister_proto::federation::ConnectionPost {
            blob: mine[0].request.clone(),
        })
        .send()
        .await
        .unwrap();
    common::expect_error(by_carol, 403, "bad_signature").await;

    // either ends it; once
    let gone = alice.connect_remove(&req.id).await.unwrap();
    assert_eq!(gone.state, "removed");
    assert_eq!(
        code(bob.connect_remove(&req.id).await).as_deref(),
        Some("removed")
    );

    // trust removed: no new request
    w.admin
        .trust_remove(&t("bank"), "mandate ended")
        .await
        .unwrap();
    assert_eq!(
        code(alice.connect_request(bob.user()).await).as_deref(),
        Some("not_trusted")
    );

    // each KM audited its own users' steps; refusals are on record
    let acme = common::audit_kinds(&w).await;
    let steps: Vec<&str> = acme
        .iter()
        .filter(|(k, _)| k == "connection")
        .map(|(_, d)| {
            if d.contains("\"request\"") {
                "request"
            } else if d.contains("\"remove\"") {
                "remove"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(steps, ["request", "remove"], "{acme:?}");
    assert!(
        acme.iter()
            .any(|(k, d)| k == "control_refused" && d.contains("external_chat"))
    );
}
