//! `cloister`: one binary for the services, users, admins, the demo and the load tool.
#![forbid(unsafe_code)]

mod admin_cmd;
mod audit_cmd;
mod compliance_cmd;
mod connect_cmd;
mod controls_cmd;
mod device_cmd;
mod enrol_cmd;
mod escrow_cmd;
mod gateway_cmd;
mod room_cmd;
mod rotate_cmd;
mod service_cmd;
mod trust_cmd;
mod witness_cmd;

use clap::{Parser, Subcommand};
use cloister_cli::BoxError;
use cloister_client::{Client, Received};
use cloister_proto::RoomId;
use cloister_proto::server::Content;
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
    /// Messages through the firm's gateway to a real Synapse and back:
    /// throughput and added latency each way.
    BenchGateway(cloister_cli::bench_gateway::GatewayBenchArgs),
    /// The tenant Key Manager.
    #[command(subcommand)]
    Km(service_cmd::KmCmd),
    /// The messaging server (`server config-example` prints a config file).
    Server(service_cmd::ServerArgs),
    /// Tenant administration (needs an admin device).
    #[command(subcommand)]
    Admin(admin_cmd::AdminCmd),
    /// The firm's directory.
    #[command(subcommand)]
    Directory(controls_cmd::DirectoryCmd),
    /// Connections with users of other firms (request, accept, reject, list, remove).
    #[command(subcommand)]
    Connect(connect_cmd::ConnectCmd),
    /// My entitlements.
    Entitlements,
    /// Enrol this device with a one-time code from an admin.
    Enrol(enrol_cmd::EnrolArgs),
    /// The MDM's side of attestation: its key, and endorsements of managed devices' keys.
    #[command(subcommand)]
    Mdm(enrol_cmd::MdmCmd),
    /// Show this device's identity.
    Whoami,
    /// This device's certificate and my other devices (renew, list, revoke a lost one).
    #[command(subcommand)]
    Device(device_cmd::DeviceCmd),
    /// Run the firm's malware scanner (a device enrolled with the inspector
    /// role): scan every shared file with clamd and post signed verdicts.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Inspect {
        #[command(subcommand)]
        example: Option<service_cmd::ExampleCmd>,
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
    /// The app: this device's web UI on a loopback address (keys and
    /// plaintext stay in this process; the browser only renders).
    App {
        /// Loopback address to listen on (port 0: a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Print the launch link only; do not open a browser.
        #[arg(long)]
        no_open: bool,
    },
    /// Rooms.
    #[command(subcommand)]
    Room(room_cmd::RoomCmd),
    /// The tenant's audit transparency log.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCmd),
    /// A transparency-log witness (cosigns checkpoints along one history).
    #[command(subcommand)]
    Witness(witness_cmd::WitnessCmd),
    /// The firm's gateway to another network (run on the gateway user's
    /// device; ADR 0029).
    #[command(subcommand)]
    Gateway(gateway_cmd::GatewayCmd),
    /// Open (or create) the 1:1 conversation with USER; prints its room id.
    /// A new IM is managed unless a firm's policy requires MLS (or --mode).
    Im {
        user: String,
        #[arg(long, value_parser = room_cmd::parse_mode)]
        mode: Option<cloister_proto::room::RoomMode>,
    },
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
    let body = match r.content.said() {
        Content::Text { text } => text.clone(),
        Content::File { name, size, .. } => format!(
            "[file {name}, {size} bytes; cloister get-file {} {}]",
            r.room, r.seq
        ),
        Content::Relayed { .. } => "[relayed twice]".into(),
    };
    let who = match &r.content {
        Content::Relayed { from, network, .. } => {
            format!("{from} (on {network}, via {})", r.sender)
        }
        _ => r.sender.to_string(),
    };
    format!("#{:<6} epoch {} {} {}: {}", r.seq, r.epoch, when, who, body)
}

fn received_json(r: &Received) -> serde_json::Value {
    let mut content = match r.content.said() {
        Content::Text { text } => json!({"type": "text", "text": text}),
        Content::File { name, size, .. } => json!({"type": "file", "name": name, "size": size}),
        Content::Relayed { .. } => json!({"type": "relayed"}),
    };
    if let Content::Relayed {
        network, from, id, ..
    } = &r.content
    {
        content["relayed"] = json!({"network": network, "from": from, "id": id});
    }
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
        Cmd::BenchGateway(args) => cloister_cli::bench_gateway::run(args, ctx.json).await?,
        Cmd::Km(k) => service_cmd::km_cmd(&ctx, ca_file.as_ref(), k).await?,
        Cmd::Server(a) => service_cmd::server_cmd(ca_file.as_ref(), a).await?,
        Cmd::Inspect {
            example: Some(service_cmd::ExampleCmd::ConfigExample),
            ..
        } => print!("{}", cloister_cli::config::example::<Cli>(&["inspect"])),
        Cmd::Admin(ac) => admin_cmd::admin_cmd(&ctx, ac).await?,
        Cmd::Enrol(a) => enrol_cmd::enrol(&ctx, a).await?,
        Cmd::Mdm(mc) => enrol_cmd::mdm_cmd(&ctx, mc)?,
        Cmd::Whoami => {
            let c = ctx.client()?;
            let p = c.profile();
            ctx.emit(
                format!("{} device {} (tenant {}, server {}, KM {})", p.user, p.device, p.tenant, p.server, p.km),
                json!({"user": p.user, "device": p.device, "tenant": p.tenant, "server": p.server, "km": p.km}),
            );
        }
        Cmd::App { listen, no_open } => {
            let running = cloister_app::start(cloister_app::AppConfig {
                home: ctx.home()?.to_path_buf(),
                listen,
                http: cloister_tls::http_client(),
            })
            .await?;
            // the link carries a one-time secret: it is printed for this
            // user only, and spent by the first browser that opens it
            ctx.emit(
                format!(
                    "Cloister app at {}\nopen (once): {}\nCtrl-C stops it",
                    running.url, running.launch_url
                ),
                json!({"url": running.url, "launch_url": running.launch_url}),
            );
            if !no_open {
                let _ = std::process::Command::new("xdg-open")
                    .arg(&running.launch_url)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
            }
            shutdown_signal().await;
            running.task.abort();
        }
        Cmd::Room(rc) => room_cmd::room_cmd(&ctx, rc).await?,
        Cmd::Device(dc) => device_cmd::device_cmd(&ctx, dc).await?,
        Cmd::Vault(vc) => compliance_cmd::vault_cmd(&ctx, vc).await?,
        Cmd::Witness(wc) => witness_cmd::witness_cmd(&ctx, wc).await?,
        Cmd::Gateway(gc) => gateway_cmd::gateway_cmd(&ctx, gc).await?,
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
        Cmd::Audit(ac) => audit_cmd::audit_cmd(&ctx, ac).await?,
        Cmd::Im { user, mode } => {
            let c = ctx.client()?;
            let room = c.im_with_mode(&parse(&user)?, mode).await?;
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
        Cmd::Demo { .. } | Cmd::Bench(_) | Cmd::BenchFirms(_) | Cmd::BenchGateway(_)
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
