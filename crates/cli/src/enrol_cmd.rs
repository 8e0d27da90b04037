//! Enrolment: `cloister enrol` (with evidence when the tenant requires
//! it), `cloister device keygen` (keys made first, for an MDM to endorse)
//! and the MDM's side, `cloister mdm keygen|endorse`.

use super::{Ctx, parse, read_secret};
use clap::{Args, Subcommand};
use cloister_cli::BoxError;
use cloister_client::{Client, EnrolOptions, Storage};
use cloister_crypto::passphrase::{self, Cost};
use cloister_crypto::{DeviceKeys, KmSigner};
use cloister_proto::UserId;
use cloister_proto::b64::Fixed;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Keys made before enrolment, sealed in the device's home.
const PENDING: &str = "pending-keys.sealed";

#[derive(Args)]
pub struct EnrolArgs {
    #[arg(long)]
    server: String,
    #[arg(long)]
    km: String,
    #[arg(long)]
    user: String,
    #[arg(long)]
    code: String,
    /// Attestation evidence for this device (from `cloister mdm endorse`
    /// of the keys `cloister device keygen` made).
    #[arg(long)]
    evidence: Option<PathBuf>,
}

pub async fn enrol(ctx: &Ctx, a: EnrolArgs) -> Result<(), BoxError> {
    let pass = read_secret(ctx.pass_file.as_deref(), "CLOISTER_PASSPHRASE")?;
    let u: UserId = parse(&a.user)?;
    let home = ctx.home()?;
    let pending = home.join(PENDING);
    let keys = match std::fs::read(&pending) {
        Ok(sealed) => Some(DeviceKeys::from_secret_bytes(
            passphrase::open(&pass, &sealed)
                .map_err(|_| format!("{}: wrong passphrase or damaged", pending.display()))?
                .expose(),
        )?),
        Err(_) => None,
    };
    let evidence = match &a.evidence {
        Some(p) => Some(
            serde_json::from_slice(&std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?)
                .map_err(|e| format!("{}: not evidence: {e}", p.display()))?,
        ),
        None => None,
    };
    if evidence.is_some() && keys.is_none() {
        return Err(
            "evidence endorses keys made by `cloister device keygen`; none are in this home".into(),
        );
    }
    let c = Client::enrol_with(
        cloister_tls::http_client(),
        &a.server,
        &a.km,
        &u,
        &a.code,
        Storage::Dir {
            path: home,
            passphrase: &pass,
            cost: Cost::DEFAULT,
        },
        EnrolOptions { keys, evidence },
    )
    .await?;
    let _ = std::fs::remove_file(&pending);
    ctx.emit(
        format!("enrolled {} as device {}", c.user(), c.device()),
        json!({"user": c.user(), "device": c.device(), "tenant": c.tenant()}),
    );
    Ok(())
}

/// `cloister device keygen`: this device's keys, made before enrolment.
pub fn device_keygen(ctx: &Ctx) -> Result<(), BoxError> {
    let home = ctx.home()?;
    let pending = home.join(PENDING);
    if pending.exists() || home.join("keys.sealed").exists() {
        return Err(format!("{} already holds device keys", home.display()).into());
    }
    let pass = read_secret(ctx.pass_file.as_deref(), "CLOISTER_PASSPHRASE")?;
    std::fs::create_dir_all(home).map_err(|e| format!("{}: {e}", home.display()))?;
    let keys = DeviceKeys::generate()?;
    let sealed = passphrase::seal(&pass, keys.to_secret_bytes().expose(), Cost::DEFAULT)?;
    cloister_km::provider::write_private(&pending, &sealed)
        .map_err(|e| format!("{}: {e}", pending.display()))?;
    let public = json!({
        "sign_pk": Fixed(keys.sign_pk()),
        "hpke_pk": Fixed(keys.hpke_pk()),
    });
    ctx.emit(public.to_string(), public);
    Ok(())
}

#[derive(Subcommand)]
pub enum MdmCmd {
    /// Make the MDM's endorsement key (its public half goes into the
    /// tenant's attestation policy: `admin attestation set --mdm-key`).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Endorse a managed device's keys (the JSON `device keygen` printed)
    /// for one enrolment of `user`.
    Endorse {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        user: String,
        /// The device's public keys, as `device keygen` printed them.
        #[arg(long)]
        device_keys: PathBuf,
        /// The device as the MDM knows it (serial number, asset tag).
        #[arg(long)]
        device: String,
        /// Seconds the endorsement may be used.
        #[arg(long, default_value_t = 3_600)]
        valid: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

fn read(p: &Path) -> Result<Vec<u8>, BoxError> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()).into())
}

