//! The development provider: the TMK in a file sealed with a passphrase.

use super::{KeyProvider, ProviderError, generation_of, split_tagged, write_private};
use cloister_crypto::{CryptoError, RoomKey, SecretBytes, passphrase, wrap};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const RING_AAD: &[u8] = b"cloister/retention-ring/v1";
/// `tmk.sealed` holding several TMK versions (while a rotation runs):
/// `MAGIC ‖ (version u32 ‖ length u32 ‖ passphrase-sealed key)*`. A file
/// that is one passphrase-sealed key (`CLSP1…`) is version 1 alone.
const VERSIONS_MAGIC: &[u8; 5] = b"CLTK2";

/// Generation keys: the current one and those not yet destroyed, each
/// with the TMK version that was current when it was made.
#[derive(Clone)]
struct Ring {
    current: u32,
    keys: BTreeMap<u32, (u32, RoomKey)>,
}

impl Ring {
    /// `current ‖ (generation ‖ tmk version ‖ key)*`
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 40 * self.keys.len());
        v.extend_from_slice(&self.current.to_be_bytes());
        for (g, (t, k)) in &self.keys {
            v.extend_from_slice(&g.to_be_bytes());
            v.extend_from_slice(&t.to_be_bytes());
            v.extend_from_slice(k.expose());
        }
        v
    }

    /// `legacy`: the format before TMK versions (36-byte entries, version 1).
    fn decode(b: &[u8], legacy: bool) -> Result<Ring, ProviderError> {
        let bad = || ProviderError::Crypto(CryptoError::Malformed("retention key ring"));
        let entry = if legacy { 36 } else { 40 };
        if b.len() < 4 || !(b.len() - 4).is_multiple_of(entry) {
            return Err(bad());
        }
        let u32_at = |c: &[u8], i: usize| -> Result<u32, ProviderError> {
            Ok(u32::from_be_bytes(
                c.get(i..i + 4)
                    .and_then(|x| x.try_into().ok())
                    .ok_or_else(bad)?,
            ))
        };
        let current = u32_at(b, 0)?;
        let mut keys = BTreeMap::new();
        for c in b[4..].chunks(entry) {
            let g = u32_at(c, 0)?;
            let (t, k) = if legacy {
                (1, &c[4..])
            } else {
                (u32_at(c, 4)?, &c[8..])
            };
            keys.insert(g, (t, RoomKey::from_slice(k)?));
        }
        if !keys.contains_key(&current) {
            return Err(bad());
        }
        Ok(Ring { current, keys })
    }
}

/// Development provider: the TMK lives in a file sealed with a passphrase
/// (Argon2id); the generation keys in `retention.ring` beside it, sealed
/// under the current TMK and rewritten (temp file, fsync, rename, fsync of
/// the directory) on every rotation and destruction.
pub struct FileKeyProvider {
    path: PathBuf,
    pass: SecretBytes,
    cost: passphrase::Cost,
    tmks: std::sync::Mutex<BTreeMap<u32, RoomKey>>,
    ring_path: PathBuf,
    ring: std::sync::Mutex<Ring>,
}

