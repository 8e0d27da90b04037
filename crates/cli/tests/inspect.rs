//! Malware scanning: `cloister inspect` (a device with the inspector role)
//! scans every shared file with a real clamd (Debian's, started here with a
//! signature database that knows the EICAR test file) and posts signed
//! verdicts; members' devices refuse to open an infected file and say why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_cli::inspect::{EICAR, Inspector, LocalClamd};
use cloister_proto::km::Role;
use cloister_proto::room::RoomSettings;
use common::{World, expect_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infected_files_are_refused_and_the_scanner_is_on_record() {
    assert!(
        LocalClamd::available(),
        "clamd is not installed: run scripts/tools (Debian clamav-daemon)"
    );
    let w = World::new().await;
    let clamd = LocalClamd::start(w.dir.path()).await.unwrap();
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let room = alice
        .create_room(
            RoomSettings {
                name: "desk".into(),
                ..Default::default()
            },
            &[bob.user().clone()],
        )
        .await
        .unwrap();
    let bad = w.dir.path().join("invoice.pdf");
    std::fs::write(&bad, EICAR).unwrap();
    let good = w.dir.path().join("notes.txt");
    std::fs::write(&good, b"quarterly notes").unwrap();
    alice.send_file(&room, &bad).await.unwrap();
    alice.send_file(&room, &good).await.unwrap();

    let scanner = w.user_with("inspect", &[Role::Inspector]).await;
    let mut insp = Inspector::new(scanner, clamd.clamd.clone());
    let r = insp.pass().await.unwrap();
    assert_eq!((r.scanned, r.infected.len()), (2, 1), "{r:?}");
    assert!(r.infected[0].2.contains("Cloister.Test.EICAR"));
    // a second pass scans nothing again
    assert_eq!(insp.pass().await.unwrap().scanned, 0);

    let msgs: Vec<_> = bob
        .read(&room, 10, None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.unwrap())
        .collect();
    let out = w.dir.path().join("opened");
    let e = bob.open_file(&msgs[0], &out).await.unwrap_err();
    assert_eq!(e.code(), Some("infected"), "{e}");
    assert!(
        e.to_string().contains("invoice.pdf") && e.to_string().contains("EICAR"),
        "{e}"
    );
    assert!(!out.exists(), "nothing of an infected file is written");
    assert_eq!(bob.open_file(&msgs[1], &out).await.unwrap(), 15);
    assert_eq!(std::fs::read(&out).unwrap(), b"quarterly notes");

    // every key release to the scanner is on record, marked as inspection
    let who = alice.who_has_keys(&room).await.unwrap();
    assert!(
        who.iter()
            .any(|k| k.inspection && k.user.as_str() == "inspect@acme"),
        "{who:?}"
    );

    // only the inspector posts verdicts: a patched member's device is refused
    let mallory = w.raw("mallory").await;
    let v = cloister_proto::server::Verdict {
        tenant: "acme".parse().unwrap(),
        room,
        message_id: msgs[1].id,
        sha256: cloister_proto::b64::Fixed([0; 32]),
        infected: true,
        signature: "made up".into(),
        engine: "none".into(),
        ts: cloister_proto::now_millis(),
    };
    let signed =
        cloister_crypto::signed::sign_verdict(&mallory.keys, &mallory.signed_cert, &v).unwrap();
    let r = w
        .http
        .post(format!("{}/v1/rooms/{room}/verdicts", w.stack.server_url))
        .bearer_auth(mallory.token().await)
        .json(&signed)
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "not_entitled").await;
    assert_eq!(
        bob.open_file(&msgs[1], &w.dir.path().join("again"))
            .await
            .unwrap(),
        15
    );
}
