//! The tenant's audit log as a device sees it: checkpoints checked for
//! consistency (and against the witness policy), proofs, key releases.

use super::*;

/// One verified key release, from `who_has_keys`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyRelease {
    pub index: u64,
    pub ts: u64,
    pub user: UserId,
    pub device: DeviceId,
    pub epochs: Vec<u64>,
    /// Released to a surveillance role (not a member of the room).
    pub surveillance: bool,
    /// Released to the firm's malware scanner.
    pub inspection: bool,
    /// Released to the firm's gateway to another network.
    pub gateway: bool,
}

impl Client {
    /// Every audit-log key this device trusts, oldest first: the one
    /// pinned at enrolment, then those learned from verified hand-overs.
    pub fn log_keys(&self) -> Vec<String> {
        let mut keys = vec![self.profile.log_key.clone()];
        keys.extend(self.home.log_keys());
        keys
    }

    /// The newest trusted audit-log key.
    pub(crate) fn log_verifier(&self) -> Result<cloister_log::NoteVerifier> {
        let keys = self.log_keys();
        let key = keys.last().unwrap_or(&self.profile.log_key);
        cloister_log::NoteVerifier::parse(key)
            .map_err(|e| ClientError::Audit(format!("pinned audit log key is unusable: {e}")))
    }

    /// A checkpoint under any trusted key (one this device saw before a
    /// hand-over stays verifiable).
    fn verify_under_any(&self, note: &str) -> Result<cloister_log::Checkpoint> {
        let mut last = None;
        for k in self.log_keys().iter().rev() {
            let v = cloister_log::NoteVerifier::parse(k)
                .map_err(|e| ClientError::Audit(format!("a trusted log key is unusable: {e}")))?;
            match v.verify_checkpoint(note) {
                Ok(cp) => return Ok(cp),
                Err(e) => last = Some(e),
            }
        }
        Err(ClientError::Audit(format!(
            "remembered checkpoint is invalid: {}",
            last.map_or_else(|| "no key".into(), |e| e.to_string())
        )))
    }

    /// Learn the log's newer keys: each hand-over from the newest trusted
    /// key is a checkpoint both keys signed that includes the entry naming
    /// them (checked with its proof). The old key vouches for the new one.
    pub async fn follow_log_handovers(&self) -> Result<usize> {
        let keys: cloister_proto::km::AuditKeys = self.km_request(KmOp::AuditKeys).await?;
        let mut known = self.home.log_keys();
        let mut learned = 0;
        loop {
            let current = known.last().unwrap_or(&self.profile.log_key).clone();
            let Some(h) = keys.handovers.iter().find(|h| h.from == current) else {
                break;
            };
            let bad =
                |why: &str| ClientError::Audit(format!("audit log key hand-over rejected: {why}"));
            // never back to a key already trusted (a loop), and at most one
            // step per published hand-over
            if h.to == self.profile.log_key
                || known.contains(&h.to)
                || learned >= keys.handovers.len()
            {
                return Err(bad("it hands over to a key already trusted"));
            }
            let old = cloister_log::NoteVerifier::parse(&h.from).map_err(|_| bad("old key"))?;
            let new = cloister_log::NoteVerifier::parse(&h.to).map_err(|_| bad("new key"))?;
            if new.name != old.name {
                return Err(bad("the new key names another log"));
            }
            let cp = old
                .verify_checkpoint(&h.checkpoint)
                .map_err(|_| bad("the old key did not sign it"))?;
            new.verify_checkpoint(&h.checkpoint)
                .map_err(|_| bad("the new key did not sign it"))?;
            check_inclusion(
                &cloister_proto::km::InclusionProof {
                    index: h.index,
                    size: cp.size,
                    data: h.entry.clone(),
                    proof: h.proof.clone(),
                },
                &cp,
            )?;
            let rec = cloister_log::AuditRecord::from_bytes(h.entry.as_slice())
                .map_err(|_| bad("the entry is unreadable"))?;
            if !matches!(&rec.event, cloister_log::AuditEvent::KeyRotation { key, from, to, .. }
                if key == "audit_log" && *from == h.from && *to == h.to)
            {
                return Err(bad("the entry does not name these keys"));
            }
            // on the history this device already saw
            self.check_extends(&cp).await?;
            known.push(h.to.clone());
            self.home.save_log_keys(&known)?;
            learned += 1;
        }
        Ok(learned)
    }

