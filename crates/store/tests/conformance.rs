//! One conformance suite for the store traits, run against SQLite and
//! against PostgreSQL (each test in a database of its own, dropped after
//! it). Without PostgreSQL the PostgreSQL half warns loudly, and fails
//! when `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cloister_store::testkit::PgDatabase;
use cloister_store::*;
use std::sync::Arc;

/// A fresh database URL of each backend; the guard keeps it alive.
enum Guard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Pg(#[allow(dead_code)] PgDatabase),
}

async fn fresh(backend: Backend, file: &str) -> Option<(String, Guard)> {
    match backend {
        Backend::Sqlite => {
            let d = tempfile::tempdir().unwrap();
            let url = sqlite_url(&d.path().join(file));
            Some((url, Guard::Dir(d)))
        }
        Backend::Postgres => {
            let db = PgDatabase::create().await?;
            Some((db.url.clone(), Guard::Pg(db)))
        }
    }
}

/// `name_sqlite` and `name_postgres` tests running `suite(url)`.
macro_rules! on_both {
    ($name:ident, $file:literal) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (url, _g) = fresh(Backend::Sqlite, $file).await.unwrap();
                super::$name(&url).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some((url, _g)) = fresh(Backend::Postgres, $file).await else {
                    return;
                };
                super::$name(&url).await;
            }
        }
    };
}

fn t(s: &str) -> cloister_proto::TenantId {
    s.parse().unwrap()
}

fn u(s: &str) -> cloister_proto::UserId {
    s.parse().unwrap()
}

fn dev(n: u8) -> cloister_proto::DeviceId {
    cloister_proto::DeviceId([n; 16])
}

fn mid(n: u8) -> cloister_proto::MessageId {
    cloister_proto::MessageId([n; 16])
}

fn room(n: u8) -> RoomId {
    RoomId([n; 16])
}

fn row(seq: u64) -> LogRow {
    LogRow {
        seq,
        entry: format!("e{seq}").into_bytes(),
        hash: format!("h{seq}").into_bytes(),
    }
}

fn msg(room: &RoomId, id: &str) -> NewMessage {
    NewMessage {
        room: room.to_hex(),
        msg_id: id.into(),
        epoch: 0,
        device: "d".into(),
        ts: 1,
        header: b"h".to_vec(),
        ciphertext: id.as_bytes().to_vec(),
        sig: b"s".to_vec(),
    }
}

