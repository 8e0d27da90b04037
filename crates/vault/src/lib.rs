//! The tenant's compliance vault (run by the customer firm).
//!
//! ```text
//!  device ──VaultRequest{cert, Capture}──▶ vault: verify cert (pinned KM key) + signature
//!        store sealed envelope (opaque) and its tokens (separate table)
//!        ◀── SignedReceipt{message id, ciphertext hash, envelope hash}
//!  compliance ──VaultRequest{Search}──▶ tokens only ─▶ message ids and metadata
//! ```
//!
//! The vault cannot read envelopes (they are sealed to the escrow key, whose
//! private half is split among custodians) nor terms (it only compares
//! tokens made with index keys it never sees).
#![forbid(unsafe_code)]

use cloister_crypto::KmSigner;
use cloister_crypto::signed::{sign_receipt, verify_vault_request};
use cloister_http::ApiError;
use cloister_proto::b64::Fixed;
use cloister_proto::km::Role;
use cloister_proto::vault::{
    Receipt, SealedEnvelope, SearchHit, SearchResponse, SignedReceipt, VaultInfo, VaultOp,
    VaultRequest,
};
use cloister_proto::{TenantId, limits, now_millis, now_secs};
use cloister_store::{CaptureRow, VaultStore};
use std::path::Path;
use std::sync::Arc;

/// Most tokens per capture.
pub const MAX_TOKENS: usize = 4096;
/// Largest sealed envelope (bytes).
pub const MAX_ENVELOPE: usize = 512 * 1024;

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
    Crypto(#[from] cloister_crypto::CryptoError),
    #[error("cannot write {path}: {reason}")]
    Io { path: String, reason: String },
}

/// The running vault.
pub struct Vault {
    tenant: TenantId,
    km_pk: [u8; 32],
    signer: KmSigner,
    store: Arc<dyn VaultStore>,
}

const META_TENANT: &str = "tenant";
const META_KM: &str = "km_sign_pk";
const META_SIGNER: &str = "receipt_key";

impl Vault {
    /// Initialise a vault for `tenant`, pinning its KM's signing key.
    pub async fn init(
        store: Arc<dyn VaultStore>,
        tenant: &TenantId,
        km_pk: [u8; 32],
    ) -> Result<Vault, VaultError> {
        if store.vault_meta(META_TENANT).await?.is_some() {
            return Err(VaultError::AlreadyInitialised(tenant.to_string()));
        }
        let signer = KmSigner::generate()?;
        store
            .vault_init_meta(META_SIGNER, signer.secret_bytes().expose())
            .await?;
        store.vault_init_meta(META_KM, &km_pk).await?;
        store
            .vault_init_meta(META_TENANT, tenant.as_str().as_bytes())
            .await?;
        Ok(Vault {
            tenant: tenant.clone(),
            km_pk,
            signer,
            store,
        })
    }

    pub async fn open(store: Arc<dyn VaultStore>) -> Result<Vault, VaultError> {
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
        Ok(Vault {
            tenant,
            km_pk: km,
            signer: KmSigner::from_secret(&key)?,
            store,
        })
    }

