//! Rooms and their hash-chained, signed membership log.

use crate::b64::{Bytes, Fixed};
use crate::{DeviceId, RoomId, UserId};
use serde::{Deserialize, Serialize};

/// Conversation mode of a room. Only `Managed` (KM-issued keys) exists today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// A named room with owners and members.
    Room,
    /// A 1:1 conversation: exactly two members, fixed at creation.
    Im,
}

/// Room settings that change who may do what, enforced by the KM and the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        }
    }
}

/// One change to a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    Settings {
        settings: RoomSettings,
    },
}

/// The signed body of a membership statement. (`deny_unknown_fields` cannot be
/// combined with `flatten`; the body is signed, so extra fields change nothing.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// A membership statement as it travels and is stored: the exact signed bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedStatement {
    /// Signing device (repeated inside `body`; must match).
    pub actor: DeviceId,
    /// JSON of [`Statement`], exactly as signed.
    pub body: Bytes,
    /// Ed25519 signature by `actor` over the domain-separated body.
    pub sig: Fixed<64>,
}
