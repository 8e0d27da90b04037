//! Cases, their custodians' approvals, the decryption session and the
//! eDiscovery export; retention orders.

use super::*;
use std::collections::BTreeMap;

/// A decryption session: the case and the escrow keys its approvals
/// rebuilt, by generation (they exist only in memory).
pub(crate) struct CaseSession {
    pub blob: SignedBlob,
    pub case: Case,
    pub approvals: usize,
    pub threshold: u8,
    pub keys: BTreeMap<u32, EscrowSecret>,
}

/// One generation's key from the shares its custodians released, if
/// enough did (and from enough jurisdictions).
fn open_generation(
    g: &cloister_proto::km::EscrowDescriptor,
    shares: &[cloister_crypto::SecretBytes],
    approvers: &[UserId],
) -> std::result::Result<EscrowSecret, String> {
    if g.min_jurisdictions > 1 {
        let spread: std::collections::BTreeSet<&String> = approvers
            .iter()
            .filter_map(|u| {
                let i = g.custodians.iter().position(|c| c == u)?;
                g.jurisdictions.get(i)
            })
            .collect();
        if spread.len() < usize::from(g.min_jurisdictions) {
            return Err(format!(
                "approvals from {} jurisdiction(s); the escrow needs {}",
                spread.len(),
                g.min_jurisdictions
            ));
        }
    }
    if shares.len() < usize::from(g.threshold) {
        return Err(format!(
            "{} valid approval(s) of the {} needed",
            shares.len(),
            g.threshold
        ));
    }
    escrow::combine(shares, g.threshold, &g.public.0).map_err(|e| e.to_string())
}

/// What a decryption session produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseExport {
    pub case: String,
    pub version: u32,
    pub approvals: usize,
    pub threshold: u8,
    pub summary: crate::export::ExportSummary,
}

impl Client {
    /// Compliance: open a case. A fresh X25519 key pair is the case's
    /// decryption session key; its private half stays in this device's
    /// keystore, and custodians release their shares to its public half.
    pub async fn case_open(
        &self,
        case: &str,
        title: &str,
        scope: CaseScope,
        hold: bool,
    ) -> Result<Case> {
        let (pk, sk) = escrow::generate()?;
        self.home.save_session(case, sk.expose())?;
        let blob: SignedBlob = self
            .km_request(KmOp::CaseOpen {
                case: case.to_owned(),
                title: title.to_owned(),
                scope,
                session_pk: Fixed(pk),
                hold,
            })
            .await?;
        self.verify_case(&blob)
    }

    /// Compliance: change a case's scope (approvals must be given again).
    pub async fn case_rescope(&self, case: &str, scope: CaseScope) -> Result<Case> {
        let blob: SignedBlob = self
            .km_request(KmOp::CaseRescope {
                case: case.to_owned(),
                scope,
            })
            .await?;
        self.verify_case(&blob)
    }

    pub(crate) fn verify_case(&self, blob: &SignedBlob) -> Result<Case> {
        let c: Case = signed::verify_blob(&self.profile.km_sign_pk.0, signed::CASE, blob, "case")
            .map_err(|_| ClientError::Local("the case is not signed by the KM".into()))?;
        if c.tenant != self.profile.tenant {
            return Err(ClientError::Local("a case of another tenant".into()));
        }
        Ok(c)
    }

    /// Compliance and custodians: every case, verified.
    pub async fn case_list(&self) -> Result<Vec<(SignedBlob, Case)>> {
        let r: CaseListResponse = self.km_request(KmOp::CaseList).await?;
        r.cases
            .into_iter()
            .map(|b| {
                let c = self.verify_case(&b)?;
                Ok((b, c))
            })
            .collect()
    }

