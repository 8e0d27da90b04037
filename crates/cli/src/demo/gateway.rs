//! The demo's gateway: alice talks with a contact on Matrix (a real
//! Synapse on loopback) through the firm's gateway, and the compliance
//! officer finds both sides of it. Without Synapse the demo says how to
//! install it and goes on.

use super::{Demo, enrol_as};
use crate::synapse::Synapse;
use crate::{BoxError, Stack};
use cloister_client::Client;
use cloister_gateway::matrix::{Matrix, MatrixConfig};
use cloister_gateway::{Connector, Gateway};
use cloister_proto::controls::Entitlement;
use cloister_proto::km::Role;
use cloister_proto::server::Content;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Cast<'a> {
    pub stack: &'a Stack,
    pub admin: &'a Client,
    pub alice: &'a Client,
    pub olivia: &'a Client,
    pub clients: &'a Path,
    pub dir: &'a Path,
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A Matrix client-server call as the Matrix user.
async fn mx(
    http: &reqwest::Client,
    hs: &Synapse,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Result<Value, BoxError> {
    let r = http
        .request(method, format!("{}{path}", hs.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("matrix {path}: {status} {v}").into());
    }
    Ok(v)
}

/// Poll `f` for up to 30 s.
async fn within<T, F, Fut>(mut f: F) -> Result<Option<T>, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, BoxError>>,
{
    for _ in 0..300 {
        if let Some(t) = f().await? {
            return Ok(Some(t));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

pub(super) async fn run(
    d: &mut Demo,
    c: Cast<'_>,
    secrets: &mut Vec<String>,
) -> Result<(), BoxError> {
    d.section("A contact on Matrix, through the firm's gateway");
    let Some(py) = crate::synapse::python() else {
        d.say(
            "note",
            format!(
                "Synapse is not installed, so this part is skipped: scripts/tools installs it (PyPI matrix-synapse into {})",
                crate::synapse::VENV
            ),
        );
        return Ok(());
    };
    // the gateway: a device of the firm's gateway user, listening for the
    // homeserver
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut cfg = MatrixConfig::generate("http://unset", "localhost")?;
    let hs = Synapse::start(
        &py,
        &c.dir.join("synapse"),
        &cfg.registration(&format!("http://{listen}")),
    )
    .await?;
    cfg.homeserver = hs.url.clone();
    let http = reqwest::Client::new();
    let (mat, token) = hs.register(&http, "mat", "demo matrix password").await?;
    d.say(
        "mat",
        format!(
            "a Matrix user ({mat}) on a Synapse homeserver at {}",
            hs.url
        ),
    );
    let gw_client = enrol_as(c.stack, c.admin, c.clients, "gateway", &[Role::Gateway]).await?;
    gw_client.use_registered_vault().await?;
    let gw_user = gw_client.user().clone();
    for u in [c.alice.user(), &gw_user] {
        c.admin
            .admin_entitle(Some(u), None, &[Entitlement::Federation], &[])
            .await?;
    }
    d.say(
        "admin",
        "enrols the gateway (role gateway) and grants alice and it `federation`",
    );
    let store = Arc::new(
        cloister_store::GatewayStore::open(&cloister_store::sqlite_url(&c.dir.join("gateway.db")))
            .await?,
    );
    let matrix: Arc<dyn Connector> = Matrix::new(cfg, http.clone());
    let gw = Gateway::new(Arc::new(gw_client), store, vec![matrix]);
    let l = tokio::net::TcpListener::bind(listen).await?;
    let router = gw.router();
    let serve = tokio::spawn(async move { axum::serve(l, router).await });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(gw.clone().run(Duration::from_millis(300), async move {
        let _ = stopped.await;
    }));

    let room = c.alice.open_bridge("matrix", &mat, &gw_user, &[]).await?;
    let t1 = "Gateway: can you confirm the 5y at 2.41?";
    c.alice.send_text(&room, t1).await?;
    secrets.push(t1.into());
    d.say(
        "alice",
        format!("opens a bridged room with {mat} and says  {t1}"),
    );
    // incremental sync (Synapse caches an identical initial one a while)
    let since = std::sync::Mutex::new(None::<String>);
    let invited = within(|| async {
        let path = match since.lock().map(|s| s.clone()).unwrap_or_default() {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=1000&since={}", enc(&s)),
            None => "/_matrix/client/v3/sync?timeout=0".into(),
        };
        let v = mx(&http, &hs, &token, reqwest::Method::GET, &path, Value::Null).await?;
        if let (Some(n), Ok(mut s)) = (v["next_batch"].as_str(), since.lock()) {
            *s = Some(n.to_owned());
        }
        Ok(v["rooms"]["invite"]
            .as_object()
            .and_then(|o| o.keys().next().cloned()))
    })
    .await?;
    let Some(mroom) = invited else {
        d.check(false, "the Matrix user is invited by alice's puppet");
        return Ok(());
    };
    mx(
        &http,
        &hs,
        &token,
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/join/{}", enc(&mroom)),
        json!({}),
    )
    .await?;
    let seen = within(|| async {
        let v = mx(
            &http,
            &hs,
            &token,
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=50",
                enc(&mroom)
            ),
            Value::Null,
        )
        .await?;
        Ok(v["chunk"].as_array().and_then(|a| {
            a.iter()
                .find(|e| e["type"] == "m.room.message" && e["sender"] != mat.as_str())
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["sender"].as_str().unwrap_or(""),
                        e["content"]["body"].as_str().unwrap_or("")
                    )
                })
        }))
    })
    .await?;
    d.say(
        "mat",
        format!("sees on Matrix  {}", seen.as_deref().unwrap_or("nothing")),
    );
    d.check(
        seen.is_some_and(|s| s.ends_with(t1)),
        "alice's message reached the Matrix user, from her puppet",
    );
    let t2 = "Confirmed from Matrix: 2.41 on the 5y";
    secrets.push(t2.into());
    mx(
        &http,
        &hs,
        &token,
        reqwest::Method::PUT,
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/demo1",
            enc(&mroom)
        ),
        json!({"msgtype": "m.text", "body": t2}),
    )
    .await?;
    let back = within(|| async {
        Ok(c.alice
            .read(&room, 50, None)
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .find_map(|m| match &m.content {
                Content::Relayed { from, content, .. } => match &**content {
                    Content::Text { text } => Some((from.clone(), text.clone())),
                    _ => None,
                },
                _ => None,
            }))
    })
    .await?;
    if let Some((from, text)) = &back {
        d.say("alice", format!("reads  {from} (via the gateway): {text}"));
    }
    d.check(
        back.as_ref().is_some_and(|(f, t)| *f == mat && t == t2),
        "the Matrix user's answer reached alice, marked as relayed from them",
    );
    let who = c.admin.who_has_keys(&room).await?;
    d.say(
        "auditor",
        format!(
            "who has the bridged room's keys: {}",
            who.iter()
                .map(|k| format!("{}{}", k.user, if k.gateway { " (GATEWAY)" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    d.check(
        who.iter().any(|k| k.gateway && k.user == gw_user),
        "the gateway's key release is on the record, flagged as the gateway",
    );
    let now = cloister_proto::now_millis();
    let hits = within(|| async {
        let h = c
            .olivia
            .compliance_search(
                &[(cloister_crypto::blind::Field::Participant, mat.clone())],
                now - 3_600_000,
                now + 3_600_000,
                10,
            )
            .await?;
        Ok((!h.is_empty()).then_some(h))
    })
    .await?
    .unwrap_or_default();
    d.say(
        "olivia",
        format!(
            "searches the archive for participant {mat}: {} hit(s)",
            hits.len()
        ),
    );
    d.check(
        hits.iter().any(|h| h.room == room),
        "the compliance officer finds the conversation with the Matrix user",
    );
    let _ = stop.send(());
    let _ = relay.await;
    serve.abort();
    drop(hs);
    Ok(())
}
