//! Threshold escrow: the tenant's escrow key pair (X25519, used with HPKE),
//! its private key split with Shamir's scheme (`blahaj`, GF(256)) into shares
//! sealed to custodians, and recombined only in memory for a decryption
//! session.
//!
//! ```text
//!  generate() ─▶ (escrow pk, escrow sk)
//!  split(sk, k, n) ─▶ n shares ─ seal_share(custodian hpke pk, context) ─▶ stored sealed
//!  k × open_share(...) ─▶ combine(k shares) ─▶ sk (Zeroizing, in memory only)
//!  seal_envelope(escrow pk, bytes, aad) / open_envelope(sk, ...)   (HPKE base mode)
//! ```

use crate::hpke_seal;
use crate::keys::{DeviceKeys, HpkeKem};
use crate::{CryptoError, SecretBytes, random_bytes};
use hpke::{Deserializable, Kem as _, Serializable};
use zeroize::Zeroizing;

const SHARE_INFO: &[u8] = b"cloister/escrow-share/v1";
const ENVELOPE_INFO: &[u8] = b"cloister/audit-envelope/v1";

/// The escrow private key; exists whole only transiently (generation, a decryption session).
pub struct EscrowSecret(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for EscrowSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EscrowSecret(<redacted>)")
    }
}

impl EscrowSecret {
    /// Rebuild from stored bytes (a decryption session's key kept in the
    /// officer's encrypted keystore between commands).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        EscrowSecret(Zeroizing::new(b))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key.
    pub fn public(&self) -> Result<[u8; 32], CryptoError> {
        let sk = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(&self.0[..])
            .map_err(|_| CryptoError::Malformed("escrow key"))?;
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&HpkeKem::sk_to_pk(&sk).to_bytes());
        Ok(pk)
    }
}

/// A fresh escrow key pair.
pub fn generate() -> Result<([u8; 32], EscrowSecret), CryptoError> {
    let ikm = Zeroizing::new(random_bytes::<32>()?);
    let (sk, pk) = HpkeKem::derive_keypair(&ikm[..]);
    let mut s = Zeroizing::new([0u8; 32]);
    s.copy_from_slice(&sk.to_bytes());
    let mut p = [0u8; 32];
    p.copy_from_slice(&pk.to_bytes());
    Ok((p, EscrowSecret(s)))
}

/// Split the escrow secret into `n` shares, any `k` of which recover it.
pub fn split(secret: &EscrowSecret, k: u8, n: u8) -> Result<Vec<SecretBytes>, CryptoError> {
    if k < 2 || k > n {
        return Err(CryptoError::Malformed("threshold: need 2 <= k <= n"));
    }
    let dealer = blahaj::Sharks(k).dealer(&secret.0[..]);
    Ok(dealer
        .take(n as usize)
        .map(|s| SecretBytes::new(Vec::from(&s)))
        .collect())
}

/// Recombine `k` or more distinct shares; fewer, or shares of another key, fail.
pub fn combine(
    shares: &[SecretBytes],
    k: u8,
    expected_public: &[u8; 32],
) -> Result<EscrowSecret, CryptoError> {
    let parsed: Vec<blahaj::Share> = shares
        .iter()
        .map(|s| {
            blahaj::Share::try_from(s.expose()).map_err(|_| CryptoError::Malformed("escrow share"))
        })
        .collect::<Result<_, _>>()?;
    let secret = Zeroizing::new(
        blahaj::Sharks(k)
            .recover(parsed.iter())
            .map_err(|_| CryptoError::Malformed("escrow shares: not enough distinct shares"))?,
    );
    let arr: [u8; 32] = secret[..]
        .try_into()
        .map_err(|_| CryptoError::Malformed("escrow shares"))?;
    let s = EscrowSecret(Zeroizing::new(arr));
    // Shares of another key (or a wrong mix) give a different secret: refuse it.
    if !crate::ct_eq(&s.public()?, expected_public) {
        return Err(CryptoError::Malformed(
            "escrow shares do not reconstruct this tenant's escrow key",
        ));
    }
    Ok(s)
}

