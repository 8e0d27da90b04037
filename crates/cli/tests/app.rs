//! The app in a real browser (Debian's Chromium over ChromeDriver, which
//! `scripts/tools` installs): two users in two browser sessions, each with
//! their own app process state, against the real KM, server and vault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::webdriver::{Browser, chromedriver};
use common::*;
use std::path::{Path, PathBuf};

/// An app for a device home, started in this process.
async fn app(home: &Path) -> cloister_app::Running {
    cloister_app::start(cloister_app::AppConfig {
        home: home.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        http: cloister_tls::http_client(),
    })
    .await
    .unwrap()
}

async fn unlock(b: &Browser, launch: &str) {
    b.goto(launch).await;
    b.find("#passphrase").await.send_keys("pw").await;
    b.find("form[action='/unlock'] button").await.click().await;
    b.find("nav.sidebar").await;
}

/// axe-core's serious and critical findings on the page: none allowed.
async fn axe(b: &Browser, page: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/tools/axe/node_modules/axe-core/axe.min.js");
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "axe-core is not installed at {} ({e}): run scripts/tools",
            path.display()
        )
    });
    b.execute(&format!("{src}\n;return true")).await;
    let found = b
        .execute(
            "return axe.run(document, {resultTypes: ['violations']}).then(r => r.violations \
               .filter(v => v.impact === 'serious' || v.impact === 'critical') \
               .map(v => v.id + ': ' + v.help + ' at ' + v.nodes.map(n => n.target.join(' ')).join(', ')))",
        )
        .await;
    assert_eq!(
        found,
        serde_json::json!([]),
        "accessibility problems on the {page} page"
    );
}

fn screenshots() -> Option<PathBuf> {
    std::env::var_os("CLOISTER_SCREENSHOTS").map(PathBuf::from)
}

async fn shot(b: &Browser, name: &str) {
    if let Some(dir) = screenshots() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), b.screenshot().await).unwrap();
    }
}

