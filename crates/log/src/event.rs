//! Typed audit events. A record is stored and hashed as the exact JSON bytes
//! produced here; no secret and no message content ever goes into one.

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
    },
    DeviceRevoked {
        device: DeviceId,
    },
    KeyReleased {
        room: RoomId,
        epochs: Vec<u64>,
        user: UserId,
        device: DeviceId,
        lease_until: u64,
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
            AuditEvent::KeyReleased { .. } => "key_released",
            AuditEvent::KeyRefused { .. } => "key_refused",
            AuditEvent::MembershipAccepted { .. } => "membership_accepted",
            AuditEvent::MembershipRejected { .. } => "membership_rejected",
            AuditEvent::EscrowInitialised { .. } => "escrow_initialised",
            AuditEvent::IndexKeysReleased { .. } => "index_keys_released",
        }
    }

    /// The room the event concerns, if any.
    pub fn room(&self) -> Option<RoomId> {
        match self {
            AuditEvent::KeyReleased { room, .. }
            | AuditEvent::KeyRefused { room, .. }
            | AuditEvent::MembershipAccepted { room, .. }
            | AuditEvent::MembershipRejected { room, .. } => Some(*room),
            _ => None,
        }
    }

    pub const KINDS: [&'static str; 11] = [
        "tenant_initialised",
        "user_added",
        "user_disabled",
        "device_certified",
        "device_revoked",
        "key_released",
        "key_refused",
        "membership_accepted",
        "membership_rejected",
        "escrow_initialised",
        "index_keys_released",
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
            },
        };
        let b = r.to_bytes().unwrap();
        assert!(String::from_utf8_lossy(&b).contains("\"kind\":\"key_released\""));
        assert_eq!(AuditRecord::from_bytes(&b).unwrap(), r);
        assert_eq!(r.event.kind(), "key_released");
        assert_eq!(r.event.room(), Some(RoomId([1; 16])));
    }
}
