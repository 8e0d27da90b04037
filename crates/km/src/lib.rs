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
mod attestation;
pub mod compliance;
mod connections;
mod error;
pub use error::{Denied, Kind};
mod devices;
mod directory;
mod dispatch;
mod escrow;
mod exchange;
pub mod http;
mod keys;
mod logkey;
mod membership;
mod metrics;
mod openapi;
pub mod provider;
mod rekey;
mod roomcontrol;
mod rooms;
mod scim;
mod shared_directory;
mod tmk;
mod transparency;
mod trust;
mod users;
mod vaults;

use cloister_crypto::signed::{
    enrol_transcript, sign_cert, sign_notice, verify_cert, verify_request,
};
use cloister_crypto::{KmSigner, RoomKey, hpke_seal, keys::verify, sha256};
use cloister_log::{AuditEvent, AuditRecord};
use cloister_policy::RoomState;
use cloister_proto::b64::Fixed;
use cloister_proto::km::{
    AddUserResponse, AdminResponse, AuditEntry, AuditListResponse, CheckpointResponse,
    ConsistencyProof, DeviceCert, DeviceRecord, EnrolRequest, EscrowDescriptor, InclusionProof,
    IndexKeysResponse, KmInfo, KmOp, Notice, RequestBody, Role, RoomKeysResponse, SealedShare,
    SignedCert, SignedEscrow, SignedNotice, SignedRequest, UserRecord, WhoHasKeysResponse,
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
    /// Rate limits (0 turns one off).
    pub limits: KmLimits,
    /// Serve the routes only services call (KM to KM, the vault's deny
    /// list) only over connections with a client certificate.
    pub require_service_certs: bool,
}

/// The KM's rate limits: averages, with bursts of ten seconds' worth
/// (enrolments: of `enrolments_per_min`).
#[derive(Debug, Clone)]
pub struct KmLimits {
    /// Signed requests of one device, per second.
    pub requests_per_sec: u32,
    /// Key requests of one device, per second.
    pub key_requests_per_sec: u32,
    /// Enrolment attempts from one address, per minute.
    pub enrolments_per_min: u32,
    /// Requests of any kind from one address, per second.
    pub per_address_per_sec: u32,
}

impl Default for KmLimits {
    fn default() -> Self {
        KmLimits {
            requests_per_sec: 50,
            key_requests_per_sec: 20,
            enrolments_per_min: 60,
            per_address_per_sec: 1000,
        }
    }
}

impl KmLimits {
    /// Every limit off (load tests measure the KM, not its limiter).
    pub fn off() -> Self {
        KmLimits {
            requests_per_sec: 0,
            key_requests_per_sec: 0,
            enrolments_per_min: 0,
            per_address_per_sec: 0,
        }
    }
}

/// How long a device may use a released key without asking again: the
/// longest a crypto-lock takes to reach a device that holds keys.
/// How long a device certificate is valid by default: a week. A device
/// renews it without a code while in good standing (after two thirds of
/// its life); one offline longer re-enrols. Short, so a role taken away or
/// a certificate copied lasts at most this long anywhere.
pub const DEFAULT_CERT_SECS: u64 = 7 * 24 * 3600;

pub const DEFAULT_LEASE_SECS: u64 = 600;

/// An enrolment code is burned after this many wrong tries for its user.
pub const MAX_CODE_TRIES: u32 = 5;

/// The per-device limiters.
struct Limiters {
    requests: cloister_http::limit::Limiter<DeviceId>,
    keys: cloister_http::limit::Limiter<DeviceId>,
}

impl Default for KmConfig {
    fn default() -> Self {
        KmConfig {
            lease_secs: DEFAULT_LEASE_SECS,
            cert_secs: DEFAULT_CERT_SECS,
            code_secs: 7 * 24 * 3600,
            witnesses: Vec::new(),
            limits: KmLimits::default(),
            require_service_certs: false,
        }
    }
}

