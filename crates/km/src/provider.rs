//! Custody of the tenant master key (TMK).
//!
//! The KM never needs the TMK itself, only "wrap" and "unwrap" under it, so
//! the trait exposes exactly that: a PKCS#11 provider can keep the TMK inside
//! an HSM. Destroying the TMK (or its passphrase) makes every stored room key
//! useless: the crypto-lock.

use cloister_crypto::{CryptoError, RoomKey, SecretBytes, passphrase, wrap};
use std::path::Path;

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
}

/// Wrap and unwrap secrets under the tenant master key.
pub trait KeyProvider: Send + Sync + 'static {
    /// Which provider this is, for logs and `km info`.
    fn name(&self) -> &'static str;
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError>;
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError>;
}

/// Development provider: the TMK lives in a file sealed with a passphrase (Argon2id).
pub struct FileKeyProvider {
    tmk: RoomKey,
}

impl FileKeyProvider {
    /// Create a new TMK and seal it to `path`. Fails if the file exists.
    pub fn create(path: &Path, pass: &[u8], cost: passphrase::Cost) -> Result<Self, ProviderError> {
        if path.exists() {
            return Err(ProviderError::Exists(path.display().to_string()));
        }
        let tmk = RoomKey::generate()?;
        let sealed = passphrase::seal(pass, tmk.expose(), cost)?;
        write_private(path, &sealed).map_err(|e| ProviderError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(FileKeyProvider { tmk })
    }

    /// Unlock an existing TMK file.
    pub fn open(path: &Path, pass: &[u8]) -> Result<Self, ProviderError> {
        let sealed = std::fs::read(path).map_err(|e| ProviderError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let tmk = passphrase::open(pass, &sealed).map_err(ProviderError::Unlock)?;
        Ok(FileKeyProvider {
            tmk: RoomKey::from_slice(tmk.expose())?,
        })
    }
}

impl KeyProvider for FileKeyProvider {
    fn name(&self) -> &'static str {
        "file"
    }
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError> {
        Ok(wrap::wrap(&self.tmk, aad, secret)?)
    }
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        Ok(wrap::unwrap(&self.tmk, aad, wrapped)?)
    }
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
