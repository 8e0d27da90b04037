//! Rooms and their hash-chained, signed membership log.

use crate::b64::{Bytes, Fixed};
use crate::{DeviceId, RoomId, UserId};
use serde::{Deserialize, Serialize};

/// Whether a conversation is a named room or a 1:1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// A named room with owners and members.
    Room,
    /// A 1:1 conversation: exactly two members, fixed at creation.
    Im,
}

/// How a room's keys are made (fixed at creation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomMode {
    /// The tenant's KM makes each epoch's key and releases it to members.
    #[default]
    Managed,
    /// The members' devices agree the keys with MLS (RFC 9420); the KM
    /// holds none of them (ADR 0028).
    Mls,
}

impl RoomMode {
    pub fn is_managed(&self) -> bool {
        *self == RoomMode::Managed
    }
    pub fn name(&self) -> &'static str {
        match self {
            RoomMode::Managed => "managed",
            RoomMode::Mls => "mls",
        }
    }
}

/// Room settings that change who may do what, enforced by the KM and the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomSettings {
    /// Room name shown to members (not secret from the operator).
    #[serde(default)]
    pub name: String,
    /// New members may read messages from before they joined.
    #[serde(default = "yes")]
    pub view_history: bool,
    /// Any member (not only owners) may add members.
    #[serde(default)]
    pub members_may_invite: bool,
    /// Only owners may post.
    #[serde(default)]
    pub read_only: bool,
    /// Anyone of the firm may join without an invitation (implies
    /// `discoverable`; needs the `create_public_rooms` entitlement).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// Listed in the firm's room directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discoverable: bool,
    /// Clients offer no copy, forward or export of messages; once set it
    /// cannot be removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy_protected: bool,
    /// Most members (at most the system's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_members: Option<u32>,
    /// Has or may have members of other firms: never public or
    /// discoverable; fixed at creation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// How the room's keys are made; fixed at creation.
    #[serde(default, skip_serializing_if = "RoomMode::is_managed")]
    pub mode: RoomMode,
    /// A bridged room: the firm's users talk with one contact on another
    /// messaging network through the firm's gateway. Fixed at creation;
    /// never public, discoverable or external; managed mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Bridge>,
}

/// The other end of a bridged room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    /// The network (`matrix`; lower-case letters, digits, `-`, `_`).
    pub network: String,
    /// The contact's address on that network (a Matrix user id).
    pub contact: String,
    /// The firm's gateway user: a member of the room, the only one whose
    /// messages may speak for the contact.
    pub gateway: crate::UserId,
}

impl Bridge {
    /// Longest contact address accepted.
    pub const MAX_CONTACT: usize = 255;

    /// Why this bridge description is malformed, if it is.
    pub fn malformed(&self) -> Option<String> {
        let n = &self.network;
        if n.is_empty()
            || n.len() > 32
            || !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Some(format!(
                "network {n:?}: 1 to 32 lower-case letters, digits, '-' or '_'"
            ));
        }
        let c = &self.contact;
        if c.is_empty() || c.len() > Self::MAX_CONTACT || c.chars().any(char::is_control) {
            return Some(format!(
                "contact: 1 to {} characters, no control characters",
                Self::MAX_CONTACT
            ));
        }
        None
    }
}

fn yes() -> bool {
    true
}

impl Default for RoomSettings {
    fn default() -> Self {
        RoomSettings {
            name: String::new(),
            view_history: true,
            members_may_invite: false,
            read_only: false,
            public: false,
            discoverable: false,
            copy_protected: false,
            max_members: None,
            external: false,
            mode: RoomMode::Managed,
            bridge: None,
        }
    }
}

/// One change to a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Genesis: the creator becomes owner; `members` are added at epoch 0.
    Create {
        kind: RoomKind,
        settings: RoomSettings,
        members: Vec<UserId>,
    },
    Add {
        user: UserId,
    },
    Remove {
        user: UserId,
    },
    Leave,
    Promote {
        user: UserId,
    },
    /// An owner makes another owner a plain member again.
    Demote {
        user: UserId,
    },
    Settings {
        settings: RoomSettings,
    },
    /// Join a public room without an invitation.
    Join,
    // ---- signed by the tenant's KM only (actor [`KM_DEVICE`]) ----
    /// An information barrier now separates `user` from another member.
    Evict {
        user: UserId,
        reason: String,
    },
    /// A compliance officer (`by`) bans a member: removed, and may not be
    /// added again.
    Ban {
        user: UserId,
        by: UserId,
        justification: String,
    },
    /// A compliance officer locks the room: no posts, no membership or
    /// settings changes, until an officer unlocks it.
    Lock {
        by: UserId,
        justification: String,
    },
    Unlock {
        by: UserId,
        justification: String,
    },
    /// An emergency key rotation (`by`: an admin, a compliance officer or
    /// an owner, through the KM): a new epoch now, members unchanged; the
    /// old epoch's key opens only what was sent before.
    Rekey {
        by: UserId,
        reason: String,
    },
}

/// The actor id of statements signed by the tenant's KM itself (no device
/// id is all zeros: device ids are hashes of keys).
pub const KM_DEVICE: DeviceId = DeviceId([0; 16]);

/// The user name the KM signs its statements as (reserved in every tenant).
pub const KM_USER_NAME: &str = "km";

impl Action {
    /// Only the tenant's KM may sign this action.
    pub fn km_only(&self) -> bool {
        matches!(
            self,
            Action::Evict { .. }
                | Action::Ban { .. }
                | Action::Lock { .. }
                | Action::Unlock { .. }
                | Action::Rekey { .. }
        )
    }

    /// A short name for logs and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Add { .. } => "add",
            Action::Remove { .. } => "remove",
            Action::Leave => "leave",
            Action::Promote { .. } => "promote",
            Action::Demote { .. } => "demote",
            Action::Settings { .. } => "settings",
            Action::Join => "join",
            Action::Evict { .. } => "evict",
            Action::Ban { .. } => "ban",
            Action::Lock { .. } => "lock",
            Action::Unlock { .. } => "unlock",
            Action::Rekey { .. } => "rekey",
        }
    }
}

/// The signed body of a membership statement. (`deny_unknown_fields` cannot be
/// combined with `flatten`; the body is signed, so extra fields change nothing.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Statement {
    pub room: RoomId,
    /// Position in the room's log; genesis is 0.
    pub seq: u64,
    /// Hash of the previous entry (all zero for genesis).
    pub prev: Fixed<32>,
    pub actor: DeviceId,
    pub actor_user: UserId,
    /// Milliseconds since the Unix epoch, as claimed by the actor.
    pub ts: u64,
    #[serde(flatten)]
    pub action: Action,
    /// For each user of another firm than the actor's that this statement
    /// puts in the room: the accepted connection between the actor and them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<crate::federation::ConnectionProof>,
}

/// A membership statement as it travels and is stored: the exact signed bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedStatement {
    /// Signing device (repeated inside `body`; must match).
    pub actor: DeviceId,
    /// JSON of [`Statement`], exactly as signed.
    pub body: Bytes,
    /// Ed25519 signature by `actor` over the domain-separated body.
    pub sig: Fixed<64>,
}
