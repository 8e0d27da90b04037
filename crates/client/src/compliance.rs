//! Compliance on the device: escrow, blind-index keys, capture into the
//! vault, search, cases, custodian approvals and decryption sessions.

use super::*;
use cloister_crypto::escrow::{self, EscrowSecret};
use cloister_proto::km::{
    Approval, Case, CaseApprovals, CaseListResponse, CaseScope, RetentionRunResponse, SignedBlob,
    VaultDescriptor, VaultRegisterResponse,
};
use cloister_proto::vault::{FetchResponse, PeriodQuery, PurgeResponse, VaultOp};

impl Client {
    /// Admin: create the tenant's escrow key, split its private key k-of-n
    /// among `custodians` (one share each, sealed to their newest active
    /// device), register the public key and the sealed shares with the KM,
    /// and forget the private key. Returns the KM-signed descriptor.
    pub async fn admin_escrow_init(
        &self,
        custodians: &[UserId],
        threshold: u8,
    ) -> Result<cloister_proto::km::EscrowDescriptor> {
        use cloister_crypto::escrow;
        let n = custodians.len();
        if !(2..=32).contains(&n) || threshold < 2 || threshold as usize > n {
            return Err(ClientError::Input(format!(
                "need 2 to 32 custodians and 2 <= threshold <= custodians; got {n} and {threshold}"
            )));
        }
        let users = self.admin_list_users().await?;
        let mut devices = Vec::with_capacity(n);
        for c in custodians {
            let u = users
                .iter()
                .find(|u| &u.user == c && u.status == "active")
                .ok_or_else(|| ClientError::Input(format!("{c} is not an active user")))?;
            let d = u
                .devices
                .iter()
                .filter(|d| d.status == "active")
                .max_by_key(|d| d.issued_at)
                .ok_or_else(|| {
                    ClientError::Input(format!("{c} has no enrolled device to hold a share"))
                })?;
            devices.push(self.cert_of(&d.device).await?);
        }
        let (public, secret) = escrow::generate()?;
        let shares = escrow::split(&secret, threshold, n as u8)?;
        // Check the split before anything leaves this process.
        let check: Vec<_> = shares.iter().take(threshold as usize).cloned().collect();
        escrow::combine(&check, threshold, &public)?;
        drop(secret);
        let mut sealed = Vec::with_capacity(n);
        for (i, (share, cert)) in shares.iter().zip(&devices).enumerate() {
            let number = i as u8 + 1;
            let ctx = signed::share_context(&self.profile.tenant, &public, number);
            let (enc, ct) = escrow::seal_share(&cert.hpke_pk.0, &ctx, share)?;
            sealed.push(cloister_proto::km::SealedShare {
                custodian: cert.user.clone(),
                device: cert.device,
                number,
                enc: Fixed(enc),
                ct: ct.into(),
            });
        }
        drop(shares);
        let signed: cloister_proto::km::SignedEscrow = self
            .km_request(KmOp::EscrowInit {
                public: Fixed(public),
                threshold,
                shares: sealed,
            })
            .await?;
        let d = signed::verify_escrow(&self.profile.km_sign_pk.0, &signed)?;
        if d.public.0 != public {
            return Err(ClientError::Local(
                "the KM registered another escrow key".into(),
            ));
        }
        Ok(d)
    }

    /// The tenant's escrow descriptor, verified against the pinned KM key.
    pub async fn escrow_info(&self) -> Result<cloister_proto::km::EscrowDescriptor> {
        let signed: cloister_proto::km::SignedEscrow = self.km_request(KmOp::EscrowInfo).await?;
        let d = signed::verify_escrow(&self.profile.km_sign_pk.0, &signed)?;
        if d.tenant != self.profile.tenant {
            return Err(ClientError::Local(
                "escrow descriptor of another tenant".into(),
            ));
        }
        Ok(d)
    }

    /// Custodian: open my escrow share(s): (share number, share).
    pub async fn my_escrow_shares(&self) -> Result<Vec<(u8, cloister_crypto::SecretBytes)>> {
        let d = self.escrow_info().await?;
        let shares: Vec<cloister_proto::km::SealedShare> =
            self.km_request(KmOp::MyEscrowShare).await?;
        let mut out = Vec::new();
        for s in shares {
            if s.device != self.device() {
                return Err(ClientError::Input(format!(
                    "your share is sealed to your device {}, not this one",
                    s.device
                )));
            }
            let ctx = signed::share_context(&self.profile.tenant, &d.public.0, s.number);
            let share =
                cloister_crypto::escrow::open_share(&self.keys, &ctx, &s.enc.0, s.ct.as_slice())?;
            out.push((s.number, share));
        }
        Ok(out)
    }

