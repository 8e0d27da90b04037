//! Key types with secret hygiene: zeroized on drop, redacted `Debug`.

use crate::{CryptoError, random_bytes, sha256};
use cloister_proto::DeviceId;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hpke::{Deserializable, Kem as _, Serializable};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub(crate) type HpkeKem = hpke::kem::X25519HkdfSha256;

/// Secret bytes of any length.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(v: Vec<u8>) -> Self {
        SecretBytes(v)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// A 256-bit room-epoch key (or any symmetric key of that size).
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct RoomKey([u8; 32]);

impl RoomKey {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(RoomKey(random_bytes()?))
    }
    pub fn from_bytes(b: [u8; 32]) -> Self {
        RoomKey(b)
    }
    pub fn from_slice(b: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = b.try_into().map_err(|_| CryptoError::Malformed("key"))?;
        Ok(RoomKey(arr))
    }
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomKey(<redacted>)")
    }
}

/// A device's long-term keys: Ed25519 for signing, X25519 for HPKE.
pub struct DeviceKeys {
    sign: SigningKey,
    hpke_sk: Zeroizing<[u8; 32]>,
    hpke_pk: [u8; 32],
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceKeys(device={}, <secrets redacted>)",
            self.device_id()
        )
    }
}

impl DeviceKeys {
    /// Fresh keys from the OS CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let s = Zeroizing::new(random_bytes::<32>()?);
        let h = Zeroizing::new(random_bytes::<32>()?);
        Self::from_secrets(&s, &h)
    }

    /// Rebuild from the two 32-byte secrets (as kept in the keystore).
    pub fn from_secrets(sign_sk: &[u8; 32], hpke_sk: &[u8; 32]) -> Result<Self, CryptoError> {
        let sign = SigningKey::from_bytes(sign_sk);
        let sk = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(hpke_sk)
            .map_err(|_| CryptoError::Malformed("hpke private key"))?;
        let pk = HpkeKem::sk_to_pk(&sk);
        let mut hpke_pk = [0u8; 32];
        hpke_pk.copy_from_slice(&pk.to_bytes());
        Ok(DeviceKeys {
            sign,
            hpke_sk: Zeroizing::new(*hpke_sk),
            hpke_pk,
        })
    }

    /// The 64 secret bytes (signing secret ‖ HPKE secret), for the encrypted keystore.
    pub fn to_secret_bytes(&self) -> SecretBytes {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(self.sign.as_bytes());
        v.extend_from_slice(&self.hpke_sk[..]);
        SecretBytes(v)
    }

    pub fn from_secret_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        if b.len() != 64 {
            return Err(CryptoError::Malformed("device keystore"));
        }
        let mut s = Zeroizing::new([0u8; 32]);
        let mut h = Zeroizing::new([0u8; 32]);
        s.copy_from_slice(&b[..32]);
        h.copy_from_slice(&b[32..]);
        Self::from_secrets(&s, &h)
    }

    pub fn sign_pk(&self) -> [u8; 32] {
        self.sign.verifying_key().to_bytes()
    }

    pub fn hpke_pk(&self) -> [u8; 32] {
        self.hpke_pk
    }

    pub fn device_id(&self) -> DeviceId {
        device_id_for(&self.sign_pk())
    }

    /// Sign `domain ‖ 0x00 ‖ msg`.
    pub fn sign(&self, domain: &str, msg: &[u8]) -> [u8; 64] {
        sign_with(&self.sign, domain, msg)
    }

    pub(crate) fn hpke_secret(&self) -> &[u8; 32] {
        &self.hpke_sk
    }
}

/// The device id bound to a signing key.
pub fn device_id_for(sign_pk: &[u8; 32]) -> DeviceId {
    let h = sha256(sign_pk);
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[..16]);
    DeviceId(id)
}

/// The tenant KM's Ed25519 signing key.
pub struct KmSigner(SigningKey);

impl std::fmt::Debug for KmSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KmSigner(<redacted>)")
    }
}

impl KmSigner {
    pub fn generate() -> Result<Self, CryptoError> {
        let s = Zeroizing::new(random_bytes::<32>()?);
        Ok(KmSigner(SigningKey::from_bytes(&s)))
    }
    pub fn from_secret(b: &[u8]) -> Result<Self, CryptoError> {
        let arr: Zeroizing<[u8; 32]> = Zeroizing::new(
            b.try_into()
                .map_err(|_| CryptoError::Malformed("KM signing key"))?,
        );
        Ok(KmSigner(SigningKey::from_bytes(&arr)))
    }
    pub fn secret_bytes(&self) -> SecretBytes {
        SecretBytes(self.0.as_bytes().to_vec())
    }
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    pub fn sign(&self, domain: &str, msg: &[u8]) -> [u8; 64] {
        sign_with(&self.0, domain, msg)
    }
    /// Sign bytes as they are, for formats that define their own framing
    /// (C2SP signed notes sign the note text).
    pub fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
}

