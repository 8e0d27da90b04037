//! The device's local profile and encrypted keystore.
//!
//! ```text
//!  HOME/profile.json     server and KM URLs, tenant, user, device, KM key, certificate (public)
//!  HOME/keys.sealed      Argon2id(passphrase) → AES-256-GCM( device secrets ‖ cache key )
//!  HOME/keycache.sealed  AES-256-GCM(cache key, released room keys with their leases)
//! ```
//!
//! Room keys are only usable while their lease from the KM is valid; expired
//! entries are dropped when the cache is read, so a crypto-lock at the KM
//! reaches the device within one lease period.

use crate::ClientError;
use cloister_crypto::passphrase::{self, Cost};
use cloister_crypto::{DeviceKeys, RoomKey, wrap};
use cloister_proto::b64::Fixed;
use cloister_proto::km::SignedCert;
use cloister_proto::{DeviceId, RoomId, TenantId, UserId, now_secs};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Public part of a device profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub server: String,
    pub km: String,
    pub tenant: TenantId,
    pub user: UserId,
    pub device: DeviceId,
    /// The tenant KM's signing key, pinned at enrolment.
    pub km_sign_pk: Fixed<32>,
    pub cert: SignedCert,
    /// Verifier key of the tenant's audit log, pinned at enrolment.
    pub log_key: String,
}

/// Witnesses whose cosignatures an audit checkpoint needs (k of n).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessPolicyConfig {
    /// Cosignature verifier keys (`name+id+key`).
    pub witnesses: Vec<String>,
    pub quorum: usize,
}

/// A room key as cached on the device.
#[derive(Clone)]
pub struct CachedKey {
    pub key: RoomKey,
    pub lease_until: u64,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    keys: Vec<(RoomId, u64, Fixed<32>, u64)>,
}

/// Where a device keeps its state; `None` keeps everything in memory (benches).
pub struct Home {
    dir: Option<PathBuf>,
    cache_key: RoomKey,
    checkpoint: std::sync::Mutex<Option<String>>,
    witnesses: std::sync::Mutex<Option<WitnessPolicyConfig>>,
    /// Audit-log keys learned from hand-overs since enrolment, oldest first.
    log_keys: std::sync::Mutex<Vec<String>>,
    sessions: std::sync::Mutex<HashMap<String, Zeroizing<[u8; 32]>>>,
}

const CACHE_AAD: &[u8] = b"cloister/keycache/v1";

fn io(path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Local(format!("{}: {e}", path.display()))
}

/// Write a file readable only by its owner, atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), ClientError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(data).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

impl Home {
    pub fn in_memory() -> Result<Self, ClientError> {
        Ok(Home {
            dir: None,
            cache_key: RoomKey::generate()?,
            checkpoint: Default::default(),
            witnesses: std::sync::Mutex::new(None),
            log_keys: std::sync::Mutex::new(Vec::new()),
            sessions: Default::default(),
        })
    }

