//! `cloister admin rotate …`: rotating the tenant's keys (runbooks in
//! docs/operations.md).

use super::{Ctx, parse};
use clap::Subcommand;
use cloister_cli::BoxError;
use serde_json::json;
use std::io::{IsTerminal, Write};

#[derive(Subcommand)]
pub enum RotateCmd {
    /// Re-wrap every stored key under a new master key, online, then
    /// retire the old one. Run it again after a crash: it goes on where it
    /// stopped.
    MasterKey {
        /// Keys re-wrapped per request (1 to 10,000).
        #[arg(long, default_value_t = 2_000)]
        batch: u32,
    },
    /// The audit log's signing key: the log records the hand-over in a
    /// checkpoint both keys sign; devices and witnesses follow it.
    AuditLog,
    /// A room's key, now: a new epoch (an owner, an admin or a compliance
    /// officer). Messages from now on are under the new key.
    Room {
        room: String,
        /// Why (kept in the room's log and the audit log).
        #[arg(long)]
        reason: String,
    },
}

pub async fn rotate_cmd(ctx: &Ctx, rc: RotateCmd) -> Result<(), BoxError> {
    match rc {
        RotateCmd::MasterKey { batch } => master_key(ctx, batch).await,
        RotateCmd::AuditLog => {
            let h = ctx.client()?.admin_rotate_log_key().await?;
            ctx.emit(
                format!(
                    "audit log key rotated at entry {}: {} -> {}",
                    h.index, h.from, h.to
                ),
                json!({"index": h.index, "from": h.from, "to": h.to}),
            );
            Ok(())
        }
        RotateCmd::Room { room, reason } => {
            let room: cloister_proto::RoomId = parse(&room)?;
            let r = ctx.client()?.room_rekey(&room, &reason).await?;
            ctx.emit(
                format!(
                    "room {} rotated: epoch {} from log entry {}",
                    r.room, r.epoch, r.seq
                ),
                serde_json::to_value(&r)?,
            );
            Ok(())
        }
    }
}

async fn master_key(ctx: &Ctx, batch: u32) -> Result<(), BoxError> {
    let client = ctx.client()?;
    let mut bar = Progress::new();
    let mut done = 0u64;
    loop {
        let step = client.admin_rotate_tmk(batch).await?;
        done += step.rewrapped;
        bar.show(
            &format!("master key v{} -> v{}", step.from, step.to),
            done,
            done + step.remaining,
        );
        if step.finished {
            bar.end();
            ctx.emit(
                format!(
                    "master key rotated: v{} -> v{}; {done} keys re-wrapped by this run; v{} retired; key generation {}",
                    step.from, step.to, step.from, step.generation
                ),
                json!({"from": step.from, "to": step.to, "rewrapped": done,
                       "generation": step.generation, "finished": true}),
            );
            return Ok(());
        }
    }
}

/// A progress bar on a terminal's stderr; one line per step elsewhere.
struct Progress {
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, what: &str, done: u64, total: u64) {
        let pct = (done * 100).checked_div(total).unwrap_or(100).min(100);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let filled = (pct / 5) as usize;
            let _ = write!(
                err,
                "\r{what}: [{}{}] {done}/{total} keys ({pct}%)",
                "#".repeat(filled),
                "-".repeat(20 - filled)
            );
        } else {
            let _ = writeln!(err, "{what}: {done}/{total} keys ({pct}%)");
        }
        let _ = err.flush();
    }

    fn end(&mut self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
