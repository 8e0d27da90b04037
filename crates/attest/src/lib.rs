//! Device attestation at enrolment: the KM certifies a device only if its
//! enrolment carries evidence the tenant's policy accepts.
//!
//! ```text
//!  EnrolRequest{…, evidence{format, body}} ──check(policy, evidence, subject, now)──▶
//!      the verifier of that format: signature chain to a key the tenant trusts,
//!      bound to this device's keys and user, fresh ─▶ Attested{format, subject, nonce, expires_at}
//!  the KM then spends the evidence's nonce (a second use is a replay) and certifies
//! ```
//!
//! Pure: the caller supplies the clock and the tenant's policy, and keeps
//! the record of spent nonces. A format is one [`Verifier`]: the managed
//! desktop's (`mdm`, a device key endorsed by the tenant's MDM key) is
//! here; a TPM 2.0 quote, Android Key Attestation and Apple App Attest
//! plug in the same way (docs/adr/0025-device-attestation.md).
#![forbid(unsafe_code)]

pub mod mdm;

use cloister_proto::km::{AttestationPolicy, Evidence};
use cloister_proto::{TenantId, UserId};

/// Why evidence is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("this tenant certifies only attested devices: the enrolment carries no evidence")]
    Missing,
    #[error("evidence of format {0:?} is not accepted by this tenant")]
    Format(String),
    #[error("the evidence is malformed: {0}")]
    Malformed(&'static str),
    #[error("the evidence is not signed by a key this tenant trusts")]
    Untrusted,
    #[error("the evidence is for another device, user or tenant")]
    WrongDevice,
    #[error("the evidence expired")]
    Expired,
    #[error("the evidence is not valid yet")]
    NotYetValid,
    #[error("the evidence was used before")]
    Replayed,
}

impl AttestError {
    /// The stable error code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            AttestError::Missing => "attestation_required",
            AttestError::Expired | AttestError::NotYetValid => "attestation_expired",
            AttestError::Replayed => "attestation_replayed",
            _ => "attestation_rejected",
        }
    }
}

/// The device the evidence must speak of: the enrolment's keys and user.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub tenant: &'a TenantId,
    pub user: &'a UserId,
    pub sign_pk: &'a [u8; 32],
    pub hpke_pk: &'a [u8; 32],
}

/// What verified evidence says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub format: &'static str,
    /// What the evidence names the device by (a serial number, an asset tag).
    pub device: String,
    /// Spent once: a second enrolment with the same evidence is a replay.
    pub nonce: [u8; 16],
    /// Until when the nonce must be remembered (seconds).
    pub expires_at: u64,
    /// The trusted key the evidence chains to (an MDM key, base64): a
    /// policy that drops it no longer vouches for the device.
    pub anchor: String,
}

/// One evidence format.
pub trait Verifier: Send + Sync {
    fn format(&self) -> &'static str;
    /// Verify `body` for `subject` under `policy` at `now` (seconds).
    fn verify(
        &self,
        body: &[u8],
        subject: &Subject<'_>,
        policy: &AttestationPolicy,
        now: u64,
    ) -> Result<Attested, AttestError>;
}

/// The verifiers a KM knows.
pub struct Verifiers(Vec<Box<dyn Verifier>>);

impl Verifiers {
    /// Every format this build verifies.
    pub fn standard() -> Verifiers {
        Verifiers(vec![Box::new(mdm::MdmVerifier)])
    }

    /// The formats known (for the policy's validation and `attestation show`).
    pub fn formats(&self) -> Vec<&'static str> {
        self.0.iter().map(|v| v.format()).collect()
    }

    /// Check an enrolment's evidence against the tenant's policy. `None`:
    /// no evidence and the policy does not ask for any. Evidence that is
    /// present is always verified (a device that sends bad evidence is
    /// refused even where none is required).
    pub fn check(
        &self,
        policy: &AttestationPolicy,
        evidence: Option<&Evidence>,
        subject: &Subject<'_>,
        now: u64,
    ) -> Result<Option<Attested>, AttestError> {
        let Some(e) = evidence else {
            return if policy.required {
                Err(AttestError::Missing)
            } else {
                Ok(None)
            };
        };
        if !policy.formats.iter().any(|f| f == &e.format) {
            return Err(AttestError::Format(e.format.clone()));
        }
        let v = self
            .0
            .iter()
            .find(|v| v.format() == e.format)
            .ok_or_else(|| AttestError::Format(e.format.clone()))?;
        v.verify(e.body.as_slice(), subject, policy, now).map(Some)
    }
}

/// Freshness shared by every format: issued no later than now (with a
/// minute's skew), not expired, and no older than the policy's maximum age.
pub fn check_times(
    issued_at: u64,
    expires_at: u64,
    policy: &AttestationPolicy,
    now: u64,
) -> Result<(), AttestError> {
    if issued_at > now + 60 {
        return Err(AttestError::NotYetValid);
    }
    if expires_at < now || issued_at + policy.max_age_secs < now {
        return Err(AttestError::Expired);
    }
    Ok(())
}