    /// Create a new profile directory with sealed keys. Fails if one exists.
    pub fn create(
        dir: &Path,
        pass: &[u8],
        cost: Cost,
        keys: &DeviceKeys,
        profile: &Profile,
    ) -> Result<Self, ClientError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        if dir.join("keys.sealed").exists() {
            return Err(ClientError::Local(format!(
                "{} already holds an enrolled device; use another --home",
                dir.display()
            )));
        }
        let cache_key = RoomKey::generate()?;
        let mut secret = Zeroizing::new(keys.to_secret_bytes().expose().to_vec());
        secret.extend_from_slice(cache_key.expose());
        let sealed = passphrase::seal(pass, &secret, cost)?;
        write_private(&dir.join("keys.sealed"), &sealed)?;
        let home = Home {
            dir: Some(dir.to_owned()),
            cache_key,
            checkpoint: Default::default(),
            witnesses: std::sync::Mutex::new(None),
            log_keys: std::sync::Mutex::new(Vec::new()),
            sessions: Default::default(),
        };
        home.save_profile(profile)?;
        Ok(home)
    }

    /// Open an existing profile directory.
    pub fn open(dir: &Path, pass: &[u8]) -> Result<(Self, DeviceKeys, Profile), ClientError> {
        let kp = dir.join("keys.sealed");
        let sealed = std::fs::read(&kp).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ClientError::Local(format!(
                    "no enrolled device in {}; run `cloister enrol` first or pass --home",
                    dir.display()
                ))
            } else {
                io(&kp, e)
            }
        })?;
        let secret = passphrase::open(pass, &sealed).map_err(|e| match e {
            cloister_crypto::CryptoError::Passphrase => {
                ClientError::Local("wrong passphrase for this device's keystore".into())
            }
            e => ClientError::Crypto(e),
        })?;
        let s = secret.expose();
        if s.len() != 96 {
            return Err(ClientError::Local("keystore is corrupt".into()));
        }
        let keys = DeviceKeys::from_secret_bytes(&s[..64])?;
        let cache_key = RoomKey::from_slice(&s[64..])?;
        let pp = dir.join("profile.json");
        let profile: Profile = serde_json::from_slice(&std::fs::read(&pp).map_err(|e| io(&pp, e))?)
            .map_err(|e| ClientError::Local(format!("{}: {e}", pp.display())))?;
        if profile.device != keys.device_id() {
            return Err(ClientError::Local(
                "profile does not match the keystore".into(),
            ));
        }
        Ok((
            Home {
                dir: Some(dir.to_owned()),
                cache_key,
                checkpoint: Default::default(),
                witnesses: std::sync::Mutex::new(None),
                log_keys: std::sync::Mutex::new(Vec::new()),
                sessions: Default::default(),
            },
            keys,
            profile,
        ))
    }

    pub fn save_profile(&self, p: &Profile) -> Result<(), ClientError> {
        if let Some(d) = &self.dir {
            let bytes =
                serde_json::to_vec_pretty(p).map_err(|e| ClientError::Local(e.to_string()))?;
            write_private(&d.join("profile.json"), &bytes)?;
        }
        Ok(())
    }

    /// Load cached room keys whose lease is still valid.
    pub fn load_keys(&self) -> HashMap<(RoomId, u64), CachedKey> {
        let mut out = HashMap::new();
        let Some(d) = &self.dir else { return out };
        let Ok(bytes) = std::fs::read(d.join("keycache.sealed")) else {
            return out;
        };
        let Ok(plain) = wrap::unwrap(&self.cache_key, CACHE_AAD, &bytes) else {
            tracing::warn!("key cache unreadable; ignoring it");
            return out;
        };
        let Ok(cf) = serde_json::from_slice::<CacheFile>(plain.expose()) else {
            return out;
        };
        let now = now_secs();
        for (room, epoch, key, lease_until) in cf.keys {
            if lease_until > now {
                out.insert(
                    (room, epoch),
                    CachedKey {
                        key: RoomKey::from_bytes(key.0),
                        lease_until,
                    },
                );
            }
        }
        out
    }

    pub fn save_keys(&self, keys: &HashMap<(RoomId, u64), CachedKey>) -> Result<(), ClientError> {
        let Some(d) = &self.dir else { return Ok(()) };
        let now = now_secs();
        let cf = CacheFile {
            keys: keys
                .iter()
                .filter(|(_, v)| v.lease_until > now)
                .map(|((r, e), v)| (*r, *e, Fixed(*v.key.expose()), v.lease_until))
                .collect(),
        };
        let plain =
            Zeroizing::new(serde_json::to_vec(&cf).map_err(|e| ClientError::Local(e.to_string()))?);
        let sealed = wrap::wrap(&self.cache_key, CACHE_AAD, &plain)?;
        write_private(&d.join("keycache.sealed"), &sealed)
    }
}

impl Home {
    /// Whether this home keeps state on disk.
    pub fn persistent(&self) -> bool {
        self.dir.is_some()
    }

    /// A piece of device state sealed under the keystore's cache key
    /// (`name.sealed`); `None` in memory or when absent or unreadable.
    pub fn load_sealed(&self, name: &str) -> Option<Vec<u8>> {
        let d = self.dir.as_ref()?;
        let bytes = std::fs::read(d.join(format!("{name}.sealed"))).ok()?;
        let aad = format!("cloister/device-state/v1|{name}");
        match wrap::unwrap(&self.cache_key, aad.as_bytes(), &bytes) {
            Ok(p) => Some(p.expose().to_vec()),
            Err(_) => {
                tracing::warn!("{name} state unreadable; ignoring it");
                None
            }
        }
    }

    /// Append one record to `name.log`, each record sealed on its own
    /// (`u32 length ‖ sealed bytes`, synced): what grows with use is
    /// written once, not rewritten whole.
    pub fn append_sealed(&self, name: &str, plain: &[u8]) -> Result<(), ClientError> {
        use std::io::Write;
        let Some(d) = &self.dir else { return Ok(()) };
        let path = d.join(format!("{name}.log"));
        let aad = format!("cloister/device-log/v1|{name}");
        let sealed = wrap::wrap(&self.cache_key, aad.as_bytes(), plain)?;
        let mut opts = std::fs::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&path).map_err(|e| io(&path, e))?;
        let mut frame = Vec::with_capacity(4 + sealed.len());
        frame.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        frame.extend_from_slice(&sealed);
        f.write_all(&frame).map_err(|e| io(&path, e))?;
        f.sync_all().map_err(|e| io(&path, e))
    }

    /// Every record of `name.log`, in order; a torn or unreadable tail (a
    /// crash mid-append) ends the list.
    pub fn load_sealed_log(&self, name: &str) -> Vec<Vec<u8>> {
        let Some(d) = &self.dir else {
            return Vec::new();
        };
        let Ok(bytes) = std::fs::read(d.join(format!("{name}.log"))) else {
            return Vec::new();
        };
        let aad = format!("cloister/device-log/v1|{name}");
        let mut out = Vec::new();
        let mut rest = bytes.as_slice();
        while rest.len() >= 4 {
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(rec) = rest.get(4..4 + n) else { break };
            match wrap::unwrap(&self.cache_key, aad.as_bytes(), rec) {
                Ok(p) => out.push(p.expose().to_vec()),
                Err(_) => break,
            }
            rest = &rest[4 + n..];
        }
        out
    }

    pub fn save_sealed(&self, name: &str, plain: &[u8]) -> Result<(), ClientError> {
        let Some(d) = &self.dir else { return Ok(()) };
        let aad = format!("cloister/device-state/v1|{name}");
        let sealed = wrap::wrap(&self.cache_key, aad.as_bytes(), plain)?;
        write_private(&d.join(format!("{name}.sealed")), &sealed)
    }
}