/// Seal one share to a custodian device, bound to a context (tenant, share index).
pub fn seal_share(
    custodian_hpke_pk: &[u8; 32],
    context: &[u8],
    share: &SecretBytes,
) -> Result<([u8; 32], Vec<u8>), CryptoError> {
    hpke_seal::seal(custodian_hpke_pk, SHARE_INFO, context, share.expose())
}

/// Open a share sealed to this device.
pub fn open_share(
    keys: &DeviceKeys,
    context: &[u8],
    enc: &[u8; 32],
    ct: &[u8],
) -> Result<SecretBytes, CryptoError> {
    hpke_seal::open(keys.hpke_secret(), enc, SHARE_INFO, context, ct).map(SecretBytes::new)
}

/// Open a share re-sealed to a decryption session's key.
pub fn open_session_share(
    session: &EscrowSecret,
    context: &[u8],
    enc: &[u8; 32],
    ct: &[u8],
) -> Result<SecretBytes, CryptoError> {
    hpke_seal::open(&session.0, enc, SHARE_INFO, context, ct).map(SecretBytes::new)
}

/// Seal an audit envelope to the tenant's escrow public key.
pub fn seal_envelope(
    escrow_pk: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; 32], Vec<u8>), CryptoError> {
    hpke_seal::seal(escrow_pk, ENVELOPE_INFO, aad, plaintext)
}

/// Open an audit envelope with the (reconstructed) escrow secret.
pub fn open_envelope(
    secret: &EscrowSecret,
    aad: &[u8],
    enc: &[u8; 32],
    ct: &[u8],
) -> Result<SecretBytes, CryptoError> {
    hpke_seal::open(&secret.0, enc, ENVELOPE_INFO, aad, ct).map(SecretBytes::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_of_n_recovers_and_k_minus_1_does_not() {
        let (pk, sk) = generate().unwrap();
        assert_eq!(sk.public().unwrap(), pk);
        let shares = split(&sk, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        for combo in [[0usize, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let picked: Vec<SecretBytes> = combo.iter().map(|&i| shares[i].clone()).collect();
            let r = combine(&picked, 3, &pk).unwrap();
            assert_eq!(r.public().unwrap(), pk);
        }
        assert!(
            combine(&shares[..2], 3, &pk).is_err(),
            "k-1 shares recover nothing"
        );
        // a duplicated share does not count twice
        assert!(
            combine(
                &[shares[0].clone(), shares[0].clone(), shares[1].clone()],
                3,
                &pk
            )
            .is_err()
        );
        // shares of another escrow key are refused
        let (pk2, sk2) = generate().unwrap();
        let other = split(&sk2, 3, 5).unwrap();
        assert!(
            combine(
                &[shares[0].clone(), shares[1].clone(), other[2].clone()],
                3,
                &pk
            )
            .is_err()
        );
        assert!(combine(&other[..3], 3, &pk).is_err());
        assert!(combine(&other[..3], 3, &pk2).is_ok());
        assert!(split(&sk, 1, 5).is_err() && split(&sk, 6, 5).is_err());
        assert!(format!("{sk:?}").contains("redacted"));
    }

    #[test]
    fn shares_and_envelopes_are_sealed_to_their_context() {
        let custodian = DeviceKeys::generate().unwrap();
        let (pk, sk) = generate().unwrap();
        let shares = split(&sk, 2, 3).unwrap();
        let (enc, ct) = seal_share(&custodian.hpke_pk(), b"acme|share 1", &shares[0]).unwrap();
        assert_eq!(
            open_share(&custodian, b"acme|share 1", &enc, &ct)
                .unwrap()
                .expose(),
            shares[0].expose()
        );
        assert!(open_share(&custodian, b"acme|share 2", &enc, &ct).is_err());
        assert!(open_share(&DeviceKeys::generate().unwrap(), b"acme|share 1", &enc, &ct).is_err());

        let (enc, ct) = seal_envelope(&pk, b"msg 1", b"plaintext envelope").unwrap();
        assert_eq!(
            open_envelope(&sk, b"msg 1", &enc, &ct).unwrap().expose(),
            b"plaintext envelope"
        );
        assert!(open_envelope(&sk, b"msg 2", &enc, &ct).is_err());
        let (_, sk2) = generate().unwrap();
        assert!(open_envelope(&sk2, b"msg 1", &enc, &ct).is_err());
    }
}
