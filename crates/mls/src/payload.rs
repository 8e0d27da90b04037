//! Inside an MLS application message: the message's franking key and its
//! content, `fk (32 bytes) ‖ content JSON`. The MLS authenticated data is
//! the Cloister message id, so a ciphertext cannot be carried under
//! another header.
//!
//! In managed rooms the franking key is derived from the epoch key; in MLS
//! rooms no such key is shared with the KM, so the sender draws `fk` at
//! random and sends it inside the encryption. Attribution (header,
//! signature, `fk`, plaintext) is then the same in both modes.

use zeroize::Zeroizing;

/// Encode the plaintext of an application message.
pub fn encode(franking_key: &[u8; 32], content: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(32 + content.len()));
    v.extend_from_slice(franking_key);
    v.extend_from_slice(content);
    v
}

/// Split a decrypted application message into franking key and content.
pub fn decode(data: &[u8]) -> Option<([u8; 32], &[u8])> {
    if data.len() < 32 {
        return None;
    }
    let mut fk = [0u8; 32];
    fk.copy_from_slice(&data[..32]);
    Some((fk, &data[32..]))
}
