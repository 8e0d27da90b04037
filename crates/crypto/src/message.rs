//! Message sealing: per-message key from HKDF(room-epoch key, message id),
//! AES-256-GCM with the header bytes as associated data, Ed25519 by the sender.

use crate::keys::DeviceKeys;
use crate::{CryptoError, RoomKey};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::server::{Content, Envelope, MessageHeader};
use zeroize::Zeroizing;

pub const MESSAGE: &str = "cloister/message/v1";
const KEY_INFO: &[u8] = b"cloister/message-key/v1";

fn message_cipher(
    room_key: &RoomKey,
    msg_id: &[u8; 16],
) -> Result<(Aes256Gcm, [u8; 12]), CryptoError> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(msg_id), room_key.expose());
    let mut okm = Zeroizing::new([0u8; 44]);
    hk.expand(KEY_INFO, &mut okm[..])
        .map_err(|_| CryptoError::Encrypt)?;
    let cipher = Aes256Gcm::new_from_slice(&okm[..32]).map_err(|_| CryptoError::Encrypt)?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&okm[32..]);
    Ok((cipher, nonce))
}

fn signed_part(header: &[u8], ct: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + header.len() + ct.len());
    v.extend_from_slice(&(header.len() as u64).to_be_bytes());
    v.extend_from_slice(header);
    v.extend_from_slice(ct);
    v
}

/// Encrypt and sign a message.
pub fn seal_message(
    keys: &DeviceKeys,
    room_key: &RoomKey,
    header: &MessageHeader,
    content: &Content,
) -> Result<Envelope, CryptoError> {
    let header_bytes = serde_json::to_vec(header).map_err(|_| CryptoError::Encrypt)?;
    let pt = Zeroizing::new(serde_json::to_vec(content).map_err(|_| CryptoError::Encrypt)?);
    seal_raw(keys, room_key, header.id.as_bytes(), header_bytes, &pt)
}

/// Encrypt and sign already-serialised header and plaintext bytes.
pub fn seal_raw(
    keys: &DeviceKeys,
    room_key: &RoomKey,
    msg_id: &[u8; 16],
    header_bytes: Vec<u8>,
    plaintext: &[u8],
) -> Result<Envelope, CryptoError> {
    let (cipher, nonce) = message_cipher(room_key, msg_id)?;
    let ct = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: plaintext,
                aad: &header_bytes,
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    let sig = keys.sign(MESSAGE, &signed_part(&header_bytes, &ct));
    Ok(Envelope {
        header: Bytes(header_bytes),
        ciphertext: Bytes(ct),
        sig: Fixed(sig),
        receipt: None,
    })
}

/// Parse a header without verifying (to learn sender, room and epoch).
pub fn peek_header(env: &Envelope) -> Result<MessageHeader, CryptoError> {
    let h: MessageHeader = serde_json::from_slice(env.header.as_slice())
        .map_err(|_| CryptoError::Malformed("message header"))?;
    if h.v != 1 {
        return Err(CryptoError::Malformed("message header (unknown version)"));
    }
    Ok(h)
}

/// Verify the sender's signature over header and ciphertext, then parse the header.
pub fn verify_envelope(sender_pk: &[u8; 32], env: &Envelope) -> Result<MessageHeader, CryptoError> {
    verify_envelope_with(&crate::keys::VerifyKey::from_bytes(sender_pk)?, env)
}

/// [`verify_envelope`] with an already parsed key.
pub fn verify_envelope_with(
    sender: &crate::keys::VerifyKey,
    env: &Envelope,
) -> Result<MessageHeader, CryptoError> {
    sender.verify(
        MESSAGE,
        &signed_part(env.header.as_slice(), env.ciphertext.as_slice()),
        &env.sig.0,
    )?;
    peek_header(env)
}

/// Decrypt a verified envelope.
pub fn decrypt_envelope(
    room_key: &RoomKey,
    header: &MessageHeader,
    env: &Envelope,
) -> Result<Content, CryptoError> {
    let (cipher, nonce) = message_cipher(room_key, header.id.as_bytes())?;
    let pt = Zeroizing::new(
        cipher
            .decrypt(
                (&nonce).into(),
                Payload {
                    msg: env.ciphertext.as_slice(),
                    aad: env.header.as_slice(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)?,
    );
    serde_json::from_slice(&pt).map_err(|_| CryptoError::Malformed("message content"))
}

/// Verify, then decrypt.
pub fn open_message(
    sender_pk: &[u8; 32],
    room_key: &RoomKey,
    env: &Envelope,
) -> Result<(MessageHeader, Content), CryptoError> {
    let h = verify_envelope(sender_pk, env)?;
    let c = decrypt_envelope(room_key, &h, env)?;
    Ok((h, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_proto::{MessageId, RoomId};

    fn setup() -> (DeviceKeys, RoomKey, MessageHeader, Content) {
        let k = DeviceKeys::generate().unwrap();
        let h = MessageHeader {
            v: 1,
            room: RoomId([1; 16]),
            epoch: 0,
            id: MessageId([2; 16]),
            sender: "alice@acme".parse().unwrap(),
            device: k.device_id(),
            ts: 1000,
        };
        (
            k,
            RoomKey::generate().unwrap(),
            h,
            Content::Text {
                text: "buy 100 ACME".into(),
            },
        )
    }

    #[test]
    fn roundtrip() {
        let (k, rk, h, c) = setup();
        let env = seal_message(&k, &rk, &h, &c).unwrap();
        assert!(!env.ciphertext.0.windows(4).any(|w| w == b"ACME"));
        assert_eq!(open_message(&k.sign_pk(), &rk, &env).unwrap(), (h, c));
    }

    #[test]
    fn tamper_forge_and_readdress_fail() {
        let (k, rk, h, c) = setup();
        let env = seal_message(&k, &rk, &h, &c).unwrap();
        // flipped ciphertext bit
        let mut t = env.clone();
        t.ciphertext.0[0] ^= 1;
        assert_eq!(
            open_message(&k.sign_pk(), &rk, &t),
            Err(CryptoError::BadSignature)
        );
        // another member (who knows the room key) forges a message as alice
        let mallory = DeviceKeys::generate().unwrap();
        let forged = seal_message(
            &mallory,
            &rk,
            &h,
            &Content::Text {
                text: "sell".into(),
            },
        )
        .unwrap();
        assert_eq!(
            open_message(&k.sign_pk(), &rk, &forged),
            Err(CryptoError::BadSignature)
        );
        // re-addressed to another room, re-signed by the sender: the AAD binding breaks decryption
        let mut h2 = h.clone();
        h2.room = RoomId([9; 16]);
        let hb = serde_json::to_vec(&h2).unwrap();
        let sig = k.sign(MESSAGE, &signed_part(&hb, env.ciphertext.as_slice()));
        let moved = Envelope {
            header: Bytes(hb),
            ciphertext: env.ciphertext.clone(),
            sig: Fixed(sig),
            receipt: None,
        };
        assert_eq!(
            open_message(&k.sign_pk(), &rk, &moved),
            Err(CryptoError::Decrypt)
        );
        // wrong room key
        assert_eq!(
            open_message(&k.sign_pk(), &RoomKey::generate().unwrap(), &env),
            Err(CryptoError::Decrypt)
        );
    }
}
