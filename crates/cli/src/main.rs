//! `cloister`: one binary for the services, users, admins, the demo and the load tool.
#![forbid(unsafe_code)]

mod compliance_cmd;
mod connect_cmd;
mod controls_cmd;
mod room_cmd;
mod trust_cmd;
mod witness_cmd;

use clap::{Args, Parser, Subcommand};
use cloister_cli::BoxError;
use cloister_client::{Client, Received, Storage};
use cloister_crypto::passphrase::Cost;
use cloister_proto::server::Content;
use cloister_proto::{DeviceId, RoomId, TenantId, UserId};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cloister",
    version,
    about = "End-to-end encrypted messaging with compliance, for regulated firms"
)]
struct Cli {
    /// Device profile directory (keys, certificate, key cache).
    #[arg(long, global = true, env = "CLOISTER_HOME")]
    home: Option<PathBuf>,
    /// File holding the passphrase of the device keystore (else $CLOISTER_PASSPHRASE).
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Trust only this CA (PEM) for https:// services (default: the
    /// system's roots).
    #[arg(long, global = true, env = "CLOISTER_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Log lines as text or as JSON objects, one a line (to stderr; the
    /// level from $CLOISTER_LOG).
    #[arg(long, global = true, env = "CLOISTER_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole stack in one process and play a realistic scenario.
    Demo {
        /// Keep all data here (default: a temporary directory, removed at the end).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Run every service over TLS with certificates from a development
        /// CA made for the run (in the data directory's `tls/`).
        #[arg(long)]
        tls: bool,
    },
    /// Load test: N clients in rooms of M members over loopback.
    Bench(cloister_cli::bench::BenchArgs),
    /// Load test between firms: one external room over F firms, each KM its
    /// own process; time until every member holds a new epoch's key.
    BenchFirms(cloister_cli::bench_firms::FirmsBenchArgs),
    /// The tenant Key Manager.
    #[command(subcommand)]
    Km(KmCmd),
    /// The messaging server (`server config-example` prints a config file).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Server {
        #[command(subcommand)]
        example: Option<ExampleCmd>,
        /// A TOML file of this command's flags (`config-example` prints one).
        #[arg(long, env = "CLOISTER_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        ops: cloister_cli::ops_args::OpsArgs,
        #[command(flatten)]
        data: ServerData,
        #[arg(long, default_value = "127.0.0.1:7300")]
        listen: String,
        #[command(flatten)]
        tls: cloister_cli::tls_args::ListenTls,
        /// Run as one of several nodes sharing the database (PostgreSQL),
        /// with live events between them over this NATS JetStream server.
        #[arg(long, env = "CLOISTER_NATS_URL")]
        nats: Option<String>,
        /// This node's name in the cluster, stable across restarts
        /// (default: one made up once and kept in the data directory).
        #[arg(long, requires = "nats")]
        node: Option<String>,
        #[command(flatten)]
        limits: cloister_cli::limit_args::ServerLimitArgs,
    },
    /// Tenant administration (needs an admin device).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// The firm's directory.
    #[command(subcommand)]
    Directory(controls_cmd::DirectoryCmd),
    /// Connections with users of other firms (request, accept, reject, list, remove).
    #[command(subcommand)]
    Connect(connect_cmd::ConnectCmd),
    /// My entitlements.
    Entitlements,
    /// Enrol this device with a one-time code from an admin.
    Enrol {
        #[arg(long)]
        server: String,
        #[arg(long)]
        km: String,
        #[arg(long)]
        user: String,
        #[arg(long)]
        code: String,
    },
    /// Show this device's identity.
    Whoami,
    /// Run the firm's malware scanner (a device enrolled with the inspector
    /// role): scan every shared file with clamd and post signed verdicts.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Inspect {
        #[command(subcommand)]
        example: Option<ExampleCmd>,
        /// A TOML file of this command's flags (`config-example` prints one).
        #[arg(long, env = "CLOISTER_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// clamd's TCP address.
        #[arg(long, default_value = "127.0.0.1:3310")]
        clamd: String,
        /// One pass, then exit.
        #[arg(long)]
        once: bool,
        #[arg(long, default_value_t = 5)]
        interval_secs: u64,
    },
    /// Rooms.
    #[command(subcommand)]
    Room(room_cmd::RoomCmd),
    /// The tenant's audit transparency log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// A transparency-log witness (cosigns checkpoints along one history).
    #[command(subcommand)]
    Witness(witness_cmd::WitnessCmd),
    /// Open (or create) the 1:1 conversation with USER; prints its room id.
    Im { user: String },
    /// Send a message or a file.
    Send {
        room: String,
        text: Option<String>,
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
    },
    /// Read history, decrypted and verified.
    Read {
        room: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        before: Option<u64>,
    },
    /// Follow a room live.
    Tail {
        room: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// The tenant's compliance vault service.
    #[command(subcommand)]
    Vault(compliance_cmd::VaultCmd),
    /// Compliance: search, cases, approvals, export, retention.
    #[command(subcommand)]
    Compliance(compliance_cmd::ComplianceCmd),
    /// eDiscovery exports.
    #[command(subcommand)]
    Export(compliance_cmd::ExportCmd),
    /// Download and decrypt the file sent in message SEQ of ROOM.
    GetFile {
        room: String,
        seq: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum KmCmd {
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
    },
    /// Print a commented example of `km serve --config FILE`.
    ConfigExample,
}

/// `cloister SERVICE config-example`.
#[derive(Subcommand)]
enum ExampleCmd {
    /// Print a commented example of this service's `--config FILE`.
    ConfigExample,
}

/// The server's data directory and database (as [`cloister_cli::DataArgs`];
/// optional to clap only so that `server config-example` needs neither).
#[derive(Args)]
struct ServerData {
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
struct KmPass {
    /// File holding the KM passphrase (else $CLOISTER_KM_PASSPHRASE).
    #[arg(long = "km-passphrase-file")]
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AdminCmd {
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
    /// The tenant's threshold escrow key.
    #[command(subcommand)]
    Escrow(EscrowCmd),
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

#[derive(Subcommand)]
enum EscrowCmd {
    /// Create the escrow key and split it among custodians (once per tenant).
    Init {
        /// A custodian user (repeat; each needs an enrolled device).
        #[arg(long = "custodian", required = true)]
        custodians: Vec<String>,
        /// How many custodians must approve a decryption.
        #[arg(long)]
        threshold: u8,
    },
    /// Show the KM-signed escrow descriptor.
    Show,
}

#[derive(Subcommand)]
enum AuditCmd {
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

fn read_secret(file: Option<&Path>, env: &str) -> Result<Vec<u8>, BoxError> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        return Ok(s.trim_end_matches(['\n', '\r']).as_bytes().to_vec());
    }
    match std::env::var(env) {
        Ok(v) if !v.is_empty() => Ok(v.into_bytes()),
        _ => Err(format!("no passphrase: set ${env} or pass a passphrase file").into()),
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, BoxError>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| e.to_string().into())
}

struct Ctx {
    home: Option<PathBuf>,
    pass_file: Option<PathBuf>,
    json: bool,
    /// `--ca-file`: whom this process trusts for https:// services.
    ca_file: Option<PathBuf>,
}

impl Ctx {
    fn home(&self) -> Result<&Path, BoxError> {
        self.home
            .as_deref()
            .ok_or_else(|| "no device profile: pass --home DIR or set CLOISTER_HOME".into())
    }
    fn client(&self) -> Result<Client, BoxError> {
        let pass = read_secret(self.pass_file.as_deref(), "CLOISTER_PASSPHRASE")?;
        Ok(Client::open(
            cloister_tls::http_client(),
            self.home()?,
            &pass,
        )?)
    }
    fn emit(&self, human: impl std::fmt::Display, machine: serde_json::Value) {
        if self.json {
            println!("{machine}");
        } else {
            println!("{human}");
        }
    }
}

/// Print what the device noticed its server doing, from alert `from` on;
/// returns how many there are now.
fn print_alerts(c: &Client, from: usize) -> usize {
    let a = c.alerts();
    for line in a.iter().skip(from) {
        eprintln!("ALERT: {line}");
    }
    a.len()
}

/// Resolve a room argument: a room id, or the name of one of the user's rooms.
async fn resolve_room(c: &Client, s: &str) -> Result<RoomId, BoxError> {
    if let Ok(id) = s.parse::<RoomId>() {
        return Ok(id);
    }
    // Names come from the rooms' verified logs, never the server's list.
    Ok(c.resolve_room_name(s).await?)
}

fn show(r: &Received) -> String {
    let when = r.ts / 1000;
    let body = match &r.content {
        Content::Text { text } => text.clone(),
        Content::File { name, size, .. } => format!(
            "[file {name}, {size} bytes; cloister get-file {} {}]",
            r.room, r.seq
        ),
    };
    format!(
        "#{:<6} epoch {} {} {}: {}",
        r.seq, r.epoch, when, r.sender, body
    )
}

fn received_json(r: &Received) -> serde_json::Value {
    let content = match &r.content {
        Content::Text { text } => json!({"type": "text", "text": text}),
        Content::File { name, size, .. } => json!({"type": "file", "name": name, "size": size}),
    };
    json!({"seq": r.seq, "id": r.id.to_hex(), "room": r.room.to_hex(), "epoch": r.epoch,
           "sender": r.sender, "device": r.device.to_hex(), "ts": r.ts, "verified": true, "content": content})
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let ca_file = cli.ca_file;
    cloister_cli::tls_args::set_outgoing(ca_file.as_ref(), None)?;
    let ctx = Ctx {
        home: cli.home,
        pass_file: cli.passphrase_file,
        json: cli.json,
        ca_file: ca_file.clone(),
    };
    match cli.cmd {
        Cmd::Demo { data_dir, tls } => {
            let ok = cloister_cli::demo::run(data_dir.as_deref(), ctx.json, tls).await?;
            if !ok {
                return Err("the demo found a problem (see above)".into());
            }
        }
        Cmd::Bench(args) => cloister_cli::bench::run(args, ctx.json).await?,
        Cmd::BenchFirms(args) => cloister_cli::bench_firms::run(args, ctx.json).await?,
        Cmd::Km(KmCmd::Init {
            data:
                cloister_cli::DataArgs {
                    data_dir,
                    database_url,
                },
            tenant,
            pass,
            pkcs11,
        }) => {
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
        Cmd::Km(KmCmd::ConfigExample) => {
            print!("{}", cloister_cli::config::example::<Cli>(&["km", "serve"]));
        }
        Cmd::Server {
            example: Some(ExampleCmd::ConfigExample),
            ..
        } => print!("{}", cloister_cli::config::example::<Cli>(&["server"])),
        Cmd::Inspect {
            example: Some(ExampleCmd::ConfigExample),
            ..
        } => print!("{}", cloister_cli::config::example::<Cli>(&["inspect"])),
        Cmd::Km(KmCmd::Serve {
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
        }) => {
            if key_lease == 0 {
                return Err("--key-lease must be at least 1 second".into());
            }
            tls.set_outgoing(ca_file.as_ref())?;
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
        Cmd::Server {
            example: None,
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
        } => {
            // clap requires it unless `config-example` is asked for
            let data_dir = data_dir.ok_or("--data-dir is required")?;
            tls.set_outgoing(ca_file.as_ref())?;
            let server_tls = tls.load()?;
            // Nodes share one database: a node's own SQLite file cannot be it.
            if nats.is_some()
                && cloister_store::backend_of(database_url.as_deref().unwrap_or("sqlite:"))?
                    != cloister_store::Backend::Postgres
            {
                return Err(
                    "--nats needs --database-url postgres://… (the nodes share one database)"
                        .into(),
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
                cloister_server::Server::open_url(&data_dir, database_url.as_deref(), config)
                    .await?;
            let l = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            eprintln!(
                "server listening on {}://{}; operator token in {}",
                tls.scheme(),
                l.local_addr()?,
                cloister_server::operator_token_path(&data_dir).display()
            );
            ops.serve(
                server_tls.as_ref(),
                cloister_http::ops::ops_router(server.metrics().clone(), server.ready_check()),
            )
            .await?;
            cloister_http::serve_with(
                l,
                server_tls.as_ref(),
                cloister_server::router(server),
                shutdown_signal(),
            )
            .await?;
        }
        Cmd::Admin(AdminCmd::RegisterTenant {
            server,
            km,
            operator_token_file,
        }) => {
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
        Cmd::Admin(AdminCmd::Backup { data_dir, out }) => {
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
        Cmd::Admin(AdminCmd::Restore { from, data_dir }) => {
            let m = cloister_cli::backup::restore(&from, &data_dir)?;
            ctx.emit(
                cloister_cli::backup::describe(&m),
                serde_json::to_value(&m)?,
            );
        }
        Cmd::Admin(AdminCmd::AddUser {
            user,
            admin,
            roles,
            guest,
        }) => {
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
        Cmd::Admin(AdminCmd::DisableUser { user }) => {
            let c = ctx.client()?;
            let u: UserId = parse(&user)?;
            c.admin_disable_user(&u).await?;
            ctx.emit(
                format!("{u} disabled"),
                json!({"user": u, "status": "disabled"}),
            );
        }
        Cmd::Admin(AdminCmd::RevokeDevice { device }) => {
            let c = ctx.client()?;
            let d: DeviceId = parse(&device)?;
            c.admin_revoke_device(&d).await?;
            ctx.emit(
                format!("device {d} revoked"),
                json!({"device": d, "status": "revoked"}),
            );
        }
        Cmd::Admin(AdminCmd::Escrow(EscrowCmd::Init {
            custodians,
            threshold,
        })) => {
            let c = ctx.client()?;
            let us = custodians
                .iter()
                .map(|u| parse(u))
                .collect::<Result<Vec<UserId>, _>>()?;
            let d = c.admin_escrow_init(&us, threshold).await?;
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
        Cmd::Admin(AdminCmd::Escrow(EscrowCmd::Show)) => {
            let c = ctx.client()?;
            let d = c.escrow_info().await?;
            let names: Vec<String> = d.custodians.iter().map(|u| u.to_string()).collect();
            ctx.emit(
                format!(
                    "escrow key {} threshold {} of {}: {}",
                    b64std(&d.public.0),
                    d.threshold,
                    names.len(),
                    names.join(", ")
                ),
                serde_json::to_value(&d)?,
            );
        }
        Cmd::Admin(AdminCmd::ListUsers) => {
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
        Cmd::Enrol {
            server,
            km,
            user,
            code,
        } => {
            let pass = read_secret(ctx.pass_file.as_deref(), "CLOISTER_PASSPHRASE")?;
            let u: UserId = parse(&user)?;
            let c = Client::enrol(
                cloister_tls::http_client(),
                &server,
                &km,
                &u,
                &code,
                Storage::Dir {
                    path: ctx.home()?,
                    passphrase: &pass,
                    cost: Cost::DEFAULT,
                },
            )
            .await?;
            ctx.emit(
                format!("enrolled {} as device {}", c.user(), c.device()),
                json!({"user": c.user(), "device": c.device(), "tenant": c.tenant()}),
            );
        }
        Cmd::Whoami => {
            let c = ctx.client()?;
            let p = c.profile();
            ctx.emit(
                format!("{} device {} (tenant {}, server {}, KM {})", p.user, p.device, p.tenant, p.server, p.km),
                json!({"user": p.user, "device": p.device, "tenant": p.tenant, "server": p.server, "km": p.km}),
            );
        }
        Cmd::Room(rc) => room_cmd::room_cmd(&ctx, rc).await?,
        Cmd::Vault(vc) => compliance_cmd::vault_cmd(&ctx, vc).await?,
        Cmd::Witness(wc) => witness_cmd::witness_cmd(&ctx, wc).await?,
        Cmd::Admin(AdminCmd::Vault(vc)) => compliance_cmd::admin_vault_cmd(&ctx, vc).await?,
        Cmd::Admin(AdminCmd::Controls(cc)) => controls_cmd::admin_cmd(&ctx, cc).await?,
        Cmd::Admin(AdminCmd::Trust(tc)) => trust_cmd::trust_cmd(&ctx, tc).await?,
        Cmd::Directory(dc) => controls_cmd::directory_cmd(&ctx, dc).await?,
        Cmd::Connect(cc) => connect_cmd::connect_cmd(&ctx, cc).await?,
        Cmd::Entitlements => controls_cmd::entitlements_cmd(&ctx).await?,
        Cmd::Inspect {
            example: None,
            config: _,
            clamd,
            once,
            interval_secs,
        } => {
            let mut insp = cloister_cli::inspect::Inspector::new(
                ctx.client()?,
                cloister_cli::inspect::Clamd { addr: clamd },
            );
            loop {
                let r = insp.pass().await?;
                for (room, id, sig) in &r.infected {
                    eprintln!("INFECTED: message {id} in room {room}: {sig}");
                }
                for f in &r.failed {
                    eprintln!("could not scan: {f}");
                }
                ctx.emit(
                    format!("{} rooms, {} files scanned, {} infected", r.rooms, r.scanned, r.infected.len()),
                    json!({"rooms": r.rooms, "scanned": r.scanned, "infected": r.infected.len(), "failed": r.failed}),
                );
                if once {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(interval_secs.max(1))).await;
            }
        }
        Cmd::Compliance(cc) => compliance_cmd::compliance_cmd(&ctx, cc).await?,
        Cmd::Export(ec) => compliance_cmd::export_cmd(&ctx, ec)?,
        Cmd::Audit(ac) => audit_cmd(&ctx, ac).await?,
        Cmd::Im { user } => {
            let c = ctx.client()?;
            let room = c.im(&parse(&user)?).await?;
            ctx.emit(room.to_hex(), json!({"room": room}));
        }
        Cmd::Send { room, text, file } => {
            let c = ctx.client()?;
            let room = resolve_room(&c, &room).await?;
            let (id, seq) = match (text, file) {
                (Some(t), None) => c.send_text(&room, &t).await?,
                (None, Some(f)) => c.send_file(&room, &f).await?,
                _ => return Err("give either TEXT or --file PATH".into()),
            };
            print_alerts(&c, 0);
            ctx.emit(
                format!("sent #{seq} ({id})"),
                json!({"room": room, "seq": seq, "id": id, "alerts": c.alerts()}),
            );
        }
        Cmd::Read {
            room,
            limit,
            before,
        } => {
            let c = ctx.client()?;
            let room = resolve_room(&c, &room).await?;
            let msgs = c.read(&room, limit, before).await?;
            let mut lines = Vec::new();
            let mut items = Vec::new();
            let mut bad = 0;
            for m in &msgs {
                match m {
                    Ok(r) => {
                        lines.push(show(r));
                        items.push(received_json(r));
                    }
                    Err(e) => {
                        bad += 1;
                        lines.push(format!("!! {e}"));
                        items.push(json!({"error": e.to_string()}));
                    }
                }
            }
            print_alerts(&c, 0);
            ctx.emit(
                lines.join("\n"),
                json!({"room": room, "messages": items, "alerts": c.alerts()}),
            );
            if bad > 0 {
                return Err(format!("{bad} message(s) failed verification").into());
            }
        }
        Cmd::Tail { room, count } => {
            let c = ctx.client()?;
            let room = resolve_room(&c, &room).await?;
            // new messages only; a dropped connection is reconnected (the
            // next node behind the load balancer) and what it missed is read
            // from history, so nothing is skipped or shown twice
            let mut follow = c.follow(room, c.newest_seq(&room).await?, TAIL_RETRIES);
            let mut n = 0;
            let mut alerted = print_alerts(&c, 0);
            while count.is_none_or(|k| n < k) {
                let next = follow.next().await;
                alerted = print_alerts(&c, alerted);
                match next {
                    Ok(r) => ctx.emit(show(&r), received_json(&r)),
                    Err(e @ cloister_client::ClientError::Network { .. }) => {
                        return Err(format!("lost the live stream: {e}").into());
                    }
                    Err(e) => eprintln!("!! {e}"),
                }
                n += 1;
            }
        }
        Cmd::GetFile { room, seq, out } => {
            let c = ctx.client()?;
            let room = resolve_room(&c, &room).await?;
            let page = c.read(&room, 1, Some(seq + 1)).await?;
            let msg = page
                .into_iter()
                .next()
                .ok_or_else(|| format!("no message #{seq} in this room"))??;
            if msg.seq != seq {
                return Err(format!("no message #{seq} in this room").into());
            }
            // refused if the firm's malware scanner found it infected
            let n = c.open_file(&msg, &out).await?;
            ctx.emit(
                format!("wrote {} ({n} bytes, verified)", out.display()),
                json!({"out": out, "bytes": n}),
            );
        }
    }
    Ok(())
}

/// Failed reconnections in a row before `tail` gives up (about a minute).
const TAIL_RETRIES: u32 = 16;

fn b64std(b: &[u8]) -> String {
    cloister_proto::b64::encode(b)
}

async fn audit_cmd(ctx: &Ctx, ac: AuditCmd) -> Result<(), BoxError> {
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

fn main() -> ExitCode {
    let cli = match cloister_cli::config::parse::<Cli>(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(cloister_cli::config::ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    cloister_tls::install_provider();
    // The demo and the load tool print their own story; services log warnings.
    let quiet = matches!(
        cli.cmd,
        Cmd::Demo { .. } | Cmd::Bench(_) | Cmd::BenchFirms(_)
    );
    let filter = std::env::var("CLOISTER_LOG")
        .unwrap_or_else(|_| if quiet { "error" } else { "warn" }.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = if cli.log_format == "json" {
        logs.json().flatten_event(true).try_init()
    } else {
        logs.try_init()
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// No flag of any command carries a secret's value: passphrases, PINs
    /// and tokens come from files or the environment.
    #[test]
    fn no_flag_takes_a_secret() {
        fn walk(c: &clap::Command, path: String, bad: &mut Vec<String>) {
            for a in c.get_arguments() {
                if let Some(l) = a.get_long()
                    && cloister_cli::config::is_secret_value(l)
                {
                    bad.push(format!("{path} --{l}"));
                }
            }
            for s in c.get_subcommands() {
                walk(s, format!("{path} {}", s.get_name()), bad);
            }
        }
        let mut bad = Vec::new();
        walk(&Cli::command(), "cloister".into(), &mut bad);
        assert!(bad.is_empty(), "flags that take a secret: {bad:?}");
    }
}
