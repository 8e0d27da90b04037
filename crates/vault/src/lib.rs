//! The tenant's compliance vault (run by the customer firm).
//!
//! ```text
//!  device ──VaultRequest{cert, Capture}──▶ vault: verify cert (pinned KM key) + signature
//!        store sealed envelope (opaque) and its tokens (separate table)
//!        ◀── SignedReceipt{message id, ciphertext hash, envelope hash}
//!        and an `envelope_ingested` entry in the vault's own transparency
//!        log, both in one transaction (group-committed)
//!  compliance ──VaultRequest{Search}──▶ tokens only ─▶ message ids and metadata
//!  case officer ──VaultRequest{Fetch, KM-signed case}──▶ sealed envelopes in
//!        the case's rooms and time range, each with its inclusion proof
//!  compliance ──VaultRequest{Purge, KM-signed order}──▶ delete expired
//!        envelopes outside holds; each deletion is a log entry
//! ```
//!
//! The vault cannot read envelopes (they are sealed to the escrow key, whose
//! private half is split among custodians) nor terms (it only compares
//! tokens made with index keys it never sees).
#![forbid(unsafe_code)]

mod capture;
mod cases;
mod metrics;
mod purge;
mod region;
mod standing;
mod status;
mod verifier;

use cloister_audit::AuditLog;
use cloister_crypto::KmSigner;
use cloister_crypto::keys::VerifyKey;
use cloister_crypto::signed::{self, sign_receipt, verify_blob};
use cloister_http::ApiError;
use cloister_log::{AuditEvent, AuditRecord};
use cloister_proto::b64::Fixed;
use cloister_proto::km::{Case, CheckpointResponse, DeviceCert, InclusionProof, PurgeOrder, Role};
use cloister_proto::vault::{
    Capture, FetchResponse, FetchedEnvelope, PeriodQuery, PurgeResponse, Receipt, SealedEnvelope,
    SearchHit, SearchResponse, SignedReceipt, VaultInfo, VaultOp, VaultRequest,
};
use cloister_proto::{MessageId, TenantId, limits, now_millis};
use cloister_store::{
    AuditStore, CaptureMeta, CaptureRow, CaptureStatus, FetchQuery, SideEffect, VaultStore,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Most tokens per capture.
pub const MAX_TOKENS: usize = 4096;
/// Largest sealed envelope (bytes).
pub const MAX_ENVELOPE: usize = 512 * 1024;
/// Most envelopes per fetch page.
pub const MAX_FETCH: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("storage: {0}")]
    Store(#[from] cloister_store::StoreError),
    #[error("the vault at {0} is not initialised; run `cloister vault init` first")]
    NotInitialised(String),
    #[error("the vault at {0} is already initialised")]
    AlreadyInitialised(String),
    #[error("corrupt vault state: {0}")]
    Corrupt(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Crypto(#[from] cloister_crypto::CryptoError),
    #[error("ingestion log: {0}")]
    Log(#[from] cloister_audit::AuditOpenError),
    #[error("cannot write {path}: {reason}")]
    Io { path: String, reason: String },
}

/// The running vault.
pub struct Vault {
    tenant: TenantId,
    km_pk: [u8; 32],
    signer: KmSigner,
    store: Arc<dyn VaultStore>,
    log: Arc<AuditLog>,
    /// Messages whose capture is being stored (one at a time per message).
    inflight: Mutex<HashSet<MessageId>>,
    /// Revoked devices and disabled users, pulled from the KM; requests are
    /// refused while it is stale (fail closed).
    deny: std::sync::RwLock<cloister_standing::DenyList>,
    /// Partner firms' KM keys, from the newest deny list (other firms'
    /// senders of messages this firm's users received).
    partners: std::sync::RwLock<HashMap<TenantId, [u8; 32]>>,
    /// The newest escrow generation, from the newest deny list (0: not
    /// known yet): captures sealed to an older one are refused.
    escrow_generation: std::sync::atomic::AtomicU32,
    /// The jurisdiction this vault is pinned to (empty: the default vault).
    jurisdiction: std::sync::RwLock<String>,
    /// Jurisdictions with a vault of their own (from the newest deny list).
    pinned: std::sync::RwLock<HashSet<String>>,
    /// Where the deny list comes from, and one pull at a time.
    km_url: std::sync::RwLock<Option<String>>,
    pulling: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    /// Checks request and message signatures in batches.
    verifier: verifier::Verifier,
    /// Reads the captures' statuses in batches.
    statuses: status::StatusReader,
    /// Certificates already verified under the KM key (by hash of their
    /// signed bytes), with the device's parsed key: a device's next request
    /// costs one signature check, not two.
    certs: Mutex<HashMap<[u8; 32], Arc<VerifiedCert>>>,
    metrics: metrics::VaultMetrics,
    limits: VaultLimits,
    limiters: Limiters,
}

/// The vault's rate limits: averages per second, with bursts of ten
/// seconds' worth (0 turns one off).
#[derive(Debug, Clone)]
pub struct VaultLimits {
    /// Captures one device sends (one per message it sends or receives).
    pub captures_per_sec: u32,
    /// Searches one compliance device runs.
    pub searches_per_sec: u32,
    /// Requests of any kind from one address.
    pub per_address_per_sec: u32,
}

impl Default for VaultLimits {
    fn default() -> Self {
        VaultLimits {
            captures_per_sec: 200,
            searches_per_sec: 2,
            per_address_per_sec: 2000,
        }
    }
}

impl VaultLimits {
    /// Every limit off (load tests measure the vault, not its limiter).
    pub fn off() -> Self {
        VaultLimits {
            captures_per_sec: 0,
            searches_per_sec: 0,
            per_address_per_sec: 0,
        }
    }
}

struct Limiters {
    captures: cloister_http::limit::Limiter<cloister_proto::DeviceId>,
    searches: cloister_http::limit::Limiter<cloister_proto::DeviceId>,
}

impl Limiters {
    fn new(l: &VaultLimits) -> Limiters {
        Limiters {
            captures: cloister_http::limit::Limiter::per_second(
                "captures from this device",
                l.captures_per_sec,
            ),
            searches: cloister_http::limit::Limiter::per_second(
                "searches from this device",
                l.searches_per_sec,
            ),
        }
    }
}

/// A certificate verified under the KM key, with the device's parsed key.
type VerifiedCert = (DeviceCert, VerifyKey);

const MAX_CACHED_CERTS: usize = 10_000;

const META_TENANT: &str = "tenant";
const META_KM: &str = "km_sign_pk";
const META_SIGNER: &str = "receipt_key";
const META_LOG_SIGNER: &str = "log_key";
const META_LAST_PURGE: &str = "last_purge";
const META_KM_URL: &str = "km_url";
const META_JURISDICTION: &str = "jurisdiction";

/// How old the KM's deny list may be before the vault refuses every request.
pub const DEFAULT_STANDING_MAX_AGE_MS: u64 = 60_000;

fn role(cert: &DeviceCert, r: Role, what: &'static str) -> Result<(), ApiError> {
    Ok(cloister_standing::require_role(cert, r, what)?)
}

fn fresh(ts: u64) -> Result<(), ApiError> {
    if cloister_proto::within_skew(ts) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "stale_request",
            "request timestamp is outside the allowed clock skew",
        ))
    }
}

