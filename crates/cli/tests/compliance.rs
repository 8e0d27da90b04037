//! Compliance against the real KM, server and vault: escrow, blind-index
//! keys, enforced capture, search, cases and approvals, eDiscovery export,
//! legal hold and retention, surveillance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_crypto::escrow;
use cloister_proto::km::Role::{Compliance, Custodian, Surveillance};
use cloister_proto::room::{Action, RoomKind, RoomSettings};
use common::*;

#[tokio::test]
async fn escrow_init_splits_k_of_n_among_custodians() {
    let w = World::new().await;
    let (c1, c2, c3, trader) = (
        w.user_with("cust1", &[Custodian]).await,
        w.user_with("cust2", &[Custodian]).await,
        w.user_with("cust3", &[Custodian]).await,
        w.user("trader").await,
    );
    let custodians = [c1.user().clone(), c2.user().clone(), c3.user().clone()];
    // a user without the custodian role cannot hold a share
    let e = w
        .admin
        .admin_escrow_init(&[c1.user().clone(), trader.user().clone()], 2)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_escrow"), "{e}");

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
        let k = escrow::combine(&[a[0].2.clone(), b[0].2.clone()], 2, &d.public.0).unwrap();
        assert_eq!(k.public().unwrap(), d.public.0);
    }
    assert!(escrow::combine(&[s1[0].2.clone()], 2, &d.public.0).is_err());
    // the KM's files hold only sealed shares: no share appears in clear
    for (path, data) in files_under(&w.dir.path().join("km")) {
        for s in [&s1, &s2, &s3] {
            assert!(
                !contains(&data, s[0].2.expose()),
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
        connections: Vec::new(),
    };
    let e = cloister_crypto::signed::sign_statement(&raw.keys, &st).unwrap();
    let (status, body) = raw
        .km(cloister_proto::km::KmOp::RoomKeys {
            room: st.room,
            epochs: vec![p as u64],
            log_from: 0,
            log: vec![e],
            certs: Vec::new(),
        })
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("bad_statement")),
        "{body}"
    );
}

#[tokio::test]
async fn sent_messages_are_captured_and_searchable_by_token_only() {
    use cloister_crypto::blind::Field;
    let w = World::new().await;
    let (alice, bob, c1, c2, officer) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user_with("cust1", &[Custodian]).await,
        w.user_with("cust2", &[Custodian]).await,
        w.user_with("officer", &[Compliance]).await,
    );
    w.admin
        .admin_escrow_init(&[c1.user().clone(), c2.user().clone()], 2)
        .await
        .unwrap();
    // the vault must be the one the KM registered
    assert!(alice.set_vault(&w.stack.vault_url).await.is_err());
    let vault = w.register_vault(false).await;
    alice.set_vault(&vault).await.unwrap();
    officer.use_registered_vault().await.unwrap().unwrap();
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
    let hits = officer
        .compliance_search(&[(Field::Keyword, "harbourview".into())], from, to, 50)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].room, room);
    // AND of terms, sender
    let both = officer
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
    let none = officer
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
    let never = officer
        .compliance_search(&[(Field::Keyword, "neversent".into())], from, to, 50)
        .await
        .unwrap();
    assert!(never.is_empty());
    let room_hits = officer
        .compliance_search(&[(Field::Room, room.to_hex())], from, to, 50)
        .await
        .unwrap();
    assert_eq!(room_hits.len(), 2);
    // neither a user nor an admin without the compliance role may search
    bob.set_vault(&vault).await.unwrap();
    for c in [&bob, &w.admin] {
        let e = c
            .compliance_search(&[(Field::Keyword, "sell".into())], from, to, 50)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("not_compliance"));
    }
    // every ingestion is an entry of the vault's own log
    assert_eq!(w.stack.vault.log_size(), 2);
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

fn text(t: &str) -> cloister_proto::server::Content {
    cloister_proto::server::Content::Text { text: t.into() }
}

