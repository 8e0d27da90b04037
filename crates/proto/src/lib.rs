//! Cloister wire types.
//!
//! Everything that crosses a process boundary is defined here, without I/O.
//!
//! ```text
//!   device ──(SignedRequest)──▶ KM ──(SealedRoomKey)──▶ device
//!   device ──(SignedStatement / Envelope)──▶ server ──(history, WS)──▶ devices
//!   KM ──(SignedCert, SignedNotice)──▶ server, devices
//! ```
//!
//! **Signed bytes, parsed after verification.** Every signed object travels as
//! the exact bytes that were signed (`body`, base64 in JSON) next to the
//! signature. A receiver verifies the signature over those bytes first and only
//! then parses them. There is no re-serialisation step, so there is no
//! canonicalisation to get wrong: the bytes hashed into a chain or bound as
//! AEAD associated data are the bytes that were signed. See
//! `docs/adr/0002-signed-bytes.md`.
#![forbid(unsafe_code)]

pub mod b64;
pub mod controls;
pub mod federation;
pub mod ids;
pub mod km;
pub mod mls;
pub mod room;
mod schema;
pub use schema::Binary;
pub mod server;
pub mod vault;

pub use ids::{DeviceId, IdError, MessageId, RoomId, TenantId, UserId};

/// Upper bounds shared by every service; inputs above them are refused.
pub mod limits {
    /// Largest JSON request body the services accept (bytes), attachments excepted.
    pub const MAX_JSON_BODY: usize = 2 * 1024 * 1024;
    /// Largest encrypted message body (bytes of ciphertext).
    pub const MAX_MESSAGE_CIPHERTEXT: usize = 256 * 1024;
    /// Largest frame a client may send on its live socket: a post of the
    /// largest ciphertext (base64 in JSON) with its header and receipt.
    pub const MAX_LIVE_FRAME: usize = MAX_MESSAGE_CIPHERTEXT * 4 / 3 + 64 * 1024;
    /// Largest text a user may send (bytes of UTF-8).
    pub const MAX_TEXT: usize = 64 * 1024;
    /// Default largest attachment (bytes of plaintext).
    pub const DEFAULT_MAX_ATTACHMENT: u64 = 100 * 1024 * 1024;
    /// Largest membership-log batch in one key request.
    pub const MAX_LOG_BATCH: usize = 10_000;
    /// KM-signed statements in one batch append (evictions across rooms).
    pub const MAX_KM_BATCH: usize = 256;
    /// Members of one room.
    pub const MAX_ROOM_MEMBERS: usize = 10_000;
    /// Epochs in one key request.
    pub const MAX_EPOCHS_PER_REQUEST: usize = 1_000;
    /// Allowed clock skew for signed requests and messages (seconds).
    pub const MAX_SKEW_SECS: u64 = 300;
    /// Largest page of history.
    pub const MAX_PAGE: u32 = 1_000;
    /// Chunk size of attachment encryption (plaintext bytes per chunk).
    pub const FILE_CHUNK: usize = 64 * 1024;
}

/// JSON error body returned by every HTTP endpoint: `{ "error": code, "message": ... }`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `not_member`.
    pub error: String,
    /// Human-readable explanation; never contains secrets or internals.
    pub message: String,
}

/// Seconds since the Unix epoch.
/// A jurisdiction as escrow policies and regional vaults name it: an ISO
/// 3166-1 alpha-2 country code, or a subdivision (`US-NY`), upper case;
/// `None` if it is not one. `UK`/`uk`/` UK ` are the same jurisdiction;
/// `US-NY` and `US-CA` are two (name the country where a policy means
/// countries).
pub fn canonical_jurisdiction(j: &str) -> Option<String> {
    let j = j.trim().to_ascii_uppercase();
    let (country, sub) = match j.split_once('-') {
        Some((c, s)) => (c, Some(s)),
        None => (j.as_str(), None),
    };
    let ok_country = country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase());
    let ok_sub = sub.is_none_or(|s| {
        (1..=3).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    });
    (ok_country && ok_sub).then_some(j)
}

/// The escrow generation of data from before escrow rotation existed.
pub fn first_generation() -> u32 {
    1
}

/// Whether a generation is the first (left out of serialised forms, so
/// their bytes stay as before).
pub fn is_first_generation(g: &u32) -> bool {
    *g == 1
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Is a signed timestamp (milliseconds) within the allowed clock skew of now?
pub fn within_skew(ts_ms: u64) -> bool {
    let now = now_millis();
    let skew = limits::MAX_SKEW_SECS * 1000;
    ts_ms.saturating_add(skew) >= now && ts_ms <= now.saturating_add(skew)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
