//! `cloister gateway …`: the firm's gateway to another network (ADR 0029),
//! run on the gateway user's enrolled device; `cloister bridge open` for
//! the firm's users.

use super::{Ctx, shutdown_signal};
use clap::Subcommand;
use cloister_cli::BoxError;
use cloister_gateway::matrix::{Matrix, MatrixConfig};
use cloister_gateway::{Connector, Gateway};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Subcommand)]
pub enum GatewayCmd {
    /// Register with a Matrix homeserver: writes the gateway's Matrix
    /// settings (with its tokens) to DATA_DIR/matrix.json and the
    /// homeserver's application-service file to DATA_DIR/registration.yaml.
    MatrixRegister {
        #[arg(long)]
        data_dir: PathBuf,
        /// The homeserver's client-server API.
        #[arg(long)]
        homeserver: String,
        /// The homeserver's server name.
        #[arg(long)]
        server_name: String,
        /// Where the homeserver reaches the gateway (its `--listen`).
        #[arg(long)]
        url: String,
    },
    /// Relay (as this device, which must hold the gateway role).
    Run {
        #[arg(long)]
        data_dir: PathBuf,
        /// Where the homeserver pushes transactions.
        #[arg(long, default_value = "127.0.0.1:9009")]
        listen: String,
    },
    /// The bridged conversations and what could not be delivered.
    Status {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        failures: u32,
    },
}

#[derive(Serialize, Deserialize)]
struct MatrixFile {
    homeserver: String,
    server_name: String,
    as_token: String,
    hs_token: String,
    sender_localpart: String,
}

fn matrix_file(dir: &Path) -> PathBuf {
    dir.join("matrix.json")
}

fn load_matrix(dir: &Path) -> Result<MatrixConfig, BoxError> {
    let p = matrix_file(dir);
    let f: MatrixFile = serde_json::from_slice(
        &std::fs::read(&p)
            .map_err(|e| format!("{}: {e} (run `gateway matrix-register`)", p.display()))?,
    )
    .map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(MatrixConfig {
        homeserver: f.homeserver,
        server_name: f.server_name,
        as_token: f.as_token,
        hs_token: f.hs_token,
        sender_localpart: f.sender_localpart,
    })
}

async fn store(dir: &Path) -> Result<Arc<cloister_store::GatewayStore>, BoxError> {
    std::fs::create_dir_all(dir)?;
    Ok(Arc::new(
        cloister_store::GatewayStore::open(&cloister_store::sqlite_url(&dir.join("gateway.db")))
            .await?,
    ))
}

pub async fn gateway_cmd(ctx: &Ctx, gc: GatewayCmd) -> Result<(), BoxError> {
    match gc {
        GatewayCmd::MatrixRegister {
            data_dir,
            homeserver,
            server_name,
            url,
        } => {
            std::fs::create_dir_all(&data_dir)?;
            let cfg = MatrixConfig::generate(&homeserver, &server_name)?;
            let f = MatrixFile {
                homeserver: cfg.homeserver.clone(),
                server_name: cfg.server_name.clone(),
                as_token: cfg.as_token.clone(),
                hs_token: cfg.hs_token.clone(),
                sender_localpart: cfg.sender_localpart.clone(),
            };
            let secret = matrix_file(&data_dir);
            write_private(&secret, &serde_json::to_vec_pretty(&f)?)?;
            let reg = data_dir.join("registration.yaml");
            write_private(&reg, cfg.registration(&url).as_bytes())?;
            ctx.emit(
                format!(
                    "wrote {} (keep it secret) and {}: add the latter to the homeserver's app_service_config_files",
                    secret.display(),
                    reg.display()
                ),
                json!({"settings": secret, "registration": reg}),
            );
        }
        GatewayCmd::Run { data_dir, listen } => {
            let client = Arc::new(ctx.client()?);
            if !client.roles()?.contains(&cloister_proto::km::Role::Gateway) {
                return Err(format!(
                    "{} does not hold the gateway role: an admin adds the gateway user with --role gateway",
                    client.user()
                )
                .into());
            }
            let matrix: Arc<dyn Connector> =
                Matrix::new(load_matrix(&data_dir)?, cloister_tls::http_client());
            let gw = Gateway::new(client, store(&data_dir).await?, vec![matrix]);
            let l = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            eprintln!(
                "gateway {} listening on http://{}",
                gw.me(),
                l.local_addr()?
            );
            let router = gw.router();
            let serve = tokio::spawn(async move { axum::serve(l, router).await });
            gw.run(std::time::Duration::from_secs(2), shutdown_signal())
                .await;
            serve.abort();
        }
        GatewayCmd::Status { data_dir, failures } => {
            let s = store(&data_dir).await?;
            let convs = s.conversations().await?;
            let fails = s.failures(failures).await?;
            let mut out = String::new();
            for c in &convs {
                out.push_str(&format!(
                    "room {} ↔ {} on {} ({}), relayed up to seq {}\n",
                    c.room,
                    c.contact,
                    c.network,
                    c.remote.as_deref().unwrap_or("not opened yet"),
                    c.cursor
                ));
            }
            for f in &fails {
                out.push_str(&format!(
                    "NOT DELIVERED ({}) {} in room {}: {}\n",
                    f.direction,
                    f.item,
                    f.room.as_deref().unwrap_or("-"),
                    f.reason
                ));
            }
            ctx.emit(
                out.trim_end(),
                json!({
                    "conversations": convs.iter().map(|c| json!({"room": c.room, "network": c.network, "contact": c.contact, "remote": c.remote, "cursor": c.cursor})).collect::<Vec<_>>(),
                    "failures": fails.iter().map(|f| json!({"direction": f.direction, "room": f.room, "item": f.item, "reason": f.reason, "at_ms": f.at_ms})).collect::<Vec<_>>(),
                }),
            );
        }
    }
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), BoxError> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)?.write_all(data)?;
    Ok(())
}
