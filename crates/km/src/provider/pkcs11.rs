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

use super::{KeyProvider, ProviderError, generation_of};
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
    /// The TMK's label; generation keys are `LABEL-gen-N`.
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
    tmk: ObjectHandle,
    gens: BTreeMap<u32, ObjectHandle>,
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

fn gen_label(label: &str, g: u32) -> String {
    format!("{label}-gen-{g}")
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

    fn generations(
        session: &Session,
        label: &str,
    ) -> Result<BTreeMap<u32, ObjectHandle>, ProviderError> {
        let prefix = format!("{label}-gen-");
        let all = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .map_err(|e| hsm("listing keys", e))?;
        let mut gens = BTreeMap::new();
        for h in all {
            let attrs = session
                .get_attributes(h, &[cryptoki::object::AttributeType::Label])
                .map_err(|e| hsm("reading a key's label", e))?;
            for a in attrs {
                if let Attribute::Label(l) = a
                    && let Some(g) = String::from_utf8_lossy(&l)
                        .strip_prefix(&prefix)
                        .and_then(|n| n.parse::<u32>().ok())
                {
                    gens.insert(g, h);
                }
            }
        }
        Ok(gens)
    }

    /// Create the TMK (and generation 1) in the token; refuses if a key
    /// with that label is there already.
    pub fn create(cfg: &Pkcs11Config) -> Result<Self, ProviderError> {
        let (ctx, session) = Self::connect(cfg)?;
        if Self::find(&session, &cfg.key_label)?.is_some() {
            return Err(ProviderError::Exists(format!(
                "key {:?} in token {:?}",
                cfg.key_label, cfg.token
            )));
        }
        let tmk = session
            .generate_key(&Mechanism::AesKeyGen, &secret_key_template(&cfg.key_label))
            .map_err(|e| hsm("generating the master key", e))?;
        let g1 = session
            .generate_key(
                &Mechanism::AesKeyGen,
                &secret_key_template(&gen_label(&cfg.key_label, 1)),
            )
            .map_err(|e| hsm("generating a generation key", e))?;
        Ok(Pkcs11KeyProvider {
            label: cfg.key_label.clone(),
            token: cfg.token.clone(),
            session: Mutex::new(session),
            keys: Mutex::new(Keys {
                tmk,
                gens: BTreeMap::from([(1, g1)]),
            }),
            _ctx: ctx,
        })
    }

    /// Open the TMK in the token.
    pub fn open(cfg: &Pkcs11Config) -> Result<Self, ProviderError> {
        let (ctx, session) = Self::connect(cfg)?;
        let tmk = Self::find(&session, &cfg.key_label)?.ok_or_else(|| {
            ProviderError::Hsm(format!(
                "no key {:?} in token {:?}: the tenant is crypto-locked",
                cfg.key_label, cfg.token
            ))
        })?;
        let gens = Self::generations(&session, &cfg.key_label)?;
        if gens.is_empty() {
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
            keys: Mutex::new(Keys { tmk, gens }),
            _ctx: ctx,
        })
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

    /// The TMK's handle, looked up again by label when `retry`.
    fn tmk(&self, retry: bool) -> Result<ObjectHandle, ProviderError> {
        let mut keys = self.keys()?;
        if retry {
            let found = Self::find(&*self.session()?, &self.label)?;
            keys.tmk = found.ok_or_else(|| {
                ProviderError::Hsm(format!(
                    "the master key {:?} is gone from token {:?}",
                    self.label, self.token
                ))
            })?;
        }
        Ok(keys.tmk)
    }

    /// Run `op` with the TMK; on failure look the key up again once (a
    /// token restarted, a key restored) before giving up.
    fn with_tmk<T>(
        &self,
        op: impl Fn(ObjectHandle) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        match op(self.tmk(false)?) {
            Ok(v) => Ok(v),
            Err(first) => match self.tmk(true) {
                Ok(h) => op(h),
                Err(_) => Err(first),
            },
        }
    }
}

impl KeyProvider for Pkcs11KeyProvider {
    fn name(&self) -> &'static str {
        "pkcs11"
    }
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError> {
        self.with_tmk(|k| self.encrypt(k, aad, secret))
    }
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        self.with_tmk(|k| self.decrypt(k, aad, wrapped))
    }
    fn wrap_destroyable(&self, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, ProviderError> {
        // Under the TMK, then under the current generation: both are
        // needed to unwrap, so disabling the TMK locks these keys too, and
        // destroying the generation destroys them.
        let inner = self.with_tmk(|k| self.encrypt(k, aad, secret))?;
        let (g, k) = {
            let keys = self.keys()?;
            let (g, k) = keys
                .gens
                .last_key_value()
                .ok_or(ProviderError::Destroyed(0))?;
            (*g, *k)
        };
        let mut out = g.to_be_bytes().to_vec();
        out.extend_from_slice(&self.encrypt(k, aad, &inner)?);
        Ok(out)
    }
    fn unwrap_destroyable(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        let g =
            generation_of(wrapped).ok_or(cloister_crypto::CryptoError::Malformed("wrapped key"))?;
        let k = *self
            .keys()?
            .gens
            .get(&g)
            .ok_or(ProviderError::Destroyed(g))?;
        let inner = self.decrypt(k, aad, &wrapped[4..])?;
        self.with_tmk(|t| self.decrypt(t, aad, inner.expose()))
    }
    fn generation(&self) -> u32 {
        self.keys()
            .ok()
            .and_then(|k| k.gens.last_key_value().map(|(g, _)| *g))
            .unwrap_or(0)
    }
    fn rotate(&self) -> Result<u32, ProviderError> {
        let mut keys = self.keys()?;
        let g = keys.gens.last_key_value().map_or(1, |(g, _)| g + 1);
        let h = self
            .session()?
            .generate_key(
                &Mechanism::AesKeyGen,
                &secret_key_template(&gen_label(&self.label, g)),
            )
            .map_err(|e| hsm("generating a generation key", e))?;
        keys.gens.insert(g, h);
        Ok(g)
    }
    fn destroy_before(&self, keep: u32) -> Result<(), ProviderError> {
        let mut keys = self.keys()?;
        let old: Vec<(u32, ObjectHandle)> = keys
            .gens
            .iter()
            .filter(|(g, _)| **g < keep)
            .map(|(g, h)| (*g, *h))
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
}
