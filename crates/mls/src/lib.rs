//! End-to-end mode: rooms whose keys the members' devices agree with MLS
//! (RFC 9420, through `mls-rs`), while the firm keeps control of who may
//! join and captures every message (ADR 0028).
//!
//! - [`identity`]: a leaf's credential is the device's KM-signed
//!   certificate and its key the certified key.
//! - [`rules`]: the one check of a commit against the room's membership log,
//!   run by the server and by every member.
//! - [`member`]: a device's side (key packages, groups, commits, messages).
//! - [`observer`]: the server's side as delivery service (it follows each
//!   group's public state from its commits, holding no secrets).
//! - [`storage`]: a device's MLS secrets, exported as one blob to seal.
//! - [`payload`]: what travels inside an MLS application message.
//!
//! Sans-IO: nothing here opens a socket or a file.

pub mod identity;
pub mod member;
pub mod observer;
pub mod payload;
pub mod rules;
pub mod storage;

pub use identity::KmIdentity;
pub use member::{Member, Received, Staged};
pub use observer::{Observed, Observer};
pub use rules::{Change, CommitRefusal, Expected, Leaf, LogBinding};
pub use storage::DeviceStore;

use cloister_proto::{DeviceId, TenantId};
use mls_rs::CipherSuite;
use mls_rs_crypto_rustcrypto::RustCryptoProvider;

/// The ciphersuite of every Cloister group:
/// MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (RFC 9420, 0x0001).
pub const CIPHER_SUITE: CipherSuite = CipherSuite::CURVE25519_AES128;

/// The crypto provider (RustCrypto, only [`CIPHER_SUITE`] enabled).
pub fn crypto_provider() -> RustCryptoProvider {
    RustCryptoProvider::with_enabled_cipher_suites(vec![CIPHER_SUITE])
}

/// Errors of the MLS side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("commit refused: {0}")]
    Refused(#[from] CommitRefusal),
    #[error("this device holds no state for that group")]
    NoGroup,
    #[error("device {0} has no leaf in the group")]
    NotInGroup(DeviceId),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error(
        "the group holds devices of {0}, a firm this device's KM does not trust (now): nothing is sent to or read from it until its users leave the room"
    )]
    Untrusted(TenantId),
    #[error("MLS: {0}")]
    Mls(String),
}

impl Error {
    pub(crate) fn mls(e: mls_rs::error::MlsError) -> Error {
        Error::Mls(e.to_string())
    }
}
