//! The tenant Key Manager (KM).
//!
//! ```text
//!   admin device ──SignedRequest(AddUser)──▶ KM ──▶ one-time enrolment code
//!   new device ──EnrolRequest(code, keys, proof)──▶ KM ──▶ SignedCert
//!   device ──SignedRequest(RoomKeys{room, epochs, log})──▶ KM
//!        KM: verify cert + signature + freshness
//!            verify & append log entries (cloister-policy::apply)
//!            may_read(user, epoch)? ── no ──▶ 403, logged
//!            unwrap(TMK, room key) ── HPKE seal to device ──▶ SealedRoomKey + lease
//! ```
//!
//! Room keys exist only wrapped under the TMK in the KM's store; the TMK is
//! behind a [`provider::KeyProvider`]. The KM trusts no statement it has not
//! verified itself: the messaging server only relays the membership log.
#![forbid(unsafe_code)]

pub use cloister_audit as audit;
pub mod compliance;
pub mod http;
pub mod provider;
mod rooms;

use cloister_crypto::signed::{
    enrol_transcript, sign_cert, sign_notice, verify_cert, verify_request,
};
use cloister_crypto::{KmSigner, RoomKey, hpke_seal, keys::verify, sha256};
use cloister_http::ApiError;
use cloister_log::{AuditEvent, AuditRecord};
use cloister_policy::RoomState;
use cloister_proto::b64::Fixed;
use cloister_proto::km::{
    AddUserResponse, AdminResponse, AuditEntry, AuditListResponse, CheckpointResponse,
    ConsistencyProof, DeviceCert, DeviceRecord, EnrolRequest, EscrowDescriptor, InclusionProof,
    IndexKeysResponse, KmInfo, KmOp, Notice, RequestBody, Role, RoomKeysResponse, SealedShare,
    SignedCert, SignedEscrow, SignedRequest, UserRecord, WhoHasKeysResponse,
};
use cloister_proto::room::SignedStatement;
use cloister_proto::{DeviceId, RoomId, TenantId, UserId, limits, now_millis, now_secs};
use cloister_store::{KmDeviceRow, KmStore, KmUserRow, LogRow};
use provider::KeyProvider;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Storage name of the blind-index keys (not a valid room id, so no room can collide).
const INDEX_KEYS: &str = "index";
/// Index keys are sealed to devices as "room" zero (reserved: no room may use it).
const INDEX_ROOM: RoomId = RoomId([0; 16]);

/// Wrapped room keys by (room, epoch).
type WrappedKeys = HashMap<(RoomId, u64), Arc<Vec<u8>>>;

/// KM settings.
#[derive(Debug, Clone)]
pub struct KmConfig {
    /// How long a released key may be used before the device must ask again.
    pub lease_secs: u64,
    /// Certificate lifetime.
    pub cert_secs: u64,
    /// Enrolment code lifetime.
    pub code_secs: u64,
    /// Witnesses (URLs) the audit log's checkpoints are submitted to.
    pub witnesses: Vec<String>,
}

impl Default for KmConfig {
    fn default() -> Self {
        KmConfig {
            lease_secs: 3600,
            cert_secs: 365 * 24 * 3600,
            code_secs: 7 * 24 * 3600,
            witnesses: Vec::new(),
        }
    }
}

