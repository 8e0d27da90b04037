//! Trust between firms: the identity one firm's KM publishes and another
//! firm's admins pin after comparing its fingerprint out of band.
//!
//! ```text
//!  firm A admin ── trust self ──▶ "cloister-km1.bank.<b64(sign ‖ exchange)>" + fingerprint
//!        (out of band: phone, paper, a signed letter)
//!  firm B admin ── trust add bank --km-key … [--fingerprint …] ──▶ firm B's KM pins it
//! ```

use crate::TenantId;
use crate::b64::{decode, encode};
use serde::{Deserialize, Serialize};

/// Prefix and version of a KM identity's text form.
pub const KM_IDENTITY_PREFIX: &str = "cloister-km1";

/// A firm's KM as others pin it: its tenant, its Ed25519 signing key (room
/// heads, notices, KM-to-KM requests) and its X25519 exchange key (room
/// keys sealed to it by partner KMs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmIdentity {
    pub tenant: TenantId,
    pub sign_pk: [u8; 32],
    pub exchange_pk: [u8; 32],
}

/// Why a KM identity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "a KM key looks like {KM_IDENTITY_PREFIX}.TENANT.KEYS (as `cloister admin trust self` prints it)"
    )]
    Shape,
    #[error("the KM key names tenant {0:?}, which is not a valid tenant id")]
    Tenant(String),
    #[error("the KM key's key part is not 64 bytes of base64url")]
    Keys,
}

impl KmIdentity {
    /// `cloister-km1.TENANT.BASE64URL(sign_pk ‖ exchange_pk)`.
    pub fn to_key_string(&self) -> String {
        let mut k = Vec::with_capacity(64);
        k.extend_from_slice(&self.sign_pk);
        k.extend_from_slice(&self.exchange_pk);
        format!("{KM_IDENTITY_PREFIX}.{}.{}", self.tenant, encode(&k))
    }

    pub fn parse(s: &str) -> Result<KmIdentity, IdentityError> {
        let s = s.trim();
        if s.len() > 256 {
            return Err(IdentityError::Shape);
        }
        let mut parts = s.split('.');
        let (Some(prefix), Some(tenant), Some(keys), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::Shape);
        };
        if prefix != KM_IDENTITY_PREFIX {
            return Err(IdentityError::Shape);
        }
        let tenant: TenantId = tenant
            .parse()
            .map_err(|_| IdentityError::Tenant(tenant.chars().take(64).collect()))?;
        let raw = decode(keys).map_err(|_| IdentityError::Keys)?;
        if raw.len() != 64 {
            return Err(IdentityError::Keys);
        }
        let mut sign_pk = [0u8; 32];
        let mut exchange_pk = [0u8; 32];
        sign_pk.copy_from_slice(&raw[..32]);
        exchange_pk.copy_from_slice(&raw[32..]);
        Ok(KmIdentity {
            tenant,
            sign_pk,
            exchange_pk,
        })
    }
}

/// This firm's KM identity, to hand to a partner firm.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OwnIdentity {
    pub tenant: TenantId,
    pub km_key: String,
    pub fingerprint: String,
}

/// A firm this firm's KM trusts (or trusted: removals are kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrustedFirm {
    pub tenant: TenantId,
    /// The pinned identity, as given.
    pub km_key: String,
    pub fingerprint: String,
    pub added_ms: u64,
    pub added_by: crate::UserId,
    /// Where the partner's KM answers other KMs (key exchange for rooms
    /// homed there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub km_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<TrustRemoval>,
}

impl TrustedFirm {
    pub fn active(&self) -> bool {
        self.removed.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrustRemoval {
    pub ms: u64,
    pub by: crate::UserId,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn identity_round_trip_and_refusals() {
        let id = KmIdentity {
            tenant: "bank".parse().unwrap(),
            sign_pk: [1; 32],
            exchange_pk: [2; 32],
        };
        let s = id.to_key_string();
        assert!(s.starts_with("cloister-km1.bank."));
        assert_eq!(KmIdentity::parse(&s).unwrap(), id);
        assert_eq!(KmIdentity::parse(&format!("  {s}\n")).unwrap(), id);
        for bad in [
            "",
            "cloister-km1.bank",
            "cloister-km2.bank.AAAA",
            &format!("{s}.x"),
            &s.replace("bank", "Bad Tenant"),
            "cloister-km1.bank.AAAA",
            &"x".repeat(300),
        ] {
            assert!(KmIdentity::parse(bad).is_err(), "{bad}");
        }
    }
}

/// A user asks a user of another firm to connect; signed by the asker's
/// KM (domain `cloister/connection-request/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRequest {
    pub from: crate::UserId,
    pub to: crate::UserId,
    pub ts: u64,
    pub nonce: crate::b64::Fixed<16>,
}

/// The asked user's answer; signed by their KM (domain
/// `cloister/connection-answer/v1`). `request` is the SHA-256 of the
/// request's signed bytes (the connection's id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionAnswer {
    pub request: crate::b64::Fixed<32>,
    pub from: crate::UserId,
    pub to: crate::UserId,
    pub accept: bool,
    pub ts: u64,
}