fn check_queries(queries: &[PeriodQuery], max_tokens: usize) -> Result<(), ApiError> {
    if queries.len() > 120
        || queries
            .iter()
            .any(|q| q.tokens.is_empty() || q.tokens.len() > max_tokens)
    {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("give at most 120 periods, each with 1 to {max_tokens} tokens"),
        ));
    }
    Ok(())
}

impl Vault {
    /// Initialise a vault for `tenant`, pinning its KM's signing key.
    pub async fn init(
        store: Arc<dyn VaultStore>,
        audit: Arc<dyn AuditStore>,
        tenant: &TenantId,
        km_pk: [u8; 32],
    ) -> Result<Vault, VaultError> {
        if store.vault_meta(META_TENANT).await?.is_some() {
            return Err(VaultError::AlreadyInitialised(tenant.to_string()));
        }
        let signer = KmSigner::generate()?;
        let log_signer = KmSigner::generate()?;
        store
            .vault_init_meta(META_SIGNER, signer.secret_bytes().expose())
            .await?;
        store
            .vault_init_meta(META_LOG_SIGNER, log_signer.secret_bytes().expose())
            .await?;
        store.vault_init_meta(META_KM, &km_pk).await?;
        store
            .vault_init_meta(META_TENANT, tenant.as_str().as_bytes())
            .await?;
        Self::open(store, audit).await
    }

