//! TLS on the listeners: the whole stack over HTTPS and WSS with a
//! development CA; what a client that should not get through sees (another
//! CA, TLS 1.2, plain HTTP, a client certificate from elsewhere); and files
//! that are not what they claim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_cli::tls_args::LocalTls;
use cloister_proto::room::RoomSettings;
use common::{World, opts, test_tls};

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A world whose KM, server and vault speak TLS only, with certificates
/// from the test process's CA (which this process trusts).
async fn tls_world() -> (World, LocalTls) {
    let o = opts();
    let tls = o.tls.clone().expect("the tests' stacks speak TLS");
    (World::with(o).await, tls)
}

fn host_port(url: &str) -> String {
    url.split("://").nth(1).unwrap().to_owned()
}

/// A raw TLS client handshake with `config` against `url`; the handshake's
/// error, if any.
async fn handshake(url: &str, config: rustls::ClientConfig) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(host_port(url))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: a refused client certificate shows on the first read.
    s.write_all(b"GET /v1/info HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    if buf.starts_with(b"HTTP/1.1 ") {
        Ok(())
    } else {
        Err(format!("no HTTP answer: {}", String::from_utf8_lossy(&buf)))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &std::path::Path) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in cloister_tls::read_certs(ca, "CA").unwrap() {
        r.add(c).unwrap();
    }
    r
}

fn client(
    ca: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_no_client_auth()
}

#[tokio::test]
async fn the_stack_speaks_tls_end_to_end() {
    let (w, _tls) = tls_world().await;
    assert!(w.stack.server_url.starts_with("https://"));
    assert!(w.stack.km_url.starts_with("https://"));
    assert!(w.stack.vault_url.starts_with("https://"));
    // capture required: every send goes to the vault over HTTPS first
    use cloister_proto::km::Role::Custodian;
    let (c1, c2) = (
        w.user_with("cust1", &[Custodian]).await,
        w.user_with("cust2", &[Custodian]).await,
    );
    w.admin
        .admin_escrow_init(&[c1.user().clone(), c2.user().clone()], 2)
        .await
        .unwrap();
    let v = w.register_vault(true).await;
    assert!(v.starts_with("https://"));
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let room = alice
        .create_room(RoomSettings::default(), &[World::uid("bob")])
        .await
        .unwrap();
    // live events over WSS, messages over HTTPS
    let mut events = bob.connect_events().await.unwrap();
    alice.send_text(&room, "over TLS").await.unwrap();
    let ev = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(ev.is_some());
    let got = bob.read(&room, 10, None).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].is_ok());
    assert!(w.stack.vault.envelope_count().await.unwrap() >= 1);
    // plain HTTP to a TLS port gets no answer
    let plain = format!("http://{}/v1/info", host_port(&w.stack.km_url));
    assert!(reqwest::get(&plain).await.is_err());
}

#[tokio::test]
async fn a_server_under_an_unknown_ca_is_refused() {
    let (w, tls) = tls_world().await;
    // the right CA: the handshake and a request go through
    handshake(
        &w.stack.server_url,
        client(&tls.ca_file(), &[&rustls::version::TLS13]),
    )
    .await
    .unwrap();
    // a client that trusts another CA refuses the server
    let other = tempfile::tempdir().unwrap();
    let other_ca = cloister_tls::dev::DevCa::create(other.path(), "another CA").unwrap();
    let err = handshake(
        &w.stack.server_url,
        client(&other_ca.ca_file(), &[&rustls::version::TLS13]),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );
    // the SDK's HTTP client with that CA as well
    let http = cloister_tls::ClientTls::load(&other_ca.client_files())
        .unwrap()
        .http()
        .unwrap();
    let e = http
        .get(format!("{}/v1/info", w.stack.km_url))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    // and the SDK says why, not just "unreachable"
    let e = cloister_client::km_info(&http, &w.stack.km_url)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TLS handshake failed") && e.contains("certificate"),
        "{e}"
    );
    assert!(e.contains("--ca-file"), "{e}");
}

#[tokio::test]
async fn tls_1_2_is_refused_unless_allowed() {
    let (w, tls) = tls_world().await;
    let tls12 = || client(&tls.ca_file(), &[&rustls::version::TLS12]);
    let err = handshake(&w.stack.server_url, tls12()).await.unwrap_err();
    assert!(
        err.contains("ProtocolVersion") || err.contains("protocol version"),
        "{err}"
    );
    // a listener that allows it takes the same client: the test can fail
    let d = tempfile::tempdir().unwrap();
    let ca = cloister_tls::dev::DevCa::create(d.path(), "CA").unwrap();
    let mut files = ca.server_files("legacy").unwrap();
    files.allow_tls12 = true;
    let server = cloister_tls::ServerTls::load(&files).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    let router = axum_router();
    tokio::spawn(async move {
        cloister_http::serve_with(l, Some(&server), router, std::future::pending()).await
    });
    handshake(&url, client(&ca.ca_file(), &[&rustls::version::TLS12]))
        .await
        .unwrap();
}

