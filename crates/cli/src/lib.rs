//! Library side of the `cloister` command: running the services in-process
//! (for `cloister demo`, `cloister bench` and the integration tests).
//!
//! ```text
//!  Stack::start(dir) ── dir/km:     KM (SQLite + passphrase-sealed TMK file) on 127.0.0.1:port
//!                    ├─ dir/server: messaging server (SQLite + blobs)          on 127.0.0.1:port
//!                    └─ dir/vault:  the tenant's compliance vault (SQLite)       on 127.0.0.1:port
//!                    and registers the tenant's KM key with the server (the
//!                    vault is registered with the KM by an admin device).
//! ```
#![forbid(unsafe_code)]

pub mod audit;
pub mod backup;
pub mod bench;
pub mod bench_firms;
pub mod bench_gateway;
pub mod config;
pub mod custody;
pub mod demo;
pub mod firm;
pub mod inspect;
pub mod km_serve;
pub mod limit_args;
pub mod matrix_lab;
pub mod ops_args;
pub mod synapse;
pub mod tls_args;

use cloister_crypto::passphrase::Cost;
use cloister_km::{Km, KmConfig};
use cloister_proto::TenantId;
use cloister_server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Open (or initialise) a KM in `dir` with its master key in a sealed
/// file. Returns the KM and, on first initialisation, the bootstrap
/// admin's enrolment code.
pub async fn open_km(
    dir: &Path,
    database: Option<&str>,
    tenant: Option<&TenantId>,
    pass: &[u8],
    cost: Cost,
    config: KmConfig,
) -> Result<(Arc<Km>, Option<String>), BoxError> {
    let custody = custody::Custody::File(pass.to_vec());
    open_km_with(dir, database, tenant, &custody, cost, config).await
}

/// [`open_km`] with the master key where `custody` says.
pub async fn open_km_with(
    dir: &Path,
    database: Option<&str>,
    tenant: Option<&TenantId>,
    custody: &custody::Custody,
    cost: Cost,
    config: KmConfig,
) -> Result<(Arc<Km>, Option<String>), BoxError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let url = match database {
        Some(u) => u.to_owned(),
        None => cloister_store::sqlite_url(&cloister_km::db_path(dir)),
    };
    let store = Arc::new(cloister_store::SqlKmStore::open(&url).await?);
    if custody::initialised(dir) {
        let provider = custody::provider(dir, custody, false, cost)?;
        let km = Arc::new(Km::open(store.clone(), store, provider, config).await?);
        // A restored directory: the log says so before anything else.
        if let Some(r) = backup::pending_restore(dir)? {
            let size = r
                .logs
                .iter()
                .find(|l| l.database == "km.db")
                .map_or(0, |l| l.size);
            km.record_restore(r.backup_created_ms, size).await?;
            backup::restore_recorded(dir)?;
        }
        Ok((km, None))
    } else {
        if Km::store_has_tenant(store.as_ref()).await? {
            return Err(format!(
                "the KM's database in {} holds a tenant but its master key is not here \
                 (no tmk.sealed, no provider.json): the tenant is crypto-locked until the key is restored",
                dir.display()
            )
            .into());
        }
        let tenant = tenant.ok_or("this KM is not initialised: pass --tenant to create it")?;
        let provider = custody::provider(dir, custody, true, cost)?;
        let (km, out) = Km::init(store.clone(), store, provider, tenant.clone(), config).await?;
        Ok((Arc::new(km), Some(out.admin_code)))
    }
}

/// A running KM and server in this process.
pub struct Stack {
    pub dir: PathBuf,
    pub km: Arc<Km>,
    pub server: Arc<Server>,
    pub vault: Arc<cloister_vault::Vault>,
    pub km_url: String,
    pub server_url: String,
    /// The CA the stack's listeners have certificates from (TLS), if any.
    pub tls: Option<tls_args::LocalTls>,
    pub vault_url: String,
    pub km_addr: SocketAddr,
    pub server_addr: SocketAddr,
    pub operator_token: String,
    /// The bootstrap admin's one-time code (first start only).
    pub admin_code: Option<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

/// Options for [`Stack::start`].
pub struct StackOptions {
    pub tenant: TenantId,
    pub km_passphrase: Vec<u8>,
    /// Keep the KM's master key here instead (an HSM); `None`: the sealed
    /// file under `km_passphrase`.
    pub km_custody: Option<custody::Custody>,
    pub cost: Cost,
    pub km_addr: SocketAddr,
    pub server_addr: SocketAddr,
    pub vault_addr: SocketAddr,
    pub km_config: KmConfig,
    pub server_config: ServerConfig,
    /// The server's database (default: SQLite in its data directory).
    pub server_database: Option<String>,
    /// How often the vault pulls the KM's deny list.
    pub vault_refresh: std::time::Duration,
    /// The vault's rate limits.
    pub vault_limits: cloister_vault::VaultLimits,
    /// Serve the KM, the server and the vault over TLS with certificates
    /// from this CA (the process trusts it).
    pub tls: Option<tls_args::LocalTls>,
}

impl StackOptions {
    pub fn new(tenant: TenantId) -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        StackOptions {
            tenant,
            km_passphrase: b"demo passphrase (development only)".to_vec(),
            km_custody: None,
            cost: Cost::DEFAULT,
            km_addr: any,
            server_addr: any,
            vault_addr: any,
            km_config: KmConfig::default(),
            server_config: ServerConfig::default(),
            server_database: None,
            vault_refresh: std::time::Duration::from_secs(5),
            vault_limits: Default::default(),
            tls: None,
        }
    }
}

