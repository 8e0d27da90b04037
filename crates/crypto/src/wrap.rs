//! Key wrapping: AES-256-GCM under a key-encryption key, with context as AAD.

use crate::{CryptoError, RoomKey, random_bytes};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};

/// Wrap `secret` under `kek`; output is `nonce ‖ ciphertext`.
pub fn wrap(kek: &RoomKey, aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new_from_slice(kek.expose()).map_err(|_| CryptoError::Encrypt)?;
    let nonce = random_bytes::<12>()?;
    let ct = cipher
        .encrypt((&nonce).into(), Payload { msg: secret, aad })
        .map_err(|_| CryptoError::Encrypt)?;
    let mut out = Vec::with_capacity(12 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Unwrap what [`wrap`] produced.
pub fn unwrap(
    kek: &RoomKey,
    aad: &[u8],
    wrapped: &[u8],
) -> Result<crate::SecretBytes, CryptoError> {
    if wrapped.len() < 12 + 16 {
        return Err(CryptoError::Malformed("wrapped key"));
    }
    let cipher = Aes256Gcm::new_from_slice(kek.expose()).map_err(|_| CryptoError::Decrypt)?;
    let (nonce, ct) = wrapped.split_at(12);
    let nonce: [u8; 12] = nonce
        .try_into()
        .map_err(|_| CryptoError::Malformed("wrapped key"))?;
    cipher
        .decrypt((&nonce).into(), Payload { msg: ct, aad })
        .map(crate::SecretBytes::new)
        .map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_binds_context() {
        let kek = RoomKey::generate().unwrap();
        let w = wrap(&kek, b"room 1 epoch 0", b"secret key bytes").unwrap();
        assert_eq!(
            unwrap(&kek, b"room 1 epoch 0", &w).unwrap().expose(),
            b"secret key bytes"
        );
        assert_eq!(
            unwrap(&kek, b"room 1 epoch 1", &w).unwrap_err(),
            CryptoError::Decrypt
        );
        assert!(unwrap(&RoomKey::generate().unwrap(), b"room 1 epoch 0", &w).is_err());
        assert!(unwrap(&kek, b"", &w[..10]).is_err());
    }
}