    /// Blind-index keys of the given periods.
    pub async fn index_keys(&self, periods: &[u32]) -> Result<HashMap<u32, RoomKey>> {
        let r: cloister_proto::km::IndexKeysResponse = self
            .km_request(KmOp::IndexKeys {
                periods: periods.to_vec(),
            })
            .await?;
        let mut out = HashMap::new();
        for sk in &r.keys {
            let p = u32::try_from(sk.epoch)
                .map_err(|_| ClientError::Local("bad index period".into()))?;
            if sk.room != RoomId([0; 16]) || !periods.contains(&p) {
                return Err(ClientError::Local(
                    "the KM answered with another key".into(),
                ));
            }
            out.insert(
                p,
                cloister_crypto::hpke_seal::open_room_key(&self.keys, &self.profile.tenant, sk)?,
            );
        }
        if periods.iter().any(|p| !out.contains_key(p)) {
            return Err(ClientError::Local(
                "the KM did not release every index key asked for".into(),
            ));
        }
        Ok(out)
    }
}

impl Client {
    /// The tenant's vault as registered with the KM (verified against the
    /// pinned KM key), or `None` if none is registered.
    pub async fn vault_descriptor(&self) -> Result<Option<(SignedBlob, VaultDescriptor)>> {
        let blob: SignedBlob = match self.km_request(KmOp::VaultInfo).await {
            Ok(b) => b,
            Err(ClientError::Api(a)) if a.code == "no_vault" => return Ok(None),
            Err(e) => return Err(e),
        };
        let d: VaultDescriptor =
            signed::verify_blob(&self.profile.km_sign_pk.0, signed::VAULT, &blob, "vault")
                .map_err(|_| {
                    ClientError::Local("the vault descriptor is not signed by the KM".into())
                })?;
        if d.tenant != self.profile.tenant {
            return Err(ClientError::Local(
                "the KM answered with another tenant's vault".into(),
            ));
        }
        Ok(Some((blob, d)))
    }

    /// Capture into the tenant's registered vault from now on (if one is
    /// registered). Returns whether capture is on and required.
    pub async fn use_registered_vault(&self) -> Result<Option<VaultTarget>> {
        let found = self.vault_descriptor().await?;
        self.vault_checked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let Some((_, d)) = found else {
            return Ok(None);
        };
        let t = VaultTarget {
            url: trim_url(&d.url),
            receipt_pk: d.receipt_pk.0,
            log_key: d.log_key,
            required: d.capture_required,
        };
        if let Ok(mut v) = self.vault.lock() {
            *v = Some(t.clone());
        }
        Ok(Some(t))
    }

    /// Capture into the vault at `url`, which must be the tenant's vault as
    /// registered with (and signed by) the KM.
    pub async fn set_vault(&self, url: &str) -> Result<VaultTarget> {
        let url = trim_url(url);
        let info: cloister_proto::vault::VaultInfo =
            api::send(self.http.get(format!("{url}/v1/info"))).await?;
        let Some((_, d)) = self.vault_descriptor().await? else {
            return Err(ClientError::Input(
                "no vault is registered with the KM; run `cloister admin vault register` first"
                    .into(),
            ));
        };
        if info.tenant != self.profile.tenant
            || info.receipt_pk != d.receipt_pk
            || info.log_key != d.log_key
        {
            return Err(ClientError::Local(format!(
                "the vault at {url} is not the one the KM registered for {}",
                self.profile.tenant
            )));
        }
        let t = VaultTarget {
            url,
            receipt_pk: d.receipt_pk.0,
            log_key: d.log_key,
            required: d.capture_required,
        };
        if let Ok(mut v) = self.vault.lock() {
            *v = Some(t.clone());
        }
        Ok(t)
    }

    fn vault_target(&self) -> Result<VaultTarget> {
        self.vault
            .lock()
            .ok()
            .and_then(|v| v.clone())
            .ok_or_else(|| ClientError::Input("no vault configured for this device".into()))
    }