    pub async fn open(
        store: Arc<dyn VaultStore>,
        audit: Arc<dyn AuditStore>,
    ) -> Result<Vault, VaultError> {
        let tenant = store
            .vault_meta(META_TENANT)
            .await?
            .ok_or_else(|| VaultError::NotInitialised("this data directory".into()))?;
        let tenant: TenantId = std::str::from_utf8(&tenant)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(VaultError::Corrupt("tenant"))?;
        let km: [u8; 32] = store
            .vault_meta(META_KM)
            .await?
            .and_then(|k| k.try_into().ok())
            .ok_or(VaultError::Corrupt("KM key"))?;
        let key = store
            .vault_meta(META_SIGNER)
            .await?
            .ok_or(VaultError::Corrupt("receipt key"))?;
        let log_key = store
            .vault_meta(META_LOG_SIGNER)
            .await?
            .ok_or(VaultError::Corrupt("log key"))?;
        let km_url = store
            .vault_meta(META_KM_URL)
            .await?
            .and_then(|b| String::from_utf8(b).ok());
        let jurisdiction = store
            .vault_meta(META_JURISDICTION)
            .await?
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let log = AuditLog::open(
            audit,
            KmSigner::from_secret(&log_key)?,
            cloister_audit::vault_origin(&tenant),
        )
        .await?;
        let verifier = verifier::Verifier::start();
        let statuses = status::StatusReader::start(store.clone());
        let metrics = metrics::VaultMetrics::new(&log, &verifier, &statuses);
        Ok(Vault {
            tenant,
            km_pk: km,
            signer: KmSigner::from_secret(&key)?,
            log,
            inflight: Mutex::new(HashSet::new()),
            deny: std::sync::RwLock::new(cloister_standing::DenyList::pulled(
                DEFAULT_STANDING_MAX_AGE_MS,
            )),
            partners: std::sync::RwLock::new(HashMap::new()),
            escrow_generation: std::sync::atomic::AtomicU32::new(0),
            jurisdiction: std::sync::RwLock::new(jurisdiction),
            pinned: std::sync::RwLock::new(HashSet::new()),
            certs: Mutex::new(HashMap::new()),
            km_url: std::sync::RwLock::new(km_url),
            pulling: tokio::sync::Mutex::new(()),
            http: cloister_tls::http_client(),
            verifier,
            statuses,
            store,
            metrics,
            limits: VaultLimits::default(),
            limiters: Limiters::new(&VaultLimits::default()),
        })
    }

    /// Open (or with `init`, create) the vault in a data directory.
    pub async fn open_dir(
        dir: &Path,
        init: Option<(&TenantId, [u8; 32])>,
    ) -> Result<Vault, VaultError> {
        Self::open_url(dir, None, init).await
    }

