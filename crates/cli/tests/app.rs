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
    unlock(&ba, &aa.launch_url).await;
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