fn axum_router() -> axum::Router {
    axum::Router::new().fallback(cloister_http::not_found)
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let ca = cloister_tls::dev::DevCa::create(&d.path().join("ours"), "ours").unwrap();
    let theirs = cloister_tls::dev::DevCa::create(&d.path().join("theirs"), "theirs").unwrap();
    let server = cloister_tls::ServerTls::load(&ca.server_files("km").unwrap()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        cloister_http::serve_with(l, Some(&server), axum_router(), std::future::pending()).await
    });
    let with_identity = |cert: (std::path::PathBuf, std::path::PathBuf)| {
        let chain = cloister_tls::read_certs(&cert.0, "cert").unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.1).unwrap();
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(&ca.ca_file()))
            .with_client_auth_cert(chain, key)
            .unwrap()
    };
    use rustls::pki_types::pem::PemObject;
    // a service with a certificate from our CA, and a client with none, get in
    handshake(
        &url,
        with_identity(ca.issue("vault", &["localhost"]).unwrap()),
    )
    .await
    .unwrap();
    handshake(&url, client(&ca.ca_file(), &[&rustls::version::TLS13]))
        .await
        .unwrap();
    // one from another CA does not
    let err = handshake(
        &url,
        with_identity(theirs.issue("intruder", &["localhost"]).unwrap()),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnknownCA") || err.contains("unknown ca") || err.contains("certificate"),
        "{err}"
    );
}

#[test]
fn tls_files_that_are_not_what_they_claim_are_named() {
    let d = tempfile::tempdir().unwrap();
    let ca = cloister_tls::dev::DevCa::create(d.path(), "CA").unwrap();
    let good = ca.server_files("server").unwrap();
    let load = |f: &cloister_tls::ServerTlsFiles| {
        cloister_tls::ServerTls::load(f).unwrap_err().to_string()
    };
    // missing
    let mut f = good.clone();
    f.cert = d.path().join("missing.pem");
    let e = load(&f);
    assert!(
        e.contains("missing.pem") && e.contains("cannot read"),
        "{e}"
    );
    // not PEM at all
    let junk = d.path().join("junk.pem");
    std::fs::write(&junk, b"hello").unwrap();
    let mut f = good.clone();
    f.cert = junk.clone();
    let e = load(&f);
    assert!(e.contains("junk.pem") && e.contains("holds no"), "{e}");
    // a certificate where the key should be: no key, and no bytes echoed
    let mut f = good.clone();
    f.key = good.cert.clone();
    let e = load(&f);
    assert!(e.contains("server.pem") && e.contains("private key"), "{e}");
    assert!(!e.contains("BEGIN"), "{e}");
    // another service's key
    let (_, other_key) = ca.issue("other", &["localhost"]).unwrap();
    let mut f = good.clone();
    f.key = other_key;
    let e = load(&f);
    assert!(e.contains("does not suit"), "{e}");
    // the key file never shows in an error
    let key_pem = std::fs::read_to_string(&good.key).unwrap();
    let body: String = key_pem.lines().nth(1).unwrap().to_owned();
    assert!(!e.contains(&body));
    // and the good files load
    cloister_tls::ServerTls::load(&good).unwrap();
}

/// With `require_service_certs`, the routes only services call answer only
/// connections that presented a client certificate from the services' CA.
#[tokio::test]
async fn service_routes_need_a_client_certificate_when_required() {
    let tls = test_tls();
    let mut o = opts();
    o.km_config.require_service_certs = true;
    let w = World::with(o).await;
    let km = &w.stack.km_url;
    // a device's connection (no client certificate): refused on service
    // routes, served elsewhere
    let plain = cloister_tls::ClientTls::load(&cloister_tls::ClientTlsFiles {
        ca: Some(tls.ca_file()),
        identity: None,
        allow_tls12: false,
    })
    .unwrap()
    .http()
    .unwrap();
    for path in [
        "/v1/deny-list",
        "/v1/federation/room-keys",
        "/v1/federation/directory",
    ] {
        let r = plain
            .post(format!("{km}{path}"))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "client_certificate_required", "{path}");
    }
    let r = plain.get(format!("{km}/v1/info")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // a service with a certificate from the CA gets past the check (and is
    // then judged on its request: here a malformed one)
    let (cert, key) = tls.issue("vault-client").unwrap();
    let service = cloister_tls::ClientTls::load(&cloister_tls::ClientTlsFiles {
        ca: Some(tls.ca_file()),
        identity: Some((cert, key)),
        allow_tls12: false,
    })
    .unwrap()
    .http()
    .unwrap();
    let r = service
        .post(format!("{km}/v1/deny-list"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "past the certificate check");
    // and the vault, whose pulls carry no certificate here, is refused:
    // the deny list it needs does not come
    let e = w.stack.vault.pull_deny_list().await.unwrap_err();
    assert!(e.contains("client_certificate_required"), "{e}");
}
