//! `cloister witness …`: run a transparency-log witness.

use super::{Ctx, shutdown_signal};
use clap::Subcommand;
use cloister_cli::BoxError;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum WitnessCmd {
    /// Create a witness key under a name (e.g. `witness.example.com/w1`).
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Follow a log: its checkpoint verifier key (`cloister audit checkpoint`
    /// shows the KM's; the vault's is in `vault init`'s output).
    Follow {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        log_key: String,
    },
    /// Serve `POST /add-checkpoint` (C2SP tlog-witness).
    Serve {
        /// A TOML file of this command's flags (`config-example` prints one).
        #[arg(long, env = "CLOISTER_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        ops: cloister_cli::ops_args::OpsArgs,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7600")]
        listen: String,
        #[command(flatten)]
        tls: cloister_cli::tls_args::ListenTls,
    },
    /// Print a commented example of `witness serve --config FILE`.
    ConfigExample,
}

pub async fn witness_cmd(ctx: &Ctx, wc: WitnessCmd) -> Result<(), BoxError> {
    match wc {
        WitnessCmd::Init { data_dir, name } => {
            let w = cloister_witness::Witness::open_dir(&data_dir, Some(&name)).await?;
            ctx.emit(
                format!(
                    "witness {} created\nkey: {}\nnext: `cloister witness follow --log-key KEY`, then give clients the key",
                    w.name(),
                    w.key()
                ),
                json!({"name": w.name(), "key": w.key()}),
            );
        }
        WitnessCmd::Follow { data_dir, log_key } => {
            let w = cloister_witness::Witness::open_dir(&data_dir, None).await?;
            w.follow(&log_key).await?;
            ctx.emit(
                format!("witness {} now follows {}", w.name(), log_key.trim()),
                json!({"name": w.name(), "log_key": log_key.trim()}),
            );
        }
        WitnessCmd::ConfigExample => {
            print!(
                "{}",
                cloister_cli::config::example::<crate::Cli>(&["witness", "serve"])
            );
        }
        WitnessCmd::Serve {
            config: _,
            ops,
            data_dir,
            listen,
            tls,
        } => {
            let witness_tls = tls.load()?;
            let w = Arc::new(cloister_witness::Witness::open_dir(&data_dir, None).await?);
            let l = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            eprintln!(
                "witness {} listening on {}://{} (key {})",
                w.name(),
                tls.scheme(),
                l.local_addr()?,
                w.key()
            );
            let (metrics, ready) = (w.metrics().clone(), w.ready_check());
            ops.run_service(
                l,
                witness_tls.as_ref(),
                cloister_witness::router(w),
                metrics,
                ready,
                shutdown_signal(),
            )
            .await?;
        }
    }
    Ok(())
}
