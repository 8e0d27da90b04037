//! `cloister admin …`: tenant administration (an admin device) and the
//! operator's backup and restore of a data directory.

use super::{Ctx, compliance_cmd, controls_cmd, escrow_cmd, parse, rotate_cmd, trust_cmd};
use clap::Subcommand;
use cloister_cli::BoxError;
use cloister_proto::{DeviceId, UserId};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Register a tenant's KM with a server (operator token needed).
    RegisterTenant {
        #[arg(long)]
        server: String,
        #[arg(long)]
        km: String,
        #[arg(long)]
        operator_token_file: PathBuf,
    },
    /// Create a user (or re-issue a code) and print a one-time enrolment code.
    AddUser {
        user: String,
        #[arg(long)]
        admin: bool,
        /// A role: compliance, custodian, surveillance, admin (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// An external guest the firm sponsors (no KM of their own): only
        /// in rooms the firm's users put them in, never with other firms.
        #[arg(long, conflicts_with_all = ["admin", "roles"])]
        guest: bool,
    },
    /// Disable a user: no more keys, no more server access.
    DisableUser { user: String },
    /// Revoke one device.
    RevokeDevice { device: String },
    /// List users and their devices.
    ListUsers,
    /// Whether the tenant's master key can be used, or the tenant is
    /// crypto-locked (a non-zero exit code when locked).
    LockStatus,
    /// Rotate a key of the tenant: the master key, a room's key, the
    /// audit log's signing key, the escrow key.
    #[command(subcommand)]
    Rotate(rotate_cmd::RotateCmd),
    /// Which devices the KM certifies: the attestation policy.
    #[command(subcommand)]
    Attestation(super::enrol_cmd::AttestationCmd),
    /// The tenant's threshold escrow key.
    #[command(subcommand)]
    Escrow(escrow_cmd::EscrowCmd),
    /// The tenant's compliance vault and capture policy.
    #[command(subcommand)]
    Vault(compliance_cmd::AdminVaultCmd),
    /// Trust between firms: this KM's key, and partner KMs pinned.
    #[command(subcommand)]
    Trust(trust_cmd::TrustCmd),
    /// Communication controls: entitlements, groups, barriers, profiles, SCIM tokens.
    #[command(flatten)]
    Controls(controls_cmd::ControlsAdminCmd),
    /// Copy a service's SQLite data directory (KM, server, vault or
    /// witness) while it runs: consistent, with a manifest of hashes and
    /// the audit log's checkpoint.
    Backup {
        /// The service's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// A new directory for the backup.
        #[arg(long)]
        out: PathBuf,
    },
    /// Bring a backup back into an empty data directory (the service
    /// stopped); says what the restore loses.
    Restore {
        /// A directory written by `admin backup`.
        #[arg(long)]
        from: PathBuf,
        /// The service's data directory: absent or empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

pub async fn admin_cmd(ctx: &Ctx, ac: AdminCmd) -> Result<(), BoxError> {
    match ac {
        AdminCmd::Vault(vc) => compliance_cmd::admin_vault_cmd(ctx, vc).await?,
        AdminCmd::LockStatus => {
            let s = ctx.client()?.admin_lock_status().await?;
            let human = match &s.reason {
                None => format!(
                    "unlocked: the master key ({}) can be used; keys are leased for {} s",
                    s.provider, s.lease_secs
                ),
                Some(r) => format!(
                    "CRYPTO-LOCKED: the master key ({}) cannot be used: {r}\nno key is released; devices lose their keys within {} s",
                    s.provider, s.lease_secs
                ),
            };
            let human = match s.tmk_versions.as_slice() {
                [.., from, to] => format!(
                    "{human}\na master-key rotation is unfinished (v{from} -> v{to}): run `cloister admin rotate master-key`"
                ),
                [v] => format!("{human}; master key version {v}"),
                [] => human,
            };
            ctx.emit(human, serde_json::to_value(&s)?);
            if s.locked {
                return Err("the tenant is crypto-locked".into());
            }
        }
        AdminCmd::Controls(cc) => controls_cmd::admin_cmd(ctx, cc).await?,
        AdminCmd::Rotate(rc) => rotate_cmd::rotate_cmd(ctx, rc).await?,
        AdminCmd::Attestation(ac) => super::enrol_cmd::attestation_cmd(ctx, ac).await?,
        AdminCmd::Trust(tc) => trust_cmd::trust_cmd(ctx, tc).await?,
        AdminCmd::RegisterTenant {
            server,
            km,
            operator_token_file,
        } => {
            let http = cloister_tls::http_client();
            let tok = std::fs::read_to_string(&operator_token_file)
                .map_err(|e| format!("{}: {e}", operator_token_file.display()))?;
            let info = cloister_client::km_info(&http, &km).await?;
            cloister_client::register_tenant(&http, &server, tok.trim(), &info).await?;
            ctx.emit(
                format!("tenant {} registered", info.tenant),
                json!({"tenant": info.tenant}),
            );
        }
        AdminCmd::Backup { data_dir, out } => {
            let m = cloister_cli::backup::backup(&data_dir, &out).await?;
            let logs: Vec<String> = m
                .logs
                .iter()
                .map(|l| format!("{} log: {} entries", l.database, l.size))
                .collect();
            ctx.emit(
                format!(
                    "backed up {} files to {}{}{}",
                    m.files.len(),
                    out.display(),
                    if logs.is_empty() { "" } else { "; " },
                    logs.join(", ")
                ),
                serde_json::to_value(&m)?,
            );
        }
        AdminCmd::Restore { from, data_dir } => {
            let m = cloister_cli::backup::restore(&from, &data_dir)?;
            ctx.emit(
                cloister_cli::backup::describe(&m),
                serde_json::to_value(&m)?,
            );
        }
        AdminCmd::AddUser {
            user,
            admin,
            roles,
            guest,
        } => {
            let c = ctx.client()?;
            let mut rs = roles
                .iter()
                .map(|r| parse(r))
                .collect::<Result<Vec<cloister_proto::km::Role>, _>>()?;
            if admin {
                rs.push(cloister_proto::km::Role::Admin);
            }
            rs.push(if guest {
                cloister_proto::km::Role::Guest
            } else {
                cloister_proto::km::Role::User
            });
            let r = c.admin_add_user_roles(&parse(&user)?, &rs).await?;
            ctx.emit(
                format!("user {}\none-time enrolment code: {}", r.user, r.code),
                json!({"user": r.user, "code": r.code, "expires_at": r.expires_at}),
            );
        }
        AdminCmd::DisableUser { user } => {
            let c = ctx.client()?;
            let u: UserId = parse(&user)?;
            c.admin_disable_user(&u).await?;
            ctx.emit(
                format!("{u} disabled"),
                json!({"user": u, "status": "disabled"}),
            );
        }
        AdminCmd::RevokeDevice { device } => {
            let c = ctx.client()?;
            let d: DeviceId = parse(&device)?;
            c.admin_revoke_device(&d).await?;
            ctx.emit(
                format!("device {d} revoked"),
                json!({"device": d, "status": "revoked"}),
            );
        }
        AdminCmd::Escrow(ec) => escrow_cmd::escrow_cmd(ctx, ec).await?,
        AdminCmd::ListUsers => {
            let c = ctx.client()?;
            let users = c.admin_list_users().await?;
            let mut lines = Vec::new();
            for u in &users {
                lines.push(format!("{} ({}) roles={:?}", u.user, u.status, u.roles));
                for d in &u.devices {
                    lines.push(format!("  device {} ({})", d.device, d.status));
                }
            }
            ctx.emit(lines.join("\n"), serde_json::to_value(&users)?);
        }
    }
    Ok(())
}
