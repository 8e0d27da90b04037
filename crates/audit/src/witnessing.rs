//! Getting the log's checkpoints cosigned by witnesses (C2SP tlog-witness).
//!
//! ```text
//!  cosigned(): newest checkpoint ─▶ each witness: add-checkpoint{old, proof}
//!        409 (text/x.tlog.size) ─▶ retry once from the witness's size
//!  ─▶ the note with every cosignature line obtained
//! ```

use crate::AuditLog;
use cloister_http::ApiError;
use cloister_log::Checkpoint;
use cloister_log::witness::add_checkpoint_body;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The witnesses a log submits its checkpoints to.
pub struct Witnesses {
    urls: Vec<String>,
    http: reqwest::Client,
    /// The size each witness last cosigned (as far as this process knows).
    sizes: Mutex<HashMap<String, u64>>,
    /// The newest cosigned note.
    cosigned: Mutex<Option<(u64, String)>>,
    /// The log's newest key hand-over: (new verifier key, the checkpoint
    /// both keys signed), shown to a witness that still follows the old key.
    handover: Mutex<Option<(String, String)>>,
}

impl Witnesses {
    pub fn new(urls: &[String]) -> Witnesses {
        Witnesses {
            urls: urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            http: cloister_tls::http_client(),
            sizes: Mutex::new(HashMap::new()),
            cosigned: Mutex::new(None),
            handover: Mutex::new(None),
        }
    }

    /// The log handed over to `new_key` at `note` (signed by both keys).
    pub fn set_handover(&self, new_key: &str, note: &str) {
        if let Ok(mut h) = self.handover.lock() {
            *h = Some((new_key.to_owned(), note.to_owned()));
        }
    }

    /// Show a witness that refused the new key's signature the hand-over
    /// (from the size it last cosigned to the checkpoint both keys signed).
    async fn hand_over(&self, log: &AuditLog, url: &str, old: u64) -> Result<(), String> {
        let Some((key, note)) = self.handover.lock().ok().and_then(|h| h.clone()) else {
            return Err("the witness refused the log's signature".into());
        };
        let cp = cloister_log::note::split_note(&note)
            .ok()
            .and_then(|(t, _)| Checkpoint::parse_body(t).ok())
            .ok_or("the hand-over checkpoint is unreadable")?;
        let proof = proof_from(log, old, cp.size)?;
        let r = self
            .http
            .post(format!("{url}/log-key"))
            .body(format!(
                "{key}\n{}",
                add_checkpoint_body(old, &proof, &note)
            ))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let status = r.status();
        if !status.is_success() {
            let text = r.text().await.unwrap_or_default();
            return Err(format!("key hand-over refused: {status}: {}", text.trim()));
        }
        tracing::warn!(witness = %url, size = cp.size, "the witness follows the log's new key");
        if let Ok(mut m) = self.sizes.lock() {
            m.insert(url.to_owned(), cp.size);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// One witness's cosignature lines for `note`, or why not.
    async fn submit(
        &self,
        log: &AuditLog,
        url: &str,
        cp: &Checkpoint,
        note: &str,
    ) -> Result<String, String> {
        let mut old = self
            .sizes
            .lock()
            .ok()
            .and_then(|m| m.get(url).copied())
            .unwrap_or(0);
        let mut handed_over = false;
        for _ in 0..3 {
            let proof = proof_from(log, old, cp.size)?;
            let r = self
                .http
                .post(format!("{url}/add-checkpoint"))
                .body(add_checkpoint_body(old, &proof, note))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| format!("unreachable: {e}"))?;
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            if status.is_success() {
                if let Ok(mut m) = self.sizes.lock() {
                    m.insert(url.to_owned(), cp.size);
                }
                return signature_lines(&text);
            }
            if status == reqwest::StatusCode::CONFLICT
                && let Ok(size) = text.trim().parse::<u64>()
                && size != old
            {
                old = size;
                continue;
            }
            if status == reqwest::StatusCode::FORBIDDEN && !handed_over {
                handed_over = true;
                self.hand_over(log, url, old).await?;
                old = self
                    .sizes
                    .lock()
                    .ok()
                    .and_then(|m| m.get(url).copied())
                    .unwrap_or(old);
                continue;
            }
            return Err(format!("{status}: {}", text.trim()));
        }
        Err("the witness's size kept moving".into())
    }
}

/// The consistency proof a witness at size `old` needs for `size` (none
/// from an empty state or a size beyond it).
fn proof_from(log: &AuditLog, old: u64, size: u64) -> Result<Vec<[u8; 32]>, String> {
    if old == 0 || old > size {
        return Ok(vec![]);
    }
    log.consistency_proof(old, size).map_err(|e| e.message)
}

/// A witness's answer as note signature lines (`— <name> <base64>`); anything
/// else is refused, so one broken witness cannot break the note for all.
fn signature_lines(text: &str) -> Result<String, String> {
    let mut out = String::new();
    for line in text.lines() {
        let ok = line
            .strip_prefix("\u{2014} ")
            .and_then(|r| r.split_once(' '))
            .is_some_and(|(name, b64)| {
                !name.is_empty()
                    && !b64.is_empty()
                    && b64
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            });
        if !ok {
            return Err(format!("not a cosignature line: {line:?}"));
        }
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        return Err("no cosignature".into());
    }
    Ok(out)
}

impl AuditLog {
    /// The newest checkpoint with the cosignatures the witnesses gave.
    /// Witnesses that refuse (a fork, a rollback) or cannot be reached add
    /// nothing: clients that require their quorum will refuse the note.
    pub async fn cosigned_checkpoint(
        &self,
        w: &Witnesses,
    ) -> Result<(Checkpoint, String), ApiError> {
        let (cp, note) = self.checkpoint().await?;
        if let Some((size, n)) = w.cosigned.lock().ok().and_then(|c| c.clone())
            && size == cp.size
        {
            return Ok((cp, n));
        }
        let mut out = note.clone();
        let mut all = true;
        for url in &w.urls {
            match w.submit(self, url, &cp, &note).await {
                Ok(lines) => out.push_str(&lines),
                Err(e) => {
                    all = false;
                    tracing::warn!(witness = %url, size = cp.size, "no cosignature: {e}");
                }
            }
        }
        // Kept only when complete: a witness that was down is asked again.
        if all && let Ok(mut c) = w.cosigned.lock() {
            *c = Some((cp.size, out.clone()));
        }
        Ok((cp, out))
    }
}
