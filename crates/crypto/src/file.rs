//! Attachment encryption: a random per-file key, STREAM (BE32) over
//! AES-256-GCM in fixed plaintext chunks, so files of any size are processed in
//! bounded memory and truncation, reordering or extension is detected.

use crate::{CryptoError, RoomKey};
use aead_stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;

/// Size of one encrypted chunk (plaintext chunk plus GCM tag).
pub const SEALED_CHUNK: usize = cloister_proto::limits::FILE_CHUNK + 16;

// The per-file key is random and used for one file only, so a fixed STREAM
// nonce prefix is safe: the (key, nonce) pair never repeats.
const NONCE_PREFIX: [u8; 7] = [0; 7];

/// Encrypts a file chunk by chunk. Every chunk but the last must be exactly
/// [`cloister_proto::limits::FILE_CHUNK`] bytes.
pub struct FileSealer {
    inner: EncryptorBE32<Aes256Gcm>,
}

impl FileSealer {
    pub fn new(key: &RoomKey) -> Result<Self, CryptoError> {
        let cipher = Aes256Gcm::new_from_slice(key.expose()).map_err(|_| CryptoError::Encrypt)?;
        Ok(FileSealer {
            inner: EncryptorBE32::from_aead(cipher, (&NONCE_PREFIX).into()),
        })
    }
    pub fn next(&mut self, chunk: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner
            .encrypt_next(chunk)
            .map_err(|_| CryptoError::Encrypt)
    }
    pub fn last(self, chunk: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner
            .encrypt_last(chunk)
            .map_err(|_| CryptoError::Encrypt)
    }
}

/// Decrypts what [`FileSealer`] produced. Every sealed chunk but the last is
/// exactly [`SEALED_CHUNK`] bytes.
pub struct FileOpener {
    inner: DecryptorBE32<Aes256Gcm>,
}

impl FileOpener {
    pub fn new(key: &RoomKey) -> Result<Self, CryptoError> {
        let cipher = Aes256Gcm::new_from_slice(key.expose()).map_err(|_| CryptoError::Decrypt)?;
        Ok(FileOpener {
            inner: DecryptorBE32::from_aead(cipher, (&NONCE_PREFIX).into()),
        })
    }
    pub fn next(&mut self, chunk: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner
            .decrypt_next(chunk)
            .map_err(|_| CryptoError::Decrypt)
    }
    pub fn last(self, chunk: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner
            .decrypt_last(chunk)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// Encrypt a whole buffer (tests and small files).
pub fn seal_all(key: &RoomKey, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut s = FileSealer::new(key)?;
    let mut out = Vec::with_capacity(data.len() + data.len() / 1024 + 16);
    let chunks: Vec<&[u8]> = data.chunks(cloister_proto::limits::FILE_CHUNK).collect();
    let n = chunks.len();
    if n == 0 {
        return s.last(&[]);
    }
    for (i, c) in chunks.into_iter().enumerate() {
        if i + 1 == n {
            out.extend(s.last(c)?);
            return Ok(out);
        }
        out.extend(s.next(c)?);
    }
    Ok(out)
}

/// Decrypt a whole buffer (tests and small files).
pub fn open_all(key: &RoomKey, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut o = FileOpener::new(key)?;
    let mut out = Vec::with_capacity(data.len());
    let chunks: Vec<&[u8]> = data.chunks(SEALED_CHUNK).collect();
    let n = chunks.len();
    if n == 0 {
        return Err(CryptoError::Decrypt);
    }
    for (i, c) in chunks.into_iter().enumerate() {
        if i + 1 == n {
            out.extend(o.last(c)?);
            return Ok(out);
        }
        out.extend(o.next(c)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_proto::limits::FILE_CHUNK;

    #[test]
    fn roundtrip_sizes() {
        let k = RoomKey::generate().unwrap();
        for n in [
            0,
            1,
            FILE_CHUNK - 1,
            FILE_CHUNK,
            FILE_CHUNK + 1,
            3 * FILE_CHUNK,
        ] {
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let ct = seal_all(&k, &data).unwrap();
            assert_eq!(open_all(&k, &ct).unwrap(), data, "size {n}");
        }
    }

    #[test]
    fn truncation_and_reordering_detected() {
        let k = RoomKey::generate().unwrap();
        let data = vec![7u8; 3 * FILE_CHUNK];
        let ct = seal_all(&k, &data).unwrap();
        // drop the last chunk: the new last chunk was not sealed as last
        assert!(open_all(&k, &ct[..2 * SEALED_CHUNK]).is_err());
        // swap two chunks
        let mut sw = ct.clone();
        let (a, b) = sw.split_at_mut(SEALED_CHUNK);
        a.swap_with_slice(&mut b[..SEALED_CHUNK]);
        assert!(open_all(&k, &sw).is_err());
        // append garbage
        let mut ext = ct.clone();
        ext.extend_from_slice(&[0; 17]);
        assert!(open_all(&k, &ext).is_err());
    }
}
