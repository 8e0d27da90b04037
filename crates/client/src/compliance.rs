//! Compliance on the device: escrow, blind-index keys, capture into the
//! vault, search, cases, custodian approvals and decryption sessions.

mod cases;

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
        self.admin_escrow_init_spread(custodians, threshold, 0)
            .await
    }

    /// [`Client::admin_escrow_init`] where any `threshold` shares must come
    /// from at least `min_jurisdictions` jurisdictions (the custodians'
    /// jurisdictions in the directory; the KM checks the spread).
    pub async fn admin_escrow_init_spread(
        &self,
        custodians: &[UserId],
        threshold: u8,
        min_jurisdictions: u8,
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
                min_jurisdictions,
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
        let sender_cert = if received {
            self.signed_cert_of(&h.device).await?
        } else {
            self.cert()
        };
        let foreign = h.sender.tenant() != self.profile.tenant;
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
            // what the firm's flagging policies say of it (a blocked one
            // never got here); a device without the policies records none
            dlp_flags: match self.dlp().await {
                Ok(d) => match content {
                    Content::Text { text } => d.check_text(text).flags,
                    Content::File { name, size, .. } => d.check_file(name, *size).flags,
                },
                Err(_) => Vec::new(),
            },
            sender_cert: foreign.then(|| sender_cert.clone()),
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
            sender_cert,
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