pub fn mdm_cmd(ctx: &Ctx, mc: MdmCmd) -> Result<(), BoxError> {
    match mc {
        MdmCmd::Keygen { out } => {
            if out.exists() {
                return Err(
                    format!("{} exists; refusing to overwrite a key", out.display()).into(),
                );
            }
            let k = KmSigner::generate()?;
            cloister_km::provider::write_private(&out, k.secret_bytes().expose())
                .map_err(|e| format!("{}: {e}", out.display()))?;
            let public = cloister_proto::b64::encode(&k.public());
            ctx.emit(
                format!(
                    "MDM key written to {}; its public key: {public}",
                    out.display()
                ),
                json!({"public": public}),
            );
        }
        MdmCmd::Endorse {
            key,
            user,
            device_keys,
            device,
            valid,
            out,
        } => {
            let k = KmSigner::from_secret(&read(&key)?)?;
            let user: UserId = parse(&user)?;
            #[derive(serde::Deserialize)]
            struct Pub {
                sign_pk: Fixed<32>,
                hpke_pk: Fixed<32>,
            }
            let p: Pub = serde_json::from_slice(&read(&device_keys)?)
                .map_err(|e| format!("{}: {e}", device_keys.display()))?;
            let now = cloister_proto::now_secs();
            let e = cloister_attest::mdm::Endorsement {
                tenant: user.tenant(),
                user,
                sign_pk: p.sign_pk,
                hpke_pk: p.hpke_pk,
                device,
                issued_at: now,
                expires_at: now + valid,
                nonce: Fixed(cloister_crypto::random_bytes()?),
            };
            let ev = cloister_attest::mdm::endorse(&k, &e)?;
            std::fs::write(&out, serde_json::to_vec_pretty(&ev)?)
                .map_err(|e| format!("{}: {e}", out.display()))?;
            ctx.emit(
                format!("endorsement for {} written to {}", e.device, out.display()),
                json!({"device": e.device, "expires_at": e.expires_at}),
            );
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum AttestationCmd {
    /// Replace the policy.
    Set {
        /// Refuse enrolments without accepted evidence.
        #[arg(long)]
        required: bool,
        /// An accepted evidence format (repeat): mdm.
        #[arg(long = "format")]
        formats: Vec<String>,
        /// An MDM's public key, base64 (repeat), as `mdm keygen` printed it
        /// (it may begin with `-`).
        #[arg(long = "mdm-key", allow_hyphen_values = true)]
        mdm_keys: Vec<String>,
        /// The oldest evidence accepted, in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        max_age: u64,
    },
    /// Show the policy.
    Show,
}

pub async fn attestation_cmd(ctx: &Ctx, ac: AttestationCmd) -> Result<(), BoxError> {
    let c = ctx.client()?;
    let p = match ac {
        AttestationCmd::Set {
            required,
            formats,
            mdm_keys,
            max_age,
        } => {
            let keys = mdm_keys
                .iter()
                .map(|k| {
                    let b = cloister_proto::b64::decode(k)
                        .map_err(|_| format!("--mdm-key {k:?} is not base64"))?;
                    let a: [u8; 32] = b
                        .try_into()
                        .map_err(|_| format!("--mdm-key {k:?} is not a 32-byte key"))?;
                    Ok(Fixed(a))
                })
                .collect::<Result<Vec<_>, BoxError>>()?;
            c.admin_attestation_set(cloister_proto::km::AttestationPolicy {
                required,
                formats,
                mdm_keys: keys,
                max_age_secs: max_age,
            })
            .await?
        }
        AttestationCmd::Show => c.admin_attestation_show().await?,
    };
    ctx.emit(
        format!(
            "attestation {}; formats: {}; MDM keys: {}; evidence at most {} s old",
            if p.required {
                "required"
            } else {
                "not required"
            },
            if p.formats.is_empty() {
                "none".into()
            } else {
                p.formats.join(", ")
            },
            p.mdm_keys.len(),
            p.max_age_secs
        ),
        serde_json::to_value(&p)?,
    );
    Ok(())
}
