//! The tenant master key as the KM uses it: the KM's own secrets wrapped
//! under it, whether it can be used (the crypto-lock) and its rotation.
//!
//! A rotation runs in steps an admin drives (`cloister admin rotate-tmk`):
//! the first makes a new master key and a generation under it; each step
//! re-wraps a batch of stored keys (each replaced only if unchanged since
//! it was read, so a key shredded meanwhile stays shredded); the step that
//! finds none left destroys the old generations and retires the old master
//! key. Every step is durable on its own, so a crash anywhere leaves each
//! key wrapped under a key that exists, and the next step goes on.

use super::*;
use cloister_crypto::SecretBytes;
use cloister_proto::km::TmkRotation;

const META_SIGNER: &str = "signer_wrapped";
const SIGNER_AAD: &[u8] = b"cloister/km-signer/v1";
pub(crate) const META_LOG_SIGNER: &str = "log_signer_wrapped";
pub(crate) const LOG_SIGNER_AAD: &[u8] = b"cloister/log-signer/v1";
/// The audit log's next key while a hand-over is under way (empty: none).
pub(crate) const META_LOG_NEXT: &str = "log_signer_next";
const META_EXCHANGE: &str = "exchange_key_wrapped";
const EXCHANGE_AAD: &[u8] = b"cloister/km-exchange/v1";

/// The KM's own secrets under the TMK: (meta name, associated data).
const TMK_SECRETS: [(&str, &[u8]); 4] = [
    (META_SIGNER, SIGNER_AAD),
    (META_LOG_SIGNER, LOG_SIGNER_AAD),
    (META_LOG_NEXT, LOG_SIGNER_AAD),
    (META_EXCHANGE, EXCHANGE_AAD),
];

/// Where a secret is kept tagged with its TMK version; the bare name holds
/// one wrapped before versions existed (version 1).
pub(crate) fn tagged(meta: &str) -> String {
    format!("{meta}@tmk")
}

/// A secret's wrap as [`KeyProvider::unwrap`] reads it (tagged); an
/// empty value is a secret that was cleared.
pub(crate) async fn stored_wrap(
    store: &Arc<dyn KmStore>,
    meta: &str,
) -> Result<Option<Vec<u8>>, cloister_store::StoreError> {
    if let Some(w) = store.get_meta(&tagged(meta)).await? {
        return Ok((!w.is_empty()).then_some(w));
    }
    Ok(store
        .get_meta(meta)
        .await?
        .map(|w| provider::tag_legacy(&w)))
}

/// The most keys one rotation step re-wraps.
pub const MAX_ROTATION_BATCH: u32 = 10_000;

impl Km {
    /// The KM's certificate-signing key (created on first use).
    pub(crate) async fn km_signer(
        store: &Arc<dyn KmStore>,
        provider: &Arc<dyn KeyProvider>,
    ) -> Result<KmSigner, KmError> {
        let fresh = || Ok(KmSigner::generate()?.secret_bytes());
        let secret = Self::wrapped_secret(store, provider, META_SIGNER, SIGNER_AAD, fresh).await?;
        Ok(KmSigner::from_secret(secret.expose())?)
    }

    /// The KM's certificate-signing key, which must exist.
    pub(crate) async fn stored_km_signer(
        store: &Arc<dyn KmStore>,
        provider: &Arc<dyn KeyProvider>,
    ) -> Result<KmSigner, KmError> {
        let w = stored_wrap(store, META_SIGNER)
            .await?
            .ok_or(KmError::Corrupt("signing key"))?;
        Ok(KmSigner::from_secret(
            provider.unwrap(SIGNER_AAD, &w)?.expose(),
        )?)
    }

    /// The audit log's signing key, wrapped under the TMK (created on first use).
    pub(crate) async fn log_signer(
        store: &Arc<dyn KmStore>,
        provider: &Arc<dyn KeyProvider>,
    ) -> Result<KmSigner, KmError> {
        let fresh = || Ok(KmSigner::generate()?.secret_bytes());
        let secret =
            Self::wrapped_secret(store, provider, META_LOG_SIGNER, LOG_SIGNER_AAD, fresh).await?;
        Ok(KmSigner::from_secret(secret.expose())?)
    }

