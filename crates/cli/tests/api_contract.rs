//! The API contract: each service's OpenAPI 3.1 description is generated
//! from its handlers, served at `/openapi.json` and checked into
//! `docs/api/`; schemathesis (PyPI) fuzzes each live service against it:
//! no server error, no response that breaks the schema.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn descriptions() -> Vec<(&'static str, String)> {
    vec![
        ("km", cloister_km::http::openapi().to_pretty_json().unwrap()),
        (
            "server",
            cloister_server::openapi().to_pretty_json().unwrap(),
        ),
        ("vault", cloister_vault::openapi().to_pretty_json().unwrap()),
        (
            "witness",
            cloister_witness::openapi().to_pretty_json().unwrap(),
        ),
    ]
}

/// `docs/api/*.json` is what the code generates. To refresh it after a
/// change of the API: `CLOISTER_WRITE_API=1 cargo test -p cloister-cli
/// --test api_contract`.
#[test]
fn the_checked_in_descriptions_are_the_generated_ones() {
    let write = std::env::var_os("CLOISTER_WRITE_API").is_some();
    for (name, json) in descriptions() {
        let path = root().join(format!("docs/api/{name}.json"));
        let json = json + "\n";
        if write {
            std::fs::write(&path, &json).unwrap();
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == json,
            "docs/api/{name}.json differs from the code's description; refresh it with \
             CLOISTER_WRITE_API=1 cargo test -p cloister-cli --test api_contract"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["openapi"], "3.1.0", "{name}");
        assert!(!v["paths"].as_object().unwrap().is_empty(), "{name}");
    }
}

async fn start_witness(dir: &std::path::Path) -> String {
    let w = std::sync::Arc::new(
        cloister_witness::Witness::open_dir(dir, Some("contract-witness"))
            .await
            .unwrap(),
    );
    let (l, tls, url) = cloister_cli::tls_args::bind_local("witness", Some(&test_tls()))
        .await
        .unwrap();
    let router = cloister_witness::router(w);
    tokio::spawn(async move {
        cloister_http::serve_with(l, tls.as_ref(), router, std::future::pending()).await
    });
    url
}

/// Run schemathesis against `base`; panics with its report on a failure.
fn schemathesis(name: &str, base: &str, headers: &[String], exclude: &[&str]) {
    let python = root().join("target/tools/venv/bin/schemathesis");
    let mut c = std::process::Command::new(python);
    c.arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", base])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "100"])
        .args(["--workers", "1"])
        .args(["--seed", "1"])
        .arg("--tls-verify")
        .arg(test_tls().ca_file())
        .args(["--suppress-health-check", "all"]);
    for h in headers {
        c.args(["-H", h]);
    }
    for p in exclude {
        c.args(["--exclude-path", p]);
    }
    let out = c.output().expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("schemathesis, {name}:\n{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found problems in the {name}'s API:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let st = std::process::Command::new(root().join("scripts/tools"))
        .status()
        .expect("scripts/tools runs");
    assert!(st.success(), "scripts/tools could not install schemathesis");
    let w = World::new().await;
    // every service serves the description it was built with
    let http = cloister_tls::http_client();
    for (name, base) in [
        ("km", &w.stack.km_url),
        ("server", &w.stack.server_url),
        ("vault", &w.stack.vault_url),
    ] {
        let served: serde_json::Value = http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let generated: serde_json::Value = serde_json::from_str(
            &descriptions()
                .into_iter()
                .find(|(n, _)| *n == name)
                .unwrap()
                .1,
        )
        .unwrap();
        assert_eq!(served, generated, "{name}");
    }
    // authenticated where the API authenticates by header: a member's
    // session at the server
    let alice = w.raw("alice").await;
    let token = alice.token().await;
    let dir = tempfile::tempdir().unwrap();
    let witness = start_witness(dir.path()).await;
    let (km, server, vault) = (
        w.stack.km_url.clone(),
        w.stack.server_url.clone(),
        w.stack.vault_url.clone(),
    );
    tokio::task::spawn_blocking(move || {
        schemathesis("KM", &km, &[], &[]);
        schemathesis(
            "server",
            &server,
            &[format!("Authorization: Bearer {token}")],
            // the live socket is not HTTP after its upgrade
            &["/v1/ws"],
        );
        schemathesis("vault", &vault, &[], &[]);
        schemathesis("witness", &witness, &[], &[]);
    })
    .await
    .unwrap();
}
