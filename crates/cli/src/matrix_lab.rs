//! A firm's gateway bridged to a real Synapse on loopback, with one Matrix
//! user: what `cloister demo` and `cloister bench-gateway` run (the
//! integration tests drive the same parts one by one).

use crate::BoxError;
use crate::synapse::Synapse;
use cloister_client::Client;
use cloister_gateway::matrix::{Matrix, MatrixConfig};
use cloister_gateway::{Connector, Gateway};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running gateway and homeserver, stopped when dropped.
pub struct MatrixLab {
    pub synapse: Synapse,
    pub gateway: Arc<Gateway>,
    /// The Matrix user and their access token.
    pub mat: (String, String),
    pub http: reqwest::Client,
    since: Mutex<Option<String>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for MatrixLab {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A Matrix room id or user id as one URL path segment.
pub fn enc(s: &str) -> String {
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

impl MatrixLab {
    /// Start Synapse (from `python`) in `dir` and the gateway for
    /// `gw_client` (a device of the firm's gateway user).
    pub async fn start(
        python: &Path,
        dir: &Path,
        gw_client: Client,
    ) -> Result<MatrixLab, BoxError> {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut cfg = MatrixConfig::generate("http://unset", "localhost")?;
        let synapse = Synapse::start(
            python,
            &dir.join("synapse"),
            &cfg.registration(&format!("http://{listen}")),
        )
        .await?;
        cfg.homeserver = synapse.url.clone();
        let http = reqwest::Client::new();
        let mat = synapse
            .register(&http, "mat", "lab matrix password")
            .await?;
        let store = Arc::new(
            cloister_store::GatewayStore::open(&cloister_store::sqlite_url(
                &dir.join("gateway.db"),
            ))
            .await?,
        );
        let matrix: Arc<dyn Connector> = Matrix::new(cfg, http.clone());
        let gateway = Gateway::new(Arc::new(gw_client), store, vec![matrix]);
        let l = tokio::net::TcpListener::bind(listen).await?;
        let router = gateway.router();
        let serve = tokio::spawn(async move {
            let _ = axum::serve(l, router).await;
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(gateway.clone().run(Duration::from_millis(300), async move {
            let _ = stopped.await;
        }));
        Ok(MatrixLab {
            synapse,
            gateway,
            mat,
            http,
            since: Mutex::new(None),
            stop: Some(stop),
            tasks: vec![serve, relay],
        })
    }

    /// A client-server call as the Matrix user.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, BoxError> {
        let r = self
            .http
            .request(method, format!("{}{path}", self.synapse.url))
            .bearer_auth(&self.mat.1)
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

    /// Rooms the Matrix user was invited to since the last call (an
    /// incremental sync: Synapse caches an identical one for a while).
    pub async fn invites(&self) -> Result<Vec<String>, BoxError> {
        let since = self.since.lock().map(|s| s.clone()).unwrap_or_default();
        let path = match since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=1000&since={}", enc(&s)),
            None => "/_matrix/client/v3/sync?timeout=0".into(),
        };
        let v = self.call(reqwest::Method::GET, &path, Value::Null).await?;
        if let (Some(n), Ok(mut s)) = (v["next_batch"].as_str(), self.since.lock()) {
            *s = Some(n.to_owned());
        }
        Ok(v["rooms"]["invite"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// Wait (at most 30 s) for an invitation and join it.
    pub async fn join_next_invite(&self) -> Result<String, BoxError> {
        for _ in 0..60 {
            if let Some(r) = self.invites().await?.into_iter().next() {
                self.call(
                    reqwest::Method::POST,
                    &format!("/_matrix/client/v3/join/{}", enc(&r)),
                    json!({}),
                )
                .await?;
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("no Matrix invitation within 30 s".into())
    }

    /// The room's messages from others than the Matrix user, oldest first:
    /// (sender, body, origin_server_ts).
    pub async fn messages(&self, room: &str) -> Result<Vec<(String, String, u64)>, BoxError> {
        let mut out = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000",
                enc(room)
            );
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", enc(f)));
            }
            let v = self.call(reqwest::Method::GET, &path, Value::Null).await?;
            let chunk = v["chunk"].as_array().cloned().unwrap_or_default();
            for e in &chunk {
                if e["type"] == "m.room.message" && e["sender"] != self.mat.0.as_str() {
                    out.push((
                        e["sender"].as_str().unwrap_or("").to_owned(),
                        e["content"]["body"].as_str().unwrap_or("").to_owned(),
                        e["origin_server_ts"].as_u64().unwrap_or(0),
                    ));
                }
            }
            match v["end"].as_str() {
                Some(e) if !chunk.is_empty() => from = Some(e.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// The Matrix user sends a text; returns its event id.
    pub async fn send(&self, room: &str, txn: &str, text: &str) -> Result<String, BoxError> {
        let v = self
            .call(
                reqwest::Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                    enc(room),
                    enc(txn)
                ),
                json!({"msgtype": "m.text", "body": text}),
            )
            .await?;
        Ok(v["event_id"].as_str().unwrap_or("").to_owned())
    }

    /// One event's `origin_server_ts`.
    pub async fn event_ts(&self, room: &str, event: &str) -> Result<u64, BoxError> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(room),
                    enc(event)
                ),
                Value::Null,
            )
            .await?;
        Ok(v["origin_server_ts"].as_u64().unwrap_or(0))
    }
}
