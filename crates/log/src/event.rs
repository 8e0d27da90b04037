//! Typed audit events. A record is stored and hashed as the exact JSON bytes
//! produced here; no secret and no message content ever goes into one.

use cloister_proto::controls::Entitlement;
use cloister_proto::km::Role;
use cloister_proto::{DeviceId, RoomId, TenantId, UserId};
use serde::{Deserialize, Serialize};

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// Who caused it: a user, or `None` for the KM itself.
    pub actor: Option<UserId>,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    TenantInitialised {
        tenant: TenantId,
        km_key: String,
        log_key: String,
    },
    UserAdded {
        user: UserId,
        roles: Vec<Role>,
    },
    UserDisabled {
        user: UserId,
    },
    DeviceCertified {
        user: UserId,
        device: DeviceId,
        /// The accepted evidence (`format:device`), when there was some.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attested: Option<String>,
    },
    /// An admin set the tenant's attestation policy.
    AttestationPolicySet {
        required: bool,
        formats: Vec<String>,
        mdm_keys: Vec<String>,
    },
    DeviceRevoked {
        device: DeviceId,
    },
    /// A device in good standing renewed its certificate (no code).
    DeviceRenewed {
        user: UserId,
        device: DeviceId,
        not_after: u64,
    },
    /// The KM's data was restored from a backup: the log went on from
    /// `size_at_backup` entries; anything a device or witness saw beyond
    /// that was lost.
    LogRestored {
        backup_created_ms: u64,
        size_at_backup: u64,
    },
    /// A user's enrolment code was deleted after too many wrong tries.
    EnrolmentCodeBurned {
        user: UserId,
        tries: u32,
    },
    /// A key of the tenant was rotated (`key`: `master_key`, `audit_log`,
    /// `escrow`, `room`): `step` `started` or `finished`, from one version
    /// (or key) to the next; `count`: keys re-wrapped or re-sealed.
    KeyRotation {
        key: String,
        step: String,
        from: String,
        to: String,
        #[serde(default)]
        count: u64,
    },
    KeyReleased {
        room: RoomId,
        epochs: Vec<u64>,
        user: UserId,
        device: DeviceId,
        lease_until: u64,
        /// Released to a surveillance role, not to a member.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        surveillance: bool,
        /// Released to the firm's malware scanner (inspector role).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        inspection: bool,
        /// Released to the firm's gateway to another network (gateway
        /// role): what it reads leaves end-to-end encryption.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        gateway: bool,
    },
    KeyRefused {
        room: RoomId,
        epochs: Vec<u64>,
        user: UserId,
        device: DeviceId,
        reason: String,
    },
    MembershipAccepted {
        room: RoomId,
        seq: u64,
        actor_user: UserId,
        op: String,
    },
    MembershipRejected {
        room: RoomId,
        seq: u64,
        reason: String,
    },
    EscrowInitialised {
        public: String,
        threshold: u8,
        custodians: Vec<UserId>,
    },
    IndexKeysReleased {
        periods: Vec<u32>,
        user: UserId,
        device: DeviceId,
    },
    VaultRegistered {
        url: String,
        receipt_pk: String,
        log_key: String,
        capture_required: bool,
    },
    CaseOpened {
        case: String,
        version: u32,
        custodians: Vec<UserId>,
        rooms: Vec<RoomId>,
        from_ms: u64,
        to_ms: u64,
        hold: bool,
    },
    CaseApproved {
        case: String,
        version: u32,
        custodian: UserId,
        device: DeviceId,
    },
    /// A decryption-session step reported by the case officer's device
    /// (`session_opened`, `decrypted`, `exported`, `zeroized`).
    CaseStep {
        case: String,
        version: u32,
        step: String,
        count: u64,
    },
    RetentionSet {
        room_kind: String,
        days: u32,
    },
    /// A room-epoch key destroyed by retention.
    KeyShredded {
        room: RoomId,
        epoch: u64,
    },
    /// The vault stored a sealed envelope (the vault's own ingestion log).
    EnvelopeIngested {
        message_id: String,
        room: RoomId,
        envelope_sha256: String,
        ciphertext_sha256: String,
        device: DeviceId,
    },
    /// The vault deleted an expired envelope (retention).
    EnvelopeDeleted {
        message_id: String,
        room: RoomId,
        envelope_sha256: String,
    },
    /// The vault replaced an envelope by the same content sealed to a
    /// newer escrow generation (escrow-key rotation); the old bytes' hash
    /// is kept here, so the log still proves every envelope's history.
    EnvelopeResealed {
        message_id: String,
        room: RoomId,
        from_sha256: String,
        envelope_sha256: String,
        generation: u32,
        device: DeviceId,
    },
    /// A directory record changed (`via` scim or admin; `change` created,
    /// replaced, patched, deleted, adopted; `fields` the attributes touched).
    DirectoryChanged {
        via: String,
        resource: String,
        id: String,
        name: String,
        change: String,
        fields: Vec<String>,
    },
    UserEnabled {
        user: UserId,
    },
    /// Entitlements granted or denied to a user, or granted to a group.
    EntitlementsChanged {
        target: String,
        grant: Vec<Entitlement>,
        revoke: Vec<Entitlement>,
    },
    BarrierAdded {
        id: String,
        a: String,
        b: String,
        reason: String,
    },
    BarrierDisabled {
        id: String,
        reason: String,
    },
    ScimTokenIssued {
        id: String,
        label: String,
    },
    ScimTokenRevoked {
        id: String,
    },
    /// An admin pinned another firm's KM identity.
    TrustAdded {
        tenant: TenantId,
        fingerprint: String,
    },
    /// An admin removed the trust in another firm's KM.
    TrustRemoved {
        tenant: TenantId,
        fingerprint: String,
        reason: String,
    },
    /// The KM signed a user's connection request, answer or removal
    /// (`step`: request, accept, reject, remove).
    Connection {
        id: String,
        from: UserId,
        to: UserId,
        step: String,
    },
    /// This KM (the room's home) sealed epoch keys to a partner firm's KM
    /// (`sent`), or refused to (`refused` with the reason); or, as the
    /// partner, received them from the room's home KM (`received`).
    KeyExchange {
        room: RoomId,
        epochs: Vec<u64>,
        /// The other firm.
        tenant: TenantId,
        /// `sent`, `received` or `refused`.
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A DLP policy added or changed (never deleted: disabled).
    DlpChanged {
        id: String,
        name: String,
        action: String,
        active: bool,
    },
    /// The firm's rule on MLS rooms changed.
    MlsPolicySet {
        policy: String,
    },
    /// A statement the KM signed into a room's log: an eviction by a
    /// barrier, or a compliance officer's (`by`) ban, lock or unlock.
    RoomControl {
        room: RoomId,
        seq: u64,
        action: String,
        user: Option<UserId>,
        by: Option<UserId>,
        reason: String,
    },
    /// A communication control refused an action (`code`: entitlement or
    /// barrier); key refusals are `key_refused`.
    ControlRefused {
        action: String,
        user: UserId,
        room: Option<RoomId>,
        code: String,
        reason: String,
    },
}

