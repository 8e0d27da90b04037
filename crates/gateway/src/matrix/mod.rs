//! The Matrix connector: the gateway is a Matrix application service. The
//! homeserver pushes it transactions of events (`appservice`); it acts on
//! the homeserver as puppeted users of its exclusive namespace, one per
//! Cloister user (`@cloister_alice=40acme:hs`), through the client-server
//! API with its `as_token`.

mod appservice;
mod names;

use crate::connector::{Body, Connector, ConnectorError, Delivery, Sink};
use cloister_proto::UserId;
pub use names::{ghost_localpart, user_of_localpart};
use reqwest::{Method, Url};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Largest file relayed either way.
pub const MAX_FILE: usize = 25 * 1024 * 1024;

/// How the gateway talks to one homeserver, and how it knows it.
#[derive(Clone)]
pub struct MatrixConfig {
    /// The homeserver's client-server API (`http://127.0.0.1:8008`).
    pub homeserver: String,
    /// Its server name (the part after `:` in user ids).
    pub server_name: String,
    /// The gateway's token on the homeserver.
    pub as_token: String,
    /// The homeserver's token on the gateway.
    pub hs_token: String,
    /// The service's own user (`@cloister:hs`).
    pub sender_localpart: String,
}

impl std::fmt::Debug for MatrixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the tokens are secrets: never in a log
        f.debug_struct("MatrixConfig")
            .field("homeserver", &self.homeserver)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl MatrixConfig {
    /// A new registration's tokens (random, 32 bytes each).
    pub fn generate(homeserver: &str, server_name: &str) -> Result<MatrixConfig, String> {
        let token = || -> Result<String, String> {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| e.to_string())?;
            Ok(hex::encode(b))
        };
        Ok(MatrixConfig {
            homeserver: homeserver.trim_end_matches('/').to_owned(),
            server_name: server_name.to_owned(),
            as_token: token()?,
            hs_token: token()?,
            sender_localpart: "cloister".into(),
        })
    }

    /// The application-service registration the homeserver loads
    /// (`app_service_config_files`), with `url` where the gateway listens.
    /// JSON is YAML, so no YAML writer is needed.
    pub fn registration(&self, url: &str) -> String {
        let server = regex_escape(&self.server_name);
        let v = json!({
            "id": "cloister-gateway",
            "url": url,
            "as_token": self.as_token,
            "hs_token": self.hs_token,
            "sender_localpart": self.sender_localpart,
            "rate_limited": false,
            "namespaces": {
                "users": [{"exclusive": true, "regex": format!("@{}.*:{server}", names::PREFIX)}],
                "aliases": [],
                "rooms": []
            }
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

fn regex_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// The Matrix connector.
pub struct Matrix {
    cfg: MatrixConfig,
    http: reqwest::Client,
    registered: Mutex<HashSet<String>>,
    joined: Mutex<HashSet<(String, String)>>,
}

impl Matrix {
    pub fn new(cfg: MatrixConfig, http: reqwest::Client) -> Arc<Matrix> {
        Arc::new(Matrix {
            cfg,
            http,
            registered: Mutex::new(HashSet::new()),
            joined: Mutex::new(HashSet::new()),
        })
    }

    pub fn config(&self) -> &MatrixConfig {
        &self.cfg
    }

    /// The Matrix user that stands for a Cloister user.
    pub fn ghost(&self, user: &UserId) -> String {
        format!("@{}:{}", ghost_localpart(user), self.cfg.server_name)
    }

    /// The Cloister user a Matrix user of the namespace stands for.
    pub fn user_of_ghost(&self, mxid: &str) -> Option<UserId> {
        let rest = mxid.strip_prefix('@')?;
        let (local, server) = rest.split_once(':')?;
        if server != self.cfg.server_name {
            return None;
        }
        user_of_localpart(local)
    }

    /// A Matrix user of the gateway's own namespace (a ghost or the bot).
    pub fn is_ours(&self, mxid: &str) -> bool {
        self.user_of_ghost(mxid).is_some()
            || mxid == format!("@{}:{}", self.cfg.sender_localpart, self.cfg.server_name)
    }

    /// The homeserver's URL with `path` (each segment escaped).
    fn url(&self, path: &[&str]) -> Result<Url, ConnectorError> {
        let mut url = Url::parse(&self.cfg.homeserver)
            .map_err(|e| ConnectorError::Permanent(format!("homeserver URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| ConnectorError::Permanent("homeserver URL cannot take a path".into()))?
            .pop_if_empty()
            .extend(path);
        Ok(url)
    }

    /// One client-server API call, acting as `as_user` (`None`: the bot).
    async fn call(
        &self,
        method: Method,
        path: &[&str],
        as_user: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, ConnectorError> {
        let mut url = self.url(path)?;
        if let Some(u) = as_user {
            url.query_pairs_mut().append_pair("user_id", u);
        }
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(&self.cfg.as_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::answer(req.send().await).await
    }

    async fn answer(r: Result<reqwest::Response, reqwest::Error>) -> Result<Value, ConnectorError> {
        let r = r.map_err(|e| ConnectorError::Transient(format!("homeserver unreachable: {e}")))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let why = format!(
            "homeserver answered {status}: {} {}",
            v["errcode"].as_str().unwrap_or(""),
            v["error"].as_str().unwrap_or("")
        );
        if status.is_server_error() || status.as_u16() == 429 {
            Err(ConnectorError::Transient(why))
        } else {
            Err(ConnectorError::Permanent(why))
        }
    }

    /// Register the ghost of `user` once (and show its Cloister name).
    async fn ensure_registered(&self, user: &UserId) -> Result<String, ConnectorError> {
        let ghost = self.ghost(user);
        if self.registered.lock().is_ok_and(|r| r.contains(&ghost)) {
            return Ok(ghost);
        }
        let local = ghost_localpart(user);
        match self
            .call(
                Method::POST,
                &["_matrix", "client", "v3", "register"],
                None,
                Some(json!({"type": "m.login.application_service", "username": local, "inhibit_login": true})),
            )
            .await
        {
            Ok(_) => {
                let _ = self
                    .call(
                        Method::PUT,
                        &["_matrix", "client", "v3", "profile", &ghost, "displayname"],
                        Some(&ghost),
                        Some(json!({"displayname": format!("{user} (Cloister)")})),
                    )
                    .await;
            }
            Err(ConnectorError::Permanent(e)) if e.contains("M_USER_IN_USE") => {}
            Err(e) => return Err(e),
        }
        if let Ok(mut r) = self.registered.lock() {
            r.insert(ghost.clone());
        }
        Ok(ghost)
    }

    /// Make sure `user`'s ghost is in `room` (invited by the opener's).
    async fn ensure_joined(
        &self,
        room: &str,
        opener: &UserId,
        user: &UserId,
    ) -> Result<String, ConnectorError> {
        let ghost = self.ensure_registered(user).await?;
        let key = (room.to_owned(), ghost.clone());
        if self.joined.lock().is_ok_and(|j| j.contains(&key)) {
            return Ok(ghost);
        }
        if opener != user {
            let inviter = self.ensure_registered(opener).await?;
            match self
                .call(
                    Method::POST,
                    &["_matrix", "client", "v3", "rooms", room, "invite"],
                    Some(&inviter),
                    Some(json!({"user_id": ghost})),
                )
                .await
            {
                Ok(_) => {}
                // already invited or joined
                Err(ConnectorError::Permanent(e)) if e.contains("already") => {}
                Err(e) => return Err(e),
            }
        }
        self.call(
            Method::POST,
            &["_matrix", "client", "v3", "join", room],
            Some(&ghost),
            Some(json!({})),
        )
        .await?;
        if let Ok(mut j) = self.joined.lock() {
            j.insert(key);
        }
        Ok(ghost)
    }

    async fn upload(&self, ghost: &str, name: &str, data: &[u8]) -> Result<String, ConnectorError> {
        let mut url = self.url(&["_matrix", "media", "v3", "upload"])?;
        url.query_pairs_mut()
            .append_pair("filename", name)
            .append_pair("user_id", ghost);
        let r = self
            .http
            .post(url)
            .bearer_auth(&self.cfg.as_token)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await;
        let v = Self::answer(r).await?;
        v["content_uri"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ConnectorError::Permanent("the upload gave no content URI".into()))
    }

    /// The bytes of an `mxc://server/id` file (at most [`MAX_FILE`]).
    pub(crate) async fn download(&self, mxc: &str) -> Result<Vec<u8>, ConnectorError> {
        let rest = mxc
            .strip_prefix("mxc://")
            .ok_or_else(|| ConnectorError::Permanent(format!("{mxc:?} is not an mxc:// URI")))?;
        let (server, id) = rest
            .split_once('/')
            .ok_or_else(|| ConnectorError::Permanent(format!("{mxc:?} is malformed")))?;
        let url = self.url(&["_matrix", "client", "v1", "media", "download", server, id])?;
        let r = self
            .http
            .get(url)
            .bearer_auth(&self.cfg.as_token)
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("homeserver unreachable: {e}")))?;
        if !r.status().is_success() {
            return Self::answer(Ok(r)).await.map(|_| Vec::new());
        }
        if r.content_length().is_some_and(|n| n > MAX_FILE as u64) {
            return Err(ConnectorError::Permanent(format!(
                "the file is over {MAX_FILE} bytes"
            )));
        }
        let b = r
            .bytes()
            .await
            .map_err(|e| ConnectorError::Transient(format!("download cut short: {e}")))?;
        if b.len() > MAX_FILE {
            return Err(ConnectorError::Permanent(format!(
                "the file is over {MAX_FILE} bytes"
            )));
        }
        Ok(b.to_vec())
    }
}

#[async_trait::async_trait]
impl Connector for Matrix {
    fn network(&self) -> &str {
        "matrix"
    }

    fn contact(&self, address: &str) -> Result<String, ConnectorError> {
        let a = address.trim();
        let ok = a.len() <= 255
            && a.strip_prefix('@')
                .and_then(|r| r.split_once(':'))
                .is_some_and(|(l, s)| {
                    !l.is_empty()
                        && !s.is_empty()
                        && l.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b)
                        })
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                });
        if !ok {
            return Err(ConnectorError::Permanent(format!(
                "{address:?} is not a Matrix user id (@name:server)"
            )));
        }
        if self.is_ours(a) {
            return Err(ConnectorError::Permanent(format!(
                "{a} stands for a Cloister user on this homeserver; talk with them in Cloister"
            )));
        }
        Ok(a.to_owned())
    }

    async fn open(&self, user: &UserId, contact: &str) -> Result<String, ConnectorError> {
        let ghost = self.ensure_registered(user).await?;
        let v = self
            .call(
                Method::POST,
                &["_matrix", "client", "v3", "createRoom"],
                Some(&ghost),
                Some(json!({
                    "invite": [contact],
                    "is_direct": true,
                    "preset": "trusted_private_chat",
                })),
            )
            .await?;
        let room = v["room_id"]
            .as_str()
            .ok_or_else(|| ConnectorError::Permanent("createRoom gave no room id".into()))?
            .to_owned();
        if let Ok(mut j) = self.joined.lock() {
            j.insert((room.clone(), ghost));
        }
        Ok(room)
    }

    async fn send(
        &self,
        conversation: &str,
        opener: &UserId,
        user: &UserId,
        id: &str,
        body: &Body,
    ) -> Result<Delivery, ConnectorError> {
        let ghost = self.ensure_joined(conversation, opener, user).await?;
        let content = match body {
            Body::Text { text } => json!({"msgtype": "m.text", "body": text}),
            Body::File { name, data } => {
                if data.len() > MAX_FILE {
                    return Err(ConnectorError::Permanent(format!(
                        "{name} is over {MAX_FILE} bytes"
                    )));
                }
                let uri = self.upload(&ghost, name, data).await?;
                json!({"msgtype": "m.file", "body": name, "url": uri, "info": {"size": data.len()}})
            }
        };
        // the Cloister message id is the transaction id: a resend after a
        // crash is the same event
        self.call(
            Method::PUT,
            &[
                "_matrix",
                "client",
                "v3",
                "rooms",
                conversation,
                "send",
                "m.room.message",
                id,
            ],
            Some(&ghost),
            Some(content),
        )
        .await?;
        Ok(Delivery::Accepted)
    }

    async fn accept(&self, conversation: &str, user: &UserId) -> Result<(), ConnectorError> {
        let ghost = self.ensure_registered(user).await?;
        self.call(
            Method::POST,
            &["_matrix", "client", "v3", "join", conversation],
            Some(&ghost),
            Some(json!({})),
        )
        .await?;
        if let Ok(mut j) = self.joined.lock() {
            j.insert((conversation.to_owned(), ghost));
        }
        Ok(())
    }

    async fn decline(
        &self,
        conversation: &str,
        user: &UserId,
        reason: &str,
    ) -> Result<(), ConnectorError> {
        let ghost = self.ensure_registered(user).await?;
        self.call(
            Method::POST,
            &["_matrix", "client", "v3", "rooms", conversation, "leave"],
            Some(&ghost),
            Some(json!({"reason": reason})),
        )
        .await?;
        Ok(())
    }

    async fn notice(
        &self,
        conversation: &str,
        user: &UserId,
        text: &str,
    ) -> Result<(), ConnectorError> {
        let ghost = self.ensure_registered(user).await?;
        let mut txn = [0u8; 16];
        getrandom::fill(&mut txn).map_err(|e| ConnectorError::Transient(e.to_string()))?;
        self.call(
            Method::PUT,
            &[
                "_matrix",
                "client",
                "v3",
                "rooms",
                conversation,
                "send",
                "m.room.message",
                &hex::encode(txn),
            ],
            Some(&ghost),
            Some(json!({"msgtype": "m.notice", "body": text})),
        )
        .await?;
        Ok(())
    }

    fn webhook(self: Arc<Self>, sink: Arc<dyn Sink>) -> axum::Router {
        appservice::router(self, sink)
    }
}