#[tokio::test]
async fn capture_required_refuses_messages_without_a_valid_receipt() {
    let w = World::new().await;
    let (alice, bob, c1, c2) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user_with("cust1", &[Custodian]).await,
        w.user_with("cust2", &[Custodian]).await,
    );
    w.admin
        .admin_escrow_init(&[c1.user().clone(), c2.user().clone()], 2)
        .await
        .unwrap();
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    // policy optional first: no receipt needed
    let first: cloister_proto::km::VaultRegisterResponse = w
        .admin
        .km_request(cloister_proto::km::KmOp::VaultRegister {
            url: w.stack.vault_url.clone(),
            receipt_pk: w.stack.vault.info().receipt_pk,
            log_key: w.stack.vault.info().log_key,
            capture_required: false,
            jurisdiction: String::new(),
        })
        .await
        .unwrap();
    w.admin.post_notice(&first.notice).await.unwrap();
    // while capture is optional, a message without a receipt is accepted
    let plain = bob.seal(&room, &text("no capture yet")).await.unwrap();
    bob.post_envelope(&room, &plain).await.unwrap();
    w.register_vault(true).await;

    // a client that skips capture cannot post
    let skipped = bob.seal(&room, &text("uncaptured")).await.unwrap();
    let e = bob.post_envelope(&room, &skipped).await.unwrap_err();
    assert_eq!(e.code(), Some("capture_required"), "{e}");
    assert!(e.to_string().contains("vault receipt"), "{e}");
    // a receipt for another message, or a forged one, is refused
    alice.use_registered_vault().await.unwrap().unwrap();
    let (m1, m2) = (text("one"), text("two"));
    let mut e1 = alice.seal(&room, &m1).await.unwrap();
    let mut e2 = alice.seal(&room, &m2).await.unwrap();
    let r1 = alice.capture(&room, &e1).await.unwrap().unwrap();
    e2.receipt = Some(r1.clone());
    let e = alice.post_envelope(&room, &e2).await.unwrap_err();
    assert_eq!(e.code(), Some("bad_receipt"), "{e}");
    let mut forged = r1.clone();
    forged.sig.0[3] ^= 1;
    e1.receipt = Some(forged);
    let e = alice.post_envelope(&room, &e1).await.unwrap_err();
    assert_eq!(e.code(), Some("bad_receipt"), "{e}");
    // the genuine receipt passes; the SDK does all of this in `send`
    e1.receipt = Some(r1);
    alice.post_envelope(&room, &e1).await.unwrap();
    alice.send_text(&room, "captured").await.unwrap();
    // an older policy notice cannot be replayed to switch capture off
    let e = w.admin.post_notice(&first.notice).await.unwrap_err();
    assert_eq!(e.code(), Some("stale_notice"), "{e}");
    assert_eq!(
        bob.post_envelope(&room, &skipped).await.unwrap_err().code(),
        Some("capture_required")
    );
    // the SDK captures on its own once a vault is registered
    bob.send_text(&room, "captured by the SDK").await.unwrap();
    // the server kept nothing it refused; the vault holds what was captured
    let msgs = bob.read(&room, 50, None).await.unwrap();
    assert_eq!(msgs.len(), 4);
    assert_eq!(w.stack.vault.envelope_count().await.unwrap(), 3);
}

/// Users, escrow 2-of-3, a vault with capture required, and traffic in two rooms.
struct CaseWorld {
    w: World,
    alice: cloister_client::Client,
    carol: cloister_client::Client,
    officer: cloister_client::Client,
    custodians: Vec<cloister_client::Client>,
    room_a: cloister_proto::RoomId,
    room_b: cloister_proto::RoomId,
}

async fn case_world() -> CaseWorld {
    let w = World::new().await;
    let (alice, bob, carol, dave) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
        w.user("dave").await,
    );
    let officer = w.user_with("officer", &[Compliance]).await;
    let mut custodians = Vec::new();
    for n in ["cust1", "cust2", "cust3"] {
        custodians.push(w.user_with(n, &[Custodian]).await);
    }
    let names: Vec<_> = custodians.iter().map(|c| c.user().clone()).collect();
    w.admin.admin_escrow_init(&names, 2).await.unwrap();
    w.register_vault(true).await;
    // a DLP policy flags what compliance watches: the flag is in the
    // sealed capture (and the export), never sent to the server
    w.admin
        .dlp_put(cloister_proto::controls::DlpPolicy {
            id: "watch-harbourview".into(),
            name: "Harbourview watch list".into(),
            action: cloister_proto::controls::DlpAction::Flag,
            keywords: vec!["harbourview".into()],
            patterns: vec![],
            file_types: vec![],
            max_file_bytes: None,
            message: String::new(),
            active: true,
        })
        .await
        .unwrap();
    for c in [&alice, &bob, &carol, &dave, &officer] {
        c.use_registered_vault().await.unwrap().unwrap();
    }
    let room_a = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    let room_b = carol
        .create_room(RoomSettings::default(), &[dave.user().clone()])
        .await
        .unwrap();
    alice
        .send_text(&room_a, "Harbourview 2033s: sell 40mm at 101.5")
        .await
        .unwrap();
    let f = w.dir.path().join("term-sheet.txt");
    std::fs::write(&f, b"TERMSHEET Harbourview 40mm 101.5").unwrap();
    alice.send_file(&room_a, &f).await.unwrap();
    bob.send_text(&room_a, "agreed").await.unwrap();
    carol
        .send_text(&room_b, "OUTOFSCOPE lunch gossip")
        .await
        .unwrap();
    CaseWorld {
        w,
        alice,
        carol,
        officer,
        custodians,
        room_a,
        room_b,
    }
}

