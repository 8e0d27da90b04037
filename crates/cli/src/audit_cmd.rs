//! `cloister audit …`: the tenant's audit transparency log.

use super::{Ctx, resolve_room};
use clap::Subcommand;
use cloister_cli::BoxError;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// The latest signed checkpoint, checked against the last one this device saw.
    Checkpoint,
    /// Require cosignatures from QUORUM of these witnesses on every checkpoint.
    WitnessPolicy {
        #[arg(long)]
        quorum: usize,
        /// A witness's cosignature key (`cloister witness init` prints it; repeatable).
        #[arg(long = "witness", required = true)]
        witnesses: Vec<String>,
    },
    /// Audit entries (admin).
    List {
        #[arg(long)]
        room: Option<String>,
        /// Only entries at or after this time (seconds since the Unix epoch).
        #[arg(long)]
        since: Option<u64>,
        /// Only this kind of entry (e.g. key_released).
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// An entry's inclusion proof against the latest checkpoint, verified here (admin).
    Prove { entry: u64 },
    /// A consistency proof from OLD_SIZE to the latest checkpoint.
    Consistency { old_size: u64 },
    /// Every device ever given a key of ROOM, each release proven in the log.
    WhoHasKeys { room: String },
    /// Write checkpoint.note, log.key and entries.jsonl to a directory (admin).
    Export {
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify offline with the log's public key.
    Verify {
        /// The log's verifier key (`name+id+key`), or @FILE.
        #[arg(long)]
        key: String,
        /// A directory written by `audit export` (checkpoint.note, entries.jsonl).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// entries.jsonl: recompute the whole tree.
        #[arg(long)]
        entries: Option<PathBuf>,
        /// A remembered older checkpoint (signed note).
        #[arg(long)]
        previous: Option<PathBuf>,
        /// Consistency proof JSON from `audit consistency --json`.
        #[arg(long)]
        consistency: Option<PathBuf>,
        /// Inclusion proof JSON from `audit prove --json` (repeatable).
        #[arg(long = "inclusion")]
        inclusion: Vec<PathBuf>,
    },
}

pub(crate) fn b64std(b: &[u8]) -> String {
    cloister_proto::b64::encode(b)
}

pub async fn audit_cmd(ctx: &Ctx, ac: AuditCmd) -> Result<(), BoxError> {
    if let AuditCmd::Verify {
        key,
        dir,
        checkpoint,
        entries,
        previous,
        consistency,
        inclusion,
    } = ac
    {
        let key = match key.strip_prefix('@') {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("{f}: {e}"))?
                .trim()
                .to_owned(),
            None => key,
        };
        let cp = checkpoint
            .or_else(|| dir.as_ref().map(|d| d.join("checkpoint.note")))
            .ok_or("give --checkpoint FILE or --dir DIR")?;
        let entries = entries.or_else(|| dir.as_ref().map(|d| d.join("entries.jsonl")));
        let input = cloister_cli::audit::VerifyInput {
            key: &key,
            checkpoint: &cp,
            entries: entries.as_deref(),
            previous: previous.as_deref(),
            consistency: consistency.as_deref(),
            inclusion: &inclusion,
        };
        let lines = cloister_cli::audit::verify(&input)?;
        ctx.emit(lines.join("\n"), json!({"ok": true, "checks": lines}));
        return Ok(());
    }
    let c = ctx.client()?;
    match ac {
        AuditCmd::WitnessPolicy { quorum, witnesses } => {
            c.set_witness_policy(&witnesses, quorum)?;
            ctx.emit(
                format!(
                    "checkpoints now need cosignatures from {quorum} of {} witnesses",
                    witnesses.len()
                ),
                json!({"quorum": quorum, "witnesses": witnesses}),
            );
        }
        AuditCmd::Checkpoint => {
            let (cp, note) = c.audit_checkpoint().await?;
            ctx.emit(note.trim_end(), json!({"origin": cp.origin, "size": cp.size, "root": b64std(&cp.root), "note": note}));
        }
        AuditCmd::List {
            room,
            since,
            kind,
            from,
            limit,
        } => {
            let room = match room {
                Some(r) => Some(resolve_room(&c, &r).await?),
                None => None,
            };
            let rows = c
                .audit_list(from, limit, kind, room, since.map(|s| s * 1000))
                .await?;
            let lines: Vec<String> = rows
                .iter()
                .map(|(i, r, _)| {
                    format!(
                        "{i:>6} {} {}",
                        r.ts / 1000,
                        serde_json::to_string(&r.event).unwrap_or_default()
                    )
                })
                .collect();
            let items: Vec<_> = rows
                .iter()
                .map(|(i, r, _)| json!({"index": i, "record": r}))
                .collect();
            ctx.emit(lines.join("\n"), json!({"entries": items}));
        }
        AuditCmd::Prove { entry } => {
            let (p, _) = c.audit_prove(entry).await?;
            let rec = String::from_utf8_lossy(p.data.as_slice()).into_owned();
            ctx.emit(
                format!("entry {} is included in the signed checkpoint of size {} ({} proof hashes, verified)\n{rec}", p.index, p.size, p.proof.len()),
                serde_json::to_value(&p)?,
            );
        }
        AuditCmd::Consistency { old_size } => {
            let (p, _) = c.audit_consistency(old_size).await?;
            ctx.emit(
                format!(
                    "consistency proof {} -> {}: {} hashes",
                    p.old,
                    p.new,
                    p.proof.len()
                ),
                serde_json::to_value(&p)?,
            );
        }
        AuditCmd::WhoHasKeys { room } => {
            let room = resolve_room(&c, &room).await?;
            let rel = c.who_has_keys(&room).await?;
            let lines: Vec<String> = rel.iter().map(cloister_cli::audit::release_line).collect();
            ctx.emit(lines.join("\n"), json!({"room": room, "releases": rel}));
        }
        AuditCmd::Export { out } => {
            let size = cloister_cli::audit::export(&c, &out).await?;
            ctx.emit(
                format!(
                    "exported {size} entries and the signed checkpoint to {}",
                    out.display()
                ),
                json!({"out": out, "size": size}),
            );
        }
        AuditCmd::Verify { .. } => {}
    }
    Ok(())
}