fn io_err(path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The generation ring's file (and the one before TMK versions).
fn ring_paths(tmk_path: &Path) -> (PathBuf, PathBuf) {
    (
        tmk_path.with_file_name("retention.ring"),
        tmk_path.with_file_name("retention.keys"),
    )
}

fn bad_versions() -> ProviderError {
    ProviderError::Crypto(CryptoError::Malformed("master key file"))
}

/// Open every TMK version in a `tmk.sealed` file.
fn open_versions(pass: &[u8], b: &[u8]) -> Result<BTreeMap<u32, RoomKey>, ProviderError> {
    let open = |sealed: &[u8]| -> Result<RoomKey, ProviderError> {
        let k = passphrase::open(pass, sealed).map_err(ProviderError::Unlock)?;
        Ok(RoomKey::from_slice(k.expose())?)
    };
    let Some(mut rest) = b.strip_prefix(VERSIONS_MAGIC.as_slice()) else {
        return Ok(BTreeMap::from([(1, open(b)?)]));
    };
    let mut out = BTreeMap::new();
    while !rest.is_empty() {
        let v = rest.get(..4).ok_or_else(bad_versions)?;
        let n = rest.get(4..8).ok_or_else(bad_versions)?;
        let v = u32::from_be_bytes(v.try_into().map_err(|_| bad_versions())?);
        let n = u32::from_be_bytes(n.try_into().map_err(|_| bad_versions())?) as usize;
        let sealed = rest.get(8..8 + n).ok_or_else(bad_versions)?;
        out.insert(v, open(sealed)?);
        rest = &rest[8 + n..];
    }
    if out.is_empty() {
        return Err(bad_versions());
    }
    Ok(out)
}

impl FileKeyProvider {
    /// Create a new TMK and seal it to `path`. Fails if the file exists.
    pub fn create(path: &Path, pass: &[u8], cost: passphrase::Cost) -> Result<Self, ProviderError> {
        if path.exists() {
            return Err(ProviderError::Exists(path.display().to_string()));
        }
        let tmks = BTreeMap::from([(1, RoomKey::generate()?)]);
        Self::save_versions(path, pass, cost, &tmks)?;
        Self::with_ring(tmks, path, pass, cost)
    }

    /// Unlock an existing TMK file.
    pub fn open(path: &Path, pass: &[u8]) -> Result<Self, ProviderError> {
        let b = std::fs::read(path).map_err(|e| io_err(path, e))?;
        let tmks = open_versions(pass, &b)?;
        let sealed = b
            .strip_prefix(VERSIONS_MAGIC.as_slice())
            .map_or(&b[..], |r| {
                let n = r
                    .get(4..8)
                    .and_then(|n| n.try_into().ok())
                    .map_or(0, |n| u32::from_be_bytes(n) as usize);
                r.get(8..8 + n).unwrap_or_default()
            });
        let cost = passphrase::cost_of(sealed).unwrap_or(passphrase::Cost::DEFAULT);
        Self::with_ring(tmks, path, pass, cost)
    }

    /// Seal every version (each under the passphrase) into `path`, atomically.
    fn save_versions(
        path: &Path,
        pass: &[u8],
        cost: passphrase::Cost,
        tmks: &BTreeMap<u32, RoomKey>,
    ) -> Result<(), ProviderError> {
        let mut out = Vec::new();
        if tmks.len() == 1 && tmks.contains_key(&1) {
            out = passphrase::seal(pass, tmks[&1].expose(), cost)?;
        } else {
            out.extend_from_slice(VERSIONS_MAGIC);
            for (v, k) in tmks {
                let sealed = passphrase::seal(pass, k.expose(), cost)?;
                out.extend_from_slice(&v.to_be_bytes());
                out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
                out.extend_from_slice(&sealed);
            }
        }
        write_private(path, &out).map_err(|e| io_err(path, e))?;
        sync_dir(path)
    }

    /// Load the generation ring (creating generation 1 if there is none).
    fn with_ring(
        tmks: BTreeMap<u32, RoomKey>,
        path: &Path,
        pass: &[u8],
        cost: passphrase::Cost,
    ) -> Result<Self, ProviderError> {
        let (rp, legacy) = ring_paths(path);
        let ring = match std::fs::read(&rp) {
            Ok(b) => {
                let (v, body) = split_tagged(&b)?;
                let k = tmks.get(&v).ok_or(ProviderError::NoTmk(v))?;
                Ring::decode(wrap::unwrap(k, RING_AAD, body)?.expose(), false)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::read(&legacy) {
                Ok(b) => {
                    let k = tmks.get(&1).ok_or(ProviderError::NoTmk(1))?;
                    Ring::decode(wrap::unwrap(k, RING_AAD, &b)?.expose(), true)?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let t = *tmks.keys().next_back().ok_or(ProviderError::NoTmk(1))?;
                    Ring {
                        current: 1,
                        keys: BTreeMap::from([(1, (t, RoomKey::generate()?))]),
                    }
                }
                Err(e) => return Err(io_err(&legacy, e)),
            },
            Err(e) => return Err(io_err(&rp, e)),
        };
        let p = FileKeyProvider {
            path: path.to_owned(),
            pass: SecretBytes::new(pass.to_vec()),
            cost,
            tmks: std::sync::Mutex::new(tmks),
            ring_path: rp,
            ring: std::sync::Mutex::new(ring),
        };
        p.save()?;
        if legacy.exists() {
            std::fs::remove_file(&legacy).map_err(|e| io_err(&legacy, e))?;
        }
        Ok(p)
    }

    fn save(&self) -> Result<(), ProviderError> {
        let ring = self.lock()?.clone();
        self.save_ring(&ring)
    }

    /// Write `ring` durably under the current TMK (the in-memory ring
    /// changes only after this).
    fn save_ring(&self, ring: &Ring) -> Result<(), ProviderError> {
        let (v, k) = self.current_tmk()?;
        let mut out = v.to_be_bytes().to_vec();
        out.extend_from_slice(&wrap::wrap(&k, RING_AAD, &ring.encode())?);
        write_private(&self.ring_path, &out).map_err(|e| io_err(&self.ring_path, e))?;
        sync_dir(&self.ring_path)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Ring>, ProviderError> {
        self.ring
            .lock()
            .map_err(|_| ProviderError::Crypto(CryptoError::Malformed("key ring lock")))
    }

    fn tmks(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<u32, RoomKey>>, ProviderError> {
        self.tmks
            .lock()
            .map_err(|_| ProviderError::Crypto(CryptoError::Malformed("master key lock")))
    }

    fn current_tmk(&self) -> Result<(u32, RoomKey), ProviderError> {
        let t = self.tmks()?;
        let (v, k) = t.last_key_value().ok_or(ProviderError::NoTmk(0))?;
        Ok((*v, k.clone()))
    }

    fn tmk(&self, v: u32) -> Result<RoomKey, ProviderError> {
        self.tmks()?.get(&v).cloned().ok_or(ProviderError::NoTmk(v))
    }
}

/// Make a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), ProviderError> {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        d.sync_all().map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

impl KeyProvider for FileKeyProvider {
    fn name(&self) -> &'static str {
        "file"
    }
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let (v, k) = self.current_tmk()?;
        let mut out = v.to_be_bytes().to_vec();
        out.extend_from_slice(&wrap::wrap(&k, aad, secret)?);
        Ok(out)
    }
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        let (v, body) = split_tagged(wrapped)?;
        Ok(wrap::unwrap(&self.tmk(v)?, aad, body)?)
    }
    fn wrap_destroyable(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let ring = self.lock()?;
        let (_, k) = ring
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
        let (_, k) = ring.keys.get(&g).ok_or(ProviderError::Destroyed(g))?;
        Ok(wrap::unwrap(k, aad, &wrapped[4..])?)
    }
    fn generation(&self) -> u32 {
        self.lock().map(|r| r.current).unwrap_or(0)
    }
    fn rotate(&self) -> Result<u32, ProviderError> {
        let (t, _) = self.current_tmk()?;
        let mut ring = self.lock()?;
        let mut next = ring.clone();
        let g = next.current + 1;
        next.keys.insert(g, (t, RoomKey::generate()?));
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
    fn tmk_versions(&self) -> Vec<u32> {
        self.tmks()
            .map(|t| t.keys().copied().collect())
            .unwrap_or_default()
    }
    fn begin_tmk_rotation(&self) -> Result<(u32, u32), ProviderError> {
        {
            let mut tmks = self.tmks()?;
            if tmks.len() == 1 {
                let mut next = tmks.clone();
                let v = next.keys().next_back().map_or(1, |v| v + 1);
                next.insert(v, RoomKey::generate()?);
                Self::save_versions(&self.path, self.pass.expose(), self.cost, &next)?;
                *tmks = next;
            }
        }
        let (t, _) = self.current_tmk()?;
        let (g, under) = {
            let ring = self.lock()?;
            (ring.current, ring.keys.get(&ring.current).map(|(u, _)| *u))
        };
        // The ring is re-sealed under the new TMK by `rotate` (and every save).
        let g = if under == Some(t) { g } else { self.rotate()? };
        Ok((t, g))
    }
    fn retire_tmks_before(&self, keep: u32) -> Result<(), ProviderError> {
        if let Some((g, (t, _))) = self.lock()?.keys.iter().find(|(_, (t, _))| *t < keep) {
            return Err(ProviderError::InUse(format!(
                "generation {g} was made under master key version {t}; re-wrap its keys first"
            )));
        }
        // The ring is sealed under the current TMK: make sure of it before
        // the older versions go.
        self.save()?;
        let mut tmks = self.tmks()?;
        let mut next = tmks.clone();
        next.retain(|v, _| *v >= keep);
        if next.is_empty() {
            return Err(ProviderError::InUse(
                "refusing to retire every master key version".into(),
            ));
        }
        Self::save_versions(&self.path, self.pass.expose(), self.cost, &next)?;
        *tmks = next;
        Ok(())
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
        let ring = std::fs::read(dir.path().join("retention.ring")).unwrap();
        assert!(ring.len() < 4 + 16 + 12 + 4 + 2 * 40);
    }

    #[test]
    fn tmk_rotation_keeps_both_versions_until_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tmk.sealed");
        let p = FileKeyProvider::create(&path, b"pw", passphrase::Cost::TEST).unwrap();
        let meta = p.wrap(b"m", b"signing key").unwrap();
        let room = p.wrap_destroyable(b"r", b"room key").unwrap();
        assert_eq!(p.tmk_versions(), vec![1]);
        let (t, g) = p.begin_tmk_rotation().unwrap();
        assert_eq!((t, g), (2, 2));
        // a crash here: both versions and both generations open again
        drop(p);
        let p = FileKeyProvider::open(&path, b"pw").unwrap();
        assert_eq!(p.tmk_versions(), vec![1, 2]);
        assert_eq!(
            p.begin_tmk_rotation().unwrap(),
            (2, 2),
            "resumes, no third key"
        );
        assert_eq!(p.unwrap(b"m", &meta).unwrap().expose(), b"signing key");
        // version 1 still protects generation 1
        assert!(matches!(
            p.retire_tmks_before(2),
            Err(ProviderError::InUse(_))
        ));
        let meta2 = p
            .wrap(b"m", p.unwrap(b"m", &meta).unwrap().expose())
            .unwrap();
        let room2 = p
            .wrap_destroyable(b"r", p.unwrap_destroyable(b"r", &room).unwrap().expose())
            .unwrap();
        p.destroy_before(2).unwrap();
        p.retire_tmks_before(2).unwrap();
        assert!(matches!(
            p.unwrap(b"m", &meta),
            Err(ProviderError::NoTmk(1))
        ));
        drop(p);
        let p = FileKeyProvider::open(&path, b"pw").unwrap();
        assert_eq!(p.tmk_versions(), vec![2]);
        assert_eq!(p.unwrap(b"m", &meta2).unwrap().expose(), b"signing key");
        assert_eq!(
            p.unwrap_destroyable(b"r", &room2).unwrap().expose(),
            b"room key"
        );
        assert!(FileKeyProvider::open(&path, b"wrong").is_err());
    }

    #[test]
    fn opens_the_format_before_tmk_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tmk.sealed");
        let tmk = RoomKey::generate().unwrap();
        std::fs::write(
            &path,
            passphrase::seal(b"pw", tmk.expose(), passphrase::Cost::TEST).unwrap(),
        )
        .unwrap();
        let gen1 = RoomKey::generate().unwrap();
        let mut ring = 1u32.to_be_bytes().to_vec();
        ring.extend_from_slice(&1u32.to_be_bytes());
        ring.extend_from_slice(gen1.expose());
        std::fs::write(
            dir.path().join("retention.keys"),
            wrap::wrap(&tmk, RING_AAD, &ring).unwrap(),
        )
        .unwrap();
        let legacy_meta = wrap::wrap(&tmk, b"m", b"old signer").unwrap();
        let mut legacy_room = 1u32.to_be_bytes().to_vec();
        legacy_room.extend_from_slice(&wrap::wrap(&gen1, b"r", b"old room").unwrap());
        let p = FileKeyProvider::open(&path, b"pw").unwrap();
        assert_eq!(
            p.unwrap(b"m", &crate::provider::tag_legacy(&legacy_meta))
                .unwrap()
                .expose(),
            b"old signer"
        );
        assert_eq!(
            p.unwrap_destroyable(b"r", &legacy_room).unwrap().expose(),
            b"old room"
        );
        assert!(!dir.path().join("retention.keys").exists());
    }
}
