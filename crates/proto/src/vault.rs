//! Compliance capture: the audit envelope a device seals to its tenant's
//! escrow key, and the blind-index tokens that travel with it.

use crate::b64::{Bytes, Fixed};
use crate::server::Content;
use crate::{DeviceId, MessageId, RoomId, TenantId, UserId};
use serde::{Deserialize, Serialize};

/// What compliance can read after a k-of-n decryption session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Proof that the sender's device wrote exactly this content.
    pub attribution: Attribution,
    /// DLP policies that flagged this content (ids), as the capturing
    /// device evaluated them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dlp_flags: Vec<String>,
    /// The sender device's certificate when the sender is of another firm
    /// (a message received in a room shared with a partner firm): the
    /// record keeps what attributes it, since this firm's officers cannot
    /// look other firms' devices up later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_cert: Option<crate::km::SignedCert>,
}

/// What makes a captured message attributable: the sender device's signed
/// header (which commits to the plaintext and the ciphertext's hash), its
/// signature, and the opening of the commitment. Checked against the
/// sender's KM-signed certificate, it proves who wrote exactly `plaintext`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attribution {
    /// JSON of the message header, exactly as signed.
    pub header: Bytes,
    pub sig: Fixed<64>,
    /// The message's franking key (derived from the epoch key and the
    /// message id; opens the header's commitment and nothing else).
    pub franking_key: Fixed<32>,
    /// The exact plaintext bytes that were encrypted.
    pub plaintext: Bytes,
}

/// An audit envelope sealed (HPKE) to the tenant's escrow public key. The
/// cleartext fields are bound as associated data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SealedEnvelope {
    pub tenant: TenantId,
    pub message_id: MessageId,
    pub room: RoomId,
    pub ts: u64,
    pub ciphertext_sha256: Fixed<32>,
    pub enc: Fixed<32>,
    pub ct: Bytes,
    /// The escrow generation it is sealed to (bound as associated data
    /// from generation 2 on).
    #[serde(
        default = "crate::first_generation",
        skip_serializing_if = "crate::is_first_generation"
    )]
    pub generation: u32,
}

/// A capture as submitted to the vault: the sealed envelope (its exact JSON
/// bytes, which the receipt hashes) and its blind-index tokens.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// JSON of [`SealedEnvelope`].
    pub envelope: Bytes,
    /// Index-key period the tokens were made under.
    pub period: u32,
    pub tokens: Vec<Fixed<16>>,
    /// Captured by a recipient: if the message is already in the vault, its
    /// existing receipt is returned instead of a conflict.
    #[serde(default)]
    pub received: bool,
    /// The sender's signed message header and signature, so the vault can
    /// check who wrote the message before it stores anything.
    pub header: Bytes,
    pub sig: Fixed<64>,
    /// The sender device's KM-signed certificate.
    pub sender_cert: crate::km::SignedCert,
}

/// A request to the vault, signed by a device of the tenant; the device's
/// KM-signed certificate travels with it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultRequest {
    pub cert: crate::km::SignedCert,
    /// JSON of [`VaultOp`], exactly as signed.
    pub body: Bytes,
    pub sig: Fixed<64>,
}

/// What a vault request asks for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultOp {
    /// Store a capture; answered with a signed receipt.
    Capture { ts: u64, capture: Capture },
    /// Compliance search (admin for now): every term of a period must match.
    Search {
        ts: u64,
        queries: Vec<PeriodQuery>,
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    },
    /// The ingestion log's newest signed checkpoint.
    Checkpoint { ts: u64 },
    /// Case officer: sealed envelopes inside a KM-signed case's rooms and
    /// time range (and, if `tokens` is not empty, having any of them: the
    /// custodians' sender/participant tokens), in log order after `after`,
    /// each with its inclusion proof in the log of `size` entries.
    Fetch {
        ts: u64,
        case: crate::km::SignedBlob,
        tokens: Vec<PeriodQuery>,
        after: Option<u64>,
        limit: u32,
        size: u64,
    },
    /// Apply a KM-signed retention purge order.
    Purge {
        ts: u64,
        order: crate::km::SignedBlob,
    },
    /// Case officer: replace envelopes inside a KM-signed case by the same
    /// content sealed to a newer escrow generation (each one the JSON of a
    /// [`SealedEnvelope`]).
    Reseal {
        ts: u64,
        case: crate::km::SignedBlob,
        envelopes: Vec<Bytes>,
    },
    /// Admin or compliance: the vault's signed count of envelopes still
    /// sealed to an escrow generation ([`crate::km::EscrowCount`]).
    EscrowCount { ts: u64, generation: u32 },
}

/// One envelope of a case fetch.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FetchedEnvelope {
    /// JSON of [`SealedEnvelope`] exactly as captured.
    pub envelope: Bytes,
    /// Its `envelope_ingested` entry in the vault's log, with inclusion proof.
    pub entry: crate::km::InclusionProof,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FetchResponse {
    pub items: Vec<FetchedEnvelope>,
    /// Log index to continue after, if there may be more.
    pub next: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PurgeResponse {
    pub deleted: u64,
    pub kept_for_hold: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResealResponse {
    /// Envelopes replaced now.
    pub resealed: u64,
    /// Envelopes already sealed to that generation or newer (a re-run).
    pub already: u64,
}

/// The AND of `tokens` within one index-key period.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeriodQuery {
    pub period: u32,
    pub tokens: Vec<Fixed<16>>,
}

/// The vault's statement that it holds an envelope for a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub tenant: TenantId,
    pub message_id: MessageId,
    pub ciphertext_sha256: Fixed<32>,
    /// SHA-256 of the sealed envelope's JSON bytes.
    pub envelope_sha256: Fixed<32>,
    pub received_ms: u64,
    /// Index of the `envelope_ingested` entry in the vault's log.
    pub log_index: u64,
}

/// A receipt as signed bytes (domain `cloister/receipt/v1`, vault key).
pub type SignedReceipt = crate::km::SignedBlob;

/// Public description of a tenant's vault.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VaultInfo {
    pub tenant: TenantId,
    /// Ed25519 key that signs receipts.
    pub receipt_pk: Fixed<32>,
    /// C2SP verifier key of the ingestion log.
    pub log_key: String,
    /// The jurisdiction the vault is pinned to (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jurisdiction: String,
}

/// One search hit: metadata only; reading content needs a decryption session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub message_id: MessageId,
    pub room: RoomId,
    pub ts: u64,
    pub ciphertext_sha256: Fixed<32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub hits: Vec<SearchHit>,
}
