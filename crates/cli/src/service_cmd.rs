//! The service commands: `km init|serve|config-example` and `server`.

use super::{Ctx, parse, read_secret, shutdown_signal};
use clap::{Args, Subcommand};
use cloister_cli::BoxError;
use cloister_crypto::passphrase::Cost;
use cloister_proto::TenantId;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KmCmd {
    /// Create the tenant: master key (sealed with the passphrase), signing key, bootstrap admin code.
    Init {
        #[command(flatten)]
        data: cloister_cli::DataArgs,
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        pass: KmPass,
        #[command(flatten)]
        pkcs11: cloister_cli::custody::Pkcs11Args,
    },
    /// Serve the KM API.
    Serve {
        /// A TOML file of this command's flags (`config-example` prints one).
        #[arg(long, env = "CLOISTER_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        ops: cloister_cli::ops_args::OpsArgs,
        #[command(flatten)]
        data: cloister_cli::DataArgs,
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: String,
        #[command(flatten)]
        tls: cloister_cli::tls_args::ListenTls,
        #[command(flatten)]
        pass: KmPass,
        /// A witness (URL) to submit the audit log's checkpoints to (repeatable).
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// The messaging server to push notices to (standing changes from
        /// SCIM, controls); without it an admin device forwards them.
        #[arg(long)]
        server: Option<String>,
        #[command(flatten)]
        limits: cloister_cli::limit_args::KmLimitArgs,
        /// Serve the routes only services call (the vault's deny list, KM
        /// to KM) only to connections with a client certificate from
        /// --tls-client-ca's CA.
        #[arg(long, requires = "tls_client_ca")]
        require_service_certs: bool,
        /// A file holding the HSM token's user PIN when `km init` put the
        /// key in one (else $CLOISTER_PKCS11_PIN).
        #[arg(long)]
        pkcs11_pin_file: Option<PathBuf>,
        /// Seconds a device may use a released key before asking again: the
        /// longest a crypto-lock takes to reach devices holding keys.
        #[arg(long, value_name = "SECS", default_value_t = cloister_km::DEFAULT_LEASE_SECS)]
        key_lease: u64,
        /// Seconds a device certificate is valid (devices in good standing
        /// renew it without a code after two thirds of it).
        #[arg(long, value_name = "SECS", default_value_t = cloister_km::DEFAULT_CERT_SECS)]
        cert_lifetime: u64,
    },
    /// Print a commented example of `km serve --config FILE`.
    ConfigExample,
}

/// `cloister SERVICE config-example`.
#[derive(Subcommand)]
pub enum ExampleCmd {
    /// Print a commented example of this service's `--config FILE`.
    ConfigExample,
}

/// The server's data directory and database (as [`cloister_cli::DataArgs`];
/// optional to clap only so that `server config-example` needs neither).
#[derive(Args)]
pub struct ServerData {
    #[arg(long, required = true)]
    data_dir: Option<PathBuf>,
    /// The database (`postgres://HOST/DB`, `sqlite://PATH`; default: SQLite
    /// in the data directory). From the environment, so that a password in
    /// it never shows in a process list.
    #[arg(
        long = "database-url",
        env = "CLOISTER_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
}

#[derive(Args)]
pub struct KmPass {
    /// File holding the KM passphrase (else $CLOISTER_KM_PASSPHRASE).
    #[arg(long = "km-passphrase-file")]
    file: Option<PathBuf>,
}

/// `cloister server`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub example: Option<ExampleCmd>,
    /// A TOML file of this command's flags (`config-example` prints one).
    #[arg(long, env = "CLOISTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub ops: cloister_cli::ops_args::OpsArgs,
    #[command(flatten)]
    pub data: ServerData,
    #[arg(long, default_value = "127.0.0.1:7300")]
    pub listen: String,
    #[command(flatten)]
    pub tls: cloister_cli::tls_args::ListenTls,
    /// Run as one of several nodes sharing the database (PostgreSQL),
    /// with live events between them over this NATS JetStream server.
    #[arg(long, env = "CLOISTER_NATS_URL")]
    pub nats: Option<String>,
    /// This node's name in the cluster, stable across restarts
    /// (default: one made up once and kept in the data directory).
    #[arg(long, requires = "nats")]
    pub node: Option<String>,
    #[command(flatten)]
    pub limits: cloister_cli::limit_args::ServerLimitArgs,
}

