//! Communication controls on the wire: entitlements, information barriers
//! and the KM-signed snapshot of them that the messaging server enforces.

use crate::UserId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Something a user may be allowed to do. The last three are the
/// privileged roles: granting one makes the user that officer at the KM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entitlement {
    CreateRooms,
    CreatePublicRooms,
    SendFiles,
    ExternalChat,
    Compliance,
    Custodian,
    Surveillance,
}

impl Entitlement {
    pub const ALL: [Entitlement; 7] = [
        Entitlement::CreateRooms,
        Entitlement::CreatePublicRooms,
        Entitlement::SendFiles,
        Entitlement::ExternalChat,
        Entitlement::Compliance,
        Entitlement::Custodian,
        Entitlement::Surveillance,
    ];

    /// Held by a new user unless the tenant or SCIM says otherwise.
    pub const DEFAULT: [Entitlement; 2] = [Entitlement::CreateRooms, Entitlement::SendFiles];

    pub fn as_str(self) -> &'static str {
        match self {
            Entitlement::CreateRooms => "create_rooms",
            Entitlement::CreatePublicRooms => "create_public_rooms",
            Entitlement::SendFiles => "send_files",
            Entitlement::ExternalChat => "external_chat",
            Entitlement::Compliance => "compliance",
            Entitlement::Custodian => "custodian",
            Entitlement::Surveillance => "surveillance",
        }
    }

    /// The privileged role this entitlement confers, if any.
    pub fn role(self) -> Option<crate::km::Role> {
        use crate::km::Role;
        match self {
            Entitlement::Compliance => Some(Role::Compliance),
            Entitlement::Custodian => Some(Role::Custodian),
            Entitlement::Surveillance => Some(Role::Surveillance),
            _ => None,
        }
    }
}

impl std::fmt::Display for Entitlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Entitlement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Entitlement::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Entitlement::ALL.iter().map(|e| e.as_str()).collect();
                format!("unknown entitlement {s:?} ({})", all.join(", "))
            })
    }
}

/// A BLOCK policy between two barrier groups. Disabled, never deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Barrier {
    pub id: String,
    pub a: String,
    pub b: String,
    pub active: bool,
    /// Why the firm set it (shown in refusals and evictions).
    #[serde(default)]
    pub reason: String,
}

/// The tenant's controls as the KM last signed them (the messaging server
/// enforces the same rules on them). Carried in a `Notice::Controls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controls {
    /// Increases with every change; the server keeps the highest.
    pub version: u64,
    /// Barrier policies, active and disabled.
    pub barriers: Vec<Barrier>,
    /// Members of the groups that take part in an active barrier.
    pub groups: BTreeMap<String, Vec<UserId>>,
    /// Effective entitlements of each known user.
    pub entitlements: BTreeMap<UserId, Vec<Entitlement>>,
}
