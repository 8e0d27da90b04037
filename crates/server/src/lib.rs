//! The messaging server: stores and routes ciphertext, never plaintext.
//!
//! ```text
//!  device ──HTTP──▶ auth (session MAC + deny list)
//!     POST log entry ──▶ policy::apply (2nd line of defence) ──▶ store.append_log
//!     POST message   ──▶ signature + membership + epoch checks
//!                    ──▶ writer task: group commit (one fsync per batch)
//!                    ──▶ hub: fan-out to every connected device of every member (WS)
//!     PUT blob       ──▶ streamed to disk with a size limit
//! ```
//!
//! Confidentiality never depends on this process: it holds no key. It
//! enforces membership and revocation anyway, so a revoked device or a
//! non-member cannot even fetch ciphertext.
#![forbid(unsafe_code)]

mod api;
mod cluster;
mod connections;
mod controls;
mod hub;
mod inspect;
mod live;
mod mls;
mod openapi;
mod post;
mod roomlog;
mod secrets;
pub mod sequencer;
mod writer;

pub use api::{openapi, router};
pub use cluster::{ClusterConfig, ClusterError};

use cloister_crypto::signed::verify_cert;
use cloister_http::ApiError;
use cloister_policy::RoomState;
use cloister_proto::km::DeviceCert;
use cloister_proto::{DeviceId, RoomId, TenantId, UserId};
use cloister_store::ServerStore;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest attachment accepted, in bytes of ciphertext.
    pub max_attachment: u64,
    /// Session lifetime in seconds.
    pub session_secs: u64,
    /// Run as one node of several sharing the database, with live events
    /// between them over NATS (`None`: the only node).
    pub cluster: Option<ClusterConfig>,
    /// Rate limits (0 turns one off).
    pub limits: ServerLimits,
    /// How long an MLS group may still hold a leaf that should be gone (a
    /// revoked device, a disabled user, a removed member) before the server
    /// refuses messages in that epoch, in milliseconds.
    pub mls_grace_ms: u64,
}

/// The server's rate limits: averages per second, with bursts of ten
/// seconds' worth.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Messages one device posts.
    pub posts_per_sec: u32,
    /// Attachments one device uploads.
    pub uploads_per_sec: u32,
    /// Requests of any kind from one address.
    pub per_address_per_sec: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            posts_per_sec: 50,
            uploads_per_sec: 5,
            per_address_per_sec: 1000,
        }
    }
}

impl ServerLimits {
    /// Every limit off (load tests measure the server, not its limiter).
    pub fn off() -> Self {
        ServerLimits {
            posts_per_sec: 0,
            uploads_per_sec: 0,
            per_address_per_sec: 0,
        }
    }
}