    /// Open (or create) the vault with its store at `database`
    /// (`sqlite://…`, `postgres://…`; default: SQLite in `dir`).
    pub async fn open_url(
        dir: &Path,
        database: Option<&str>,
        init: Option<(&TenantId, [u8; 32])>,
    ) -> Result<Vault, VaultError> {
        std::fs::create_dir_all(dir).map_err(|e| VaultError::Io {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let url = match database {
            Some(u) => u.to_owned(),
            None => cloister_store::sqlite_url(&db_path(dir)),
        };
        let store = Arc::new(cloister_store::SqlVaultStore::open(&url).await?);
        match init {
            Some((t, k)) => Vault::init(store.clone(), store, t, k).await,
            None => Vault::open(store.clone(), store).await,
        }
    }

    pub fn info(&self) -> VaultInfo {
        VaultInfo {
            tenant: self.tenant.clone(),
            receipt_pk: Fixed(self.signer.public()),
            log_key: self.log.verifier_key(),
            jurisdiction: self.jurisdiction(),
        }
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub async fn envelope_count(&self) -> Result<u64, ApiError> {
        self.store
            .envelope_count()
            .await
            .map_err(ApiError::internal)
    }

    /// Entries in the ingestion log.
    pub fn log_size(&self) -> u64 {
        self.log.size()
    }

    /// The kinds of the ingestion log's entries, oldest first (inspection).
    pub async fn log_kinds(&self) -> Result<Vec<String>, VaultError> {
        Ok(self
            .log
            .store()
            .audit_all()
            .await?
            .iter()
            .map(|r| {
                AuditRecord::from_bytes(&r.data)
                    .map(|rec| rec.event.kind().to_owned())
                    .unwrap_or_default()
            })
            .collect())
    }

    /// The request's certificate (verified under the KM key, or found in
    /// the cache) and its operation, verified under the device key.
    async fn verify(&self, req: &VaultRequest) -> Result<(DeviceCert, VaultOp), ApiError> {
        let bad = |e: cloister_crypto::CryptoError| {
            ApiError::unauthorized("bad_request_signature", format!("request rejected: {e}"))
        };
        let entry = self.verified_cert(&req.cert).map_err(bad)?;
        let signed = cloister_crypto::keys::framed(signed::VAULT_REQUEST, req.body.as_slice());
        if !self.verifier.check(&entry.1, signed, &req.sig.0).await {
            return Err(bad(cloister_crypto::CryptoError::BadSignature));
        }
        let op: VaultOp = serde_json::from_slice(req.body.as_slice()).map_err(|e| {
            ApiError::bad_request("bad_request", format!("vault request is malformed: {e}"))
        })?;
        Ok((entry.0.clone(), op))
    }

    /// Set the rate limits (before serving).
    pub fn set_limits(&mut self, limits: VaultLimits) {
        self.limiters = Limiters::new(&limits);
        self.limits = limits;
    }

    /// Handle a signed request.
    pub async fn handle(&self, req: &VaultRequest) -> Result<serde_json::Value, ApiError> {
        let (cert, op) = self.verify(req).await?;
        self.check_standing(&cert).await?;
        // Limits count only requests the device really signed.
        match &op {
            VaultOp::Capture { .. } => self.limiters.captures.check(&cert.device)?,
            VaultOp::Search { .. } => self.limiters.searches.check(&cert.device)?,
            _ => {}
        }
        match op {
            VaultOp::Capture { ts, capture } => {
                fresh(ts)?;
                json(&self.capture(&cert, capture).await?)
            }
            VaultOp::Search {
                ts,
                queries,
                from_ms,
                to_ms,
                limit,
            } => {
                fresh(ts)?;
                role(&cert, Role::Compliance, "searching the archive")?;
                if queries.is_empty() {
                    return Err(ApiError::bad_request(
                        "bad_query",
                        "give at least one period",
                    ));
                }
                check_queries(&queries, 64)?;
                let q = token_queries(&queries);
                let rows = self
                    .store
                    .search(&q, from_ms, to_ms, limit.clamp(1, limits::MAX_PAGE))
                    .await
                    .map_err(ApiError::internal)?;
                let hits = rows
                    .into_iter()
                    .filter_map(|r| {
                        Some(SearchHit {
                            message_id: r.message_id.parse().ok()?,
                            room: r.room.parse().ok()?,
                            ts: r.ts,
                            ciphertext_sha256: Fixed(r.ciphertext_sha256.try_into().ok()?),
                        })
                    })
                    .collect();
                tracing::info!(user = %cert.user, "archive searched");
                json(&SearchResponse { hits })
            }
            VaultOp::Checkpoint { ts } => {
                fresh(ts)?;
                let (_, note) = self.log.checkpoint().await?;
                json(&CheckpointResponse {
                    checkpoint: note,
                    log_key: self.log.verifier_key(),
                })
            }
            VaultOp::Fetch {
                ts,
                case,
                tokens,
                after,
                limit,
                size,
            } => {
                fresh(ts)?;
                role(&cert, Role::Compliance, "fetching a case's envelopes")?;
                json(
                    &self
                        .fetch(&cert, &case, &tokens, (after, limit), size)
                        .await?,
                )
            }
            VaultOp::Reseal {
                ts,
                case,
                envelopes,
            } => {
                fresh(ts)?;
                role(&cert, Role::Compliance, "re-sealing a case's envelopes")?;
                json(&self.reseal(&cert, &case, envelopes).await?)
            }
            VaultOp::EscrowCount { ts, generation } => {
                fresh(ts)?;
                if !cert.roles.contains(&Role::Admin) {
                    role(&cert, Role::Compliance, "counting envelopes by escrow key")?;
                }
                json(&self.escrow_count(generation).await?)
            }
            VaultOp::Purge { ts, order } => {
                fresh(ts)?;
                role(&cert, Role::Compliance, "applying retention")?;
                json(&self.purge(&cert, &order).await?)
            }
        }
    }
}

/// Period queries as the store takes them.
fn token_queries(queries: &[PeriodQuery]) -> Vec<(u32, Vec<Vec<u8>>)> {
    queries
        .iter()
        .map(|p| (p.period, p.tokens.iter().map(|t| t.0.to_vec()).collect()))
        .collect()
}

/// The vault database file of a data directory.
pub fn db_path(dir: &Path) -> std::path::PathBuf {
    dir.join("vault.db")
}

fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(ApiError::internal)
}

#[utoipa::path(get, path = "/v1/info", tag = "vault", responses((status = 200, body = VaultInfo)))]
async fn info(axum::extract::State(v): axum::extract::State<Arc<Vault>>) -> axum::Json<VaultInfo> {
    axum::Json(v.info())
}

#[utoipa::path(
    post,
    path = "/v1/request",
    tag = "requests",
    request_body(content = VaultRequest, description = "a device-signed request; its `op` decides the answer (docs/compliance.md)"),
    responses(
        (status = 200, description = "the answer to the op", body = serde_json::Value),
        (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)
    )
)]
async fn request(
    axum::extract::State(v): axum::extract::State<Arc<Vault>>,
    cloister_http::ApiJson(req): cloister_http::ApiJson<VaultRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    v.handle(&req).await.map(axum::Json)
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Cloister compliance vault",
        description = "The firm's archive of captured messages, sealed to its escrow key. Requests are authenticated by signatures over their bodies; every error is `{error, message}` (ErrorBody) with its status.",
    ),
    components(schemas(cloister_proto::ErrorBody))
)]
struct Doc;