    /// Open (or with `init`, create) the vault in a data directory.
    pub async fn open_dir(
        dir: &Path,
        init: Option<(&TenantId, [u8; 32])>,
    ) -> Result<Vault, VaultError> {
        std::fs::create_dir_all(dir).map_err(|e| VaultError::Io {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let store: Arc<dyn VaultStore> =
            Arc::new(cloister_store::SqliteVaultStore::open(&dir.join("vault.db")).await?);
        match init {
            Some((t, k)) => Vault::init(store, t, k).await,
            None => Vault::open(store).await,
        }
    }

    pub fn info(&self) -> VaultInfo {
        VaultInfo {
            tenant: self.tenant.clone(),
            receipt_pk: Fixed(self.signer.public()),
        }
    }

    pub async fn envelope_count(&self) -> Result<u64, ApiError> {
        self.store
            .envelope_count()
            .await
            .map_err(ApiError::internal)
    }

    /// Handle a signed request.
    pub async fn handle(&self, req: &VaultRequest) -> Result<serde_json::Value, ApiError> {
        let (cert, op) = verify_vault_request(&self.km_pk, req).map_err(|e| {
            ApiError::unauthorized("bad_request_signature", format!("request rejected: {e}"))
        })?;
        if cert.tenant != self.tenant {
            return Err(ApiError::forbidden(
                "wrong_tenant",
                format!("this vault serves tenant {}", self.tenant),
            ));
        }
        if cert.not_after < now_secs() {
            return Err(ApiError::forbidden(
                "cert_expired",
                "the device certificate has expired",
            ));
        }
        match op {
            VaultOp::Capture { ts, capture } => {
                if !cloister_proto::within_skew(ts) {
                    return Err(ApiError::unauthorized(
                        "stale_request",
                        "request timestamp is outside the allowed clock skew",
                    ));
                }
                if capture.envelope.len() > MAX_ENVELOPE || capture.tokens.len() > MAX_TOKENS {
                    return Err(ApiError::too_large(format!(
                        "a capture holds at most {MAX_ENVELOPE} bytes of envelope and {MAX_TOKENS} tokens"
                    )));
                }
                let env: SealedEnvelope = serde_json::from_slice(capture.envelope.as_slice())
                    .map_err(|e| {
                        ApiError::bad_request(
                            "bad_envelope",
                            format!("sealed envelope is malformed: {e}"),
                        )
                    })?;
                if env.tenant != self.tenant {
                    return Err(ApiError::forbidden(
                        "wrong_tenant",
                        "the envelope is sealed for another tenant",
                    ));
                }
                let envelope_sha256 = cloister_crypto::sha256(capture.envelope.as_slice());
                let receipt = Receipt {
                    tenant: self.tenant.clone(),
                    message_id: env.message_id,
                    ciphertext_sha256: env.ciphertext_sha256,
                    envelope_sha256: Fixed(envelope_sha256),
                    received_ms: now_millis(),
                };
                let signed = sign_receipt(&self.signer, &receipt).map_err(ApiError::internal)?;
                let row = CaptureRow {
                    message_id: env.message_id.to_hex(),
                    room: env.room.to_hex(),
                    ts: env.ts,
                    ciphertext_sha256: env.ciphertext_sha256.0.to_vec(),
                    envelope: capture.envelope.0.clone(),
                    envelope_sha256: envelope_sha256.to_vec(),
                    receipt: serde_json::to_vec(&signed).map_err(ApiError::internal)?,
                    period: capture.period,
                    tokens: capture.tokens.iter().map(|t| t.0.to_vec()).collect(),
                    device: cert.device.to_hex(),
                };
                let stored = self.store.put_capture(&row).await.map_err(|e| match e {
                    cloister_store::StoreError::Conflict(m) => {
                        ApiError::conflict("capture_conflict", m)
                    }
                    e => ApiError::internal(e),
                })?;
                let out: SignedReceipt = match stored {
                    Some(prev) => serde_json::from_slice(&prev).map_err(ApiError::internal)?,
                    None => signed,
                };
                tracing::info!(message = %env.message_id, device = %cert.device, "envelope captured");
                json(&out)
            }
            VaultOp::Search {
                ts,
                queries,
                from_ms,
                to_ms,
                limit,
            } => {
                if !cloister_proto::within_skew(ts) {
                    return Err(ApiError::unauthorized(
                        "stale_request",
                        "request timestamp is outside the allowed clock skew",
                    ));
                }
                if !cert.roles.contains(&Role::Admin) {
                    return Err(ApiError::forbidden(
                        "not_compliance",
                        "searching the archive needs the compliance role",
                    ));
                }
                if queries.is_empty()
                    || queries.len() > 120
                    || queries
                        .iter()
                        .any(|q| q.tokens.is_empty() || q.tokens.len() > 64)
                {
                    return Err(ApiError::bad_request(
                        "bad_query",
                        "give 1 to 120 periods, each with 1 to 64 tokens",
                    ));
                }
                let q: Vec<(u32, Vec<Vec<u8>>)> = queries
                    .iter()
                    .map(|p| (p.period, p.tokens.iter().map(|t| t.0.to_vec()).collect()))
                    .collect();
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
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(ApiError::internal)
}

/// The vault's HTTP API: `GET /v1/info`, `POST /v1/request`.
pub fn router(vault: Arc<Vault>) -> axum::Router {
    use axum::extract::{DefaultBodyLimit, State};
    use axum::routing::{get, post};
    async fn info(State(v): State<Arc<Vault>>) -> axum::Json<VaultInfo> {
        axum::Json(v.info())
    }
    async fn request(
        State(v): State<Arc<Vault>>,
        cloister_http::ApiJson(req): cloister_http::ApiJson<VaultRequest>,
    ) -> Result<axum::Json<serde_json::Value>, ApiError> {
        v.handle(&req).await.map(axum::Json)
    }
    axum::Router::new()
        .route("/v1/info", get(info))
        .route("/v1/request", post(request))
        .fallback(cloister_http::not_found)
        .layer(DefaultBodyLimit::max(limits::MAX_JSON_BODY))
        .with_state(vault)
}
