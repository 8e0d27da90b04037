//! Cloister cryptography, without I/O.
//!
//! ```text
//!  DeviceKeys ── sign ──▶ SignedStatement / SignedRequest / Envelope.sig
//!  KmSigner   ── sign ──▶ SignedCert / SignedNotice
//!  KM: RoomKey ── hpke::seal_room_key(device.hpke_pk) ──▶ SealedRoomKey ── open ──▶ device
//!  device: RoomKey ─HKDF(msg id)─▶ AES-256-GCM(header as AAD) + Ed25519 ──▶ Envelope
//!  device: FileKey ─ STREAM-BE32(AES-256-GCM), 64 KiB chunks ──▶ encrypted blob
//!  tooling: passphrase ─Argon2id─▶ AES-256-GCM ──▶ sealed key files
//! ```
//!
//! Every primitive comes from a maintained crate (RustCrypto, dalek, `hpke`).
//! Secrets are zeroized on drop and never printed by `Debug`.
#![forbid(unsafe_code)]

pub mod blind;
pub mod capture;
pub mod escrow;
pub mod file;
pub mod history;
pub mod hpke_seal;
pub mod keys;
pub mod message;
pub mod passphrase;
pub mod signed;
pub mod wrap;

pub use keys::{DeviceKeys, ExchangeKey, KmSigner, RoomKey, SecretBytes, km_identity_fingerprint};

/// Errors from cryptographic operations. Messages never contain key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("signature verification failed")]
    BadSignature,
    #[error("decryption failed: wrong key, or the data or its context was altered")]
    Decrypt,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("the operating system's random generator failed")]
    Rng,
    #[error("wrong passphrase, or the sealed file was altered")]
    Passphrase,
    #[error("encryption failed")]
    Encrypt,
    #[error("the message does not match its sender's signed commitment (unattributable)")]
    BadCommitment,
}

/// Fill a buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| CryptoError::Rng)?;
    Ok(out)
}

/// SHA-256 of some bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// HMAC-SHA-256.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Incremental SHA-256 (for streamed files).
#[derive(Default, Clone)]
pub struct Sha256Stream(sha2::Sha256);

impl Sha256Stream {
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        self.0.update(data);
    }
    pub fn finish(self) -> [u8; 32] {
        use sha2::Digest;
        self.0.finalize().into()
    }
}
