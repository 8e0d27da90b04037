//! A witness any party can run (the firm's vault host, its messaging
//! operator, an auditor): it follows logs by their verifier keys and
//! cosigns each new checkpoint only if it is consistent with the last one
//! it cosigned, so one log cannot show two histories to people who require
//! its cosignature.
//!
//! ```text
//!  POST /add-checkpoint  (C2SP tlog-witness)  ─▶ witness_step (cloister-log, pure)
//!        ─▶ compare-and-set of (size, root) in SQLite ─▶ cosignature line
//!  GET  /v1/info  ─▶ {name, key}
//! ```
#![forbid(unsafe_code)]

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloister_crypto::KmSigner;
use cloister_log::NoteVerifier;
use cloister_log::witness::{AddCheckpoint, Cosigner, WitnessError, note_text, witness_step};
use cloister_store::WitnessStore;
use std::path::Path;
use std::sync::Arc;

const META_NAME: &str = "name";
const META_KEY: &str = "key";
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WitnessOpenError {
    #[error("storage: {0}")]
    Store(#[from] cloister_store::StoreError),
    #[error("the witness at {0} is not initialised; run `cloister witness init` first")]
    NotInitialised(String),
    #[error("the witness at {0} is already initialised")]
    AlreadyInitialised(String),
    #[error("invalid witness name {0:?} (no spaces or '+')")]
    BadName(String),
    #[error("{0}")]
    Crypto(#[from] cloister_crypto::CryptoError),
    #[error("corrupt witness state: {0}")]
    Corrupt(&'static str),
    #[error("cannot use {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("bad log key: {0}")]
    LogKey(#[from] cloister_log::NoteError),
}

/// A running witness.
pub struct Witness {
    name: String,
    signer: KmSigner,
    store: WitnessStore,
    /// One add-checkpoint at a time: the check and the update are atomic.
    lock: tokio::sync::Mutex<()>,
    metrics: Arc<cloister_http::ops::Metrics>,
}

impl Witness {
    /// Open the witness in `dir`; with `init`, create it under that name.
    pub async fn open_dir(dir: &Path, init: Option<&str>) -> Result<Witness, WitnessOpenError> {
        std::fs::create_dir_all(dir).map_err(|e| WitnessOpenError::Io {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let store =
            WitnessStore::open(&cloister_store::sqlite_url(&dir.join("witness.db"))).await?;
        if let Some(name) = init {
            if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
                return Err(WitnessOpenError::BadName(name.to_owned()));
            }
            if store.meta(META_NAME).await?.is_some() {
                return Err(WitnessOpenError::AlreadyInitialised(
                    dir.display().to_string(),
                ));
            }
            let k = KmSigner::generate()?;
            store.init_meta(META_KEY, k.secret_bytes().expose()).await?;
            store.init_meta(META_NAME, name.as_bytes()).await?;
        }
        let name = store
            .meta(META_NAME)
            .await?
            .ok_or_else(|| WitnessOpenError::NotInitialised(dir.display().to_string()))?;
        let name = String::from_utf8(name).map_err(|_| WitnessOpenError::Corrupt("name"))?;
        let key = store
            .meta(META_KEY)
            .await?
            .ok_or(WitnessOpenError::Corrupt("key"))?;
        Ok(Witness {
            name,
            signer: KmSigner::from_secret(&key)?,
            store,
            lock: tokio::sync::Mutex::new(()),
            metrics: cloister_http::ops::Metrics::new("witness"),
        })
    }

    /// This witness's metrics registry (for the operations listener).
    pub fn metrics(&self) -> &Arc<cloister_http::ops::Metrics> {
        &self.metrics
    }

    /// Ready when its database answers.
    pub fn ready_check(self: &Arc<Self>) -> cloister_http::ops::ReadyCheck {
        let w = Arc::downgrade(self);
        cloister_http::ops::ready_check(move || {
            let w = w.upgrade();
            async move {
                let w = w.ok_or("the witness is stopping")?;
                w.store.ping().await.map_err(|e| format!("database: {e}"))
            }
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This witness's cosignature verifier key (what clients configure).
    pub fn key(&self) -> String {
        Cosigner {
            name: &self.name,
            key: &self.signer,
        }
        .key_string()
    }

    /// Follow a log, given its checkpoint verifier key.
    pub async fn follow(&self, log_key: &str) -> Result<(), WitnessOpenError> {
        let v = NoteVerifier::parse(log_key)?;
        self.store.add_log(&v.name, log_key.trim()).await?;
        tracing::info!(origin = %v.name, "witness follows a log");
        Ok(())
    }

    /// The newest checkpoint size this witness cosigned for `origin`.
    pub async fn cosigned_size(&self, origin: &str) -> Option<u64> {
        self.store
            .log(origin)
            .await
            .ok()
            .flatten()
            .map(|l| l.last.map_or(0, |(s, _)| s))
    }

    /// Handle an `add-checkpoint` body: the cosignature line, or why not.
    pub async fn add_checkpoint(&self, body: &str) -> Result<String, Refusal> {
        let req = AddCheckpoint::parse(body)?;
        let text = note_text(req.note).map_err(|_| WitnessError::Malformed("checkpoint note"))?;
        let origin = text.split('\n').next().unwrap_or("").to_owned();
        let _one = self.lock.lock().await;
        let log = self
            .store
            .log(&origin)
            .await
            .map_err(|e| Refusal::Internal(e.to_string()))?
            .ok_or_else(|| WitnessError::UnknownLog(origin.clone()))?;
        let verifier =
            NoteVerifier::parse(&log.vkey).map_err(|e| Refusal::Internal(e.to_string()))?;
        let step = witness_step(&verifier, log.last, &req);
        let cp = match step {
            Ok(cp) => cp,
            Err(e) => {
                tracing::warn!(%origin, old = req.old, "checkpoint refused: {e}");
                return Err(e.into());
            }
        };
        let old = log.last.map_or(0, |(s, _)| s);
        if !self
            .store
            .advance(&origin, old, cp.size, &cp.root)
            .await
            .map_err(|e| Refusal::Internal(e.to_string()))?
        {
            return Err(Refusal::Internal("the witness state moved".into()));
        }
        tracing::info!(%origin, size = cp.size, "checkpoint cosigned");
        Ok(Cosigner {
            name: &self.name,
            key: &self.signer,
        }
        .cosign(text, cloister_proto::now_secs()))
    }
}

impl Witness {
    /// Handle a key hand-over: `NEW-KEY\n` then an `add-checkpoint` body
    /// whose checkpoint both the followed key and the new key signed. The
    /// followed key vouches for its successor; from then on the witness
    /// follows the log under the new key (and cosigns this checkpoint).
    pub async fn hand_over(&self, body: &str) -> Result<String, Refusal> {
        let (new_key, rest) = body
            .split_once('\n')
            .ok_or(WitnessError::Malformed("no new key line"))?;
        let next =
            NoteVerifier::parse(new_key).map_err(|_| WitnessError::Malformed("new log key"))?;
        let req = AddCheckpoint::parse(rest)?;
        let text = note_text(req.note).map_err(|_| WitnessError::Malformed("checkpoint note"))?;
        let origin = text.split('\n').next().unwrap_or("").to_owned();
        if next.name != origin {
            return Err(WitnessError::Malformed("the new key names another log").into());
        }
        let _one = self.lock.lock().await;
        let log = self
            .store
            .log(&origin)
            .await
            .map_err(|e| Refusal::Internal(e.to_string()))?
            .ok_or_else(|| WitnessError::UnknownLog(origin.clone()))?;
        let current =
            NoteVerifier::parse(&log.vkey).map_err(|e| Refusal::Internal(e.to_string()))?;
        if current.public_key() == next.public_key() {
            return Err(WitnessError::Malformed("the log already uses that key").into());
        }
        // the followed key signed it, along one history...
        let cp = witness_step(&current, log.last, &req).inspect_err(|e| {
            tracing::warn!(%origin, "key hand-over refused: {e}");
        })?;
        // ...and so did the new key
        next.verify_checkpoint(req.note)
            .map_err(|_| WitnessError::BadSignature)?;
        let old = log.last.map_or(0, |(s, _)| s);
        if !self
            .store
            .hand_over(&origin, (&log.vkey, old), new_key.trim(), cp.size, &cp.root)
            .await
            .map_err(|e| Refusal::Internal(e.to_string()))?
        {
            return Err(Refusal::Internal("the witness state moved".into()));
        }
        tracing::warn!(%origin, size = cp.size, "the log handed over to a new key");
        Ok(Cosigner {
            name: &self.name,
            key: &self.signer,
        }
        .cosign(text, cloister_proto::now_secs()))
    }
}

/// A refused `add-checkpoint`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Witness(#[from] WitnessError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The one mapping of refusals to HTTP (C2SP tlog-witness status codes).
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let text = |status: StatusCode, body: String| {
            (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                body,
            )
                .into_response()
        };
        match self {
            Refusal::Witness(WitnessError::Conflict(size)) => (
                StatusCode::CONFLICT,
                [(header::CONTENT_TYPE, "text/x.tlog.size")],
                format!("{size}\n"),
            )
                .into_response(),
            Refusal::Witness(e) => {
                let status = match &e {
                    WitnessError::UnknownLog(_) => StatusCode::NOT_FOUND,
                    WitnessError::BadSignature => StatusCode::FORBIDDEN,
                    WitnessError::Fork => StatusCode::CONFLICT,
                    WitnessError::BadProof => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::BAD_REQUEST,
                };
                text(status, format!("{e}\n"))
            }
            Refusal::Internal(e) => {
                tracing::error!("witness: {e}");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; nothing was cosigned\n".into(),
                )
            }
        }
    }
}

/// The witness's name and cosigning key.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Info {
    name: String,
    /// Its verifier key (`name+id+key`), for devices' witness policies.
    key: String,
}

#[utoipa::path(
    post,
    path = "/add-checkpoint",
    tag = "witness",
    request_body(content = String, content_type = "text/plain", description = "C2SP tlog-witness add-checkpoint request: old size, consistency proof, signed checkpoint"),
    responses(
        (status = 200, description = "the cosignature line", content_type = "text/plain", body = String),
        (status = 409, description = "the size this witness last cosigned", content_type = "text/x.tlog.size", body = String),
        (status = "default", description = "refused, with the reason", content_type = "text/plain", body = String)
    )
)]
async fn add(State(w): State<Arc<Witness>>, body: String) -> Result<String, Refusal> {
    w.add_checkpoint(&body).await
}

#[utoipa::path(
    post,
    path = "/log-key",
    tag = "witness",
    request_body(content = String, content_type = "text/plain", description = "A log's key hand-over: the new verifier key on the first line, then an add-checkpoint request whose checkpoint the followed key and the new key both signed"),
    responses(
        (status = 200, description = "the cosignature line; the witness follows the new key", content_type = "text/plain", body = String),
        (status = 409, description = "the size this witness last cosigned", content_type = "text/x.tlog.size", body = String),
        (status = "default", description = "refused, with the reason", content_type = "text/plain", body = String)
    )
)]
async fn log_key(State(w): State<Arc<Witness>>, body: String) -> Result<String, Refusal> {
    w.hand_over(&body).await
}

#[utoipa::path(get, path = "/v1/info", tag = "witness", responses((status = 200, body = Info)))]
async fn info(State(w): State<Arc<Witness>>) -> axum::Json<Info> {
    axum::Json(Info {
        name: w.name.clone(),
        key: w.key(),
    })
}

#[derive(utoipa::OpenApi)]
#[openapi(info(
    title = "Cloister witness",
    description = "Cosigns a transparency log's checkpoints along one history (C2SP tlog-witness); its errors are plain text, as that protocol says.",
))]
struct Doc;

fn api() -> utoipa_axum::router::OpenApiRouter<Arc<Witness>> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(Doc::openapi())
        .routes(routes!(add))
        .routes(routes!(log_key))
        .routes(routes!(info))
}

/// The witness's OpenAPI description (served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// `POST /add-checkpoint`, `POST /log-key`, `GET /v1/info`.
pub fn router(w: Arc<Witness>) -> axum::Router {
    let metrics = w.metrics().clone();
    let ready = w.ready_check();
    let (routes, doc) = api().split_for_parts();
    let api = routes
        .merge(cloister_http::openapi_route(
            doc.to_pretty_json().unwrap_or_default(),
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(w);
    cloister_http::ops::instrument(api, &metrics, ready)
}