fn api() -> utoipa_axum::router::OpenApiRouter<Arc<Vault>> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(Doc::openapi())
        .routes(routes!(info))
        .routes(routes!(request))
}

/// The vault's OpenAPI description (served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// The vault's HTTP API: `GET /v1/info`, `POST /v1/request`.
pub fn router(vault: Arc<Vault>) -> axum::Router {
    use axum::extract::DefaultBodyLimit;
    let metrics = vault.metrics().clone();
    let ready = vault.ready_check();
    let per_address = Arc::new(cloister_http::limit::Limiter::per_second(
        "requests from this address",
        vault.limits.per_address_per_sec,
    ));
    let (routes, doc) = api().split_for_parts();
    let api = routes
        .merge(cloister_http::openapi_route(
            doc.to_pretty_json().unwrap_or_default(),
        ))
        .fallback(cloister_http::not_found)
        .method_not_allowed_fallback(cloister_http::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits::MAX_JSON_BODY))
        .with_state(vault);
    let api = cloister_http::limit::per_address(api, per_address);
    cloister_http::ops::instrument(api, &metrics, ready)
}

impl Vault {
    /// This vault's metrics registry (for the operations listener).
    pub fn metrics(&self) -> &Arc<cloister_http::ops::Metrics> {
        &self.metrics.ops
    }

    /// Ready when the database answers and the KM's deny list is fresh
    /// (a stale one makes the vault refuse every request).
    pub fn ready_check(self: &Arc<Self>) -> cloister_http::ops::ReadyCheck {
        let vault = Arc::downgrade(self);
        cloister_http::ops::ready_check(move || {
            let vault = vault.upgrade();
            async move {
                use cloister_standing::Facts;
                let vault = vault.ok_or("the vault is stopping")?;
                vault
                    .store
                    .ping()
                    .await
                    .map_err(|e| format!("database: {e}"))?;
                let deny = vault.deny.read().map_err(|_| "deny list lock")?;
                deny.current(now_millis()).map_err(|e| e.to_string())
            }
        })
    }
}
