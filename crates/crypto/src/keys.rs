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

    /// The signing key as MLS takes it (secret ‖ public, 64 bytes): a
    /// device's MLS leaves are signed with its certified key, and MLS's own
    /// labels ("MLS 1.0 …") keep those signatures apart from Cloister's.
    pub fn mls_signature_secret(&self) -> SecretBytes {
        SecretBytes(self.sign.to_keypair_bytes().to_vec())
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

/// The bytes a signature under `domain` covers: `domain ‖ 0x00 ‖ msg`
/// (for [`verify_batch`], which takes the bytes exactly as signed).
pub fn framed(domain: &str, msg: &[u8]) -> Vec<u8> {
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

/// One signature to check in a batch: the key, the bytes exactly as signed
/// (domain framing included) and the signature.
pub struct Pending<'a> {
    pub key: &'a VerifyKey,
    pub signed: &'a [u8],
    pub sig: &'a [u8; 64],
}

/// Verify many signatures at once; one verdict per item, in order.
///
/// A batch costs about half as much per signature as checking each one
/// (one multi-scalar multiplication, ADR 0017). If the batch fails, each
/// item is checked alone with [`VerifyKey::verify_raw`], so one bad
/// signature never condemns another. Before batching, every item must pass
/// the checks strict verification adds: its key is not of small order, its
/// `R` is canonically encoded and not of small order, its `s` is reduced.
/// What remains different from strict verification: a signer who adds a
/// torsion component to its own `R` can pass a batch that strict
/// verification would refuse. That forges nothing (it needs the signer's
/// key); every reader of the message verifies strictly and refuses it.
pub fn verify_batch(items: &[Pending<'_>]) -> Vec<bool> {
    let mut ok: Vec<bool> = items
        .iter()
        .map(|p| !p.key.0.is_weak() && plausible_r(p.sig))
        .collect();
    let batch: Vec<usize> = (0..items.len()).filter(|&k| ok[k]).collect();
    let msgs: Vec<&[u8]> = batch.iter().map(|&k| items[k].signed).collect();
    let sigs: Vec<ed25519_dalek::Signature> = batch
        .iter()
        .map(|&k| ed25519_dalek::Signature::from_bytes(items[k].sig))
        .collect();
    let keys: Vec<VerifyingKey> = batch.iter().map(|&k| items[k].key.0).collect();
    if batch.len() > 1 && ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
        return ok;
    }
    for k in batch {
        ok[k] = items[k]
            .key
            .verify_raw(items[k].signed, items[k].sig)
            .is_ok();
    }
    ok
}

/// `R` (the signature's first half) is a canonical encoding (y < p) of a
/// point that is not of small order. Cheap byte checks: no field arithmetic.
fn plausible_r(sig: &[u8; 64]) -> bool {
    let mut y = [0u8; 32];
    y.copy_from_slice(&sig[..32]);
    y[31] &= 0x7f;
    // p = 2^255 - 19: the only non-canonical values are p..2^255-1.
    let non_canonical = y[0] >= 0xed && y[1..31].iter().all(|&b| b == 0xff) && y[31] == 0x7f;
    !non_canonical && !small_order_ys().contains(&y)
}

/// The y coordinates of the eight points of small order (x's sign is
/// irrelevant: a point and its negation have the same order).
fn small_order_ys() -> &'static [[u8; 32]; 8] {
    static YS: std::sync::OnceLock<[[u8; 32]; 8]> = std::sync::OnceLock::new();
    YS.get_or_init(|| {
        curve25519_dalek::constants::EIGHT_TORSION.map(|p| {
            let mut y = p.compress().to_bytes();
            y[31] &= 0x7f;
            y
        })
    })
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

    /// Signatures by `n` fresh keys over distinct messages, framed as
    /// `verify` frames them.
    fn signed(n: usize) -> Vec<(VerifyKey, Vec<u8>, [u8; 64])> {
        (0..n)
            .map(|k| {
                let keys = DeviceKeys::generate().unwrap();
                let msg = format!("message {k}").into_bytes();
                let sig = keys.sign("d", &msg);
                let vk = VerifyKey::from_bytes(&keys.sign_pk()).unwrap();
                (vk, framed("d", &msg), sig)
            })
            .collect()
    }

    fn batch_of(items: &[(VerifyKey, Vec<u8>, [u8; 64])]) -> Vec<bool> {
        let pending: Vec<Pending<'_>> = items
            .iter()
            .map(|(key, signed, sig)| Pending { key, signed, sig })
            .collect();
        verify_batch(&pending)
    }

    #[test]
    fn a_batch_accepts_good_signatures_and_singles_out_bad_ones() {
        assert!(batch_of(&[]).is_empty());
        let mut items = signed(9);
        assert_eq!(batch_of(&items), vec![true; 9]);
        assert_eq!(batch_of(&items[..1]), vec![true]);
        // a flipped bit in one message, one signature under another key
        items[2].1[5] ^= 1;
        items[5].2 = items[6].2;
        let mut want = vec![true; 9];
        want[2] = false;
        want[5] = false;
        assert_eq!(batch_of(&items), want);
    }

    #[test]
    fn a_batch_refuses_what_strict_verification_refuses() {
        use curve25519_dalek::{Scalar, constants::ED25519_BASEPOINT_POINT as B};
        let mut items = signed(4);
        // A "signature" by the identity (a key of small order): R = [s]B
        // satisfies the unweighted equation for any message, and the plain
        // batch equation accepts it. Strict verification refuses weak keys.
        let s = Scalar::from(1234567u64);
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&(B * s).compress().to_bytes());
        sig[32..].copy_from_slice(&s.to_bytes());
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyKey::from_bytes(&identity).unwrap();
        assert!(
            ed25519_dalek::verify_batch(
                &[b"anything".as_slice()],
                &[ed25519_dalek::Signature::from_bytes(&sig)],
                &[weak.0]
            )
            .is_ok(),
            "the plain batch equation accepts a weak key"
        );
        items.push((weak, b"anything".to_vec(), sig));
        // R of small order, and R not canonically encoded (y = p + 1, i.e. 1)
        let mut small_r = items[0].2;
        small_r[..32].copy_from_slice(&identity);
        items.push((items[0].0.clone(), items[0].1.clone(), small_r));
        let mut high_r = items[1].2;
        high_r[0] = 0xee;
        high_r[1..31].fill(0xff);
        high_r[31] = 0x7f;
        items.push((items[1].0.clone(), items[1].1.clone(), high_r));
        assert_eq!(
            batch_of(&items),
            [true, true, true, true, false, false, false]
        );
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