    /// Custodian: approve the current version of a case: open my escrow
    /// share and re-seal it to the case's session key, bound to the case.
    pub async fn case_approve(&self, case: &str) -> Result<Case> {
        let (blob, c) = self
            .case_list()
            .await?
            .into_iter()
            .find(|(_, c)| c.case == case)
            .ok_or_else(|| ClientError::Input(format!("no case {case:?}")))?;
        let case_sha = cloister_crypto::sha256(blob.body.as_slice());
        let shares = self.my_escrow_shares().await?;
        if shares.is_empty() {
            return Err(ClientError::Input("you hold no escrow share".into()));
        }
        // one release per live generation held, newest first
        let mut releases = Vec::with_capacity(shares.len());
        for (generation, number, share) in shares.iter().rev() {
            let ctx = signed::approval_context(
                &self.profile.tenant,
                &c.case,
                c.version,
                &case_sha,
                (*generation, *number),
            );
            let (enc, ct) = escrow::seal_share(&c.session_pk.0, &ctx, share)?;
            releases.push(cloister_proto::km::ShareRelease {
                generation: *generation,
                number: *number,
                enc: Fixed(enc),
                ct: ct.into(),
            });
        }
        drop(shares);
        let first = releases.remove(0);
        let a = Approval {
            tenant: self.profile.tenant.clone(),
            case: c.case.clone(),
            version: c.version,
            case_sha256: Fixed(case_sha),
            custodian: self.user().clone(),
            device: self.device(),
            number: first.number,
            enc: first.enc,
            ct: first.ct,
            ts: now_millis(),
            generation: first.generation,
            more: releases,
        };
        let approval = signed::device_sign_blob(&self.keys, signed::APPROVAL, &a)?;
        let _: serde_json::Value = self.km_request(KmOp::CaseApprove { approval }).await?;
        Ok(c)
    }

    pub(crate) async fn case_step(&self, case: &str, step: &str, count: u64) -> Result<()> {
        let _: serde_json::Value = self
            .km_request(KmOp::CaseStep {
                case: case.to_owned(),
                step: step.to_owned(),
                count,
            })
            .await?;
        Ok(())
    }

