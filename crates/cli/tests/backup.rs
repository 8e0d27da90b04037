//! Backup and restore: an online copy of the KM's, the server's and the
//! vault's data directories; after wipe and restore the history reads
//! again, and what was lost is named, never silently forked over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_cli::Stack;
use cloister_cli::backup;
use cloister_client::Client;
use cloister_proto::room::RoomSettings;
use common::procs::{cmd, fails, ok};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_wipe_restore_reads_the_history_and_names_what_was_lost() {
    let w = World::new().await;
    let homes = tempfile::tempdir().unwrap();
    let alice = w.disk_user("alice", &homes.path().join("alice")).await;
    let bob = w.disk_user("bob", &homes.path().join("bob")).await;
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    for i in 0..5 {
        alice.send_text(&room, &format!("kept {i}")).await.unwrap();
    }
    alice.audit_checkpoint().await.unwrap();

    // Online: the services keep running while the copy is made.
    let backups = tempfile::tempdir().unwrap();
    let base = w.stack.dir.clone();
    let mut logs = Vec::new();
    for svc in ["km", "server", "vault"] {
        let m = backup::backup(&base.join(svc), &backups.path().join(svc))
            .await
            .unwrap();
        assert!(m.files.iter().any(|f| f.path.ends_with(".db")), "{svc}");
        logs.push((svc, m.logs.clone()));
    }
    let km_size = logs[0]
        .1
        .iter()
        .find(|l| l.database == "km.db")
        .unwrap()
        .size;
    assert!(km_size > 0);
    // no secret in the clear in a backup's manifest, and the sealed TMK is there
    let manifest = std::fs::read_to_string(backups.path().join("km/backup.json")).unwrap();
    assert!(manifest.contains("tmk.sealed"), "{manifest}");

    // After the backup: more messages and a newer pinned checkpoint.
    for i in 0..3 {
        alice.send_text(&room, &format!("lost {i}")).await.unwrap();
    }
    // ...and audited changes: a user added, a room made
    w.admin
        .admin_add_user(&World::uid("carol"), false)
        .await
        .unwrap();
    alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    let (seen, _) = alice.audit_checkpoint().await.unwrap();
    assert!(seen.size > km_size);

    // Wipe, restore, start again on the same ports.
    let World {
        dir,
        stack,
        admin,
        http,
    } = w;
    let (km_addr, server_addr) = (stack.km_addr, stack.server_addr);
    stack.stop().await;
    drop((alice, bob, admin));
    for svc in ["km", "server", "vault"] {
        std::fs::remove_dir_all(base.join(svc)).unwrap();
        let m = backup::restore(&backups.path().join(svc), &base.join(svc)).unwrap();
        let text = backup::describe(&m);
        if svc == "km" {
            assert!(
                text.contains(&format!("ends at {km_size} entries")),
                "{text}"
            );
        }
    }
    let mut o = opts();
    o.km_addr = km_addr;
    o.server_addr = server_addr;
    let stack = Stack::start(dir.path(), o).await.unwrap();

    // The history up to the backup reads again, verified, from disk devices.
    let bob = Client::open(http.clone(), &homes.path().join("bob"), b"pw").unwrap();
    bob.clear_key_cache().unwrap();
    let got = bob.read(&room, 100, None).await.unwrap();
    let texts: Vec<String> = got
        .iter()
        .map(|r| match &r.as_ref().unwrap().content {
            cloister_proto::server::Content::Text { text } => text.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(texts, ["kept 0", "kept 1", "kept 2", "kept 3", "kept 4"]);

    // The KM recorded the restore; alice, who saw a later checkpoint, is
    // told the log was rolled back, with both sizes.
    let kinds = stack
        .km
        .audit()
        .store()
        .audit_list(&cloister_store::AuditQuery {
            kind: Some("log_restored".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(kinds.len(), 1, "the restore is the log's next entry");
    assert_eq!(kinds[0].index, km_size);
    let alice = Client::open(http.clone(), &homes.path().join("alice"), b"pw").unwrap();
    let e = alice.audit_checkpoint().await.unwrap_err().to_string();
    assert!(
        e.contains(&format!("this device saw {}", seen.size)) || e.contains("forked"),
        "{e}"
    );
    assert!(!e.is_empty());
    // the restored directory keeps the marker under another name
    assert!(!base.join("km").join(backup::RESTORED).exists());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_or_a_busy_directory_restores_nothing() {
    let w = World::new().await;
    let backups = tempfile::tempdir().unwrap();
    let out = backups.path().join("srv");
    // the CLI, as an operator runs it
    let done = ok(cmd(None)
        .args(["admin", "backup", "--data-dir"])
        .arg(w.stack.dir.join("server"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    assert!(done.contains("backed up"), "{done}");
    // a backup never overwrites
    let e = fails(
        cmd(None)
            .args(["admin", "backup", "--data-dir"])
            .arg(w.stack.dir.join("server"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert!(e.contains("already exists"), "{e}");
    // into a directory in use: refused
    let e = fails(
        cmd(None)
            .args(["admin", "restore", "--from"])
            .arg(&out)
            .arg("--data-dir")
            .arg(w.stack.dir.join("server"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("not empty"), "{e}");
    // a damaged file: refused, nothing written
    let token = out.join("operator.token");
    let mut b = std::fs::read(&token).unwrap();
    b[0] ^= 1;
    std::fs::write(&token, b).unwrap();
    let target = backups.path().join("restored");
    let e = fails(
        cmd(None)
            .args(["admin", "restore", "--from"])
            .arg(&out)
            .arg("--data-dir")
            .arg(&target)
            .output()
            .unwrap(),
    );
    assert!(e.contains("operator.token") && e.contains("damaged"), "{e}");
    assert!(!target.exists(), "nothing restored");
    // a manifest that points outside the backup: refused
    let mpath = out.join(backup::MANIFEST);
    let m = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(&mpath, m.replacen("\"server.db\"", "\"../server.db\"", 1)).unwrap();
    let e = fails(
        cmd(None)
            .args(["admin", "restore", "--from"])
            .arg(&out)
            .arg("--data-dir")
            .arg(&target)
            .output()
            .unwrap(),
    );
    assert!(e.contains("outside the backup"), "{e}");
}
