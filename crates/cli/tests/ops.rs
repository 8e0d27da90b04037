//! Operability: health, readiness and Prometheus metrics on every service,
//! read by the Prometheus project's own text parser; configuration files;
//! JSON logs without secrets or content.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_proto::km::Role::Custodian;
use cloister_proto::room::RoomSettings;
use common::procs::{Procs, cmd, json, ok};
use common::*;
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::Stdio;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One sample as the Prometheus parser read it.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Parse exposition text with `prometheus_client.parser` (PyPI); panics
/// if the text does not parse.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    // once per test process: two installs at once would race
    static TOOLS: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    {
        let mut done = TOOLS.lock().unwrap();
        if !*done {
            let st = std::process::Command::new(root().join("scripts/tools"))
                .status()
                .expect("scripts/tools runs");
            assert!(st.success(), "scripts/tools could not install the parser");
            *done = true;
        }
    }
    let mut child = std::process::Command::new(root().join("target/tools/venv/bin/python"))
        .arg(root().join("tests/ops/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Sample {
                name: v["name"].as_str().unwrap().to_owned(),
                labels: v["labels"].as_object().unwrap().clone(),
                value: v["value"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Serve a service's operations router on a loopback port (as
/// `--metrics-listen` does) and GET a path from it.
async fn serve_ops(router: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(cloister_http::serve(l, router, std::future::pending()));
    url
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_reports_health_and_metrics_a_prometheus_parser_reads() {
    let w = World::new().await;
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let custodians = [
        w.user_with("cust1", &[Custodian]).await,
        w.user_with("cust2", &[Custodian]).await,
    ];
    let names: Vec<_> = custodians.iter().map(|c| c.user().clone()).collect();
    w.admin.admin_escrow_init(&names, 2).await.unwrap();
    w.register_vault(true).await;
    let room = alice
        .create_room(RoomSettings::default(), &[bob.user().clone()])
        .await
        .unwrap();
    for i in 0..5 {
        alice
            .send_text(&room, &format!("METRICSECRET quote {i}"))
            .await
            .unwrap();
    }
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 5);
    // carol is no member: refused, and counted by reason
    carol.clear_key_cache().unwrap();
    assert_eq!(
        carol.room_keys(&room, &[0]).await.unwrap_err().code(),
        Some("not_entitled")
    );

    let s = &w.stack;
    let km = serve_ops(cloister_http::ops::ops_router(
        s.km.metrics().clone(),
        s.km.ready_check(),
    ))
    .await;
    let server = serve_ops(cloister_http::ops::ops_router(
        s.server.metrics().clone(),
        s.server.ready_check(),
    ))
    .await;
    let vault = serve_ops(cloister_http::ops::ops_router(
        s.vault.metrics().clone(),
        s.vault.ready_check(),
    ))
    .await;
    let mut texts = Vec::new();
    for base in [&km, &server, &vault] {
        assert_eq!(get(&format!("{base}/healthz")).await.0, 200, "{base}");
        let (st, body) = get(&format!("{base}/readyz")).await;
        assert_eq!(st, 200, "{base}: {body}");
        let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4"),
            "Prometheus text exposition"
        );
        texts.push(r.text().await.unwrap());
    }
    // the public listeners answer /healthz and /readyz too
    let http = cloister_tls::http_client();
    for base in [&s.km_url, &s.server_url, &s.vault_url] {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{base}");
    }

    let kmm = parse_prometheus(&texts[0]);
    assert!(value(&kmm, "cloister_km_key_releases_total", &[("to", "member")]).unwrap() >= 1.0);
    assert_eq!(
        value(
            &kmm,
            "cloister_km_key_refusals_total",
            &[("reason", "not_entitled")]
        ),
        Some(1.0)
    );
    assert!(value(&kmm, "cloister_km_audit_log_entries", &[]).unwrap() > 5.0);
    assert!(value(&kmm, "cloister_km_audit_checkpoint_age_seconds", &[]).is_some());
    assert!(
        value(
            &kmm,
            "cloister_km_http_requests_total",
            &[("route", "/v1/request"), ("status", "403")]
        )
        .is_some(),
        "per-route counts by status"
    );
    assert!(
        value(
            &kmm,
            "cloister_km_http_request_duration_seconds_count",
            &[("route", "/v1/request")]
        )
        .unwrap()
            >= 1.0
    );

    let sm = parse_prometheus(&texts[1]);
    assert_eq!(
        value(&sm, "cloister_server_messages_accepted_total", &[]),
        Some(5.0)
    );
    assert!(value(&sm, "cloister_server_deliveries_total", &[]).is_some());
    assert!(value(&sm, "cloister_server_connected_clients", &[]).is_some());
    assert!(
        value(
            &sm,
            "cloister_server_http_requests_total",
            &[("route", "/v1/rooms/{room}/messages"), ("method", "POST")]
        )
        .unwrap()
            >= 5.0,
        "routes are templates"
    );

    let vm = parse_prometheus(&texts[2]);
    // alice's sends and bob's receipts are captured
    assert!(
        value(
            &vm,
            "cloister_vault_captures_total",
            &[("outcome", "stored")]
        )
        .unwrap()
            >= 5.0
    );
    assert!(value(&vm, "cloister_vault_verify_queue", &[]).is_some());
    assert!(value(&vm, "cloister_vault_status_queue", &[]).is_some());
    assert!(value(&vm, "cloister_vault_audit_append_queue", &[]).is_some());

    // no id, name or content is a label
    for t in &texts {
        for needle in ["METRICSECRET", "alice", "carol", &room.to_hex()] {
            assert!(!t.contains(needle), "{needle} in the metrics");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_from_a_config_file_serves_metrics_apart() {
    let dir = tempfile::tempdir().unwrap();
    let km_dir = dir.path().join("km");
    let init = json(
        cmd(None)
            .args(["--json", "km", "init", "--tenant", "acme", "--data-dir"])
            .arg(&km_dir)
            .output()
            .unwrap(),
    );
    assert!(init["code"].is_string());
    // the example is a valid file once uncommented, and the service takes it
    let example = ok(cmd(None).args(["km", "config-example"]).output().unwrap());
    assert!(
        example.contains("#listen = \"127.0.0.1:7400\""),
        "{example}"
    );
    assert!(example.contains("#metrics-listen"), "{example}");
    assert!(
        !example.contains("passphrase ="),
        "no secret is a key: {example}"
    );
    let file = dir.path().join("km.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nmetrics-listen = \"127.0.0.1:0\"\ndata-dir = {:?}\n",
            km_dir.display().to_string()
        ),
    )
    .unwrap();
    let mut c = cmd(None);
    c.args(["km", "serve", "--config"]).arg(&file);
    let (child, urls) = common::procs::spawn_reporting(c, &["listening on ", "metrics on "]);
    let _p = Procs(vec![child]);
    let (api, metrics) = (&urls[0], urls[1].trim_end_matches("/metrics").to_owned());
    assert_ne!(api, &metrics, "metrics are on their own listener");
    let (st, text) = get(&format!("{metrics}/metrics")).await;
    assert_eq!(st, 200);
    let samples = parse_prometheus(&text);
    assert!(value(&samples, "cloister_km_audit_log_entries", &[]).unwrap() >= 1.0);
    assert_eq!(get(&format!("{metrics}/readyz")).await.0, 200);
    // /metrics is not on the public listener
    assert_eq!(get(&format!("{api}/metrics")).await.0, 404);
    assert_eq!(get(&format!("{api}/healthz")).await.0, 200);
}

#[test]
fn config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vault.toml");
    let run = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let out = cmd(None)
            .args(["vault", "serve", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "a usage error");
        String::from_utf8(out.stderr).unwrap()
    };
    let e = run("refresh-secs = \"soon\"\n");
    assert!(
        e.contains("vault.toml") && e.contains("`refresh-secs`") && e.contains("soon"),
        "{e}"
    );
    let e = run("[tls]\ncertificate = \"x.pem\"\n");
    assert!(
        e.contains("unknown key `tls-certificate`") && e.contains("tls-cert"),
        "{e}"
    );
    let e = run("listen = 7500\nlisten = 7501\n");
    assert!(e.contains("not valid TOML"), "{e}");
    // every service prints its example
    for svc in [
        &["server", "config-example"][..],
        &["km", "config-example"],
        &["vault", "config-example"],
        &["witness", "config-example"],
        &["inspect", "config-example"],
    ] {
        let ex = ok(cmd(None).args(svc).output().unwrap());
        assert!(
            ex.contains("#listen") || ex.contains("#clamd"),
            "{svc:?}: {ex}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_no_secret_and_no_content() {
    let dir = tempfile::tempdir().unwrap();
    let km_dir = dir.path().join("km");
    let init = json(
        cmd(None)
            .args(["--json", "km", "init", "--tenant", "acme", "--data-dir"])
            .arg(&km_dir)
            .output()
            .unwrap(),
    );
    let code = init["code"].as_str().unwrap().to_owned();
    let mut km = cmd(None);
    km.env("CLOISTER_LOG", "debug")
        .args([
            "--log-format",
            "json",
            "km",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&km_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = km.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(at) = l.find("listening on ") {
            break l[at + 13..]
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches([';', ','])
                .to_owned();
        }
    };
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    let mut server = cmd(None);
    server
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("srv"));
    let (server_child, server_url) = common::procs::spawn_service(server);
    let _p = Procs(vec![child, server_child]);
    ok(cmd(None)
        .args([
            "admin",
            "register-tenant",
            "--server",
            &server_url,
            "--km",
            &url,
            "--operator-token-file",
        ])
        .arg(dir.path().join("srv/operator.token"))
        .output()
        .unwrap());
    let admin = dir.path().join("admin");
    ok(cmd(Some(&admin))
        .args([
            "enrol",
            "--server",
            &server_url,
            "--km",
            &url,
            "--user",
            "admin@acme",
            "--code",
            &code,
        ])
        .output()
        .unwrap());
    // a wrong code is refused and logged; the code itself is not
    let e = cmd(None)
        .args(["--home"])
        .arg(dir.path().join("mallory"))
        .args([
            "enrol",
            "--server",
            &server_url,
            "--km",
            &url,
            "--user",
            "admin@acme",
            "--code",
            "WRONG-CODE-LOGSECRET-1",
        ])
        .output()
        .unwrap();
    assert!(!e.status.success());
    let room = ok(cmd(Some(&admin))
        .args(["room", "create", "logroom"])
        .output()
        .unwrap());
    assert!(!room.is_empty());
    ok(cmd(Some(&admin))
        .args(["send", "logroom", "LOGCONTENT the bid is 99"])
        .output()
        .unwrap());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let lines = log.lock().unwrap().clone();
    assert!(!lines.is_empty(), "the KM logged something at debug level");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        for secret in ["LOGCONTENT", "LOGSECRET", &code, "km pass", "device pass"] {
            assert!(!l.contains(secret), "{secret} in a log line: {l}");
        }
    }
}
