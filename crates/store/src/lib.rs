//! Storage for the Cloister services.
//!
//! ```text
//!  server crate ──▶ dyn ServerStore ─┐
//!  km crate     ──▶ dyn KmStore     ─┼─▶ Sql*Store ──▶ Db ──▶ sqlite://… (WAL, one writer)
//!  vault crate  ──▶ dyn VaultStore  ─┘                    └─▶ postgres://… (one pool)
//! ```
//!
//! Callers only see the traits; the URL picks the engine and each store
//! runs its own versioned migrations for it on open (`db.rs`). What two
//! stores share is written once: the room log ([`RoomLogStore`], server and
//! KM) and the audit log ([`AuditStore`], KM and vault). Stores hold
//! opaque bytes (certificates, signed statements, envelopes, wrapped keys):
//! they never interpret or see plaintext, and every multi-row change is one
//! transaction.
#![forbid(unsafe_code)]

use async_trait::async_trait;

mod blob;
mod db;
mod gateway;
mod lease;
mod snapshot;
mod sql;
pub mod testkit;
mod witness;
pub use blob::{BlobStore, BlobStream, BlobWriter, FsBlobStore, SqlBlobStore};
pub use cloister_proto::RoomId;
use cloister_proto::{DeviceId, MessageId, TenantId, UserId};
pub use db::{Backend, backend_of, open_sqlite, redact_url, sqlite_url};
pub use gateway::{Conversation, Failure, GatewayStore, Inbound};
pub use lease::Lease;
pub use snapshot::{sqlite_latest_checkpoint, sqlite_snapshot};
pub use sql::{SqlKmStore, SqlServerStore, SqlVaultStore};
pub use witness::{WitnessStore, WitnessedLog};

/// Storage errors. `Backend` details are logged, never shown to API callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness or precondition check failed (e.g. the log moved on).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("storage backend error: {0}")]
    Backend(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A device as the server knows it.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub device: String,
    pub tenant: String,
    pub user: String,
    /// JSON of the KM-signed certificate.
    pub cert: Vec<u8>,
    pub revoked: bool,
}

/// A connection as stored: JSON of the signed request, answer and removal.
#[derive(Debug, Clone)]
pub struct ConnectionRow {
    pub id: String,
    pub request: Vec<u8>,
    pub answer: Option<Vec<u8>>,
    pub removal: Option<Vec<u8>>,
}

/// Entries to append to one room's log (server or KM), with the room's
/// state after them.
#[derive(Debug, Clone, Copy)]
pub struct RoomAppend<'a> {
    pub room: &'a RoomId,
    /// The stored state's seq the entries extend (`None`: a new room).
    pub expected_seq: Option<u64>,
    pub entries: &'a [LogRow],
    pub state: &'a [u8],
    /// Every member after the entries (the server's member index; the KM
    /// keeps none).
    pub members: &'a [String],
}

/// A log entry with its position and chain hash.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub seq: u64,
    /// JSON of the signed statement.
    pub entry: Vec<u8>,
    pub hash: Vec<u8>,
}

/// A room's derived state after its last verified entry.
#[derive(Debug, Clone)]
pub struct RoomRow {
    pub room: RoomId,
    pub seq: u64,
    /// JSON of the replayed room state.
    pub state: Vec<u8>,
}

/// A message to store.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub room: String,
    pub msg_id: String,
    pub epoch: u64,
    pub device: String,
    pub ts: u64,
    pub header: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub sig: Vec<u8>,
}

/// A stored message.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub seq: u64,
    pub header: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub sig: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct BlobRow {
    pub id: String,
    pub room: String,
    pub device: String,
    pub size: u64,
}

/// Outcome of one message in a batch insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored at `seq`; `prev` is the seq of the room's message before it
    /// (0 for the first), so events can be chained per room.
    Seq {
        seq: u64,
        prev: u64,
    },
    Duplicate,
}

