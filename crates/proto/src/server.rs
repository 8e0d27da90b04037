//! Messaging-server protocol: sessions, messages, history, live events.

use crate::b64::{Bytes, Fixed};
use crate::km::{SignedCert, SignedNotice};
use crate::room::{RoomKind, RoomSettings, SignedStatement};
use crate::{DeviceId, MessageId, RoomId, TenantId, UserId};
use serde::{Deserialize, Serialize};

/// Register a tenant on the server (operator only).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterTenant {
    pub tenant: TenantId,
    pub km_sign_pk: Fixed<32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    pub cert: SignedCert,
}

/// Login: the device signs `("cloister-login-v1", device, ts, nonce)`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub device: DeviceId,
    pub ts: u64,
    pub nonce: Fixed<16>,
    pub sig: Fixed<64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub expires_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostNotice {
    pub notice: SignedNotice,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendLog {
    pub entry: SignedStatement,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppendLogResponse {
    pub seq: u64,
    pub head: Fixed<32>,
}

/// Statements signed by the tenant's KM for several rooms at once (each
/// room's entries in log order), appended by the server in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KmAppendBatch {
    pub entries: Vec<SignedStatement>,
}

/// What became of each entry of a [`KmAppendBatch`], in its order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KmAppendBatchResponse {
    pub results: Vec<AppendOutcome>,
}

/// One entry's outcome: appended (`head` is the room's new head) or
/// refused (`error`; the room's later entries in the batch are refused too).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppendOutcome {
    pub room: RoomId,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Fixed<32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ErrorBody>,
}

/// A malware scanner's finding on one shared file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub tenant: TenantId,
    pub room: RoomId,
    pub message_id: MessageId,
    /// SHA-256 of the file's plaintext (the message commits to it).
    pub sha256: Fixed<32>,
    pub infected: bool,
    /// The signature that matched (infected), else empty.
    pub signature: String,
    /// The engine and its version, e.g. `ClamAV 1.4.6`.
    pub engine: String,
    pub ts: u64,
}

/// A verdict signed by an inspector device, with its KM-signed certificate.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedVerdict {
    /// JSON of [`Verdict`], exactly as signed.
    pub body: Bytes,
    pub sig: Fixed<64>,
    pub cert: SignedCert,
}

/// A KM asks for its room's log from `from` (KM-signed, fresh).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KmLogQuery {
    pub tenant: crate::TenantId,
    pub room: RoomId,
    pub from: u64,
    /// Milliseconds; must be within the allowed skew.
    pub ts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogPage {
    pub room: RoomId,
    pub entries: Vec<SignedStatement>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomSummary {
    pub room: RoomId,
    pub kind: RoomKind,
    pub settings: RoomSettings,
    pub epoch: u64,
    pub members: Vec<UserId>,
    pub owners: Vec<UserId>,
    pub log_seq: u64,
}

/// The signed, authenticated-but-cleartext header of a message. Its exact bytes
/// are the AEAD associated data and are covered by the sender's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageHeader {
    pub v: u8,
    pub room: RoomId,
    pub epoch: u64,
    pub id: MessageId,
    pub sender: UserId,
    pub device: DeviceId,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// Franking commitment to the plaintext: HMAC-SHA256 under the
    /// message's franking key (docs/protocol.md).
    pub commit: Fixed<32>,
    /// The sender device's message counter in this room (1, 2, …): a
    /// recipient sees gaps, reordering and replays.
    pub counter: u64,
    /// The newest messages of this room the sender had verified (at most
    /// [`MAX_AFTER`]): causal order a server cannot invert unnoticed.
    pub after: Vec<crate::MessageId>,
}

/// Most message ids a header names in `after`.
pub const MAX_AFTER: usize = 3;

/// An encrypted message as sent and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// JSON of [`MessageHeader`], exactly as signed.
    pub header: Bytes,
    pub ciphertext: Bytes,
    /// Ed25519 signature by the sender device over the header and the
    /// ciphertext's SHA-256.
    pub sig: Fixed<64>,
    /// The sender's vault receipt for this message (needed when the tenant
    /// requires capture; not stored or forwarded by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<crate::vault::SignedReceipt>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PostMessageResponse {
    pub seq: u64,
}

