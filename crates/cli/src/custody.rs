//! Where a KM's tenant master key is kept: a passphrase-sealed file (for
//! development and the demo) or an HSM over PKCS#11. `km init` records the
//! choice in the data directory (`provider.json`: module, token, key label;
//! never the PIN) and `km serve` follows it.

use crate::BoxError;
use cloister_crypto::passphrase::Cost;
use cloister_km::provider::{FileKeyProvider, KeyProvider, Pkcs11Config, Pkcs11KeyProvider};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The key custody a KM is opened with.
#[derive(Debug, Clone)]
pub enum Custody {
    /// `tmk.sealed`, unlocked by this passphrase.
    File(Vec<u8>),
    /// A key in an HSM.
    Pkcs11(Pkcs11Config),
}

/// What `km init` records about an HSM-held key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderRecord {
    pub kind: String,
    pub module: PathBuf,
    pub token: String,
    pub key_label: String,
}

/// The record's file in a KM data directory.
pub fn record_path(dir: &Path) -> PathBuf {
    dir.join("provider.json")
}

/// The HSM a KM data directory's key is in, if any.
pub fn recorded(dir: &Path) -> Result<Option<ProviderRecord>, BoxError> {
    let p = record_path(dir);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display()).into()),
    }
}

/// Whether a KM data directory holds an initialised key (either kind).
pub fn initialised(dir: &Path) -> bool {
    cloister_km::tmk_path(dir).exists() || record_path(dir).exists()
}

/// The provider for `dir`: created (`init`) or opened.
pub fn provider(
    dir: &Path,
    custody: &Custody,
    init: bool,
    cost: Cost,
) -> Result<Arc<dyn KeyProvider>, BoxError> {
    let tmk = cloister_km::tmk_path(dir);
    Ok(match custody {
        Custody::File(pass) if init => Arc::new(FileKeyProvider::create(&tmk, pass, cost)?),
        Custody::File(pass) => Arc::new(FileKeyProvider::open(&tmk, pass)?),
        Custody::Pkcs11(cfg) if init => {
            let p = Pkcs11KeyProvider::create(cfg)?;
            let rec = ProviderRecord {
                kind: "pkcs11".into(),
                module: cfg.module.clone(),
                token: cfg.token.clone(),
                key_label: cfg.key_label.clone(),
            };
            cloister_km::provider::write_private(
                &record_path(dir),
                &serde_json::to_vec_pretty(&rec)?,
            )?;
            Arc::new(p)
        }
        Custody::Pkcs11(cfg) => Arc::new(Pkcs11KeyProvider::open(cfg)?),
    })
}

/// The PKCS#11 flags of `km init` (the PIN from a file or
/// `$CLOISTER_PKCS11_PIN`, never a flag).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Pkcs11Args {
    /// Keep the tenant master key in an HSM over PKCS#11 (else a sealed
    /// file).
    #[arg(long, value_name = "MODULE")]
    pub pkcs11_module: Option<PathBuf>,
    /// The token's label.
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_token_label: Option<String>,
    /// The key's label in the token (default: cloister-tmk-TENANT).
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_key_label: Option<String>,
    /// A file holding the token's user PIN (else $CLOISTER_PKCS11_PIN).
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

/// The user PIN: from `file`, else `$CLOISTER_PKCS11_PIN`.
pub fn read_pin(file: Option<&Path>) -> Result<String, BoxError> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        return Ok(s.trim_end_matches(['\n', '\r']).to_owned());
    }
    match std::env::var("CLOISTER_PKCS11_PIN") {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err("no PKCS#11 PIN: set $CLOISTER_PKCS11_PIN or pass --pkcs11-pin-file".into()),
    }
}

impl Pkcs11Args {
    /// The HSM configuration `km init` asks for, if any.
    pub fn config(&self, tenant: &str) -> Result<Option<Pkcs11Config>, BoxError> {
        let Some(module) = &self.pkcs11_module else {
            return Ok(None);
        };
        let token = self
            .pkcs11_token_label
            .clone()
            .ok_or("--pkcs11-module needs --pkcs11-token-label")?;
        Ok(Some(Pkcs11Config {
            module: module.clone(),
            token,
            pin: read_pin(self.pkcs11_pin_file.as_deref())?,
            key_label: self
                .pkcs11_key_label
                .clone()
                .unwrap_or_else(|| format!("cloister-tmk-{tenant}")),
        }))
    }
}

/// The custody `km serve` uses for `dir`: the recorded HSM (PIN from
/// `pin_file` or the environment) or the sealed file (passphrase).
pub fn for_serve(
    dir: &Path,
    pin_file: Option<&Path>,
    passphrase: impl FnOnce() -> Result<Vec<u8>, BoxError>,
) -> Result<Custody, BoxError> {
    match recorded(dir)? {
        Some(r) if r.kind == "pkcs11" => Ok(Custody::Pkcs11(Pkcs11Config {
            module: r.module,
            token: r.token,
            pin: read_pin(pin_file)?,
            key_label: r.key_label,
        })),
        Some(r) => Err(format!("unknown key provider {:?} in provider.json", r.kind).into()),
        None => Ok(Custody::File(passphrase()?)),
    }
}

/// One line saying where the key is.
pub fn describe(custody: &Custody) -> String {
    match custody {
        Custody::File(_) => "key provider: file (tmk.sealed, passphrase)".into(),
        Custody::Pkcs11(c) => format!(
            "key provider: pkcs11 (token {:?}, key {:?}, module {})",
            c.token,
            c.key_label,
            c.module.display()
        ),
    }
}

/// Remove SoftHSM2 tokens labelled `PREFIX<pid>` whose process is gone (a
/// killed test run or demo leaves its token behind).
pub fn remove_stale_softhsm_tokens(prefix: &str) {
    let Ok(out) = std::process::Command::new("softhsm2-util")
        .arg("--show-slots")
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(label) = line.trim().strip_prefix("Label:") else {
            continue;
        };
        let label = label.trim();
        let Some(pid) = label.strip_prefix(prefix) else {
            continue;
        };
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::process::Command::new("softhsm2-util")
                .args(["--delete-token", "--token", label])
                .output();
        }
    }
}
