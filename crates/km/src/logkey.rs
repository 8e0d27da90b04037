//! Rotating the audit log's signing key. The log records the hand-over:
//! a `key_rotation` entry naming the old and the new verifier key, in a
//! checkpoint both keys sign. A device or witness that knows the old key
//! learns the new one from that checkpoint (the old key vouches for it)
//! and the entry's inclusion proof; checkpoints from before stay
//! verifiable under the old key.
//!
//! ```text
//!  next key stored (wrapped) ─▶ both keys sign every batch ─▶ entry
//!  ─▶ the hand-over published with a checkpoint both signed ─▶ only the
//!  new key signs ─▶ the new key becomes the log's key
//! ```
//!
//! A crash before the entry reached the log leaves the old key in place
//! (the next key is dropped at start); a crash after it finishes the
//! hand-over at start.

use super::*;
use crate::tmk::{LOG_SIGNER_AAD, META_LOG_NEXT, META_LOG_SIGNER, stored_wrap, tagged};
use cloister_proto::km::{AuditKeys, LogHandover};

/// The published hand-overs (JSON list of [`Stored`]).
const META_HANDOVERS: &str = "log_handovers";

/// A hand-over as the KM keeps it (the proof is made when asked).
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Stored {
    from: String,
    to: String,
    index: u64,
    size: u64,
    checkpoint: String,
}

async fn handovers(store: &Arc<dyn KmStore>) -> Result<Vec<Stored>, KmError> {
    Ok(match store.get_meta(META_HANDOVERS).await? {
        Some(b) => {
            serde_json::from_slice(&b).map_err(|_| KmError::Corrupt("audit log hand-overs"))?
        }
        None => Vec::new(),
    })
}

/// Publish a hand-over (once; safe to repeat).
async fn publish(store: &Arc<dyn KmStore>, h: Stored) -> Result<(), KmError> {
    let mut all = handovers(store).await?;
    if !all.iter().any(|x| x.to == h.to) {
        all.push(h);
        let b = serde_json::to_vec(&all).map_err(|_| KmError::Corrupt("audit log hand-overs"))?;
        store.set_meta(META_HANDOVERS, &b).await?;
    }
    Ok(())
}

/// Make the next key the log's key (safe to repeat).
async fn promote(store: &Arc<dyn KmStore>, next_wrapped: &[u8]) -> Result<(), KmError> {
    store
        .set_meta(&tagged(META_LOG_SIGNER), next_wrapped)
        .await?;
    store.set_meta(&tagged(META_LOG_NEXT), &[]).await?;
    Ok(())
}

impl Km {
    /// The audit log's key at start, with an interrupted hand-over settled.
    pub(crate) async fn settled_log_signer(
        store: &Arc<dyn KmStore>,
        provider: &Arc<dyn KeyProvider>,
        origin: &str,
    ) -> Result<KmSigner, KmError> {
        let current = Self::log_signer(store, provider).await?;
        let Some(w) = stored_wrap(store, META_LOG_NEXT).await? else {
            return Ok(current);
        };
        let next = KmSigner::from_secret(provider.unwrap(LOG_SIGNER_AAD, &w)?.expose())?;
        let to = cloister_log::note::verifier_key(origin, &next.public());
        let rows = store
            .audit_list(&cloister_store::AuditQuery {
                from: 0,
                limit: 100_000,
                kind: Some("key_rotation".into()),
                room: None,
                since_ms: None,
            })
            .await?;
        let entry = rows.iter().rev().find(|r| {
            AuditRecord::from_bytes(&r.data).is_ok_and(|rec| {
                matches!(&rec.event, AuditEvent::KeyRotation { key, to: t, .. }
                    if key == "audit_log" && *t == to)
            })
        });
        if handovers(store).await?.iter().any(|h| h.to == to) {
            // published: only the switch of keys was left
            promote(store, &w).await?;
            tracing::warn!("an interrupted audit-log key rotation was finished");
            return Ok(next);
        }
        let Some(entry) = entry else {
            tracing::warn!(
                "an audit-log key rotation stopped before the log recorded it; the old key stays"
            );
            store.set_meta(&tagged(META_LOG_NEXT), &[]).await?;
            return Ok(current);
        };
        // Recorded, not yet published: the hand-over never ended (it is
        // published first), so every batch since the entry was signed by
        // both keys and the newest stored checkpoint is one both signed.
        let (size, note) = store
            .audit_latest_checkpoint()
            .await?
            .ok_or(KmError::Corrupt("audit log checkpoint"))?;
        let from = cloister_log::note::verifier_key(origin, &current.public());
        publish(
            store,
            Stored {
                from,
                to,
                index: entry.index,
                size,
                checkpoint: note,
            },
        )
        .await?;
        promote(store, &w).await?;
        tracing::warn!("an interrupted audit-log key rotation was finished");
        Ok(next)
    }

