//! Compliance capture: the audit envelope a device seals to its tenant's
//! escrow key, and the blind-index tokens that travel with it.

use crate::b64::{Bytes, Fixed};
use crate::server::Content;
use crate::{DeviceId, MessageId, RoomId, TenantId, UserId};
use serde::{Deserialize, Serialize};

/// What compliance can read after a k-of-n decryption session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEnvelope {
    pub message_id: MessageId,
    pub room: RoomId,
    pub epoch: u64,
    pub sender: UserId,
    pub device: DeviceId,
    pub participants: Vec<UserId>,
    /// Milliseconds since the Unix epoch (the message header's).
    pub ts: u64,
    /// SHA-256 of the message ciphertext as the server stores it.
    pub ciphertext_sha256: Fixed<32>,
    /// The plaintext (for a file: its name, key and hashes).
    pub content: Content,
    /// SHA-256 of each attachment's plaintext.
    pub attachment_sha256: Vec<Fixed<32>>,
}

/// An audit envelope sealed (HPKE) to the tenant's escrow public key. The
/// cleartext fields are bound as associated data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedEnvelope {
    pub tenant: TenantId,
    pub message_id: MessageId,
    pub room: RoomId,
    pub ts: u64,
    pub ciphertext_sha256: Fixed<32>,
    pub enc: Fixed<32>,
    pub ct: Bytes,
}

/// A capture as submitted to the vault: the sealed envelope and its tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    pub envelope: SealedEnvelope,
    /// Index-key period the tokens were made under.
    pub period: u32,
    pub tokens: Vec<Fixed<16>>,
}