/// Startup and initialisation errors (request errors are [`ApiError`]s).
#[derive(Debug, thiserror::Error)]
pub enum KmError {
    #[error(transparent)]
    Provider(#[from] provider::ProviderError),
    #[error("storage: {0}")]
    Store(#[from] cloister_store::StoreError),
    #[error("the KM at {0} is not initialised; run `cloister km init` first")]
    NotInitialised(String),
    #[error("the KM at {0} is already initialised")]
    AlreadyInitialised(String),
    #[error("corrupt KM state: {0}")]
    Corrupt(&'static str),
    #[error("{0}")]
    Crypto(#[from] cloister_crypto::CryptoError),
    #[error("audit log: {0}")]
    Audit(#[from] audit::AuditOpenError),
}

const META_TENANT: &str = "tenant";
const META_SIGNER: &str = "signer_wrapped";
const SIGNER_AAD: &[u8] = b"cloister/km-signer/v1";
const META_LOG_SIGNER: &str = "log_signer_wrapped";
const LOG_SIGNER_AAD: &[u8] = b"cloister/log-signer/v1";
const BOOTSTRAP_ADMIN: &str = "admin";

/// Files of a KM data directory.
pub fn tmk_path(dir: &Path) -> PathBuf {
    dir.join("tmk.sealed")
}
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("km.db")
}

/// The running Key Manager.
pub struct Km {
    tenant: TenantId,
    signer: KmSigner,
    provider: Arc<dyn KeyProvider>,
    store: Arc<dyn KmStore>,
    config: KmConfig,
    rooms: Mutex<HashMap<RoomId, Arc<RoomState>>>,
    /// Nonces of key requests (replay of a key request only re-seals keys to the
    /// same device, so an in-memory window suffices; admin nonces are durable).
    recent_nonces: Mutex<HashMap<(DeviceId, [u8; 16]), u64>>,
    /// Serialises log ingestion per KM (a room's log is appended in order).
    ingest: tokio::sync::Mutex<()>,
    /// Creating a key (read) against re-wrapping them all (write, retention).
    keys_lock: tokio::sync::RwLock<()>,
    /// Verified certificates of devices found active (device active, user
    /// active). The KM is the only writer of that state, so it evicts entries
    /// itself on revocation and disabling.
    active: Mutex<HashMap<DeviceId, Arc<DeviceCert>>>,
    /// Room keys as stored: wrapped under the TMK. Every use still unwraps
    /// through the key provider, so a crypto-lock takes effect at once.
    wrapped: Mutex<WrappedKeys>,
    audit: Arc<audit::AuditLog>,
    witnesses: audit::Witnesses,
}

/// What `init` returns: the public KM description and the bootstrap admin code.
#[derive(Debug)]
pub struct InitOutput {
    pub info: KmInfo,
    pub admin_user: UserId,
    pub admin_code: String,
}

fn random_code() -> Result<String, cloister_crypto::CryptoError> {
    // 20 characters of Crockford base32 = 100 bits.
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let raw = cloister_crypto::random_bytes::<20>()?;
    let s: String = raw
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect();
    Ok(format!(
        "{}-{}-{}-{}",
        &s[..5],
        &s[5..10],
        &s[10..15],
        &s[15..]
    ))
}

fn code_hash(code: &str) -> [u8; 32] {
    let norm: String = code
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_uppercase();
    sha256(norm.as_bytes())
}

fn roles_str(r: &[Role]) -> String {
    r.iter().map(Role::as_str).collect::<Vec<_>>().join(",")
}

fn parse_roles(s: &str) -> Vec<Role> {
    s.split(',').filter_map(|r| r.parse().ok()).collect()
}

fn room_key_aad(tenant: &TenantId, room: &RoomId, epoch: u64) -> Vec<u8> {
    format!("cloister/room-key-wrap/v1|{}|{}|{}", tenant, room, epoch).into_bytes()
}

pub(crate) fn store_err(e: cloister_store::StoreError) -> ApiError {
    ApiError::internal(e)
}

impl Km {
    /// Initialise a tenant: a new TMK (via `provider`), a signing key wrapped
    /// under it, and the bootstrap admin with a one-time enrolment code.
    pub async fn init(
        store: Arc<dyn KmStore>,
        audit_store: Arc<dyn cloister_store::AuditStore>,
        provider: Arc<dyn KeyProvider>,
        tenant: TenantId,
        config: KmConfig,
    ) -> Result<(Km, InitOutput), KmError> {
        if store.get_meta(META_TENANT).await?.is_some() {
            return Err(KmError::AlreadyInitialised(tenant.to_string()));
        }
        let signer = KmSigner::generate()?;
        let wrapped = provider.wrap(SIGNER_AAD, signer.secret_bytes().expose())?;
        store.init_meta(META_SIGNER, &wrapped).await?;
        let log_signer = Self::log_signer(&store, &provider).await?;
        store
            .init_meta(META_TENANT, tenant.as_str().as_bytes())
            .await?;
        let audit =
            audit::AuditLog::open(audit_store, log_signer, audit::origin_for(&tenant)).await?;
        let km = Km::new(tenant.clone(), signer, provider, store, config, audit);
        km.record(
            None,
            AuditEvent::TenantInitialised {
                tenant: tenant.clone(),
                km_key: cloister_proto::b64::encode(&km.signer.public()),
                log_key: km.audit.verifier_key(),
            },
        )
        .await
        .map_err(|_| KmError::Corrupt("could not write the audit log"))?;
        let admin_user: UserId = format!("{BOOTSTRAP_ADMIN}@{tenant}")
            .parse()
            .map_err(|_| KmError::Corrupt("tenant id"))?;
        let code = km
            .add_user(None, &admin_user, &[Role::Admin, Role::User])
            .await
            .map_err(|_| KmError::Corrupt("could not create bootstrap admin"))?;
        let info = km.info();
        Ok((
            km,
            InitOutput {
                info,
                admin_user,
                admin_code: code.code,
            },
        ))
    }

    /// Open an initialised KM.
    pub async fn open(
        store: Arc<dyn KmStore>,
        audit_store: Arc<dyn cloister_store::AuditStore>,
        provider: Arc<dyn KeyProvider>,
        config: KmConfig,
    ) -> Result<Km, KmError> {
        let tenant = store
            .get_meta(META_TENANT)
            .await?
            .ok_or_else(|| KmError::NotInitialised("this data directory".into()))?;
        let tenant: TenantId = std::str::from_utf8(&tenant)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(KmError::Corrupt("tenant id"))?;
        let wrapped = store
            .get_meta(META_SIGNER)
            .await?
            .ok_or(KmError::Corrupt("signing key"))?;
        let secret = provider.unwrap(SIGNER_AAD, &wrapped)?;
        let signer = KmSigner::from_secret(secret.expose())?;
        let log_signer = Self::log_signer(&store, &provider).await?;
        let audit =
            audit::AuditLog::open(audit_store, log_signer, audit::origin_for(&tenant)).await?;
        Ok(Km::new(tenant, signer, provider, store, config, audit))
    }

    /// The audit log's signing key, wrapped under the TMK (created on first use).
    async fn log_signer(
        store: &Arc<dyn KmStore>,
        provider: &Arc<dyn KeyProvider>,
    ) -> Result<KmSigner, KmError> {
        if let Some(w) = store.get_meta(META_LOG_SIGNER).await? {
            return Ok(KmSigner::from_secret(
                provider.unwrap(LOG_SIGNER_AAD, &w)?.expose(),
            )?);
        }
        let k = KmSigner::generate()?;
        store
            .init_meta(
                META_LOG_SIGNER,
                &provider.wrap(LOG_SIGNER_AAD, k.secret_bytes().expose())?,
            )
            .await?;
        Ok(k)
    }

    /// Append an audit record; fails closed.
    async fn record(&self, actor: Option<&UserId>, event: AuditEvent) -> Result<u64, ApiError> {
        self.audit
            .append(&AuditRecord {
                ts: now_millis(),
                actor: actor.cloned(),
                event,
            })
            .await
    }

    pub fn audit(&self) -> &Arc<audit::AuditLog> {
        &self.audit
    }

    fn new(
        tenant: TenantId,
        signer: KmSigner,
        provider: Arc<dyn KeyProvider>,
        store: Arc<dyn KmStore>,
        config: KmConfig,
        audit: Arc<audit::AuditLog>,
    ) -> Km {
        let witnesses = audit::Witnesses::new(&config.witnesses);
        Km {
            tenant,
            signer,
            provider,
            store,
            config,
            rooms: Mutex::new(HashMap::new()),
            recent_nonces: Mutex::new(HashMap::new()),
            ingest: tokio::sync::Mutex::new(()),
            keys_lock: tokio::sync::RwLock::new(()),
            active: Mutex::new(HashMap::new()),
            wrapped: Mutex::new(HashMap::new()),
            audit,
            witnesses,
        }
    }

    pub fn info(&self) -> KmInfo {
        KmInfo {
            tenant: self.tenant.clone(),
            sign_pk: Fixed(self.signer.public()),
            log_key: self.audit.verifier_key(),
        }
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Create (or reactivate) a user and issue a fresh one-time enrolment code.
    pub async fn add_user(
        &self,
        actor: Option<&UserId>,
        user: &UserId,
        roles: &[Role],
    ) -> Result<AddUserResponse, ApiError> {
        if user.tenant() != self.tenant {
            return Err(ApiError::bad_request(
                "wrong_tenant",
                format!("{user} is not a user of tenant {}", self.tenant),
            ));
        }
        let mut roles: Vec<Role> = roles.to_vec();
        if !roles.contains(&Role::User) {
            roles.push(Role::User);
        }
        // An existing user gets a new code for another device: roles are only
        // ever added here, never taken away; a disabled user stays disabled
        // (the server keeps refusing them, so re-enabling would split the two).
        if let Some(existing) = self
            .store
            .get_user(user.as_str())
            .await
            .map_err(store_err)?
        {
            if existing.status != "active" {
                return Err(ApiError::conflict(
                    "user_disabled",
                    format!("{user} is disabled; re-enabling is not supported"),
                ));
            }
            roles.extend(parse_roles(&existing.roles));
        }
        roles.sort();
        roles.dedup();
        self.store
            .upsert_user(&KmUserRow {
                user: user.to_string(),
                roles: roles_str(&roles),
                status: "active".into(),
            })
            .await
            .map_err(store_err)?;
        self.record(
            actor,
            AuditEvent::UserAdded {
                user: user.clone(),
                roles: roles.clone(),
            },
        )
        .await?;
        let code = random_code().map_err(ApiError::internal)?;
        let expires_at = now_secs() + self.config.code_secs;
        self.store
            .put_code(&code_hash(&code), user.as_str(), expires_at)
            .await
            .map_err(store_err)?;
        tracing::info!(%user, "enrolment code issued");
        Ok(AddUserResponse {
            user: user.clone(),
            code,
            expires_at,
        })
    }

    /// Enrol a device with a one-time code.
    pub async fn enrol(&self, req: &EnrolRequest) -> Result<SignedCert, ApiError> {
        let transcript = enrol_transcript(&req.user, &req.code, &req.sign_pk.0, &req.hpke_pk.0);
        verify(
            &req.sign_pk.0,
            cloister_crypto::signed::ENROL,
            &transcript,
            &req.pop.0,
        )
        .map_err(|_| {
            ApiError::unauthorized(
                "bad_proof",
                "proof of possession of the device key is invalid",
            )
        })?;
        let invalid = || {
            ApiError::unauthorized(
                "invalid_code",
                "enrolment code is invalid, expired or already used",
            )
        };
        let (user, expires) = self
            .store
            .take_code(&code_hash(&req.code))
            .await
            .map_err(store_err)?
            .ok_or_else(invalid)?;
        if user != req.user.as_str() || expires < now_secs() {
            return Err(invalid());
        }
        let urow = self
            .store
            .get_user(&user)
            .await
            .map_err(store_err)?
            .ok_or_else(invalid)?;
        if urow.status != "active" {
            return Err(ApiError::forbidden(
                "user_disabled",
                format!("{user} is disabled"),
            ));
        }
        let device = cloister_crypto::keys::device_id_for(&req.sign_pk.0);
        let now = now_secs();
        let cert = DeviceCert {
            tenant: self.tenant.clone(),
            user: req.user.clone(),
            device,
            sign_pk: req.sign_pk,
            hpke_pk: req.hpke_pk,
            roles: parse_roles(&urow.roles),
            issued_at: now,
            not_after: now + self.config.cert_secs,
        };
        let signed = sign_cert(&self.signer, &cert).map_err(ApiError::internal)?;
        self.store
            .put_device(&KmDeviceRow {
                device: device.to_hex(),
                user: user.clone(),
                cert: serde_json::to_vec(&signed).map_err(ApiError::internal)?,
                status: "active".into(),
                issued_at: now,
            })
            .await
            .map_err(|e| match e {
                cloister_store::StoreError::Conflict(_) => {
                    ApiError::conflict("device_exists", "this device key is already enrolled")
                }
                e => store_err(e),
            })?;
        self.record(
            Some(&req.user),
            AuditEvent::DeviceCertified {
                user: req.user.clone(),
                device,
            },
        )
        .await?;
        tracing::info!(%user, %device, "device certified");
        Ok(signed)
    }

    /// A device's certificate (issued by this KM), if the device is in good
    /// standing: the shared check over the KM's own records.
    async fn active_cert(&self, device: &DeviceId) -> Result<Arc<DeviceCert>, ApiError> {
        let cached = self.active.lock().ok().and_then(|m| m.get(device).cloned());
        let (cert, facts) = match cached {
            // Only active devices of active users are cached; revocation and
            // disabling evict them.
            Some(c) => (
                c,
                cloister_standing::Known {
                    revoked: false,
                    disabled: false,
                },
            ),
            None => {
                let (c, facts) = self.load_cert(device).await?;
                (Arc::new(c), facts)
            }
        };
        cloister_standing::check(&cert, Some(&self.tenant), now_millis(), &facts)?;
        if worth_caching(&facts)
            && let Ok(mut m) = self.active.lock()
        {
            m.insert(*device, cert.clone());
        }
        Ok(cert)
    }

    /// A device's stored certificate and what the KM's records say of it.
    async fn load_cert(
        &self,
        device: &DeviceId,
    ) -> Result<(DeviceCert, cloister_standing::Known), ApiError> {
        let row = self
            .store
            .get_device(&device.to_hex())
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "unknown_device",
                    format!("device {device} is not enrolled with this KM"),
                )
            })?;
        let sc: SignedCert = serde_json::from_slice(&row.cert).map_err(ApiError::internal)?;
        let cert = verify_cert(&self.signer.public(), &sc).map_err(ApiError::internal)?;
        let user = self
            .store
            .get_user(cert.user.as_str())
            .await
            .map_err(store_err)?;
        let facts = cloister_standing::Known {
            revoked: row.status != "active",
            disabled: user.map(|u| u.status) != Some("active".into()),
        };
        Ok((cert, facts))
    }

    /// Handle any signed request.
    pub async fn handle(&self, req: &SignedRequest) -> Result<serde_json::Value, ApiError> {
        let cert = match self.active_cert(&req.device).await {
            Ok(c) => c,
            Err(e) => {
                self.record_refusal(req, &e).await;
                return Err(e);
            }
        };
        let body: RequestBody = verify_request(&cert.sign_pk.0, req)
            .map_err(|_| ApiError::unauthorized("bad_signature", "request signature is invalid"))?;
        let now = now_millis();
        let skew = limits::MAX_SKEW_SECS * 1000;
        if !cloister_proto::within_skew(body.ts) {
            return Err(ApiError::unauthorized(
                "stale_request",
                "request timestamp is outside the allowed clock skew",
            ));
        }
        // Reads and key requests use the in-memory nonce window; admin
        // changes a durable one (docs/adr/0004-throughput-choices.md).
        let durable = matches!(
            body.op,
            KmOp::AddUser { .. }
                | KmOp::DisableUser { .. }
                | KmOp::RevokeDevice { .. }
                | KmOp::EscrowInit { .. }
                | KmOp::VaultRegister { .. }
                | KmOp::CaseOpen { .. }
                | KmOp::CaseRescope { .. }
                | KmOp::CaseApprove { .. }
                | KmOp::CaseStep { .. }
                | KmOp::RetentionSet { .. }
                | KmOp::RetentionRun
        );
        let fresh = if durable {
            self.store
                .use_nonce(
                    &req.device.to_hex(),
                    &body.nonce.0,
                    body.ts,
                    now.saturating_sub(2 * skew),
                )
                .await
                .map_err(store_err)?
        } else {
            self.use_nonce_mem(&req.device, &body.nonce.0, body.ts)
        };
        if !fresh {
            return Err(ApiError::conflict(
                "replayed_request",
                "this request was already processed",
            ));
        }
        let actor = Some(&cert.user);
        match body.op {
            KmOp::RoomKeys {
                room,
                epochs,
                log_from,
                log,
            } => json(
                &self
                    .room_keys(&cert, &room, &epochs, log_from, &log)
                    .await?,
            ),
            KmOp::AuditCheckpoint => {
                let (_, note) = if self.witnesses.is_empty() {
                    self.audit.checkpoint().await?
                } else {
                    self.audit.cosigned_checkpoint(&self.witnesses).await?
                };
                json(&CheckpointResponse {
                    checkpoint: note,
                    log_key: self.audit.verifier_key(),
                })
            }
            KmOp::AuditConsistency { old, new } => {
                let new = new.unwrap_or_else(|| self.audit.size());
                let proof = self.audit.consistency_proof(old, new)?;
                json(&ConsistencyProof {
                    old,
                    new,
                    proof: proof.into_iter().map(Fixed).collect(),
                })
            }
            KmOp::WhoHasKeys { room } => json(&self.who_has_keys(&cert, &room).await?),
            KmOp::RoomHead {
                room,
                log_from,
                log,
            } => self.room_head(&cert, &room, log_from, &log).await,
            KmOp::RoomLog { room, from } => self.room_log(&cert, &room, from).await,
            KmOp::EscrowInfo => {
                let d = self
                    .store
                    .get_escrow()
                    .await
                    .map_err(store_err)?
                    .ok_or_else(|| {
                        ApiError::not_found(
                            "no_escrow",
                            "the tenant's escrow key is not initialised",
                        )
                    })?;
                let signed: SignedEscrow =
                    serde_json::from_slice(&d).map_err(ApiError::internal)?;
                json(&signed)
            }
            KmOp::MyEscrowShare => {
                let rows = self
                    .store
                    .escrow_shares_of(cert.user.as_str())
                    .await
                    .map_err(store_err)?;
                let shares = rows
                    .into_iter()
                    .map(|(_, b)| serde_json::from_slice::<SealedShare>(&b))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(ApiError::internal)?;
                json(&shares)
            }
            KmOp::IndexKeys { periods } => json(&self.index_keys(&cert, &periods).await?),
            op @ (KmOp::VaultRegister { .. }
            | KmOp::VaultInfo
            | KmOp::CaseOpen { .. }
            | KmOp::CaseRescope { .. }
            | KmOp::CaseList
            | KmOp::CaseApprove { .. }
            | KmOp::CaseApprovals { .. }
            | KmOp::CaseStep { .. }
            | KmOp::RetentionSet { .. }
            | KmOp::RetentionRun) => self.compliance_op(&cert, op).await,
            op => {
                if !cert.roles.contains(&Role::Admin) {
                    tracing::warn!(user = %cert.user, "admin operation refused: not an admin");
                    return Err(ApiError::forbidden(
                        "not_admin",
                        "this operation needs the admin role",
                    ));
                }
                match op {
                    KmOp::AddUser { user, roles } => {
                        json(&self.add_user(actor, &user, &roles).await?)
                    }
                    KmOp::DisableUser { user } => json(&self.disable_user(actor, &user).await?),
                    KmOp::RevokeDevice { device } => {
                        json(&self.revoke_device(actor, &device).await?)
                    }
                    KmOp::ListUsers => json(&self.list_users().await?),
                    KmOp::AuditList {
                        from,
                        limit,
                        kind,
                        room,
                        since_ms,
                    } => {
                        if kind
                            .as_deref()
                            .is_some_and(|k| !AuditEvent::KINDS.contains(&k))
                        {
                            return Err(ApiError::bad_request(
                                "bad_kind",
                                format!("unknown kind; one of {}", AuditEvent::KINDS.join(", ")),
                            ));
                        }
                        let q = cloister_store::AuditQuery {
                            from,
                            limit: limit.clamp(1, 10_000),
                            kind,
                            room: room.map(|r| r.to_hex()),
                            since_ms,
                        };
                        let rows = self.audit.store().audit_list(&q).await.map_err(store_err)?;
                        json(&AuditListResponse {
                            entries: rows
                                .into_iter()
                                .map(|r| AuditEntry {
                                    index: r.index,
                                    data: r.data.into(),
                                })
                                .collect(),
                        })
                    }
                    KmOp::AuditProve { index, size } => json(&self.prove(index, size).await?),
                    KmOp::EscrowInit {
                        public,
                        threshold,
                        shares,
                    } => json(
                        &self
                            .escrow_init(&cert.user, public, threshold, shares)
                            .await?,
                    ),
                    _ => Err(ApiError::internal("unreachable op")),
                }
            }
        }
    }

    /// Register the escrow key and its custodians' sealed shares (once).
    async fn escrow_init(
        &self,
        actor: &UserId,
        public: Fixed<32>,
        threshold: u8,
        shares: Vec<SealedShare>,
    ) -> Result<SignedEscrow, ApiError> {
        let n = shares.len();
        if !(2..=32).contains(&n) || threshold < 2 || threshold as usize > n {
            return Err(ApiError::bad_request(
                "bad_escrow",
                format!(
                    "need 2 to 32 shares and a threshold of 2..={n}; got {n} shares, threshold {threshold}"
                ),
            ));
        }
        let mut numbers: Vec<u8> = shares.iter().map(|s| s.number).collect();
        numbers.sort_unstable();
        if numbers != (1..=n as u8).collect::<Vec<_>>() {
            return Err(ApiError::bad_request(
                "bad_escrow",
                "shares must be numbered 1..=n, each once",
            ));
        }
        let mut custodians: Vec<UserId> = Vec::new();
        for sh in &shares {
            let dev = self.active_cert(&sh.device).await.map_err(|e| {
                ApiError::bad_request(
                    "bad_escrow",
                    format!("custodian device {}: {}", sh.device, e.message),
                )
            })?;
            if !dev.roles.contains(&Role::Custodian) {
                return Err(ApiError::bad_request(
                    "bad_escrow",
                    format!(
                        "{} does not have the custodian role (its device was enrolled without it)",
                        sh.custodian
                    ),
                ));
            }
            if dev.user != sh.custodian {
                return Err(ApiError::bad_request(
                    "bad_escrow",
                    format!("device {} does not belong to {}", sh.device, sh.custodian),
                ));
            }
            if custodians.contains(&sh.custodian) {
                return Err(ApiError::bad_request(
                    "bad_escrow",
                    format!("{} holds two shares", sh.custodian),
                ));
            }
            custodians.push(sh.custodian.clone());
        }
        let d = EscrowDescriptor {
            tenant: self.tenant.clone(),
            public,
            threshold,
            custodians: custodians.clone(),
            created: now_secs(),
        };
        let signed =
            cloister_crypto::signed::sign_escrow(&self.signer, &d).map_err(ApiError::internal)?;
        if self.store.get_escrow().await.map_err(store_err)?.is_some() {
            return Err(ApiError::conflict(
                "escrow_exists",
                "the tenant's escrow key is already initialised",
            ));
        }
        self.record(
            Some(actor),
            AuditEvent::EscrowInitialised {
                public: cloister_proto::b64::encode(&public.0),
                threshold,
                custodians,
            },
        )
        .await?;
        let rows = shares
            .iter()
            .map(|s| Ok((s.custodian.to_string(), s.number, serde_json::to_vec(s)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(ApiError::internal)?;
        self.store
            .init_escrow(
                &serde_json::to_vec(&signed).map_err(ApiError::internal)?,
                &rows,
            )
            .await
            .map_err(|e| match e {
                cloister_store::StoreError::Conflict(m) => ApiError::conflict("escrow_exists", m),
                e => store_err(e),
            })?;
        tracing::info!(threshold, shares = n, "escrow key initialised");
        Ok(signed)
    }

    /// Blind-index keys per period (random, wrapped under the TMK), sealed to the device.
    async fn index_keys(
        &self,
        cert: &DeviceCert,
        periods: &[u32],
    ) -> Result<IndexKeysResponse, ApiError> {
        if periods.is_empty() || periods.len() > 120 {
            return Err(ApiError::bad_request(
                "bad_periods",
                "ask for 1 to 120 periods",
            ));
        }
        let lease_until = now_secs() + self.config.lease_secs;
        let mut keys = Vec::with_capacity(periods.len());
        for &p in periods {
            let aad = self.key_aad(INDEX_KEYS, p as u64)?;
            let wrapped = self.wrapped_key(INDEX_KEYS, p as u64, &aad).await?;
            let k = self.unwrap_key(&aad, &wrapped)?;
            keys.push(
                hpke_seal::seal_room_key(
                    &cert.hpke_pk.0,
                    &self.tenant,
                    &INDEX_ROOM,
                    p as u64,
                    &cert.device,
                    lease_until,
                    &k,
                )
                .map_err(ApiError::internal)?,
            );
        }
        self.record(
            Some(&cert.user),
            AuditEvent::IndexKeysReleased {
                periods: periods.to_vec(),
                user: cert.user.clone(),
                device: cert.device,
            },
        )
        .await?;
        Ok(IndexKeysResponse { keys })
    }

    async fn prove(&self, index: u64, size: Option<u64>) -> Result<InclusionProof, ApiError> {
        let size = size.unwrap_or_else(|| self.audit.size());
        let proof = self.audit.inclusion_proof(index, size)?;
        let data = self
            .audit
            .store()
            .audit_get(index)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ApiError::not_found("no_such_entry", format!("no audit entry {index}"))
            })?;
        Ok(InclusionProof {
            index,
            size,
            data: data.into(),
            proof: proof.into_iter().map(Fixed).collect(),
        })
    }

    /// Every key release of a room with inclusion proofs against one checkpoint.
    async fn who_has_keys(
        &self,
        cert: &DeviceCert,
        room: &RoomId,
    ) -> Result<WhoHasKeysResponse, ApiError> {
        let allowed = cert.roles.contains(&Role::Admin)
            || self
                .room_state(room)
                .await?
                .is_some_and(|s| s.grants.contains_key(&cert.user));
        if !allowed {
            return Err(ApiError::forbidden(
                "not_entitled",
                format!("{} was never a member of room {room}", cert.user),
            ));
        }
        let (cp, note) = self.audit.checkpoint().await?;
        let mut releases = Vec::new();
        let mut from = 0;
        loop {
            let q = cloister_store::AuditQuery {
                from,
                limit: 1000,
                kind: Some("key_released".into()),
                room: Some(room.to_hex()),
                since_ms: None,
            };
            let rows = self.audit.store().audit_list(&q).await.map_err(store_err)?;
            let n = rows.len();
            for r in rows {
                from = r.index + 1;
                if r.index >= cp.size {
                    continue;
                }
                let proof = self.audit.inclusion_proof(r.index, cp.size)?;
                releases.push(InclusionProof {
                    index: r.index,
                    size: cp.size,
                    data: r.data.into(),
                    proof: proof.into_iter().map(Fixed).collect(),
                });
            }
            if n < 1000 {
                break;
            }
        }
        Ok(WhoHasKeysResponse {
            checkpoint: note,
            releases,
        })
    }

    /// Log a refused key request from a device that is no longer in good standing.
    async fn record_refusal(&self, req: &SignedRequest, e: &ApiError) {
        if !matches!(e.code, "device_revoked" | "user_disabled" | "cert_expired") {
            return;
        }
        let Ok(Some(row)) = self.store.get_device(&req.device.to_hex()).await else {
            return;
        };
        let Ok(sc) = serde_json::from_slice::<SignedCert>(&row.cert) else {
            return;
        };
        let Ok(cert) = verify_cert(&self.signer.public(), &sc) else {
            return;
        };
        let Ok(body) = verify_request(&cert.sign_pk.0, req) else {
            return;
        };
        if let KmOp::RoomKeys { room, epochs, .. } = body.op {
            let ev = AuditEvent::KeyRefused {
                room,
                epochs,
                user: cert.user.clone(),
                device: cert.device,
                reason: e.code.to_owned(),
            };
            if let Err(err) = self.record(Some(&cert.user), ev).await {
                tracing::error!("could not log a refused key request: {err}");
            }
        }
    }

    fn use_nonce_mem(&self, device: &DeviceId, nonce: &[u8; 16], ts: u64) -> bool {
        let Ok(mut map) = self.recent_nonces.lock() else {
            return false;
        };
        let cutoff = now_millis().saturating_sub(2 * limits::MAX_SKEW_SECS * 1000);
        if map.len() > 100_000 {
            map.retain(|_, t| *t >= cutoff);
        }
        map.insert((*device, *nonce), ts).is_none()
    }

    async fn disable_user(
        &self,
        actor: Option<&UserId>,
        user: &UserId,
    ) -> Result<AdminResponse, ApiError> {
        if self
            .store
            .get_user(user.as_str())
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Err(ApiError::not_found(
                "unknown_user",
                format!("no user {user}"),
            ));
        }
        self.record(actor, AuditEvent::UserDisabled { user: user.clone() })
            .await?;
        self.store
            .set_user_status(user.as_str(), "disabled")
            .await
            .map_err(store_err)?;
        if let Ok(mut m) = self.active.lock() {
            m.retain(|_, c| &c.user != user);
        }
        tracing::info!(%user, "user disabled");
        let n = Notice::UserDisabled {
            tenant: self.tenant.clone(),
            user: user.clone(),
            ts: now_secs(),
        };
        Ok(AdminResponse {
            notice: Some(sign_notice(&self.signer, &n).map_err(ApiError::internal)?),
        })
    }

    async fn revoke_device(
        &self,
        actor: Option<&UserId>,
        device: &DeviceId,
    ) -> Result<AdminResponse, ApiError> {
        if self
            .store
            .get_device(&device.to_hex())
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Err(ApiError::not_found(
                "unknown_device",
                format!("no device {device}"),
            ));
        }
        self.record(actor, AuditEvent::DeviceRevoked { device: *device })
            .await?;
        self.store
            .set_device_status(&device.to_hex(), "revoked")
            .await
            .map_err(store_err)?;
        if let Ok(mut m) = self.active.lock() {
            m.remove(device);
        }
        tracing::info!(%device, "device revoked");
        let n = Notice::DeviceRevoked {
            tenant: self.tenant.clone(),
            device: *device,
            ts: now_secs(),
        };
        Ok(AdminResponse {
            notice: Some(sign_notice(&self.signer, &n).map_err(ApiError::internal)?),
        })
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, ApiError> {
        let mut out = Vec::new();
        for u in self.store.list_users().await.map_err(store_err)? {
            let devices = self
                .store
                .devices_of_user(&u.user)
                .await
                .map_err(store_err)?
                .into_iter()
                .filter_map(|d| {
                    Some(DeviceRecord {
                        device: d.device.parse().ok()?,
                        status: d.status,
                        issued_at: d.issued_at,
                    })
                })
                .collect();
            let Ok(user) = u.user.parse() else { continue };
            out.push(UserRecord {
                user,
                status: u.status,
                roles: parse_roles(&u.roles),
                devices,
            });
        }
        Ok(out)
    }

    async fn room_state(&self, room: &RoomId) -> Result<Option<Arc<RoomState>>, ApiError> {
        if let Some(s) = self.rooms.lock().ok().and_then(|m| m.get(room).cloned()) {
            return Ok(Some(s));
        }
        let Some(row) = self
            .store
            .get_room(&room.to_hex())
            .await
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        let s: Arc<RoomState> =
            Arc::new(serde_json::from_slice(&row.state).map_err(ApiError::internal)?);
        if let Ok(mut m) = self.rooms.lock() {
            m.insert(*room, s.clone());
        }
        Ok(Some(s))
    }

    /// Verify and append log entries the KM does not have yet.
    async fn ingest(
        &self,
        room: &RoomId,
        log_from: u64,
        log: &[SignedStatement],
    ) -> Result<Option<Arc<RoomState>>, ApiError> {
        if log.len() > limits::MAX_LOG_BATCH {
            return Err(ApiError::too_large(format!(
                "at most {} log entries per request",
                limits::MAX_LOG_BATCH
            )));
        }
        if log.is_empty() {
            return self.room_state(room).await;
        }
        let _guard = self.ingest.lock().await;
        let current = self.room_state(room).await?;
        let known_next = current.as_ref().map_or(0, |s| s.seq + 1);
        if log_from > known_next {
            return Err(ApiError::conflict(
                "log_behind",
                format!(
                    "the KM has this room's log up to seq {}; send entries from {known_next}",
                    known_next as i64 - 1
                ),
            ));
        }
        let mut state = current.as_deref().cloned();
        let mut new_rows = Vec::new();
        let mut accepted = Vec::new();
        for (i, entry) in log.iter().enumerate() {
            let seq = log_from + i as u64;
            let hash = cloister_crypto::signed::entry_hash(entry);
            if seq < known_next {
                // Already verified: it must be the very same entry (fork detection).
                let stored = self
                    .store
                    .get_log_hash(&room.to_hex(), seq)
                    .await
                    .map_err(store_err)?;
                if stored.as_deref() != Some(&hash[..]) {
                    tracing::warn!(%room, seq, "membership log fork detected");
                    return Err(ApiError::conflict(
                        "log_fork",
                        format!(
                            "entry {seq} differs from the one the KM verified earlier: the log was forked or rewritten"
                        ),
                    ));
                }
                continue;
            }
            let peek = cloister_crypto::signed::peek_statement(entry)
                .map_err(|e| ApiError::bad_request("bad_statement", e.to_string()))?;
            let actor = self.active_cert(&peek.actor).await.map_err(|e| {
                ApiError::forbidden(
                    "bad_statement",
                    format!("membership statement {seq} rejected: actor {}", e.message),
                )
            })?;
            let (next, st) = match cloister_policy::apply(
                state.as_ref(),
                room,
                entry,
                &actor.user,
                &actor.sign_pk.0,
            ) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%room, seq, error = %e, "membership statement rejected");
                    self.record(
                        Some(&actor.user),
                        AuditEvent::MembershipRejected {
                            room: *room,
                            seq,
                            reason: e.to_string(),
                        },
                    )
                    .await?;
                    return Err(ApiError::forbidden(
                        "bad_statement",
                        format!("membership statement {seq} rejected: {e}"),
                    ));
                }
            };
            accepted.push((seq, st.actor_user.clone(), op_name(&st.action)));
            if next.tenant != self.tenant {
                return Err(ApiError::forbidden(
                    "wrong_tenant",
                    "room belongs to another tenant",
                ));
            }
            new_rows.push(LogRow {
                seq,
                entry: serde_json::to_vec(entry).map_err(ApiError::internal)?,
                hash: hash.to_vec(),
            });
            state = Some(next);
        }
        let Some(state) = state else {
            return Ok(None);
        };
        if !new_rows.is_empty() {
            let bytes = serde_json::to_vec(&state).map_err(ApiError::internal)?;
            self.store
                .append_log(
                    &room.to_hex(),
                    current.as_ref().map(|s| s.seq),
                    &new_rows,
                    &bytes,
                )
                .await
                .map_err(store_err)?;
        }
        for (seq, actor_user, op) in accepted {
            self.record(
                Some(&actor_user),
                AuditEvent::MembershipAccepted {
                    room: *room,
                    seq,
                    actor_user: actor_user.clone(),
                    op: op.into(),
                },
            )
            .await?;
        }
        let state = Arc::new(state);
        if let Ok(mut m) = self.rooms.lock() {
            m.insert(*room, state.clone());
        }
        Ok(Some(state))
    }

    async fn room_key(&self, room: &RoomId, epoch: u64) -> Result<RoomKey, ApiError> {
        let aad = room_key_aad(&self.tenant, room, epoch);
        let cached = self
            .wrapped
            .lock()
            .ok()
            .and_then(|m| m.get(&(*room, epoch)).cloned());
        let wrapped = match cached {
            Some(w) => w,
            None => {
                let w = Arc::new(self.wrapped_key(&room.to_hex(), epoch, &aad).await?);
                if let Ok(mut m) = self.wrapped.lock() {
                    m.insert((*room, epoch), w.clone());
                }
                w
            }
        };
        self.unwrap_key(&aad, &wrapped)
    }

    /// The associated data a stored key (name, n) is wrapped with.
    fn key_aad(&self, name: &str, n: u64) -> Result<Vec<u8>, ApiError> {
        if name == INDEX_KEYS {
            return Ok(format!("cloister/index-key-wrap/v1|{}|{n}", self.tenant).into_bytes());
        }
        let room: RoomId = name.parse().map_err(ApiError::internal)?;
        Ok(room_key_aad(&self.tenant, &room, n))
    }

    /// Retention's destruction: a new key generation, every kept key
    /// re-wrapped under it, the older generations destroyed in the key
    /// provider, and the database's old pages scrubbed. Shredded keys were
    /// under a destroyed generation: no copy of their wrapped bytes (a page,
    /// a WAL frame, a backup) can be unwrapped again.
    pub(crate) async fn destroy_old_generations(&self) -> Result<u32, ApiError> {
        let _all = self.keys_lock.write().await;
        let g = self.provider.rotate().map_err(ApiError::internal)?;
        let mut rewrapped = Vec::new();
        for (name, n, w) in self.store.live_wrapped_keys().await.map_err(store_err)? {
            if provider::generation_of(&w).is_some_and(|wg| wg >= g) {
                continue;
            }
            let aad = self.key_aad(&name, n)?;
            let k = self
                .provider
                .unwrap_destroyable(&aad, &w)
                .map_err(ApiError::internal)?;
            let nw = self
                .provider
                .wrap_destroyable(&aad, k.expose())
                .map_err(ApiError::internal)?;
            rewrapped.push((name, n, nw));
        }
        self.store
            .rewrap_keys(&rewrapped)
            .await
            .map_err(store_err)?;
        self.provider
            .destroy_before(g)
            .map_err(ApiError::internal)?;
        if let Ok(mut m) = self.wrapped.lock() {
            m.clear();
        }
        let mut scrubbed = self.store.km_scrub().await;
        for _ in 0..20 {
            if scrubbed.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            scrubbed = self.store.km_scrub().await;
        }
        scrubbed.map_err(store_err)?;
        tracing::info!(
            generation = g,
            rewrapped = rewrapped.len(),
            "older key generations destroyed"
        );
        Ok(g)
    }

    /// The key stored under (name, n), wrapped under the current generation;
    /// created at random on first use.
    async fn wrapped_key(&self, name: &str, n: u64, aad: &[u8]) -> Result<Vec<u8>, ApiError> {
        if let Some(w) = self.store.get_room_key(name, n).await.map_err(store_err)? {
            if w.is_empty() {
                return Err(ApiError::new(
                    axum::http::StatusCode::GONE,
                    "key_shredded",
                    format!("the key of epoch {n} was destroyed by retention"),
                ));
            }
            return Ok(w);
        }
        let _creating = self.keys_lock.read().await;
        let k = RoomKey::generate().map_err(ApiError::internal)?;
        let w = self
            .provider
            .wrap_destroyable(aad, k.expose())
            .map_err(ApiError::internal)?;
        // If another request created it first, the stored one wins.
        self.store
            .put_room_key(name, n, &w)
            .await
            .map_err(store_err)
    }

    /// Unwrap through the key provider (every use: a crypto-lock takes effect at once).
    fn unwrap_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<RoomKey, ApiError> {
        let k = self
            .provider
            .unwrap_destroyable(aad, wrapped)
            .map_err(|e| match e {
                provider::ProviderError::Destroyed(_) => ApiError::new(
                    axum::http::StatusCode::GONE,
                    "key_shredded",
                    "this key was destroyed by retention",
                ),
                e => ApiError::internal(e),
            })?;
        RoomKey::from_slice(k.expose()).map_err(ApiError::internal)
    }

    async fn room_keys(
        &self,
        cert: &DeviceCert,
        room: &RoomId,
        epochs: &[u64],
        log_from: u64,
        log: &[SignedStatement],
    ) -> Result<RoomKeysResponse, ApiError> {
        if epochs.is_empty() || epochs.len() > limits::MAX_EPOCHS_PER_REQUEST {
            return Err(ApiError::bad_request(
                "bad_epochs",
                format!("ask for 1 to {} epochs", limits::MAX_EPOCHS_PER_REQUEST),
            ));
        }
        let state = self.ingest(room, log_from, log).await?.ok_or_else(|| {
            ApiError::not_found(
                "unknown_room",
                format!("the KM has no verified log for room {room}; send it"),
            )
        })?;
        // A surveillance role may read any existing epoch of a room of its
        // tenant; every such release is logged as one.
        let surveil = cert.roles.contains(&Role::Surveillance);
        let mut surveillance = false;
        for &e in epochs {
            if !state.may_read(&cert.user, e) && surveil && e <= state.epoch {
                surveillance = true;
                continue;
            }
            if !state.may_read(&cert.user, e) {
                let why = if e > state.epoch {
                    format!(
                        "epoch {e} of room {room} does not exist in the verified membership log"
                    )
                } else {
                    format!("{} is not entitled to epoch {e} of room {room}", cert.user)
                };
                tracing::warn!(user = %cert.user, device = %cert.device, %room, epoch = e, "key release refused");
                self.record(
                    Some(&cert.user),
                    AuditEvent::KeyRefused {
                        room: *room,
                        epochs: epochs.to_vec(),
                        user: cert.user.clone(),
                        device: cert.device,
                        reason: "not_entitled".into(),
                    },
                )
                .await?;
                return Err(ApiError::forbidden("not_entitled", why));
            }
        }
        let lease_until = now_secs() + self.config.lease_secs;
        let mut keys = Vec::with_capacity(epochs.len());
        for &e in epochs {
            let k = self.room_key(room, e).await?;
            keys.push(
                hpke_seal::seal_room_key(
                    &cert.hpke_pk.0,
                    &self.tenant,
                    room,
                    e,
                    &cert.device,
                    lease_until,
                    &k,
                )
                .map_err(ApiError::internal)?,
            );
        }
        // The release is acknowledged only once it is durable in the audit log.
        self.record(
            Some(&cert.user),
            AuditEvent::KeyReleased {
                room: *room,
                epochs: epochs.to_vec(),
                user: cert.user.clone(),
                device: cert.device,
                lease_until,
                surveillance,
            },
        )
        .await?;
        tracing::info!(user = %cert.user, device = %cert.device, %room, ?epochs, surveillance, "room keys released");
        Ok(RoomKeysResponse {
            keys,
            log_seq: state.seq,
            head: self.signed_head(&state)?,
        })
    }
}

/// Facts that admit the device (worth caching).
fn worth_caching(f: &cloister_standing::Known) -> bool {
    !f.revoked && !f.disabled
}

fn op_name(a: &cloister_proto::room::Action) -> &'static str {
    use cloister_proto::room::Action;
    match a {
        Action::Create { .. } => "create",
        Action::Add { .. } => "add",
        Action::Remove { .. } => "remove",
        Action::Leave => "leave",
        Action::Promote { .. } => "promote",
        Action::Settings { .. } => "settings",
    }
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_normalised_and_unique() {
        let c = random_code().unwrap();
        assert_eq!(c.len(), 23);
        assert_eq!(code_hash(&c), code_hash(&c.to_lowercase().replace('-', "")));
        assert_ne!(random_code().unwrap(), c);
    }
}