/// `cloister km …`.
pub async fn km_cmd(ctx: &Ctx, ca_file: Option<&PathBuf>, cmd: KmCmd) -> Result<(), BoxError> {
    match cmd {
        KmCmd::Init {
            data:
                cloister_cli::DataArgs {
                    data_dir,
                    database_url,
                },
            tenant,
            pass,
            pkcs11,
        } => {
            let tenant: TenantId = parse(&tenant)?;
            if cloister_cli::custody::initialised(&data_dir) {
                return Err(
                    format!("{} already holds an initialised KM", data_dir.display()).into(),
                );
            }
            let custody = match pkcs11.config(tenant.as_str())? {
                Some(c) => cloister_cli::custody::Custody::Pkcs11(c),
                None => cloister_cli::custody::Custody::File(read_secret(
                    pass.file.as_deref(),
                    "CLOISTER_KM_PASSPHRASE",
                )?),
            };
            let (km, code) = cloister_cli::open_km_with(
                &data_dir,
                database_url.as_deref(),
                Some(&tenant),
                &custody,
                Cost::DEFAULT,
                Default::default(),
            )
            .await?;
            let info = km.info();
            let code = code.unwrap_or_default();
            let provider = cloister_cli::custody::describe(&custody);
            ctx.emit(
                format!(
                    "tenant {} initialised\n{provider}\nKM signing key: {}\nbootstrap admin: admin@{}\none-time enrolment code: {code}",
                    info.tenant,
                    cloister_proto::b64::encode(&info.sign_pk.0),
                    info.tenant
                ),
                json!({"tenant": info.tenant, "km_sign_pk": info.sign_pk, "admin": format!("admin@{}", info.tenant), "code": code, "key_provider": km.provider_name()}),
            );
        }
        KmCmd::ConfigExample => {
            print!(
                "{}",
                cloister_cli::config::example::<crate::Cli>(&["km", "serve"])
            );
        }
        KmCmd::Serve {
            config: _,
            ops,
            data:
                cloister_cli::DataArgs {
                    data_dir,
                    database_url,
                },
            listen,
            tls,
            pass,
            witnesses,
            server,
            limits,
            require_service_certs,
            pkcs11_pin_file,
            key_lease,
            cert_lifetime,
        } => {
            if key_lease == 0 {
                return Err("--key-lease must be at least 1 second".into());
            }
            if cert_lifetime < 60 {
                return Err("--cert-lifetime must be at least 60 seconds".into());
            }
            tls.set_outgoing(ca_file)?;
            if !cloister_cli::custody::initialised(&data_dir) {
                return Err(format!(
                    "no KM in {}; run `cloister km init` first",
                    data_dir.display()
                )
                .into());
            }
            let custody =
                cloister_cli::custody::for_serve(&data_dir, pkcs11_pin_file.as_deref(), || {
                    read_secret(pass.file.as_deref(), "CLOISTER_KM_PASSPHRASE")
                })?;
            let config = cloister_km::KmConfig {
                witnesses,
                limits: limits.limits(),
                require_service_certs,
                lease_secs: key_lease,
                cert_secs: cert_lifetime,
                ..Default::default()
            };
            cloister_cli::km_serve::run(
                cloister_cli::km_serve::KmServe {
                    data_dir,
                    database_url,
                    listen,
                    ops,
                    tls: tls.load()?,
                    custody,
                    config,
                    server,
                },
                shutdown_signal(),
            )
            .await?;
        }
    }
    Ok(())
}

/// `cloister server`.
pub async fn server_cmd(ca_file: Option<&PathBuf>, a: ServerArgs) -> Result<(), BoxError> {
    let ServerArgs {
        example,
        config: _,
        ops,
        data: ServerData {
            data_dir,
            database_url,
        },
        listen,
        tls,
        nats,
        node,
        limits,
    } = a;
    if let Some(ExampleCmd::ConfigExample) = example {
        print!(
            "{}",
            cloister_cli::config::example::<crate::Cli>(&["server"])
        );
        return Ok(());
    }
    // clap requires it unless `config-example` is asked for
    let data_dir = data_dir.ok_or("--data-dir is required")?;
    tls.set_outgoing(ca_file)?;
    let server_tls = tls.load()?;
    // Nodes share one database: a node's own SQLite file cannot be it.
    if nats.is_some()
        && cloister_store::backend_of(database_url.as_deref().unwrap_or("sqlite:"))?
            != cloister_store::Backend::Postgres
    {
        return Err(
            "--nats needs --database-url postgres://… (the nodes share one database)".into(),
        );
    }
    let cluster = match nats {
        Some(nats_url) => Some(cloister_server::ClusterConfig {
            nats_url,
            node: match node {
                Some(n) => n,
                None => cloister_cli::node_name(&data_dir)?,
            },
        }),
        None => None,
    };
    let config = cloister_server::ServerConfig {
        cluster,
        limits: limits.limits(),
        ..Default::default()
    };
    let server =
        cloister_server::Server::open_url(&data_dir, database_url.as_deref(), config).await?;
    let l = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    eprintln!(
        "server listening on {}://{}; operator token in {}",
        tls.scheme(),
        l.local_addr()?,
        cloister_server::operator_token_path(&data_dir).display()
    );
    let (metrics, ready) = (server.metrics().clone(), server.ready_check());
    ops.run_service(
        l,
        server_tls.as_ref(),
        cloister_server::router(server),
        metrics,
        ready,
        shutdown_signal(),
    )
    .await
}
