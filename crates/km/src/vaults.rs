//! The tenant's vaults: the default one and any pinned to a jurisdiction
//! (captures of users certified there go only to it), their registration
//! and capture policy, and the deny list each pulls.

use super::{Km, store_err};
use crate::error::Denied;
use cloister_audit::vault_origin;
use cloister_crypto::signed::{self, km_sign_blob, sign_notice};
use cloister_log::AuditEvent;
use cloister_proto::b64::Fixed;
use cloister_proto::km::{
    DeviceCert, Notice, RegionalVault, SignedBlob, VaultDescriptor, VaultRegisterResponse,
};
use cloister_proto::{UserId, now_millis};

/// The default vault's descriptor.
const META_VAULT: &str = "vault";
/// A pinned vault's descriptor: `vault@` and its jurisdiction.
const META_PINNED: &str = "vault@";

/// What an admin registers.
pub(crate) struct Registration {
    pub url: String,
    pub receipt_pk: Fixed<32>,
    pub log_key: String,
    pub capture_required: bool,
    pub jurisdiction: String,
}

impl Km {
    pub(crate) async fn vault_register(
        &self,
        actor: &UserId,
        v: Registration,
    ) -> Result<VaultRegisterResponse, Denied> {
        let bad = |m: String| Denied::malformed("bad_vault", m);
        if v.url.len() > 200 || !(v.url.starts_with("http://") || v.url.starts_with("https://")) {
            return Err(bad(
                "the vault URL must be http(s):// and at most 200 bytes".into(),
            ));
        }
        let verifier = cloister_log::NoteVerifier::parse(&v.log_key)
            .map_err(|e| bad(format!("the vault's log key is malformed: {e}")))?;
        if verifier.name != vault_origin(&self.tenant) {
            return Err(bad(format!(
                "the vault's log is named {:?}; tenant {} expects {:?}",
                verifier.name,
                self.tenant,
                vault_origin(&self.tenant)
            )));
        }
        let jurisdiction = if v.jurisdiction.trim().is_empty() {
            String::new()
        } else {
            cloister_proto::canonical_jurisdiction(&v.jurisdiction).ok_or_else(|| {
                bad(format!(
                    "{:?} is not a jurisdiction (an ISO 3166 code such as UK or US-NY)",
                    v.jurisdiction
                ))
            })?
        };
        // one vault, one place: a receipt key names one vault
        if let Some(other) = self
            .vaults()
            .await?
            .iter()
            .filter_map(|b| self.descriptor(b).ok())
            .find(|d| d.receipt_pk == v.receipt_pk && d.jurisdiction != jurisdiction)
        {
            return Err(Denied::conflict(
                "vault_registered",
                format!(
                    "this vault is registered already for {}",
                    place(&other.jurisdiction)
                ),
            ));
        }
        let now = now_millis();
        let d = VaultDescriptor {
            tenant: self.tenant.clone(),
            url: v.url.clone(),
            receipt_pk: v.receipt_pk,
            log_key: v.log_key.clone(),
            capture_required: v.capture_required,
            registered_ms: now,
            jurisdiction: jurisdiction.clone(),
        };
        let blob = km_sign_blob(&self.signer, signed::VAULT, &d).map_err(Denied::internal)?;
        self.record(
            Some(actor),
            AuditEvent::VaultRegistered {
                url: v.url,
                receipt_pk: cloister_proto::b64::encode(&v.receipt_pk.0),
                log_key: v.log_key,
                capture_required: v.capture_required,
            },
        )
        .await?;
        let key = if jurisdiction.is_empty() {
            META_VAULT.to_owned()
        } else {
            format!("{META_PINNED}{jurisdiction}")
        };
        self.store
            .set_meta(&key, &serde_json::to_vec(&blob).map_err(Denied::internal)?)
            .await
            .map_err(store_err)?;
        tracing::info!(
            capture_required = v.capture_required,
            jurisdiction,
            "vault registered"
        );
        Ok(VaultRegisterResponse {
            vault: blob,
            notice: self.capture_policy(now).await?,
        })
    }

    /// The capture policy for the messaging server: the default vault's
    /// receipt key, each pinned vault's, and whether capture is required
    /// (it is the tenant's policy: required if any vault says so).
    async fn capture_policy(&self, ts: u64) -> Result<cloister_proto::km::SignedNotice, Denied> {
        let all: Vec<VaultDescriptor> = self
            .vaults()
            .await?
            .iter()
            .map(|b| self.descriptor(b))
            .collect::<Result<_, _>>()?;
        let default = all.iter().find(|d| d.jurisdiction.is_empty());
        let regional: Vec<RegionalVault> = all
            .iter()
            .filter(|d| !d.jurisdiction.is_empty())
            .map(|d| RegionalVault {
                jurisdiction: d.jurisdiction.clone(),
                receipt_pk: d.receipt_pk,
            })
            .collect();
        // with no default vault yet, the first pinned one stands in for
        // everyone else (their captures have nowhere else to go)
        let receipt_pk = default
            .or(all.first())
            .map(|d| d.receipt_pk)
            .ok_or_else(|| Denied::internal("no vault registered"))?;
        let notice = Notice::CapturePolicy {
            tenant: self.tenant.clone(),
            receipt_pk,
            required: all.iter().any(|d| d.capture_required),
            ts,
            regional,
        };
        sign_notice(&self.signer, &notice).map_err(Denied::internal)
    }