/// What a wrong try did to a user's enrolment code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeTries {
    /// The user has no live code.
    NoCode,
    /// The code lives on, with this many wrong tries.
    Counted(u32),
    /// This try was the last allowed: the code is gone.
    Burned,
}

/// Whether the database answers (a service's readiness).
#[async_trait]
pub trait Ping: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;
}

/// A room's verified membership log and its replayed state, kept the same
/// way by the server and the KM.
#[async_trait]
pub trait RoomLogStore: Ping {
    async fn get_room(&self, room: &RoomId) -> Result<Option<RoomRow>>;
    /// Append to several rooms' logs in one transaction: all or nothing
    /// (`Conflict` if any room's stored state is not at its `expected_seq`,
    /// or another writer appended first).
    async fn append_logs(&self, batch: &[RoomAppend<'_>]) -> Result<()>;
    /// Append one room's entries and its new state (see `append_logs`).
    async fn append_log(
        &self,
        room: &RoomId,
        expected_seq: Option<u64>,
        entries: &[LogRow],
        state: &[u8],
        members: &[String],
    ) -> Result<()> {
        self.append_logs(&[RoomAppend {
            room,
            expected_seq,
            entries,
            state,
            members,
        }])
        .await
    }
    /// Verified entries of a room from `from_seq` (at most `limit`).
    async fn room_log(&self, room: &RoomId, from_seq: u64, limit: u32) -> Result<Vec<LogRow>>;
    async fn room_log_hash(&self, room: &RoomId, seq: u64) -> Result<Option<Vec<u8>>>;
}

/// The messaging server's storage.
/// An MLS group as the server follows it.
#[derive(Debug, Clone)]
pub struct MlsGroupRow {
    pub epoch: u64,
    /// The observer's snapshot (public state only).
    pub state: Vec<u8>,
    /// When the server first saw a leaf in this epoch that may not be there.
    pub stale_since: Option<u64>,
}

/// The server's MLS delivery-service tables (ADR 0028).
#[async_trait]
pub trait MlsStore: Send + Sync {
    /// Add a device's one-time key packages (`(reference, bytes)`, keeping at
    /// most `max`: the oldest go) and replace its last-resort one.
    async fn put_key_packages(
        &self,
        device: &DeviceId,
        one_time: &[(String, Vec<u8>)],
        last_resort: Option<&(String, Vec<u8>)>,
        max: usize,
    ) -> Result<()>;
    /// (one-time packages held, whether a last-resort one is held).
    async fn key_package_count(&self, device: &DeviceId) -> Result<(u32, bool)>;
    /// Take one one-time key package of a device (it is deleted), else its
    /// last-resort one (kept).
    async fn claim_key_package(&self, device: &DeviceId) -> Result<Option<Vec<u8>>>;
    async fn mls_group(&self, room: &RoomId) -> Result<Option<MlsGroupRow>>;
    /// A group's epoch and `stale_since`, without its state.
    async fn mls_epoch(&self, room: &RoomId) -> Result<Option<(u64, Option<u64>)>>;
    /// Start following a group; false if the room has one already.
    async fn init_mls_group(&self, room: &RoomId, state: &[u8]) -> Result<bool>;
    /// Store a commit made in `epoch`, the group state after it and its
    /// Welcome for `welcomed`, all at once and only if the group is still
    /// at `epoch` (false otherwise: another commit won that epoch).
    async fn put_mls_commit(
        &self,
        room: &RoomId,
        epoch: u64,
        commit: &[u8],
        state: &[u8],
        welcome: Option<&[u8]>,
        welcomed: &[DeviceId],
    ) -> Result<bool>;
    /// Commits made in epochs `from..`, oldest first, at most `limit`.
    async fn mls_commits(
        &self,
        room: &RoomId,
        from: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Mark (or clear) when a disallowed leaf was first seen in `epoch`.
    async fn set_mls_stale_since(
        &self,
        room: &RoomId,
        epoch: u64,
        since: Option<u64>,
    ) -> Result<()>;
    /// Welcomes waiting for a device: (room, epoch, bytes).
    async fn mls_welcomes(&self, device: &DeviceId) -> Result<Vec<(RoomId, u64, Vec<u8>)>>;
    async fn delete_mls_welcome(&self, device: &DeviceId, room: &RoomId) -> Result<()>;
}

#[async_trait]
pub trait ServerStore: RoomLogStore + MlsStore {
    /// A value every node of the server shares (session key, …).
    async fn server_meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Set a shared value once; `Conflict` if another node set it first.
    async fn init_server_meta(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Record a login's nonce; false if it was used already (on any node).
    /// Prunes nonces older than `prune_before`.
    async fn use_login_nonce(&self, nonce: &[u8], ts: u64, prune_before: u64) -> Result<bool>;
    /// Register a tenant; registering the same key again is a no-op, another key conflicts.
    async fn put_tenant(&self, tenant: &TenantId, km_pk: &[u8]) -> Result<()>;
    async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<Vec<u8>>>;

    async fn put_device(&self, d: &DeviceRow) -> Result<()>;
    async fn get_device(&self, device: &DeviceId) -> Result<Option<DeviceRow>>;
    async fn devices_of_user(&self, user: &UserId) -> Result<Vec<DeviceRow>>;
    async fn revoke_device(&self, device: &DeviceId) -> Result<()>;
    async fn disable_user(&self, user: &UserId) -> Result<()>;
    /// Disable or enable a user as of a KM notice's time; false (and no
    /// change) if a notice as new or newer was already applied (replay).
    async fn set_user_standing(&self, user: &UserId, disabled: bool, ts: u64) -> Result<bool>;
    /// Keep a tenant's newest KM-signed notice of a kind (`controls`,
    /// `capture`): false if one of the same or a higher version is stored.
    async fn put_tenant_notice(
        &self,
        tenant: &TenantId,
        kind: &str,
        version: u64,
        notice: &[u8],
    ) -> Result<bool>;
    async fn tenant_notices(&self, kind: &str) -> Result<Vec<Vec<u8>>>;
    /// A connection request between users of two firms (false if the id
    /// is taken).
    async fn put_connection(
        &self,
        id: &[u8; 32],
        from: &UserId,
        to: &UserId,
        request: &[u8],
    ) -> Result<bool>;
    /// The answer, once (false if answered or removed already).
    async fn set_connection_answer(&self, id: &[u8; 32], answer: &[u8]) -> Result<bool>;
    /// The removal, once (false if removed already).
    async fn set_connection_removal(&self, id: &[u8; 32], removal: &[u8]) -> Result<bool>;
    async fn get_connection(&self, id: &[u8; 32]) -> Result<Option<ConnectionRow>>;
    /// Connections a user asked for or was asked for, oldest first.
    async fn connections_of(&self, user: &UserId) -> Result<Vec<ConnectionRow>>;
    /// Which tenant a room belongs to (set at its creation).
    async fn set_room_tenant(&self, room: &RoomId, tenant: &TenantId) -> Result<()>;
    async fn tenant_rooms(&self, tenant: &TenantId) -> Result<Vec<String>>;
    /// A scanner device's signed verdict on a message's file (its newest).
    async fn put_verdict(
        &self,
        room: &RoomId,
        message_id: &MessageId,
        device: &DeviceId,
        v: &[u8],
    ) -> Result<()>;
    async fn verdicts(&self, room: &RoomId, message_id: &MessageId) -> Result<Vec<Vec<u8>>>;
    /// Keep the firm's room directory (discoverable rooms) in step.
    async fn set_listed(&self, room: &RoomId, tenant: &TenantId, listed: bool) -> Result<()>;
    async fn listed_rooms(&self, tenant: &TenantId) -> Result<Vec<String>>;
    async fn is_user_disabled(&self, user: &UserId) -> Result<bool>;
    /// Devices revoked and users disabled (to prime the in-memory deny list).
    async fn deny_list(&self) -> Result<(Vec<String>, Vec<String>)>;

    async fn rooms_of_user(&self, user: &UserId) -> Result<Vec<RoomRow>>;

    /// Insert messages in one transaction; duplicates (same message id) are reported, not stored.
    async fn insert_messages(&self, batch: &[NewMessage]) -> Result<Vec<Inserted>>;
    /// Messages of a room with seq < `before`, newest `limit`, returned oldest first.
    async fn history(&self, room: &RoomId, before: u64, limit: u32) -> Result<Vec<MessageRow>>;

    /// Keep a KM-signed `keys_shredded` notice for a room.
    async fn add_shredded(&self, room: &RoomId, notice: &[u8]) -> Result<()>;
    async fn shredded_notices(&self, room: &RoomId) -> Result<Vec<Vec<u8>>>;
    async fn put_blob(&self, b: &BlobRow) -> Result<()>;
    async fn get_blob(&self, id: &str) -> Result<Option<BlobRow>>;
}

/// A user as the KM knows it.
#[derive(Debug, Clone)]
pub struct KmUserRow {
    pub user: String,
    pub roles: String,
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct KmDeviceRow {
    pub device: String,
    pub user: String,
    pub cert: Vec<u8>,
    pub status: String,
    pub issued_at: u64,
}

/// One directory record at the KM: a SCIM user or group, a barrier, a
/// SCIM token, as a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirRow {
    pub kind: String,
    pub id: String,
    pub doc: Vec<u8>,
}

/// The KM's directory: small enough to be held in memory, so the store
/// only loads it all once and writes changes through.
#[async_trait]
pub trait DirectoryStore: Send + Sync + 'static {
    async fn dir_all(&self) -> Result<Vec<DirRow>>;
    /// Write `put` and delete `delete` (kind, id) in one transaction.
    async fn dir_write(&self, put: &[DirRow], delete: &[(String, String)]) -> Result<()>;
}

/// A re-wrap: (name, number, the wrapped bytes it replaces, the new ones).
pub type RewrapRow = (String, u64, Vec<u8>, Vec<u8>);

/// The Key Manager's storage. Room keys are only ever stored wrapped.
#[async_trait]
pub trait KmStore: DirectoryStore + RoomLogStore + AuditStore {
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Insert a meta value; fails with `Conflict` if it exists.
    async fn init_meta(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Every meta value whose key starts with `prefix` (no `%` or `_`), by key.
    async fn meta_prefixed(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    async fn upsert_user(&self, u: &KmUserRow) -> Result<()>;
    async fn get_user(&self, user: &UserId) -> Result<Option<KmUserRow>>;
    async fn set_user_status(&self, user: &UserId, status: &str) -> Result<bool>;
    async fn list_users(&self) -> Result<Vec<KmUserRow>>;

    async fn put_code(&self, code_hash: &[u8], user: &UserId, expires_at: u64) -> Result<()>;
    /// Remove and return an enrolment code (single use).
    async fn take_code(&self, code_hash: &[u8]) -> Result<Option<(String, u64)>>;
    /// Count a wrong try against `user`'s code; at `burn_at` tries the
    /// code is deleted. How many tries it has had, if it exists.
    async fn code_failed(&self, user: &UserId, burn_at: u32) -> Result<CodeTries>;

    async fn put_device(&self, d: &KmDeviceRow) -> Result<()>;
    async fn get_device(&self, device: &DeviceId) -> Result<Option<KmDeviceRow>>;
    async fn devices_of_user(&self, user: &UserId) -> Result<Vec<KmDeviceRow>>;
    async fn set_device_status(&self, device: &DeviceId, status: &str) -> Result<bool>;
    /// Replace an active device's certificate (a renewal); `false` if the
    /// device is not active or its user is not (revoked or disabled
    /// meanwhile).
    async fn renew_device(&self, device: &DeviceId, cert: &[u8], issued_at: u64) -> Result<bool>;
    /// Devices not active and users not active (the tenant's deny list).
    async fn km_deny_list(&self) -> Result<(Vec<String>, Vec<String>)>;

    /// A wrapped key by name and number: a room's epoch key (the room id in
    /// hex) or another named key (the blind-index keys by period). An empty
    /// value means it was crypto-shredded.
    async fn get_room_key(&self, name: &str, epoch: u64) -> Result<Option<Vec<u8>>>;
    /// Store a wrapped key unless one exists; return the one that is stored.
    async fn put_room_key(&self, name: &str, epoch: u64, wrapped: &[u8]) -> Result<Vec<u8>>;
    /// Every room the KM knows.
    async fn list_rooms(&self) -> Result<Vec<RoomRow>>;
    /// (epoch, created ms, shredded) of each key of a room, in epoch order.
    async fn room_keys_of(&self, room: &RoomId) -> Result<Vec<(u64, u64, bool)>>;
    /// Destroy a wrapped room key (its row stays, empty, so it is never re-created).
    async fn shred_room_key(&self, room: &RoomId, epoch: u64) -> Result<()>;
    /// Every stored key that is not shredded: (name, number, wrapped).
    async fn live_wrapped_keys(&self) -> Result<Vec<(String, u64, Vec<u8>)>>;
    /// Stored keys (not shredded) wrapped under a generation below
    /// `generation`, at most `limit` of them.
    async fn wrapped_keys_below(
        &self,
        generation: u32,
        limit: u32,
    ) -> Result<Vec<(String, u64, Vec<u8>)>>;
    /// How many stored keys are wrapped under a generation below `generation`.
    async fn count_wrapped_below(&self, generation: u32) -> Result<u64>;
    /// Replace wrapped keys (re-wrapped under a new generation) in one
    /// transaction: (name, number, old, new), each only if it still holds
    /// `old` (a key shredded or re-wrapped meanwhile is left alone).
    /// Returns how many were replaced.
    async fn rewrap_keys(&self, keys: &[RewrapRow]) -> Result<u64>;
    /// Make deleted bytes unrecoverable from the database files: fold the
    /// WAL into the database (whose freed space `secure_delete` zeroed) and
    /// truncate the WAL file.
    async fn km_scrub(&self) -> Result<()>;
    /// Set (or replace) a meta value.
    async fn set_meta(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Insert or replace a case (KM-signed bytes) at a version.
    async fn put_case(&self, case: &str, version: u32, blob: &[u8]) -> Result<()>;
    async fn get_case(&self, case: &str) -> Result<Option<Vec<u8>>>;
    async fn list_cases(&self) -> Result<Vec<Vec<u8>>>;
    /// Store one custodian's approval of a case version; `Conflict` if they already approved it.
    async fn put_approval(
        &self,
        case: &str,
        version: u32,
        custodian: &UserId,
        blob: &[u8],
    ) -> Result<()>;
    /// The approvals of a case version: (custodian, approval JSON).
    async fn approvals(&self, case: &str, version: u32) -> Result<Vec<(String, Vec<u8>)>>;

    /// Store an escrow generation's descriptor and its sealed shares, at
    /// once; `Conflict` if that generation exists.
    async fn init_escrow(
        &self,
        generation: u32,
        descriptor: &[u8],
        shares: &[(String, u8, Vec<u8>)],
    ) -> Result<()>;
    /// The newest escrow generation's descriptor.
    async fn get_escrow(&self) -> Result<Option<Vec<u8>>>;
    /// Every live generation: (generation, descriptor), oldest first.
    async fn escrow_generations(&self) -> Result<Vec<(u32, Vec<u8>)>>;
    /// The sealed shares of a custodian: (generation, number, share JSON).
    async fn escrow_shares_of(&self, custodian: &UserId) -> Result<Vec<(u32, u8, Vec<u8>)>>;
    /// Delete a generation's descriptor and shares; `Conflict` if it is not live.
    async fn retire_escrow(&self, generation: u32) -> Result<()>;

    /// Record a request nonce; false if it was already used. Prunes nonces
    /// older than `prune_before`. `scope` is whose nonces they are: a
    /// device's id in hex, or `km:<firm>` for another firm's KM.
    async fn use_nonce(
        &self,
        scope: &str,
        nonce: &[u8],
        ts: u64,
        prune_before: u64,
    ) -> Result<bool>;
}

/// An audit log entry to append.
#[derive(Debug, Clone)]
pub struct AuditIn {
    pub index: u64,
    pub ts: u64,
    pub kind: String,
    pub room: Option<String>,
    /// The exact bytes that are hashed into the log.
    pub data: Vec<u8>,
    /// Work committed in the same transaction as the entry (the vault: a
    /// capture and its log entry are stored together or not at all).
    pub side: Option<SideEffect>,
}

/// A change committed atomically with an audit entry.
#[derive(Debug, Clone)]
pub enum SideEffect {
    /// Store a capture; its `log_index` is the entry's index.
    Capture(Box<CaptureRow>),
    /// Delete an envelope and its tokens (retention).
    DeleteEnvelope { message_id: String },
    /// Replace an envelope (escrow rotation); its `log_index` becomes the
    /// entry's index.
    Reseal(Box<ResealRow>),
}

/// A stored audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub index: u64,
    pub data: Vec<u8>,
}

/// Filters for listing audit entries.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub from: u64,
    pub limit: u32,
    pub kind: Option<String>,
    pub room: Option<String>,
    pub since_ms: Option<u64>,
}

/// Storage of a tenant's audit transparency log.
#[async_trait]
pub trait AuditStore: Ping {
    /// Append entries in one transaction; their indexes must continue the
    /// log. The batch's signed checkpoint `(size, note)`, if given, is stored
    /// in the same transaction.
    async fn audit_append(&self, rows: &[AuditIn], checkpoint: Option<(u64, &str)>) -> Result<()>;
    /// Every entry, in index order (to rebuild the tree on start).
    async fn audit_all(&self) -> Result<Vec<AuditRow>>;
    async fn audit_get(&self, index: u64) -> Result<Option<Vec<u8>>>;
    async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<AuditRow>>;
    /// Remember a checkpoint the log signed (the newest is checked on start).
    async fn audit_put_checkpoint(&self, size: u64, note: &str) -> Result<()>;
    async fn audit_latest_checkpoint(&self) -> Result<Option<(u64, String)>>;
}

/// A capture to store in the vault.
#[derive(Debug, Clone)]
pub struct CaptureRow {
    pub message_id: String,
    pub room: String,
    pub ts: u64,
    pub ciphertext_sha256: Vec<u8>,
    pub envelope: Vec<u8>,
    pub envelope_sha256: Vec<u8>,
    pub received_ms: u64,
    pub period: u32,
    pub tokens: Vec<Vec<u8>>,
    pub device: String,
    /// The escrow generation the envelope is sealed to.
    pub generation: u32,
}

/// An envelope replaced by the same content sealed to a newer escrow
/// generation; only if the stored envelope is still `from_sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResealRow {
    pub message_id: String,
    pub from_sha256: Vec<u8>,
    pub envelope: Vec<u8>,
    pub envelope_sha256: Vec<u8>,
    pub generation: u32,
}

/// Where a message stands in the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureStatus {
    New,
    Captured(CaptureMeta),
    /// Its envelope was deleted by retention; it is not captured again.
    Deleted,
}

/// What the vault remembers of a capture (enough to re-issue its receipt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureMeta {
    pub ciphertext_sha256: Vec<u8>,
    pub envelope_sha256: Vec<u8>,
    pub received_ms: u64,
    pub log_index: u64,
}

/// A stored envelope as fetched for a case.
#[derive(Debug, Clone)]
pub struct EnvelopeRow {
    pub message_id: String,
    pub room: String,
    pub ts: u64,
    pub envelope: Vec<u8>,
    pub envelope_sha256: Vec<u8>,
    pub log_index: u64,
}

/// Which envelopes a case fetch may return.
#[derive(Debug, Clone, Default)]
pub struct FetchQuery {
    /// Room ids (hex); empty: any room.
    pub rooms: Vec<String>,
    /// Only envelopes sealed to this escrow generation.
    pub generation: Option<u32>,
    pub from_ms: u64,
    pub to_ms: u64,
    /// (period, tokens): an envelope must carry any one of them; empty: no token filter.
    pub any_tokens: Vec<(u32, Vec<Vec<u8>>)>,
    /// Only log indexes above this.
    pub after: Option<u64>,
    pub limit: u32,
}

/// A search hit as stored.
#[derive(Debug, Clone)]
pub struct HitRow {
    pub message_id: String,
    pub room: String,
    pub ts: u64,
    pub ciphertext_sha256: Vec<u8>,
}

/// Most ids one [`VaultStore::capture_statuses`] read takes.
pub const MAX_STATUS_BATCH: usize = 256;

/// Storage of the compliance vault: sealed envelopes, and blind-index tokens
/// kept in their own table.
#[async_trait]
pub trait VaultStore: AuditStore {
    async fn vault_meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn vault_init_meta(&self, key: &str, value: &[u8]) -> Result<()>;
    async fn vault_set_meta(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Where each message stands in the vault, in the order given, in one
    /// read: captured (with its metadata; captures are stored through
    /// [`AuditStore::audit_append`] with a [`SideEffect::Capture`]), deleted
    /// by retention (a tombstone), or neither. The captures in flight share
    /// it (at most [`MAX_STATUS_BATCH`] ids).
    async fn capture_statuses(&self, message_ids: &[MessageId]) -> Result<Vec<CaptureStatus>>;
    /// Make deleted bytes unrecoverable from the database files (see
    /// [`KmStore::km_scrub`]).
    async fn vault_scrub(&self) -> Result<()>;
    /// One stored envelope by message id (hex).
    async fn envelope_of(&self, message_id: &str) -> Result<Option<EnvelopeRow>>;
    /// Envelopes for a case, in log order.
    async fn fetch(&self, q: &FetchQuery) -> Result<Vec<EnvelopeRow>>;
    /// Envelopes of `room` older than `before_ms` outside every held range:
    /// (message id, envelope SHA-256), and how many were kept for a hold.
    async fn expired(
        &self,
        room: &RoomId,
        before_ms: u64,
        held: &[(u64, u64)],
    ) -> Result<(Vec<(String, Vec<u8>)>, u64)>;
    /// Messages having every token of each (period, tokens) query (OR across periods).
    async fn search(
        &self,
        queries: &[(u32, Vec<Vec<u8>>)],
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    ) -> Result<Vec<HitRow>>;
    async fn envelope_count(&self) -> Result<u64>;
    /// How many envelopes are sealed to escrow `generation`.
    async fn envelopes_under(&self, generation: u32) -> Result<u64>;
}

/// Appends to one room's log are serialised (the policy check must see a
/// stable head); appends to different rooms are not. Used by the server and
/// the KM alike.
#[derive(Default)]
pub struct RoomLocks {
    locks: std::sync::Mutex<
        std::collections::HashMap<RoomId, std::sync::Weak<tokio::sync::Mutex<()>>>,
    >,
}

impl RoomLocks {
    /// Wait for and hold `room`'s lock.
    pub async fn lock(&self, room: &RoomId) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = match self.locks.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if map.len() > 4096 {
                map.retain(|_, w| w.strong_count() > 0);
            }
            match map.get(room).and_then(std::sync::Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(*room, std::sync::Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}
