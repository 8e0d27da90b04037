//! A highly available KM: two `cloister km serve` processes on one
//! PostgreSQL database (a database made for the test), behind a failover
//! front that sends each request to the first KM that answers as active.
//! The active one is killed with -9 while devices create rooms (each a key
//! release and an audit record); the standby takes over, the audit log
//! verifies offline, and a device's pinned checkpoint sees no fork.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::procs::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A load balancer's view of the two KMs: the first that neither refuses
/// the connection nor says it is the standby gets the request.
fn failover_front(backends: Vec<String>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let http = cloister_tls::http_client();
            let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                let (http, backends) = (http.clone(), backends.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = axum::body::to_bytes(body, 1 << 24).await.unwrap();
                    let path = parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/");
                    for b in &backends {
                        let mut rq = http.request(parts.method.clone(), format!("{b}{path}"));
                        if let Some(ct) = parts.headers.get("content-type") {
                            rq = rq.header("content-type", ct);
                        }
                        if let Some(a) = parts.headers.get("authorization") {
                            rq = rq.header("authorization", a);
                        }
                        let Ok(r) = rq.body(body.clone()).send().await else {
                            continue; // down
                        };
                        if r.status() == 503 {
                            continue; // the standby
                        }
                        let status = r.status();
                        let bytes = r.bytes().await.unwrap_or_default();
                        return axum::response::Response::builder()
                            .status(status.as_u16())
                            .header("content-type", "application/json")
                            .body(axum::body::Body::from(bytes))
                            .unwrap();
                    }
                    axum::response::Response::builder()
                        .status(503)
                        .body(axum::body::Body::from(
                            "{\"error\":\"no_km\",\"message\":\"no active KM\"}",
                        ))
                        .unwrap()
                }
            });
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", l.local_addr().unwrap()))
                .unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn km_serve(dir: &std::path::Path, db: &str, server: &str) -> (std::process::Child, String) {
    let mut c = cmd(None);
    c.env("CLOISTER_DATABASE_URL", db)
        .args(["km", "serve", "--listen", "127.0.0.1:0", "--server", server])
        .arg("--data-dir")
        .arg(dir);
    spawn_service(c)
}

/// Does the KM at `url` answer `/v1/info` as the active one (200)?
fn active(url: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(url.trim_start_matches("http://")) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v1/info HTTP/1.1\r\nHost: km\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

#[test]
fn the_standby_km_takes_over_without_forking_the_audit_log() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = rt.block_on(cloister_store::testkit::PgDatabase::create()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let mut server_cmd = cmd(None);
    server_cmd
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.join("server"));
    let (server_child, server) = spawn_service(server_cmd);
    let mut procs = Procs(vec![server_child]);
    wait_http(&server);

    // one tenant in PostgreSQL; the second KM's directory is a copy of the
    // first's (its sealed master key), as an operator would provision it
    let (k1, k2) = (root.join("km1"), root.join("km2"));
    let init = init_km_pair(&k1, &k2, &pg.url);
    let (c1, km1) = km_serve(&k1, &pg.url, &server);
    procs.0.push(c1);
    wait_http(&km1);
    let (c2, km2) = km_serve(&k2, &pg.url, &server);
    procs.0.push(c2);
    wait_http(&km2);
    // exactly one is active (on a loaded machine either may win the
    // lease: the other stands by)
    let started = Instant::now();
    let first_active = loop {
        match (active(&km1), active(&km2)) {
            (true, false) => break true,
            (false, true) => break false,
            (true, true) => panic!("both KMs answer as active"),
            (false, false) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "neither KM took the lease"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // the active one is killed below, the other takes over
    let (active_at, standby) = if first_active {
        (1, km2.clone())
    } else {
        (2, km1.clone())
    };
    assert!(!active(&standby), "the other one stands by");
    let km = failover_front(vec![km1.clone(), km2.clone()]);

    ok(cmd(None)
        .args(["admin", "register-tenant", "--server", &server, "--km", &km])
        .arg("--operator-token-file")
        .arg(root.join("server/operator.token"))
        .output()
        .unwrap());
    let home = |who: &str| root.join("homes").join(who);
    let run = |who: &str, args: &[&str]| cmd(Some(&home(who))).args(args).output().unwrap();
    let code = init["code"].as_str().unwrap();
    ok(run(
        "admin",
        &[
            "enrol",
            "--server",
            &server,
            "--km",
            &km,
            "--user",
            "admin@acme",
            "--code",
            code,
        ],
    ));
    let bob = json(run("admin", &["--json", "admin", "add-user", "bob@acme"]));
    ok(run(
        "bob",
        &[
            "enrol",
            "--server",
            &server,
            "--km",
            &km,
            "--user",
            "bob@acme",
            "--code",
            bob["code"].as_str().unwrap(),
        ],
    ));
    // bob pins the log's checkpoint before the failover
    ok(run("bob", &["audit", "checkpoint"]));

    // a device keeps creating rooms and writing in them (each a logged
    // genesis and a logged key release) while the active KM is killed
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let worker = {
        let (stop, results, h) = (stop.clone(), results.clone(), home("admin"));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // a new room (its genesis is logged) and a first message
                // in it (the room key is released and logged)
                let out = cmd(Some(&h))
                    .args([
                        "--json",
                        "room",
                        "create",
                        &format!("desk-{n}"),
                        "--member",
                        "bob@acme",
                    ])
                    .output()
                    .unwrap();
                let sent = out.status.success()
                    && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                        .ok()
                        .and_then(|v| v["room"].as_str().map(str::to_owned))
                        .is_some_and(|room| {
                            cmd(Some(&h))
                                .args(["send", &room, "good morning"])
                                .output()
                                .unwrap()
                                .status
                                .success()
                        });
                results.lock().unwrap().push((Instant::now(), sent));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Instant::now();
    let mut first = procs.0.remove(active_at);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    // the standby becomes active
    let took_over = loop {
        if active(&standby) {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "no takeover");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    eprintln!("standby active {took_over:?} after the kill");
    assert!(took_over <= Duration::from_secs(5), "{took_over:?}");
    let results = results.lock().unwrap();
    let before = results.iter().filter(|(t, ok)| *t < killed && *ok).count();
    let after = results.iter().filter(|(t, ok)| *t > killed && *ok).count();
    assert!(
        before > 0 && after > 0,
        "{before} rooms before, {after} after"
    );

    // bob's pinned checkpoint is consistent with the new one: no fork
    ok(run("bob", &["audit", "checkpoint"]));
    // and the whole log verifies offline with the log's key
    let out = root.join("export");
    ok(run(
        "admin",
        &["audit", "export", "--out", out.to_str().unwrap()],
    ));
    let key = format!("@{}", out.join("log.key").display());
    let v = ok(cmd(None)
        .args(["audit", "verify", "--key", &key, "--dir"])
        .arg(&out)
        .output()
        .unwrap());
    assert!(v.contains("entries"), "{v}");
    // the releases of both KMs' terms are in it, one log
    let all = json(run(
        "admin",
        &["--json", "audit", "list", "--limit", "1000"],
    ));
    let kinds: Vec<String> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["record"]["kind"].as_str().unwrap_or("?").to_owned())
        .collect();
    let released = kinds.iter().filter(|k| *k == "key_released").count();
    assert!(
        released >= before + after,
        "{released} releases for {before}+{after} rooms: {kinds:?}"
    );
    drop(procs);
}