    /// Admin: register the vault at `url` with the KM, with its capture
    /// policy, and hand the policy to the messaging server.
    pub async fn admin_vault_register(&self, url: &str, required: bool) -> Result<VaultDescriptor> {
        let url = trim_url(url);
        let info: cloister_proto::vault::VaultInfo =
            api::send(self.http.get(format!("{url}/v1/info"))).await?;
        if info.tenant != self.profile.tenant {
            return Err(ClientError::Input(format!(
                "the vault at {url} serves tenant {}, not {}",
                info.tenant, self.profile.tenant
            )));
        }
        let r: VaultRegisterResponse = self
            .km_request(KmOp::VaultRegister {
                url: url.clone(),
                receipt_pk: info.receipt_pk,
                log_key: info.log_key.clone(),
                capture_required: required,
            })
            .await?;
        let d: VaultDescriptor =
            signed::verify_blob(&self.profile.km_sign_pk.0, signed::VAULT, &r.vault, "vault")?;
        self.post_notice(&r.notice).await?;
        Ok(d)
    }

    async fn escrow_cached(&self) -> Result<cloister_proto::km::EscrowDescriptor> {
        if let Some(d) = self.escrow.lock().ok().and_then(|e| e.clone()) {
            return Ok(d);
        }
        let d = self.escrow_info().await?;
        if let Ok(mut e) = self.escrow.lock() {
            *e = Some(d.clone());
        }
        Ok(d)
    }

    async fn index_key(&self, period: u32) -> Result<RoomKey> {
        if let Some(k) = self
            .index_cache
            .lock()
            .ok()
            .and_then(|c| c.get(&period).cloned())
        {
            return Ok(k);
        }
        let keys = self.index_keys(&[period]).await?;
        let k = keys
            .get(&period)
            .cloned()
            .ok_or_else(|| ClientError::Local("no index key".into()))?;
        if let Ok(mut c) = self.index_cache.lock() {
            c.insert(period, k.clone());
        }
        Ok(k)
    }

    /// Capture a sealed message into the vault (what `send` does before
    /// posting) and return the vault's verified receipt.
    pub async fn capture(
        &self,
        room: &RoomId,
        env: &Envelope,
    ) -> Result<Option<cloister_proto::vault::SignedReceipt>> {
        let h = message::peek_header(env)?;
        let keys = self.room_keys(room, &[h.epoch]).await?;
        let key = keys
            .get(&h.epoch)
            .ok_or_else(|| ClientError::Local("no key".into()))?;
        let (content, att) = message::decrypt_attributed(key, &h, env)?;
        self.capture_envelope(room, env, &content, &att, false)
            .await
    }

