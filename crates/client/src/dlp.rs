//! DLP on the device: the tenant's KM-signed content policies, checked
//! before anything is sealed or uploaded. A blocking policy refuses with its
//! name and message; a flagging one lets the message go and marks the
//! archived copy (the flag travels only in the sealed capture, never to the
//! server). Without a policy set the device refuses to send (fail closed).

use super::*;
use cloister_policy::dlp::{Dlp, Verdict};
use cloister_proto::controls::{DlpPolicy, DlpSet};
use std::sync::Arc;

/// How long a fetched policy set is used before asking the KM again.
const DLP_TTL_SECS: u64 = 60;

impl Client {
    /// The policy set: cached, refreshed from the KM after a minute; the
    /// last good set if the KM cannot be reached.
    pub(crate) async fn dlp(&self) -> Result<Arc<Dlp>> {
        let cached = self.dlp.lock().ok().and_then(|g| g.clone());
        if let Some((d, at)) = &cached
            && now_secs() < at + DLP_TTL_SECS
        {
            return Ok(d.clone());
        }
        match self.fetch_dlp().await {
            Ok(d) => {
                let d = Arc::new(d);
                if let Ok(mut g) = self.dlp.lock() {
                    *g = Some((d.clone(), now_secs()));
                }
                Ok(d)
            }
            Err(e) => match cached {
                Some((d, _)) => Ok(d),
                None => Err(ClientError::Refused {
                    code: "dlp_unavailable",
                    message: format!(
                        "cannot load the firm's DLP policies, so nothing is sent: {e}"
                    ),
                }),
            },
        }
    }

    async fn fetch_dlp(&self) -> Result<Dlp> {
        let b: cloister_proto::km::SignedBlob = self.km_request(KmOp::DlpPolicies).await?;
        let set: DlpSet = signed::verify_blob(
            &self.profile.km_sign_pk.0,
            signed::DLP,
            &b,
            "DLP policy set",
        )?;
        if set.tenant != self.profile.tenant {
            return Err(ClientError::Local("DLP policies of another tenant".into()));
        }
        Dlp::new(&set).map_err(|e| ClientError::Local(e.to_string()))
    }

    fn refuse(v: Verdict) -> Result<Vec<String>> {
        match v.block {
            Some((id, name, msg)) => Err(ClientError::Refused {
                code: "dlp_blocked",
                message: if msg.is_empty() {
                    format!("blocked by the firm's DLP policy \"{name}\" ({id})")
                } else {
                    format!("blocked by the firm's DLP policy \"{name}\" ({id}): {msg}")
                },
            }),
            None => Ok(v.flags),
        }
    }

    /// Refuse content a blocking policy matches; the flagging policies it
    /// matches otherwise.
    pub(crate) async fn dlp_check(&self, content: &Content) -> Result<Vec<String>> {
        let d = self.dlp().await?;
        Self::refuse(match content {
            Content::Text { text } => d.check_text(text),
            Content::File { name, size, .. } => d.check_file(name, *size),
            // what a contact sent in from another network: the firm's DLP
            // rules govern what its users send out
            Content::Relayed { .. } => return Ok(Vec::new()),
        })
    }

    pub(crate) async fn dlp_check_file(&self, name: &str, size: u64) -> Result<Vec<String>> {
        let d = self.dlp().await?;
        Self::refuse(d.check_file(name, size))
    }

    /// Admin or compliance: add or replace a policy (disable: `active: false`).
    /// Admin or compliance: the firm's rule on MLS rooms.
    pub async fn mls_policy_set(&self, policy: cloister_proto::controls::MlsPolicy) -> Result<()> {
        let _: serde_json::Value = self.km_request(KmOp::MlsPolicySet { policy }).await?;
        Ok(())
    }

    pub async fn dlp_put(&self, policy: DlpPolicy) -> Result<()> {
        let _: cloister_proto::km::SignedBlob = self.km_request(KmOp::DlpPut { policy }).await?;
        if let Ok(mut g) = self.dlp.lock() {
            *g = None;
        }
        Ok(())
    }

    /// The policies in force, as the KM signed them.
    pub async fn dlp_policies(&self) -> Result<Vec<DlpPolicy>> {
        let b: cloister_proto::km::SignedBlob = self.km_request(KmOp::DlpPolicies).await?;
        let set: DlpSet = signed::verify_blob(
            &self.profile.km_sign_pk.0,
            signed::DLP,
            &b,
            "DLP policy set",
        )?;
        Ok(set.policies)
    }
}