/// Startup and initialisation errors (request errors are [`Denied`]s).
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
    /// X25519 key partner KMs seal room keys to (KM-to-KM exchange).
    exchange: cloister_crypto::ExchangeKey,
    provider: Arc<dyn KeyProvider>,
    store: Arc<dyn KmStore>,
    config: KmConfig,
    rooms: Mutex<HashMap<RoomId, Arc<RoomState>>>,
    /// The newest signed head of each room, reused for a second while the
    /// room does not change (one signature for a burst of key releases).
    heads: Mutex<HashMap<RoomId, rooms::CachedHead>>,
    /// Nonces of key requests (replay of a key request only re-seals keys to the
    /// same device, so an in-memory window suffices; admin nonces are durable).
    recent_nonces: Mutex<HashMap<(DeviceId, [u8; 16]), u64>>,
    /// Serialises log ingestion per room (a room's log is appended in order).
    ingest: cloister_store::RoomLocks,
    /// One key exchange with a home KM per room at a time (the devices of
    /// a firm asking at once share the first one's answer).
    exchanges: cloister_store::RoomLocks,
    /// Creating a key (read) against re-wrapping them all (write, retention).
    keys_lock: tokio::sync::RwLock<()>,
    /// One master-key rotation step at a time.
    rotation: tokio::sync::Mutex<()>,
    /// Verified certificates of devices found active (device active, user
    /// active). The KM is the only writer of that state, so it evicts entries
    /// itself on revocation and disabling.
    active: Mutex<HashMap<DeviceId, Arc<DeviceCert>>>,
    /// Moves on at every eviction from `active` (see `evict_active`).
    active_epoch: std::sync::atomic::AtomicU64,
    /// Room keys as stored: wrapped under the TMK. Every use still unwraps
    /// through the key provider, so a crypto-lock takes effect at once.
    wrapped: Mutex<WrappedKeys>,
    /// Other firms' device certificates, verified under their firm's
    /// pinned key (actors of rooms shared with those firms).
    foreign: Mutex<HashMap<DeviceId, Arc<DeviceCert>>>,
    audit: Arc<audit::AuditLog>,
    metrics: metrics::KmMetrics,
    limiters: Limiters,
    witnesses: audit::Witnesses,
    directory: directory::DirState,
    notifier: directory::notify::Notifier,
}

/// What `init` returns: the public KM description and the bootstrap admin code.
#[derive(Debug)]
pub struct InitOutput {
    pub info: KmInfo,
    pub admin_user: UserId,
    pub admin_code: String,
}