    /// `cp` is consistent with the last checkpoint this device accepted.
    async fn check_extends(&self, cp: &cloister_log::Checkpoint) -> Result<()> {
        let Some(old_note) = self.home.last_checkpoint() else {
            return Ok(());
        };
        let old = self.verify_under_any(&old_note)?;
        let (a, b) = if old.size <= cp.size {
            (&old, cp)
        } else {
            (cp, &old)
        };
        if a.size == b.size {
            return if a.root == b.root {
                Ok(())
            } else {
                Err(ClientError::Audit(format!(
                    "the log was forked at size {}",
                    a.size
                )))
            };
        }
        let p: cloister_proto::km::ConsistencyProof = self
            .km_request(KmOp::AuditConsistency {
                old: a.size,
                new: Some(b.size),
            })
            .await?;
        let proof: Vec<[u8; 32]> = p.proof.iter().map(|h| h.0).collect();
        cloister_log::verify_consistency(a.size, b.size, &a.root, &b.root, &proof).map_err(|_| {
            ClientError::Audit(format!(
                "the log of size {} is not an extension of the one of size {}: it was forked or rewritten",
                b.size, a.size
            ))
        })
    }

    /// Fetch the latest audit checkpoint, verify its signature, and prove it
    /// consistent with the last one this device accepted. A fork or a
    /// rollback is an [`ClientError::Audit`] error and the new checkpoint is
    /// not accepted.
    pub async fn audit_checkpoint(&self) -> Result<(cloister_log::Checkpoint, String)> {
        let r: cloister_proto::km::CheckpointResponse =
            self.km_request(KmOp::AuditCheckpoint).await?;
        let cp = self.accept_checkpoint(&r.checkpoint).await?;
        Ok((cp, r.checkpoint))
    }

    /// Require `quorum` of these witnesses' cosignatures on every audit
    /// checkpoint this device accepts from now on.
    pub fn set_witness_policy(&self, witnesses: &[String], quorum: usize) -> Result<()> {
        cloister_log::witness::WitnessPolicy::parse(witnesses, quorum)
            .map_err(|e| ClientError::Input(format!("witness policy: {e}")))?;
        self.home.save_witness_policy(&store::WitnessPolicyConfig {
            witnesses: witnesses.to_vec(),
            quorum,
        })
    }

    pub fn witness_policy(&self) -> Option<store::WitnessPolicyConfig> {
        self.home.witness_policy()
    }

    pub(crate) async fn accept_checkpoint(&self, note: &str) -> Result<cloister_log::Checkpoint> {
        let v = self.log_verifier()?;
        let cp = match v.verify_checkpoint(note) {
            Ok(cp) => cp,
            // signed by a key this device has not learned yet?
            Err(e) => {
                if self.follow_log_handovers().await? == 0 {
                    return Err(ClientError::Audit(format!("checkpoint rejected: {e}")));
                }
                self.log_verifier()?
                    .verify_checkpoint(note)
                    .map_err(|e| ClientError::Audit(format!("checkpoint rejected: {e}")))?
            }
        };
        if let Some(p) = self.home.witness_policy() {
            let policy = cloister_log::witness::WitnessPolicy::parse(&p.witnesses, p.quorum)
                .map_err(|e| ClientError::Audit(format!("witness policy is invalid: {e}")))?;
            policy.check(note).map_err(|e| {
                ClientError::Audit(format!(
                    "checkpoint of size {} rejected: {e} (a log that may show others another history)",
                    cp.size
                ))
            })?;
        }
        if let Some(old_note) = self.home.last_checkpoint() {
            let old = self.verify_under_any(&old_note)?;
            if cp.size < old.size {
                return Err(ClientError::Audit(format!(
                    "the log was rolled back: it now has {} entries, but this device saw {}",
                    cp.size, old.size
                )));
            }
            if cp.size == old.size && cp.root != old.root {
                return Err(ClientError::Audit(format!(
                    "the log was forked at size {}",
                    cp.size
                )));
            }
            if cp.size > old.size {
                let p: cloister_proto::km::ConsistencyProof = self
                    .km_request(KmOp::AuditConsistency {
                        old: old.size,
                        new: Some(cp.size),
                    })
                    .await?;
                let proof: Vec<[u8; 32]> = p.proof.iter().map(|h| h.0).collect();
                cloister_log::verify_consistency(old.size, cp.size, &old.root, &cp.root, &proof).map_err(|_| {
                    ClientError::Audit(format!(
                        "the log of size {} is not an extension of the one this device saw at size {}: it was forked or rewritten",
                        cp.size, old.size
                    ))
                })?;
            }
        }
        self.home.save_checkpoint(note)?;
        Ok(cp)
    }

