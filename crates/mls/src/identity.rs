//! Leaf credentials bound to KM-signed device certificates.
//!
//! A leaf's credential is an MLS `basic` credential whose identifier is the
//! device's certificate exactly as the tenant's KM signed it (`sig ‖ body`),
//! and the leaf's signature key is the certificate's Ed25519 key: the key
//! the device already signs its statements and messages with. Whoever
//! validates a leaf (a member, the server) checks the certificate under the
//! pinned KM key of the certificate's tenant and that the leaf's key is the
//! certified key, so only certified devices can hold a leaf and a leaf
//! names exactly one device and user.

use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::km::{DeviceCert, SignedCert};
use cloister_proto::{DeviceId, TenantId};
use mls_rs::identity::basic::BasicCredential;
use mls_rs::identity::{Credential, CredentialType, SigningIdentity};
use mls_rs::time::MlsTime;
use mls_rs::{ExtensionList, IdentityProvider};
use mls_rs_core::identity::MemberValidationContext;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Why a leaf's credential is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the credential is not a Cloister device certificate")]
    NotACertificate,
    #[error("the certificate's tenant {0} is not one this device trusts")]
    UntrustedTenant(String),
    #[error("the certificate's KM signature does not verify")]
    BadSignature,
    #[error("the leaf's signature key is not the certified device key")]
    KeyMismatch,
    #[error("the certificate expired")]
    Expired,
    #[error("a leaf may only be replaced by the same device")]
    NotSuccessor,
}

impl mls_rs::error::IntoAnyError for CredentialError {
    fn into_dyn_error(self) -> Result<Box<dyn std::error::Error + Send + Sync>, Self> {
        Ok(Box::new(self))
    }
}

/// The credential of a device: its signed certificate as the identifier.
pub fn credential_for(cert: &SignedCert) -> Credential {
    let mut id = Vec::with_capacity(64 + cert.body.0.len());
    id.extend_from_slice(&cert.sig.0);
    id.extend_from_slice(&cert.body.0);
    BasicCredential::new(id).into_credential()
}

/// The signing identity of a device in every group it joins.
pub fn signing_identity_for(cert: &SignedCert, sign_pk: &[u8; 32]) -> SigningIdentity {
    SigningIdentity::new(credential_for(cert), sign_pk.to_vec().into())
}

/// The signed certificate carried by a credential, not yet verified.
pub fn signed_cert_of(credential: &Credential) -> Result<SignedCert, CredentialError> {
    let Credential::Basic(basic) = credential else {
        return Err(CredentialError::NotACertificate);
    };
    let id = basic.identifier();
    if id.len() <= 64 {
        return Err(CredentialError::NotACertificate);
    }
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&id[..64]);
    Ok(SignedCert {
        body: Bytes(id[64..].to_vec()),
        sig: Fixed(sig),
    })
}

/// The device a credential names, read without checking its certificate.
fn claimed_device(identity: &SigningIdentity) -> Result<DeviceId, CredentialError> {
    let signed = signed_cert_of(&identity.credential)?;
    serde_json::from_slice::<DeviceCert>(&signed.body.0)
        .map(|c| c.device)
        .map_err(|_| CredentialError::NotACertificate)
}

/// Validates leaves against the KM keys a device (or the server) pinned:
/// its own tenant's and, for rooms between firms, its partners'. Clones
/// share the keys, so a device that learns of a newly trusted firm (or of
/// a trust removed) updates every group of its client at once.
#[derive(Clone, Debug, Default)]
pub struct KmIdentity {
    keys: Arc<RwLock<BTreeMap<TenantId, [u8; 32]>>>,
}

impl KmIdentity {
    pub fn new(keys: impl IntoIterator<Item = (TenantId, [u8; 32])>) -> Self {
        KmIdentity {
            keys: Arc::new(RwLock::new(keys.into_iter().collect())),
        }
    }

    /// Trust exactly these firms' KM keys from now on.
    pub fn trust(&self, keys: impl IntoIterator<Item = (TenantId, [u8; 32])>) {
        let keys: BTreeMap<_, _> = keys.into_iter().collect();
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
    }

    /// Whether `tenant`'s KM is one of the trusted firms.
    pub fn trusts(&self, tenant: &TenantId) -> bool {
        self.key_of(tenant).is_some()
    }

    fn key_of(&self, tenant: &TenantId) -> Option<[u8; 32]> {
        self.keys.read().ok().and_then(|k| k.get(tenant).copied())
    }

    /// The verified certificate of a leaf: KM signature under the pinned
    /// key of its tenant, and the leaf key equal to the certified key.
    pub fn certificate(&self, identity: &SigningIdentity) -> Result<DeviceCert, CredentialError> {
        let signed = signed_cert_of(&identity.credential)?;
        // Read only to learn which firm's key must have signed it.
        let tenant = serde_json::from_slice::<DeviceCert>(&signed.body.0)
            .map_err(|_| CredentialError::NotACertificate)?
            .tenant;
        let km = self
            .key_of(&tenant)
            .ok_or_else(|| CredentialError::UntrustedTenant(tenant.to_string()))?;
        let cert = cloister_crypto::signed::verify_cert(&km, &signed)
            .map_err(|_| CredentialError::BadSignature)?;
        if identity.signature_key.as_bytes() != cert.sign_pk.0.as_slice() {
            return Err(CredentialError::KeyMismatch);
        }
        Ok(cert)
    }

    /// The device a leaf belongs to (verified).
    pub fn device(&self, identity: &SigningIdentity) -> Result<DeviceId, CredentialError> {
        Ok(self.certificate(identity)?.device)
    }
}

impl IdentityProvider for KmIdentity {
    type Error = CredentialError;

    fn validate_member(
        &self,
        identity: &SigningIdentity,
        timestamp: Option<MlsTime>,
        _context: MemberValidationContext<'_>,
    ) -> Result<(), Self::Error> {
        let cert = self.certificate(identity)?;
        if let Some(t) = timestamp
            && t.seconds_since_epoch() > cert.not_after
        {
            return Err(CredentialError::Expired);
        }
        Ok(())
    }

    fn validate_external_sender(
        &self,
        _identity: &SigningIdentity,
        _timestamp: Option<MlsTime>,
        _extensions: Option<&ExtensionList>,
    ) -> Result<(), Self::Error> {
        // Cloister groups have no external senders.
        Err(CredentialError::NotACertificate)
    }

    fn identity(
        &self,
        identity: &SigningIdentity,
        _extensions: &ExtensionList,
    ) -> Result<Vec<u8>, Self::Error> {
        // Only the device a leaf names: every leaf was validated (above)
        // when it entered the group, and a leaf of a firm no longer trusted
        // must still be found to be removed.
        Ok(claimed_device(identity)?.0.to_vec())
    }

    fn valid_successor(
        &self,
        predecessor: &SigningIdentity,
        successor: &SigningIdentity,
        _extensions: &ExtensionList,
    ) -> Result<bool, Self::Error> {
        // A renewed certificate is fine; another device is not (the
        // successor itself is validated as any new leaf).
        Ok(claimed_device(predecessor)? == claimed_device(successor)?)
    }

    fn supported_types(&self) -> Vec<CredentialType> {
        vec![CredentialType::BASIC]
    }
}
