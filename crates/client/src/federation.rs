//! Trust between firms (admin devices): this firm's KM identity, and the
//! partner KMs it pins.

use crate::{Client, Result};
use cloister_proto::TenantId;
use cloister_proto::federation::{OwnIdentity, TrustedFirm};
use cloister_proto::km::KmOp;

impl Client {
    /// This firm's KM identity and fingerprint, to give a partner firm.
    pub async fn trust_self(&self) -> Result<OwnIdentity> {
        self.km_request(KmOp::TrustSelf).await
    }

    /// Pin `tenant`'s KM identity; `fingerprint`, when given, must match.
    pub async fn trust_add(
        &self,
        tenant: &TenantId,
        km_key: &str,
        fingerprint: Option<&str>,
    ) -> Result<TrustedFirm> {
        self.km_request(KmOp::TrustAdd {
            tenant: tenant.clone(),
            km_key: km_key.to_owned(),
            fingerprint: fingerprint.map(str::to_owned),
        })
        .await
    }

    pub async fn trust_list(&self) -> Result<Vec<TrustedFirm>> {
        self.km_request(KmOp::TrustList).await
    }

    pub async fn trust_remove(&self, tenant: &TenantId, reason: &str) -> Result<TrustedFirm> {
        self.km_request(KmOp::TrustRemove {
            tenant: tenant.clone(),
            reason: reason.to_owned(),
        })
        .await
    }
}