    /// Audit entries (admin).
    pub async fn audit_list(
        &self,
        from: u64,
        limit: u32,
        kind: Option<String>,
        room: Option<RoomId>,
        since_ms: Option<u64>,
    ) -> Result<Vec<(u64, cloister_log::AuditRecord, Vec<u8>)>> {
        let r: cloister_proto::km::AuditListResponse = self
            .km_request(KmOp::AuditList {
                from,
                limit,
                kind,
                room,
                since_ms,
            })
            .await?;
        r.entries
            .into_iter()
            .map(|e| {
                cloister_log::AuditRecord::from_bytes(e.data.as_slice())
                    .map(|rec| (e.index, rec, e.data.0.clone()))
                    .map_err(|e| ClientError::Local(format!("unreadable audit entry: {e}")))
            })
            .collect()
    }

    /// An entry with its inclusion proof, checked against a freshly watched checkpoint.
    pub async fn audit_prove(
        &self,
        index: u64,
    ) -> Result<(cloister_proto::km::InclusionProof, String)> {
        let (cp, note) = self.audit_checkpoint().await?;
        if index >= cp.size {
            return Err(ClientError::Input(format!(
                "entry {index} is not in the log of {} entries",
                cp.size
            )));
        }
        let p: cloister_proto::km::InclusionProof = self
            .km_request(KmOp::AuditProve {
                index,
                size: Some(cp.size),
            })
            .await?;
        check_inclusion(&p, &cp)?;
        Ok((p, note))
    }

    /// A consistency proof from `old` to the current checkpoint.
    pub async fn audit_consistency(
        &self,
        old: u64,
    ) -> Result<(cloister_proto::km::ConsistencyProof, String)> {
        let (cp, note) = self.audit_checkpoint().await?;
        let p: cloister_proto::km::ConsistencyProof = self
            .km_request(KmOp::AuditConsistency {
                old,
                new: Some(cp.size),
            })
            .await?;
        Ok((p, note))
    }

    /// Every device ever released a key of `room`, each release proven to be in the log.
    pub async fn who_has_keys(&self, room: &RoomId) -> Result<Vec<KeyRelease>> {
        let r: cloister_proto::km::WhoHasKeysResponse =
            self.km_request(KmOp::WhoHasKeys { room: *room }).await?;
        let cp = self.accept_checkpoint(&r.checkpoint).await?;
        let mut out = Vec::with_capacity(r.releases.len());
        for p in &r.releases {
            check_inclusion(p, &cp)?;
            let rec = cloister_log::AuditRecord::from_bytes(p.data.as_slice()).map_err(|e| {
                ClientError::Audit(format!("unreadable audit entry {}: {e}", p.index))
            })?;
            match rec.event {
                cloister_log::AuditEvent::KeyReleased {
                    room: r,
                    epochs,
                    user,
                    device,
                    surveillance,
                    inspection,
                    gateway,
                    ..
                } if r == *room => {
                    out.push(KeyRelease {
                        index: p.index,
                        ts: rec.ts,
                        user,
                        device,
                        epochs,
                        surveillance,
                        inspection,
                        gateway,
                    });
                }
                _ => {
                    return Err(ClientError::Audit(format!(
                        "entry {} is not a key release of this room",
                        p.index
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// Check an inclusion proof against a verified checkpoint.
pub fn check_inclusion(
    p: &cloister_proto::km::InclusionProof,
    cp: &cloister_log::Checkpoint,
) -> Result<()> {
    if p.size != cp.size {
        return Err(ClientError::Audit(format!(
            "proof is for size {}, checkpoint is {}",
            p.size, cp.size
        )));
    }
    let proof: Vec<[u8; 32]> = p.proof.iter().map(|h| h.0).collect();
    cloister_log::verify_inclusion(
        p.index,
        p.size,
        &cloister_log::leaf_hash(p.data.as_slice()),
        &proof,
        &cp.root,
    )
    .map_err(|_| {
        ClientError::Audit(format!(
            "entry {} is not in the log the checkpoint commits to",
            p.index
        ))
    })
}
