//! Compliance on the device: escrow, blind-index keys, capture into the
//! vault, search, cases, custodian approvals and decryption sessions.

mod cases;
mod escrow_keys;
mod reseal;
mod vaults;
pub use escrow_keys::MyShare;
pub use reseal::ResealSummary;

use super::*;
use cloister_crypto::escrow::{self, EscrowSecret};
use cloister_proto::km::{
    Approval, Case, CaseApprovals, CaseListResponse, CaseScope, RetentionRunResponse, SignedBlob,
    VaultDescriptor, VaultRegisterResponse,
};
use cloister_proto::vault::{FetchResponse, PeriodQuery, PurgeResponse, VaultOp};

impl Client {
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

/// How long a device seals captures to the escrow descriptor it fetched
/// before asking the KM again (the vault refuses a rotated-out one anyway).
pub const ESCROW_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);

impl Client {
    /// The escrow descriptor to seal captures to: fetched again after
    /// [`ESCROW_REFRESH`] or when `fresh` (the vault said it is rotated).
    async fn escrow_cached(&self, fresh: bool) -> Result<cloister_proto::km::EscrowDescriptor> {
        if !fresh
            && let Some((at, d)) = self.escrow.lock().ok().and_then(|e| e.clone())
            && at.elapsed() < ESCROW_REFRESH
        {
            return Ok(d);
        }
        let d = self.escrow_info().await?;
        if let Ok(mut e) = self.escrow.lock() {
            *e = Some((std::time::Instant::now(), d.clone()));
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
        match self
            .capture_to(&vault, room, env, (content, attribution), (received, false))
            .await
        {
            // the escrow key was rotated since this device last looked
            Err(e) if e.code() == Some("stale_escrow") => {
                self.capture_to(&vault, room, env, (content, attribution), (received, true))
                    .await
            }
            r => r,
        }
    }

    async fn capture_to(
        &self,
        vault: &VaultTarget,
        room: &RoomId,
        env: &Envelope,
        (content, attribution): (&Content, &cloister_proto::vault::Attribution),
        (received, fresh): (bool, bool),
    ) -> Result<Option<cloister_proto::vault::SignedReceipt>> {
        let h = message::peek_header(env)?;
        let escrow = self.escrow_cached(fresh).await?;
        let participants = self
            .with_state(room, false, |s| {
                s.members.iter().cloned().collect::<Vec<_>>()
            })
            .await?;
        let ct_sha = cloister_crypto::sha256(env.ciphertext.as_slice());
        let attachments = match content.said() {
            Content::File { sha256, .. } => vec![*sha256],
            _ => vec![],
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
                Ok(d) => match content.said() {
                    Content::Text { text } => d.check_text(text).flags,
                    Content::File { name, size, .. } => d.check_file(name, *size).flags,
                    Content::Relayed { .. } => Vec::new(),
                },
                Err(_) => Vec::new(),
            },
            sender_cert: foreign.then(|| sender_cert.clone()),
        };
        let sealed = cloister_crypto::capture::seal_to(
            &escrow.public.0,
            escrow.generation,
            &self.profile.tenant,
            &audit,
        )?;
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
        let r: cloister_proto::vault::SignedReceipt = self.vault_request(vault, &op).await?;
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
        // every registered vault (a regional one holds its users' captures)
        let mut hits: Vec<cloister_proto::vault::SearchHit> = Vec::new();
        let vaults = self.vault_targets().await?;
        if vaults.is_empty() {
            return Err(ClientError::Input("no vault is registered".into()));
        }
        for vault in vaults {
            let op = cloister_proto::vault::VaultOp::Search {
                ts: now_millis(),
                queries: queries.clone(),
                from_ms,
                to_ms,
                limit,
            };
            let r: cloister_proto::vault::SearchResponse = self.vault_request(&vault, &op).await?;
            for h in r.hits {
                if !hits.iter().any(|x| x.message_id == h.message_id) {
                    hits.push(h);
                }
            }
        }
        hits.sort_by_key(|h| h.ts);
        hits.truncate(limit as usize);
        Ok(hits)
    }
}