/// Either user ends a connection; signed by their KM (domain
/// `cloister/connection-removal/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRemoval {
    pub request: crate::b64::Fixed<32>,
    pub by: crate::UserId,
    pub ts: u64,
}

/// A connection as the server keeps and shows it: the signed request, and
/// the signed answer and removal once there are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Connection {
    pub id: crate::b64::Fixed<32>,
    pub request: crate::km::SignedBlob,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<crate::km::SignedBlob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal: Option<crate::km::SignedBlob>,
}

/// `POST /v1/connections/{id}/answer` and `…/remove` bodies.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPost {
    pub blob: crate::km::SignedBlob,
}

/// Proof that two users of different firms are connected: the request
/// signed by the asker's KM and the acceptance signed by the asked user's
/// KM. A membership statement that puts a user of another firm in a room
/// carries one linking its actor and that user; every replica checks it
/// under the keys it trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionProof {
    pub request: crate::km::SignedBlob,
    pub answer: crate::km::SignedBlob,
}

/// The signing keys of the firms a KM trusts now, signed by that KM
/// (domain `cloister/partner-keys/v1`), for its own devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartnerKeys {
    pub tenant: TenantId,
    pub partners: Vec<PartnerKey>,
    pub issued_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartnerKey {
    pub tenant: TenantId,
    pub sign_pk: crate::b64::Fixed<32>,
}

/// A partner KM asks a room's home KM for epoch keys (domain
/// `cloister/km-key-request/v1`, signed with the asking KM's key). `log`
/// is the room's log as the asker verified it, from seq 0; `certs` are the
/// certificates of its actors that are not the home firm's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KmKeyRequest {
    pub from: TenantId,
    pub home: TenantId,
    pub room: crate::RoomId,
    pub epochs: Vec<u64>,
    pub log: Vec<crate::room::SignedStatement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certs: Vec<crate::km::SignedCert>,
    pub ts: u64,
    pub nonce: crate::b64::Fixed<16>,
}

/// The home KM's answer (domain `cloister/km-key-grant/v1`): each epoch key
/// sealed with HPKE to the asking firm's pinned exchange key, bound to
/// (home, partner, room, epoch); `seq`/`head` name the log state it judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KmKeyGrant {
    pub home: TenantId,
    pub to: TenantId,
    pub room: crate::RoomId,
    pub seq: u64,
    pub head: crate::b64::Fixed<32>,
    pub keys: Vec<ExchangedKey>,
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangedKey {
    pub epoch: u64,
    pub enc: crate::b64::Fixed<32>,
    pub ct: crate::b64::Bytes,
}

/// The profile fields a firm may publish to other firms.
pub const PUBLISHABLE_FIELDS: [&str; 7] = [
    "display_name",
    "title",
    "department",
    "desk",
    "location",
    "job_function",
    "asset_classes",
];

/// One firm's KM asks another's directory on behalf of its user (domain
/// `cloister/directory-query/v1`, signed by the asking KM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryQuery {
    pub from: TenantId,
    pub to: TenantId,
    pub searcher: crate::UserId,
    pub query: String,
    pub limit: u32,
    pub ts: u64,
    pub nonce: crate::b64::Fixed<16>,
}

/// The answer (domain `cloister/directory-answer/v1`, signed by the
/// answering KM): only the fields it publishes are filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryAnswer {
    pub firm: TenantId,
    pub searcher: crate::UserId,
    pub published: Vec<String>,
    pub entries: Vec<crate::km::DirectoryEntry>,
    pub ts: u64,
}
