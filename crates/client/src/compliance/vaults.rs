//! The tenant's vaults on the device: the one this device captures into
//! (pinned to its certificate's jurisdiction, else the default), the
//! list compliance fans out over, and their registration.

use super::*;

impl Client {
    /// The vault this device captures into as registered with the KM (the
    /// one pinned to its certificate's jurisdiction, else the default;
    /// verified against the pinned KM key), or `None` if none is registered.
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

    /// The vault this device works with: the one chosen
    /// ([`Client::use_vault_in`], [`Client::set_vault`]), else the one the
    /// KM names for this device.
    pub(crate) async fn working_vault(&self) -> Result<VaultTarget> {
        if let Ok(t) = self.vault_target() {
            return Ok(t);
        }
        self.use_registered_vault()
            .await?
            .ok_or_else(|| ClientError::Input("no vault is registered with the KM".into()))
    }

    pub(crate) fn vault_target(&self) -> Result<VaultTarget> {
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
                jurisdiction: info.jurisdiction.clone(),
            })
            .await?;
        let d: VaultDescriptor =
            signed::verify_blob(&self.profile.km_sign_pk.0, signed::VAULT, &r.vault, "vault")?;
        self.post_notice(&r.notice).await?;
        Ok(d)
    }

    /// Compliance and admins: every registered vault (the default first),
    /// verified against the pinned KM key.
    pub async fn vaults(&self) -> Result<Vec<VaultDescriptor>> {
        let all: Vec<SignedBlob> = self.km_request(KmOp::VaultList).await?;
        all.iter()
            .map(|b| {
                let d: VaultDescriptor =
                    signed::verify_blob(&self.profile.km_sign_pk.0, signed::VAULT, b, "vault")
                        .map_err(|_| {
                            ClientError::Local("a vault descriptor is not signed by the KM".into())
                        })?;
                if d.tenant != self.profile.tenant {
                    return Err(ClientError::Local(
                        "the KM answered with another tenant's vault".into(),
                    ));
                }
                Ok(d)
            })
            .collect()
    }

    /// The KM-signed descriptor of a vault this device works with (an
    /// export carries it).
    pub(crate) async fn vault_blob_of(&self, t: &VaultTarget) -> Result<SignedBlob> {
        let all: Vec<SignedBlob> = self.km_request(KmOp::VaultList).await?;
        for b in all {
            if let Ok(d) = signed::verify_blob::<VaultDescriptor>(
                &self.profile.km_sign_pk.0,
                signed::VAULT,
                &b,
                "vault",
            ) && d.receipt_pk.0 == t.receipt_pk
                && d.tenant == self.profile.tenant
            {
                return Ok(b);
            }
        }
        Err(ClientError::Input(format!(
            "the vault at {} is not registered with the KM",
            t.url
        )))
    }

    /// Every registered vault as a target (compliance fans out over them).
    pub(crate) async fn vault_targets(&self) -> Result<Vec<VaultTarget>> {
        Ok(self.vaults().await?.into_iter().map(target).collect())
    }

    /// Compliance: work with the vault pinned to `jurisdiction` (empty:
    /// the default vault) from now on: exports and re-seals read it.
    pub async fn use_vault_in(&self, jurisdiction: &str) -> Result<VaultTarget> {
        let want = if jurisdiction.trim().is_empty() {
            String::new()
        } else {
            cloister_proto::canonical_jurisdiction(jurisdiction).ok_or_else(|| {
                ClientError::Input(format!("{jurisdiction:?} is not a jurisdiction"))
            })?
        };
        let d = self
            .vaults()
            .await?
            .into_iter()
            .find(|d| d.jurisdiction == want)
            .ok_or_else(|| {
                ClientError::Input(if want.is_empty() {
                    "no default vault is registered".to_owned()
                } else {
                    format!("no vault is registered for jurisdiction {want}")
                })
            })?;
        let t = target(d);
        self.vault_checked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut v) = self.vault.lock() {
            *v = Some(t.clone());
        }
        Ok(t)
    }
}

fn target(d: VaultDescriptor) -> VaultTarget {
    VaultTarget {
        url: trim_url(&d.url),
        receipt_pk: d.receipt_pk.0,
        log_key: d.log_key,
        required: d.capture_required,
    }
}