/// A stored message with the server's order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredMessage {
    pub seq: u64,
    pub envelope: Envelope,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryPage {
    pub room: RoomId,
    /// Oldest first.
    pub messages: Vec<StoredMessage>,
    /// Pass as `before` to get the previous page; absent at the start of history.
    pub next_before: Option<u64>,
    /// The KM-signed `keys_shredded` notices naming this room: devices
    /// verify them and drop the keys of the epochs they name.
    #[serde(default)]
    pub shredded: Vec<crate::km::SignedNotice>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobResponse {
    pub id: String,
    pub size: u64,
}

/// Events pushed over the WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Message {
        room: RoomId,
        seq: u64,
        envelope: Envelope,
    },
    Membership {
        room: RoomId,
        seq: u64,
    },
    /// An MLS room's group moved to `epoch` (a commit was ordered): fetch
    /// it from `GET /v1/rooms/{room}/mls/commits`.
    MlsCommit {
        room: RoomId,
        epoch: u64,
    },
    /// A Welcome waits for this device (`GET /v1/mls/welcomes`).
    MlsWelcome {
        room: RoomId,
    },
    /// A member's device without a leaf put key packages up: a member's
    /// device adds it (`Client::mls_reconcile`).
    MlsNewDevice {
        room: RoomId,
        device: DeviceId,
    },
    /// Retention destroyed keys of this room: the KM-signed notice.
    KeysShredded {
        room: RoomId,
        notice: crate::km::SignedNotice,
    },
    /// A message posted on this socket ([`ClientFrame::Post`]) is stored at `seq`.
    Posted {
        req: u64,
        seq: u64,
    },
    /// A frame sent on this socket was refused: the status, error code and
    /// message `POST /v1/rooms/{room}/messages` would have answered. `req`
    /// is absent when the frame could not be read at all.
    Refused {
        req: Option<u64>,
        status: u16,
        error: String,
        message: String,
    },
}

/// What a client sends on its live WebSocket (`/v1/ws`), as JSON text
/// frames. Each is answered on the same socket, in any order, by an event
/// naming the same `req`: many may be in flight.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Post a message to a room: the checks and answers of
    /// `POST /v1/rooms/{room}/messages`, without an HTTP request per message.
    Post {
        req: u64,
        room: RoomId,
        envelope: Envelope,
    },
}

/// Plaintext inside a message (encrypted end to end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Content {
    Text {
        text: String,
    },
    File {
        name: String,
        size: u64,
        blob: String,
        /// Per-file key; only ever inside an encrypted message.
        key: Fixed<32>,
        /// SHA-256 of the encrypted blob.
        blob_sha256: Fixed<32>,
        /// SHA-256 of the plaintext file.
        sha256: Fixed<32>,
    },
    /// What the firm's gateway relays from the bridged room's contact on
    /// another network; accepted only from the room's gateway user.
    Relayed {
        network: String,
        /// The contact's address on that network.
        from: String,
        /// The network's id of the message (a Matrix event id).
        id: String,
        /// What they sent (text or a file).
        content: Box<Content>,
    },
}

impl Content {
    /// What was said: for a relayed message what the contact sent, else
    /// the content itself.
    pub fn said(&self) -> &Content {
        match self {
            Content::Relayed { content, .. } => content.said(),
            c => c,
        }
    }
}

/// Cert lookup response.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceCerts {
    pub certs: Vec<SignedCert>,
}

/// Is this KM key the one registered for the tenant? (Answered the same way
/// for a missing tenant and a wrong key: no oracle of which tenants exist.)
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinCheck {
    pub km_sign_pk: Fixed<32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PinCheckResponse {
    pub pinned: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ok {
    pub ok: bool,
}

impl MessageHeader {
    /// Header version 1 is a managed-mode message, 2 an MLS-mode one (the
    /// ciphertext is an MLS private message and `epoch` the group's epoch).
    pub fn mode(&self) -> crate::room::RoomMode {
        if self.v == 2 {
            crate::room::RoomMode::Mls
        } else {
            crate::room::RoomMode::Managed
        }
    }
}
