//! A vault pinned to a jurisdiction keeps the captures of users certified
//! there, and only theirs; the default vault keeps everyone else's (the
//! jurisdictions with a vault of their own come with the KM's deny list).

use super::*;

impl Vault {
    /// Pin this vault to a jurisdiction (an ISO 3166 code; empty: the
    /// tenant's default vault). Registered with the KM as such.
    pub async fn set_jurisdiction(&self, jurisdiction: &str) -> Result<String, VaultError> {
        let j = if jurisdiction.trim().is_empty() {
            String::new()
        } else {
            cloister_proto::canonical_jurisdiction(jurisdiction).ok_or_else(|| {
                VaultError::Invalid(format!(
                    "{jurisdiction:?} is not a jurisdiction (an ISO 3166 code such as UK or US-NY)"
                ))
            })?
        };
        self.store
            .vault_set_meta(META_JURISDICTION, j.as_bytes())
            .await?;
        if let Ok(mut me) = self.jurisdiction.write() {
            *me = j.clone();
        }
        Ok(j)
    }

    /// The jurisdiction this vault is pinned to (empty: none).
    pub fn jurisdiction(&self) -> String {
        self.jurisdiction
            .read()
            .map(|j| j.clone())
            .unwrap_or_default()
    }

    /// Whether this vault keeps the captures of a device certified in
    /// `theirs`: a pinned vault only its own jurisdiction's; the default
    /// vault everyone's but those of jurisdictions with their own vault.
    ///
    /// The default vault learns the pinned jurisdictions from the deny
    /// list; a certificate issued since that list was signed may name a
    /// jurisdiction pinned since, so the list is pulled once first.
    pub(crate) async fn check_region(&self, cert: &DeviceCert) -> Result<(), ApiError> {
        let pinned_here = |j: &String| self.pinned.read().map(|p| p.contains(j)).unwrap_or(true);
        if self.jurisdiction().is_empty()
            && !cert.jurisdiction.is_empty()
            && !pinned_here(&cert.jurisdiction)
        {
            let as_of = self.deny.read().ok().and_then(|d| d.as_of_ms());
            let issued_ms = cert.issued_at.saturating_add(1).saturating_mul(1000);
            if as_of.is_none_or(|t| issued_ms > t)
                && let Err(e) = self.pull_deny_list().await
            {
                tracing::warn!("vault deny list not refreshed: {e}");
            }
        }
        let mine = self.jurisdiction();
        let theirs = &cert.jurisdiction;
        let wrong = |why: String| ApiError::forbidden("wrong_vault", why);
        if !mine.is_empty() {
            if *theirs != mine {
                return Err(wrong(format!(
                    "this vault keeps the captures of users in {mine} only; {} is certified {}: capture into the vault the KM names for it",
                    cert.user,
                    if theirs.is_empty() {
                        "with no jurisdiction".to_owned()
                    } else {
                        format!("in {theirs}")
                    }
                )));
            }
            return Ok(());
        }
        if !theirs.is_empty() && pinned_here(theirs) {
            return Err(wrong(format!(
                "captures of users in {theirs} go to that jurisdiction's own vault, not this one"
            )));
        }
        Ok(())
    }
}
