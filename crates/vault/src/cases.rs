//! What a case officer does with the archive: fetch a case's envelopes
//! with their inclusion proofs, and re-seal them to a newer escrow
//! generation (escrow-key rotation); and the signed count of envelopes
//! still under a generation that lets the KM retire it.

use super::*;
use cloister_proto::b64::Bytes;
use cloister_proto::km::{EscrowCount, SignedBlob};
use cloister_proto::vault::ResealResponse;
use cloister_store::ResealRow;
use std::sync::atomic::Ordering;

impl Vault {
    /// The KM-signed case, if this device is its officer's.
    fn case_of(&self, cert: &DeviceCert, blob: &SignedBlob) -> Result<Case, ApiError> {
        let c: Case = verify_blob(&self.km_pk, signed::CASE, blob, "case").map_err(|_| {
            ApiError::forbidden("bad_case", "the case is not signed by the tenant's KM")
        })?;
        if c.tenant != self.tenant || c.officer != cert.user || c.officer_device != cert.device {
            return Err(ApiError::forbidden(
                "not_case_officer",
                "only the case officer's device may work on its envelopes",
            ));
        }
        Ok(c)
    }

    /// A case's envelopes in log order after `after`, each with its
    /// inclusion proof in the log of `size` entries.
    pub(crate) async fn fetch(
        &self,
        cert: &DeviceCert,
        case: &SignedBlob,
        tokens: &[PeriodQuery],
        (after, limit): (Option<u64>, u32),
        size: u64,
    ) -> Result<FetchResponse, ApiError> {
        let c = self.case_of(cert, case)?;
        check_queries(tokens, 400)?;
        if size > self.log.size() {
            return Err(ApiError::bad_request(
                "bad_size",
                format!("the ingestion log has {} entries", self.log.size()),
            ));
        }
        let q = FetchQuery {
            rooms: c.scope.rooms.iter().map(|r| r.to_hex()).collect(),
            generation: c.scope.reseal,
            from_ms: c.scope.from_ms,
            to_ms: c.scope.to_ms,
            any_tokens: token_queries(tokens),
            after,
            limit: limit.clamp(1, MAX_FETCH),
        };
        let rows = self.store.fetch(&q).await.map_err(ApiError::internal)?;
        let full = rows.len() as u32 == q.limit;
        let mut items = Vec::with_capacity(rows.len());
        let mut next = None;
        for r in rows {
            next = Some(r.log_index);
            let data = self
                .log
                .store()
                .audit_get(r.log_index)
                .await
                .map_err(ApiError::internal)?
                .ok_or_else(|| ApiError::internal("ingestion entry missing"))?;
            if r.log_index >= size {
                // captured after the checkpoint: not part of this export;
                // but one re-sealed since would be missing from it
                if AuditRecord::from_bytes(&data)
                    .is_ok_and(|rec| matches!(rec.event, AuditEvent::EnvelopeResealed { .. }))
                {
                    return Err(ApiError::conflict(
                        "archive_changed",
                        "envelopes of this case were re-sealed after the checkpoint this fetch names; start again from a new checkpoint",
                    ));
                }
                continue;
            }
            let proof = self.log.inclusion_proof(r.log_index, size)?;
            items.push(FetchedEnvelope {
                envelope: r.envelope.into(),
                entry: InclusionProof {
                    index: r.log_index,
                    size,
                    data: data.into(),
                    proof: proof.into_iter().map(Fixed).collect(),
                },
            });
        }
        tracing::info!(user = %cert.user, case = %c.case, n = items.len(), "case envelopes fetched");
        Ok(FetchResponse {
            items,
            next: if full { next } else { None },
        })
    }

    /// Refuse an envelope sealed to another escrow generation than the
    /// newest: an older one is being retired, a newer one the vault has
    /// not heard of yet (it asks the KM once).
    pub(crate) async fn check_generation(&self, g: u32) -> Result<(), ApiError> {
        let mut newest = self.escrow_generation.load(Ordering::Relaxed);
        if newest != 0 && g > newest {
            if let Err(e) = self.pull_deny_list().await {
                tracing::warn!("vault deny list not refreshed: {e}");
            }
            newest = self.escrow_generation.load(Ordering::Relaxed);
        }
        // 0: the KM had no escrow key at the last pull (the deny list's
        // own freshness bounds how old that knowledge is)
        if newest == 0 || g == newest {
            return Ok(());
        }
        Err(ApiError::conflict(
            "stale_escrow",
            format!(
                "the envelope is sealed to escrow generation {g}; the tenant's escrow key is generation {newest}: seal it again to that one"
            ),
        ))
    }