impl AuditEvent {
    /// The `kind` tag, for filtering.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::TenantInitialised { .. } => "tenant_initialised",
            AuditEvent::UserAdded { .. } => "user_added",
            AuditEvent::UserDisabled { .. } => "user_disabled",
            AuditEvent::DeviceCertified { .. } => "device_certified",
            AuditEvent::DeviceRevoked { .. } => "device_revoked",
            AuditEvent::DeviceRenewed { .. } => "device_renewed",
            AuditEvent::AttestationPolicySet { .. } => "attestation_policy_set",
            AuditEvent::EnrolmentCodeBurned { .. } => "enrolment_code_burned",
            AuditEvent::LogRestored { .. } => "log_restored",
            AuditEvent::KeyRotation { .. } => "key_rotation",
            AuditEvent::KeyReleased { .. } => "key_released",
            AuditEvent::KeyRefused { .. } => "key_refused",
            AuditEvent::MembershipAccepted { .. } => "membership_accepted",
            AuditEvent::MembershipRejected { .. } => "membership_rejected",
            AuditEvent::EscrowInitialised { .. } => "escrow_initialised",
            AuditEvent::IndexKeysReleased { .. } => "index_keys_released",
            AuditEvent::VaultRegistered { .. } => "vault_registered",
            AuditEvent::CaseOpened { .. } => "case_opened",
            AuditEvent::CaseApproved { .. } => "case_approved",
            AuditEvent::CaseStep { .. } => "case_step",
            AuditEvent::RetentionSet { .. } => "retention_set",
            AuditEvent::KeyShredded { .. } => "key_shredded",
            AuditEvent::EnvelopeIngested { .. } => "envelope_ingested",
            AuditEvent::EnvelopeDeleted { .. } => "envelope_deleted",
            AuditEvent::EnvelopeResealed { .. } => "envelope_resealed",
            AuditEvent::DirectoryChanged { .. } => "directory_changed",
            AuditEvent::UserEnabled { .. } => "user_enabled",
            AuditEvent::EntitlementsChanged { .. } => "entitlements_changed",
            AuditEvent::BarrierAdded { .. } => "barrier_added",
            AuditEvent::BarrierDisabled { .. } => "barrier_disabled",
            AuditEvent::ScimTokenIssued { .. } => "scim_token_issued",
            AuditEvent::ScimTokenRevoked { .. } => "scim_token_revoked",
            AuditEvent::ControlRefused { .. } => "control_refused",
            AuditEvent::RoomControl { .. } => "room_control",
            AuditEvent::DlpChanged { .. } => "dlp_changed",
            AuditEvent::MlsPolicySet { .. } => "mls_policy_set",
            AuditEvent::TrustAdded { .. } => "trust_added",
            AuditEvent::TrustRemoved { .. } => "trust_removed",
            AuditEvent::Connection { .. } => "connection",
            AuditEvent::KeyExchange { .. } => "key_exchange",
        }
    }

    /// The room the event concerns, if any.
    pub fn room(&self) -> Option<RoomId> {
        match self {
            AuditEvent::KeyReleased { room, .. }
            | AuditEvent::KeyRefused { room, .. }
            | AuditEvent::MembershipAccepted { room, .. }
            | AuditEvent::MembershipRejected { room, .. }
            | AuditEvent::KeyShredded { room, .. }
            | AuditEvent::EnvelopeIngested { room, .. }
            | AuditEvent::EnvelopeDeleted { room, .. }
            | AuditEvent::EnvelopeResealed { room, .. } => Some(*room),
            AuditEvent::ControlRefused { room, .. } => *room,
            AuditEvent::RoomControl { room, .. } => Some(*room),
            AuditEvent::KeyExchange { room, .. } => Some(*room),
            _ => None,
        }
    }

    /// For the vault's entries that store an envelope (its ingestion, or
    /// its re-sealing to a newer escrow key): the message id and the
    /// stored envelope's SHA-256 (hex).
    pub fn stored_envelope(&self) -> Option<(&str, &str)> {
        match self {
            AuditEvent::EnvelopeIngested {
                message_id,
                envelope_sha256,
                ..
            }
            | AuditEvent::EnvelopeResealed {
                message_id,
                envelope_sha256,
                ..
            } => Some((message_id, envelope_sha256)),
            _ => None,
        }
    }

    pub const KINDS: [&'static str; 39] = [
        "tenant_initialised",
        "user_added",
        "user_disabled",
        "device_certified",
        "device_revoked",
        "device_renewed",
        "attestation_policy_set",
        "enrolment_code_burned",
        "log_restored",
        "key_rotation",
        "key_released",
        "key_refused",
        "membership_accepted",
        "membership_rejected",
        "escrow_initialised",
        "index_keys_released",
        "vault_registered",
        "case_opened",
        "case_approved",
        "case_step",
        "retention_set",
        "key_shredded",
        "envelope_ingested",
        "envelope_deleted",
        "envelope_resealed",
        "directory_changed",
        "user_enabled",
        "entitlements_changed",
        "barrier_added",
        "barrier_disabled",
        "scim_token_issued",
        "scim_token_revoked",
        "control_refused",
        "room_control",
        "dlp_changed",
        "trust_added",
        "trust_removed",
        "connection",
        "key_exchange",
    ];
}

impl AuditRecord {
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
    pub fn from_bytes(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_kind() {
        let r = AuditRecord {
            ts: 5,
            actor: Some("alice@acme".parse().unwrap()),
            event: AuditEvent::KeyReleased {
                room: RoomId([1; 16]),
                epochs: vec![0, 1],
                user: "alice@acme".parse().unwrap(),
                device: DeviceId([2; 16]),
                lease_until: 9,
                surveillance: false,
                inspection: false,
                gateway: false,
            },
        };
        let b = r.to_bytes().unwrap();
        assert!(String::from_utf8_lossy(&b).contains("\"kind\":\"key_released\""));
        assert_eq!(AuditRecord::from_bytes(&b).unwrap(), r);
        assert_eq!(r.event.kind(), "key_released");
        assert_eq!(r.event.room(), Some(RoomId([1; 16])));
    }
}