on_both!(server_basics, "s.db");
async fn server_basics(url: &str) {
    let s = SqlServerStore::open(url).await.unwrap();
    s.put_tenant(&t("acme"), b"k1").await.unwrap();
    s.put_tenant(&t("acme"), b"k1").await.unwrap();
    assert!(matches!(
        s.put_tenant(&t("acme"), b"k2").await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_tenant(&t("acme")).await.unwrap().unwrap(), b"k1");

    // devices: a revoked device stays revoked when its certificate returns
    let d = DeviceRow {
        device: dev(1).to_hex(),
        tenant: "acme".into(),
        user: "a@acme".into(),
        cert: b"c1".to_vec(),
        revoked: false,
    };
    s.put_device(&d).await.unwrap();
    s.revoke_device(&dev(1)).await.unwrap();
    s.put_device(&DeviceRow {
        cert: b"c2".to_vec(),
        ..d.clone()
    })
    .await
    .unwrap();
    let got = s.get_device(&dev(1)).await.unwrap().unwrap();
    assert!(got.revoked);
    assert_eq!(got.cert, b"c1");
    assert_eq!(s.devices_of_user(&u("a@acme")).await.unwrap().len(), 1);

    // standing: only a newer notice moves it
    assert!(s.set_user_standing(&u("b@acme"), true, 10).await.unwrap());
    assert!(!s.set_user_standing(&u("b@acme"), false, 10).await.unwrap());
    assert!(!s.set_user_standing(&u("b@acme"), false, 9).await.unwrap());
    assert!(s.is_user_disabled(&u("b@acme")).await.unwrap());
    assert!(s.set_user_standing(&u("b@acme"), false, 11).await.unwrap());
    assert!(!s.is_user_disabled(&u("b@acme")).await.unwrap());
    let (devs, users) = s.deny_list().await.unwrap();
    assert_eq!((devs, users), (vec![dev(1).to_hex()], vec![]));

    // tenant notices keep the newest version
    assert!(
        s.put_tenant_notice(&t("acme"), "capture", 6, b"[]")
            .await
            .unwrap()
    );
    assert!(
        !s.put_tenant_notice(&t("acme"), "capture", 6, b"[1]")
            .await
            .unwrap()
    );
    assert!(
        !s.put_tenant_notice(&t("acme"), "capture", 5, b"[2]")
            .await
            .unwrap()
    );
    assert_eq!(
        s.tenant_notices("capture").await.unwrap(),
        vec![b"[]".to_vec()]
    );

    // connections: answered once, removed once
    assert!(
        s.put_connection(&[1; 32], &u("a@acme"), &u("z@bank"), b"rq")
            .await
            .unwrap()
    );
    assert!(
        !s.put_connection(&[1; 32], &u("a@acme"), &u("z@bank"), b"rq2")
            .await
            .unwrap()
    );
    assert!(s.set_connection_answer(&[1; 32], b"ok").await.unwrap());
    assert!(!s.set_connection_answer(&[1; 32], b"ok2").await.unwrap());
    assert!(s.set_connection_removal(&[1; 32], b"rm").await.unwrap());
    assert!(!s.set_connection_removal(&[1; 32], b"rm2").await.unwrap());
    let c = s.get_connection(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(c.answer.as_deref(), Some(&b"ok"[..]));
    assert_eq!(s.connections_of(&u("z@bank")).await.unwrap().len(), 1);

    // rooms, directory, verdicts, shredded notices, blobs
    let rid = room(1);
    let r = rid.to_hex();
    let acme = t("acme");
    s.set_room_tenant(&rid, &acme).await.unwrap();
    s.set_room_tenant(&rid, &t("other")).await.unwrap();
    assert_eq!(s.tenant_rooms(&acme).await.unwrap(), vec![r.clone()]);
    s.set_listed(&rid, &acme, true).await.unwrap();
    s.set_listed(&rid, &acme, true).await.unwrap();
    assert_eq!(s.listed_rooms(&acme).await.unwrap(), vec![r.clone()]);
    s.set_listed(&rid, &acme, false).await.unwrap();
    assert!(s.listed_rooms(&acme).await.unwrap().is_empty());
    s.put_verdict(&rid, &mid(1), &dev(9), b"v1").await.unwrap();
    s.put_verdict(&rid, &mid(1), &dev(9), b"v2").await.unwrap();
    assert_eq!(
        s.verdicts(&rid, &mid(1)).await.unwrap(),
        vec![b"v2".to_vec()]
    );
    s.add_shredded(&rid, b"n1").await.unwrap();
    s.add_shredded(&rid, b"n1").await.unwrap();
    assert_eq!(s.shredded_notices(&rid).await.unwrap().len(), 1);
    let b = BlobRow {
        id: "b1".into(),
        room: r.clone(),
        device: "d1".into(),
        size: 5,
    };
    s.put_blob(&b).await.unwrap();
    assert!(matches!(s.put_blob(&b).await, Err(StoreError::Conflict(_))));
    assert_eq!(s.get_blob("b1").await.unwrap().unwrap().size, 5);
}

on_both!(room_log, "s.db");
async fn room_log(url: &str) {
    let s = SqlServerStore::open(url).await.unwrap();
    let r = room(2);
    s.append_log(&r, None, &[row(0)], b"st0", &["a@acme".into()])
        .await
        .unwrap();
    // replaying seq 0 or skipping ahead conflicts and writes nothing
    assert!(matches!(
        s.append_log(&r, None, &[row(0)], b"x", &[]).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.append_log(&r, Some(1), &[row(2)], b"x", &[]).await,
        Err(StoreError::Conflict(_))
    ));
    s.append_log(
        &r,
        Some(0),
        &[row(1), row(2)],
        b"st2",
        &["a@acme".into(), "b@acme".into()],
    )
    .await
    .unwrap();
    let got = s.get_room(&r).await.unwrap().unwrap();
    assert_eq!((got.room, got.seq, got.state), (r, 2, b"st2".to_vec()));
    assert_eq!(s.room_log(&r, 1, 10).await.unwrap().len(), 2);
    assert_eq!(s.room_log_hash(&r, 1).await.unwrap().unwrap(), b"h1");
    assert_eq!(s.rooms_of_user(&u("b@acme")).await.unwrap().len(), 1);

    // a batch over two rooms is all or nothing
    let r3 = room(3);
    let bad = [
        RoomAppend {
            room: &r3,
            expected_seq: None,
            entries: &[row(0)],
            state: b"s",
            members: &[],
        },
        RoomAppend {
            room: &r,
            expected_seq: Some(0),
            entries: &[row(1)],
            state: b"s",
            members: &[],
        },
    ];
    assert!(s.append_logs(&bad).await.is_err());
    assert!(s.get_room(&r3).await.unwrap().is_none());

    // racing appenders on one head: exactly one wins
    let s = Arc::new(s);
    let r4 = room(4);
    s.append_log(&r4, None, &[row(0)], b"s", &[]).await.unwrap();
    let mut tasks = Vec::new();
    for k in 0..8u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut e = row(1);
            e.entry = vec![k];
            s.append_log(&r4, Some(0), &[e], &[k], &[]).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(s.room_log(&r4, 0, 10).await.unwrap().len(), 2);
}

on_both!(messages, "s.db");
async fn messages(url: &str) {
    let s = Arc::new(SqlServerStore::open(url).await.unwrap());
    let r = room(5);
    let got = s
        .insert_messages(&[msg(&r, "m1"), msg(&r, "m1")])
        .await
        .unwrap();
    let Inserted::Seq {
        seq: first,
        prev: 0,
    } = got[0]
    else {
        panic!("{got:?}");
    };
    assert_eq!(got[1], Inserted::Duplicate);
    // prev links each message to the one before it in its room
    let other = room(6);
    let got = s
        .insert_messages(&[msg(&r, "m2"), msg(&other, "o1"), msg(&r, "m3")])
        .await
        .unwrap();
    let seqs: Vec<(u64, u64)> = got
        .iter()
        .map(|g| match g {
            Inserted::Seq { seq, prev } => (*seq, *prev),
            Inserted::Duplicate => panic!("dup"),
        })
        .collect();
    assert_eq!(seqs[0].1, first);
    assert_eq!(seqs[1].1, 0);
    assert_eq!(seqs[2].1, seqs[0].0);
    // concurrent writers to one room: every message stored once, and the
    // room's history in seq order holds each writer's messages in order
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut links = Vec::new();
            for k in 0..25 {
                let id = format!("w{w}-{k:02}");
                match s.insert_messages(&[msg(&r, &id)]).await.unwrap()[0] {
                    Inserted::Seq { seq, prev } => links.push((seq, prev)),
                    Inserted::Duplicate => panic!("dup"),
                }
            }
            links
        }));
    }
    // the room's messages form one chain: each links to the one before
    let mut links = vec![(first, 0), seqs[0], seqs[2]];
    for t in tasks {
        links.extend(t.await.unwrap());
    }
    links.sort();
    for w in links.windows(2) {
        assert_eq!(w[1].1, w[0].0, "{links:?}");
    }
    let h = s.history(&r, u64::MAX, 1000).await.unwrap();
    assert_eq!(h.len(), 103);
    assert!(h.windows(2).all(|w| w[0].seq < w[1].seq));
    for w in 0..4 {
        let mine: Vec<Vec<u8>> = h
            .iter()
            .map(|m| m.ciphertext.clone())
            .filter(|c| c.starts_with(format!("w{w}-").as_bytes()))
            .collect();
        let mut sorted = mine.clone();
        sorted.sort();
        assert_eq!(mine, sorted);
    }
    // paging backwards
    let last = h[h.len() - 1].seq;
    assert_eq!(s.history(&r, last, 10).await.unwrap().len(), 10);
}

