//! `cloister inspect`: the firm's malware scanner. A device enrolled with
//! the inspector role reads every file shared in its tenant's rooms (each
//! key release to it is in the KM's audit log, and in `who-has-keys`),
//! streams the decrypted bytes to ClamAV's `clamd`, and posts a signed
//! verdict that every member's device checks before it opens the file.
//!
//! ```text
//!  tenant rooms ─▶ history ─▶ file message ─▶ download + decrypt (temp file)
//!      ─▶ clamd INSTREAM ─▶ Verdict{sha256, infected, signature, engine} ─▶ server
//! ```

use crate::BoxError;
use cloister_client::Client;
use cloister_proto::server::{Content, Verdict};
use cloister_proto::{MessageId, RoomId, now_millis};
use std::collections::HashSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How clamd is reached.
#[derive(Debug, Clone)]
pub struct Clamd {
    pub addr: String,
}

/// What clamd said of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    Clean,
    Infected(String),
}

/// Largest chunk sent to clamd in one INSTREAM frame.
const CHUNK: usize = 64 * 1024;
/// Longest reply read from clamd.
const MAX_REPLY: usize = 4096;

impl Clamd {
    async fn connect(&self) -> Result<tokio::net::TcpStream, BoxError> {
        tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("cannot reach clamd at {}: {e}", self.addr).into())
    }

    async fn reply(s: &mut tokio::net::TcpStream) -> Result<String, BoxError> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.contains(&0) || buf.len() > MAX_REPLY {
                break;
            }
        }
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).trim().to_owned())
    }

    /// The engine's name and version (`ClamAV 1.4.6`).
    pub async fn version(&self) -> Result<String, BoxError> {
        let mut s = self.connect().await?;
        s.write_all(b"zVERSION\0").await?;
        let r = Self::reply(&mut s).await?;
        Ok(r.split('/').next().unwrap_or("ClamAV").to_owned())
    }

    /// Scan a file's bytes (INSTREAM).
    pub async fn scan_file(&self, path: &std::path::Path) -> Result<Scan, BoxError> {
        let mut f = tokio::fs::File::open(path).await?;
        let mut s = self.connect().await?;
        s.write_all(b"zINSTREAM\0").await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            s.write_all(&(n as u32).to_be_bytes()).await?;
            s.write_all(&buf[..n]).await?;
        }
        s.write_all(&0u32.to_be_bytes()).await?;
        let r = Self::reply(&mut s).await?;
        // "stream: OK" | "stream: <signature> FOUND" | "... ERROR"
        let body = r.strip_prefix("stream:").unwrap_or(&r).trim();
        if body == "OK" {
            Ok(Scan::Clean)
        } else if let Some(sig) = body.strip_suffix("FOUND") {
            Ok(Scan::Infected(sig.trim().to_owned()))
        } else {
            Err(format!("clamd could not scan the file: {r}").into())
        }
    }
}

/// One pass's figures.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    pub rooms: usize,
    pub scanned: usize,
    pub infected: Vec<(RoomId, MessageId, String)>,
    pub failed: Vec<String>,
}

/// The scanner: what it scanned already (a verdict of its own on the
/// server also counts).
pub struct Inspector {
    pub client: Client,
    pub clamd: Clamd,
    seen: HashSet<MessageId>,
    engine: Option<String>,
}

/// Messages read per room and pass.
const HISTORY: u32 = 500;

impl Inspector {
    pub fn new(client: Client, clamd: Clamd) -> Inspector {
        Inspector {
            client,
            clamd,
            seen: HashSet::new(),
            engine: None,
        }
    }