impl Stack {
    /// Start (or restart) a KM in `dir/km` and a server in `dir/server`.
    pub async fn start(dir: &Path, o: StackOptions) -> Result<Stack, BoxError> {
        let custody = o
            .km_custody
            .clone()
            .unwrap_or_else(|| custody::Custody::File(o.km_passphrase.clone()));
        let (km, admin_code) = open_km_with(
            &dir.join("km"),
            None,
            Some(&o.tenant),
            &custody,
            o.cost,
            o.km_config,
        )
        .await?;
        let server = Server::open_url(
            &dir.join("server"),
            o.server_database.as_deref(),
            o.server_config,
        )
        .await?;
        let vdir = dir.join("vault");
        let info = km.info();
        let mut vault = if cloister_vault::db_path(&vdir).exists() {
            cloister_vault::Vault::open_dir(&vdir, None).await?
        } else {
            cloister_vault::Vault::open_dir(&vdir, Some((&info.tenant, info.sign_pk.0))).await?
        };
        vault.set_limits(o.vault_limits.clone());
        let vault = Arc::new(vault);
        let token_path = cloister_server::operator_token_path(&dir.join("server"));
        let operator_token = std::fs::read_to_string(&token_path)?.trim().to_owned();

        let tls = o.tls.as_ref();
        let (kl, km_tls, km_url) = tls_args::bind("km", o.km_addr, tls).await?;
        let (sl, server_tls, server_url) = tls_args::bind("server", o.server_addr, tls).await?;
        let (vl, vault_tls, vault_url) = tls_args::bind("vault", o.vault_addr, tls).await?;
        let (km_addr, server_addr) = (kl.local_addr()?, sl.local_addr()?);
        let r1 = cloister_km::http::router(km.clone());
        let r2 = cloister_server::router(server.clone());
        let r3 = cloister_vault::router(vault.clone());
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        vault.set_km_url(&km_url).await?;
        let (s1, s2, s3, s4) = (
            signal(rx.clone()),
            signal(rx.clone()),
            signal(rx.clone()),
            signal(rx),
        );
        let tasks = vec![
            tokio::spawn(async move {
                if let Err(e) = cloister_http::serve_with(kl, km_tls.as_ref(), r1, s1).await {
                    tracing::error!("KM stopped: {e}");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = cloister_http::serve_with(sl, server_tls.as_ref(), r2, s2).await {
                    tracing::error!("server stopped: {e}");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = cloister_http::serve_with(vl, vault_tls.as_ref(), r3, s3).await {
                    tracing::error!("vault stopped: {e}");
                }
            }),
            tokio::spawn(vault.clone().keep_standing(o.vault_refresh, s4)),
        ];
        let mut tasks = tasks;
        tasks.extend(km.push_notices_to(&server_url));
        let stack = Stack {
            dir: dir.to_owned(),
            km_url,
            server_url,
            tls: o.tls.clone(),
            km,
            server,
            vault,
            vault_url,
            km_addr,
            server_addr,
            operator_token,
            admin_code,
            tasks,
            shutdown,
        };
        let http = cloister_tls::http_client();
        cloister_client::register_tenant(
            &http,
            &stack.server_url,
            &stack.operator_token,
            &stack.km.info(),
        )
        .await?;
        Ok(stack)
    }

    /// Stop both services: stop accepting, close every connection (live
    /// streams and idle keep-alives included), and wait for both to end, so a
    /// restarted stack on the same ports is the only one answering.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.server.close_connections();
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

/// Where a service keeps its data: its directory, and its database.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The database (`postgres://HOST/DB`, `sqlite://PATH`; default: SQLite
    /// in the data directory). From the environment, so that a password in
    /// it never shows in a process list.
    #[arg(
        long = "database-url",
        env = "CLOISTER_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

/// A server node's name in its cluster: made up once, kept in the data
/// directory (`node.name`), so that it stays the same across restarts.
pub fn node_name(dir: &Path) -> Result<String, BoxError> {
    let path = dir.join("node.name");
    match std::fs::read_to_string(&path) {
        Ok(n) => Ok(n.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let n = format!("n{}", hex::encode(cloister_crypto::random_bytes::<6>()?));
            std::fs::write(&path, &n).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(n)
        }
        Err(e) => Err(format!("{}: {e}", path.display()).into()),
    }
}