    fn descriptor(&self, blob: &SignedBlob) -> Result<VaultDescriptor, Denied> {
        signed::verify_blob(
            &self.signer.public(),
            signed::VAULT,
            blob,
            "vault descriptor",
        )
        .map_err(Denied::internal)
    }

    /// Every registered vault (the default first), KM-signed.
    pub(crate) async fn vaults(&self) -> Result<Vec<SignedBlob>, Denied> {
        let mut out = Vec::new();
        if let Some(b) = self.store.get_meta(META_VAULT).await.map_err(store_err)? {
            out.push(serde_json::from_slice(&b).map_err(Denied::internal)?);
        }
        for (_, b) in self
            .store
            .meta_prefixed(META_PINNED)
            .await
            .map_err(store_err)?
        {
            out.push(serde_json::from_slice(&b).map_err(Denied::internal)?);
        }
        Ok(out)
    }

    /// Every registered vault's descriptor (as this KM signed it).
    pub(crate) async fn vault_descriptors(&self) -> Result<Vec<VaultDescriptor>, Denied> {
        self.vaults()
            .await?
            .iter()
            .map(|b| self.descriptor(b))
            .collect()
    }

    /// The vault a device captures into: the one pinned to its
    /// certificate's jurisdiction, else the default.
    pub(crate) async fn vault_for(&self, cert: &DeviceCert) -> Result<SignedBlob, Denied> {
        if !cert.jurisdiction.is_empty()
            && let Some(b) = self
                .store
                .get_meta(&format!("{META_PINNED}{}", cert.jurisdiction))
                .await
                .map_err(store_err)?
        {
            return serde_json::from_slice(&b).map_err(Denied::internal);
        }
        let b = self
            .store
            .get_meta(META_VAULT)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                Denied::not_found(
                    "no_vault",
                    format!(
                        "no vault is registered for {}; run `cloister admin vault register`",
                        place(&cert.jurisdiction)
                    ),
                )
            })?;
        serde_json::from_slice(&b).map_err(Denied::internal)
    }

    /// The tenant's revoked devices and disabled users, signed, for a
    /// registered vault only (it signs with its registered receipt key);
    /// with the newest escrow generation and the pinned jurisdictions.
    pub async fn deny_list(
        &self,
        req: &cloister_proto::km::DenyListRequest,
    ) -> Result<SignedBlob, Denied> {
        let refuse = || {
            Denied::unauthenticated(
                "not_vault",
                "only the tenant's registered vaults may ask for the deny list",
            )
        };
        if req.tenant != self.tenant {
            return Err(refuse());
        }
        if !cloister_proto::within_skew(req.ts) {
            return Err(Denied::unauthenticated(
                "stale_request",
                "request timestamp is outside the allowed clock skew",
            ));
        }
        let vaults = self.vault_descriptors().await?;
        let transcript = signed::deny_list_transcript(&req.tenant, req.ts);
        if !vaults.iter().any(|d| {
            cloister_crypto::keys::verify(
                &d.receipt_pk.0,
                signed::DENY_LIST_REQUEST,
                &transcript,
                &req.sig.0,
            )
            .is_ok()
        }) {
            return Err(refuse());
        }
        let (devices, users) = self.store.km_deny_list().await.map_err(store_err)?;
        let body = cloister_standing::DenyListBody {
            tenant: self.tenant.clone(),
            issued_ms: now_millis(),
            revoked: devices.iter().filter_map(|d| d.parse().ok()).collect(),
            disabled: users.iter().filter_map(|u| u.parse().ok()).collect(),
            partners: self.partner_list(),
            escrow_generation: match self.store.get_escrow().await.map_err(store_err)? {
                Some(b) => {
                    let s: SignedBlob = serde_json::from_slice(&b).map_err(Denied::internal)?;
                    signed::verify_escrow(&self.signer.public(), &s)
                        .map_err(Denied::internal)?
                        .generation
                }
                None => 0,
            },
            pinned: vaults
                .into_iter()
                .map(|d| d.jurisdiction)
                .filter(|j| !j.is_empty())
                .collect(),
        };
        km_sign_blob(&self.signer, signed::DENY_LIST, &body).map_err(Denied::internal)
    }
}

fn place(jurisdiction: &str) -> String {
    if jurisdiction.is_empty() {
        "the default (no jurisdiction)".into()
    } else {
        format!("jurisdiction {jurisdiction}")
    }
}
