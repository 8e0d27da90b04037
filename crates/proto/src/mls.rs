//! The server as MLS delivery service (MLS rooms, ADR 0028): key packages,
//! group state, commits in order, Welcomes.

use crate::b64::Bytes;
use crate::{DeviceId, RoomId, UserId};
use serde::{Deserialize, Serialize};

/// Most one-time key packages the server keeps per device.
pub const MAX_KEY_PACKAGES: usize = 100;
/// Largest key package, GroupInfo-free commit or Welcome part the server
/// takes for one device (bytes): a certificate, keys and signatures.
pub const MAX_KEY_PACKAGE: usize = 8 * 1024;

/// `POST /v1/mls/key-packages`: the caller device's key packages (MLS
/// messages), each used once; the last-resort one replaces the previous
/// and is handed out when no one-time package is left.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadKeyPackages {
    #[serde(default)]
    pub key_packages: Vec<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resort: Option<Bytes>,
}

/// How many key packages the server holds for the caller device.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyPackageCount {
    pub one_time: u32,
    pub last_resort: bool,
}

/// `POST /v1/rooms/{room}/mls/claim`: one key package of each active
/// device of `user`, who must be a member of the room.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimKeyPackages {
    pub user: UserId,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClaimedKeyPackage {
    pub device: DeviceId,
    pub key_package: Bytes,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClaimedKeyPackages {
    pub key_packages: Vec<ClaimedKeyPackage>,
}

/// `PUT /v1/rooms/{room}/mls/group`: the new group's GroupInfo (with its
/// ratchet tree), from the room's creator.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitGroup {
    pub group_info: Bytes,
}

/// `POST /v1/rooms/{room}/mls/commits`: a commit for the group's current
/// epoch and, if it adds devices, their Welcome.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostCommit {
    pub commit: Bytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome: Option<Bytes>,
}

/// The epoch a commit led to.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitAccepted {
    pub epoch: u64,
}

/// One ordered commit: `epoch` is the epoch it was made in.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderedCommit {
    pub epoch: u64,
    pub commit: Bytes,
}

/// `GET /v1/rooms/{room}/mls/commits?from=E`: commits from epoch `E` on.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitPage {
    pub commits: Vec<OrderedCommit>,
}

/// `GET /v1/rooms/{room}/mls`: the group as the server follows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupStatus {
    pub room: RoomId,
    pub epoch: u64,
    /// The devices holding a leaf, in leaf order.
    pub devices: Vec<DeviceId>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingWelcome {
    pub room: RoomId,
    /// The epoch the Welcome joins.
    pub epoch: u64,
    pub welcome: Bytes,
}

/// `GET /v1/mls/welcomes`: Welcomes waiting for the caller device.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Welcomes {
    pub welcomes: Vec<PendingWelcome>,
}
