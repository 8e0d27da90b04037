//! A malicious messaging server for tests: a proxy in front of the real one
//! that can rewrite any JSON answer (withhold, replay, reorder, drop,
//! rename, rewrite) and any live-stream frame (drop, duplicate, inject).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};

/// Rewrites a JSON answer to `GET path?query` in place.
pub type JsonRule = Arc<dyn Fn(&str, &mut serde_json::Value) + Send + Sync>;
/// Maps one live-stream text frame to the frames the client gets instead.
pub type WsRule = Arc<dyn Fn(String) -> Vec<String> + Send + Sync>;

#[derive(Clone)]
struct Rules {
    json: Arc<Mutex<Option<JsonRule>>>,
    ws: Arc<Mutex<Option<WsRule>>>,
    /// Every JSON body a client POSTed, by path (what was really sent).
    posted: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    /// Bumped to close every live stream relayed so far.
    cut: Arc<tokio::sync::watch::Sender<u64>>,
}

pub struct Proxy {
    pub url: String,
    rules: Rules,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        Self::failover(&[upstream]).await
    }

    /// An honest load balancer over several nodes: each request and each
    /// live stream goes to the first node that takes the connection (a dead
    /// node refuses it) and does not answer 503 (a standby); a stream whose
    /// node dies is closed, and the client reconnects through the balancer.
    pub async fn failover(upstreams: &[&str]) -> Proxy {
        let rules = Rules {
            json: Arc::default(),
            ws: Arc::default(),
            posted: Arc::default(),
            cut: Arc::new(tokio::sync::watch::channel(0).0),
        };
        let upstream: Arc<Vec<String>> = Arc::new(
            upstreams
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
        );
        let (r, u) = (rules.clone(), upstream.clone());
        let app = axum::Router::new().fallback(move |req: Request| {
            let (r, u) = (r.clone(), u.clone());
            async move { forward(r, u, req).await }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Proxy { url, rules }
    }

    /// From now on, rewrite JSON answers with `f(path and query, &mut body)`.
    pub fn on_json(&self, f: impl Fn(&str, &mut serde_json::Value) + Send + Sync + 'static) {
        *self.rules.json.lock().unwrap() = Some(Arc::new(f));
    }

    /// From now on, map each live-stream frame through `f`.
    pub fn on_ws(&self, f: impl Fn(String) -> Vec<String> + Send + Sync + 'static) {
        *self.rules.ws.lock().unwrap() = Some(Arc::new(f));
    }

    /// Close every live stream open now, as a dying node would (new
    /// streams are relayed as before).
    pub fn cut(&self) {
        self.rules.cut.send_modify(|n| *n += 1);
    }

    /// Back to an honest relay.
    pub fn honest(&self) {
        *self.rules.json.lock().unwrap() = None;
        *self.rules.ws.lock().unwrap() = None;
    }

    /// JSON bodies POSTed to paths ending in `suffix`.
    pub fn posted(&self, suffix: &str) -> Vec<serde_json::Value> {
        self.rules
            .posted
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.ends_with(suffix))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

async fn forward(rules: Rules, upstreams: Arc<Vec<String>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    if path == "/v1/ws" {
        let headers = parts.headers.clone();
        let Ok(up) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        return up.on_upgrade(move |sock| relay_ws(rules, upstreams, pq, headers, sock));
    }
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    if parts.method == axum::http::Method::POST
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
    {
        rules.posted.lock().unwrap().push((path.clone(), v));
    }
    let client = cloister_tls::http_client();
    let mut answer = None;
    for upstream in upstreams.iter() {
        let mut rb = client.request(parts.method.clone(), format!("{upstream}{pq}"));
        for (k, v) in &parts.headers {
            if k == "authorization" || k == "content-type" {
                rb = rb.header(k, v);
            }
        }
        match rb.body(bytes.to_vec()).send().await {
            // a standby (a KM without the lease): the next one may be active
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                answer = Some(r);
                continue;
            }
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(e) if e.is_connect() => continue, // a dead node
            Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
        }
    }
    let Some(r) = answer else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = r.status();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let mut out = r.bytes().await.unwrap().to_vec();
    let rule = rules.json.lock().unwrap().clone();
    if let Some(rule) = rule
        && parts.method == axum::http::Method::GET
        && ctype.starts_with("application/json")
        && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&out)
    {
        rule(&pq, &mut v);
        out = serde_json::to_vec(&v).unwrap();
    }
    let mut resp = Response::new(Body::from(out));
    *resp.status_mut() = status;
    if !ctype.is_empty() {
        resp.headers_mut()
            .insert("content-type", ctype.parse().unwrap());
    }
    resp
}

async fn relay_ws(
    rules: Rules,
    upstreams: Arc<Vec<String>>,
    pq: String,
    headers: HeaderMap,
    mut sock: axum::extract::ws::WebSocket,
) {
    use tokio_tungstenite::tungstenite::Message as TMessage;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut conn = None;
    for upstream in upstreams.iter() {
        let url = super::ws_url(upstream).replacen("/v1/ws", &pq, 1);
        let mut req = url.into_client_request().unwrap();
        if let Some(a) = headers.get("authorization") {
            req.headers_mut().insert("authorization", a.clone());
        }
        if let Ok(up) = super::ws_connect(req).await {
            conn = Some(up);
            break;
        }
    }
    let Some(mut up) = conn else {
        return;
    };
    let mut cut = rules.cut.subscribe();
    loop {
        tokio::select! {
            _ = cut.changed() => return,
            m = up.next() => match m {
                Some(Ok(TMessage::Text(t))) => {
                    let rule = rules.ws.lock().unwrap().clone();
                    let frames = match rule {
                        Some(f) => f(t.to_string()),
                        None => vec![t.to_string()],
                    };
                    for f in frames {
                        if sock.send(AxMessage::Text(f.into())).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            m = sock.recv() => match m {
                Some(Ok(AxMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
