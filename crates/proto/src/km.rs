//! Key Manager protocol: certificates, enrolment, signed requests, sealed keys.

use crate::b64::{Bytes, Fixed};
use crate::{DeviceId, RoomId, TenantId, UserId, room::SignedStatement};
use serde::{Deserialize, Serialize};

/// A role carried in a device certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Tenant administrator: users, devices, enrolment codes.
    Admin,
    /// Ordinary user.
    User,
}

/// The body of a device certificate, signed by the tenant KM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCert {
    pub tenant: TenantId,
    pub user: UserId,
    pub device: DeviceId,
    /// Ed25519 verifying key of the device.
    pub sign_pk: Fixed<32>,
    /// X25519 HPKE public key of the device.
    pub hpke_pk: Fixed<32>,
    pub roles: Vec<Role>,
    pub issued_at: u64,
    pub not_after: u64,
}

/// A certificate as it travels: the exact signed bytes plus the KM signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCert {
    pub body: Bytes,
    pub sig: Fixed<64>,
}

/// Public description of a tenant KM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmInfo {
    pub tenant: TenantId,
    /// Ed25519 key that signs certificates and notices.
    pub sign_pk: Fixed<32>,
    /// Verifier key (C2SP note format) of the tenant's audit log.
    pub log_key: String,
}

/// A device asks for a certificate with a one-time enrolment code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    pub user: UserId,
    pub code: String,
    pub sign_pk: Fixed<32>,
    pub hpke_pk: Fixed<32>,
    /// Proof of possession: the device's signature over the enrolment transcript.
    pub pop: Fixed<64>,
}

/// The signed body of any authenticated request to the KM.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    pub device: DeviceId,
    /// Milliseconds since the Unix epoch; must be within the allowed skew.
    pub ts: u64,
    /// Random, single use within the skew window (replay protection).
    pub nonce: Fixed<16>,
    pub op: KmOp,
}

/// Authenticated KM operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum KmOp {
    /// Room keys for the given epochs. `log` carries membership-log entries the
    /// KM may not have yet, starting at `log_from`.
    RoomKeys {
        room: RoomId,
        epochs: Vec<u64>,
        log_from: u64,
        log: Vec<SignedStatement>,
    },
    /// Admin: create a user (or re-issue a code) and return an enrolment code.
    AddUser { user: UserId, roles: Vec<Role> },
    /// Admin: disable a user; all their devices lose key access.
    DisableUser { user: UserId },
    /// Admin: revoke one device.
    RevokeDevice { device: DeviceId },
    /// Admin: list users and devices.
    ListUsers,
    /// The audit log's latest signed checkpoint.
    AuditCheckpoint,
    /// Admin: audit entries, filtered.
    AuditList {
        #[serde(default)]
        from: u64,
        limit: u32,
        kind: Option<String>,
        room: Option<RoomId>,
        since_ms: Option<u64>,
    },
    /// Admin: an entry with its inclusion proof in the tree of `size` (default: current).
    AuditProve { index: u64, size: Option<u64> },
    /// Consistency proof from `old` to `new` (default: current).
    AuditConsistency { old: u64, new: Option<u64> },
    /// Every key release of a room, each with its inclusion proof.
    WhoHasKeys { room: RoomId },
    /// Admin: register the tenant's escrow public key and the shares of its
    /// private key, each sealed to one custodian's device (once per tenant).
    EscrowInit {
        public: Fixed<32>,
        threshold: u8,
        shares: Vec<SealedShare>,
    },
    /// The KM-signed escrow descriptor (any device: it seals audit envelopes to it).
    EscrowInfo,
    /// Custodian: my sealed share.
    MyEscrowShare,
    /// Blind-index keys of the given periods, sealed to the requesting device.
    IndexKeys { periods: Vec<u32> },
}

/// One escrow share sealed (HPKE) to a custodian's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedShare {
    pub custodian: UserId,
    pub device: DeviceId,
    /// 1-based share number.
    pub number: u8,
    pub enc: Fixed<32>,
    pub ct: Bytes,
}

/// The tenant's escrow public key and policy, signed by the KM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscrowDescriptor {
    pub tenant: TenantId,
    pub public: Fixed<32>,
    pub threshold: u8,
    pub custodians: Vec<UserId>,
    pub created: u64,
}

/// A KM-signed escrow descriptor (signed bytes, domain `cloister/escrow/v1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedEscrow {
    pub body: Bytes,
    pub sig: Fixed<64>,
}

/// Blind-index keys, each sealed like a room key (its "room" is the zero id and
/// its "epoch" the period).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexKeysResponse {
    pub keys: Vec<SealedRoomKey>,
}

/// A signed audit checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointResponse {
    /// C2SP signed note holding a tlog-checkpoint.
    pub checkpoint: String,
    pub log_key: String,
}

/// An audit entry: its index and the exact bytes hashed into the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub index: u64,
    pub data: Bytes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditListResponse {
    pub entries: Vec<AuditEntry>,
}

/// An entry and its inclusion proof in the tree of `size` leaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    pub data: Bytes,
    pub proof: Vec<Fixed<32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub old: u64,
    pub new: u64,
    pub proof: Vec<Fixed<32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoHasKeysResponse {
    /// The checkpoint all proofs are against.
    pub checkpoint: String,
    pub releases: Vec<InclusionProof>,
}

/// A signed KM request as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRequest {
    pub device: DeviceId,
    /// JSON of [`RequestBody`], exactly as signed.
    pub body: Bytes,
    pub sig: Fixed<64>,
}

/// One released room key, sealed with HPKE to the requesting device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRoomKey {
    pub room: RoomId,
    pub epoch: u64,
    /// Lease end, seconds since the Unix epoch; the device must not use the key after it.
    pub lease_until: u64,
    /// HPKE encapsulated key.
    pub enc: Fixed<32>,
    /// HPKE ciphertext of the 32-byte room key.
    pub ct: Bytes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomKeysResponse {
    pub keys: Vec<SealedRoomKey>,
    /// Head of the KM's verified copy of the room's log.
    pub log_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddUserResponse {
    pub user: UserId,
    /// One-time enrolment code; shown once, stored only as a hash.
    pub code: String,
    pub expires_at: u64,
}

/// A statement by the KM that the server must act on (user disabled, device revoked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Notice {
    UserDisabled {
        tenant: TenantId,
        user: UserId,
        ts: u64,
    },
    DeviceRevoked {
        tenant: TenantId,
        device: DeviceId,
        ts: u64,
    },
}

impl Notice {
    pub fn tenant(&self) -> &TenantId {
        match self {
            Notice::UserDisabled { tenant, .. } | Notice::DeviceRevoked { tenant, .. } => tenant,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedNotice {
    pub body: Bytes,
    pub sig: Fixed<64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminResponse {
    /// Present for user/device changes: forward it to the messaging server.
    pub notice: Option<SignedNotice>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub user: UserId,
    pub status: String,
    pub roles: Vec<Role>,
    pub devices: Vec<DeviceRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device: DeviceId,
    pub status: String,
    pub issued_at: u64,
}
