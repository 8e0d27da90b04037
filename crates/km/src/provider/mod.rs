//! Custody of the tenant master key (TMK).
//!
//! The KM never needs the TMK itself, only "wrap" and "unwrap" under it, so
//! the trait exposes exactly that: a PKCS#11 provider can keep the TMK inside
//! an HSM. Destroying the TMK (or its passphrase) makes every stored room key
//! useless: the crypto-lock.
//!
//! Keys that retention must be able to destroy (room-epoch keys, index
//! keys) are wrapped under a *generation* key instead: a random key-
//! encryption key held by the provider. A retention run starts a new
//! generation, re-wraps the keys it keeps, and destroys the older
//! generations, so a shredded key's wrapped bytes (in a database page, a
//! WAL frame, a backup) can never be unwrapped again: destruction does not
//! depend on overwriting anything in the database.

use cloister_crypto::{CryptoError, SecretBytes};
use std::path::Path;

mod file;
mod pkcs11;
pub use file::FileKeyProvider;
pub use pkcs11::{Pkcs11Config, Pkcs11KeyProvider};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("key file {0} already exists; refusing to overwrite a tenant master key")]
    Exists(String),
    #[error("cannot read or write key file {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("cannot unlock the tenant master key: {0}")]
    Unlock(CryptoError),
    #[error("key operation failed: {0}")]
    Crypto(#[from] CryptoError),
    /// The HSM refused or could not be reached (the message never holds
    /// the PIN).
    #[error("HSM (PKCS#11): {0}")]
    Hsm(String),
    /// Wrapped under a generation that retention destroyed.
    #[error("the key was destroyed by retention (generation {0} no longer exists)")]
    Destroyed(u32),
    /// The TMK version a key names does not exist (retired, or never made).
    #[error("tenant master key version {0} does not exist (retired by a rotation)")]
    NoTmk(u32),
    /// A TMK still protects a generation: it cannot be retired yet.
    #[error("{0}")]
    InUse(String),
}

/// Wrap and unwrap secrets under the tenant master key.
///
/// The TMK has versions: a rotation makes a new one, re-wraps every stored
/// key under it, then retires the old one. Each wrap names the version (or,
/// for destroyable wraps, the generation, which was made under one), so
/// keys wrapped under either version open while a rotation runs.
pub trait KeyProvider: Send + Sync + 'static {
    /// Which provider this is, for logs and `km info`.
    fn name(&self) -> &'static str;
    /// Wrap under the current TMK: `version (u32 BE) ‖ wrapped`.
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError>;
    /// Unwrap a [`KeyProvider::wrap`], under the TMK version it names.
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError>;

    /// Wrap under the current generation: `generation (u32 BE) ‖ wrapped`.
    fn wrap_destroyable(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError>;
    /// `Destroyed` if the generation it was wrapped under is gone.
    fn unwrap_destroyable(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError>;
    /// The generation new wraps use.
    fn generation(&self) -> u32;
    /// Start a new generation (durably), under the current TMK; returns it.
    fn rotate(&self) -> Result<u32, ProviderError>;
    /// Destroy every generation below `keep` (durably).
    fn destroy_before(&self, keep: u32) -> Result<(), ProviderError>;
    /// How many generations exist (more than one: a destruction is pending).
    fn generations(&self) -> usize;

    /// The TMK versions that exist, ascending; the last is the one new
    /// wraps use. More than one: a rotation is under way.
    fn tmk_versions(&self) -> Vec<u32>;
    /// Begin or continue a TMK rotation (durably): a new TMK version if only
    /// one exists, and a new generation if the newest was made under an
    /// older TMK. Returns (current TMK version, current generation).
    fn begin_tmk_rotation(&self) -> Result<(u32, u32), ProviderError>;
    /// Destroy the TMK versions below `keep`; refused while a generation
    /// made under one of them still exists.
    fn retire_tmks_before(&self, keep: u32) -> Result<(), ProviderError>;
}

/// The generation a destroyable wrap was made under.
pub fn generation_of(wrapped: &[u8]) -> Option<u32> {
    wrapped
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
}

/// The TMK version a [`KeyProvider::wrap`] was made under.
pub fn tmk_version_of(wrapped: &[u8]) -> Option<u32> {
    generation_of(wrapped)
}

/// Tag a wrap made before TMK versions existed (version 1, untagged).
pub fn tag_legacy(wrapped: &[u8]) -> Vec<u8> {
    let mut v = 1u32.to_be_bytes().to_vec();
    v.extend_from_slice(wrapped);
    v
}

/// Split `version ‖ body`.
fn split_tagged(wrapped: &[u8]) -> Result<(u32, &[u8]), ProviderError> {
    let v = tmk_version_of(wrapped).ok_or(CryptoError::Malformed("wrapped key"))?;
    Ok((v, &wrapped[4..]))
}

/// Write a file readable only by its owner, atomically (temp file, fsync, rename).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