    /// The escrow keys, rebuilt in memory from the case's approvals: every
    /// live generation whose custodians gave their threshold of approvals
    /// (and the jurisdiction spread it asks for). Each approval must be
    /// signed by a custodian's certified device, name this case's version
    /// and exact bytes, and open under the session key.
    pub(crate) async fn case_session(&self, case: &str) -> Result<CaseSession> {
        let r: CaseApprovals = self
            .km_request(KmOp::CaseApprovals {
                case: case.to_owned(),
            })
            .await?;
        let c = self.verify_case(&r.case)?;
        if c.officer_device != self.device() {
            return Err(ClientError::Input(format!(
                "case {case:?} was opened on device {}; its session key is there",
                c.officer_device
            )));
        }
        let session = self.home.load_session(case)?.ok_or_else(|| {
            ClientError::Local(format!(
                "this device holds no session key for case {case:?}"
            ))
        })?;
        let session = EscrowSecret::from_bytes(*session);
        let live = self.escrow_history().await?;
        let case_sha = cloister_crypto::sha256(r.case.body.as_slice());
        // per generation: the shares opened and who gave them
        let mut opened: BTreeMap<u32, (Vec<cloister_crypto::SecretBytes>, Vec<UserId>)> =
            BTreeMap::new();
        let mut seen = HashSet::new();
        for aw in &r.approvals {
            let cert = signed::verify_cert(&self.profile.km_sign_pk.0, &aw.cert)?;
            let Ok(a) = signed::verify_blob::<Approval>(
                &cert.sign_pk.0,
                signed::APPROVAL,
                &aw.approval,
                "approval",
            ) else {
                tracing::warn!(%case, "an approval's signature does not verify; ignored");
                continue;
            };
            if a.custodian != cert.user
                || a.device != cert.device
                || a.case != c.case
                || a.version != c.version
                || a.case_sha256.0 != case_sha
                || !seen.insert(a.custodian.clone())
            {
                tracing::warn!(%case, custodian = %a.custodian, "an approval is for another case or version; ignored");
                continue;
            }
            let first = cloister_proto::km::ShareRelease {
                generation: a.generation,
                number: a.number,
                enc: a.enc,
                ct: a.ct.clone(),
            };
            for rel in std::iter::once(&first).chain(&a.more) {
                let Some(g) = live.iter().find(|g| g.generation == rel.generation) else {
                    continue;
                };
                if !g.custodians.contains(&a.custodian) {
                    continue;
                }
                let entry = opened.entry(rel.generation).or_default();
                if entry.1.contains(&a.custodian) {
                    continue;
                }
                let ctx = signed::approval_context(
                    &c.tenant,
                    &c.case,
                    c.version,
                    &case_sha,
                    (rel.generation, rel.number),
                );
                match escrow::open_session_share(&session, &ctx, &rel.enc.0, rel.ct.as_slice()) {
                    Ok(s) => {
                        entry.0.push(s);
                        entry.1.push(a.custodian.clone());
                    }
                    Err(_) => {
                        tracing::warn!(%case, custodian = %a.custodian, generation = rel.generation, "an approval's share does not open for this case; ignored");
                    }
                }
            }
        }
        let mut keys = BTreeMap::new();
        let mut why = Vec::new();
        for g in &live {
            let (shares, approvers) = opened.remove(&g.generation).unwrap_or_default();
            match open_generation(g, &shares, &approvers) {
                Ok(secret) => {
                    keys.insert(g.generation, secret);
                }
                Err(m) => why.push(format!("generation {}: {m}", g.generation)),
            }
        }
        if keys.is_empty() {
            return Err(ClientError::Input(format!(
                "case {case:?} cannot open any escrow key ({}); nothing was decrypted",
                why.join("; ")
            )));
        }
        let threshold = live
            .iter()
            .filter(|g| keys.contains_key(&g.generation))
            .map(|g| g.threshold)
            .max()
            .unwrap_or(0);
        Ok(CaseSession {
            blob: r.case,
            case: c,
            approvals: r.approvals.len(),
            threshold,
            keys,
        })
    }

