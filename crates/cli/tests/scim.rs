//! The KM's SCIM 2.0 endpoint: checked by scim2-tester (an independent
//! implementation from PyPI, installed by scripts/tools) against the live
//! endpoint, and by our own requests for what it does not cover: filters,
//! pagination, ETags, auth, malformed input, and what a SCIM change does to
//! the user's keys and sessions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::World;
use serde_json::{Value, json};
use std::path::PathBuf;

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Scim {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Scim {
    async fn new(w: &World) -> Scim {
        let t = w.admin.admin_scim_token("okta").await.unwrap();
        assert!(t.token.starts_with("cst_"));
        Scim {
            base: format!("{}/scim/v2", w.stack.km_url),
            token: t.token,
            http: w.http.clone(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/scim+json")
                .body(b.to_string());
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create_user(&self, name: &str, extra: Value) -> Value {
        let mut body = json!({"schemas": [USER], "userName": name});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let (st, v) = self.call("POST", "/Users", Some(body)).await;
        assert_eq!(st, 201, "{v}");
        v
    }
}

fn assert_scim_error(st: u16, v: &Value, want: u16, scim_type: Option<&str>) {
    assert_eq!(st, want, "{v}");
    assert_eq!(
        v["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"]),
        "{v}"
    );
    assert_eq!(v["status"], json!(want.to_string()), "{v}");
    assert!(!v["detail"].as_str().unwrap_or("").is_empty(), "{v}");
    assert_eq!(v["scimType"].as_str(), scim_type, "{v}");
}

/// Every check scim2-tester runs passes, except the two explained below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim2_tester_passes_against_the_live_endpoint() {
    let w = World::new().await;
    let scim = Scim::new(&w).await;
    let tools = root().join("scripts/tools");
    let st = std::process::Command::new(&tools)
        .status()
        .expect("scripts/tools runs");
    assert!(
        st.success(),
        "scripts/tools failed: the SCIM checker could not be installed"
    );
    let python = root().join("target/tools/venv/bin/python");
    let script = root().join("tests/scim/run_scim2_tester.py");
    let base = scim.base.clone();
    let token = scim.token.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(base)
            .env("SCIM_TOKEN", token)
            .env("SCIM_CA_FILE", common::test_tls().ca_file())
            .output()
            .expect("the SCIM checker runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "checker crashed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut passed = 0;
    let mut unexplained = Vec::new();
    for r in &results {
        let (status, title, reason) = (
            r["status"].as_str().unwrap(),
            r["title"].as_str().unwrap(),
            r["reason"].as_str().unwrap(),
        );
        match status {
            "SUCCESS" => passed += 1,
            // Searching all resource types at once (POST /.search at the
            // root) is optional in RFC 7644 §3.4.3; the endpoint answers 501
            // and the checker skips.
            "SKIPPED" if title == "search_with_attributes" => {}
            // The checker adds the whole extension (assetClasses [x]), then
            // adds assetClasses [y] and expects [y]; RFC 7644 §3.5.2.1 says
            // `add` to a multi-valued attribute appends: [x, y]. (Its own
            // models' patch code appends too.) We follow the RFC.
            "ERROR" if title == "check_add_attribute" && reason.contains("assetClasses") => {}
            _ => unexplained.push(format!("{status} {title}: {reason}")),
        }
    }
    assert!(
        unexplained.is_empty(),
        "unexplained results:\n{}",
        unexplained.join("\n")
    );
    assert!(
        passed >= 80,
        "only {passed} checks passed of {}",
        results.len()
    );
}

#[tokio::test]
async fn filters_pagination_projection_and_etags() {
    let w = World::new().await;
    let s = Scim::new(&w).await;
    for (i, (name, title, dept)) in [
        ("rita.r", "Research Analyst", "Equity Research"),
        ("tom.t", "Trader", "Rates Trading"),
        ("tina.t", "Trader", "FX Trading"),
        ("sam.s", "Sales", "Sales"),
    ]
    .iter()
    .enumerate()
    {
        s.create_user(
            name,
            json!({"title": title, "externalId": format!("okta-{i}"), "active": i != 3,
                   "emails": [{"value": format!("{name}@bank.example"), "type": "work"}],
                   ENT: {"department": dept}}),
        )
        .await;
    }
    let q = |f: &str| format!("/Users?filter={}", urlencode(f));
    let names = |v: &Value| -> Vec<String> {
        v["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["userName"].as_str().unwrap().to_owned())
            .collect()
    };
    let (st, v) = s.call("GET", &q(r#"title eq "trader""#), None).await;
    assert_eq!(st, 200);
    assert_eq!(names(&v), ["tina.t", "tom.t"]);
    assert_eq!(v["totalResults"], 2);
    let (_, v) = s
        .call(
            "GET",
            &q(r#"title eq "trader" and not (userName sw "tom")"#),
            None,
        )
        .await;
    assert_eq!(names(&v), ["tina.t"]);
    let (_, v) = s
        .call(
            "GET",
            &q(&format!(
                r#"{ENT}:department co "trading" or userName eq "rita.r""#
            )),
            None,
        )
        .await;
    assert_eq!(names(&v), ["rita.r", "tina.t", "tom.t"]);
    let (_, v) = s
        .call(
            "GET",
            &q(r#"emails[type eq "work" and value ew "bank.example"] and active eq false"#),
            None,
        )
        .await;
    assert_eq!(names(&v), ["sam.s"]);
    let (_, v) = s.call("GET", &q(r#"externalId eq "okta-1""#), None).await;
    assert_eq!(names(&v), ["tom.t"]);
    let (_, v) = s.call("GET", &q(r#"externalId eq "OKTA-1""#), None).await;
    assert_eq!(v["totalResults"], 0, "externalId is case-exact");
    let (_, v) = s
        .call("GET", &q("title pr and userName ne \"sam.s\""), None)
        .await;
    assert_eq!(v["totalResults"], 3);

    // pagination: stable order, 1-based startIndex
    let (_, v) = s
        .call(
            "GET",
            &format!("{}&startIndex=2&count=2", q("title pr")),
            None,
        )
        .await;
    assert_eq!(v["totalResults"], 4);
    assert_eq!(v["startIndex"], 2);
    assert_eq!(v["itemsPerPage"], 2);
    assert_eq!(names(&v), ["sam.s", "tina.t"]);
    let (_, v) = s
        .call("GET", &format!("{}&count=0", q("title pr")), None)
        .await;
    assert_eq!(
        (v["totalResults"].clone(), v["itemsPerPage"].clone()),
        (json!(4), json!(0))
    );

    // projection
    let (_, v) = s
        .call(
            "GET",
            &format!("{}&attributes=userName", q(r#"userName eq "tom.t""#)),
            None,
        )
        .await;
    let r = &v["Resources"][0];
    assert!(
        r.get("title").is_none() && r["userName"] == "tom.t" && r["id"].is_string(),
        "{r}"
    );
    let id = r["id"].as_str().unwrap().to_owned();

    // ETags: If-None-Match → 304; a stale If-Match → 412; the current one works
    let r = s
        .http
        .get(format!("{}/Users/{id}", s.base))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    let r = s
        .http
        .get(format!("{}/Users/{id}", s.base))
        .bearer_auth(&s.token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let patch = json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "title", "value": "Senior Trader"}]});
    let r = s
        .http
        .patch(format!("{}/Users/{id}", s.base))
        .bearer_auth(&s.token)
        .header("if-match", "W/\"999\"")
        .header("content-type", "application/scim+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    assert_scim_error(st, &r.json().await.unwrap(), 412, None);
    let r = s
        .http
        .patch(format!("{}/Users/{id}", s.base))
        .bearer_auth(&s.token)
        .header("if-match", &etag)
        .header("content-type", "application/scim+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["title"], "Senior Trader");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// method, path, body, status, scimType
type Case = (
    &'static str,
    String,
    Option<Value>,
    u16,
    Option<&'static str>,
);

/// Malformed, oversized, unauthorized and conflicting requests: a SCIM
/// error with the right status and scimType, and nothing written.
#[tokio::test]
async fn bad_requests_get_scim_errors_and_change_nothing() {
    let w = World::new().await;
    let s = Scim::new(&w).await;
    let alice = s.create_user("alice.a", json!({"title": "Trader"})).await;
    let id = alice["id"].as_str().unwrap();
    let before = s.call("GET", "/Users", None).await.1;

    // no token, a wrong token, a revoked token
    let r = s
        .http
        .get(format!("{}/Users", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = s
        .http
        .get(format!("{}/Users", s.base))
        .bearer_auth("cst_nope")
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    assert_scim_error(st, &r.json().await.unwrap(), 401, None);
    let other = w.admin.admin_scim_token("entra").await.unwrap();
    w.admin.admin_scim_token_revoke(&other.id).await.unwrap();
    let r = s
        .http
        .get(format!("{}/Users", s.base))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let cases: Vec<Case> = vec![
        (
            "GET",
            "/Users?filter=userName%20eq".into(),
            None,
            400,
            Some("invalidFilter"),
        ),
        (
            "GET",
            "/Users?filter=title%20gt%20true".into(),
            None,
            400,
            Some("invalidFilter"),
        ),
        (
            "GET",
            "/Users?count=ten".into(),
            None,
            400,
            Some("invalidValue"),
        ),
        (
            "GET",
            "/Users?sortBy=userName".into(),
            None,
            400,
            Some("invalidValue"),
        ),
        (
            "POST",
            "/Users".into(),
            Some(json!({"userName": "x"})),
            400,
            Some("invalidValue"),
        ),
        (
            "POST",
            "/Users".into(),
            Some(json!({"schemas": [USER]})),
            400,
            Some("invalidValue"),
        ),
        (
            "POST",
            "/Users".into(),
            Some(json!({"schemas": [USER], "userName": "ALICE.A"})),
            409,
            Some("uniqueness"),
        ),
        (
            "POST",
            "/Users".into(),
            Some(json!({"schemas": [USER], "userName": "b", "active": 3})),
            400,
            Some("invalidValue"),
        ),
        (
            "POST",
            "/Users".into(),
            Some(json!({"schemas": [USER], "userName": "b", "urn:evil:ext": {}})),
            400,
            Some("invalidValue"),
        ),
        (
            "PATCH",
            format!("/Users/{id}"),
            Some(json!({"Operations": [{"op": "add", "path": "title", "value": "x"}]})),
            400,
            Some("invalidSyntax"),
        ),
        (
            "PATCH",
            format!("/Users/{id}"),
            Some(json!({"schemas": [PATCH], "Operations": [{"op": "remove"}]})),
            400,
            Some("noTarget"),
        ),
        (
            "PATCH",
            format!("/Users/{id}"),
            Some(
                json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "emails[type", "value": 1}]}),
            ),
            400,
            Some("invalidPath"),
        ),
        (
            "PATCH",
            format!("/Users/{id}"),
            Some(
                json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "x"}]}),
            ),
            400,
            Some("noTarget"),
        ),
        (
            "PATCH",
            format!("/Users/{id}"),
            Some(
                json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "userName", "value": ""}]}),
            ),
            400,
            Some("invalidValue"),
        ),
        (
            "PUT",
            "/Users/nope".into(),
            Some(json!({"schemas": [USER], "userName": "z"})),
            404,
            None,
        ),
        ("DELETE", "/Users/nope".into(), None, 404, None),
        ("GET", "/Nope".into(), None, 404, None),
        (
            "POST",
            "/Groups".into(),
            Some(json!({"schemas": [GROUP], "displayName": "g", "members": [{"value": "nope"}]})),
            400,
            Some("invalidValue"),
        ),
    ];
    for (m, path, body, status, t) in cases {
        let (st, v) = s.call(m, &path, body).await;
        assert_scim_error(st, &v, status, t);
    }
    // not JSON at all; an array; too large
    for (body, status) in [
        ("{not json".to_owned(), 400),
        ("[1]".to_owned(), 400),
        ("x".repeat(2 << 20), 413),
    ] {
        let r = s
            .http
            .post(format!("{}/Users", s.base))
            .bearer_auth(&s.token)
            .header("content-type", "application/scim+json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
    }
    // a discovery endpoint does not take writes
    let (st, _) = s.call("DELETE", "/Schemas", None).await;
    assert_eq!(st, 405);
    // nothing changed
    assert_eq!(
        s.call("GET", "/Users", None).await.1["totalResults"],
        before["totalResults"]
    );
    let (_, a) = s.call("GET", &format!("/Users/{id}"), None).await;
    assert_eq!(a["title"], "Trader");
}

/// SCIM drives standing: `active: false` suspends (no keys, no server
/// session), `active: true` restores, DELETE disables for good and revokes
/// every device while the history stays. Each change is in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_changes_reach_keys_sessions_and_the_audit_log() {
    let w = World::new().await;
    let s = Scim::new(&w).await;
    // the admin made bob; SCIM adopts his account by userName
    let bob = w.user("bob").await;
    let alice = w.user("alice").await;
    let settings = cloister_proto::room::RoomSettings {
        name: "desk".into(),
        ..Default::default()
    };
    let room = alice
        .create_room(settings, &[bob.user().clone()])
        .await
        .unwrap();
    alice.send_text(&room, "before").await.unwrap();
    let v = s
        .create_user(
            "bob@acme",
            json!({"displayName": "Bob B", "title": "Trader"}),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    let hits = alice.directory_search("bob trader", 10).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(&hits[0].user, bob.user());
    assert_eq!(hits[0].display_name, "Bob B");

    let deactivate =
        json!({"schemas": [PATCH], "Operations": [{"op": "replace", "value": {"active": false}}]});
    let (st, _) = s
        .call("PATCH", &format!("/Users/{id}"), Some(deactivate))
        .await;
    assert_eq!(st, 200);
    let e = bob.read(&room, 10, None).await.unwrap_err();
    assert_eq!(e.code(), Some("user_disabled"), "{e}");
    // the server learns it from the KM itself (no admin device forwards it)
    let raw_login = wait_for(|| async { bob.list_rooms().await.is_err() }).await;
    assert!(raw_login, "the server still lets a suspended user in");
    assert!(alice.directory_search("bob", 10).await.unwrap().is_empty());

    let activate = json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": "True"}]});
    let (st, v) = s
        .call("PATCH", &format!("/Users/{id}"), Some(activate))
        .await;
    assert_eq!((st, v["active"].clone()), (200, json!(true)), "{v}");
    assert!(wait_for(|| async { bob.list_rooms().await.is_ok() }).await);
    assert_eq!(bob.read(&room, 10, None).await.unwrap().len(), 1);

    let (st, _) = s.call("DELETE", &format!("/Users/{id}"), None).await;
    assert_eq!(st, 204);
    let (st, v) = s.call("GET", &format!("/Users/{id}"), None).await;
    assert_scim_error(st, &v, 404, None);
    let users = w.admin.admin_list_users().await.unwrap();
    let b = users.iter().find(|u| &u.user == bob.user()).unwrap();
    assert_eq!(b.status, "disabled");
    assert!(
        b.devices.iter().all(|d| d.status == "revoked"),
        "{:?}",
        b.devices
    );
    // the history stays: alice still reads what bob could
    assert_eq!(alice.read(&room, 10, None).await.unwrap().len(), 1);
    let kinds: Vec<String> = w
        .admin
        .audit_list(0, 1000, None, None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r, _)| r.event.kind().to_owned())
        .collect();
    for k in [
        "scim_token_issued",
        "directory_changed",
        "user_disabled",
        "user_enabled",
        "device_revoked",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
    // the bearer token is nowhere in the audit log or the KM's files
    for (_, _, data) in w
        .admin
        .audit_list(0, 10_000, None, None, None)
        .await
        .unwrap()
    {
        assert!(!common::contains(&data, s.token.as_bytes()));
    }
    for (path, bytes) in common::files_under(&w.dir.path().join("km")) {
        assert!(
            !common::contains(&bytes, s.token.as_bytes()),
            "token in {}",
            path.display()
        );
    }
}

async fn wait_for<F, Fut>(f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}