    /// The KM-to-KM exchange key, wrapped under the TMK (created on first use).
    pub(crate) async fn exchange_key(
        store: &Arc<dyn KmStore>,
        provider: &Arc<dyn KeyProvider>,
    ) -> Result<cloister_crypto::ExchangeKey, KmError> {
        let fresh = || Ok(cloister_crypto::ExchangeKey::generate()?.secret_bytes());
        let secret =
            Self::wrapped_secret(store, provider, META_EXCHANGE, EXCHANGE_AAD, fresh).await?;
        Ok(cloister_crypto::ExchangeKey::from_secret(secret.expose())?)
    }

    /// A secret kept in `meta` wrapped under the TMK: unwrapped if stored,
    /// else made by `fresh` and stored once.
    async fn wrapped_secret(
        store: &Arc<dyn KmStore>,
        provider: &Arc<dyn KeyProvider>,
        meta: &str,
        aad: &[u8],
        fresh: impl FnOnce() -> Result<SecretBytes, KmError>,
    ) -> Result<SecretBytes, KmError> {
        if let Some(w) = stored_wrap(store, meta).await? {
            return Ok(provider.unwrap(aad, &w)?);
        }
        let secret = fresh()?;
        store
            .init_meta(&tagged(meta), &provider.wrap(aad, secret.expose())?)
            .await?;
        Ok(secret)
    }