    /// Compliance: run the case's decryption session and export exactly the
    /// envelopes in its scope to `out`. Every step is logged at the KM
    /// before it happens; the escrow key exists only inside this call.
    pub async fn case_export(
        &self,
        case: &str,
        out: &Path,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<CaseExport> {
        let CaseSession {
            blob: case_blob,
            case: c,
            approvals,
            threshold: k,
            keys,
        } = self.case_session(case).await?;
        if let Some(g) = c.scope.reseal {
            return Err(ClientError::Input(format!(
                "case {case:?} re-seals escrow generation {g}; it exports nothing (`cloister compliance reseal {case}`)"
            )));
        }
        // Logged (and checked against the threshold) before any decryption.
        self.case_step(case, "session_opened", approvals as u64)
            .await?;
        let result = self.export_with(&case_blob, &c, &keys, out, progress).await;
        drop(keys);
        self.case_step(case, "zeroized", 0).await?;
        let summary = result?;
        self.case_step(case, "exported", summary.messages).await?;
        Ok(CaseExport {
            case: c.case,
            version: c.version,
            approvals,
            threshold: k,
            summary,
        })
    }

    pub(crate) async fn export_with(
        &self,
        case_blob: &SignedBlob,
        c: &Case,
        keys: &BTreeMap<u32, EscrowSecret>,
        out: &Path,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<crate::export::ExportSummary> {
        let vault = self.working_vault().await?;
        let vault_blob = self.vault_blob_of(&vault).await?;
        // The ingestion log's checkpoint, verified under the KM-registered key.
        let cp: cloister_proto::km::CheckpointResponse = self
            .vault_request(&vault, &VaultOp::Checkpoint { ts: now_millis() })
            .await?;
        let verifier = cloister_log::NoteVerifier::parse(&vault.log_key)
            .map_err(|e| ClientError::Audit(e.to_string()))?;
        let checkpoint = verifier.verify_checkpoint(&cp.checkpoint).map_err(|e| {
            ClientError::Audit(format!("the vault's checkpoint does not verify: {e}"))
        })?;
        // Custodian scope: the vault matches sender/participant tokens.
        let mut tokens = Vec::new();
        if !c.scope.custodians.is_empty() {
            let periods =
                cloister_crypto::blind::periods_between(c.scope.from_ms, c.scope.to_ms, 120);
            let keys = self.index_keys(&periods).await?;
            for p in periods {
                let k = keys
                    .get(&p)
                    .ok_or_else(|| ClientError::Local("missing index key".into()))?;
                let mut t = Vec::new();
                for u in &c.scope.custodians {
                    for f in [
                        cloister_crypto::blind::Field::Sender,
                        cloister_crypto::blind::Field::Participant,
                    ] {
                        t.push(Fixed(cloister_crypto::blind::token(k, f, u.as_str())));
                    }
                }
                tokens.push(PeriodQuery {
                    period: p,
                    tokens: t,
                });
            }
        }
        let room_time = CaseScope {
            custodians: vec![],
            ..c.scope.clone()
        };
        let mut items = Vec::new();
        let mut unopened = Vec::new();
        let mut after = None;
        loop {
            let page: FetchResponse = self
                .vault_request(
                    &vault,
                    &VaultOp::Fetch {
                        ts: now_millis(),
                        case: case_blob.clone(),
                        tokens: tokens.clone(),
                        after,
                        limit: 500,
                        size: checkpoint.size,
                    },
                )
                .await?;
            for it in page.items {
                crate::check_inclusion(&it.entry, &checkpoint)?;
                let rec = cloister_log::AuditRecord::from_bytes(it.entry.data.as_slice())
                    .map_err(|e| ClientError::Audit(e.to_string()))?;
                let sealed: cloister_proto::vault::SealedEnvelope =
                    serde_json::from_slice(it.envelope.as_slice())
                        .map_err(|e| ClientError::Local(format!("malformed envelope: {e}")))?;
                let sha = hex::encode(cloister_crypto::sha256(it.envelope.as_slice()));
                match rec.event.stored_envelope() {
                    Some((id, stored)) if id == sealed.message_id.to_hex() && stored == sha => {}
                    _ => {
                        return Err(ClientError::Audit(format!(
                            "envelope {} does not match its ingestion entry",
                            sealed.message_id
                        )));
                    }
                }
                // Only what the case covers is ever opened: room and time from
                // the sealed header first, then the people inside.
                if !room_time.covers(&sealed.room, sealed.ts, &[]) {
                    continue;
                }
                // An envelope that does not even open (an insider sealed junk)
                // is listed, not allowed to stop the whole export.
                let Some(secret) = keys.get(&sealed.generation) else {
                    unopened.push(crate::export::Unattributable {
                        message_id: sealed.message_id.to_string(),
                        log_index: it.entry.index,
                        reason: format!(
                            "sealed to escrow generation {}, which this case's approvals do not open",
                            sealed.generation
                        ),
                    });
                    continue;
                };
                let env = match cloister_crypto::capture::open(secret, &sealed) {
                    Ok(e) => e,
                    Err(e) => {
                        unopened.push(crate::export::Unattributable {
                            message_id: sealed.message_id.to_string(),
                            log_index: it.entry.index,
                            reason: format!(
                                "the sealed envelope does not open under the escrow key: {e}"
                            ),
                        });
                        continue;
                    }
                };
                let mut people: Vec<&UserId> = env.participants.iter().collect();
                people.push(&env.sender);
                if !c.scope.covers(&env.room, env.ts, &people) {
                    continue;
                }
                let attachment = match env.content.said() {
                    Content::File { .. } => self.fetch_attachment(env.content.said()).await,
                    _ => None,
                };
                // another firm's sender: the certificate kept in the record
                // (checked under the partner key the KM signed)
                let sender_cert = match &env.sender_cert {
                    Some(c) => Some(c.clone()),
                    None => self.signed_cert_of(&env.device).await.ok(),
                };
                items.push(crate::export::ExportItem {
                    envelope: env,
                    sealed: it.envelope.0,
                    entry: it.entry,
                    attachment,
                    sender_cert,
                });
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        self.case_step(&c.case, "decrypted", items.len() as u64)
            .await?;
        // other firms' senders (rooms shared with partners) verify under
        // the partner keys the KM signs
        let partners: cloister_proto::km::SignedBlob = self
            .km_request(cloister_proto::km::KmOp::PartnerKeys)
            .await?;
        let src = crate::export::Source {
            keys: &self.keys,
            cert: &self.cert(),
            case: case_blob,
            vault: &vault_blob,
            km_sign_pk: self.profile.km_sign_pk.0,
            checkpoint: &cp.checkpoint,
            unopened: &unopened,
            partners: Some(&partners),
        };
        crate::export::write(out, &src, &items, progress).map_err(ClientError::Local)
    }

    /// Download and decrypt an attachment into memory (`None` if it is gone).
    pub(crate) async fn fetch_attachment(&self, content: &Content) -> Option<Vec<u8>> {
        let tmp = std::env::temp_dir().join(format!(
            "cloister-attachment-{}",
            hex::encode(cloister_crypto::random_bytes::<16>().ok()?)
        ));
        let r = self.get_file(content, &tmp).await;
        let bytes = std::fs::read(&tmp).ok();
        let _ = std::fs::remove_file(&tmp);
        match r {
            Ok(_) => bytes,
            Err(e) => {
                tracing::warn!("attachment not exported: {e}");
                None
            }
        }
    }

    pub(crate) async fn vault_request<T: serde::de::DeserializeOwned>(
        &self,
        vault: &VaultTarget,
        op: &VaultOp,
    ) -> Result<T> {
        let req = signed::sign_vault_request(&self.keys, &self.cert(), op)?;
        api::send(
            self.http
                .post(format!("{}/v1/request", vault.url))
                .json(&req),
        )
        .await
    }

    /// Compliance: set retention (days) for a room kind (`im` or `group`).
    pub async fn retention_set(&self, kind: &str, days: u32) -> Result<()> {
        let _: serde_json::Value = self
            .km_request(KmOp::RetentionSet {
                kind: kind.to_owned(),
                days,
            })
            .await?;
        Ok(())
    }

    /// Compliance: apply retention: the KM shreds expired room-epoch keys no
    /// hold covers, and the vault deletes expired envelopes outside holds.
    pub async fn retention_run(&self) -> Result<(RetentionRunResponse, PurgeResponse)> {
        self.working_vault().await?;
        let r: RetentionRunResponse = self.km_request(KmOp::RetentionRun).await?;
        // Every member's device drops the destroyed keys (the server tells them).
        if let Some(n) = &r.notice {
            self.post_notice(n).await?;
        }
        let p = self.apply_purge(&r.order).await?;
        Ok((r, p))
    }

    /// Compliance: hand a KM-signed purge order to every registered vault
    /// (the counts are the sums).
    pub async fn apply_purge(&self, order: &SignedBlob) -> Result<PurgeResponse> {
        let mut total = PurgeResponse {
            deleted: 0,
            kept_for_hold: 0,
        };
        for vault in self.vault_targets().await? {
            let p: PurgeResponse = self
                .vault_request(
                    &vault,
                    &VaultOp::Purge {
                        ts: now_millis(),
                        order: order.clone(),
                    },
                )
                .await?;
            total.deleted += p.deleted;
            total.kept_for_hold += p.kept_for_hold;
        }
        Ok(total)
    }
}
