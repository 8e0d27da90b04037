//! A real Matrix homeserver (Synapse, from PyPI) on loopback, for the
//! gateway's tests, its benchmark and `cloister demo`. `scripts/tools`
//! installs it into `target/tools/synapse`; nothing here installs
//! anything. It runs with SQLite in its own folder, one application
//! service registration, open registration (for the tests' Matrix users)
//! and no federation or rate limits.

use crate::BoxError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `scripts/tools` puts Synapse's virtualenv, under the workspace.
pub const VENV: &str = "target/tools/synapse";

/// A running homeserver, stopped when dropped.
pub struct Synapse {
    child: tokio::process::Child,
    /// Its client-server API.
    pub url: String,
    pub server_name: String,
    pub dir: PathBuf,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Synapse's Python, if installed: `$CLOISTER_SYNAPSE` (a virtualenv) or
/// [`VENV`] under the workspace (found from the current folder upwards).
pub fn python() -> Option<PathBuf> {
    let venv = match std::env::var_os("CLOISTER_SYNAPSE") {
        Some(v) => PathBuf::from(v),
        None => {
            let mut d = std::env::current_dir().ok()?;
            loop {
                let c = d.join(VENV);
                if c.join("bin/python").exists() {
                    break c;
                }
                if !d.pop() {
                    return None;
                }
            }
        }
    };
    let py = venv.join("bin/python");
    py.exists().then_some(py)
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn config(dir: &Path, port: u16, registration: &Path) -> String {
    let d = dir.display();
    format!(
        r#"server_name: localhost
pid_file: {d}/homeserver.pid
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {d}/homeserver.db
media_store_path: {d}/media
signing_key_path: {d}/signing.key
log_config: {d}/log.yaml
report_stats: false
macaroon_secret_key: "{mac}"
form_secret: "{form}"
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
enable_metrics: false
enable_registration: true
enable_registration_without_verification: true
app_service_config_files: ["{reg}"]
rc_message: {{per_second: 100000, burst_count: 100000}}
rc_registration: {{per_second: 10000, burst_count: 10000}}
rc_login:
  address: {{per_second: 10000, burst_count: 10000}}
  account: {{per_second: 10000, burst_count: 10000}}
  failed_attempts: {{per_second: 10000, burst_count: 10000}}
rc_joins:
  local: {{per_second: 10000, burst_count: 10000}}
  remote: {{per_second: 10000, burst_count: 10000}}
rc_invites:
  per_room: {{per_second: 10000, burst_count: 10000}}
  per_user: {{per_second: 10000, burst_count: 10000}}
"#,
        mac = random_hex(),
        form = random_hex(),
        reg = registration.display()
    )
}

fn random_hex() -> String {
    let b: [u8; 16] = cloister_crypto::random_bytes().unwrap_or([7; 16]);
    hex::encode(b)
}

const LOG_CONFIG: &str = r#"version: 1
formatters:
  plain:
    format: '%(asctime)s %(levelname)s %(name)s %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: plain
    filename: LOGFILE
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
"#;

impl Synapse {
    /// Start a homeserver in `dir` with the application service
    /// `registration` (its text); ready when this returns.
    pub async fn start(python: &Path, dir: &Path, registration: &str) -> Result<Synapse, BoxError> {
        std::fs::create_dir_all(dir)?;
        let reg = dir.join("registration.yaml");
        std::fs::write(&reg, registration)?;
        std::fs::write(
            dir.join("log.yaml"),
            LOG_CONFIG.replace("LOGFILE", &dir.join("homeserver.log").display().to_string()),
        )?;
        let port = free_port()?;
        let cfg = dir.join("homeserver.yaml");
        std::fs::write(&cfg, config(dir, port, &reg))?;
        let keys = tokio::process::Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&cfg)
            .arg("--generate-keys")
            .output()
            .await?;
        if !keys.status.success() {
            return Err(format!(
                "synapse --generate-keys failed: {}",
                String::from_utf8_lossy(&keys.stderr)
            )
            .into());
        }
        let out = std::fs::File::create(dir.join("homeserver.out"))?;
        let child = tokio::process::Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&cfg)
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()?;
        let mut s = Synapse {
            child,
            url: format!("http://127.0.0.1:{port}"),
            server_name: "localhost".into(),
            dir: dir.to_owned(),
        };
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = http
                .get(format!("{}/_matrix/client/versions", s.url))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(s);
            }
            if let Some(st) = s.child.try_wait()? {
                return Err(format!(
                    "synapse exited ({st}): see {}",
                    dir.join("homeserver.out").display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = s.child.start_kill();
        Err("synapse did not answer within 30 s".into())
    }

    /// A Matrix user, registered through the client-server API (open
    /// registration, the dummy stage); returns (user id, access token).
    pub async fn register(
        &self,
        http: &reqwest::Client,
        name: &str,
        password: &str,
    ) -> Result<(String, String), BoxError> {
        let url = format!("{}/_matrix/client/v3/register", self.url);
        let body = serde_json::json!({"username": name, "password": password});
        let first: serde_json::Value = http.post(&url).json(&body).send().await?.json().await?;
        let session = first["session"].as_str().unwrap_or_default().to_owned();
        let mut body = body;
        body["auth"] = serde_json::json!({"type": "m.login.dummy", "session": session});
        let r = http.post(&url).json(&body).send().await?;
        let status = r.status();
        let v: serde_json::Value = r.json().await?;
        match (v["user_id"].as_str(), v["access_token"].as_str()) {
            (Some(u), Some(t)) if status.is_success() => Ok((u.to_owned(), t.to_owned())),
            _ => Err(format!("registering {name} on synapse: {status} {v}").into()),
        }
    }
}