#[tokio::test]
async fn a_case_decrypts_only_its_scope_and_only_with_k_approvals() {
    let cw = case_world().await;
    let (w, officer) = (&cw.w, &cw.officer);
    let alpha = officer
        .case_open(
            "alpha",
            "Harbourview inquiry",
            today_scope(vec![cw.alice.user().clone()], vec![]),
            false,
        )
        .await
        .unwrap();
    assert_eq!(alpha.version, 1);
    officer
        .case_open("beta", "other", today_scope(vec![], vec![cw.room_b]), false)
        .await
        .unwrap();
    // only compliance opens cases; only custodians approve
    assert_eq!(
        cw.alice
            .case_open("x", "", today_scope(vec![], vec![cw.room_a]), false)
            .await
            .unwrap_err()
            .code(),
        Some("not_compliance")
    );
    assert_eq!(
        cw.alice.case_approve("alpha").await.unwrap_err().code(),
        Some("not_entitled")
    );
    // K-1 approvals: nothing is decrypted, and the KM refuses to log a session
    cw.custodians[0].case_approve("alpha").await.unwrap();
    assert_eq!(
        cw.custodians[0]
            .case_approve("alpha")
            .await
            .unwrap_err()
            .code(),
        Some("already_approved")
    );
    let out = w.dir.path().join("export-alpha");
    let e = officer
        .case_export("alpha", &out, &|_, _| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nothing was decrypted"), "{e}");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
    let e = officer
        .km_request::<serde_json::Value>(cloister_proto::km::KmOp::CaseStep {
            case: "alpha".into(),
            step: "session_opened".into(),
            count: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_enough_approvals"));

    // an approval replayed from another case counts for nothing: copy
    // cust1's approval of alpha into beta, next to cust2's real one
    cw.custodians[1].case_approve("beta").await.unwrap();
    let km_db = w.dir.path().join("km").join("km.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", km_db.display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO approvals (case_id, version, custodian, blob)
         SELECT 'beta', 1, custodian, blob FROM approvals WHERE case_id = 'alpha'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let e = officer
        .case_export("beta", &w.dir.path().join("export-beta"), &|_, _| {})
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("1 valid approval(s) of the 2"),
        "{e}"
    );

    // K approvals: exactly alice's conversations are exported
    cw.custodians[2].case_approve("alpha").await.unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let r = officer
        .case_export("alpha", &out, &|d, t| seen.lock().unwrap().push((d, t)))
        .await
        .unwrap();
    assert_eq!(r.summary.messages, 3);
    assert_eq!(seen.lock().unwrap().last(), Some(&(3, 3)), "progress");
    let jsonl = std::fs::read_to_string(out.join("messages.jsonl")).unwrap();
    let flagged: Vec<&str> = jsonl
        .lines()
        .filter(|l| l.contains("watch-harbourview"))
        .collect();
    assert_eq!(flagged.len(), 1, "the text naming Harbourview: {jsonl}");
    assert!(flagged[0].contains("sell 40mm"));
    assert!(
        jsonl
            .lines()
            .any(|l| l.contains("agreed") && !l.contains("dlp_flags"))
    );
    for (path, data) in files_under(&out) {
        assert!(!contains(&data, b"OUTOFSCOPE"), "{}", path.display());
    }
    // the EML files parse with a standard MIME parser
    let mut emls: Vec<_> = std::fs::read_dir(out.join("messages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    emls.sort();
    assert_eq!(emls.len(), 3);
    let mut attachments = 0;
    for p in &emls {
        let bytes = std::fs::read(p).unwrap();
        let m = mail_parser::MessageParser::default().parse(&bytes).unwrap();
        let from = m
            .from()
            .unwrap()
            .first()
            .unwrap()
            .address()
            .unwrap()
            .to_owned();
        assert!(from == "alice@acme" || from == "bob@acme", "{from}");
        assert!(m.subject().unwrap().contains(&cw.room_a.to_string()));
        assert!(m.message_id().unwrap().ends_with("@acme.cloister"));
        assert_eq!(
            m.header("X-Cloister-Room").unwrap().as_text().unwrap(),
            cw.room_a.to_string()
        );
        assert!(m.header("X-Cloister-Envelope").is_some());
        assert!(m.header("X-Cloister-Epoch").is_some());
        if m.attachment_count() > 0 {
            attachments += 1;
            assert_eq!(
                m.attachment(0).unwrap().contents(),
                b"TERMSHEET Harbourview 40mm 101.5"
            );
        }
    }
    assert_eq!(attachments, 1);
    let jsonl = std::fs::read_to_string(out.join("messages.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 3);
    assert!(jsonl.contains("sell 40mm"));

    // verify offline; any altered, missing or added file fails it
    let km_pk = w.stack.km.info().sign_pk.0;
    let v = cloister_client::export::verify(&out, Some(km_pk)).unwrap();
    assert_eq!(v.messages, 3);
    assert!(cloister_client::export::verify(&out, Some([7; 32])).is_err());
    let eml = emls[0].clone();
    let orig = std::fs::read(&eml).unwrap();
    let mut edited = orig.clone();
    let n = edited.len() - 3;
    edited[n] ^= 0x20;
    std::fs::write(&eml, &edited).unwrap();
    let e = cloister_client::export::verify(&out, None).unwrap_err();
    assert!(e.contains("altered"), "{e}");
    std::fs::remove_file(&eml).unwrap();
    let e = cloister_client::export::verify(&out, None).unwrap_err();
    assert!(e.contains("missing"), "{e}");
    std::fs::write(&eml, &orig).unwrap();
    std::fs::write(out.join("messages").join("extra.eml"), b"From: x\r\n\r\nhi").unwrap();
    let e = cloister_client::export::verify(&out, None).unwrap_err();
    assert!(e.contains("added"), "{e}");
    std::fs::remove_file(out.join("messages").join("extra.eml")).unwrap();
    let mp = out.join("manifest.json");
    let m = std::fs::read_to_string(&mp).unwrap();
    std::fs::write(&mp, m.replace("\"exported_ms\"", "\"exported_ms\" ")).unwrap();
    let e = cloister_client::export::verify(&out, None).unwrap_err();
    assert!(e.contains("signature"), "{e}");
    std::fs::write(&mp, m).unwrap();
    cloister_client::export::verify(&out, Some(km_pk)).unwrap();

    // every step is in the audit log
    let steps: Vec<String> = w
        .admin
        .audit_list(0, 1000, Some("case_step".into()), None, None)
        .await
        .unwrap()
        .iter()
        .map(|(_, r, _)| match &r.event {
            cloister_log::AuditEvent::CaseStep { case, step, .. } => format!("{case}:{step}"),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        steps,
        [
            "alpha:session_opened",
            "alpha:decrypted",
            "alpha:zeroized",
            "alpha:exported"
        ]
    );
    for kind in ["case_opened", "case_approved"] {
        assert!(
            !w.admin
                .audit_list(0, 10, Some(kind.into()), None, None)
                .await
                .unwrap()
                .is_empty()
        );
    }
    // rescoping needs fresh approvals
    let v2 = officer
        .case_rescope("alpha", today_scope(vec![], vec![cw.room_a]))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let e = officer
        .case_export("alpha", &w.dir.path().join("again"), &|_, _| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("0 valid approval(s)"), "{e}");
    // the vault's files hold no plaintext
    for (path, data) in files_under(&w.dir.path().join("vault")) {
        for n in [&b"Harbourview"[..], b"OUTOFSCOPE", b"TERMSHEET"] {
            assert!(!contains(&data, n), "{} holds plaintext", path.display());
        }
    }
}

#[tokio::test]
async fn retention_shreds_expired_keys_and_envelopes_but_keeps_held_ones() {
    let cw = case_world().await;
    let w = &cw.w;
    // a hold over carol's conversations, twenty days back
    let now = cloister_proto::now_millis();
    cw.officer
        .case_open(
            "hold-carol",
            "litigation hold",
            cloister_proto::km::CaseScope {
                custodians: vec![cw.carol.user().clone()],
                rooms: vec![],
                from_ms: now - 20 * 86_400_000,
                to_ms: now + 86_400_000,
                reseal: None,
            },
            true,
        )
        .await
        .unwrap();
    // each room moves to epoch 1 (a member removed) and gets a message there
    let bob: cloister_proto::UserId = "bob@acme".parse().unwrap();
    let dave: cloister_proto::UserId = "dave@acme".parse().unwrap();
    cw.alice.remove_member(&cw.room_a, &bob).await.unwrap();
    cw.carol.remove_member(&cw.room_b, &dave).await.unwrap();
    cw.alice.send_text(&cw.room_a, "epoch one").await.unwrap();
    cw.carol.send_text(&cw.room_b, "epoch one").await.unwrap();
    // ten days pass (for the KM's key records and the vault's envelopes)
    let ten = 10 * 86_400_000i64;
    for (db, sql) in [
        (
            "km/km.db",
            "UPDATE room_keys SET created_ms = created_ms - ?",
        ),
        ("vault/vault.db", "UPDATE envelopes SET ts = ts - ?"),
    ] {
        let pool =
            sqlx::SqlitePool::connect(&format!("sqlite://{}", w.dir.path().join(db).display()))
                .await
                .unwrap();
        sqlx::query(sql).bind(ten).execute(&pool).await.unwrap();
    }
    // only compliance sets and runs retention
    assert_eq!(
        cw.alice.retention_set("group", 7).await.unwrap_err().code(),
        Some("not_compliance")
    );
    assert_eq!(
        cw.officer
            .retention_set("forever", 7)
            .await
            .unwrap_err()
            .code(),
        Some("bad_retention")
    );
    cw.officer.retention_set("group", 7).await.unwrap();
    // alice's device holds epoch 0's key in its cache
    assert!(
        cw.alice
            .read(&cw.room_a, 50, None)
            .await
            .unwrap()
            .iter()
            .all(|m| m.is_ok())
    );
    // what must not survive: epoch 0's wrapped key, the envelopes and tokens
    // of room a's expired messages (as stored)
    let (old_key, old_envelopes, old_tokens) = {
        let km = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            w.dir.path().join("km/km.db").display()
        ))
        .await
        .unwrap();
        let key: Vec<u8> =
            sqlx::query_scalar("SELECT wrapped FROM room_keys WHERE room = ? AND epoch = 0")
                .bind(cw.room_a.to_hex())
                .fetch_one(&km)
                .await
                .unwrap();
        km.close().await;
        let v = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            w.dir.path().join("vault/vault.db").display()
        ))
        .await
        .unwrap();
        let envs: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT message_id, envelope FROM envelopes WHERE room = ?")
                .bind(cw.room_a.to_hex())
                .fetch_all(&v)
                .await
                .unwrap();
        let toks: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT t.token FROM tokens t JOIN envelopes e ON e.message_id = t.message_id WHERE e.room = ?1 \
             AND t.token NOT IN (SELECT t2.token FROM tokens t2 JOIN envelopes e2 ON e2.message_id = t2.message_id WHERE e2.room != ?1)",
        )
        .bind(cw.room_a.to_hex())
        .fetch_all(&v)
        .await
        .unwrap();
        v.close().await;
        (key, envs, toks)
    };
    assert_eq!(old_envelopes.len(), 4);
    assert!(!old_tokens.is_empty());
    let log_before = w.stack.vault.log_size();
    let (r, p) = cw.officer.retention_run().await.unwrap();
    assert_eq!(r.shredded, vec![(cw.room_a, 0)]);
    assert_eq!(r.held, vec![(cw.room_b, 0)]);
    assert_eq!((p.deleted, p.kept_for_hold), (4, 2));
    assert_eq!(w.stack.vault.envelope_count().await.unwrap(), 2);
    // no byte of them is left in any file of the KM's or the vault's data
    // directory (database, WAL, SHM, key files)
    for (path, data) in files_under(&w.dir.path().join("km")) {
        assert!(
            !contains(&data, &old_key),
            "wrapped key in {}",
            path.display()
        );
    }
    for (path, data) in files_under(&w.dir.path().join("vault")) {
        // what the envelope alone holds: its sealed ciphertext and HPKE
        // encapsulation, as stored (the ids and hashes stay in the
        // ingestion log by design)
        for (id, env) in &old_envelopes {
            let j: serde_json::Value = serde_json::from_slice(env).unwrap();
            for field in ["ct", "enc"] {
                let stored = j[field].as_str().unwrap().as_bytes();
                for window in stored.chunks(40).filter(|c| c.len() == 40) {
                    assert!(
                        !contains(&data, window),
                        "envelope {id}'s {field} in {}",
                        path.display()
                    );
                }
            }
        }
        for t in &old_tokens {
            assert!(!contains(&data, t), "a deleted token in {}", path.display());
        }
    }
    // alice's device dropped the destroyed key at once: reading the room
    // opens only epoch 1, and captures nothing again
    let count = w.stack.vault.envelope_count().await.unwrap();
    let msgs = cw.alice.read(&cw.room_a, 50, None).await.unwrap();
    let expired: Vec<_> = msgs.iter().filter(|m| m.is_err()).collect();
    assert_eq!(expired.len(), 3, "{msgs:?}");
    assert!(expired.iter().all(|m| {
        m.as_ref()
            .unwrap_err()
            .to_string()
            .contains("destroyed by retention")
    }));
    assert_eq!(msgs.iter().filter(|m| m.is_ok()).count(), 1);
    assert_eq!(w.stack.vault.envelope_count().await.unwrap(), count);
    // the KM will not release it, and putting the old bytes back does not
    // bring it back: they were wrapped under a destroyed key generation
    let e = cw.alice.room_keys(&cw.room_a, &[0]).await.unwrap_err();
    assert_eq!(e.code(), Some("key_shredded"), "{e}");
    let km = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        w.dir.path().join("km/km.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE room_keys SET wrapped = ? WHERE room = ? AND epoch = 0")
        .bind(&old_key)
        .bind(cw.room_a.to_hex())
        .execute(&km)
        .await
        .unwrap();
    km.close().await;
    let e = cw.alice.room_keys(&cw.room_a, &[0]).await.unwrap_err();
    assert_eq!(e.code(), Some("key_shredded"), "{e}");
    // the vault refuses to capture a deleted message again (tombstone)
    let raw = w.raw("replayer").await;
    let (id, env) = &old_envelopes[0];
    let (st, body) = raw
        .vault(
            &w.stack.vault_url,
            &cloister_proto::vault::VaultOp::Capture {
                ts: cloister_proto::now_millis(),
                capture: cloister_proto::vault::Capture {
                    envelope: env.clone().into(),
                    period: 0,
                    tokens: vec![],
                    received: true,
                    header: cloister_proto::b64::Bytes(b"{}".to_vec()),
                    sig: cloister_proto::b64::Fixed([0; 64]),
                    sender_cert: raw.signed_cert.clone(),
                },
            },
        )
        .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (410, Some("capture_deleted")),
        "{id}: {body}"
    );
    // held data survives, readable by its members
    cw.carol.clear_key_cache().unwrap();
    assert_eq!(w.stack.vault.envelope_count().await.unwrap(), 2);
    let msgs = cw.carol.read(&cw.room_b, 50, None).await.unwrap();
    assert!(msgs.iter().all(|m| m.is_ok()));
    // deletions are log entries at the KM and the vault
    let shred = w
        .admin
        .audit_list(0, 100, Some("key_shredded".into()), None, None)
        .await
        .unwrap();
    assert_eq!(shred.len(), 1);
    for kind in ["retention_set", "vault_registered"] {
        let rows = w
            .admin
            .audit_list(0, 100, Some(kind.into()), None, None)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{kind}");
    }
    assert_eq!(
        w.stack.vault.log_size(),
        log_before + 4,
        "one entry per deletion"
    );
    // the purge order cannot be replayed; a new run deletes nothing more
    // (and scrubs the bytes put back above once again)
    let e = cw.officer.apply_purge(&r.order).await.unwrap_err();
    assert_eq!(e.code(), Some("stale_order"), "{e}");
    let (r2, p2) = cw.officer.retention_run().await.unwrap();
    assert_eq!(r2.shredded, vec![(cw.room_a, 0)]);
    assert_eq!((p2.deleted, p2.kept_for_hold), (0, 2));
    let (r3, _) = cw.officer.retention_run().await.unwrap();
    assert!(r3.shredded.is_empty());
}

#[tokio::test]
async fn surveillance_reads_a_room_live_and_every_release_is_visible() {
    let cw = case_world().await;
    let w = &cw.w;
    let watcher = w.user_with("watcher", &[Surveillance]).await;
    let msgs = watcher.read(&cw.room_a, 50, None).await.unwrap();
    assert_eq!(msgs.len(), 3);
    assert!(msgs.iter().all(|m| m.is_ok()));
    // live: the watcher's stream carries the room's next message, decrypted
    let mut stream = watcher.connect_events().await.unwrap();
    cw.alice
        .send_text(&cw.room_a, "live to compliance")
        .await
        .unwrap();
    let live = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        watcher.next_message(&mut stream, &cw.room_a),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(
        live.content,
        cloister_proto::server::Content::Text {
            text: "live to compliance".into()
        }
    );
    let who = w.admin.who_has_keys(&cw.room_a).await.unwrap();
    assert!(
        who.iter()
            .any(|r| &r.user == watcher.user() && r.surveillance),
        "the surveillance release is visible in who-has-keys"
    );
    let plain: Vec<String> = who.iter().map(cloister_cli::audit::release_line).collect();
    assert!(
        plain
            .iter()
            .any(|l| l.contains(watcher.user().as_str()) && l.contains("SURVEILLANCE")),
        "and in its plain output: {plain:?}"
    );
    assert!(
        plain
            .iter()
            .filter(|l| l.contains("SURVEILLANCE"))
            .all(|l| l.contains(watcher.user().as_str())),
        "{plain:?}"
    );
    // compliance without the surveillance entitlement cannot
    let e = cw.officer.read(&cw.room_a, 50, None).await.unwrap_err();
    assert_eq!(e.code(), Some("no_such_room"), "{e}");
}

#[tokio::test]
async fn vault_and_case_inputs_are_checked_and_change_nothing() {
    use cloister_proto::b64::{Bytes, Fixed};
    use cloister_proto::km::KmOp;
    use cloister_proto::vault::{Capture, SealedEnvelope, VaultOp};
    let cw = case_world().await;
    let w = &cw.w;
    let vault = w.stack.vault_url.clone();
    let raw = w.raw_with("rawofficer", &[Compliance, Custodian]).await;
    let now = cloister_proto::now_millis;
    let count = w.stack.vault.envelope_count().await.unwrap();
    let log = w.stack.vault.log_size();
    let capture = |envelope: Vec<u8>, tokens: usize, ts: u64| VaultOp::Capture {
        ts,
        capture: Capture {
            envelope: Bytes(envelope),
            period: 0,
            tokens: vec![Fixed([0; 16]); tokens],
            received: false,
            header: Bytes(b"{}".to_vec()),
            sig: Fixed([0; 64]),
            sender_cert: raw.signed_cert.clone(),
        },
    };
    let sealed = |tenant: &str, id: cloister_proto::MessageId| {
        serde_json::to_vec(&SealedEnvelope {
            tenant: tenant.parse().unwrap(),
            message_id: id,
            room: cw.room_a,
            ts: now(),
            ciphertext_sha256: Fixed([1; 32]),
            enc: Fixed([2; 32]),
            ct: Bytes(vec![3; 40]),
            generation: 1,
        })
        .unwrap()
    };
    let id = cloister_proto::MessageId([9; 16]);
    for (op, status, code) in [
        (capture(b"not json".to_vec(), 1, now()), 400, "bad_envelope"),
        (capture(sealed("acme", id), 4097, now()), 413, "too_large"),
        (
            capture(sealed("acme", id), 1, now() - 3_600_000),
            401,
            "stale_request",
        ),
        (capture(sealed("other", id), 1, now()), 403, "wrong_tenant"),
    ] {
        let (st, body) = raw.vault(&vault, &op).await;
        assert_eq!((st, body["error"].as_str()), (status, Some(code)), "{body}");
    }
    // an envelope for a message already captured, whose header raw did not sign
    let hits = cw
        .officer
        .compliance_search(
            &[(cloister_crypto::blind::Field::Room, cw.room_a.to_hex())],
            now() - 3_600_000,
            now() + 3_600_000,
            10,
        )
        .await
        .unwrap();
    let (st, body) = raw
        .vault(
            &vault,
            &capture(sealed("acme", hits[0].message_id), 1, now()),
        )
        .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("unattributable")),
        "{body}"
    );
    // a forged case, someone else's case, a forged purge order
    let case = cw
        .officer
        .case_open("gamma", "", today_scope(vec![], vec![cw.room_a]), false)
        .await
        .unwrap();
    let (_, list) = cw
        .officer
        .case_list()
        .await
        .unwrap()
        .into_iter()
        .map(|(b, c)| (c, b))
        .find(|(c, _)| c.case == case.case)
        .unwrap();
    let fetch = |case: cloister_proto::km::SignedBlob, size: u64| VaultOp::Fetch {
        ts: now(),
        case,
        tokens: vec![],
        after: None,
        limit: 10,
        size,
    };
    let mut forged = list.clone();
    forged.sig.0[0] ^= 1;
    let (st, body) = raw.vault(&vault, &fetch(forged.clone(), 1)).await;
    assert_eq!((st, body["error"].as_str()), (403, Some("bad_case")));
    let (st, body) = raw.vault(&vault, &fetch(list.clone(), 1)).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("not_case_officer"))
    );
    let (st, body) = raw
        .vault(
            &vault,
            &VaultOp::Purge {
                ts: now(),
                order: forged,
            },
        )
        .await;
    assert_eq!((st, body["error"].as_str()), (403, Some("bad_order")));
    // an ordinary user may not fetch, search or purge at all
    let user = w.raw("plainuser").await;
    let (st, body) = user.vault(&vault, &fetch(list.clone(), 1)).await;
    assert_eq!((st, body["error"].as_str()), (403, Some("not_compliance")));

    // KM: case inputs
    let scope = today_scope(vec![], vec![cw.room_a]);
    let open = |case: &str, scope: cloister_proto::km::CaseScope| KmOp::CaseOpen {
        case: case.into(),
        title: "t".into(),
        scope,
        session_pk: Fixed([5; 32]),
        hold: false,
    };
    let mut backwards = scope.clone();
    backwards.from_ms = backwards.to_ms + 1;
    let empty = cloister_proto::km::CaseScope {
        custodians: vec![],
        rooms: vec![],
        ..scope.clone()
    };
    let mut foreign = scope.clone();
    foreign.custodians = vec!["eve@other".parse().unwrap()];
    for (op, status, code) in [
        (open("Bad Id!", scope.clone()), 400, "bad_case"),
        (open(&"x".repeat(65), scope.clone()), 400, "bad_case"),
        (open("ok-1", backwards), 400, "bad_scope"),
        (open("ok-2", empty), 400, "bad_scope"),
        (open("ok-3", foreign), 400, "bad_scope"),
        (open("gamma", scope.clone()), 409, "case_exists"),
        (
            KmOp::CaseStep {
                case: "gamma".into(),
                step: "peek".into(),
                count: 0,
            },
            400,
            "bad_step",
        ),
        (
            KmOp::CaseApprovals {
                case: "gamma".into(),
            },
            403,
            "not_case_officer",
        ),
        (
            KmOp::CaseApprovals {
                case: "nope".into(),
            },
            404,
            "unknown_case",
        ),
        (
            KmOp::RetentionSet {
                kind: "group".into(),
                days: 0,
            },
            400,
            "bad_retention",
        ),
    ] {
        let (st, body) = raw.km(op).await;
        assert_eq!((st, body["error"].as_str()), (status, Some(code)), "{body}");
    }
    // an approval not signed by the sending device
    let approval = cloister_crypto::signed::device_sign_blob(
        &cloister_crypto::DeviceKeys::generate().unwrap(),
        cloister_crypto::signed::APPROVAL,
        &serde_json::json!({"case": "gamma"}),
    )
    .unwrap();
    let (st, body) = raw.km(KmOp::CaseApprove { approval }).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("bad_signature")));
    // a replayed case request
    let body = cloister_proto::km::RequestBody {
        device: raw.keys.device_id(),
        ts: now(),
        nonce: Fixed([7; 16]),
        op: open("delta", scope.clone()),
    };
    let req = cloister_crypto::signed::sign_request(&raw.keys, &body).unwrap();
    for expect in [200, 409] {
        let r = w
            .http
            .post(format!("{}/v1/request", w.stack.km_url))
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expect);
    }
    // nothing changed at the vault; only gamma and delta were opened
    assert_eq!(w.stack.vault.envelope_count().await.unwrap(), count);
    assert_eq!(w.stack.vault.log_size(), log);
    let cases: Vec<String> = cw
        .officer
        .case_list()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, c)| c.case)
        .collect();
    assert_eq!(cases, ["delta", "gamma"]);
}