pub(crate) fn store_err(e: cloister_store::StoreError) -> Denied {
    Denied::internal(e)
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
        let signer = Self::km_signer(&store, &provider).await?;
        let log_signer = Self::log_signer(&store, &provider).await?;
        let exchange = Self::exchange_key(&store, &provider).await?;
        store
            .init_meta(META_TENANT, tenant.as_str().as_bytes())
            .await?;
        let audit =
            audit::AuditLog::open(audit_store, log_signer, audit::origin_for(&tenant)).await?;
        let km = Km::new(
            tenant.clone(),
            (signer, exchange),
            provider,
            store,
            config,
            audit,
        );
        km.load_directory().await?;
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

    /// Whether this store already holds a tenant (its master key must then
    /// exist somewhere: a new one would open none of its keys).
    pub async fn store_has_tenant(store: &dyn KmStore) -> Result<bool, KmError> {
        Ok(store.get_meta(META_TENANT).await?.is_some())
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
        let signer = Self::stored_km_signer(&store, &provider).await?;
        let origin = audit::origin_for(&tenant);
        let log_signer = Self::settled_log_signer(&store, &provider, &origin).await?;
        let exchange = Self::exchange_key(&store, &provider).await?;
        let audit = audit::AuditLog::open(audit_store, log_signer, origin).await?;
        let km = Km::new(tenant, (signer, exchange), provider, store, config, audit);
        km.load_directory().await?;
        km.publish_handover().await?;
        Ok(km)
    }

    /// Append an audit record; fails closed.
    async fn record(&self, actor: Option<&UserId>, event: AuditEvent) -> Result<u64, Denied> {
        let rec = AuditRecord {
            ts: now_millis(),
            actor: actor.cloned(),
            event,
        };
        let index = self.audit.append(&rec).await?;
        self.metrics.observe(&rec.event);
        Ok(index)
    }

    /// Record that this KM's data came back from a backup (the first
    /// entry after the restore).
    pub async fn record_restore(
        &self,
        backup_created_ms: u64,
        size_at_backup: u64,
    ) -> Result<u64, Denied> {
        tracing::warn!(
            size_at_backup,
            "the KM was restored from a backup; audit entries after it are lost"
        );
        self.record(
            None,
            AuditEvent::LogRestored {
                backup_created_ms,
                size_at_backup,
            },
        )
        .await
    }

    /// Which key provider holds the master key (`file`, `pkcs11`).
    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// Whether service routes need a client certificate.
    pub fn requires_service_certs(&self) -> bool {
        self.config.require_service_certs
    }

    /// The KM's rate limits.
    pub fn limits(&self) -> &KmLimits {
        &self.config.limits
    }

    /// This KM's metrics registry (for the operations listener).
    pub fn metrics(&self) -> &Arc<cloister_http::ops::Metrics> {
        &self.metrics.ops
    }

    /// Ready when its database answers and the tenant master key can be
    /// used (a key provider that cannot unwrap is a crypto-locked tenant).
    pub fn ready_check(self: &Arc<Self>) -> cloister_http::ops::ReadyCheck {
        let km = Arc::downgrade(self);
        cloister_http::ops::ready_check(move || {
            let km = km.upgrade();
            async move {
                let km = km.ok_or("the KM is stopping")?;
                km.store
                    .ping()
                    .await
                    .map_err(|e| format!("database: {e}"))?;
                // One unwrap through the key provider proves the TMK usable.
                km.probe_tmk().await.map_err(|e| e.to_string())
            }
        })
    }

    pub fn audit(&self) -> &Arc<audit::AuditLog> {
        &self.audit
    }

    fn new(
        tenant: TenantId,
        (signer, exchange): (KmSigner, cloister_crypto::ExchangeKey),
        provider: Arc<dyn KeyProvider>,
        store: Arc<dyn KmStore>,
        config: KmConfig,
        audit: Arc<audit::AuditLog>,
    ) -> Km {
        let witnesses = audit::Witnesses::new(&config.witnesses);
        let metrics = metrics::KmMetrics::new(&audit);
        let limiters = Limiters {
            requests: cloister_http::limit::Limiter::per_second(
                "requests from this device",
                config.limits.requests_per_sec,
            ),
            keys: cloister_http::limit::Limiter::per_second(
                "key requests from this device",
                config.limits.key_requests_per_sec,
            ),
        };
        Km {
            tenant,
            signer,
            exchange,
            provider,
            store,
            config,
            rooms: Mutex::new(HashMap::new()),
            heads: Mutex::new(HashMap::new()),
            recent_nonces: Mutex::new(HashMap::new()),
            ingest: Default::default(),
            exchanges: Default::default(),
            keys_lock: tokio::sync::RwLock::new(()),
            rotation: tokio::sync::Mutex::new(()),
            active: Mutex::new(HashMap::new()),
            active_epoch: Default::default(),
            wrapped: Mutex::new(HashMap::new()),
            foreign: Mutex::new(HashMap::new()),
            audit,
            metrics,
            limiters,
            witnesses,
            directory: Default::default(),
            notifier: Default::default(),
        }
    }

    /// Require a role: carried by the device's certificate and not since
    /// denied to the user (an entitlement revoked by an admin).
    pub(crate) fn need(
        &self,
        cert: &DeviceCert,
        role: Role,
        what: &'static str,
    ) -> Result<(), Denied> {
        cloister_standing::require_role(cert, role, what)?;
        let (_, denied) = self.dir().role_overrides(&cert.user);
        if denied.contains(&role) {
            return Err(Denied::forbidden(
                "role_revoked",
                format!(
                    "{} no longer holds the {} role ({what})",
                    cert.user,
                    role.as_str()
                ),
            ));
        }
        Ok(())
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
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, Denied> {
    serde_json::to_value(v).map_err(Denied::internal)
}
