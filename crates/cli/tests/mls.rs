//! MLS rooms end to end on real services: the server as delivery service,
//! members in step with the membership log, capture unchanged, and an
//! insider with a patched client refused at the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_crypto::blind::Field;
use cloister_mls::{DeviceStore, Expected, KmIdentity, LogBinding, Member};
use cloister_proto::b64::Bytes;
use cloister_proto::km::Role::{Compliance, Custodian};
use cloister_proto::mls::{PostCommit, UploadKeyPackages, Welcomes};
use cloister_proto::room::{RoomMode, RoomSettings};
use cloister_proto::server::Content;
use common::*;

fn mls_room(name: &str) -> RoomSettings {
    RoomSettings {
        name: name.into(),
        mode: RoomMode::Mls,
        ..Default::default()
    }
}

fn text(r: &cloister_client::Received) -> &str {
    match &r.content {
        Content::Text { text } => text,
        other => panic!("not text: {other:?}"),
    }
}

#[tokio::test]
async fn an_mls_room_end_to_end_with_capture_and_removal() {
    let w = World::new().await;
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let (c1, c2, officer) = (
        w.user_with("cust1", &[Custodian]).await,
        w.user_with("cust2", &[Custodian]).await,
        w.user_with("officer", &[Compliance]).await,
    );
    w.admin
        .admin_escrow_init(&[c1.user().clone(), c2.user().clone()], 2)
        .await
        .unwrap();
    // capture = required: every MLS message needs the vault's receipt too
    let vault = w.register_vault(true).await;
    officer.use_registered_vault().await.unwrap().unwrap();
    for c in [&bob, &carol] {
        let n = c.replenish_key_packages().await.unwrap();
        assert!(n.one_time >= 10 && n.last_resort, "{n:?}");
    }
    let room = alice
        .create_room(
            mls_room("rates-e2e"),
            &[bob.user().clone(), carol.user().clone()],
        )
        .await
        .unwrap();
    assert_eq!(alice.room_mode(&room).await.unwrap(), RoomMode::Mls);
    let leaves = alice.mls_roster(&room).await.unwrap();
    assert_eq!(leaves.len(), 3, "{leaves:?}");

    alice
        .send_text(&room, "MLSSECRET buy 5y Bund")
        .await
        .unwrap();
    let got = bob.read(&room, 50, None).await.unwrap();
    assert_eq!(got.len(), 1);
    let m = got[0].as_ref().unwrap();
    assert_eq!(text(m), "MLSSECRET buy 5y Bund");
    assert_eq!(m.sender, *alice.user());
    bob.send_text(&room, "done at 2.41").await.unwrap();
    let got = carol.read(&room, 50, None).await.unwrap();
    let texts: Vec<_> = got.iter().map(|r| text(r.as_ref().unwrap())).collect();
    assert_eq!(texts, ["MLSSECRET buy 5y Bund", "done at 2.41"]);
    // read again: from what the device kept (a used MLS key is gone)
    let again = carol.read(&room, 50, None).await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|r| r.is_ok()));
    let got = alice.read(&room, 50, None).await.unwrap();
    assert_eq!(got.len(), 2, "the sender's own message is kept too");

    // the KM holds no key of an MLS room and gives none
    let e = alice.room_keys(&room, &[0]).await.unwrap_err();
    assert_eq!(e.code(), Some("mls_room"), "{e}");

    // carol is removed: the log entry and the commit that takes her leaf out
    alice.remove_member(&room, carol.user()).await.unwrap();
    assert_eq!(alice.mls_roster(&room).await.unwrap().len(), 2);
    alice.send_text(&room, "after carol left").await.unwrap();
    let b = bob.read(&room, 50, None).await.unwrap();
    assert_eq!(text(b[2].as_ref().unwrap()), "after carol left");
    assert!(
        carol.read(&room, 50, None).await.is_err(),
        "a removed member reads nothing more"
    );

    // compliance: the officer finds MLS messages like any others
    let now = cloister_proto::now_millis();
    let hits = officer
        .compliance_search(
            &[(Field::Keyword, "mlssecret".into())],
            now - 3_600_000,
            now + 3_600_000,
            10,
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].room, room);
    let _ = vault;
    // a case over the MLS room, approved by both custodians, exported and
    // verified offline: every message attributed, each line naming its mode
    officer
        .case_open("e2e", "rates desk", today_scope(vec![], vec![room]), false)
        .await
        .unwrap();
    c1.case_approve("e2e").await.unwrap();
    c2.case_approve("e2e").await.unwrap();
    let out = w.dir.path().join("export-e2e");
    let r = officer.case_export("e2e", &out, &|_, _| {}).await.unwrap();
    assert_eq!(r.summary.messages, 3);
    assert_eq!(r.summary.unattributable, 0);
    let jsonl = std::fs::read_to_string(out.join("messages.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 3);
    assert!(
        jsonl.lines().all(|l| l.contains(r#""mode":"mls""#)),
        "{jsonl}"
    );
    assert!(jsonl.contains("MLSSECRET buy 5y Bund"));
    let v = cloister_client::export::verify(&out, Some(w.stack.km.info().sign_pk.0)).unwrap();
    assert_eq!(v.messages, 3);

    // nothing sent is in the server's files
    for (path, bytes) in files_under(&w.dir.path().join("server")) {
        for needle in ["MLSSECRET", "after carol left", "done at 2.41"] {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "{needle} in {}",
                path.display()
            );
        }
    }
}

async fn post(raw: &RawDevice, path: &str, body: &impl serde::Serialize) -> reqwest::Response {
    raw.http
        .post(format!("{}{path}", raw.server_url))
        .bearer_auth(raw.token().await)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn raw_member(w: &World, raw: &RawDevice) -> Member {
    let identity = KmIdentity::new([(raw.cert.tenant.clone(), w.stack.km.info().sign_pk.0)]);
    Member::new(
        &raw.keys,
        &raw.signed_cert,
        identity,
        DeviceStore::default(),
    )
    .unwrap()
}

async fn upload(raw: &RawDevice, kps: Vec<Vec<u8>>) -> reqwest::Response {
    post(
        raw,
        "/v1/mls/key-packages",
        &UploadKeyPackages {
            key_packages: kps.into_iter().map(Bytes).collect(),
            last_resort: None,
        },
    )
    .await
}

/// A member with a patched client (mallet) and a colluding outsider
/// (eve): every lie is refused at the server, with a precise code.
#[tokio::test]
async fn an_insider_with_a_patched_client_is_refused_by_the_server() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let mallet = w.raw("mallet").await;
    let eve = w.raw("eve").await;
    let (m_mls, e_mls) = (raw_member(&w, &mallet), raw_member(&w, &eve));

    // someone else's key package is not mallet's to upload
    let r = upload(&mallet, e_mls.key_packages(1).unwrap()).await;
    expect_error(r, 403, "not_your_device").await;
    // garbage and oversize
    let r = upload(&mallet, vec![b"not a key package".to_vec()]).await;
    expect_error(r, 400, "bad_mls").await;
    let r = upload(&mallet, vec![vec![0u8; 9000]]).await;
    expect_error(r, 413, "too_large").await;
    let r = upload(&mallet, m_mls.key_packages(3).unwrap()).await;
    assert_eq!(r.status(), 200);

    let room = alice
        .create_room(mls_room("desk"), std::slice::from_ref(&mallet.user))
        .await
        .unwrap();
    let rpath = |p: &str| format!("/v1/rooms/{room}/mls{p}");
    // mallet joins from the Welcome the server keeps for him
    let w8: Welcomes = mallet.get("/v1/mls/welcomes").await;
    assert_eq!(w8.welcomes.len(), 1);
    m_mls.join(w8.welcomes[0].welcome.as_slice()).unwrap();
    let epoch = m_mls.epoch(&room).unwrap();
    assert_eq!(epoch, 1);

    // claiming key packages of a non-member: refused
    let r = post(
        &mallet,
        &rpath("/claim"),
        &cloister_proto::mls::ClaimKeyPackages {
            user: eve.user.clone(),
        },
    )
    .await;
    expect_error(r, 403, "not_member").await;
    // a second group for the room
    let r = post(
        &mallet,
        &rpath("/group"),
        &cloister_proto::mls::InitGroup {
            group_info: Bytes(m_mls.group_info(&room).unwrap()),
        },
    )
    .await;
    assert_eq!(r.status(), 405, "the group is set with PUT only");

    // the forged commit: eve hands mallet her key package directly, and
    // mallet's patched client claims a log that lets her in
    let state = alice.room_state(&room).await.unwrap();
    let binding = LogBinding {
        seq: state.seq,
        head: state.head,
    };
    let lying = Expected {
        binding,
        members: [
            state.members.iter().cloned().collect::<Vec<_>>(),
            vec![eve.user.clone()],
        ]
        .concat()
        .into_iter()
        .collect(),
        barred: Default::default(),
    };
    let forged = m_mls
        .commit(&room, &e_mls.key_packages(1).unwrap(), &[], &lying)
        .unwrap();
    let r = post(
        &mallet,
        &rpath("/commits"),
        &PostCommit {
            commit: Bytes(forged.commit.clone()),
            welcome: forged.welcome.clone().map(Bytes),
        },
    )
    .await;
    let msg = expect_error(r, 403, "commit_refused").await;
    assert!(msg.contains("eve@acme"), "{msg}");
    drop(forged);

    // mallet's own second device, revoked: adding it back is refused
    let code = w
        .admin
        .admin_add_user(&mallet.user, false)
        .await
        .unwrap()
        .code;
    let mallet2 = RawDevice::enrol(&w, &mallet.user, &code).await;
    let kp2 = raw_member(&w, &mallet2).key_packages(1).unwrap();
    w.admin
        .admin_revoke_device(&mallet2.keys.device_id())
        .await
        .unwrap();
    let honest_members = Expected {
        binding,
        members: state.members.clone(),
        barred: Default::default(),
    };
    let revoked_add = m_mls.commit(&room, &kp2, &[], &honest_members).unwrap();
    let r = post(
        &mallet,
        &rpath("/commits"),
        &PostCommit {
            commit: Bytes(revoked_add.commit.clone()),
            welcome: revoked_add.welcome.clone().map(Bytes),
        },
    )
    .await;
    let msg = expect_error(r, 403, "commit_refused").await;
    assert!(msg.contains("revoked"), "{msg}");
    drop(revoked_add);

    // a commit bound to a log entry that is not the head
    let old = Expected {
        binding: LogBinding {
            seq: 0,
            head: [0; 32],
        },
        members: state.members.clone(),
        barred: Default::default(),
    };
    let stale_log = m_mls.commit(&room, &[], &[], &old).unwrap();
    let r = post(
        &mallet,
        &rpath("/commits"),
        &PostCommit {
            commit: Bytes(stale_log.commit.clone()),
            welcome: None,
        },
    )
    .await;
    expect_error(r, 409, "log_behind").await;
    drop(stale_log);

    // mallet prepares an update; alice's update is ordered first
    let honest = Expected {
        binding,
        members: state.members.clone(),
        barred: Default::default(),
    };
    let late = m_mls.commit(&room, &[], &[], &honest).unwrap();
    alice.mls_update(&room).await.unwrap();
    let r = post(
        &mallet,
        &rpath("/commits"),
        &PostCommit {
            commit: Bytes(late.commit.clone()),
            welcome: None,
        },
    )
    .await;
    expect_error(r, 409, "stale_epoch").await;
    // and alice's commit, replayed
    let page: cloister_proto::mls::CommitPage = mallet.get(&rpath("/commits?from=1")).await;
    let r = post(
        &mallet,
        &rpath("/commits"),
        &PostCommit {
            commit: page.commits[0].commit.clone(),
            welcome: None,
        },
    )
    .await;
    expect_error(r, 409, "stale_epoch").await;
    // garbage
    let r = post(
        &mallet,
        &rpath("/commits"),
        &PostCommit {
            commit: Bytes(b"junk".to_vec()),
            welcome: None,
        },
    )
    .await;
    expect_error(r, 400, "bad_mls").await;

    // eve, not a member, sees nothing of the group
    let r = eve
        .http
        .get(format!("{}{}", eve.server_url, rpath("/commits")))
        .bearer_auth(eve.token().await)
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "no_such_room").await;

    // a managed-mode message in an MLS room is refused
    let managed = alice
        .create_room(RoomSettings::default(), &[])
        .await
        .unwrap();
    let mut env = alice
        .seal(&managed, &Content::Text { text: "x".into() })
        .await
        .unwrap();
    env.receipt = None;
    let e = alice.post_envelope(&room, &env).await.unwrap_err();
    assert!(
        matches!(e.code(), Some("wrong_room") | Some("wrong_mode")),
        "{e}"
    );
}

/// A device whose revocation the group has not acted on: the server takes
/// messages for a grace period, then refuses them until a member commits
/// the removal; the SDK does that by itself and the message goes through.
#[tokio::test]
async fn a_revoked_leaf_blocks_the_epoch_after_the_grace_period() {
    let mut o = opts();
    o.server_config.mls_grace_ms = 500;
    let w = World::with(o).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let bob2 = w.device_of(bob.user()).await;
    for c in [&bob, &bob2] {
        c.replenish_key_packages().await.unwrap();
    }
    let room = alice
        .create_room(mls_room("grace"), &[bob.user().clone()])
        .await
        .unwrap();
    assert_eq!(alice.mls_roster(&room).await.unwrap().len(), 3);
    w.admin.admin_revoke_device(&bob2.device()).await.unwrap();
    // a raw post (no SDK healing) is taken during the grace period...
    let env = alice
        .seal(
            &room,
            &Content::Text {
                text: "during grace".into(),
            },
        )
        .await
        .unwrap();
    alice.post_envelope(&room, &env).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    // ...and refused after it
    let env = alice
        .seal(
            &room,
            &Content::Text {
                text: "too late".into(),
            },
        )
        .await
        .unwrap();
    let e = alice.post_envelope(&room, &env).await.unwrap_err();
    assert_eq!(e.code(), Some("commit_required"), "{e}");
    // the SDK commits the removal of the revoked leaf and sends
    alice.send_text(&room, "after the removal").await.unwrap();
    let leaves = alice.mls_roster(&room).await.unwrap();
    assert_eq!(leaves.len(), 2);
    assert!(leaves.iter().all(|l| l.device != bob2.device()));
}

/// The firm's policy on MLS rooms, enforced where the log is checked.
#[tokio::test]
async fn a_firm_can_require_or_forbid_mls_rooms() {
    use cloister_proto::controls::MlsPolicy;
    let w = World::new().await;
    let alice = w.user("alice").await;
    // a plain user may not set it
    let e = alice.mls_policy_set(MlsPolicy::Required).await.unwrap_err();
    assert_eq!(e.code(), Some("not_admin"), "{e}");
    w.admin.mls_policy_set(MlsPolicy::Required).await.unwrap();
    // the server learns the new controls from the KM's notice
    let mut refused = None;
    for _ in 0..50 {
        match alice.create_room(RoomSettings::default(), &[]).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let e = refused.expect("managed rooms refused once MLS is required");
    assert_eq!(e.code(), Some("room_mode"), "{e}");
    alice.create_room(mls_room("ok"), &[]).await.unwrap();
    w.admin.mls_policy_set(MlsPolicy::Forbidden).await.unwrap();
    let mut refused = None;
    for _ in 0..50 {
        match alice.create_room(mls_room("no"), &[]).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let e = refused.expect("MLS rooms refused once forbidden");
    assert_eq!(e.code(), Some("room_mode"), "{e}");
    let kinds = audit_kinds(&w).await;
    assert!(kinds.iter().any(|(k, _)| k == "mls_policy_set"));
}

/// A user's new device joins the MLS rooms (added by a member's sync) and
/// reads what came after; what came before reaches it only by a sealed
/// hand-over from the user's other device, checked message by message.
#[tokio::test]
async fn a_new_device_gets_earlier_history_only_from_its_users_other_device() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let room = alice
        .create_room(mls_room("desk"), std::slice::from_ref(bob.user()))
        .await
        .unwrap();
    alice
        .send_text(&room, "before the new laptop")
        .await
        .unwrap();
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 1);

    // bob's new device puts up its key packages at enrolment; the server
    // tells the room's members, and a member's device adds it
    let mut events = alice.connect_events().await.unwrap();
    let bob2 = w.device_of(bob.user()).await;
    let prompted = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match events.next().await {
                Ok(Some(cloister_proto::server::Event::MlsNewDevice { room: r, device }))
                    if r == room =>
                {
                    return device;
                }
                Ok(Some(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("the new device is announced to the members");
    assert_eq!(prompted, bob2.device());
    alice.mls_reconcile(&room).await.unwrap();
    assert_eq!(alice.mls_roster(&room).await.unwrap().len(), 3);
    alice
        .send_text(&room, "after the new laptop")
        .await
        .unwrap();
    let got = bob2.read(&room, 10, None).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        got[0].is_err(),
        "the earlier message is not readable on the new device"
    );
    assert_eq!(text(got[1].as_ref().unwrap()), "after the new laptop");

    // the hand-over: only to the same user's device
    let carol = w.user("carol").await;
    let e = bob
        .mls_history_export(&carol.device(), &[])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("same user") || e.to_string().contains("another device of"),
        "{e}"
    );
    let (sealed, n) = bob
        .mls_history_export(&bob2.device(), &[room])
        .await
        .unwrap();
    assert_eq!(n, 1);
    // a device it was not sealed to cannot open it
    assert!(carol.mls_history_import(&sealed).await.is_err());
    // a tampered bundle is refused whole
    let mut bad = sealed.clone();
    bad.ct.0[10] ^= 1;
    assert!(bob2.mls_history_import(&bad).await.is_err());
    assert_eq!(bob2.mls_history_import(&sealed).await.unwrap(), 1);
    assert_eq!(
        bob2.mls_history_import(&sealed).await.unwrap(),
        0,
        "idempotent"
    );
    let got = bob2.read(&room, 10, None).await.unwrap();
    let texts: Vec<_> = got.iter().map(|r| text(r.as_ref().unwrap())).collect();
    assert_eq!(texts, ["before the new laptop", "after the new laptop"]);
}

/// Bridged rooms are managed: a member's patched client that sends a
/// message claiming to be relayed from a contact on another network into
/// an MLS room is refused by every reader, now and when read again.
#[tokio::test]
async fn a_relayed_message_in_an_mls_room_is_refused() {
    let w = World::new().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    bob.replenish_key_packages().await.unwrap();
    let room = alice
        .create_room(mls_room("no-bridge"), &[bob.user().clone()])
        .await
        .unwrap();
    alice
        .send(
            &room,
            &Content::Relayed {
                network: "matrix".into(),
                from: "@mat:localhost".into(),
                id: "$forged".into(),
                content: Box::new(Content::Text {
                    text: "I, mat, agree".into(),
                }),
            },
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let got = bob.read(&room, 10, None).await.unwrap();
        let e = got[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("never bridged"), "{e}");
    }
}