on_both!(km_basics, "k.db");
async fn km_basics(url: &str) {
    let s = SqlKmStore::open(url).await.unwrap();
    s.put_code(b"h", &u("a@acme"), 10).await.unwrap();
    assert_eq!(
        s.take_code(b"h").await.unwrap(),
        Some(("a@acme".into(), 10))
    );
    assert_eq!(
        s.take_code(b"h").await.unwrap(),
        None,
        "codes are single use"
    );
    // wrong tries: counted against the user's code, burned at the limit
    use cloister_store::CodeTries;
    assert_eq!(
        s.code_failed(&u("a@acme"), 3).await.unwrap(),
        CodeTries::NoCode
    );
    s.put_code(b"h2", &u("a@acme"), 10).await.unwrap();
    assert_eq!(
        s.code_failed(&u("a@acme"), 3).await.unwrap(),
        CodeTries::Counted(1)
    );
    assert_eq!(
        s.code_failed(&u("a@acme"), 3).await.unwrap(),
        CodeTries::Counted(2)
    );
    assert_eq!(
        s.code_failed(&u("a@acme"), 3).await.unwrap(),
        CodeTries::Burned
    );
    assert_eq!(
        s.take_code(b"h2").await.unwrap(),
        None,
        "a burned code is gone"
    );
    // a new code starts with no wrong tries
    s.put_code(b"h3", &u("a@acme"), 10).await.unwrap();
    assert_eq!(
        s.code_failed(&u("a@acme"), 3).await.unwrap(),
        CodeTries::Counted(1)
    );
    let r = room(7);
    let k1 = s.put_room_key(&r.to_hex(), 0, b"w1").await.unwrap();
    let k2 = s.put_room_key(&r.to_hex(), 0, b"w2").await.unwrap();
    assert_eq!(k1, k2, "first key wins");
    s.put_room_key(&r.to_hex(), 1, b"w3").await.unwrap();
    s.shred_room_key(&r, 0).await.unwrap();
    let keys = s.room_keys_of(&r).await.unwrap();
    assert_eq!(
        keys.iter().map(|k| (k.0, k.2)).collect::<Vec<_>>(),
        vec![(0, true), (1, false)]
    );
    assert_eq!(s.get_room_key(&r.to_hex(), 0).await.unwrap().unwrap(), b"");
    assert_eq!(s.live_wrapped_keys().await.unwrap().len(), 1);
    let replaced = s
        .rewrap_keys(&[
            (r.to_hex(), 0, b"".to_vec(), b"x".to_vec()),
            (r.to_hex(), 0, b"w1".to_vec(), b"x".to_vec()),
            (r.to_hex(), 1, b"w3".to_vec(), b"y".to_vec()),
        ])
        .await
        .unwrap();
    assert_eq!(replaced, 1);
    assert_eq!(
        s.get_room_key(&r.to_hex(), 0).await.unwrap().unwrap(),
        b"",
        "shredded stays shredded"
    );
    assert_eq!(s.get_room_key(&r.to_hex(), 1).await.unwrap().unwrap(), b"y");
    assert_eq!(
        s.rewrap_keys(&[(r.to_hex(), 1, b"w3".to_vec(), b"z".to_vec())])
            .await
            .unwrap(),
        0,
        "a key re-wrapped meanwhile is left alone"
    );
    // keys by generation: a wrap begins with its generation (u32 BE)
    let wrap_at = |g: u32, tail: u8| {
        let mut w = g.to_be_bytes().to_vec();
        w.push(tail);
        w
    };
    let r2 = room(8);
    for (e, g) in [(0u64, 1u32), (1, 2), (2, 3), (3, 256)] {
        s.put_room_key(&r2.to_hex(), e, &wrap_at(g, 9))
            .await
            .unwrap();
    }
    // room 7's live key is "y" (0x79...: generation 0x79000000, above all)
    assert_eq!(s.count_wrapped_below(3).await.unwrap(), 2);
    assert_eq!(s.count_wrapped_below(257).await.unwrap(), 4);
    let below = s.wrapped_keys_below(257, 3).await.unwrap();
    assert_eq!(below.len(), 3, "limit");
    assert!(
        below
            .iter()
            .all(|(n, _, w)| n == &r2.to_hex() && w[..4] < [0u8, 0, 1, 1][..])
    );
    s.km_scrub().await.unwrap();

    assert!(s.use_nonce("d", b"n", 5, 0).await.unwrap());
    assert!(!s.use_nonce("d", b"n", 5, 0).await.unwrap());
    assert!(s.use_nonce("d", b"n", 20, 10).await.unwrap(), "pruned");
    s.init_meta("x", b"1").await.unwrap();
    assert!(s.init_meta("x", b"2").await.is_err());
    s.set_meta("x", b"3").await.unwrap();
    assert_eq!(s.get_meta("x").await.unwrap().unwrap(), b"3");

    s.upsert_user(&KmUserRow {
        user: "a@acme".into(),
        roles: "admin".into(),
        status: "active".into(),
    })
    .await
    .unwrap();
    assert!(s.set_user_status(&u("a@acme"), "disabled").await.unwrap());
    assert!(
        !s.set_user_status(&u("nobody@acme"), "disabled")
            .await
            .unwrap()
    );
    let dev = KmDeviceRow {
        device: "d1".into(),
        user: "a@acme".into(),
        cert: b"c".to_vec(),
        status: "active".into(),
        issued_at: 1,
    };
    s.put_device(&dev).await.unwrap();
    assert!(matches!(
        s.put_device(&dev).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.km_deny_list().await.unwrap().1,
        vec!["a@acme".to_string()]
    );
    // a renewal replaces an active device's certificate, never a revoked
    // one's, nor one of a disabled user (a@acme is disabled above)
    let disabled_users = cloister_proto::DeviceId([4; 16]);
    s.put_device(&KmDeviceRow {
        device: disabled_users.to_hex(),
        ..dev.clone()
    })
    .await
    .unwrap();
    assert!(!s.renew_device(&disabled_users, b"new", 5).await.unwrap());
    s.upsert_user(&KmUserRow {
        user: "b@acme".into(),
        roles: "user".into(),
        status: "active".into(),
    })
    .await
    .unwrap();
    let id = cloister_proto::DeviceId([3; 16]);
    s.put_device(&KmDeviceRow {
        device: id.to_hex(),
        user: "b@acme".into(),
        cert: b"old".to_vec(),
        ..dev.clone()
    })
    .await
    .unwrap();
    assert!(s.renew_device(&id, b"new", 5).await.unwrap());
    let row = s.get_device(&id).await.unwrap().unwrap();
    assert_eq!((row.cert.as_slice(), row.issued_at), (&b"new"[..], 5));
    assert!(s.set_device_status(&id, "revoked").await.unwrap());
    assert!(!s.renew_device(&id, b"newer", 6).await.unwrap());
    assert_eq!(s.get_device(&id).await.unwrap().unwrap().cert, b"new");

    s.put_case("c1", 1, b"v1").await.unwrap();
    s.put_case("c1", 2, b"v2").await.unwrap();
    assert_eq!(s.get_case("c1").await.unwrap().unwrap(), b"v2");
    s.put_approval("c1", 2, &u("cu@acme"), b"ok").await.unwrap();
    assert!(s.put_approval("c1", 2, &u("cu@acme"), b"ok").await.is_err());
    assert_eq!(s.approvals("c1", 2).await.unwrap().len(), 1);

    s.set_meta("vault@UK", b"uk").await.unwrap();
    s.set_meta("vault@US-NY", b"ny").await.unwrap();
    s.set_meta("vaulted", b"x").await.unwrap();
    assert_eq!(
        s.meta_prefixed("vault@").await.unwrap(),
        vec![
            ("vault@UK".to_owned(), b"uk".to_vec()),
            ("vault@US-NY".to_owned(), b"ny".to_vec())
        ]
    );
    assert!(s.meta_prefixed("vault_").await.is_err());
    assert!(s.get_escrow().await.unwrap().is_none());
    s.init_escrow(1, b"desc", &[("cu@acme".into(), 1, b"s1".to_vec())])
        .await
        .unwrap();
    assert!(s.init_escrow(1, b"desc", &[]).await.is_err());
    assert_eq!(
        s.escrow_shares_of(&u("cu@acme")).await.unwrap(),
        vec![(1, 1, b"s1".to_vec())]
    );
    // a second generation: the newest answers, both stay live
    s.init_escrow(
        2,
        b"desc2",
        &[
            ("cu@acme".into(), 1, b"t1".to_vec()),
            ("cv@acme".into(), 2, b"t2".to_vec()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(s.get_escrow().await.unwrap().unwrap(), b"desc2");
    assert_eq!(
        s.escrow_generations().await.unwrap(),
        vec![(1, b"desc".to_vec()), (2, b"desc2".to_vec())]
    );
    assert_eq!(
        s.escrow_shares_of(&u("cu@acme")).await.unwrap(),
        vec![(1, 1, b"s1".to_vec()), (2, 1, b"t1".to_vec())]
    );
    s.retire_escrow(1).await.unwrap();
    assert!(s.retire_escrow(1).await.is_err());
    assert_eq!(
        s.escrow_shares_of(&u("cu@acme")).await.unwrap(),
        vec![(2, 1, b"t1".to_vec())]
    );
    assert_eq!(s.escrow_generations().await.unwrap().len(), 1);

    s.dir_write(
        &[DirRow {
            kind: "user".into(),
            id: "a".into(),
            doc: b"{}".to_vec(),
        }],
        &[],
    )
    .await
    .unwrap();
    s.dir_write(
        &[DirRow {
            kind: "user".into(),
            id: "a".into(),
            doc: b"{1}".to_vec(),
        }],
        &[("user".into(), "gone".into())],
    )
    .await
    .unwrap();
    assert_eq!(s.dir_all().await.unwrap()[0].doc, b"{1}");
}

fn audit(index: u64) -> AuditIn {
    AuditIn {
        index,
        ts: index,
        kind: if index.is_multiple_of(2) {
            "even"
        } else {
            "odd"
        }
        .into(),
        room: None,
        data: format!("entry {index}").into_bytes(),
        side: None,
    }
}

on_both!(audit_log, "k.db");
async fn audit_log(url: &str) {
    let s = Arc::new(SqlKmStore::open(url).await.unwrap());
    s.audit_append(&[audit(0), audit(1)], Some((2, "cp2")))
        .await
        .unwrap();
    assert!(matches!(
        s.audit_append(&[audit(1)], None).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.audit_append(&[audit(3)], None).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.audit_latest_checkpoint().await.unwrap().unwrap().0, 2);
    // two appenders racing for index 2: one log, no fork
    let (a, b) = (s.clone(), s.clone());
    let (ra, rb) = tokio::join!(
        async move { a.audit_append(&[audit(2)], None).await },
        async move { b.audit_append(&[audit(2)], None).await }
    );
    assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
    assert_eq!(s.audit_all().await.unwrap().len(), 3);
    let q = AuditQuery {
        from: 0,
        limit: 10,
        kind: Some("even".into()),
        ..Default::default()
    };
    assert_eq!(s.audit_list(&q).await.unwrap().len(), 2);
    assert_eq!(s.audit_get(1).await.unwrap().unwrap(), b"entry 1");
}

fn capture(index: u64, id: &str, room: &str, ts: u64, tokens: &[&[u8]]) -> AuditIn {
    AuditIn {
        side: Some(SideEffect::Capture(Box::new(CaptureRow {
            message_id: id.into(),
            room: room.into(),
            ts,
            ciphertext_sha256: vec![1; 32],
            envelope: format!("env {id}").into_bytes(),
            envelope_sha256: vec![2; 32],
            received_ms: ts,
            period: 1,
            // a token twice in one capture is stored once
            tokens: tokens.iter().chain(tokens).map(|t| t.to_vec()).collect(),
            device: "d".into(),
            generation: 1,
        }))),
        ..audit(index)
    }
}

on_both!(vault, "v.db");
async fn vault(url: &str) {
    let s = SqlVaultStore::open(url).await.unwrap();
    let (m0, m1, m2) = (mid(10).to_hex(), mid(11).to_hex(), mid(12).to_hex());
    let (r1, r2) = (room(11), room(12));
    let (r1h, r2h) = (r1.to_hex(), r2.to_hex());
    s.audit_append(
        &[
            capture(0, &m0, &r1h, 100, &[b"buy", b"gold"]),
            capture(1, &m1, &r1h, 200, &[b"buy"]),
            capture(2, &m2, &r2h, 300, &[b"sell", b"gold"]),
        ],
        None,
    )
    .await
    .unwrap();
    // the same message again: refused, nothing of the batch stored
    assert!(
        s.audit_append(&[capture(3, &m0, &r1h, 100, &[])], None)
            .await
            .is_err()
    );
    assert_eq!(s.envelope_count().await.unwrap(), 3);
    assert_eq!(s.audit_all().await.unwrap().len(), 3);
    let CaptureStatus::Captured(m1) = s.capture_statuses(&[mid(11)]).await.unwrap()[0].clone()
    else {
        panic!("m1 is captured")
    };
    assert_eq!(m1.log_index, 1);
    assert_eq!(
        s.capture_statuses(&[mid(19)]).await.unwrap(),
        [CaptureStatus::New]
    );

    let both = vec![(1, vec![b"buy".to_vec(), b"gold".to_vec()])];
    let hits = s.search(&both, 0, 1000, 10).await.unwrap();
    assert_eq!(
        hits.iter()
            .map(|h| h.message_id.as_str())
            .collect::<Vec<_>>(),
        [m0.as_str()]
    );
    let gold = vec![(1, vec![b"gold".to_vec()])];
    assert_eq!(s.search(&gold, 0, 1000, 10).await.unwrap().len(), 2);
    assert_eq!(s.search(&gold, 0, 150, 10).await.unwrap().len(), 1);

    let q = FetchQuery {
        rooms: vec![r1h.clone()],
        generation: None,
        from_ms: 0,
        to_ms: 1000,
        any_tokens: vec![(1, vec![b"gold".to_vec(), b"sell".to_vec()])],
        after: None,
        limit: 10,
    };
    let got = s.fetch(&q).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|e| e.message_id.as_str())
            .collect::<Vec<_>>(),
        [m0.as_str()]
    );
    let all = FetchQuery {
        to_ms: 1000,
        after: Some(0),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(s.fetch(&all).await.unwrap().len(), 2);

    // escrow rotation: an envelope re-sealed in place, only from the bytes
    // it replaces; its log index moves to the re-seal entry
    assert_eq!(s.envelopes_under(1).await.unwrap(), 3);
    let reseal = |index, from: &[u8]| AuditIn {
        side: Some(SideEffect::Reseal(Box::new(ResealRow {
            message_id: m2.clone(),
            from_sha256: from.to_vec(),
            envelope: b"env m2 g2".to_vec(),
            envelope_sha256: vec![3; 32],
            generation: 2,
        }))),
        ..audit(index)
    };
    assert!(
        s.audit_append(&[reseal(3, &[9; 32])], None).await.is_err(),
        "not from other bytes"
    );
    s.audit_append(&[reseal(3, &[2; 32])], None).await.unwrap();
    assert!(s.audit_append(&[reseal(4, &[2; 32])], None).await.is_err());
    assert_eq!(
        (
            s.envelopes_under(1).await.unwrap(),
            s.envelopes_under(2).await.unwrap()
        ),
        (2, 1)
    );
    let CaptureStatus::Captured(m2s) = s.capture_statuses(&[mid(12)]).await.unwrap()[0].clone()
    else {
        panic!("m2 is captured")
    };
    assert_eq!((m2s.log_index, m2s.envelope_sha256), (3, vec![3; 32]));
    let g2 = FetchQuery {
        to_ms: 1000,
        generation: Some(2),
        limit: 10,
        ..Default::default()
    };
    let got = s.fetch(&g2).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, m2);
    let row = s.envelope_of(&m2).await.unwrap().unwrap();
    assert_eq!((row.envelope, row.log_index), (b"env m2 g2".to_vec(), 3));
    assert!(s.envelope_of(&mid(19).to_hex()).await.unwrap().is_none());

    // retention: expired outside a hold, then deleted with a tombstone
    let (old, kept) = s.expired(&r1, 250, &[(150, 250)]).await.unwrap();
    assert_eq!((old.len(), kept), (1, 1));
    let del = AuditIn {
        side: Some(SideEffect::DeleteEnvelope {
            message_id: m0.clone(),
        }),
        ..audit(4)
    };
    s.audit_append(&[del], None).await.unwrap();
    assert_eq!(
        s.capture_statuses(&[mid(10)]).await.unwrap(),
        [CaptureStatus::Deleted]
    );
    // several at once, in the order asked, a repeated id answered twice
    let many = s
        .capture_statuses(&[mid(19), mid(10), mid(11), mid(10)])
        .await
        .unwrap();
    assert_eq!(many[0], CaptureStatus::New);
    assert_eq!(many[1], CaptureStatus::Deleted);
    assert!(matches!(&many[2], CaptureStatus::Captured(m) if m.log_index == 1));
    assert_eq!(many[3], CaptureStatus::Deleted);
    assert!(s.capture_statuses(&[]).await.unwrap().is_empty());
    assert!(
        s.capture_statuses(&vec![mid(1); cloister_store::MAX_STATUS_BATCH + 1])
            .await
            .is_err()
    );
    assert_eq!(s.search(&both, 0, 1000, 10).await.unwrap().len(), 0);
    s.vault_scrub().await.unwrap();

    s.vault_init_meta("k", b"1").await.unwrap();
    assert!(s.vault_init_meta("k", b"2").await.is_err());
    s.vault_set_meta("k", b"3").await.unwrap();
    assert_eq!(s.vault_meta("k").await.unwrap().unwrap(), b"3");
}

on_both!(witness, "w.db");
async fn witness(url: &str) {
    let s = WitnessStore::open(url).await.unwrap();
    s.add_log("acme", "vk1").await.unwrap();
    s.add_log("acme", "vk1").await.unwrap();
    assert!(s.add_log("acme", "vk2").await.is_err());
    assert!(s.advance("acme", 0, 5, &[7; 32]).await.unwrap());
    assert!(!s.advance("acme", 0, 6, &[8; 32]).await.unwrap());
    assert_eq!(
        s.log("acme").await.unwrap().unwrap().last,
        Some((5, [7; 32]))
    );
}

on_both!(gateway, "g.db");
/// A gateway's state: a transaction taken once, an event once across
/// transactions (also after it left the inbox), cursors only forward,
/// failures kept, old ids pruned.
async fn gateway(url: &str) {
    let s = GatewayStore::open(url).await.unwrap();
    s.add_conversation("r1", "matrix", "@mat:hs").await.unwrap();
    s.add_conversation("r1", "matrix", "@other:hs")
        .await
        .unwrap();
    let c = s.conversation("r1").await.unwrap().unwrap();
    assert_eq!(
        (c.contact.as_str(), c.remote.as_deref(), c.cursor),
        ("@mat:hs", None, 0)
    );
    s.set_remote("r1", "!room:hs", "alice@acme").await.unwrap();
    assert_eq!(
        s.conversation_of_remote("matrix", "!room:hs")
            .await
            .unwrap()
            .unwrap()
            .opener_user(),
        Some(u("alice@acme"))
    );
    s.advance_cursor("r1", 5).await.unwrap();
    s.advance_cursor("r1", 3).await.unwrap();
    assert_eq!(s.conversation("r1").await.unwrap().unwrap().cursor, 5);

    let ev = |id: &str| (id.to_owned(), format!("body of {id}").into_bytes());
    assert!(
        s.accept_transaction("matrix", "t1", 1_000, &[ev("$a"), ev("$b")])
            .await
            .unwrap()
    );
    assert!(
        !s.accept_transaction("matrix", "t1", 1_001, &[ev("$c")])
            .await
            .unwrap()
    );
    let inbox = s.inbox(10).await.unwrap();
    assert_eq!(
        inbox
            .iter()
            .map(|i| i.remote_id.as_str())
            .collect::<Vec<_>>(),
        ["$a", "$b"]
    );
    assert_eq!(s.inbox_retry(inbox[0].id, "down").await.unwrap(), 1);
    s.inbox_done(inbox[0].id).await.unwrap();
    // $a again in another transaction, after it was posted: not again
    assert!(
        s.accept_transaction("matrix", "t2", 2_000, &[ev("$a"), ev("$d")])
            .await
            .unwrap()
    );
    let left: Vec<String> = s
        .inbox(10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.remote_id)
        .collect();
    assert_eq!(left, ["$b", "$d"]);

    s.record_failure(&Failure {
        direction: "inbound".into(),
        room: Some("r1".into()),
        item: "$x".into(),
        reason: "locked".into(),
        at_ms: 3,
    })
    .await
    .unwrap();
    assert_eq!(s.failures(5).await.unwrap()[0].reason, "locked");
    // pruning forgets old ids only
    assert_eq!(s.prune_transactions(1_500).await.unwrap(), 3);
    assert!(
        s.accept_transaction("matrix", "t1", 3_000, &[])
            .await
            .unwrap()
    );
    assert!(
        !s.accept_transaction("matrix", "t2", 3_000, &[])
            .await
            .unwrap()
    );
}

on_both!(schema_versions, "s.db");
/// A database migrated by a newer binary is refused with a clear error;
/// so is a database that holds another service's tables.
async fn schema_versions(url: &str) {
    drop(SqlServerStore::open(url).await.unwrap());
    // reopening is fine
    drop(SqlServerStore::open(url).await.unwrap());
    let e = SqlKmStore::open(url).await.err().unwrap().to_string();
    assert!(e.contains("holds the server's tables"), "{e}");

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query(
        "INSERT INTO _cloister_server_migrations
           (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', TRUE, $1, 0)",
    )
    .bind(vec![0u8; 48])
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let e = SqlServerStore::open(url).await.err().unwrap().to_string();
    assert!(
        e.contains("schema version 9999, newer than this binary"),
        "{e}"
    );
}

/// A server database made before versioned migrations (no migrations
/// table, capture notices in their old table) opens, and the notices move.
#[tokio::test]
async fn legacy_sqlite_database_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let pool = open_sqlite(&path, 1).await.unwrap();
    sqlx::query("CREATE TABLE capture_policy (tenant TEXT PRIMARY KEY, ts INTEGER NOT NULL, notice BLOB NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO capture_policy (tenant, ts, notice) VALUES ('acme', 5, x'7b7d')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let s = SqlServerStore::open(&sqlite_url(&path)).await.unwrap();
    assert_eq!(
        s.tenant_notices("capture").await.unwrap(),
        vec![b"{}".to_vec()]
    );
}

/// Every blob store: whole or absent, streamed back byte for byte.
async fn blob_suite(b: &dyn BlobStore) {
    use futures_util::TryStreamExt;
    async fn read(b: &dyn BlobStore, id: &str) -> Option<Vec<u8>> {
        let s = b.open(id).await.unwrap()?;
        let parts: Vec<bytes::Bytes> = s.try_collect().await.unwrap();
        Some(parts.concat())
    }
    // 600 KiB in uneven writes crosses chunk boundaries
    let data: Vec<u8> = (0..600 * 1024u32).map(|k| (k % 251) as u8).collect();
    let mut w = b.create("b1").await.unwrap();
    for part in data.chunks(70_001) {
        w.write(part).await.unwrap();
    }
    // not visible before it is finished
    assert!(b.open("b1").await.unwrap().is_none());
    assert_eq!(w.finish().await.unwrap(), data.len() as u64);
    assert_eq!(read(b, "b1").await.unwrap(), data);
    // an aborted upload leaves nothing
    let mut w = b.create("b2").await.unwrap();
    w.write(b"half").await.unwrap();
    w.abort().await;
    assert!(read(b, "b2").await.is_none());
    // empty blobs exist
    let w = b.create("b3").await.unwrap();
    assert_eq!(w.finish().await.unwrap(), 0);
    assert_eq!(read(b, "b3").await.unwrap(), b"");
    b.remove("b1").await.unwrap();
    b.remove("b1").await.unwrap();
    assert!(read(b, "b1").await.is_none());
}

#[tokio::test]
async fn blobs_in_files() {
    let d = tempfile::tempdir().unwrap();
    blob_suite(&FsBlobStore::open(d.path()).unwrap()).await;
}

on_both!(blobs_in_database, "s.db");
async fn blobs_in_database(url: &str) {
    let s = SqlServerStore::open(url).await.unwrap();
    let b = SqlBlobStore::of(&s).await.unwrap();
    blob_suite(&b).await;
    // a second upload under a finished id is refused
    let w = b.create("b3").await.unwrap();
    assert!(matches!(w.finish().await, Err(StoreError::Conflict(_))));
}

/// A database URL's password never shows in an error.
#[tokio::test]
async fn a_database_password_never_shows_in_an_error() {
    // nothing listens on port 1: the connection is refused
    let url = "postgres://cloister:s3cret-pw@127.0.0.1:1/db";
    for e in [
        SqlServerStore::open(url).await.err().unwrap().to_string(),
        Lease::acquire(url, "k", std::time::Duration::from_millis(10), || {})
            .await
            .err()
            .unwrap()
            .to_string(),
    ] {
        assert!(!e.contains("s3cret-pw"), "{e}");
        assert!(e.contains("cloister:***@127.0.0.1:1"), "{e}");
    }
    let e = SqlVaultStore::open("mysql://u:s3cret-pw@h/db")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(!e.contains("s3cret-pw"), "{e}");
}