const SESSION_AAD: &[u8] = b"cloister/case-session/v1";

impl Home {
    /// Keep a case's decryption-session key (sealed under the keystore's
    /// cache key) until the case is exported.
    pub fn save_session(&self, case: &str, secret: &[u8; 32]) -> Result<(), ClientError> {
        if let Some(d) = &self.dir {
            let sd = d.join("sessions");
            std::fs::create_dir_all(&sd).map_err(|e| io(&sd, e))?;
            let aad = [SESSION_AAD, case.as_bytes()].concat();
            let sealed = wrap::wrap(&self.cache_key, &aad, secret)?;
            return write_private(&sd.join(format!("{case}.sealed")), &sealed);
        }
        if let Ok(mut m) = self.sessions.lock() {
            m.insert(case.to_owned(), Zeroizing::new(*secret));
        }
        Ok(())
    }

    pub fn load_session(&self, case: &str) -> Result<Option<Zeroizing<[u8; 32]>>, ClientError> {
        if let Some(d) = &self.dir {
            let p = d.join("sessions").join(format!("{case}.sealed"));
            let Ok(bytes) = std::fs::read(&p) else {
                return Ok(None);
            };
            let aad = [SESSION_AAD, case.as_bytes()].concat();
            let plain = wrap::unwrap(&self.cache_key, &aad, &bytes)?;
            let arr: [u8; 32] = plain
                .expose()
                .try_into()
                .map_err(|_| ClientError::Local("session key is corrupt".into()))?;
            return Ok(Some(Zeroizing::new(arr)));
        }
        Ok(self.sessions.lock().ok().and_then(|m| m.get(case).cloned()))
    }

    /// The last audit checkpoint this device accepted (a signed note).
    pub fn last_checkpoint(&self) -> Option<String> {
        if let Some(d) = &self.dir {
            return std::fs::read_to_string(d.join("checkpoint.note")).ok();
        }
        self.checkpoint.lock().ok().and_then(|c| c.clone())
    }

    /// The witness policy this device enforces on audit checkpoints.
    pub fn witness_policy(&self) -> Option<WitnessPolicyConfig> {
        if let Some(d) = &self.dir {
            let b = std::fs::read(d.join("witnesses.json")).ok()?;
            return serde_json::from_slice(&b).ok();
        }
        self.witnesses.lock().ok().and_then(|c| c.clone())
    }

    pub fn save_witness_policy(&self, p: &WitnessPolicyConfig) -> Result<(), ClientError> {
        if let Some(d) = &self.dir {
            let b = serde_json::to_vec_pretty(p).map_err(|e| ClientError::Local(e.to_string()))?;
            return write_private(&d.join("witnesses.json"), &b);
        }
        if let Ok(mut c) = self.witnesses.lock() {
            *c = Some(p.clone());
        }
        Ok(())
    }

    /// Audit-log keys this device learned from verified hand-overs.
    pub fn log_keys(&self) -> Vec<String> {
        if let Some(d) = &self.dir {
            return std::fs::read(d.join("log_keys.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
        }
        self.log_keys.lock().map(|k| k.clone()).unwrap_or_default()
    }

    pub fn save_log_keys(&self, keys: &[String]) -> Result<(), ClientError> {
        if let Some(d) = &self.dir {
            let b =
                serde_json::to_vec_pretty(keys).map_err(|e| ClientError::Local(e.to_string()))?;
            return write_private(&d.join("log_keys.json"), &b);
        }
        if let Ok(mut k) = self.log_keys.lock() {
            *k = keys.to_vec();
        }
        Ok(())
    }

    pub fn save_checkpoint(&self, note: &str) -> Result<(), ClientError> {
        if let Some(d) = &self.dir {
            return write_private(&d.join("checkpoint.note"), note.as_bytes());
        }
        if let Ok(mut c) = self.checkpoint.lock() {
            *c = Some(note.to_owned());
        }
        Ok(())
    }
}
