//! The tenant's attestation policy, and the check every enrolment passes
//! (the verifying itself is `cloister-attest`'s).

use super::*;
use cloister_attest::{AttestError, Attested, Subject, Verifiers};
use cloister_proto::km::{AttestationPolicy, EnrolRequest};

const META_ATTESTATION: &str = "attestation_policy";
/// What a device's enrolment was attested by (`attestation:DEVICE`).
const META_DEVICE_ATTESTED: &str = "attestation:";

/// A device's accepted evidence, kept for its renewals.
#[derive(serde::Serialize, serde::Deserialize)]
struct DeviceAttested {
    format: String,
    device: String,
    anchor: String,
}

impl From<AttestError> for Denied {
    fn from(e: AttestError) -> Self {
        match e {
            AttestError::Malformed(_) => Denied::malformed(e.code(), e.to_string()),
            _ => Denied::forbidden(e.code(), e.to_string()),
        }
    }
}

impl Km {
    /// The tenant's attestation policy (none required until an admin sets one).
    pub(crate) async fn attestation_policy(&self) -> Result<AttestationPolicy, Denied> {
        match self
            .store
            .get_meta(META_ATTESTATION)
            .await
            .map_err(store_err)?
        {
            Some(b) => serde_json::from_slice(&b).map_err(Denied::internal),
            None => Ok(AttestationPolicy::default()),
        }
    }

    /// Admin: set the attestation policy (checked whole before it is kept).
    pub(crate) async fn set_attestation_policy(
        &self,
        actor: Option<&UserId>,
        policy: AttestationPolicy,
    ) -> Result<AttestationPolicy, Denied> {
        let bad = |m: String| Denied::malformed("bad_policy", m);
        let known = Verifiers::standard().formats();
        if let Some(f) = policy.formats.iter().find(|f| !known.contains(&f.as_str())) {
            return Err(bad(format!(
                "unknown evidence format {f:?}; this KM verifies {}",
                known.join(", ")
            )));
        }
        if policy.required && policy.formats.is_empty() {
            return Err(bad(
                "a required attestation needs at least one format".into()
            ));
        }
        if policy
            .formats
            .iter()
            .any(|f| f == cloister_attest::mdm::FORMAT)
            && policy.mdm_keys.is_empty()
        {
            return Err(bad("the mdm format needs at least one MDM key".into()));
        }
        if policy.mdm_keys.len() > 16 {
            return Err(bad("at most 16 MDM keys".into()));
        }
        if !(60..=366 * 24 * 3600).contains(&policy.max_age_secs) {
            return Err(bad("max_age_secs must be 60 s to a year".into()));
        }
        self.record(
            actor,
            AuditEvent::AttestationPolicySet {
                required: policy.required,
                formats: policy.formats.clone(),
                mdm_keys: policy
                    .mdm_keys
                    .iter()
                    .map(|k| cloister_proto::b64::encode(&k.0))
                    .collect(),
            },
        )
        .await?;
        let b = serde_json::to_vec(&policy).map_err(Denied::internal)?;
        self.store
            .set_meta(META_ATTESTATION, &b)
            .await
            .map_err(store_err)?;
        tracing::info!(required = policy.required, "attestation policy set");
        Ok(policy)
    }

    /// Verify an enrolment's evidence (before its code is spent: rejected
    /// evidence leaves the code usable).
    pub(crate) async fn attest(&self, req: &EnrolRequest) -> Result<Option<Attested>, Denied> {
        let policy = self.attestation_policy().await?;
        let subject = Subject {
            tenant: &self.tenant,
            user: &req.user,
            sign_pk: &req.sign_pk.0,
            hpke_pk: &req.hpke_pk.0,
        };
        Verifiers::standard()
            .check(&policy, req.evidence.as_ref(), &subject, now_secs())
            .inspect_err(|e| tracing::warn!(user = %req.user, "enrolment evidence refused: {e}"))
            .map_err(Denied::from)
    }

    /// Keep what vouched for a newly certified device.
    pub(crate) async fn keep_attestation(
        &self,
        device: &DeviceId,
        a: &Attested,
    ) -> Result<(), Denied> {
        let rec = DeviceAttested {
            format: a.format.into(),
            device: a.device.clone(),
            anchor: a.anchor.clone(),
        };
        self.store
            .set_meta(
                &format!("{META_DEVICE_ATTESTED}{}", device.to_hex()),
                &serde_json::to_vec(&rec).map_err(Denied::internal)?,
            )
            .await
            .map_err(store_err)
    }

    /// At renewal: a tenant that requires attestation renews only devices
    /// whose enrolment evidence its policy still accepts (the format, and
    /// the MDM key it chained to). Others enrol again with evidence.
    pub(crate) async fn still_attested(&self, device: &DeviceId) -> Result<(), Denied> {
        let policy = self.attestation_policy().await?;
        if !policy.required {
            return Ok(());
        }
        let rec: Option<DeviceAttested> = self
            .store
            .get_meta(&format!("{META_DEVICE_ATTESTED}{}", device.to_hex()))
            .await
            .map_err(store_err)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        let vouched = rec.is_some_and(|r| {
            policy.formats.contains(&r.format)
                && (r.format != cloister_attest::mdm::FORMAT
                    || policy
                        .mdm_keys
                        .iter()
                        .any(|k| cloister_proto::b64::encode(&k.0) == r.anchor))
        });
        if vouched {
            return Ok(());
        }
        tracing::warn!(%device, "renewal refused: the device's enrolment evidence no longer meets the policy");
        Err(Denied::forbidden(
            AttestError::Missing.code(),
            "this tenant now requires attestation this device's enrolment does not meet (no evidence, or its MDM key was withdrawn): enrol again with evidence",
        ))
    }

    /// Spend verified evidence: each enrols one device once.
    pub(crate) async fn spend_evidence(&self, a: &Attested) -> Result<(), Denied> {
        let skew = limits::MAX_SKEW_SECS * 1000;
        let fresh = self
            .store
            .use_nonce(
                &format!("attestation:{}", a.format),
                &a.nonce,
                a.expires_at.saturating_mul(1000),
                now_millis().saturating_sub(2 * skew),
            )
            .await
            .map_err(store_err)?;
        if !fresh {
            tracing::warn!(device = %a.device, "enrolment evidence replayed");
            return Err(AttestError::Replayed.into());
        }
        Ok(())
    }
}
