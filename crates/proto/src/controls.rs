//! Communication controls on the wire: entitlements, information barriers
//! and the KM-signed snapshot of them that the messaging server enforces.

use crate::UserId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Something a user may be allowed to do. The last three are the
/// privileged roles: granting one makes the user that officer at the KM.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Entitlement {
    CreateRooms,
    CreatePublicRooms,
    SendFiles,
    ExternalChat,
    Compliance,
    Custodian,
    Surveillance,
    /// Talk with contacts on another messaging network through the firm's
    /// gateway (bridged rooms).
    Federation,
}

impl Entitlement {
    pub const ALL: [Entitlement; 8] = [
        Entitlement::CreateRooms,
        Entitlement::CreatePublicRooms,
        Entitlement::SendFiles,
        Entitlement::ExternalChat,
        Entitlement::Compliance,
        Entitlement::Custodian,
        Entitlement::Surveillance,
        Entitlement::Federation,
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
            Entitlement::Federation => "federation",
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

/// The firm's rule on end-to-end (MLS) rooms, for every room and IM its
/// users join.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MlsPolicy {
    /// Managed or MLS, as the creator chooses.
    #[default]
    Allowed,
    /// Every new named room is an MLS room.
    Required,
    /// No MLS rooms.
    Forbidden,
}

impl MlsPolicy {
    pub fn is_allowed(&self) -> bool {
        *self == MlsPolicy::Allowed
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            MlsPolicy::Allowed => "allowed",
            MlsPolicy::Required => "required",
            MlsPolicy::Forbidden => "forbidden",
        }
    }
}

impl std::str::FromStr for MlsPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allowed" => Ok(MlsPolicy::Allowed),
            "required" => Ok(MlsPolicy::Required),
            "forbidden" => Ok(MlsPolicy::Forbidden),
            _ => Err(format!(
                "unknown MLS policy {s:?} (allowed, required, forbidden)"
            )),
        }
    }
}

/// A BLOCK policy between two barrier groups. Disabled, never deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Controls {
    /// Increases with every change; the server keeps the highest.
    pub version: u64,
    /// Barrier policies, active and disabled.
    pub barriers: Vec<Barrier>,
    /// Members of the groups that take part in an active barrier.
    pub groups: BTreeMap<String, Vec<UserId>>,
    /// What every active user holds unless listed in `entitlements`.
    #[serde(default)]
    pub default_entitlements: Vec<Entitlement>,
    /// Effective entitlements of the users whose set differs from the
    /// default (an inactive user is listed with none).
    pub entitlements: BTreeMap<UserId, Vec<Entitlement>>,
    /// The firm's sponsored guests (who may only take part in rooms the
    /// firm's users put them in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guests: Vec<UserId>,
    /// Whether the firm's users' new named rooms may, must or must not be
    /// MLS rooms.
    #[serde(default, skip_serializing_if = "MlsPolicy::is_allowed")]
    pub mls: MlsPolicy,
}

/// What a DLP policy does with content that matches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DlpAction {
    /// The device refuses to send it, naming the policy.
    Block,
    /// The device sends it and marks the archived copy with the policy.
    Flag,
}

/// A content policy every device of the tenant enforces before sealing.
/// It matches text by keyword (whole words, any case) or regular
/// expression, and files by type (extension) or size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DlpPolicy {
    pub id: String,
    pub name: String,
    pub action: DlpAction,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub patterns: Vec<String>,
    /// File extensions without the dot (`exe`, `xlsm`).
    #[serde(default)]
    pub file_types: Vec<String>,
    /// Files larger than this match.
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
    /// Shown to the sender when the policy blocks.
    #[serde(default)]
    pub message: String,
    pub active: bool,
}

/// The tenant's DLP policies as its KM signs them (for devices only: the
/// operator never sees what the firm looks for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DlpSet {
    pub tenant: crate::TenantId,
    pub version: u64,
    pub policies: Vec<DlpPolicy>,
}
