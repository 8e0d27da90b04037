//! Trust between firms: an admin pins another firm's KM identity after
//! comparing its fingerprint out of band. Nothing is trusted by default; a
//! removal takes effect at once and is kept in the record; every change is
//! an audit record. (docs/federation.md)

use super::*;
use cloister_proto::federation::{KmIdentity, OwnIdentity, TrustRemoval, TrustedFirm};

const MAX_REASON: usize = 1000;

impl Km {
    /// This firm's KM identity as partners pin it.
    pub(crate) fn identity(&self) -> KmIdentity {
        KmIdentity {
            tenant: self.tenant.clone(),
            sign_pk: self.signer.public(),
            exchange_pk: self.exchange.public(),
        }
    }

    /// The pinned identity of `tenant`, if this firm trusts it now.
    pub(crate) fn trusted(&self, tenant: &TenantId) -> Option<KmIdentity> {
        self.dir()
            .trusts
            .get(tenant)
            .filter(|t| t.active())
            .and_then(|t| KmIdentity::parse(&t.km_key).ok())
    }

    pub(crate) async fn trust_op(
        &self,
        cert: &DeviceCert,
        op: KmOp,
    ) -> Result<serde_json::Value, Denied> {
        self.need(cert, Role::Admin, "trust between firms")?;
        match op {
            KmOp::TrustSelf => {
                let km_key = self.identity().to_key_string();
                json(&OwnIdentity {
                    tenant: self.tenant.clone(),
                    fingerprint: cloister_crypto::km_identity_fingerprint(&km_key),
                    km_key,
                })
            }
            KmOp::TrustList => json(&self.dir().trusts.values().cloned().collect::<Vec<_>>()),
            KmOp::TrustAdd {
                tenant,
                km_key,
                fingerprint,
                km_url,
            } => json(
                &self
                    .trust_add(
                        &cert.user,
                        &tenant,
                        &km_key,
                        fingerprint.as_deref(),
                        km_url.as_deref(),
                    )
                    .await?,
            ),
            KmOp::TrustRemove { tenant, reason } => {
                json(&self.trust_remove(&cert.user, &tenant, &reason).await?)
            }
            _ => Err(Denied::internal("not a trust operation")),
        }
    }

    async fn trust_add(
        &self,
        by: &UserId,
        tenant: &TenantId,
        km_key: &str,
        fingerprint: Option<&str>,
        km_url: Option<&str>,
    ) -> Result<TrustedFirm, Denied> {
        let km_url = km_url.map(check_url).transpose()?;
        let id = KmIdentity::parse(km_key)
            .map_err(|e| Denied::malformed("bad_km_key", e.to_string()))?;
        if &id.tenant != tenant {
            return Err(Denied::malformed(
                "bad_km_key",
                format!("the KM key is {}'s, not {tenant}'s", id.tenant),
            ));
        }
        if tenant == &self.tenant {
            return Err(Denied::malformed(
                "own_tenant",
                "a firm does not pin its own KM",
            ));
        }
        cloister_crypto::keys::VerifyKey::from_bytes(&id.sign_pk).map_err(|_| {
            Denied::malformed(
                "bad_km_key",
                "the KM key's signing key is not an Ed25519 key",
            )
        })?;
        let km_key = id.to_key_string();
        let fp = cloister_crypto::km_identity_fingerprint(&km_key);
        if let Some(want) = fingerprint {
            let norm = |s: &str| {
                s.chars()
                    .filter(char::is_ascii_hexdigit)
                    .map(|c| c.to_ascii_lowercase())
                    .collect::<String>()
            };
            if norm(want) != norm(&fp) {
                return Err(Denied::malformed(
                    "fingerprint_mismatch",
                    format!(
                        "the KM key's fingerprint is {fp}, not the one you compared; nothing was pinned"
                    ),
                ));
            }
        }
        let _w = self.directory.write.lock().await;
        let current = self
            .dir()
            .trusts
            .get(tenant)
            .filter(|t| t.active())
            .cloned();
        if let Some(old) = current {
            if old.km_key == km_key && (km_url.is_none() || old.km_url == km_url) {
                return Ok(old);
            }
            if old.km_key == km_key {
                // the same key, a new address: the address carries no trust
                let mut rec = old;
                rec.km_url = km_url;
                self.dir_apply(vec![directory::Change::Trust(rec.clone())])
                    .await?;
                return Ok(rec);
            }
            return Err(Denied::conflict(
                "trust_exists",
                format!(
                    "{tenant} is trusted under another KM key (fingerprint {}); remove that trust first",
                    old.fingerprint
                ),
            ));
        }
        let rec = TrustedFirm {
            tenant: tenant.clone(),
            km_key,
            fingerprint: fp.clone(),
            added_ms: now_millis(),
            added_by: by.clone(),
            km_url,
            removed: None,
        };
        self.record(
            Some(by),
            AuditEvent::TrustAdded {
                tenant: tenant.clone(),
                fingerprint: fp,
            },
        )
        .await?;
        self.dir_apply(vec![directory::Change::Trust(rec.clone())])
            .await?;
        tracing::info!(%tenant, "firm trusted");
        Ok(rec)
    }

    async fn trust_remove(
        &self,
        by: &UserId,
        tenant: &TenantId,
        reason: &str,
    ) -> Result<TrustedFirm, Denied> {
        if reason.trim().is_empty() || reason.len() > MAX_REASON {
            return Err(Denied::malformed(
                "reason_required",
                format!("a reason of 1 to {MAX_REASON} bytes is required"),
            ));
        }
        let _w = self.directory.write.lock().await;
        let mut rec = self
            .dir()
            .trusts
            .get(tenant)
            .filter(|t| t.active())
            .cloned()
            .ok_or_else(|| Denied::not_found("not_trusted", format!("{tenant} is not trusted")))?;
        rec.removed = Some(TrustRemoval {
            ms: now_millis(),
            by: by.clone(),
            reason: reason.to_owned(),
        });
        self.record(
            Some(by),
            AuditEvent::TrustRemoved {
                tenant: tenant.clone(),
                fingerprint: rec.fingerprint.clone(),
                reason: reason.to_owned(),
            },
        )
        .await?;
        self.dir_apply(vec![directory::Change::Trust(rec.clone())])
            .await?;
        tracing::info!(%tenant, "trust removed");
        Ok(rec)
    }
}

/// A partner KM's address: http(s), at most 512 bytes.
fn check_url(u: &str) -> Result<String, Denied> {
    let u = u.trim();
    if u.len() > 512
        || !(u.starts_with("http://") || u.starts_with("https://"))
        || u.contains(char::is_whitespace)
    {
        return Err(Denied::malformed(
            "bad_km_url",
            "a KM address is an http:// or https:// URL of at most 512 bytes",
        ));
    }
    Ok(u.trim_end_matches('/').to_owned())
}
