//! Managed desktops: the tenant's MDM endorses the device's keys. The MDM
//! holds an Ed25519 key the tenant registers in its policy; for a device
//! it manages it signs the device's public keys, user, serial number and a
//! validity window (`cloister mdm endorse`). The device enrols with that
//! endorsement as its evidence.

use crate::{AttestError, Attested, Subject, Verifier, check_times};
use cloister_crypto::KmSigner;
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::km::{AttestationPolicy, Evidence, SignedBlob};
use cloister_proto::{TenantId, UserId};
use serde::{Deserialize, Serialize};

/// The evidence format name.
pub const FORMAT: &str = "mdm";
/// The signature domain of an endorsement.
pub const DOMAIN: &str = "cloister/mdm-endorsement/v1";

/// What the MDM signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endorsement {
    pub tenant: TenantId,
    pub user: UserId,
    pub sign_pk: Fixed<32>,
    pub hpke_pk: Fixed<32>,
    /// The device as the MDM knows it (serial number, asset tag).
    pub device: String,
    pub issued_at: u64,
    pub expires_at: u64,
    /// Random: each endorsement enrols one device once.
    pub nonce: Fixed<16>,
}

/// The MDM's side: sign an endorsement as enrolment evidence.
pub fn endorse(mdm: &KmSigner, e: &Endorsement) -> Result<Evidence, cloister_crypto::CryptoError> {
    let blob = cloister_crypto::signed::km_sign_blob(mdm, DOMAIN, e)?;
    let body = serde_json::to_vec(&blob)
        .map_err(|_| cloister_crypto::CryptoError::Malformed("endorsement"))?;
    Ok(Evidence {
        format: FORMAT.into(),
        body: Bytes(body),
    })
}

/// Verifies MDM endorsements under the policy's MDM keys.
pub struct MdmVerifier;

impl Verifier for MdmVerifier {
    fn format(&self) -> &'static str {
        FORMAT
    }

    fn verify(
        &self,
        body: &[u8],
        subject: &Subject<'_>,
        policy: &AttestationPolicy,
        now: u64,
    ) -> Result<Attested, AttestError> {
        if body.len() > 8 * 1024 {
            return Err(AttestError::Malformed("an endorsement is at most 8 KiB"));
        }
        let blob: SignedBlob = serde_json::from_slice(body)
            .map_err(|_| AttestError::Malformed("not a signed endorsement"))?;
        let (anchor, e): (&Fixed<32>, Endorsement) = policy
            .mdm_keys
            .iter()
            .find_map(|k| {
                cloister_crypto::signed::verify_blob(&k.0, DOMAIN, &blob, "endorsement")
                    .ok()
                    .map(|e| (k, e))
            })
            .ok_or(AttestError::Untrusted)?;
        if &e.tenant != subject.tenant
            || &e.user != subject.user
            || &e.sign_pk.0 != subject.sign_pk
            || &e.hpke_pk.0 != subject.hpke_pk
        {
            return Err(AttestError::WrongDevice);
        }
        if e.device.is_empty() || e.device.len() > 200 {
            return Err(AttestError::Malformed("the device name is 1 to 200 bytes"));
        }
        check_times(e.issued_at, e.expires_at, policy, now)?;
        Ok(Attested {
            format: FORMAT,
            device: e.device,
            nonce: e.nonce.0,
            expires_at: e.expires_at,
            anchor: cloister_proto::b64::encode(&anchor.0),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Verifiers;

    fn policy(key: &KmSigner) -> AttestationPolicy {
        AttestationPolicy {
            required: true,
            formats: vec![FORMAT.into()],
            mdm_keys: vec![Fixed(key.public())],
            max_age_secs: 3_600,
        }
    }

    #[test]
    fn accepted_rejected_and_expired() {
        let mdm = KmSigner::generate().unwrap();
        let tenant: TenantId = "acme".parse().unwrap();
        let user: UserId = "alice@acme".parse().unwrap();
        let (sk, hk) = ([1u8; 32], [2u8; 32]);
        let subject = Subject {
            tenant: &tenant,
            user: &user,
            sign_pk: &sk,
            hpke_pk: &hk,
        };
        let e = Endorsement {
            tenant: tenant.clone(),
            user: user.clone(),
            sign_pk: Fixed(sk),
            hpke_pk: Fixed(hk),
            device: "SN-4711".into(),
            issued_at: 1_000,
            expires_at: 2_000,
            nonce: Fixed([7; 16]),
        };
        let v = Verifiers::standard();
        let p = policy(&mdm);
        let ev = endorse(&mdm, &e).unwrap();
        let ok = v.check(&p, Some(&ev), &subject, 1_500).unwrap().unwrap();
        assert_eq!((ok.device.as_str(), ok.nonce), ("SN-4711", [7; 16]));
        // none, when required
        assert_eq!(
            v.check(&p, None, &subject, 1_500),
            Err(AttestError::Missing)
        );
        // another MDM's key
        let other = KmSigner::generate().unwrap();
        let forged = endorse(&other, &e).unwrap();
        assert_eq!(
            v.check(&p, Some(&forged), &subject, 1_500),
            Err(AttestError::Untrusted)
        );
        // another device's keys
        let mut theirs = e.clone();
        theirs.sign_pk = Fixed([9; 32]);
        let ev2 = endorse(&mdm, &theirs).unwrap();
        assert_eq!(
            v.check(&p, Some(&ev2), &subject, 1_500),
            Err(AttestError::WrongDevice)
        );
        // expired, too old for the policy, not yet valid
        assert_eq!(
            v.check(&p, Some(&ev), &subject, 2_001),
            Err(AttestError::Expired)
        );
        let mut strict = p.clone();
        strict.max_age_secs = 100;
        assert_eq!(
            v.check(&strict, Some(&ev), &subject, 1_200),
            Err(AttestError::Expired)
        );
        assert_eq!(
            v.check(&p, Some(&ev), &subject, 900),
            Err(AttestError::NotYetValid)
        );
        // a format the tenant does not accept; garbage
        let mut no_mdm = p.clone();
        no_mdm.formats = vec!["tpm2".into()];
        assert!(matches!(
            v.check(&no_mdm, Some(&ev), &subject, 1_500),
            Err(AttestError::Format(_))
        ));
        let junk = Evidence {
            format: FORMAT.into(),
            body: Bytes(b"{not json".to_vec()),
        };
        assert!(matches!(
            v.check(&p, Some(&junk), &subject, 1_500),
            Err(AttestError::Malformed(_))
        ));
        // not required: no evidence is fine, bad evidence is still refused
        let mut optional = p.clone();
        optional.required = false;
        assert_eq!(v.check(&optional, None, &subject, 1_500), Ok(None));
        assert_eq!(
            v.check(&optional, Some(&forged), &subject, 1_500),
            Err(AttestError::Untrusted)
        );
    }
}