    /// Replace envelopes of a case by the same content sealed to the
    /// newest escrow generation. The cleartext header (message, room,
    /// time, ciphertext hash) must be the stored one's; each replacement
    /// is an `envelope_resealed` log entry naming the old and new hashes,
    /// stored with it in one transaction.
    pub(crate) async fn reseal(
        &self,
        cert: &DeviceCert,
        case: &SignedBlob,
        envelopes: Vec<Bytes>,
    ) -> Result<ResealResponse, ApiError> {
        let c = self.case_of(cert, case)?;
        if envelopes.len() > MAX_FETCH as usize {
            return Err(ApiError::too_large(format!(
                "re-seal at most {MAX_FETCH} envelopes per request"
            )));
        }
        let mut out = ResealResponse {
            resealed: 0,
            already: 0,
        };
        for bytes in envelopes {
            if bytes.len() > MAX_ENVELOPE {
                return Err(ApiError::too_large(format!(
                    "an envelope holds at most {MAX_ENVELOPE} bytes"
                )));
            }
            let new: SealedEnvelope = serde_json::from_slice(bytes.as_slice()).map_err(|e| {
                ApiError::bad_request("bad_envelope", format!("sealed envelope is malformed: {e}"))
            })?;
            if new.tenant != self.tenant {
                return Err(ApiError::forbidden(
                    "wrong_tenant",
                    "the envelope is sealed for another tenant",
                ));
            }
            if !c.scope.covers(&new.room, new.ts, &[]) {
                return Err(ApiError::forbidden(
                    "outside_case",
                    format!(
                        "message {} is outside the case's rooms and time",
                        new.message_id
                    ),
                ));
            }
            self.check_generation(new.generation).await?;
            let _one = capture::Inflight::take(&self.inflight, new.message_id)?;
            let old = self
                .store
                .envelope_of(&new.message_id.to_hex())
                .await
                .map_err(ApiError::internal)?
                .ok_or_else(|| {
                    ApiError::not_found(
                        "not_captured",
                        format!("message {} is not in the archive", new.message_id),
                    )
                })?;
            let stored: SealedEnvelope = serde_json::from_slice(&old.envelope)
                .map_err(|_| ApiError::internal("a stored envelope is corrupt"))?;
            if stored.generation >= new.generation {
                out.already += 1;
                continue;
            }
            if (
                &stored.message_id,
                &stored.room,
                stored.ts,
                &stored.ciphertext_sha256,
            ) != (&new.message_id, &new.room, new.ts, &new.ciphertext_sha256)
            {
                return Err(ApiError::bad_request(
                    "reseal_mismatch",
                    format!(
                        "the re-sealed envelope of message {} names another room, time or ciphertext than the stored one",
                        new.message_id
                    ),
                ));
            }
            let sha = cloister_crypto::sha256(bytes.as_slice());
            let rec = AuditRecord {
                ts: now_millis(),
                actor: Some(cert.user.clone()),
                event: AuditEvent::EnvelopeResealed {
                    message_id: old.message_id.clone(),
                    room: new.room,
                    from_sha256: hex::encode(&old.envelope_sha256),
                    envelope_sha256: hex::encode(sha),
                    generation: new.generation,
                    device: cert.device,
                },
            };
            let row = ResealRow {
                message_id: old.message_id,
                from_sha256: old.envelope_sha256,
                envelope: bytes.0,
                envelope_sha256: sha.to_vec(),
                generation: new.generation,
            };
            self.log
                .append_with(&rec, Some(SideEffect::Reseal(Box::new(row))))
                .await?;
            out.resealed += 1;
        }
        tracing::info!(user = %cert.user, case = %c.case, resealed = out.resealed, "envelopes re-sealed");
        Ok(out)
    }

    /// The signed count of envelopes still sealed to `generation`, with
    /// the newest generation this vault knows (from a deny list pulled now).
    pub(crate) async fn escrow_count(&self, generation: u32) -> Result<SignedBlob, ApiError> {
        if let Err(e) = self.pull_deny_list().await {
            tracing::warn!("vault deny list not refreshed: {e}");
        }
        let c = EscrowCount {
            tenant: self.tenant.clone(),
            generation,
            remaining: self
                .store
                .envelopes_under(generation)
                .await
                .map_err(ApiError::internal)?,
            newest: self.escrow_generation.load(Ordering::Relaxed),
            ts: now_millis(),
        };
        signed::km_sign_blob(&self.signer, signed::ESCROW_COUNT, &c).map_err(ApiError::internal)
    }
}
