//! `cloister admin escrow …` (create, show, rotate, retire the tenant's
//! escrow key) and `cloister compliance reseal` (the step between a
//! rotation and the old key's retirement).

use super::audit_cmd::b64std;
use super::{Ctx, parse};
use clap::Subcommand;
use cloister_cli::BoxError;
use cloister_proto::UserId;
use cloister_proto::km::EscrowDescriptor;
use serde_json::json;

#[derive(Subcommand)]
pub enum EscrowCmd {
    /// Create the escrow key and split it among custodians (once per tenant).
    Init {
        #[command(flatten)]
        split: SplitArgs,
    },
    /// Show every live generation of the escrow key (KM-signed).
    Show,
    /// Emergency rotation: a new escrow key split among custodians
    /// (generation n+1). Devices seal to it from now on; the old
    /// generation's quorum still opens what was sealed to it until it is
    /// re-sealed and retired.
    Rotate {
        #[command(flatten)]
        split: SplitArgs,
    },
    /// Retire an older generation once the vault holds no envelope sealed
    /// to it (`compliance reseal` first); its shares are deleted.
    Retire { generation: u32 },
}

#[derive(clap::Args)]
pub struct SplitArgs {
    /// A custodian user (repeat; each needs an enrolled device).
    #[arg(long = "custodian", required = true)]
    custodians: Vec<String>,
    /// How many custodians must approve a decryption.
    #[arg(long)]
    threshold: u8,
    /// Any THRESHOLD approvals must come from at least this many
    /// jurisdictions (the custodians' directory jurisdictions).
    #[arg(long, default_value_t = 0)]
    min_jurisdictions: u8,
}

impl SplitArgs {
    fn custodians(&self) -> Result<Vec<UserId>, BoxError> {
        self.custodians.iter().map(|u| parse(u)).collect()
    }
}

fn describe(d: &EscrowDescriptor) -> String {
    let names: Vec<String> = d.custodians.iter().map(|u| u.to_string()).collect();
    format!(
        "generation {}: key {} threshold {} of {}: {}",
        d.generation,
        b64std(&d.public.0),
        d.threshold,
        names.len(),
        names.join(", ")
    )
}

pub async fn escrow_cmd(ctx: &Ctx, ec: EscrowCmd) -> Result<(), BoxError> {
    let c = ctx.client()?;
    match ec {
        EscrowCmd::Init { split } => {
            let d = c
                .admin_escrow_init_spread(
                    &split.custodians()?,
                    split.threshold,
                    split.min_jurisdictions,
                )
                .await?;
            ctx.emit(
                format!(
                    "escrow key {} created; any {} of {} custodians can open the archive; the private key was never stored",
                    b64std(&d.public.0),
                    d.threshold,
                    d.custodians.len()
                ),
                serde_json::to_value(&d)?,
            );
        }
        EscrowCmd::Show => {
            let all = c.escrow_history().await?;
            let lines: Vec<String> = all.iter().map(describe).collect();
            ctx.emit(lines.join("\n"), serde_json::to_value(&all)?);
        }
        EscrowCmd::Rotate { split } => {
            let d = c
                .admin_escrow_rotate(
                    &split.custodians()?,
                    split.threshold,
                    split.min_jurisdictions,
                )
                .await?;
            ctx.emit(
                format!(
                    "escrow key rotated: {}\ndevices seal to it from now on (within {} minutes; the vault refuses the old key once it knows)\nnext: open a case over the archive, have the OLD generation's custodians approve it, run `cloister compliance reseal CASE`, then `cloister admin escrow retire {}`",
                    describe(&d),
                    cloister_client::ESCROW_REFRESH.as_secs() / 60,
                    d.generation - 1
                ),
                serde_json::to_value(&d)?,
            );
        }
        EscrowCmd::Retire { generation } => {
            let count = c.admin_escrow_retire(generation).await?;
            ctx.emit(
                format!(
                    "escrow generation {generation} retired: the vault holds no envelope sealed to it; its shares are deleted"
                ),
                json!({"retired": generation, "count": count}),
            );
        }
    }
    Ok(())
}

/// `cloister compliance reseal CASE`.
pub async fn reseal(ctx: &Ctx, c: &cloister_client::Client, case: &str) -> Result<(), BoxError> {
    let bar = if ctx.json {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "re-sealing {spinner} {pos} envelopes {per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b
    };
    let r = c.case_reseal(case, &|n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    let mut text = format!(
        "case {}: {} envelope(s) re-sealed to escrow generation {}, {} already under it",
        r.case, r.resealed, r.generation, r.current
    );
    if r.unopened > 0 {
        text.push_str(&format!(
            "; {} not opened (their generation's custodians did not approve this case, or they are junk): they stay as they are",
            r.unopened
        ));
    }
    ctx.emit(text, serde_json::to_value(&r)?);
    Ok(())
}
