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
use cloister_store::{AuditStore, CaptureMeta, CaptureRow, FetchQuery, SideEffect, VaultStore};
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
    /// Where the deny list comes from, and one pull at a time.
    km_url: std::sync::RwLock<Option<String>>,
    pulling: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    /// Certificates already verified under the KM key (by hash of their
    /// signed bytes), with the device's parsed key: a device's next request
    /// costs one signature check, not two.
    certs: Mutex<HashMap<[u8; 32], Arc<VerifiedCert>>>,
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
        let log = AuditLog::open(
            audit,
            KmSigner::from_secret(&log_key)?,
            cloister_audit::vault_origin(&tenant),
        )
        .await?;
        Ok(Vault {
            tenant,
            km_pk: km,
            signer: KmSigner::from_secret(&key)?,
            store,
            log,
            inflight: Mutex::new(HashSet::new()),
            deny: std::sync::RwLock::new(cloister_standing::DenyList::pulled(
                DEFAULT_STANDING_MAX_AGE_MS,
            )),
            certs: Mutex::new(HashMap::new()),
            km_url: std::sync::RwLock::new(km_url),
            pulling: tokio::sync::Mutex::new(()),
            http: reqwest::Client::new(),
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
        let store = Arc::new(cloister_store::SqliteVaultStore::open(&db_path(dir)).await?);
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
        }
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Remember the KM's URL (where the deny list is pulled from).
    pub async fn set_km_url(&self, url: &str) -> Result<(), VaultError> {
        let url = url.trim_end_matches('/').to_owned();
        self.store
            .vault_set_meta(META_KM_URL, url.as_bytes())
            .await?;
        if let Ok(mut u) = self.km_url.write() {
            *u = Some(url);
        }
        Ok(())
    }

    pub fn km_url(&self) -> Option<String> {
        self.km_url.read().ok().and_then(|u| u.clone())
    }

    /// Pull the deny list from the KM now (one pull at a time).
    pub async fn pull_deny_list(&self) -> Result<(), String> {
        let _one = self.pulling.lock().await;
        let url = self
            .km_url()
            .ok_or("the vault does not know its KM's URL (vault init --km)")?;
        let r = self
            .http
            .post(format!("{url}/v1/deny-list"))
            .json(&self.deny_list_request())
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("cannot reach the KM at {url}: {e}"))?;
        if !r.status().is_success() {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            return Err(format!("the KM refused the deny list ({status}): {body}"));
        }
        let blob: cloister_proto::km::SignedBlob = r
            .json()
            .await
            .map_err(|e| format!("the KM's deny list is malformed: {e}"))?;
        self.apply_deny_list(&blob).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Keep the deny list current: pull it every `every` until `stop`.
    pub async fn keep_standing(
        self: Arc<Self>,
        every: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.pull_deny_list().await {
                tracing::warn!("vault deny list not refreshed: {e}");
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Device standing under the deny list; if the list is stale, pull it
    /// once before deciding (and refuse if that fails).
    async fn check_standing(&self, cert: &DeviceCert) -> Result<(), ApiError> {
        let check = || -> Result<(), cloister_standing::StandingError> {
            let deny = self
                .deny
                .read()
                .map_err(|_| cloister_standing::StandingError::Unknown("deny list lock".into()))?;
            cloister_standing::check(cert, Some(&self.tenant), now_millis(), &*deny)
        };
        match check() {
            Err(cloister_standing::StandingError::Unknown(_)) => {
                if let Err(e) = self.pull_deny_list().await {
                    tracing::warn!("vault deny list not refreshed: {e}");
                }
                Ok(check()?)
            }
            r => Ok(r?),
        }
    }

    /// How old the KM's deny list may get before every request is refused.
    pub fn set_standing_max_age(&self, max_age_ms: u64) {
        if let Ok(mut d) = self.deny.write() {
            d.set_max_age(max_age_ms);
        }
    }

    /// A request for the tenant's deny list, signed with the receipt key
    /// the KM registered for this vault.
    pub fn deny_list_request(&self) -> cloister_proto::km::DenyListRequest {
        let ts = now_millis();
        let sig = self.signer.sign(
            signed::DENY_LIST_REQUEST,
            &signed::deny_list_transcript(&self.tenant, ts),
        );
        cloister_proto::km::DenyListRequest {
            tenant: self.tenant.clone(),
            ts,
            sig: Fixed(sig),
        }
    }

    /// Take a KM-signed deny list. An older one than the list in force is
    /// ignored (a replay cannot undo a revocation); a fresh one must be
    /// recent, since its age is what makes the vault fail closed.
    pub fn apply_deny_list(
        &self,
        blob: &cloister_proto::km::SignedBlob,
    ) -> Result<bool, VaultError> {
        let body: cloister_standing::DenyListBody =
            verify_blob(&self.km_pk, signed::DENY_LIST, blob, "deny list")?;
        if body.tenant != self.tenant {
            return Err(VaultError::Corrupt("deny list for another tenant"));
        }
        if !cloister_proto::within_skew(body.issued_ms) {
            return Err(VaultError::Corrupt(
                "deny list issued outside the clock skew",
            ));
        }
        let mut d = self
            .deny
            .write()
            .map_err(|_| VaultError::Corrupt("deny list lock"))?;
        Ok(d.replace(body))
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

    fn receipt(&self, message_id: MessageId, m: &CaptureMeta) -> Result<SignedReceipt, ApiError> {
        let r = Receipt {
            tenant: self.tenant.clone(),
            message_id,
            ciphertext_sha256: Fixed(
                m.ciphertext_sha256
                    .clone()
                    .try_into()
                    .map_err(|_| ApiError::internal("corrupt hash"))?,
            ),
            envelope_sha256: Fixed(
                m.envelope_sha256
                    .clone()
                    .try_into()
                    .map_err(|_| ApiError::internal("corrupt hash"))?,
            ),
            received_ms: m.received_ms,
            log_index: m.log_index,
        };
        // Ed25519 is deterministic: a re-issued receipt is the same bytes.
        sign_receipt(&self.signer, &r).map_err(ApiError::internal)
    }

    /// A certificate verified under the KM key (or found in the cache).
    fn verified_cert(
        &self,
        sc: &cloister_proto::km::SignedCert,
    ) -> Result<Arc<VerifiedCert>, cloister_crypto::CryptoError> {
        let h = cloister_crypto::sha256(&[sc.body.as_slice(), &sc.sig.0].concat());
        if let Some(e) = self.certs.lock().ok().and_then(|m| m.get(&h).cloned()) {
            return Ok(e);
        }
        let cert = signed::verify_cert(&self.km_pk, sc)?;
        let key = VerifyKey::from_bytes(&cert.sign_pk.0)?;
        let e = Arc::new((cert, key));
        if let Ok(mut m) = self.certs.lock() {
            if m.len() >= MAX_CACHED_CERTS {
                m.clear();
            }
            m.insert(h, e.clone());
        }
        Ok(e)
    }

    /// Who wrote the captured message: the sender device's certificate
    /// (signed by the tenant KM) and its signature over the header and the
    /// ciphertext's hash; the header must name the envelope's message, room
    /// and time. A device captures as sender only its own messages.
    fn check_authorship(
        &self,
        cert: &DeviceCert,
        env: &SealedEnvelope,
        capture: &Capture,
    ) -> Result<(), ApiError> {
        let refuse =
            |why: String| ApiError::forbidden("unattributable", format!("capture refused: {why}"));
        let sender = self.verified_cert(&capture.sender_cert).map_err(|_| {
            refuse("the sender's certificate is not signed by the tenant's KM".into())
        })?;
        if sender.0.tenant != self.tenant {
            return Err(refuse("the sender belongs to another tenant".into()));
        }
        let h = cloister_crypto::message::verify_signed_header(
            &sender.1,
            capture.header.as_slice(),
            &capture.sig.0,
            &env.ciphertext_sha256.0,
        )
        .map_err(|_| refuse("the sender's signature does not cover this message".into()))?;
        if h.id != env.message_id || h.room != env.room || h.ts != env.ts {
            return Err(refuse(
                "the envelope's message, room or time differ from the signed header".into(),
            ));
        }
        if h.device != sender.0.device || h.sender != sender.0.user {
            return Err(refuse(format!(
                "the header names {} on device {}, not the certificate's holder",
                h.sender, h.device
            )));
        }
        if !capture.received && h.device != cert.device {
            return Err(refuse(
                "a device captures as sender only the messages it signed".into(),
            ));
        }
        Ok(())
    }

    /// The request's certificate (verified under the KM key, or found in
    /// the cache) and its operation, verified under the device key.
    fn verify(&self, req: &VaultRequest) -> Result<(DeviceCert, VaultOp), ApiError> {
        let bad = |e: cloister_crypto::CryptoError| {
            ApiError::unauthorized("bad_request_signature", format!("request rejected: {e}"))
        };
        let entry = self.verified_cert(&req.cert).map_err(bad)?;
        entry
            .1
            .verify(signed::VAULT_REQUEST, req.body.as_slice(), &req.sig.0)
            .map_err(bad)?;
        let op: VaultOp = serde_json::from_slice(req.body.as_slice()).map_err(|e| {
            ApiError::bad_request("bad_request", format!("vault request is malformed: {e}"))
        })?;
        Ok((entry.0.clone(), op))
    }

    /// Handle a signed request.
    pub async fn handle(&self, req: &VaultRequest) -> Result<serde_json::Value, ApiError> {
        let (cert, op) = self.verify(req)?;
        self.check_standing(&cert).await?;
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
                let c: Case =
                    verify_blob(&self.km_pk, signed::CASE, &case, "case").map_err(|_| {
                        ApiError::forbidden("bad_case", "the case is not signed by the tenant's KM")
                    })?;
                if c.tenant != self.tenant
                    || c.officer != cert.user
                    || c.officer_device != cert.device
                {
                    return Err(ApiError::forbidden(
                        "not_case_officer",
                        "only the case officer's device may fetch its envelopes",
                    ));
                }
                check_queries(&tokens, 400)?;
                if size > self.log.size() {
                    return Err(ApiError::bad_request(
                        "bad_size",
                        format!("the ingestion log has {} entries", self.log.size()),
                    ));
                }
                let q = FetchQuery {
                    rooms: c.scope.rooms.iter().map(|r| r.to_hex()).collect(),
                    from_ms: c.scope.from_ms,
                    to_ms: c.scope.to_ms,
                    any_tokens: token_queries(&tokens),
                    after,
                    limit: limit.clamp(1, MAX_FETCH),
                };
                let rows = self.store.fetch(&q).await.map_err(ApiError::internal)?;
                let full = rows.len() as u32 == q.limit;
                let mut items = Vec::with_capacity(rows.len());
                let mut next = None;
                for r in rows {
                    next = Some(r.log_index);
                    if r.log_index >= size {
                        continue;
                    }
                    let data = self
                        .log
                        .store()
                        .audit_get(r.log_index)
                        .await
                        .map_err(ApiError::internal)?
                        .ok_or_else(|| ApiError::internal("ingestion entry missing"))?;
                    let proof = self.log.inclusion_proof(r.log_index, size)?;
                    items.push(FetchedEnvelope {
                        envelope: r.envelope.into(),
                        entry: InclusionProof {
                            index: r.log_index,
                            size,
                            data: data.into(),
                            proof: proof.into_iter().map(Fixed).collect(),
                        },
                    });
                }
                tracing::info!(user = %cert.user, case = %c.case, n = items.len(), "case envelopes fetched");
                json(&FetchResponse {
                    items,
                    next: if full { next } else { None },
                })
            }
            VaultOp::Purge { ts, order } => {
                fresh(ts)?;
                role(&cert, Role::Compliance, "applying retention")?;
                json(&self.purge(&cert, &order).await?)
            }
        }
    }

    async fn capture(
        &self,
        cert: &DeviceCert,
        capture: Capture,
    ) -> Result<SignedReceipt, ApiError> {
        if capture.envelope.len() > MAX_ENVELOPE || capture.tokens.len() > MAX_TOKENS {
            return Err(ApiError::too_large(format!(
                "a capture holds at most {MAX_ENVELOPE} bytes of envelope and {MAX_TOKENS} tokens"
            )));
        }
        let env: SealedEnvelope =
            serde_json::from_slice(capture.envelope.as_slice()).map_err(|e| {
                ApiError::bad_request("bad_envelope", format!("sealed envelope is malformed: {e}"))
            })?;
        if env.tenant != self.tenant {
            return Err(ApiError::forbidden(
                "wrong_tenant",
                "the envelope is sealed for another tenant",
            ));
        }
        if self
            .store
            .is_deleted(&env.message_id.to_hex())
            .await
            .map_err(ApiError::internal)?
        {
            return Err(ApiError::new(
                axum::http::StatusCode::GONE,
                "capture_deleted",
                "this message was deleted by retention; it is not captured again",
            ));
        }
        self.check_authorship(cert, &env, &capture)?;
        let envelope_sha256 = cloister_crypto::sha256(capture.envelope.as_slice());
        {
            let mut f = self
                .inflight
                .lock()
                .map_err(|_| ApiError::internal("inflight lock"))?;
            if !f.insert(env.message_id) {
                return Err(ApiError::conflict(
                    "capture_in_progress",
                    "this message is being captured; retry",
                ));
            }
        }
        let result = self.ingest(cert, &env, &capture, envelope_sha256).await;
        if let Ok(mut f) = self.inflight.lock() {
            f.remove(&env.message_id);
        }
        result
    }

    async fn ingest(
        &self,
        cert: &DeviceCert,
        env: &SealedEnvelope,
        capture: &Capture,
        envelope_sha256: [u8; 32],
    ) -> Result<SignedReceipt, ApiError> {
        let id = env.message_id.to_hex();
        // Idempotent: the same envelope (or, from a recipient, any envelope of
        // the same ciphertext) gets the stored receipt. Checked while no other
        // capture of this message can start.
        if let Some(m) = self
            .store
            .get_capture(&id)
            .await
            .map_err(ApiError::internal)?
        {
            if m.envelope_sha256 == envelope_sha256
                || (capture.received && m.ciphertext_sha256 == env.ciphertext_sha256.0)
            {
                return self.receipt(env.message_id, &m);
            }
            return Err(ApiError::conflict(
                "capture_conflict",
                "another envelope is already captured for this message",
            ));
        }
        let received_ms = now_millis();
        let row = CaptureRow {
            message_id: id.clone(),
            room: env.room.to_hex(),
            ts: env.ts,
            ciphertext_sha256: env.ciphertext_sha256.0.to_vec(),
            envelope: capture.envelope.0.clone(),
            envelope_sha256: envelope_sha256.to_vec(),
            received_ms,
            period: capture.period,
            tokens: capture.tokens.iter().map(|t| t.0.to_vec()).collect(),
            device: cert.device.to_hex(),
        };
        let rec = AuditRecord {
            ts: received_ms,
            actor: Some(cert.user.clone()),
            event: AuditEvent::EnvelopeIngested {
                message_id: id,
                room: env.room,
                envelope_sha256: hex::encode(envelope_sha256),
                ciphertext_sha256: hex::encode(env.ciphertext_sha256.0),
                device: cert.device,
            },
        };
        let log_index = self
            .log
            .append_with(&rec, Some(SideEffect::Capture(Box::new(row))))
            .await?;
        tracing::debug!(message = %env.message_id, device = %cert.device, log_index, "envelope captured");
        self.receipt(
            env.message_id,
            &CaptureMeta {
                ciphertext_sha256: env.ciphertext_sha256.0.to_vec(),
                envelope_sha256: envelope_sha256.to_vec(),
                received_ms,
                log_index,
            },
        )
    }

    async fn purge(
        &self,
        cert: &DeviceCert,
        order: &cloister_proto::km::SignedBlob,
    ) -> Result<PurgeResponse, ApiError> {
        let o: PurgeOrder =
            verify_blob(&self.km_pk, signed::PURGE, order, "purge order").map_err(|_| {
                ApiError::forbidden(
                    "bad_order",
                    "the purge order is not signed by the tenant's KM",
                )
            })?;
        if o.tenant != self.tenant {
            return Err(ApiError::forbidden(
                "wrong_tenant",
                "the purge order is for another tenant",
            ));
        }
        let last = self
            .store
            .vault_meta(META_LAST_PURGE)
            .await
            .map_err(ApiError::internal)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if o.issued_ms <= last || o.issued_ms.saturating_add(3_600_000) < now_millis() {
            return Err(ApiError::conflict(
                "stale_order",
                "this purge order is older than one already applied, or over an hour old (replayed)",
            ));
        }
        let (mut deleted, mut kept) = (0u64, 0u64);
        for rp in &o.rooms {
            let (expired, held) = self
                .store
                .expired(&rp.room.to_hex(), rp.before_ms, &rp.held)
                .await
                .map_err(ApiError::internal)?;
            kept += held;
            for (message_id, sha) in expired {
                let rec = AuditRecord {
                    ts: now_millis(),
                    actor: Some(cert.user.clone()),
                    event: AuditEvent::EnvelopeDeleted {
                        message_id: message_id.clone(),
                        room: rp.room,
                        envelope_sha256: hex::encode(&sha),
                    },
                };
                self.log
                    .append_with(&rec, Some(SideEffect::DeleteEnvelope { message_id }))
                    .await?;
                deleted += 1;
            }
        }
        self.store
            .vault_set_meta(META_LAST_PURGE, &o.issued_ms.to_be_bytes())
            .await
            .map_err(ApiError::internal)?;
        if deleted > 0 {
            // No WAL frame keeps a deleted envelope's page image; the
            // database's freed space is already zero (secure_delete).
            let mut r = self.store.vault_scrub().await;
            for _ in 0..20 {
                if r.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                r = self.store.vault_scrub().await;
            }
            r.map_err(ApiError::internal)?;
        }
        tracing::info!(deleted, kept, "retention purge applied");
        Ok(PurgeResponse {
            deleted,
            kept_for_hold: kept,
        })
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