/// The tenant KM's X25519 key for KM-to-KM exchanges: partner KMs seal
/// room keys to it (HPKE). Kept wrapped under the TMK like the signing key.
pub struct ExchangeKey {
    sk: Zeroizing<[u8; 32]>,
    pk: [u8; 32],
}

impl std::fmt::Debug for ExchangeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExchangeKey(<redacted>)")
    }
}

impl ExchangeKey {
    pub fn generate() -> Result<Self, CryptoError> {
        Self::from_secret(&Zeroizing::new(random_bytes::<32>()?)[..])
    }
    pub fn from_secret(b: &[u8]) -> Result<Self, CryptoError> {
        let sk: Zeroizing<[u8; 32]> = Zeroizing::new(
            b.try_into()
                .map_err(|_| CryptoError::Malformed("KM exchange key"))?,
        );
        let k = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(&sk[..])
            .map_err(|_| CryptoError::Malformed("KM exchange key"))?;
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&HpkeKem::sk_to_pk(&k).to_bytes());
        Ok(ExchangeKey { sk, pk })
    }
    pub fn secret_bytes(&self) -> SecretBytes {
        SecretBytes(self.sk.to_vec())
    }
    pub fn public(&self) -> [u8; 32] {
        self.pk
    }
    /// The secret, for [`crate::hpke_seal::open`].
    pub fn expose(&self) -> &[u8; 32] {
        &self.sk
    }
}

/// A KM's identity as another firm pins it: the text form of its tenant,
/// signing key and exchange key, and the fingerprint admins compare out of
/// band (the first 20 bytes of its SHA-256, in groups of four hex digits).
pub fn km_identity_fingerprint(identity: &str) -> String {
    let h = sha256(identity.as_bytes());
    h[..20]
        .chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(" ")
}

fn framed(domain: &str, msg: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(domain.len() + 1 + msg.len());
    v.extend_from_slice(domain.as_bytes());
    v.push(0);
    v.extend_from_slice(msg);
    v
}

fn sign_with(key: &SigningKey, domain: &str, msg: &[u8]) -> [u8; 64] {
    key.sign(&framed(domain, msg)).to_bytes()
}

/// Verify an Ed25519 signature over `domain ‖ 0x00 ‖ msg` (strict verification).
pub fn verify(pk: &[u8; 32], domain: &str, msg: &[u8], sig: &[u8; 64]) -> Result<(), CryptoError> {
    VerifyKey::from_bytes(pk)?.verify(domain, msg, sig)
}

/// A parsed (decompressed) Ed25519 public key, for callers that verify many
/// signatures by the same key: parsing costs a field exponentiation.
#[derive(Clone, Debug)]
pub struct VerifyKey(VerifyingKey);

impl VerifyKey {
    pub fn from_bytes(pk: &[u8; 32]) -> Result<Self, CryptoError> {
        VerifyingKey::from_bytes(pk)
            .map(VerifyKey)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Strict verification over `domain ‖ 0x00 ‖ msg`.
    pub fn verify(&self, domain: &str, msg: &[u8], sig: &[u8; 64]) -> Result<(), CryptoError> {
        self.verify_raw(&framed(domain, msg), sig)
    }

    /// Strict verification over the bytes as they are.
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8; 64]) -> Result<(), CryptoError> {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.0
            .verify_strict(msg, &sig)
            .map_err(|_| CryptoError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_domain_separation() {
        let k = DeviceKeys::generate().unwrap();
        let sig = k.sign("a", b"hello");
        verify(&k.sign_pk(), "a", b"hello", &sig).unwrap();
        assert_eq!(
            verify(&k.sign_pk(), "b", b"hello", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            verify(&k.sign_pk(), "a", b"hellp", &sig),
            Err(CryptoError::BadSignature)
        );
        assert!(verify(&k.sign_pk(), "ab", b"hello", &sig).is_err());
    }

    #[test]
    fn keystore_roundtrip_and_debug_redacted() {
        let k = DeviceKeys::generate().unwrap();
        let s = k.to_secret_bytes();
        let k2 = DeviceKeys::from_secret_bytes(s.expose()).unwrap();
        assert_eq!(k.device_id(), k2.device_id());
        assert_eq!(k.hpke_pk(), k2.hpke_pk());
        let dbg = format!("{k:?} {s:?} {:?}", RoomKey::from_bytes([7; 32]));
        assert!(!dbg.contains(&hex::encode(&s.expose()[..8])));
        assert!(dbg.contains("redacted"));
    }
}
