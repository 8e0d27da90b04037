//! The tenant master key in an HSM, over PKCS#11 (`cryptoki`).
//!
//! The TMK is an AES-256 key generated inside the token, sensitive and not
//! extractable; so is every retention generation key (`LABEL-gen-N`). A
//! key retention may destroy is wrapped under the TMK and then under its
//! generation, so it needs both. A wrap is `C_Encrypt` with AES-GCM (a fresh 96-bit IV, the caller's
//! associated data, a 128-bit tag) and an unwrap is `C_Decrypt`: the keys'
//! values never leave the token. If the token loses the key, refuses the
//! PIN or goes away, every wrap and unwrap fails at once: the crypto-lock.
//! A lost handle (the token restarted, the key restored) is looked up again
//! by its label before the provider gives up.
//!
//! TMK versions: version 1 is labelled `LABEL`, later ones `LABEL-vN`. A
//! generation key's `CKA_ID` names the TMK version that was current when
//! it was made (none: version 1), so its keys' inner layer opens under
//! that version while a rotation runs.

use super::{KeyProvider, ProviderError, generation_of, split_tagged};
use cloister_crypto::SecretBytes;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

const IV: usize = 12;
const TAG_BITS: u64 = 128;

/// Where the key lives: the module, the token and the key's label. The
/// PIN comes from a file or the environment, never a flag.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The user PIN.
    pub pin: String,
    /// The TMK's label; later TMK versions are `LABEL-vN`, generation
    /// keys `LABEL-gen-N`.
    pub key_label: String,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

fn hsm(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Hsm(format!("{what}: {e}"))
}

struct Keys {
    /// TMK versions.
    tmks: BTreeMap<u32, ObjectHandle>,
    /// Generation → (the TMK version it was made under, its key).
    gens: BTreeMap<u32, (u32, ObjectHandle)>,
}

/// The PKCS#11 key provider.
pub struct Pkcs11KeyProvider {
    label: String,
    token: String,
    session: Mutex<Session>,
    keys: Mutex<Keys>,
    // Kept for the session's life; finalized when dropped.
    _ctx: Pkcs11,
}

/// One initialised module per process, kept for the process's life: a
/// module is initialised once, and finalising it would close every other
/// provider's sessions.
fn context(module: &std::path::Path) -> Result<Pkcs11, ProviderError> {
    static CONTEXTS: Mutex<BTreeMap<PathBuf, Pkcs11>> = Mutex::new(BTreeMap::new());
    let mut all = CONTEXTS
        .lock()
        .map_err(|_| ProviderError::Hsm("module lock".into()))?;
    if let Some(c) = all.get(module) {
        return Ok(c.clone());
    }
    let ctx =
        Pkcs11::new(module).map_err(|e| hsm(&format!("cannot load {}", module.display()), e))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .or_else(|e| match e {
            cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            ) => Ok(()),
            e => Err(e),
        })
        .map_err(|e| hsm("C_Initialize", e))?;
    all.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

fn secret_key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::ValueLen(32.into()),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// A generation key's template: its `CKA_ID` names its TMK version.
fn gen_template(label: &str, g: u32, tmk: u32) -> Vec<Attribute> {
    let mut t = secret_key_template(&gen_label(label, g));
    t.push(Attribute::Id(tmk.to_be_bytes().to_vec()));
    t
}

fn gen_label(label: &str, g: u32) -> String {
    format!("{label}-gen-{g}")
}

fn tmk_label(label: &str, v: u32) -> String {
    if v == 1 {
        label.to_owned()
    } else {
        format!("{label}-v{v}")
    }
}

