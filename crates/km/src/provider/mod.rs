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
}

/// Wrap and unwrap secrets under the tenant master key.
pub trait KeyProvider: Send + Sync + 'static {
    /// Which provider this is, for logs and `km info`.
    fn name(&self) -> &'static str;
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError>;
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError>;

    /// Wrap under the current generation: `generation (u32 BE) ‖ wrapped`.
    fn wrap_destroyable(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError>;
    /// `Destroyed` if the generation it was wrapped under is gone.
    fn unwrap_destroyable(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError>;
    /// The generation new wraps use.
    fn generation(&self) -> u32;
    /// Start a new generation (durably); returns it.
    fn rotate(&self) -> Result<u32, ProviderError>;
    /// Destroy every generation below `keep` (durably).
    fn destroy_before(&self, keep: u32) -> Result<(), ProviderError>;
    /// How many generations exist (more than one: a destruction is pending).
    fn generations(&self) -> usize;
}

/// The generation a destroyable wrap was made under.
pub fn generation_of(wrapped: &[u8]) -> Option<u32> {
    wrapped
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
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
