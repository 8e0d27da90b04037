//! MLS rooms and IMs between firms: leaves certified by each firm's own KM
//! and checked under the partner keys each device's KM signs; each firm's
//! MLS policy judging its own users whoever made the room; each firm
//! capturing and exporting its own side; a trust removed stopping the
//! exchange on that firm's devices at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_client::Client;
use cloister_proto::RoomId;
use cloister_proto::controls::MlsPolicy;
use cloister_proto::km::Role::{Compliance, Custodian};
use cloister_proto::room::{RoomMode, RoomSettings};
use cloister_proto::server::Content;
use common::*;

fn external_mls(name: &str) -> RoomSettings {
    RoomSettings {
        name: name.into(),
        external: true,
        mode: RoomMode::Mls,
        ..Default::default()
    }
}

/// The texts `c` reads in `room`; an unreadable message as `Err(reason)`.
async fn texts(c: &Client, room: &RoomId) -> Vec<Result<String, String>> {
    c.read(room, 100, None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| match r {
            Ok(m) => match m.content {
                Content::Text { text } => Ok(text),
                other => panic!("not text: {other:?}"),
            },
            Err(e) => Err(e.to_string()),
        })
        .collect()
}

fn ok(v: &[&str]) -> Vec<Result<String, String>> {
    v.iter().map(|s| Ok((*s).to_owned())).collect()
}

/// A firm's escrow (its two custodians), its vault with capture required
/// and a compliance officer using it.
async fn records(admin: &Client, vault_url: &str, people: [Client; 3]) -> [Client; 3] {
    let [c1, c2, officer] = people;
    admin
        .admin_escrow_init(&[c1.user().clone(), c2.user().clone()], 2)
        .await
        .unwrap();
    admin.admin_vault_register(vault_url, true).await.unwrap();
    officer.use_registered_vault().await.unwrap().unwrap();
    [c1, c2, officer]
}