/// The per-device limiters.
pub(crate) struct Limiters {
    pub(crate) posts: cloister_http::limit::Limiter<DeviceId>,
    pub(crate) uploads: cloister_http::limit::Limiter<DeviceId>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_attachment: cloister_proto::limits::DEFAULT_MAX_ATTACHMENT + (1 << 20),
            session_secs: 12 * 3600,
            cluster: None,
            limits: ServerLimits::default(),
            mls_grace_ms: 60_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("storage: {0}")]
    Store(#[from] cloister_store::StoreError),
    #[error("cannot prepare data directory {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{0}")]
    Crypto(#[from] cloister_crypto::CryptoError),
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub device: DeviceId,
    pub user: UserId,
    pub tenant: TenantId,
    pub cert: Arc<CertEntry>,
}

impl Caller {
    /// Surveillance and the malware scanner read every room of their tenant.
    pub fn reads_tenant(&self) -> bool {
        use cloister_proto::km::Role;
        self.cert.roles.contains(&Role::Surveillance) || self.cert.roles.contains(&Role::Inspector)
    }
}

/// A verified certificate with its parsed signing key.
#[derive(Debug)]
pub struct CertEntry {
    pub cert: DeviceCert,
    pub key: cloister_crypto::keys::VerifyKey,
}

impl std::ops::Deref for CertEntry {
    type Target = DeviceCert;
    fn deref(&self) -> &DeviceCert {
        &self.cert
    }
}

/// A tenant's capture policy, from its KM's newest signed notice.
#[derive(Debug, Clone)]
pub struct CapturePolicy {
    /// The default vault's receipt key.
    pub receipt_key: cloister_crypto::keys::VerifyKey,
    /// Vaults pinned to a jurisdiction: their receipt keys.
    pub regional: HashMap<String, cloister_crypto::keys::VerifyKey>,
    pub required: bool,
    pub ts: u64,
}

impl CapturePolicy {
    /// The policy a KM-signed capture-policy notice states.
    pub fn of(
        receipt_pk: &[u8; 32],
        regional: &[cloister_proto::km::RegionalVault],
        required: bool,
        ts: u64,
    ) -> Result<CapturePolicy, cloister_crypto::CryptoError> {
        Ok(CapturePolicy {
            receipt_key: cloister_crypto::keys::VerifyKey::from_bytes(receipt_pk)?,
            regional: regional
                .iter()
                .map(|r| {
                    Ok((
                        r.jurisdiction.clone(),
                        cloister_crypto::keys::VerifyKey::from_bytes(&r.receipt_pk.0)?,
                    ))
                })
                .collect::<Result<_, cloister_crypto::CryptoError>>()?,
            required,
            ts,
        })
    }

    /// The key of the vault that must have captured a message from a
    /// device certified in `jurisdiction`.
    pub fn receipt_key_for(&self, jurisdiction: &str) -> &cloister_crypto::keys::VerifyKey {
        self.regional.get(jurisdiction).unwrap_or(&self.receipt_key)
    }
}

/// Revoked devices and disabled users, from the store.
async fn load_deny(
    store: &dyn ServerStore,
) -> Result<cloister_standing::DenyList, cloister_store::StoreError> {
    let (revoked, disabled) = store.deny_list().await?;
    let mut deny = cloister_standing::DenyList::pushed();
    for d in revoked.iter().filter_map(|d| d.parse().ok()) {
        deny.revoke(d);
    }
    for u in disabled.iter().filter_map(|u| u.parse().ok()) {
        deny.disable(u);
    }
    Ok(deny)
}

/// Tenants' capture policies, from the store (verified against the KM key
/// when they arrived).
async fn load_capture(
    store: &dyn ServerStore,
) -> Result<HashMap<TenantId, CapturePolicy>, ServerError> {
    let mut capture = HashMap::new();
    for n in store.tenant_notices("capture").await? {
        let Ok(sn) = serde_json::from_slice::<cloister_proto::km::SignedNotice>(&n) else {
            continue;
        };
        if let Ok(cloister_proto::km::Notice::CapturePolicy {
            tenant,
            receipt_pk,
            required,
            ts,
            regional,
        }) = serde_json::from_slice(sn.body.as_slice())
        {
            capture.insert(
                tenant,
                CapturePolicy::of(&receipt_pk.0, &regional, required, ts)?,
            );
        }
    }
    Ok(capture)
}

/// An MLS group's leaves at one epoch.
type EpochRoster = (u64, Arc<Vec<cloister_mls::Leaf>>);

/// Shared server state.
pub struct Server {
    store: Arc<dyn ServerStore>,
    blobs: Arc<dyn cloister_store::BlobStore>,
    session_key: [u8; 32],
    operator_token_hash: [u8; 32],
    config: ServerConfig,
    tenants: RwLock<HashMap<TenantId, [u8; 32]>>,
    /// Tenants' capture policies: (receipt key, required, notice ts).
    capture: RwLock<HashMap<TenantId, CapturePolicy>>,
    certs: RwLock<HashMap<DeviceId, Arc<CertEntry>>>,
    /// Revoked devices and disabled users, from KM-signed notices.
    deny: RwLock<cloister_standing::DenyList>,
    /// Tenants' communication controls, from their KMs' newest notices.
    controls: RwLock<HashMap<TenantId, Arc<cloister_policy::controls::Rules>>>,
    rooms: Mutex<HashMap<RoomId, Arc<RoomState>>>,
    /// Each MLS room's leaves at an epoch (an epoch's roster never changes,
    /// so the cache is right on every node).
    mls_rosters: Mutex<HashMap<RoomId, EpochRoster>>,
    /// Serialises log appends so the second-line policy check sees a stable head.
    log_lock: cloister_store::RoomLocks,
    hub: hub::Hub,
    /// Live delivery: here, or through the cluster.
    fanout: cluster::Fanout,
    writer: writer::Writer,
    metrics: Arc<cloister_http::ops::Metrics>,
    pub(crate) limiters: Limiters,
}

pub(crate) fn io_err(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The operator token file of a server data directory.
pub fn operator_token_path(dir: &Path) -> PathBuf {
    dir.join("operator.token")
}

impl Server {
    /// Open (creating if needed) a server data directory with the SQLite store.
    pub async fn open_dir(dir: &Path, config: ServerConfig) -> Result<Arc<Server>, ServerError> {
        Self::open_url(dir, None, config).await
    }

    /// Open with the store at `database` (`sqlite://…`, `postgres://…`;
    /// default: SQLite in `dir`).
    pub async fn open_url(
        dir: &Path,
        database: Option<&str>,
        config: ServerConfig,
    ) -> Result<Arc<Server>, ServerError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let url = match database {
            Some(u) => u.to_owned(),
            None => cloister_store::sqlite_url(&dir.join("server.db")),
        };
        let store = cloister_store::SqlServerStore::open(&url).await?;
        // Nodes sharing PostgreSQL keep attachments there, so any node
        // serves any; one node keeps them as files beside its database.
        let blobs: Arc<dyn cloister_store::BlobStore> = match cloister_store::backend_of(&url)? {
            cloister_store::Backend::Postgres => {
                Arc::new(cloister_store::SqlBlobStore::of(&store).await?)
            }
            cloister_store::Backend::Sqlite => {
                Arc::new(cloister_store::FsBlobStore::open(&dir.join("blobs"))?)
            }
        };
        Self::open(Arc::new(store), blobs, dir, config).await
    }

    /// Open with any store; `dir` holds the server's own secrets.
    pub async fn open(
        store: Arc<dyn ServerStore>,
        blobs: Arc<dyn cloister_store::BlobStore>,
        dir: &Path,
        config: ServerConfig,
    ) -> Result<Arc<Server>, ServerError> {
        let shared = secrets::load(&*store, dir).await?;
        let deny = load_deny(&*store).await?;
        let capture = load_capture(&*store).await?;
        let hub = hub::Hub::default();
        let (fanout, joined) = match &config.cluster {
            Some(c) => {
                let key = cluster::event_key(&shared.session_key);
                let (f, j) = cluster::join(c, &shared.cluster_id, key, hub.clone()).await?;
                (f, Some(j))
            }
            None => (cluster::Fanout::local(hub.clone()), None),
        };
        let limiters = Limiters {
            posts: cloister_http::limit::Limiter::per_second(
                "messages from this device",
                config.limits.posts_per_sec,
            ),
            uploads: cloister_http::limit::Limiter::per_second(
                "uploads from this device",
                config.limits.uploads_per_sec,
            ),
        };
        let metrics = cloister_http::ops::Metrics::new("server");
        let accepted = metrics.counter(
            "messages_accepted",
            "Messages stored and fanned out (a duplicate post is not counted)",
        );
        let writer = writer::Writer::start(store.clone(), fanout.clone(), accepted);
        metrics.register(
            "deliveries",
            "Events queued to live connections",
            hub.delivered.clone(),
        );
        metrics.register(
            "slow_connections_dropped",
            "Live connections dropped because they fell behind",
            hub.dropped.clone(),
        );
        let connected = metrics.gauge("connected_clients", "Live WebSocket connections");
        let h = hub.clone();
        metrics.on_scrape(move || {
            connected.set(i64::try_from(h.connections()).unwrap_or(i64::MAX));
        });
        let server = Arc::new(Server {
            store,
            blobs,
            session_key: shared.session_key,
            operator_token_hash: shared.operator_token_hash,
            config,
            tenants: RwLock::new(HashMap::new()),
            capture: RwLock::new(capture),
            certs: RwLock::new(HashMap::new()),
            deny: RwLock::new(deny),
            controls: RwLock::new(HashMap::new()),
            rooms: Mutex::new(HashMap::new()),
            mls_rosters: Mutex::new(HashMap::new()),
            log_lock: Default::default(),
            hub,
            fanout,
            writer,
            metrics,
            limiters,
        });
        server.load_controls().await?;
        if let Some(j) = joined {
            j.start(Arc::downgrade(&server));
        }
        Ok(server)
    }

    /// This server's metrics registry (for the operations listener).
    pub fn metrics(&self) -> &Arc<cloister_http::ops::Metrics> {
        &self.metrics
    }

    /// Ready when the database answers and, on a cluster node, NATS is
    /// connected.
    pub fn ready_check(self: &Arc<Self>) -> cloister_http::ops::ReadyCheck {
        let server = Arc::downgrade(self);
        cloister_http::ops::ready_check(move || {
            let server = server.upgrade();
            async move {
                let server = server.ok_or("the server is stopping")?;
                server
                    .store
                    .ping()
                    .await
                    .map_err(|e| format!("database: {e}"))?;
                server.fanout.ready()
            }
        })
    }

    /// Close every live WebSocket connection (used when stopping).
    pub fn close_connections(&self) {
        self.hub.close_all();
    }

    /// Number of live WebSocket connections.
    pub fn connections(&self) -> usize {
        self.hub.connections()
    }

    async fn tenant_key(&self, tenant: &TenantId) -> Result<[u8; 32], ApiError> {
        if let Some(k) = self
            .tenants
            .read()
            .ok()
            .and_then(|m| m.get(tenant).copied())
        {
            return Ok(k);
        }
        let k = self
            .store
            .get_tenant(tenant)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::not_found(
                    "unknown_tenant",
                    format!("tenant {tenant} is not registered on this server"),
                )
            })?;
        let k: [u8; 32] = k
            .try_into()
            .map_err(|_| ApiError::internal("corrupt tenant key"))?;
        if let Ok(mut m) = self.tenants.write() {
            m.insert(tenant.clone(), k);
        }
        Ok(k)
    }

    /// A device's verified certificate (from cache or store).
    async fn cert(&self, device: &DeviceId) -> Result<Arc<CertEntry>, ApiError> {
        if let Some(c) = self.certs.read().ok().and_then(|m| m.get(device).cloned()) {
            return Ok(c);
        }
        let row = self.device_row(device).await?;
        let sc: cloister_proto::km::SignedCert =
            serde_json::from_slice(&row.cert).map_err(ApiError::internal)?;
        let tenant: TenantId = row.tenant.parse().map_err(ApiError::internal)?;
        let key = self.tenant_key(&tenant).await?;
        let cert = verify_cert(&key, &sc).map_err(ApiError::internal)?;
        let vk = cloister_crypto::keys::VerifyKey::from_bytes(&cert.sign_pk.0)
            .map_err(ApiError::internal)?;
        let cert = Arc::new(CertEntry { cert, key: vk });
        if let Ok(mut m) = self.certs.write() {
            m.insert(*device, cert.clone());
        }
        Ok(cert)
    }

    /// A registered device's stored row.
    async fn device_row(&self, device: &DeviceId) -> Result<cloister_store::DeviceRow, ApiError> {
        self.store
            .get_device(device)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::not_found(
                    "unknown_device",
                    format!("device {device} is not registered"),
                )
            })
    }

    /// The caller's certificate must be current: not expired, not revoked,
    /// user not disabled (the one standing check every service runs).
    fn check_standing(&self, cert: &DeviceCert) -> Result<(), ApiError> {
        let deny = self
            .deny
            .read()
            .map_err(|_| ApiError::internal("deny list lock"))?;
        Ok(cloister_standing::check(
            cert,
            None,
            cloister_proto::now_millis(),
            &*deny,
        )?)
    }

    async fn room(&self, room: &RoomId) -> Result<Option<Arc<RoomState>>, ApiError> {
        if let Some(s) = self.rooms.lock().ok().and_then(|m| m.get(room).cloned()) {
            return Ok(Some(s));
        }
        let Some(row) = self
            .store
            .get_room(room)
            .await
            .map_err(ApiError::internal)?
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

    /// The room, if the caller may read it: a current member, or a
    /// surveillance role of the room's tenant (read-only; its keys are
    /// released, and logged, by the KM). A uniform 404 otherwise.
    async fn readable_room(&self, room: &RoomId, c: &Caller) -> Result<Arc<RoomState>, ApiError> {
        match self.room(room).await? {
            Some(s) if s.is_member(&c.user) || (s.tenant == c.tenant && c.reads_tenant()) => Ok(s),
            _ => Err(ApiError::not_found(
                "no_such_room",
                format!("no room {room} that you are a member of"),
            )),
        }
    }

    fn capture_policy(&self, tenant: &TenantId) -> Option<CapturePolicy> {
        self.capture
            .read()
            .ok()
            .and_then(|m| m.get(tenant).cloned())
    }

    /// May `me` see the certificates of `other`, a user of another firm?
    /// Only if `me` is in a room `other` is or was in, or the two are
    /// connected (pending included: the asked user checks who asks).
    async fn may_see_user(&self, me: &UserId, other: &str) -> Result<bool, ApiError> {
        let Ok(other) = other.parse::<UserId>() else {
            return Ok(false);
        };
        for row in self
            .store
            .rooms_of_user(me)
            .await
            .map_err(ApiError::internal)?
        {
            let id = row.room;
            if self
                .room(&id)
                .await?
                .is_some_and(|st| st.grants.contains_key(&other))
            {
                return Ok(true);
            }
        }
        for c in self
            .store
            .connections_of(me)
            .await
            .map_err(ApiError::internal)?
        {
            if let Ok(sb) = serde_json::from_slice::<cloister_proto::km::SignedBlob>(&c.request)
                && let Ok(r) = cloister_crypto::signed::peek_blob::<
                    cloister_proto::federation::ConnectionRequest,
                >(&sb, "connection request")
                && (r.from == other || r.to == other)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The room, if `user` is a current member; a uniform 404 otherwise (no existence oracle).
    async fn member_room(&self, room: &RoomId, user: &UserId) -> Result<Arc<RoomState>, ApiError> {
        match self.room(room).await? {
            Some(s) if s.is_member(user) => Ok(s),
            _ => Err(ApiError::not_found(
                "no_such_room",
                format!("no room {room} that you are a member of"),
            )),
        }
    }
}