    /// Scan every file shared in the tenant's rooms that has no verdict yet.
    pub async fn pass(&mut self) -> Result<PassReport, BoxError> {
        if self.engine.is_none() {
            self.engine = Some(self.clamd.version().await?);
        }
        let engine = self.engine.clone().unwrap_or_default();
        let mut rep = PassReport::default();
        let rooms = self.client.tenant_rooms().await?;
        rep.rooms = rooms.len();
        for r in rooms {
            let msgs = match self.client.read(&r.room, HISTORY, None).await {
                Ok(m) => m,
                Err(e) => {
                    rep.failed.push(format!("room {}: {e}", r.room));
                    continue;
                }
            };
            for m in msgs.into_iter().flatten() {
                let Content::File { sha256, name, .. } = m.content.said() else {
                    continue;
                };
                if self.seen.contains(&m.id) {
                    continue;
                }
                // a verdict of mine from an earlier run
                let mine = self
                    .client
                    .verdicts(&m.room, &m.id)
                    .await
                    .map(|vs| vs.iter().any(|v| v.engine == engine && v.sha256 == *sha256))
                    .unwrap_or(false);
                if mine {
                    self.seen.insert(m.id);
                    continue;
                }
                let tmp = tempfile::NamedTempFile::new()?;
                if let Err(e) = self.client.get_file(&m.content, tmp.path()).await {
                    rep.failed.push(format!("{name} in room {}: {e}", m.room));
                    continue;
                }
                let scan = self.clamd.scan_file(tmp.path()).await?;
                let (infected, signature) = match &scan {
                    Scan::Clean => (false, String::new()),
                    Scan::Infected(sig) => (true, sig.clone()),
                };
                let v = Verdict {
                    tenant: self.client.tenant().clone(),
                    room: m.room,
                    message_id: m.id,
                    sha256: *sha256,
                    infected,
                    signature: signature.clone(),
                    engine: engine.clone(),
                    ts: now_millis(),
                };
                self.client.post_verdict(&v).await?;
                rep.scanned += 1;
                if infected {
                    tracing::warn!(room = %m.room, file = %name, %signature, "infected file");
                    rep.infected.push((m.room, m.id, signature));
                }
                self.seen.insert(m.id);
            }
        }
        Ok(rep)
    }
}

/// The EICAR anti-virus test file: harmless bytes every scanner is meant
/// to report, used by the tests and the demo.
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// A clamd of our own (tests, demo): Debian's `clamd` with a one-line
/// signature database that knows the EICAR file, on a loopback port.
/// Stopped when dropped.
pub struct LocalClamd {
    pub clamd: Clamd,
    child: std::process::Child,
}

impl LocalClamd {
    /// Is Debian's clamd installed (scripts/tools installs it)?
    pub fn available() -> bool {
        ["/usr/sbin/clamd", "/usr/bin/clamd"]
            .iter()
            .any(|p| std::path::Path::new(p).exists())
    }

    pub async fn start(dir: &std::path::Path) -> Result<LocalClamd, BoxError> {
        let bin = ["/usr/sbin/clamd", "/usr/bin/clamd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or(
                "clamd is not installed (Debian package clamav-daemon; scripts/tools installs it)",
            )?;
        let db = dir.join("clamav-db");
        std::fs::create_dir_all(&db)?;
        std::fs::write(
            db.join("cloister-test.ndb"),
            format!("Cloister.Test.EICAR:0:*:{}\n", hex::encode(EICAR)),
        )?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let conf = dir.join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "DatabaseDirectory {}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nForeground yes\nLogFile {}\nPidFile {}\nUser root\n",
                db.display(),
                dir.join("clamd.log").display(),
                dir.join("clamd.pid").display()
            ),
        )?;
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let mut me = LocalClamd {
            clamd: Clamd {
                addr: format!("127.0.0.1:{port}"),
            },
            child,
        };
        for _ in 0..300 {
            if me.clamd.version().await.is_ok() {
                return Ok(me);
            }
            if let Ok(Some(st)) = me.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("clamd.log")).unwrap_or_default();
                return Err(format!("clamd exited ({st}): {log}").into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err("clamd did not answer within 30 s".into())
    }
}

impl Drop for LocalClamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