/// A 2-of-2 escrow key (capture needs one).
async fn escrow(w: &World) {
    let mut names = Vec::new();
    for n in ["cust1", "cust2"] {
        let c = w.user_with(n, &[cloister_proto::km::Role::Custodian]).await;
        names.push(c.user().clone());
    }
    w.admin.admin_escrow_init(&names, 2).await.unwrap();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_exchange_messages_live_in_two_browsers() {
    let w = World::new().await;
    let (ha, hb) = (
        w.dir.path().join("home-alice"),
        w.dir.path().join("home-bob"),
    );
    drop(w.disk_user("alice", &ha).await);
    drop(w.disk_user("bob", &hb).await);
    escrow(&w).await;
    w.register_vault(true).await;
    let (aa, ab) = (app(&ha).await, app(&hb).await);
    let d = chromedriver();
    let (pa, pb) = (w.dir.path().join("chrome-a"), w.dir.path().join("chrome-b"));
    let (ba, bb) = (
        Browser::start(&d, &pa, 1280).await,
        Browser::start(&d, &pb, 420).await,
    );
    ba.goto(&aa.launch_url).await;
    ba.find("#passphrase").await;
    axe(&ba, "unlock").await;
    shot(&ba, "unlock").await;
    ba.find("#passphrase").await.send_keys("pw").await;
    ba.find("form[action='/unlock'] button").await.click().await;
    ba.find("nav.sidebar").await;
    unlock(&bb, &ab.launch_url).await;

    // alice starts an IM with bob from the sidebar
    ba.find("#im-user").await.send_keys("bob@acme").await;
    ba.find("form[action='/im'] button").await.click().await;
    ba.find("#compose").await;
    let url = reqwest::Url::parse(&ba.url().await).unwrap();
    let path = url.path().to_owned();
    assert!(path.starts_with("/r/"), "{url}");
    bb.goto(&format!("{}{}", ab.url.trim_end_matches('/'), path))
        .await;
    bb.find("#compose").await;

    // the first message, by the keyboard: typed, Enter
    let text = ba.find("#text").await;
    text.send_keys("Harbourview 2033s: sell 40mm at 101.5\u{E007}")
        .await;
    bb.until(
        "return [...document.querySelectorAll('#messages .text')].some(e => e.textContent.includes('101.5'))",
        "bob to see alice's message",
    )
    .await;
    ba.until(
        "return [...document.querySelectorAll('#messages .mine .text')].some(e => e.textContent.includes('101.5'))",
        "alice to see her own message",
    )
    .await;
    bb.find("#text")
        .await
        .send_keys("agreed, booking it\u{E007}")
        .await;
    ba.until(
        "return [...document.querySelectorAll('#messages .text')].some(e => e.textContent.includes('booking'))",
        "alice to see bob's answer",
    )
    .await;
    shot(&ba, "room").await;
    shot(&bb, "room-narrow").await;
    axe(&ba, "room").await;
    axe(&bb, "narrow room").await;

    // a message that is markup stays text on both pages: no element, no
    // script from what someone typed
    ba.find("#text")
        .await
        .send_keys("<img src=x onerror=\"window.__pwned=1\"><b>bold</b>\u{E007}")
        .await;
    bb.until(
        "return [...document.querySelectorAll('#messages .text')].some(e => e.textContent.includes('<img src=x'))",
        "bob to see the markup as text",
    )
    .await;
    for b in [&ba, &bb] {
        let injected = b
            .execute("return [document.querySelectorAll('#messages img, #messages b').length, window.__pwned === undefined]")
            .await;
        assert_eq!(injected, serde_json::json!([0, true]));
    }

    // by keyboard alone: the skip link first, then into the conversation,
    // Tab by Tab to the message box, Enter sends
    ba.goto(&format!("{}{}", aa.url.trim_end_matches('/'), path))
        .await;
    ba.find("#compose").await;
    ba.keys("\u{E004}").await;
    let focused = ba.execute("return document.activeElement.className").await;
    assert_eq!(
        focused.as_str(),
        Some("skip"),
        "the first Tab reaches the skip link"
    );
    ba.keys("\u{E007}").await;
    let mut reached = false;
    for _ in 0..12 {
        ba.keys("\u{E004}").await;
        if ba
            .execute("return document.activeElement.id")
            .await
            .as_str()
            == Some("text")
        {
            reached = true;
            break;
        }
    }
    assert!(reached, "the message box is a few Tabs after the skip link");
    ba.keys("typed without a mouse\u{E007}").await;
    bb.until(
        "return document.getElementById('messages').textContent.includes('typed without a mouse')",
        "bob to see the keyboard-only message",
    )
    .await;
    let text = ba.find("#text").await;

    // time from Enter in one browser to the message on the other's page
    ba.execute(
        "window.__sent = {}; document.getElementById('text').addEventListener('keydown', e => { \
           if (e.key === 'Enter') window.__sent[e.target.value] = Date.now(); }, true); return true;",
    )
    .await;
    bb.execute(
        "window.__got = {}; new MutationObserver(ms => { for (const m of ms) for (const n of m.addedNodes) { \
           const t = n.querySelector && n.querySelector('.text'); if (t) window.__got[t.textContent] = Date.now(); } \
         }).observe(document.getElementById('messages'), {childList: true}); return true;",
    )
    .await;
    let n = 200;
    for i in 0..n {
        text.send_keys(&format!("lat-{i}\u{E007}")).await;
        // one at a time: the next Enter after this one is on bob's page
        bb.until(
            &format!("return window.__got['lat-{i}'] !== undefined"),
            "bob to see the message",
        )
        .await;
    }
    let sent = ba.execute("return window.__sent").await;
    let got = bb.execute("return window.__got").await;
    let mut lat: Vec<f64> = (0..n)
        .map(|i| {
            let k = format!("lat-{i}");
            got[&k].as_f64().unwrap() - sent[&k].as_f64().unwrap()
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "app Enter-to-render over {n} messages: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );

    // Lock: the app forgets the opened keystore; pages ask again
    ba.find("form[action='/lock'] button").await.click().await;
    ba.find("#passphrase").await;
    ba.goto(&format!("{}{}", aa.url.trim_end_matches('/'), path))
        .await;
    ba.find("#passphrase").await;
    assert!(!ba.source().await.contains("Harbourview"));

    // nothing of the conversation is in the browser's storage
    let stored = ba
        .execute("return [localStorage.length, sessionStorage.length, document.cookie]")
        .await;
    assert_eq!(stored, serde_json::json!([0, 0, ""]));
    ba.close().await;
    bb.close().await;
    drop(d);
    for profile in [&pa, &pb] {
        for (path, data) in files_under(profile) {
            assert!(
                !contains(&data, b"Harbourview") && !contains(&data, b"lat-17"),
                "{} keeps message content",
                path.display()
            );
        }
    }
}

/// Only the browser that opened the launch link, on the loopback host,
/// from the app's own pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_answers_only_its_own_browser() {
    let w = World::new().await;
    let home = w.dir.path().join("home-alice");
    drop(w.disk_user("alice", &home).await);
    let a = app(&home).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // no session: nothing but a refusal
    let r = http.get(&a.url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // a wrong launch secret spends the link
    let wrong = a.launch_url.rsplit_once('/').unwrap().0.to_owned() + "/00";
    assert_eq!(http.get(&wrong).send().await.unwrap().status(), 403);
    assert_eq!(http.get(&a.launch_url).send().await.unwrap().status(), 403);
    // a fresh app: the right link once, then never again
    let a = app(&home).await;
    let r = http.get(&a.launch_url).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.to_lowercase().contains("expires"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(http.get(&a.launch_url).send().await.unwrap().status(), 403);
    let r = http
        .get(&a.url)
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for h in [
        "content-security-policy",
        "cache-control",
        "x-frame-options",
    ] {
        assert!(r.headers().contains_key(h), "{h}");
    }
    assert_eq!(r.headers()["cache-control"], "no-store");
    // DNS rebinding: another host name for the same address
    let port = reqwest::Url::parse(&a.url).unwrap().port().unwrap();
    let r = http
        .get(format!("http://localhost:{port}/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // a change from another origin (or none) is refused, before any work
    for origin in [None, Some("http://evil.example")] {
        let mut req = http
            .post(format!("{}unlock", a.url))
            .header("cookie", &session)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("passphrase=pw");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        assert_eq!(req.send().await.unwrap().status(), 403);
    }
    // the wrong passphrase: said in words, still locked
    let r = http
        .post(format!("{}unlock", a.url))
        .header("cookie", &session)
        .header("origin", a.url.trim_end_matches('/'))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("passphrase=not-it")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body = r.text().await.unwrap();
    assert!(body.contains("Not unlocked"), "{body}");
    assert!(!body.contains("not-it"), "the passphrase is never echoed");
    // a non-loopback address is refused outright
    let e = cloister_app::start(cloister_app::AppConfig {
        home: home.clone(),
        listen: "0.0.0.0:0".parse().unwrap(),
        http: cloister_tls::http_client(),
    })
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("loopback"), "{e}");
}

/// A room of three: a file with its hash checked in the page, a removed
/// member's page that stops showing new messages, a barrier's refusal in
/// words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_three_files_removal_and_a_barrier() {
    let w = World::new().await;
    let homes: Vec<PathBuf> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| w.dir.path().join(format!("home-{n}")))
        .collect();
    for (n, h) in ["alice", "bob", "carol"].iter().zip(&homes) {
        drop(w.disk_user(n, h).await);
    }
    let rita = w.user("rita").await;
    escrow(&w).await;
    w.register_vault(true).await;
    // research and trading are walled off from each other
    w.admin
        .admin_group_set("research", &[rita.user().clone()], &[])
        .await
        .unwrap();
    w.admin
        .admin_group_set("trading", &[World::uid("alice")], &[])
        .await
        .unwrap();
    w.admin
        .barrier_add("research", "trading", "Chinese wall: research / trading")
        .await
        .unwrap();
    let d = chromedriver();
    let mut apps = Vec::new();
    let mut tabs = Vec::new();
    for (i, h) in homes.iter().enumerate() {
        let a = app(h).await;
        let b = Browser::start(&d, &w.dir.path().join(format!("chrome-{i}")), 1280).await;
        unlock(&b, &a.launch_url).await;
        apps.push(a);
        tabs.push(b);
    }
    let (ba, bb, bc) = (&tabs[0], &tabs[1], &tabs[2]);

    // alice creates the room from the sidebar
    ba.find("#room-name").await.send_keys("Rates desk").await;
    ba.find("#room-members")
        .await
        .send_keys("bob@acme, carol@acme")
        .await;
    ba.find("form[action='/rooms'] button").await.click().await;
    ba.find("#compose").await;
    let path = reqwest::Url::parse(&ba.url().await)
        .unwrap()
        .path()
        .to_owned();
    for (b, a) in [(bb, &apps[1]), (bc, &apps[2])] {
        b.goto(&format!("{}{}", a.url.trim_end_matches('/'), path))
            .await;
        b.find("#compose").await;
    }

    // a file: handed to the app, encrypted, sent; bob's page shows it and
    // its download matches the hash its sender signed
    let f = w.dir.path().join("term-sheet.txt");
    std::fs::write(&f, b"TERMSHEET Harbourview 40mm 101.5").unwrap();
    ba.find("#file").await.send_keys(f.to_str().unwrap()).await;
    bb.until(
        "return !!document.querySelector('#messages .file a')",
        "bob to see the file",
    )
    .await;
    let check = bb
        .execute(
            "const a = document.querySelector('#messages .file a'); \
             const shown = a.parentElement.querySelector('.hash code').textContent; \
             return fetch(a.href).then(r => r.arrayBuffer()).then(b => crypto.subtle.digest('SHA-256', b)) \
               .then(d => [shown, [...new Uint8Array(d)].map(x => x.toString(16).padStart(2, '0')).join('')]);",
        )
        .await;
    assert_eq!(
        check[0], check[1],
        "the download is the file its sender signed"
    );
    assert_eq!(
        check[0].as_str().unwrap(),
        hex::encode(cloister_crypto::sha256(b"TERMSHEET Harbourview 40mm 101.5"))
    );
    shot(bb, "file").await;

    // alice removes carol; carol's page shows nothing said after that
    ba.goto(&format!(
        "{}{}/people",
        apps[0].url.trim_end_matches('/'),
        path
    ))
    .await;
    shot(ba, "people").await;
    axe(ba, "people and keys").await;
    ba.find("button[aria-label='Remove carol@acme']")
        .await
        .click()
        .await;
    ba.until(
        "return !document.querySelector(\"button[aria-label='Remove carol@acme']\")",
        "carol to be gone from the members",
    )
    .await;
    ba.goto(&format!("{}{}", apps[0].url.trim_end_matches('/'), path))
        .await;
    ba.find("#text")
        .await
        .send_keys("AFTER carol left\u{E007}")
        .await;
    bb.until(
        "return document.getElementById('messages').textContent.includes('AFTER carol')",
        "bob to see the message",
    )
    .await;
    // the log shows inline: the removal and the new key epoch it began
    ba.until(
        "return [...document.querySelectorAll('#messages .event')].some(e => \
           e.textContent.includes('removed carol@acme') && e.textContent.includes('new key epoch'))",
        "the removal shown in the history",
    )
    .await;
    bb.until(
        "return [...document.querySelectorAll('#messages .event')].some(e => e.textContent.includes('removed carol@acme'))",
        "bob to see the removal live",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let carol_sees = bc
        .execute("return document.getElementById('messages').textContent.includes('AFTER carol')")
        .await;
    assert_eq!(carol_sees, serde_json::Value::Bool(false));

    // the barrier: alice (trading) cannot add rita (research), said in words
    ba.goto(&format!(
        "{}{}/people",
        apps[0].url.trim_end_matches('/'),
        path
    ))
    .await;
    ba.find("#add-user").await.send_keys("rita@acme").await;
    ba.find("form[action$='/people/add'] button")
        .await
        .click()
        .await;
    ba.until(
        "return !!document.querySelector('p.error[role=alert]')",
        "the refusal",
    )
    .await;
    let said = ba
        .execute("return document.querySelector('p.error').textContent")
        .await;
    let said = said.as_str().unwrap();
    assert!(said.to_lowercase().contains("barrier"), "{said}");
    shot(ba, "barrier").await;
    axe(ba, "refusal").await;
    ba.goto(&format!(
        "{}/directory?q=bob",
        apps[0].url.trim_end_matches('/')
    ))
    .await;
    ba.until(
        "return document.getElementById('people').textContent.includes('bob@acme')",
        "bob in the directory",
    )
    .await;
    axe(ba, "directory").await;
    shot(ba, "directory").await;
    for b in tabs {
        b.close().await;
    }
}

/// The admin console adds a user (the one-time code enrols a real device)
/// and shows the audit log with each row proven; the compliance console
/// searches, opens a case, a custodian approves it in their own app, and
/// the officer exports it with a progress bar and verifies the export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_and_compliance_consoles() {
    use cloister_proto::km::Role::{Admin, Compliance, Custodian};
    let w = World::new().await;
    let dir = |n: &str| w.dir.path().join(format!("home-{n}"));
    drop(w.disk_user_with("ada", &[Admin], &dir("ada")).await);
    drop(
        w.disk_user_with("olivia", &[Compliance], &dir("olivia"))
            .await,
    );
    drop(w.disk_user_with("cust1", &[Custodian], &dir("cust1")).await);
    let cust2 = w.user_with("cust2", &[Custodian]).await;
    w.admin
        .admin_escrow_init(&[World::uid("cust1"), cust2.user().clone()], 2)
        .await
        .unwrap();
    w.register_vault(true).await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    for c in [&alice, &bob] {
        c.use_registered_vault().await.unwrap().unwrap();
    }
    let room = alice
        .create_room(Default::default(), &[bob.user().clone()])
        .await
        .unwrap();
    alice
        .send_text(&room, "Harbourview 2033s: sell 40mm at 101.5")
        .await
        .unwrap();
    bob.send_text(&room, "agreed").await.unwrap();

    let d = chromedriver();
    let mut apps = Vec::new();
    let mut tabs = Vec::new();
    for (i, n) in ["ada", "olivia", "cust1"].iter().enumerate() {
        let a = app(&dir(n)).await;
        let b = Browser::start(&d, &w.dir.path().join(format!("chrome-{i}")), 1280).await;
        unlock(&b, &a.launch_url).await;
        apps.push(a);
        tabs.push(b);
    }
    let (admin, officer, custodian) = (&tabs[0], &tabs[1], &tabs[2]);
    let at = |i: usize, path: &str| format!("{}{path}", apps[i].url.trim_end_matches('/'));

    // the admin adds a user; the code shown once enrols a real device
    admin.goto(&at(0, "/admin")).await;
    admin.find("#new-user").await.send_keys("newbie@acme").await;
    admin
        .find("form[action='/admin/users'] button")
        .await
        .click()
        .await;
    admin.find(".code-once output").await;
    let code = admin
        .execute("return document.querySelector('.code-once output').textContent")
        .await;
    let code = code.as_str().unwrap().to_owned();
    shot(admin, "admin-code").await;
    axe(admin, "one-time code").await;
    let newbie = cloister_client::Client::enrol(
        w.http.clone(),
        &w.stack.server_url,
        &w.stack.km_url,
        &World::uid("newbie"),
        &code,
        cloister_client::Storage::Memory,
    )
    .await
    .unwrap();
    assert_eq!(newbie.user().as_str(), "newbie@acme");
    admin.goto(&at(0, "/admin")).await;
    admin
        .until(
            "return document.querySelector('table.grid').textContent.includes('newbie@acme')",
            "the new user in the table",
        )
        .await;
    shot(admin, "admin-users").await;
    axe(admin, "users").await;
    admin.goto(&at(0, "/admin/controls")).await;
    admin.find("#group-name").await;
    axe(admin, "controls").await;
    shot(admin, "admin-controls").await;
    admin.goto(&at(0, "/admin/firms")).await;
    admin.find("#scim-label").await;
    axe(admin, "SCIM and firms").await;
    shot(admin, "admin-firms").await;
    // the audit log: every row proven on the admin's device
    admin.goto(&at(0, "/admin/audit?kind=user_added")).await;
    let rows = admin
        .execute(
            "const cells = [...document.querySelectorAll('table.grid tbody tr td:last-child')]; \
             return [cells.length, cells.every(c => c.classList.contains('ok'))]",
        )
        .await;
    assert!(rows[0].as_u64().unwrap() >= 5, "{rows}");
    assert_eq!(rows[1], serde_json::Value::Bool(true), "every row proven");
    assert!(
        admin
            .source()
            .await
            .contains("consistent with every checkpoint this device saw")
    );
    shot(admin, "admin-audit").await;
    axe(admin, "audit log").await;
    // a log this device cannot accept (here: a witness it requires never
    // cosigned it) is an alert on the page, and no row counts as proven
    let stranger = cloister_crypto::KmSigner::generate().unwrap();
    let policy = dir("ada").join("witnesses.json");
    std::fs::write(
        &policy,
        serde_json::to_vec(&serde_json::json!({
            "witnesses": [cloister_log::witness::witness_key("witness.example", &stranger.public())],
            "quorum": 1,
        }))
        .unwrap(),
    )
    .unwrap();
    admin.goto(&at(0, "/admin/audit")).await;
    admin
        .until(
            "return [...document.querySelectorAll('p.alert')].some(p => p.textContent.startsWith('ALERT') && p.textContent.includes('another history'))",
            "the alert",
        )
        .await;
    let proven = admin
        .execute("return document.querySelectorAll('table.grid td.ok').length")
        .await;
    assert_eq!(proven.as_u64(), Some(0));
    shot(admin, "admin-audit-alert").await;
    std::fs::remove_file(&policy).unwrap();

    // the officer searches: tokens only leave the device
    officer.goto(&at(1, "/compliance")).await;
    officer
        .find("#s-words")
        .await
        .send_keys("harbourview")
        .await;
    officer
        .find("form[action='/compliance'] button")
        .await
        .click()
        .await;
    officer
        .until(
            "return !!document.querySelector('#hits') && document.querySelectorAll('#hits tbody tr').length === 1",
            "one hit",
        )
        .await;
    shot(officer, "compliance-search").await;
    axe(officer, "search").await;
    // opens a case on alice's conversations
    officer.goto(&at(1, "/compliance/cases")).await;
    officer.find("#c-name").await.send_keys("inq-1").await;
    officer
        .find("#c-people")
        .await
        .send_keys("alice@acme")
        .await;
    officer
        .find("form[action='/compliance/cases'] button")
        .await
        .click()
        .await;
    officer
        .until(
            "return document.getElementById('cases').textContent.includes('inq-1')",
            "the case",
        )
        .await;
    // a custodian approves in their own app, the other with their SDK
    custodian.goto(&at(2, "/compliance/cases")).await;
    custodian
        .find("button[aria-label='Approve case inq-1']")
        .await
        .click()
        .await;
    custodian
        .until(
            "return document.body.textContent.includes('approved')",
            "the approval",
        )
        .await;
    cust2.case_approve("inq-1").await.unwrap();
    // the export runs in the officer's app; the page follows it
    officer.goto(&at(1, "/compliance/cases")).await;
    officer
        .find("button[aria-label='Export case inq-1']")
        .await
        .click()
        .await;
    officer
        .until(
            "return /Exported 2 messages|Export failed/.test(document.getElementById('cases').textContent)",
            "the export",
        )
        .await;
    let cases = officer
        .execute("return document.getElementById('cases').textContent")
        .await;
    assert!(
        cases.as_str().unwrap().contains("Exported 2 messages"),
        "{cases}"
    );
    officer
        .find("button[aria-label='Verify export of inq-1']")
        .await
        .click()
        .await;
    officer
        .until(
            "return document.body.textContent.includes('Verified: 2 messages')",
            "the verification",
        )
        .await;
    shot(officer, "compliance-export").await;
    axe(officer, "export verified").await;
    officer.goto(&at(1, "/compliance/cases")).await;
    officer.find("#cases").await;
    axe(officer, "cases").await;
    shot(officer, "compliance-cases").await;
    officer.goto(&at(1, "/compliance/retention")).await;
    officer.find("#r-days").await;
    axe(officer, "retention").await;
    // the officer widens the scope: a new version, approvals again
    officer.goto(&at(1, "/compliance/cases")).await;
    officer.find("#cases").await;
    officer
        .execute(
            "document.querySelectorAll('#cases details').forEach(d => d.open = true); return true",
        )
        .await;
    officer
        .find("#sp-inq-1")
        .await
        .send_keys(", bob@acme")
        .await;
    officer
        .find("form[action='/compliance/cases/inq-1/scope'] button")
        .await
        .click()
        .await;
    officer
        .until(
            "const t = document.getElementById('cases'); return !!t && t.textContent.includes('inq-1 v2')",
            "version 2 of the case",
        )
        .await;
    // a data-loss policy set in the admin console stops a message on the
    // sending device, and the sender reads why
    admin.goto(&at(0, "/admin/controls")).await;
    admin.find("#dlp-id").await.send_keys("no-project-x").await;
    admin.find("#dlp-name").await.send_keys("Project X").await;
    admin
        .execute("document.getElementById('dlp-action').value = 'block'; return true")
        .await;
    admin.find("#dlp-words").await.send_keys("projectx").await;
    admin
        .find("#dlp-message")
        .await
        .send_keys("Project X is confidential")
        .await;
    admin
        .find("form[action='/admin/dlp'] button")
        .await
        .click()
        .await;
    admin
        .until(
            "const t = document.getElementById('dlp'); return !!t && t.textContent.includes('Project X')",
            "the policy in the table",
        )
        .await;
    axe(admin, "controls with a policy").await;
    admin.find("#im-user").await.send_keys("bob@acme").await;
    admin.find("form[action='/im'] button").await.click().await;
    admin
        .find("#text")
        .await
        .send_keys("the projectx numbers\u{E007}")
        .await;
    admin
        .until(
            "const e = document.getElementById('compose-error'); return !e.hidden && e.textContent.includes('Project X')",
            "the policy's refusal",
        )
        .await;
    for b in tabs {
        b.close().await;
    }
}

/// A room with 10,000 messages: the first render (the newest page,
/// verified and decrypted by the app) and paging older history on scroll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_ten_thousand_messages_renders_its_newest_page_first() {
    // the history is written at load-test speed: the server's per-device
    // rate limit would hold it to what a person types
    let mut o = opts();
    o.server_config.limits = cloister_server::ServerLimits::off();
    let w = World::with(o).await;
    let home = w.dir.path().join("home-alice");
    drop(w.disk_user("alice", &home).await);
    let bob = w.user("bob").await;
    let room = bob
        .create_room(Default::default(), &[World::uid("alice")])
        .await
        .unwrap();
    // 10,000 messages over one live socket, sealed in batches
    let live = bob.connect_live().await.unwrap();
    let poster = live.poster();
    let n = 10_000;
    let mut pending = Vec::new();
    for i in 0..n {
        let env = bob
            .seal(
                &room,
                &cloister_proto::server::Content::Text {
                    text: format!("history {i}"),
                },
            )
            .await
            .unwrap();
        let p = poster.clone();
        pending.push(tokio::spawn(async move { p.post(&room, &env).await }));
        if pending.len() == 256 {
            for h in pending.drain(..) {
                h.await.unwrap().unwrap();
            }
        }
    }
    for h in pending {
        h.await.unwrap().unwrap();
    }
    drop(live);
    let a = app(&home).await;
    let d = chromedriver();
    let b = Browser::start(&d, &w.dir.path().join("chrome"), 1280).await;
    unlock(&b, &a.launch_url).await;
    let url = format!("{}/r/{}", a.url.trim_end_matches('/'), room.to_hex());
    let mut loads = Vec::new();
    for _ in 0..5 {
        b.goto(&url).await;
        b.find("#messages li").await;
        let t = b
            .execute(
                "const e = performance.getEntriesByType('navigation')[0]; \
                 return [e.responseEnd - e.startTime, e.domContentLoadedEventEnd - e.startTime]",
            )
            .await;
        loads.push((t[0].as_f64().unwrap(), t[1].as_f64().unwrap()));
    }
    loads.sort_by(|x, y| x.1.partial_cmp(&y.1).unwrap());
    let (resp, dom) = loads[loads.len() / 2];
    println!(
        "app first render of a room of {n} messages (median of 5): page served in {resp:.0} ms, rendered in {dom:.0} ms"
    );
    let shown = b
        .execute("return document.querySelectorAll('#messages li').length")
        .await;
    assert_eq!(shown.as_u64(), Some(50), "the newest page only");
    let last = b
        .execute("return document.querySelector('#messages li:last-child .text').textContent")
        .await;
    // (posted concurrently: the server's order is the truth)
    let text_of = |m: &cloister_client::Received| match &m.content {
        cloister_proto::server::Content::Text { text } => text.clone(),
        _ => String::new(),
    };
    let newest = bob.read(&room, 100, None).await.unwrap();
    let newest: Vec<String> = newest
        .iter()
        .map(|m| text_of(m.as_ref().unwrap()))
        .collect();
    assert_eq!(last.as_str(), newest.last().map(String::as_str));
    // scrolling to the top brings the page before it, in order
    b.execute("document.querySelector('.history').scrollTop = 0; return true")
        .await;
    b.until(
        "return document.querySelectorAll('#messages li').length >= 100",
        "the older page",
    )
    .await;
    // every message between the oldest shown and the newest, once, in order
    let seqs = b
        .execute("return [...document.querySelectorAll('#messages li.msg')].map(li => Number(li.dataset.seq))")
        .await;
    let seqs: Vec<u64> = seqs
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(seqs.len() >= 100, "{}", seqs.len());
    assert!(
        seqs.windows(2).all(|p| p[1] == p[0] + 1),
        "consecutive, oldest first: {seqs:?}"
    );
    let texts = b
        .execute("return [...document.querySelectorAll('#messages li.msg .text')].slice(-100).map(e => e.textContent)")
        .await;
    let texts: Vec<String> = serde_json::from_value(texts).unwrap();
    assert_eq!(texts, newest, "the newest 100, as the server holds them");
    b.close().await;
}

/// Connections with another firm's people, and a room policy's refusal
/// said in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_room_policies_in_the_app() {
    use cloister_proto::controls::Entitlement;
    let w = World::new().await;
    let (ha, hb) = (
        w.dir.path().join("home-alice"),
        w.dir.path().join("home-bob"),
    );
    drop(w.disk_user("alice", &ha).await);
    drop(w.disk_user("bob", &hb).await);
    let bank = w.firm("bank").await;
    w.trust_each_other(&bank).await;
    w.admin
        .admin_entitle(
            Some(&World::uid("alice")),
            None,
            &[Entitlement::ExternalChat],
            &[],
        )
        .await
        .unwrap();
    let bo = bank.user("bo").await;
    entitle_external(&bank.admin, &[&bo]).await;
    let (aa, ab) = (app(&ha).await, app(&hb).await);
    let d = chromedriver();
    let ba = Browser::start(&d, &w.dir.path().join("chrome-a"), 1280).await;
    let bb = Browser::start(&d, &w.dir.path().join("chrome-b"), 1280).await;
    unlock(&ba, &aa.launch_url).await;
    unlock(&bb, &ab.launch_url).await;

    // alice asks bo of the bank to connect; bo accepts
    ba.goto(&format!("{}connections", aa.url)).await;
    ba.find("#conn-to").await.send_keys("bo@bank").await;
    ba.find("form[action='/connections'] button")
        .await
        .click()
        .await;
    ba.until(
        "return document.getElementById('connections').textContent.includes('pending')",
        "the pending connection",
    )
    .await;
    axe(&ba, "connections").await;
    let id = cloister_client::ConnectionView::of(&bo.connections().await.unwrap()[0])
        .unwrap()
        .id;
    bo.connect_answer(&id, true).await.unwrap();
    ba.goto(&format!("{}connections", aa.url)).await;
    ba.until(
        "return document.getElementById('connections').textContent.includes('accepted')",
        "the accepted connection",
    )
    .await;
    shot(&ba, "connections").await;

    // a read-only room: only owners post; bob is told so in words
    ba.find("#room-name").await.send_keys("Announcements").await;
    ba.find("#room-members").await.send_keys("bob@acme").await;
    ba.execute("document.querySelector('details').open = true; return true")
        .await;
    ba.find("input[name='read_only']").await.click().await;
    ba.find("form[action='/rooms'] button").await.click().await;
    ba.find("#compose").await;
    let path = reqwest::Url::parse(&ba.url().await)
        .unwrap()
        .path()
        .to_owned();
    ba.find("#text")
        .await
        .send_keys("Desk opens at 7\u{E007}")
        .await;
    bb.goto(&format!("{}{}", ab.url.trim_end_matches('/'), path))
        .await;
    bb.until(
        "return document.getElementById('messages').textContent.includes('Desk opens')",
        "bob to read the announcement",
    )
    .await;
    bb.find("#text")
        .await
        .send_keys("can I post?\u{E007}")
        .await;
    bb.until(
        "const e = document.getElementById('compose-error'); return !e.hidden && e.textContent.length > 0",
        "the refusal",
    )
    .await;
    let said = bb
        .execute("return document.getElementById('compose-error').textContent")
        .await;
    assert!(said.as_str().unwrap().contains("Not sent"), "{said}");
    assert!(
        said.as_str().unwrap().to_lowercase().contains("owner"),
        "{said}"
    );

    // an end-to-end (MLS) room made in the app: the group holds both
    // devices (bob's app uploaded its key packages when it was unlocked)
    ba.goto(&aa.url).await;
    ba.find("#room-name").await.send_keys("E2E desk").await;
    ba.find("#room-members").await.send_keys("bob@acme").await;
    ba.execute("document.querySelector('details').open = true; return true")
        .await;
    ba.find("input[name='mls']").await.click().await;
    ba.find("form[action='/rooms'] button").await.click().await;
    ba.find("#compose").await;
    let mode = ba
        .execute("return document.getElementById('room-mode').textContent")
        .await;
    assert!(
        mode.as_str().unwrap().contains("2 devices in the group"),
        "{mode}"
    );
    shot(&ba, "mls-room").await;
    axe(&ba, "mls room").await;
    let path = reqwest::Url::parse(&ba.url().await)
        .unwrap()
        .path()
        .to_owned();
    ba.find("#text")
        .await
        .send_keys("E2E first fill at 99.5\u{E007}")
        .await;
    bb.goto(&format!("{}{}", ab.url.trim_end_matches('/'), path))
        .await;
    bb.until(
        "return document.getElementById('messages').textContent.includes('first fill')",
        "bob to read the MLS message",
    )
    .await;

    // a conversation with a contact on Matrix through the firm's gateway:
    // the room says so, and what the gateway relays shows who wrote it
    let gw = w
        .user_with("gateway", &[cloister_proto::km::Role::Gateway])
        .await;
    for u in [World::uid("alice"), gw.user().clone()] {
        w.admin
            .admin_entitle(Some(&u), None, &[Entitlement::Federation], &[])
            .await
            .unwrap();
    }
    ba.goto(&aa.url).await;
    ba.find("#bridge-contact")
        .await
        .send_keys("@mat:matrix.example")
        .await;
    ba.find("form[action='/bridge'] button").await.click().await;
    ba.find("#compose").await;
    let bridge = ba
        .execute("return document.getElementById('room-bridge').textContent")
        .await;
    assert!(
        bridge.as_str().unwrap().contains("@mat:matrix.example"),
        "{bridge}"
    );
    let path = reqwest::Url::parse(&ba.url().await)
        .unwrap()
        .path()
        .to_owned();
    let room: cloister_proto::RoomId = path.trim_start_matches("/r/").parse().unwrap();
    use cloister_proto::server::Content;
    gw.send(
        &room,
        &Content::Relayed {
            network: "matrix".into(),
            from: "@mat:matrix.example".into(),
            id: "$e1".into(),
            content: Box::new(Content::Text {
                text: "Confirmed from Matrix".into(),
            }),
        },
    )
    .await
    .unwrap();
    ba.goto(&format!("{}{}", aa.url.trim_end_matches('/'), path))
        .await;
    ba.until(
        "return document.getElementById('messages').textContent.includes('Confirmed from Matrix')",
        "the relayed message",
    )
    .await;
    let shown = ba
        .execute("return document.getElementById('messages').textContent")
        .await;
    assert!(
        shown
            .as_str()
            .unwrap()
            .contains("From @mat:matrix.example on matrix"),
        "{shown}"
    );
    shot(&ba, "bridged-room").await;
    axe(&ba, "bridged room").await;
    ba.close().await;
    bb.close().await;
}

/// `cloister app` itself: prints its launch link (JSON with `--json`),
/// serves the unlock page to the browser that opens it, and stops on a
/// signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloister_app_command_prints_a_launch_link_and_serves_it() {
    use std::io::BufRead;
    let w = World::new().await;
    let home = w.dir.path().join("home-alice");
    drop(w.disk_user("alice", &home).await);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cloister"))
        .arg("--json")
        .arg("--home")
        .arg(&home)
        .args(["app", "--no-open"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let launch = v["launch_url"].as_str().unwrap().to_owned();
    assert!(launch.starts_with("http://127.0.0.1:"), "{launch}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(&launch).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = http
        .get(v["url"].as_str().unwrap())
        .header("cookie", session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Unlock this device"), "{page}");
    // a home that is not there is said in words, and nothing listens
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloister"))
        .arg("--home")
        .arg(w.dir.path().join("nobody"))
        .args(["app", "--no-open"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enrol first"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
}
