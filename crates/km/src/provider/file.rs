//! The development provider: the TMK in a file sealed with a passphrase.

use super::{KeyProvider, ProviderError, generation_of, write_private};
use cloister_crypto::{CryptoError, RoomKey, SecretBytes, passphrase, wrap};
use std::path::Path;

const RING_AAD: &[u8] = b"cloister/retention-ring/v1";

/// Generation keys: the current one and those not yet destroyed.
#[derive(Clone)]
struct Ring {
    current: u32,
    keys: std::collections::BTreeMap<u32, RoomKey>,
}

impl Ring {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 36 * self.keys.len());
        v.extend_from_slice(&self.current.to_be_bytes());
        for (g, k) in &self.keys {
            v.extend_from_slice(&g.to_be_bytes());
            v.extend_from_slice(k.expose());
        }
        v
    }

    fn decode(b: &[u8]) -> Result<Ring, ProviderError> {
        let bad = || ProviderError::Crypto(CryptoError::Malformed("retention key ring"));
        if b.len() < 4 || !(b.len() - 4).is_multiple_of(36) {
            return Err(bad());
        }
        let current = u32::from_be_bytes(b[..4].try_into().map_err(|_| bad())?);
        let mut keys = std::collections::BTreeMap::new();
        for c in b[4..].chunks(36) {
            let g = u32::from_be_bytes(c[..4].try_into().map_err(|_| bad())?);
            keys.insert(g, RoomKey::from_slice(&c[4..])?);
        }
        if !keys.contains_key(&current) {
            return Err(bad());
        }
        Ok(Ring { current, keys })
    }
}

/// Development provider: the TMK lives in a file sealed with a passphrase
/// (Argon2id); the generation keys in `retention.keys` beside it, sealed
/// under the TMK and rewritten (temp file, fsync, rename, fsync of the
/// directory) on every rotation and destruction.
pub struct FileKeyProvider {
    tmk: RoomKey,
    ring_path: std::path::PathBuf,
    ring: std::sync::Mutex<Ring>,
}

fn io_err(path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn ring_path(tmk_path: &Path) -> std::path::PathBuf {
    tmk_path.with_file_name("retention.keys")
}

impl FileKeyProvider {
    /// Create a new TMK and seal it to `path`. Fails if the file exists.
    pub fn create(path: &Path, pass: &[u8], cost: passphrase::Cost) -> Result<Self, ProviderError> {
        if path.exists() {
            return Err(ProviderError::Exists(path.display().to_string()));
        }
        let tmk = RoomKey::generate()?;
        let sealed = passphrase::seal(pass, tmk.expose(), cost)?;
        write_private(path, &sealed).map_err(|e| io_err(path, e))?;
        Self::with_ring(tmk, path)
    }

    /// Load the generation ring (creating generation 1 if there is none).
    fn with_ring(tmk: RoomKey, path: &Path) -> Result<Self, ProviderError> {
        let rp = ring_path(path);
        let ring = match std::fs::read(&rp) {
            Ok(b) => Ring::decode(wrap::unwrap(&tmk, RING_AAD, &b)?.expose())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut keys = std::collections::BTreeMap::new();
                keys.insert(1, RoomKey::generate()?);
                Ring { current: 1, keys }
            }
            Err(e) => return Err(io_err(&rp, e)),
        };
        let p = FileKeyProvider {
            tmk,
            ring_path: rp,
            ring: std::sync::Mutex::new(ring),
        };
        p.save()?;
        Ok(p)
    }

    fn save(&self) -> Result<(), ProviderError> {
        let ring = self.lock()?.clone();
        self.save_ring(&ring)
    }

    /// Write `ring` durably (the in-memory ring changes only after this).
    fn save_ring(&self, ring: &Ring) -> Result<(), ProviderError> {
        let sealed = wrap::wrap(&self.tmk, RING_AAD, &ring.encode())?;
        write_private(&self.ring_path, &sealed).map_err(|e| io_err(&self.ring_path, e))?;
        if let Some(dir) = self.ring_path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            d.sync_all().map_err(|e| io_err(dir, e))?;
        }
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Ring>, ProviderError> {
        self.ring
            .lock()
            .map_err(|_| ProviderError::Crypto(CryptoError::Malformed("key ring lock")))
    }

    /// Unlock an existing TMK file.
    pub fn open(path: &Path, pass: &[u8]) -> Result<Self, ProviderError> {
        let sealed = std::fs::read(path).map_err(|e| io_err(path, e))?;
        let tmk = passphrase::open(pass, &sealed).map_err(ProviderError::Unlock)?;
        Self::with_ring(RoomKey::from_slice(tmk.expose())?, path)
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
    fn wrap_destroyable(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let ring = self.lock()?;
        let k = ring
            .keys
            .get(&ring.current)
            .ok_or(ProviderError::Destroyed(ring.current))?;
        let mut out = ring.current.to_be_bytes().to_vec();
        out.extend_from_slice(&wrap::wrap(k, aad, secret)?);
        Ok(out)
    }
    fn unwrap_destroyable(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        let g = generation_of(wrapped).ok_or(CryptoError::Malformed("wrapped key"))?;
        let ring = self.lock()?;
        let k = ring.keys.get(&g).ok_or(ProviderError::Destroyed(g))?;
        Ok(wrap::unwrap(k, aad, &wrapped[4..])?)
    }
    fn generation(&self) -> u32 {
        self.lock().map(|r| r.current).unwrap_or(0)
    }
    fn rotate(&self) -> Result<u32, ProviderError> {
        let mut ring = self.lock()?;
        let mut next = ring.clone();
        let g = next.current + 1;
        next.keys.insert(g, RoomKey::generate()?);
        next.current = g;
        self.save_ring(&next)?;
        *ring = next;
        Ok(g)
    }
    fn destroy_before(&self, keep: u32) -> Result<(), ProviderError> {
        let mut ring = self.lock()?;
        let mut next = ring.clone();
        next.keys.retain(|g, _| *g >= keep);
        self.save_ring(&next)?;
        *ring = next;
        Ok(())
    }
    fn generations(&self) -> usize {
        self.lock().map(|r| r.keys.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::provider::generation_of;

    #[test]
    fn destroyed_generations_stay_destroyed_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tmk.sealed");
        let p = FileKeyProvider::create(&path, b"pw", passphrase::Cost::TEST).unwrap();
        let old = p.wrap_destroyable(b"a", b"epoch key").unwrap();
        assert_eq!(generation_of(&old), Some(1));
        let g = p.rotate().unwrap();
        let kept = p
            .wrap_destroyable(b"a", p.unwrap_destroyable(b"a", &old).unwrap().expose())
            .unwrap();
        p.destroy_before(g).unwrap();
        assert!(matches!(
            p.unwrap_destroyable(b"a", &old),
            Err(ProviderError::Destroyed(1))
        ));
        drop(p);
        let p = FileKeyProvider::open(&path, b"pw").unwrap();
        assert_eq!(p.generation(), 2);
        assert!(matches!(
            p.unwrap_destroyable(b"a", &old),
            Err(ProviderError::Destroyed(1))
        ));
        assert_eq!(
            p.unwrap_destroyable(b"a", &kept).unwrap().expose(),
            b"epoch key"
        );
        // the ring file holds no trace of generation 1's key
        let ring = std::fs::read(dir.path().join("retention.keys")).unwrap();
        assert!(ring.len() < 4 + 16 + 12 + 4 + 2 * 36);
    }
}