impl Pkcs11KeyProvider {
    fn connect(cfg: &Pkcs11Config) -> Result<(Pkcs11, Session), ProviderError> {
        let ctx = context(&cfg.module)?;
        let slot = ctx
            .get_slots_with_token()
            .map_err(|e| hsm("listing slots", e))?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|t| t.label().trim_end() == cfg.token)
            })
            .ok_or_else(|| ProviderError::Hsm(format!("no token labelled {:?}", cfg.token)))?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| hsm("opening a session", e))?;
        session
            .login(UserType::User, Some(&AuthPin::from(cfg.pin.clone())))
            .or_else(|e| match e {
                cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::UserAlreadyLoggedIn,
                    _,
                ) => Ok(()),
                e => Err(e),
            })
            .map_err(|e| hsm(&format!("login to token {:?}", cfg.token), e))?;
        Ok((ctx, session))
    }

    fn find(session: &Session, label: &str) -> Result<Option<ObjectHandle>, ProviderError> {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| hsm("finding a key", e))?;
        Ok(found.into_iter().next())
    }

    /// Every TMK version and generation key in the token under `label`.
    fn scan(session: &Session, label: &str) -> Result<Keys, ProviderError> {
        use cryptoki::object::AttributeType;
        let gen_prefix = format!("{label}-gen-");
        let tmk_prefix = format!("{label}-v");
        let all = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .map_err(|e| hsm("listing keys", e))?;
        let mut keys = Keys {
            tmks: BTreeMap::new(),
            gens: BTreeMap::new(),
        };
        for h in all {
            // an object another session (or process) destroyed since the
            // listing cannot be read: it is not one of ours any more
            let attrs = match session.get_attributes(h, &[AttributeType::Label, AttributeType::Id])
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("skipping a token object whose label cannot be read: {e}");
                    continue;
                }
            };
            let mut name = String::new();
            let mut under = 1;
            for a in attrs {
                match a {
                    Attribute::Label(l) => name = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(id) if id.len() == 4 => {
                        under = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
                    }
                    _ => {}
                }
            }
            if name == label {
                keys.tmks.insert(1, h);
            } else if let Some(g) = name
                .strip_prefix(&gen_prefix)
                .and_then(|n| n.parse::<u32>().ok())
            {
                keys.gens.insert(g, (under, h));
            } else if let Some(v) = name
                .strip_prefix(&tmk_prefix)
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|v| *v >= 2)
            {
                keys.tmks.insert(v, h);
            }
        }
        Ok(keys)
    }

    /// Create the TMK (and generation 1) in the token; refuses if a key
    /// with that label is there already.
    pub fn create(cfg: &Pkcs11Config) -> Result<Self, ProviderError> {
        let (ctx, session) = Self::connect(cfg)?;
        let existing = Self::scan(&session, &cfg.key_label)?;
        if !existing.tmks.is_empty() || !existing.gens.is_empty() {
            return Err(ProviderError::Exists(format!(
                "key {:?} in token {:?}",
                cfg.key_label, cfg.token
            )));
        }
        let tmk = session
            .generate_key(&Mechanism::AesKeyGen, &secret_key_template(&cfg.key_label))
            .map_err(|e| hsm("generating the master key", e))?;
        let g1 = session
            .generate_key(&Mechanism::AesKeyGen, &gen_template(&cfg.key_label, 1, 1))
            .map_err(|e| hsm("generating a generation key", e))?;
        Ok(Pkcs11KeyProvider {
            label: cfg.key_label.clone(),
            token: cfg.token.clone(),
            session: Mutex::new(session),
            keys: Mutex::new(Keys {
                tmks: BTreeMap::from([(1, tmk)]),
                gens: BTreeMap::from([(1, (1, g1))]),
            }),
            _ctx: ctx,
        })
    }

    /// Open the TMK in the token.
    pub fn open(cfg: &Pkcs11Config) -> Result<Self, ProviderError> {
        let (ctx, session) = Self::connect(cfg)?;
        let keys = Self::scan(&session, &cfg.key_label)?;
        if keys.tmks.is_empty() {
            return Err(ProviderError::Hsm(format!(
                "no key {:?} in token {:?}: the tenant is crypto-locked",
                cfg.key_label, cfg.token
            )));
        }
        if keys.gens.is_empty() {
            return Err(ProviderError::Hsm(format!(
                "no generation keys {:?} in token {:?}",
                gen_label(&cfg.key_label, 1),
                cfg.token
            )));
        }
        Ok(Pkcs11KeyProvider {
            label: cfg.key_label.clone(),
            token: cfg.token.clone(),
            session: Mutex::new(session),
            keys: Mutex::new(keys),
            _ctx: ctx,
        })
    }

    /// What an HSM administrator does from the token's own console:
    /// disable (or enable again) the use of every master-key version for
    /// encryption and decryption, in a session of its own. A disabled key
    /// crypto-locks the tenant at once; enabling it resumes service. For
    /// drills and the demo; the KM itself never calls it.
    pub fn set_master_key_usable(cfg: &Pkcs11Config, usable: bool) -> Result<usize, ProviderError> {
        let (_ctx, session) = Self::connect(cfg)?;
        let keys = Self::scan(&session, &cfg.key_label)?;
        for h in keys.tmks.values() {
            session
                .update_attributes(
                    *h,
                    &[Attribute::Encrypt(usable), Attribute::Decrypt(usable)],
                )
                .map_err(|e| hsm("changing the master key's use", e))?;
        }
        Ok(keys.tmks.len())
    }

    /// The token's label (for `km` output).
    pub fn token(&self) -> &str {
        &self.token
    }

    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>, ProviderError> {
        self.session
            .lock()
            .map_err(|_| ProviderError::Hsm("session lock".into()))
    }

    fn keys(&self) -> Result<std::sync::MutexGuard<'_, Keys>, ProviderError> {
        self.keys
            .lock()
            .map_err(|_| ProviderError::Hsm("key lock".into()))
    }

    fn encrypt(
        &self,
        key: ObjectHandle,
        aad: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>, ProviderError> {
        let mut iv = cloister_crypto::random_bytes::<IV>()?;
        let s = self.session()?;
        let params = GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(|e| hsm("GCM", e))?;
        let ct = s
            .encrypt(&Mechanism::AesGcm(params), key, data)
            .map_err(|e| hsm("wrapping", e))?;
        let mut out = Vec::with_capacity(IV + ct.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn decrypt(
        &self,
        key: ObjectHandle,
        aad: &[u8],
        wrapped: &[u8],
    ) -> Result<SecretBytes, ProviderError> {
        if wrapped.len() < IV + 16 {
            return Err(ProviderError::Crypto(
                cloister_crypto::CryptoError::Malformed("wrapped key"),
            ));
        }
        let mut iv = [0u8; IV];
        iv.copy_from_slice(&wrapped[..IV]);
        let s = self.session()?;
        let params = GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(|e| hsm("GCM", e))?;
        let plain = s
            .decrypt(&Mechanism::AesGcm(params), key, &wrapped[IV..])
            .map_err(|e| hsm("unwrapping", e))?;
        Ok(SecretBytes::new(plain))
    }

    /// TMK version `v`'s handle, looked up again by label when `retry`.
    fn tmk(&self, v: u32, retry: bool) -> Result<ObjectHandle, ProviderError> {
        let mut keys = self.keys()?;
        if retry {
            let found = Self::find(&*self.session()?, &tmk_label(&self.label, v))?;
            let h = found.ok_or_else(|| {
                ProviderError::Hsm(format!(
                    "the master key {:?} is gone from token {:?}",
                    tmk_label(&self.label, v),
                    self.token
                ))
            })?;
            keys.tmks.insert(v, h);
        }
        keys.tmks.get(&v).copied().ok_or(ProviderError::NoTmk(v))
    }

    /// The current TMK version.
    fn current(&self) -> Result<u32, ProviderError> {
        self.keys()?
            .tmks
            .last_key_value()
            .map(|(v, _)| *v)
            .ok_or(ProviderError::NoTmk(0))
    }

    /// Run `op` with TMK version `v`; on failure look the key up again
    /// once (a token restarted, a key restored) before giving up.
    fn with_tmk<T>(
        &self,
        v: u32,
        op: impl Fn(ObjectHandle) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let first = match self.tmk(v, false) {
            Ok(h) => op(h),
            Err(e) => Err(e),
        };
        match first {
            Ok(v) => Ok(v),
            Err(first) => match self.tmk(v, true) {
                Ok(h) => op(h),
                Err(_) => Err(first),
            },
        }
    }

    fn new_generation(&self, keys: &mut Keys, tmk: u32) -> Result<u32, ProviderError> {
        let g = keys.gens.last_key_value().map_or(1, |(g, _)| g + 1);
        let h = self
            .session()?
            .generate_key(&Mechanism::AesKeyGen, &gen_template(&self.label, g, tmk))
            .map_err(|e| hsm("generating a generation key", e))?;
        keys.gens.insert(g, (tmk, h));
        Ok(g)
    }
}

impl KeyProvider for Pkcs11KeyProvider {
    fn name(&self) -> &'static str {
        "pkcs11"
    }
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let v = self.current()?;
        let mut out = v.to_be_bytes().to_vec();
        out.extend_from_slice(&self.with_tmk(v, |k| self.encrypt(k, aad, secret))?);
        Ok(out)
    }
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        let (v, body) = split_tagged(wrapped)?;
        self.with_tmk(v, |k| self.decrypt(k, aad, body))
    }
    fn wrap_destroyable(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError> {
        // Under the generation's TMK, then under the generation: both are
        // needed to unwrap, so disabling the TMK locks these keys too, and
        // destroying the generation destroys them.
        let (g, (t, k)) = {
            let keys = self.keys()?;
            let (g, tk) = keys
                .gens
                .last_key_value()
                .ok_or(ProviderError::Destroyed(0))?;
            (*g, *tk)
        };
        let inner = self.with_tmk(t, |h| self.encrypt(h, aad, secret))?;
        let mut out = g.to_be_bytes().to_vec();
        out.extend_from_slice(&self.encrypt(k, aad, &inner)?);
        Ok(out)
    }
    fn unwrap_destroyable(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        let g =
            generation_of(wrapped).ok_or(cloister_crypto::CryptoError::Malformed("wrapped key"))?;
        let (t, k) = *self
            .keys()?
            .gens
            .get(&g)
            .ok_or(ProviderError::Destroyed(g))?;
        let inner = self.decrypt(k, aad, &wrapped[4..])?;
        self.with_tmk(t, |h| self.decrypt(h, aad, inner.expose()))
    }
    fn generation(&self) -> u32 {
        self.keys()
            .ok()
            .and_then(|k| k.gens.last_key_value().map(|(g, _)| *g))
            .unwrap_or(0)
    }
    fn rotate(&self) -> Result<u32, ProviderError> {
        let t = self.current()?;
        let mut keys = self.keys()?;
        self.new_generation(&mut keys, t)
    }
    fn destroy_before(&self, keep: u32) -> Result<(), ProviderError> {
        let mut keys = self.keys()?;
        let old: Vec<(u32, ObjectHandle)> = keys
            .gens
            .iter()
            .filter(|(g, _)| **g < keep)
            .map(|(g, (_, h))| (*g, *h))
            .collect();
        let s = self.session()?;
        for (g, h) in old {
            s.destroy_object(h)
                .map_err(|e| hsm("destroying a generation key", e))?;
            keys.gens.remove(&g);
        }
        Ok(())
    }
    fn generations(&self) -> usize {
        self.keys().map(|k| k.gens.len()).unwrap_or(0)
    }
    fn tmk_versions(&self) -> Vec<u32> {
        self.keys()
            .map(|k| k.tmks.keys().copied().collect())
            .unwrap_or_default()
    }
    fn begin_tmk_rotation(&self) -> Result<(u32, u32), ProviderError> {
        let mut keys = self.keys()?;
        if keys.tmks.len() == 1 {
            let v = keys.tmks.keys().next_back().map_or(1, |v| v + 1);
            let h = self
                .session()?
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &secret_key_template(&tmk_label(&self.label, v)),
                )
                .map_err(|e| hsm("generating a new master key", e))?;
            keys.tmks.insert(v, h);
        }
        let t = *keys
            .tmks
            .keys()
            .next_back()
            .ok_or(ProviderError::NoTmk(0))?;
        let newest = keys.gens.last_key_value().map(|(g, (u, _))| (*g, *u));
        let g = match newest {
            Some((g, u)) if u == t => g,
            _ => self.new_generation(&mut keys, t)?,
        };
        Ok((t, g))
    }
    fn retire_tmks_before(&self, keep: u32) -> Result<(), ProviderError> {
        let mut keys = self.keys()?;
        if let Some((g, (t, _))) = keys.gens.iter().find(|(_, (t, _))| *t < keep) {
            return Err(ProviderError::InUse(format!(
                "generation {g} was made under master key version {t}; re-wrap its keys first"
            )));
        }
        if !keys.tmks.keys().any(|v| *v >= keep) {
            return Err(ProviderError::InUse(
                "refusing to retire every master key version".into(),
            ));
        }
        let old: Vec<(u32, ObjectHandle)> = keys
            .tmks
            .iter()
            .filter(|(v, _)| **v < keep)
            .map(|(v, h)| (*v, *h))
            .collect();
        let s = self.session()?;
        for (v, h) in old {
            s.destroy_object(h)
                .map_err(|e| hsm("destroying an old master key", e))?;
            keys.tmks.remove(&v);
        }
        Ok(())
    }
}
