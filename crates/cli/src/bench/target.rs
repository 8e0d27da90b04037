//! What `cloister bench` runs against: a KM and server(s) it starts as
//! child processes (one node on SQLite or PostgreSQL, or several nodes on
//! PostgreSQL and NATS), the same inside its own process, or a deployment
//! that is already running (its server URLs, its KM, an admin device).

use super::BenchArgs;
use crate::tls_args::LocalTls;
use crate::{BoxError, Stack, StackOptions};
use cloister_client::{Client, Storage};
use cloister_proto::UserId;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Child processes, killed on drop.
pub(super) struct Procs {
    children: Vec<std::process::Child>,
    /// The server nodes' pids (for CPU and memory).
    pub server_pids: Vec<u32>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where the bench's clients go.
pub(super) struct Target {
    pub km_url: String,
    /// Clients are spread over these, round robin.
    pub server_urls: Vec<String>,
    pub admin: std::sync::Arc<Client>,
    pub procs: Option<Procs>,
    pub stack: Option<Stack>,
    pub mode: String,
}

impl Target {
    /// The sum over the started server nodes of `f(pid)`; `None` for a
    /// deployment the bench did not start (its CPU is not ours to read).
    pub fn servers_sum(&self, f: impl Fn(u32) -> Option<f64>) -> Option<f64> {
        let p = self.procs.as_ref()?;
        p.server_pids.iter().map(|pid| f(*pid)).sum()
    }
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_up(http: &reqwest::Client, url: &str) -> Result<(), BoxError> {
    for _ in 0..200 {
        if http.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{url} did not come up").into())
}

pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// CPU seconds (user + system) a process has used so far.
pub(super) fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Start `cloister km` and `nodes` × `cloister server` as children.
/// Flags that turn a KM's rate limits off.
pub(crate) const KM_LIMITS_OFF: [&str; 8] = [
    "--limit-requests",
    "0",
    "--limit-key-requests",
    "0",
    "--limit-enrolments",
    "0",
    "--limit-per-address",
    "0",
];

/// Flags that turn a server's rate limits off.
pub(crate) const SERVER_LIMITS_OFF: [&str; 6] = [
    "--limit-posts",
    "0",
    "--limit-uploads",
    "0",
    "--limit-per-address",
    "0",
];

async fn spawn(
    a: &BenchArgs,
    dir: &Path,
    http: &reqwest::Client,
    tls: Option<&LocalTls>,
) -> Result<(Procs, String, Vec<String>, String), BoxError> {
    let exe = std::env::current_exe()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // A service's certificate and key, as flags.
    let tls_flags = |name: &str| -> Result<Vec<std::ffi::OsString>, BoxError> {
        let Some(t) = tls else { return Ok(Vec::new()) };
        let (cert, key) = t.issue(name)?;
        Ok(vec![
            "--tls-cert".into(),
            cert.into(),
            "--tls-key".into(),
            key.into(),
        ])
    };
    let pass = "bench KM passphrase (development only)";
    let out = Command::new(&exe)
        .args(["--json", "km", "init", "--tenant", "bench", "--data-dir"])
        .arg(dir.join("km"))
        .env("CLOISTER_KM_PASSPHRASE", pass)
        .env_remove("CLOISTER_DATABASE_URL")
        .output()?;
    if !out.status.success() {
        return Err(format!("km init failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let init: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let code = init["code"]
        .as_str()
        .ok_or("km init printed no code")?
        .to_owned();
    let kp = free_port()?;
    let km = Command::new(&exe)
        .args([
            "km",
            "serve",
            "--listen",
            &format!("127.0.0.1:{kp}"),
            "--data-dir",
        ])
        .arg(dir.join("km"))
        .args(tls_flags("km")?)
        // the bench measures the KM, not its rate limiter
        .args(KM_LIMITS_OFF)
        .env("CLOISTER_KM_PASSPHRASE", pass)
        .env_remove("CLOISTER_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut procs = Procs {
        children: vec![km],
        server_pids: Vec::new(),
    };
    let mut server_urls = Vec::new();
    for n in 0..a.nodes {
        let sp = free_port()?;
        let mut c = Command::new(&exe);
        c.args([
            "server",
            "--listen",
            &format!("127.0.0.1:{sp}"),
            "--data-dir",
        ])
        .arg(dir.join(format!("server-{n}")))
        .args(tls_flags(&format!("server-{n}"))?)
        .args(SERVER_LIMITS_OFF)
        .env_remove("CLOISTER_DATABASE_URL")
        .env_remove("CLOISTER_NATS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(db) = &a.database_url {
            c.env("CLOISTER_DATABASE_URL", db);
        }
        if let Some(nats) = &a.nats {
            c.args(["--nats", nats, "--node", &format!("bench{n}")]);
        }
        let child = c.spawn()?;
        procs.server_pids.push(child.id());
        procs.children.push(child);
        let url = format!("{scheme}://127.0.0.1:{sp}");
        wait_up(http, &format!("{url}/v1/rooms")).await?;
        server_urls.push(url);
        if n == 0 && a.nodes > 1 {
            // the first node made the shared values; the others read them
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let km_url = format!("{scheme}://127.0.0.1:{kp}");
    wait_up(http, &format!("{km_url}/v1/info")).await?;
    let token =
        std::fs::read_to_string(cloister_server::operator_token_path(&dir.join("server-0")))?;
    let info = cloister_client::km_info(http, &km_url).await?;
    cloister_client::register_tenant(http, &server_urls[0], token.trim(), &info).await?;
    Ok((procs, km_url, server_urls, code))
}

/// Set up what the run targets.
pub(super) async fn target(
    a: &BenchArgs,
    dir: &Path,
    http: &reqwest::Client,
    tls: Option<&LocalTls>,
) -> Result<Target, BoxError> {
    let admin_user: UserId = "admin@bench".parse()?;
    if !a.servers.is_empty() {
        let km_url = a.km.clone().ok_or("--server needs --km")?;
        let home = a.admin_home.as_deref().ok_or(
            "--server needs --admin-home (an enrolled admin device; its passphrase in CLOISTER_PASSPHRASE)",
        )?;
        let pass = std::env::var("CLOISTER_PASSPHRASE")
            .map_err(|_| "set CLOISTER_PASSPHRASE to the admin device's passphrase")?;
        let admin = Client::open(http.clone(), home, pass.as_bytes())?;
        return Ok(Target {
            km_url,
            server_urls: a.servers.clone(),
            admin: admin.into(),
            procs: None,
            stack: None,
            mode: format!("a running deployment, {} server URL(s)", a.servers.len()),
        });
    }
    if a.nodes > 1 && (a.nats.is_none() || a.database_url.is_none()) {
        return Err("--nodes above 1 needs --database-url postgres://… and --nats URL".into());
    }
    if a.in_process {
        let mut o = StackOptions::new("bench".parse()?);
        o.cost = cloister_crypto::passphrase::Cost::TEST;
        o.server_database = a.database_url.clone();
        o.tls = tls.cloned();
        o.km_config.limits = cloister_km::KmLimits::off();
        o.server_config.limits = cloister_server::ServerLimits::off();
        o.vault_limits = cloister_vault::VaultLimits::off();
        let s = Stack::start(dir, o).await?;
        let code = s.admin_code.clone().ok_or("KM not fresh")?;
        let admin = Client::enrol(
            http.clone(),
            &s.server_url,
            &s.km_url,
            &admin_user,
            &code,
            Storage::Memory,
        )
        .await?;
        return Ok(Target {
            km_url: s.km_url.clone(),
            server_urls: vec![s.server_url.clone()],
            admin: admin.into(),
            procs: None,
            stack: Some(s),
            mode: "in-process".into(),
        });
    }
    let (procs, km_url, server_urls, code) = spawn(a, dir, http, tls).await?;
    let admin = Client::enrol(
        http.clone(),
        &server_urls[0],
        &km_url,
        &admin_user,
        &code,
        Storage::Memory,
    )
    .await?;
    let db = match &a.database_url {
        Some(u) if u.starts_with("postgres") => "PostgreSQL",
        _ => "SQLite",
    };
    Ok(Target {
        mode: format!(
            "separate processes, {} server node(s) on {db}{}",
            a.nodes,
            if tls.is_some() { ", TLS 1.3" } else { "" }
        ),
        km_url,
        server_urls,
        admin: admin.into(),
        procs: Some(procs),
        stack: None,
    })
}