    /// Seal the message's audit envelope into the vault and return the
    /// vault's verified receipt (`None` when no vault is set).
    pub(crate) async fn capture_envelope(
        &self,
        room: &RoomId,
        env: &Envelope,
        content: &Content,
        attribution: &cloister_proto::vault::Attribution,
        received: bool,
    ) -> Result<Option<cloister_proto::vault::SignedReceipt>> {
        // Capture is not up to the application: the first message this
        // device handles looks up the tenant's registered vault.
        if !self
            .vault_checked
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.use_registered_vault().await?;
        }
        let Some(vault) = self.vault.lock().ok().and_then(|v| v.clone()) else {
            return Ok(None);
        };
        let h = message::peek_header(env)?;
        let escrow = self.escrow_cached().await?;
        let participants = self
            .with_state(room, false, |s| {
                s.members.iter().cloned().collect::<Vec<_>>()
            })
            .await?;
        let ct_sha = cloister_crypto::sha256(env.ciphertext.as_slice());
        let attachments = match content {
            Content::File { sha256, .. } => vec![*sha256],
            Content::Text { .. } => vec![],
        };
        let audit = cloister_proto::vault::AuditEnvelope {
            message_id: h.id,
            room: h.room,
            epoch: h.epoch,
            sender: h.sender.clone(),
            device: h.device,
            participants,
            ts: h.ts,
            ciphertext_sha256: Fixed(ct_sha),
            content: content.clone(),
            attachment_sha256: attachments,
            attribution: attribution.clone(),
        };
        let sealed =
            cloister_crypto::capture::seal(&escrow.public.0, &self.profile.tenant, &audit)?;
        let period = cloister_crypto::blind::period_of(h.ts);
        let key = self.index_key(period).await?;
        let tokens = cloister_crypto::capture::tokens(&key, &audit)
            .into_iter()
            .map(Fixed)
            .collect();
        let capture = cloister_proto::vault::Capture {
            envelope: serde_json::to_vec(&sealed)
                .map_err(|e| ClientError::Local(e.to_string()))?
                .into(),
            period,
            tokens,
            received,
            header: env.header.clone(),
            sig: env.sig,
            sender_cert: if received {
                self.signed_cert_of(&h.device).await?
            } else {
                self.profile.cert.clone()
            },
        };
        let envelope_sha = cloister_crypto::sha256(capture.envelope.as_slice());
        let op = cloister_proto::vault::VaultOp::Capture {
            ts: now_millis(),
            capture,
        };
        let r: cloister_proto::vault::SignedReceipt = self.vault_request(&vault, &op).await?;
        let receipt = signed::verify_receipt(&vault.receipt_pk, &r).map_err(|_| {
            ClientError::Local("the vault's receipt is not signed by the vault".into())
        })?;
        // A recipient's capture of an already captured message gets the
        // sender's receipt: same message and ciphertext, another envelope.
        if receipt.message_id != h.id
            || receipt.ciphertext_sha256.0 != ct_sha
            || (!received && receipt.envelope_sha256.0 != envelope_sha)
        {
            return Err(ClientError::Local(
                "the vault's receipt is for something else".into(),
            ));
        }
        Ok(Some(r))
    }

    /// Compliance search: messages matching every term, in a date range.
    /// Terms are turned into tokens here; the vault never sees them.
    pub async fn compliance_search(
        &self,
        terms: &[(cloister_crypto::blind::Field, String)],
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    ) -> Result<Vec<cloister_proto::vault::SearchHit>> {
        let vault = self.vault_target()?;
        if terms.is_empty() {
            return Err(ClientError::Input("give at least one search term".into()));
        }
        if from_ms > to_ms {
            return Err(ClientError::Input(
                "the date range ends before it starts".into(),
            ));
        }
        let periods = cloister_crypto::blind::periods_between(from_ms, to_ms, 120);
        let keys = self.index_keys(&periods).await?;
        let mut queries = Vec::with_capacity(periods.len());
        for p in &periods {
            let k = keys
                .get(p)
                .ok_or_else(|| ClientError::Local("missing index key".into()))?;
            let tokens = terms
                .iter()
                .map(|(f, t)| Fixed(cloister_crypto::blind::token(k, *f, t)))
                .collect();
            queries.push(cloister_proto::vault::PeriodQuery { period: *p, tokens });
        }
        let op = cloister_proto::vault::VaultOp::Search {
            ts: now_millis(),
            queries,
            from_ms,
            to_ms,
            limit,
        };
        let r: cloister_proto::vault::SearchResponse = self.vault_request(&vault, &op).await?;
        Ok(r.hits)
    }
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

    fn verify_case(&self, blob: &SignedBlob) -> Result<Case> {
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
        let (number, share) = shares
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Input("you hold no escrow share".into()))?;
        let ctx =
            signed::approval_context(&self.profile.tenant, &c.case, c.version, &case_sha, number);
        let (enc, ct) = escrow::seal_share(&c.session_pk.0, &ctx, &share)?;
        drop(share);
        let a = Approval {
            tenant: self.profile.tenant.clone(),
            case: c.case.clone(),
            version: c.version,
            case_sha256: Fixed(case_sha),
            custodian: self.user().clone(),
            device: self.device(),
            number,
            enc: Fixed(enc),
            ct: ct.into(),
            ts: now_millis(),
        };
        let approval = signed::device_sign_blob(&self.keys, signed::APPROVAL, &a)?;
        let _: serde_json::Value = self.km_request(KmOp::CaseApprove { approval }).await?;
        Ok(c)
    }

    async fn case_step(&self, case: &str, step: &str, count: u64) -> Result<()> {
        let _: serde_json::Value = self
            .km_request(KmOp::CaseStep {
                case: case.to_owned(),
                step: step.to_owned(),
                count,
            })
            .await?;
        Ok(())
    }

    /// The escrow key, rebuilt in memory from the case's approvals. Each
    /// approval must be signed by a custodian's certified device, name this
    /// case's version and exact bytes, and open under the session key.
    async fn case_session(
        &self,
        case: &str,
    ) -> Result<(SignedBlob, Case, usize, u8, EscrowSecret)> {
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
        let escrow = self.escrow_info().await?;
        let case_sha = cloister_crypto::sha256(r.case.body.as_slice());
        let mut shares = Vec::new();
        let mut numbers = HashSet::new();
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
                || !escrow.custodians.contains(&a.custodian)
                || a.case != c.case
                || a.version != c.version
                || a.case_sha256.0 != case_sha
                || !numbers.insert(a.number)
            {
                tracing::warn!(%case, custodian = %a.custodian, "an approval is for another case or version; ignored");
                continue;
            }
            let ctx = signed::approval_context(&c.tenant, &c.case, c.version, &case_sha, a.number);
            match escrow::open_session_share(&session, &ctx, &a.enc.0, a.ct.as_slice()) {
                Ok(s) => shares.push(s),
                Err(_) => {
                    tracing::warn!(%case, custodian = %a.custodian, "an approval's share does not open for this case; ignored");
                }
            }
        }
        let k = escrow.threshold;
        if shares.len() < k as usize {
            return Err(ClientError::Input(format!(
                "case {case:?} has {} valid approval(s) of the {k} needed; nothing was decrypted",
                shares.len()
            )));
        }
        let secret = escrow::combine(&shares, k, &escrow.public.0)?;
        drop(shares);
        Ok((r.case, c, r.approvals.len(), k, secret))
    }

    /// Compliance: run the case's decryption session and export exactly the
    /// envelopes in its scope to `out`. Every step is logged at the KM
    /// before it happens; the escrow key exists only inside this call.
    pub async fn case_export(
        &self,
        case: &str,
        out: &Path,
        progress: &dyn Fn(u64, u64),
    ) -> Result<CaseExport> {
        let (case_blob, c, approvals, k, secret) = self.case_session(case).await?;
        // Logged (and checked against the threshold) before any decryption.
        self.case_step(case, "session_opened", approvals as u64)
            .await?;
        let result = self
            .export_with(&case_blob, &c, &secret, out, progress)
            .await;
        drop(secret);
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

    async fn export_with(
        &self,
        case_blob: &SignedBlob,
        c: &Case,
        secret: &EscrowSecret,
        out: &Path,
        progress: &dyn Fn(u64, u64),
    ) -> Result<crate::export::ExportSummary> {
        let vault = self.vault_target()?;
        let (vault_blob, _) = self
            .vault_descriptor()
            .await?
            .ok_or_else(|| ClientError::Input("no vault is registered".into()))?;
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
                match &rec.event {
                    cloister_log::AuditEvent::EnvelopeIngested {
                        message_id,
                        envelope_sha256,
                        ..
                    } if *message_id == sealed.message_id.to_hex() && *envelope_sha256 == sha => {}
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
                let env = cloister_crypto::capture::open(secret, &sealed)?;
                let mut people: Vec<&UserId> = env.participants.iter().collect();
                people.push(&env.sender);
                if !c.scope.covers(&env.room, env.ts, &people) {
                    continue;
                }
                let attachment = match &env.content {
                    Content::File { .. } => self.fetch_attachment(&env.content).await,
                    Content::Text { .. } => None,
                };
                let sender_cert = self.signed_cert_of(&env.device).await.ok();
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
        let src = crate::export::Source {
            keys: &self.keys,
            cert: &self.profile.cert,
            case: case_blob,
            vault: &vault_blob,
            km_sign_pk: self.profile.km_sign_pk.0,
            checkpoint: &cp.checkpoint,
        };
        crate::export::write(out, &src, &items, progress).map_err(ClientError::Local)
    }

    /// Download and decrypt an attachment into memory (`None` if it is gone).
    async fn fetch_attachment(&self, content: &Content) -> Option<Vec<u8>> {
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

    async fn vault_request<T: serde::de::DeserializeOwned>(
        &self,
        vault: &VaultTarget,
        op: &VaultOp,
    ) -> Result<T> {
        let req = signed::sign_vault_request(&self.keys, &self.profile.cert, op)?;
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
        self.vault_target()?;
        let r: RetentionRunResponse = self.km_request(KmOp::RetentionRun).await?;
        // Every member's device drops the destroyed keys (the server tells them).
        if let Some(n) = &r.notice {
            self.post_notice(n).await?;
        }
        let p = self.apply_purge(&r.order).await?;
        Ok((r, p))
    }

    /// Compliance: hand a KM-signed purge order to the vault.
    pub async fn apply_purge(&self, order: &SignedBlob) -> Result<PurgeResponse> {
        let vault = self.vault_target()?;
        self.vault_request(
            &vault,
            &VaultOp::Purge {
                ts: now_millis(),
                order: order.clone(),
            },
        )
        .await
    }
}
