//! Device standing at the vault: the KM-signed deny list it pulls, and the
//! shared check (fails closed when the list is stale).

use super::*;

impl Vault {
    /// Remember the KM's URL (where the deny list is pulled from).
    pub async fn set_km_url(&self, url: &str) -> Result<(), VaultError> {
        let url = url.trim_end_matches('/').to_owned();
        self.store
            .vault_set_meta(META_KM_URL, url.as_bytes())
            .await?;
        if let Ok(mut u) = self.km_url.write() {
            *u = Some(url);
        }
        Ok(())
    }

    pub fn km_url(&self) -> Option<String> {
        self.km_url.read().ok().and_then(|u| u.clone())
    }

    /// Pull the deny list from the KM now (one pull at a time).
    pub async fn pull_deny_list(&self) -> Result<(), String> {
        let _one = self.pulling.lock().await;
        let url = self
            .km_url()
            .ok_or("the vault does not know its KM's URL (vault init --km)")?;
        let r = self
            .http
            .post(format!("{url}/v1/deny-list"))
            .json(&self.deny_list_request())
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("cannot reach the KM at {url}: {e}"))?;
        if !r.status().is_success() {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            return Err(format!("the KM refused the deny list ({status}): {body}"));
        }
        let blob: cloister_proto::km::SignedBlob = r
            .json()
            .await
            .map_err(|e| format!("the KM's deny list is malformed: {e}"))?;
        self.apply_deny_list(&blob).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Keep the deny list current: pull it every `every` until `stop`.
    pub async fn keep_standing(
        self: Arc<Self>,
        every: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.pull_deny_list().await {
                tracing::warn!("vault deny list not refreshed: {e}");
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Device standing under the deny list; if the list is stale, pull it
    /// once before deciding (and refuse if that fails).
    pub(crate) async fn check_standing(&self, cert: &DeviceCert) -> Result<(), ApiError> {
        let check = || -> Result<(), cloister_standing::StandingError> {
            let deny = self
                .deny
                .read()
                .map_err(|_| cloister_standing::StandingError::Unknown("deny list lock".into()))?;
            cloister_standing::check(cert, Some(&self.tenant), now_millis(), &*deny)
        };
        match check() {
            Err(cloister_standing::StandingError::Unknown(_)) => {
                if let Err(e) = self.pull_deny_list().await {
                    tracing::warn!("vault deny list not refreshed: {e}");
                }
                Ok(check()?)
            }
            r => Ok(r?),
        }
    }

    /// How old the KM's deny list may get before every request is refused.
    pub fn set_standing_max_age(&self, max_age_ms: u64) {
        if let Ok(mut d) = self.deny.write() {
            d.set_max_age(max_age_ms);
        }
    }

    /// A request for the tenant's deny list, signed with the receipt key
    /// the KM registered for this vault.
    pub fn deny_list_request(&self) -> cloister_proto::km::DenyListRequest {
        let ts = now_millis();
        let sig = self.signer.sign(
            signed::DENY_LIST_REQUEST,
            &signed::deny_list_transcript(&self.tenant, ts),
        );
        cloister_proto::km::DenyListRequest {
            tenant: self.tenant.clone(),
            ts,
            sig: Fixed(sig),
        }
    }

    /// Take a KM-signed deny list. An older one than the list in force is
    /// ignored (a replay cannot undo a revocation); a fresh one must be
    /// recent, since its age is what makes the vault fail closed.
    pub fn apply_deny_list(
        &self,
        blob: &cloister_proto::km::SignedBlob,
    ) -> Result<bool, VaultError> {
        let body: cloister_standing::DenyListBody =
            verify_blob(&self.km_pk, signed::DENY_LIST, blob, "deny list")?;
        if body.tenant != self.tenant {
            return Err(VaultError::Corrupt("deny list for another tenant"));
        }
        // Not from the future: a list dated ahead would hide newer ones
        // (a replay cannot undo a revocation, so the newest date wins).
        if body.issued_ms > now_millis().saturating_add(30_000) {
            return Err(VaultError::Corrupt("deny list dated in the future"));
        }
        if !cloister_proto::within_skew(body.issued_ms) {
            return Err(VaultError::Corrupt(
                "deny list issued outside the clock skew",
            ));
        }
        let escrow_generation = body.escrow_generation;
        let pinned: HashSet<String> = body.pinned.iter().cloned().collect();
        let partners: HashMap<TenantId, [u8; 32]> = body
            .partners
            .iter()
            .map(|p| (p.tenant.clone(), p.sign_pk.0))
            .collect();
        let mut d = self
            .deny
            .write()
            .map_err(|_| VaultError::Corrupt("deny list lock"))?;
        let newer = d.replace(body);
        if newer {
            if let Ok(mut p) = self.partners.write() {
                *p = partners;
            }
            self.escrow_generation
                .fetch_max(escrow_generation, std::sync::atomic::Ordering::Relaxed);
            if let Ok(mut p) = self.pinned.write() {
                *p = pinned;
            }
        }
        Ok(newer)
    }
}