#[tokio::test]
async fn an_mls_room_between_two_firms_each_keeping_its_own_record() {
    let w = World::new().await;
    let bank = w.firm("bank").await;
    // enrolled (their MLS state and key packages made) before the firms
    // trust each other: their devices learn the partner firm later
    let alice = w.user("alice").await;
    let bob = bank.user("bob").await;
    let [a1, a2, acme_officer] = records(
        &w.admin,
        &w.stack.vault_url,
        [
            w.user_with("cust1", &[Custodian]).await,
            w.user_with("cust2", &[Custodian]).await,
            w.user_with("officer", &[Compliance]).await,
        ],
    )
    .await;
    let [b1, b2, bank_officer] = records(
        &bank.admin,
        &bank.vault_url,
        [
            bank.user_with("cust1", &[Custodian]).await,
            bank.user_with("cust2", &[Custodian]).await,
            bank.user_with("officer", &[Compliance]).await,
        ],
    )
    .await;
    alice.use_registered_vault().await.unwrap().unwrap();
    bob.use_registered_vault().await.unwrap().unwrap();
    w.trust_each_other(&bank).await;
    entitle_external(&w.admin, &[&alice]).await;
    entitle_external(&bank.admin, &[&bob]).await;
    connect(&alice, &bob).await;

    let room = alice
        .create_room(external_mls("deal"), &[bob.user().clone()])
        .await
        .unwrap();
    let roster = alice.mls_roster(&room).await.unwrap();
    assert_eq!(roster.len(), 2, "{roster:?}");
    assert!(roster.iter().any(|l| l.user == *bob.user()));
    alice
        .send_text(&room, "MLSXFIRM offer 101.5")
        .await
        .unwrap();
    assert_eq!(texts(&bob, &room).await, ok(&["MLSXFIRM offer 101.5"]));
    bob.send_text(&room, "MLSXFIRM bank takes it")
        .await
        .unwrap();
    assert_eq!(
        texts(&alice, &room).await,
        ok(&["MLSXFIRM offer 101.5", "MLSXFIRM bank takes it"])
    );
    // neither KM holds or gives a key of it
    for c in [&alice, &bob] {
        let e = c.room_keys(&room, &[0]).await.unwrap_err();
        assert_eq!(e.code(), Some("mls_room"), "{e}");
    }

    // each firm exports its side from its own vault; each export verifies
    // only under its own KM key and names the mode of every message
    let mut exports = Vec::new();
    for (officer, cust, dir, km_pk) in [
        (
            &acme_officer,
            [&a1, &a2],
            w.dir.path().join("export-acme"),
            w.stack.km.info().sign_pk.0,
        ),
        (
            &bank_officer,
            [&b1, &b2],
            bank.dir.path().join("export-bank"),
            bank.km.info().sign_pk.0,
        ),
    ] {
        officer
            .case_open("deal", "the deal", today_scope(vec![], vec![room]), false)
            .await
            .unwrap();
        for c in cust {
            c.case_approve("deal").await.unwrap();
        }
        let s = officer.case_export("deal", &dir, &|_, _| {}).await.unwrap();
        assert_eq!(
            (s.summary.messages, s.summary.unattributable),
            (2, 0),
            "{s:?}"
        );
        assert_eq!(
            cloister_client::export::verify(&dir, Some(km_pk))
                .unwrap()
                .messages,
            2
        );
        let jl = std::fs::read_to_string(dir.join("messages.jsonl")).unwrap();
        assert!(jl.lines().all(|l| l.contains(r#""mode":"mls""#)), "{jl}");
        assert!(jl.contains("offer 101.5") && jl.contains("bank takes it"));
        exports.push((dir, km_pk));
    }
    let e = cloister_client::export::verify(&exports[0].0, Some(exports[1].1)).unwrap_err();
    assert!(e.contains("TAMPERED"), "{e}");
    // no plaintext at the operator or in either vault
    for dir in [
        w.dir.path().join("server"),
        w.stack.dir.join("vault"),
        bank.dir.path().join("vault"),
    ] {
        for (path, bytes) in files_under(&dir) {
            assert!(!contains(&bytes, b"MLSXFIRM"), "plaintext in {path:?}");
        }
    }

    // acme stops trusting bank: acme's devices send nothing more into the
    // group holding bank's leaves and read nothing from them
    w.admin
        .trust_remove(&bank.tenant, "counterparty review")
        .await
        .unwrap();
    assert_eq!(alice.refresh_trust().await.unwrap(), 0);
    let e = alice
        .send_text(&room, "MLSXFIRM after the trust went")
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("bank, a firm this device's KM does not trust"),
        "{e}"
    );
    bob.send_text(&room, "MLSXFIRM still there?").await.unwrap();
    let got = texts(&alice, &room).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[2].as_ref().is_err_and(|e| e.contains("does not trust")),
        "{got:?}"
    );
    // once bank's user is out of the room, acme's side goes on alone
    alice.remove_member(&room, bob.user()).await.unwrap();
    assert_eq!(alice.mls_roster(&room).await.unwrap().len(), 1);
    alice.send_text(&room, "MLSXFIRM acme only").await.unwrap();
}

/// An IM is managed unless a firm's policy requires MLS; each firm's MLS
/// policy holds for its users in rooms another firm's user makes.
#[tokio::test]
async fn each_firms_mls_policy_holds_for_its_own_users() {
    let w = World::new().await;
    let bank = w.firm("bank").await;
    w.trust_each_other(&bank).await;
    let (alice, carol) = (w.user("alice").await, w.user("carol").await);
    let (bob, bea) = (bank.user("bob").await, bank.user("bea").await);
    entitle_external(&w.admin, &[&alice]).await;
    entitle_external(&bank.admin, &[&bob, &bea]).await;
    connect(&alice, &bob).await;
    connect(&alice, &bea).await;

    // no policy anywhere: a new IM is managed
    let im = alice.im(carol.user()).await.unwrap();
    assert_eq!(alice.room_mode(&im).await.unwrap(), RoomMode::Managed);

    // bank requires MLS: alice's IM with bob becomes MLS by itself, and
    // her managed room may not take bob
    bank.admin
        .mls_policy_set(MlsPolicy::Required)
        .await
        .unwrap();
    bank.admin.sync_controls().await.unwrap();
    let im = alice.im(bob.user()).await.unwrap();
    assert_eq!(alice.room_mode(&im).await.unwrap(), RoomMode::Mls);
    alice.send_text(&im, "MLS IM across firms").await.unwrap();
    assert_eq!(texts(&bob, &im).await, ok(&["MLS IM across firms"]));
    assert_eq!(bob.room_mode(&im).await.unwrap(), RoomMode::Mls);
    let managed = RoomSettings {
        mode: RoomMode::Managed,
        ..external_mls("managed")
    };
    let e = alice
        .create_room(managed, &[bob.user().clone()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("room_mode"), "{e}");
    assert!(e.to_string().contains("bob@bank's firm requires"), "{e}");
    // asked for explicitly, a managed IM is refused the same way
    let e = alice
        .im_with_mode(bea.user(), Some(RoomMode::Managed))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("room_mode"), "{e}");

    // bank forbids MLS: acme's MLS room may not take bob, a managed one may
    bank.admin
        .mls_policy_set(MlsPolicy::Forbidden)
        .await
        .unwrap();
    bank.admin.sync_controls().await.unwrap();
    let e = alice
        .create_room(external_mls("e2e"), &[bob.user().clone()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("room_mode"), "{e}");
    assert!(e.to_string().contains("bob@bank's firm forbids MLS"), "{e}");
    let im = alice.im(bea.user()).await.unwrap();
    assert_eq!(alice.room_mode(&im).await.unwrap(), RoomMode::Managed);
    alice.send_text(&im, "managed IM").await.unwrap();
    assert_eq!(texts(&bea, &im).await, ok(&["managed IM"]));
    // the IM made while MLS was required keeps its mode
    assert_eq!(
        alice
            .room_mode(&alice.im(bob.user()).await.unwrap())
            .await
            .unwrap(),
        RoomMode::Mls
    );
}
