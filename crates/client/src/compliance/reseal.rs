//! Re-sealing a case's envelopes to the newest escrow generation, the
//! step between an emergency escrow rotation and the old key's retirement.

use super::cases::CaseSession;
use super::*;
use cloister_proto::vault::ResealResponse;

/// What a re-seal run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ResealSummary {
    pub case: String,
    /// The generation everything was sealed to.
    pub generation: u32,
    /// Envelopes the vault replaced now.
    pub resealed: u64,
    /// Envelopes already under the newest generation.
    pub current: u64,
    /// Envelopes this case's approvals cannot open (their generation's
    /// quorum did not approve), left as they are.
    pub unopened: u64,
}

impl Client {
    /// Compliance: open every envelope of the case sealed to an older
    /// escrow generation (with the keys its approvals rebuild) and have
    /// the vault replace it by the same content sealed to the newest one.
    /// Each step is logged at the KM; the old keys exist only inside this
    /// call. Safe to run again: what is done is skipped.
    pub async fn case_reseal(
        &self,
        case: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ResealSummary> {
        let session = self.case_session(case).await?;
        let newest = self.escrow_info().await?;
        self.case_step(case, "session_opened", session.approvals as u64)
            .await?;
        let r = self.reseal_with(&session, &newest, progress).await;
        let done = r.as_ref().map(|s| s.resealed).unwrap_or(0);
        drop(session);
        self.case_step(case, "resealed", done).await?;
        self.case_step(case, "zeroized", 0).await?;
        r
    }

    async fn reseal_with(
        &self,
        s: &CaseSession,
        newest: &cloister_proto::km::EscrowDescriptor,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ResealSummary> {
        let vault = self.working_vault().await?;
        let verifier = cloister_log::NoteVerifier::parse(&vault.log_key)
            .map_err(|e| ClientError::Audit(e.to_string()))?;
        let mut out = ResealSummary {
            case: s.case.case.clone(),
            generation: newest.generation,
            ..Default::default()
        };
        let mut after = None;
        loop {
            // a fresh checkpoint per page: what this run re-seals moves to
            // the log's end, where a later page finds it done
            let cp: cloister_proto::km::CheckpointResponse = self
                .vault_request(&vault, &VaultOp::Checkpoint { ts: now_millis() })
                .await?;
            let checkpoint = verifier.verify_checkpoint(&cp.checkpoint).map_err(|e| {
                ClientError::Audit(format!("the vault's checkpoint does not verify: {e}"))
            })?;
            let page: FetchResponse = self
                .vault_request(
                    &vault,
                    &VaultOp::Fetch {
                        ts: now_millis(),
                        case: s.blob.clone(),
                        tokens: vec![],
                        after,
                        limit: 200,
                        size: checkpoint.size,
                    },
                )
                .await?;
            let mut batch = Vec::new();
            for it in &page.items {
                crate::check_inclusion(&it.entry, &checkpoint)?;
                let sealed: cloister_proto::vault::SealedEnvelope =
                    serde_json::from_slice(it.envelope.as_slice())
                        .map_err(|e| ClientError::Local(format!("malformed envelope: {e}")))?;
                let rec = cloister_log::AuditRecord::from_bytes(it.entry.data.as_slice())
                    .map_err(|e| ClientError::Audit(e.to_string()))?;
                let sha = hex::encode(cloister_crypto::sha256(it.envelope.as_slice()));
                match rec.event.stored_envelope() {
                    Some((id, stored)) if id == sealed.message_id.to_hex() && stored == sha => {}
                    _ => {
                        return Err(ClientError::Audit(format!(
                            "envelope {} does not match its log entry",
                            sealed.message_id
                        )));
                    }
                }
                if sealed.generation >= newest.generation {
                    out.current += 1;
                    continue;
                }
                let Some(key) = s.keys.get(&sealed.generation) else {
                    out.unopened += 1;
                    continue;
                };
                let Ok(env) = cloister_crypto::capture::open(key, &sealed) else {
                    // junk an insider sealed stays as it is, for the record
                    out.unopened += 1;
                    continue;
                };
                let again = cloister_crypto::capture::seal_to(
                    &newest.public.0,
                    newest.generation,
                    &self.profile.tenant,
                    &env,
                )?;
                batch.push(
                    serde_json::to_vec(&again)
                        .map_err(|e| ClientError::Local(e.to_string()))?
                        .into(),
                );
            }
            if !batch.is_empty() {
                let r: ResealResponse = self
                    .vault_request(
                        &vault,
                        &VaultOp::Reseal {
                            ts: now_millis(),
                            case: s.blob.clone(),
                            envelopes: batch,
                        },
                    )
                    .await?;
                out.resealed += r.resealed;
                out.current += r.already;
                progress(out.resealed);
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(out)
    }
}