    /// One unwrap through the key provider: whether the TMK can be used.
    pub(crate) async fn probe_tmk(&self) -> Result<(), Denied> {
        let w = stored_wrap(&self.store, META_SIGNER)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Denied::internal("the KM's signing key is missing"))?;
        self.provider.unwrap(SIGNER_AAD, &w).map(|_| ())?;
        Ok(())
    }

    /// Whether the master key can be used now: one unwrap through the
    /// provider (the same test as readiness).
    pub async fn lock_status(&self) -> Result<cloister_proto::km::LockStatus, Denied> {
        let w = stored_wrap(&self.store, META_SIGNER)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Denied::internal("the KM's signing key is missing"))?;
        let reason = self
            .provider
            .unwrap(SIGNER_AAD, &w)
            .err()
            .map(|e| e.to_string());
        Ok(cloister_proto::km::LockStatus {
            locked: reason.is_some(),
            provider: self.provider.name().to_owned(),
            reason,
            lease_secs: self.config.lease_secs,
            tmk_versions: self.provider.tmk_versions(),
        })
    }

    /// The TMK versions the provider holds (more than one: a rotation is
    /// unfinished).
    pub fn tmk_versions(&self) -> Vec<u32> {
        self.provider.tmk_versions()
    }

    /// One step of a TMK rotation (see the module's notes): starts one if
    /// none is under way, re-wraps up to `batch` keys, and finishes it when
    /// none is left.
    pub async fn rotate_tmk_step(
        &self,
        actor: Option<&UserId>,
        batch: u32,
    ) -> Result<TmkRotation, Denied> {
        if batch == 0 || batch > MAX_ROTATION_BATCH {
            return Err(Denied::malformed(
                "bad_batch",
                format!("re-wrap 1 to {MAX_ROTATION_BATCH} keys per step"),
            ));
        }
        let _one = self.rotation.lock().await;
        let before = self.provider.tmk_versions();
        let from = *before
            .first()
            .ok_or_else(|| Denied::internal("no master key"))?;
        let (to, generation) = {
            // not while retention moves the generations
            let _all = self.keys_lock.write().await;
            self.provider.begin_tmk_rotation()?
        };
        if before.len() == 1 {
            tracing::warn!(from, to, "master key rotation started");
            self.record(actor, rotation_event("started", from, to, 0))
                .await?;
        }
        self.rewrap_secrets(to).await?;
        let rewrapped = {
            // not while retention moves keys to a newer generation (its
            // compare-and-swap would miss a key re-wrapped meanwhile)
            let _keys = self.keys_lock.read().await;
            self.rewrap_batch(generation, batch).await?
        };
        let remaining = self
            .store
            .count_wrapped_below(generation)
            .await
            .map_err(store_err)?;
        let finished = remaining == 0 && self.finish_rotation(actor, from, to, generation).await?;
        Ok(TmkRotation {
            from,
            to,
            generation,
            rewrapped,
            remaining,
            finished,
        })
    }

    /// The KM's own secrets, each under TMK version `to` (one row each:
    /// a crash leaves each under one version or the other).
    async fn rewrap_secrets(&self, to: u32) -> Result<(), Denied> {
        for (meta, aad) in TMK_SECRETS {
            let Some(w) = stored_wrap(&self.store, meta).await.map_err(store_err)? else {
                continue;
            };
            if provider::tmk_version_of(&w) == Some(to) {
                continue;
            }
            let secret = self.provider.unwrap(aad, &w)?;
            let nw = self.provider.wrap(aad, secret.expose())?;
            self.store
                .set_meta(&tagged(meta), &nw)
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    /// Re-wrap up to `batch` keys under a generation below `generation`.
    async fn rewrap_batch(&self, generation: u32, batch: u32) -> Result<u64, Denied> {
        let old = self
            .store
            .wrapped_keys_below(generation, batch)
            .await
            .map_err(store_err)?;
        let mut rows = Vec::with_capacity(old.len());
        for (name, n, w) in old {
            let aad = self.key_aad(&name, n)?;
            let k = self.provider.unwrap_destroyable(&aad, &w)?;
            let nw = self.provider.wrap_destroyable(&aad, k.expose())?;
            rows.push((name, n, w, nw));
        }
        self.store.rewrap_keys(&rows).await.map_err(store_err)
    }

    /// With no key left below `generation`: destroy the older generations
    /// and retire the old master key. `false` if a key turned up meanwhile.
    async fn finish_rotation(
        &self,
        actor: Option<&UserId>,
        from: u32,
        to: u32,
        generation: u32,
    ) -> Result<bool, Denied> {
        let all = self.keys_lock.write().await;
        if self
            .store
            .count_wrapped_below(generation)
            .await
            .map_err(store_err)?
            > 0
        {
            return Ok(false);
        }
        for (meta, _) in TMK_SECRETS {
            let w = stored_wrap(&self.store, meta).await.map_err(store_err)?;
            if w.is_some_and(|w| provider::tmk_version_of(&w) != Some(to)) {
                return Ok(false);
            }
        }
        self.provider.destroy_before(generation)?;
        self.provider.retire_tmks_before(to)?;
        if let Ok(mut m) = self.wrapped.lock() {
            m.clear();
        }
        let keys = self
            .store
            .live_wrapped_keys()
            .await
            .map_err(store_err)?
            .len() as u64;
        self.store.km_scrub().await.map_err(store_err)?;
        drop(all);
        tracing::warn!(from, to, keys, "master key rotation finished");
        self.record(actor, rotation_event("finished", from, to, keys))
            .await?;
        Ok(true)
    }

    /// Store `count` index keys from period `from` (load tools and tests:
    /// a tenant with many wrapped keys, without the traffic that makes them).
    #[doc(hidden)]
    pub async fn seed_index_keys(&self, from: u32, count: u32) -> Result<(), Denied> {
        let _keys = self.keys_lock.read().await;
        for p in from..from.saturating_add(count) {
            let aad = self.key_aad(INDEX_KEYS, p as u64)?;
            self.wrapped_key(INDEX_KEYS, p as u64, &aad).await?;
        }
        Ok(())
    }

    /// Unwrap every stored key and return a digest of (name, number, key)
    /// in order: the same before and after a rotation if no key was lost.
    #[doc(hidden)]
    pub async fn digest_keys(&self) -> Result<(u64, [u8; 32]), Denied> {
        let _keys = self.keys_lock.read().await;
        let mut all = self.store.live_wrapped_keys().await.map_err(store_err)?;
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut h = cloister_crypto::Sha256Stream::default();
        for (name, n, w) in &all {
            let aad = self.key_aad(name, *n)?;
            let k = self.provider.unwrap_destroyable(&aad, w)?;
            h.update(name.as_bytes());
            h.update(&n.to_be_bytes());
            h.update(k.expose());
        }
        Ok((all.len() as u64, h.finish()))
    }
}

fn rotation_event(step: &str, from: u32, to: u32, count: u64) -> AuditEvent {
    AuditEvent::KeyRotation {
        key: "master_key".into(),
        step: step.into(),
        from: format!("v{from}"),
        to: format!("v{to}"),
        count,
    }
}
