//! `cloister admin trust …`: this firm's KM identity, and the partner
//! firms' KMs it pins (after comparing fingerprints out of band).

use super::Ctx;
use clap::Subcommand;
use cloister_cli::BoxError;
use cloister_proto::TenantId;
use cloister_proto::federation::TrustedFirm;
use serde_json::json;

#[derive(Subcommand)]
pub enum TrustCmd {
    /// This firm's KM key and fingerprint, to give a partner firm's admins.
    #[command(name = "self")]
    Own,
    /// Pin another firm's KM key (compare its fingerprint out of band first).
    Add {
        /// The partner firm's tenant id.
        tenant: String,
        /// Their KM key, as their `cloister admin trust self` prints it.
        #[arg(long)]
        km_key: String,
        /// The fingerprint you compared; nothing is pinned if it differs.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Where their KM answers partner KMs (needed for rooms homed at
        /// their firm: their KM hands the room keys to ours).
        #[arg(long)]
        km_url: Option<String>,
    },
    /// Firms trusted now and before.
    List,
    /// Stop trusting a firm's KM: key exchange with it stops at once.
    Remove {
        tenant: String,
        #[arg(long)]
        reason: String,
    },
}

fn tenant(s: &str) -> Result<TenantId, BoxError> {
    s.parse()
        .map_err(|e| format!("{s:?} is not a tenant id: {e}").into())
}

fn line(t: &TrustedFirm) -> String {
    let status = match &t.removed {
        None => "trusted".to_owned(),
        Some(r) => format!("removed by {} ({})", r.by, r.reason),
    };
    format!(
        "{}  {}  added by {}  {}  {status}",
        t.tenant,
        t.fingerprint,
        t.added_by,
        t.km_url.as_deref().unwrap_or("(no KM address)")
    )
}

pub async fn trust_cmd(ctx: &Ctx, cmd: TrustCmd) -> Result<(), BoxError> {
    let c = ctx.client()?;
    match cmd {
        TrustCmd::Own => {
            let me = c.trust_self().await?;
            ctx.emit(
                format!(
                    "{} KM key (give it to the partner's admins):\n{}\nfingerprint (read it to them out of band): {}",
                    me.tenant, me.km_key, me.fingerprint
                ),
                serde_json::to_value(&me)?,
            );
        }
        TrustCmd::Add {
            tenant: t,
            km_key,
            fingerprint,
            km_url,
        } => {
            let t = tenant(&t)?;
            let rec = c
                .trust_add_at(&t, &km_key, fingerprint.as_deref(), km_url.as_deref())
                .await?;
            let warn = if fingerprint.is_none() {
                "\ncompare this fingerprint with the partner's before any room is shared"
            } else {
                ""
            };
            ctx.emit(
                format!(
                    "{} trusted, fingerprint {}{warn}",
                    rec.tenant, rec.fingerprint
                ),
                serde_json::to_value(&rec)?,
            );
        }
        TrustCmd::List => {
            let all = c.trust_list().await?;
            let text = if all.is_empty() {
                "no firm is trusted".to_owned()
            } else {
                all.iter().map(line).collect::<Vec<_>>().join("\n")
            };
            ctx.emit(text, json!(all));
        }
        TrustCmd::Remove { tenant: t, reason } => {
            let t = tenant(&t)?;
            let rec = c.trust_remove(&t, &reason).await?;
            ctx.emit(
                format!("{} is no longer trusted", rec.tenant),
                serde_json::to_value(&rec)?,
            );
        }
    }
    Ok(())
}