    /// Show witnesses the newest hand-over (a witness that was down during
    /// it learns the new key the next time it is asked to cosign).
    pub(crate) async fn publish_handover(&self) -> Result<(), KmError> {
        if let Some(h) = handovers(&self.store).await?.pop() {
            self.witnesses.set_handover(&h.to, &h.checkpoint);
        }
        Ok(())
    }

    /// Rotate the audit log's signing key (admin).
    pub(crate) async fn rotate_log_key(
        &self,
        actor: Option<&UserId>,
    ) -> Result<LogHandover, Denied> {
        let _one = self.rotation.lock().await;
        let origin = self.audit.origin().to_owned();
        let from = self.audit.verifier_key();
        let next = KmSigner::generate().map_err(Denied::internal)?;
        let secret = next.secret_bytes();
        let wrapped = self.provider.wrap(LOG_SIGNER_AAD, secret.expose())?;
        let to = cloister_log::note::verifier_key(&origin, &next.public());
        self.store
            .set_meta(&tagged(META_LOG_NEXT), &wrapped)
            .await
            .map_err(store_err)?;
        self.audit.begin_handover(next).await?;
        let index = match self
            .record(
                actor,
                AuditEvent::KeyRotation {
                    key: "audit_log".into(),
                    step: "finished".into(),
                    from: from.clone(),
                    to: to.clone(),
                    count: 0,
                },
            )
            .await
        {
            Ok(i) => i,
            Err(e) => {
                // nothing recorded: the old key alone again
                let _ = self.audit.cancel_handover().await;
                let _ = self.store.set_meta(&tagged(META_LOG_NEXT), &[]).await;
                return Err(e);
            }
        };
        // Published while both keys still sign: the newest checkpoint now
        // includes the entry and carries both signatures.
        let (cp, note) = self.audit.checkpoint().await?;
        let h = Stored {
            from,
            to,
            index,
            size: cp.size,
            checkpoint: note,
        };
        publish(&self.store, h.clone())
            .await
            .map_err(Denied::internal)?;
        self.audit.end_handover().await?;
        promote(&self.store, &wrapped)
            .await
            .map_err(Denied::internal)?;
        self.witnesses.set_handover(&h.to, &h.checkpoint);
        tracing::warn!(size = h.size, "the audit log's key was rotated");
        self.proven(h).await
    }

    /// Every hand-over, each with its entry's inclusion proof.
    pub(crate) async fn audit_keys(&self) -> Result<AuditKeys, Denied> {
        let mut out = Vec::new();
        for h in handovers(&self.store).await.map_err(Denied::internal)? {
            out.push(self.proven(h).await?);
        }
        Ok(AuditKeys {
            current: self.audit.verifier_key(),
            handovers: out,
        })
    }

    async fn proven(&self, h: Stored) -> Result<LogHandover, Denied> {
        let p = self.prove(h.index, Some(h.size)).await?;
        Ok(LogHandover {
            from: h.from,
            to: h.to,
            index: h.index,
            checkpoint: h.checkpoint,
            entry: p.data,
            proof: p.proof,
        })
    }
}
