//! Message sealing: per-message key from HKDF(room-epoch key, message id),
//! AES-256-GCM with the header bytes as associated data, Ed25519 by the
//! sender over the header and the ciphertext's hash.
//!
//! Franking: the header carries `commit = HMAC-SHA256(fk, plaintext)` with
//! `fk = HKDF(room-epoch key, message id, "cloister/franking-key/v1")`.
//! Recipients derive `fk` and check the commitment after decrypting; the
//! audit envelope carries `fk`, the exact plaintext, the signed header and
//! the signature, so an export can prove who wrote exactly this content
//! without the epoch key ([`verify_attribution`]).

use crate::keys::DeviceKeys;
use crate::{CryptoError, RoomKey};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::server::{Content, Envelope, MessageHeader};
use cloister_proto::vault::Attribution;
use zeroize::Zeroizing;

pub const MESSAGE: &str = "cloister/message/v1";
const KEY_INFO: &[u8] = b"cloister/message-key/v1";
const FRANKING_INFO: &[u8] = b"cloister/franking-key/v1";

/// The franking key of one message.
pub fn franking_key(room_key: &RoomKey, msg_id: &[u8; 16]) -> Result<[u8; 32], CryptoError> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(msg_id), room_key.expose());
    let mut fk = [0u8; 32];
    hk.expand(FRANKING_INFO, &mut fk)
        .map_err(|_| CryptoError::Encrypt)?;
    Ok(fk)
}

/// The commitment to a plaintext under a franking key.
pub fn commitment(franking_key: &[u8; 32], plaintext: &[u8]) -> [u8; 32] {
    crate::hmac_sha256(franking_key, &[b"cloister/franking/v1", plaintext])
}

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

/// What the sender signs: the header and the ciphertext's SHA-256 (so the
/// signature can be checked from an audit envelope, which holds the hash).
fn signed_part(header: &[u8], ct_sha256: &[u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + header.len() + 32);
    v.extend_from_slice(&(header.len() as u64).to_be_bytes());
    v.extend_from_slice(header);
    v.extend_from_slice(ct_sha256);
    v
}

/// Encrypt and sign a message (its header's commitment is set here).
pub fn seal_message(
    keys: &DeviceKeys,
    room_key: &RoomKey,
    header: &MessageHeader,
    content: &Content,
) -> Result<Envelope, CryptoError> {
    Ok(seal_attributed(keys, room_key, header, content)?.0)
}

/// [`seal_message`], also returning the message's attribution for capture.
pub fn seal_attributed(
    keys: &DeviceKeys,
    room_key: &RoomKey,
    header: &MessageHeader,
    content: &Content,
) -> Result<(Envelope, Attribution), CryptoError> {
    let pt = Zeroizing::new(serde_json::to_vec(content).map_err(|_| CryptoError::Encrypt)?);
    let fk = Zeroizing::new(franking_key(room_key, header.id.as_bytes())?);
    let mut h = header.clone();
    h.commit = Fixed(commitment(&fk, &pt));
    let header_bytes = serde_json::to_vec(&h).map_err(|_| CryptoError::Encrypt)?;
    let env = seal_raw(keys, room_key, h.id.as_bytes(), header_bytes, &pt)?;
    let att = Attribution {
        header: env.header.clone(),
        sig: env.sig,
        franking_key: Fixed(*fk),
        plaintext: Bytes(pt.to_vec()),
    };
    Ok((env, att))
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
    let sig = keys.sign(MESSAGE, &signed_part(&header_bytes, &crate::sha256(&ct)));
    Ok(Envelope {
        header: Bytes(header_bytes),
        ciphertext: Bytes(ct),
        sig: Fixed(sig),
        receipt: None,
    })
}

/// Sign an envelope whose ciphertext was made elsewhere (an MLS private
/// message in MLS rooms): the same signature over the header and the
/// ciphertext's hash as [`seal_raw`] makes.
pub fn sign_envelope(keys: &DeviceKeys, header_bytes: Vec<u8>, ciphertext: Vec<u8>) -> Envelope {
    let sig = keys.sign(
        MESSAGE,
        &signed_part(&header_bytes, &crate::sha256(&ciphertext)),
    );
    Envelope {
        header: Bytes(header_bytes),
        ciphertext: Bytes(ciphertext),
        sig: Fixed(sig),
        receipt: None,
    }
}

/// Parse a header without verifying (to learn sender, room and epoch).
pub fn peek_header(env: &Envelope) -> Result<MessageHeader, CryptoError> {
    let h: MessageHeader = serde_json::from_slice(env.header.as_slice())
        .map_err(|_| CryptoError::Malformed("message header"))?;
    if h.v != 1 && h.v != 2 {
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
    verify_signed_header(
        sender,
        env.header.as_slice(),
        &env.sig.0,
        &crate::sha256(env.ciphertext.as_slice()),
    )
}

/// The bytes an envelope's signature covers (domain framing included), to
/// check many envelopes at once with [`crate::keys::verify_batch`]. The
/// header still has to be parsed ([`peek_header`]) and is only to be
/// believed once the batch says the signature holds.
pub fn envelope_signed_bytes(env: &Envelope) -> Vec<u8> {
    crate::keys::framed(
        MESSAGE,
        &signed_part(
            env.header.as_slice(),
            &crate::sha256(env.ciphertext.as_slice()),
        ),
    )
}

/// Verify a sender's signature over a header and a ciphertext hash, then
/// parse the header (the vault's check at capture).
pub fn verify_signed_header(
    sender: &crate::keys::VerifyKey,
    header: &[u8],
    sig: &[u8; 64],
    ciphertext_sha256: &[u8; 32],
) -> Result<MessageHeader, CryptoError> {
    sender.verify(MESSAGE, &signed_part(header, ciphertext_sha256), sig)?;
    read_signed_header(header)
}

/// The bytes a sender's signature covers, from the header and the
/// ciphertext's SHA-256 (an audit envelope's view), for
/// [`crate::keys::verify_batch`].
pub fn header_signed_bytes(header: &[u8], ciphertext_sha256: &[u8; 32]) -> Vec<u8> {
    crate::keys::framed(MESSAGE, &signed_part(header, ciphertext_sha256))
}

/// Parse a header whose signature the caller has checked (in a batch).
pub fn read_signed_header(header: &[u8]) -> Result<MessageHeader, CryptoError> {
    let h: MessageHeader =
        serde_json::from_slice(header).map_err(|_| CryptoError::Malformed("message header"))?;
    if h.v != 1 && h.v != 2 {
        return Err(CryptoError::Malformed("message header (unknown version)"));
    }
    Ok(h)
}

/// Prove who wrote a captured message: the sender's signature over the
/// header and `ciphertext_sha256`, and the header's commitment opened by the
/// franking key over the exact plaintext. Returns the header and content.
pub fn verify_attribution(
    sender: &crate::keys::VerifyKey,
    att: &Attribution,
    ciphertext_sha256: &[u8; 32],
) -> Result<(MessageHeader, Content), CryptoError> {
    let h = verify_signed_header(sender, att.header.as_slice(), &att.sig.0, ciphertext_sha256)?;
    let c = commitment(&att.franking_key.0, att.plaintext.as_slice());
    if !crate::ct_eq(&c, &h.commit.0) {
        return Err(CryptoError::BadCommitment);
    }
    let content = serde_json::from_slice(att.plaintext.as_slice())
        .map_err(|_| CryptoError::Malformed("message content"))?;
    Ok((h, content))
}

/// Decrypt a verified envelope and check its franking commitment.
pub fn decrypt_envelope(
    room_key: &RoomKey,
    header: &MessageHeader,
    env: &Envelope,
) -> Result<Content, CryptoError> {
    Ok(decrypt_attributed(room_key, header, env)?.0)
}

/// [`decrypt_envelope`], also returning the message's attribution for capture.
pub fn decrypt_attributed(
    room_key: &RoomKey,
    header: &MessageHeader,
    env: &Envelope,
) -> Result<(Content, Attribution), CryptoError> {
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
    let fk = Zeroizing::new(franking_key(room_key, header.id.as_bytes())?);
    if !crate::ct_eq(&commitment(&fk, &pt), &header.commit.0) {
        return Err(CryptoError::BadCommitment);
    }
    let content =
        serde_json::from_slice(&pt).map_err(|_| CryptoError::Malformed("message content"))?;
    Ok((
        content,
        Attribution {
            header: env.header.clone(),
            sig: env.sig,
            franking_key: Fixed(*fk),
            plaintext: Bytes(pt.to_vec()),
        },
    ))
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
            commit: Fixed([0; 32]),
            counter: 1,
            after: vec![],
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
        let (h2, c2) = open_message(&k.sign_pk(), &rk, &env).unwrap();
        assert_eq!(c2, c);
        let fk = franking_key(&rk, h.id.as_bytes()).unwrap();
        let committed = MessageHeader {
            commit: Fixed(commitment(&fk, &serde_json::to_vec(&c).unwrap())),
            ..h
        };
        assert_eq!(h2, committed);
    }

    #[test]
    fn batched_envelope_checks_agree_with_single_ones() {
        let (k, rk, h, c) = setup();
        let vk = crate::keys::VerifyKey::from_bytes(&k.sign_pk()).unwrap();
        let good = seal_message(&k, &rk, &h, &c).unwrap();
        let mut flipped = good.clone();
        flipped.ciphertext.0[0] ^= 1;
        let mut other = seal_message(&k, &rk, &h, &c).unwrap();
        other.header.0.push(b' ');
        let envs = [good.clone(), flipped, good, other];
        let signed: Vec<Vec<u8>> = envs.iter().map(envelope_signed_bytes).collect();
        let pending: Vec<crate::keys::Pending<'_>> = envs
            .iter()
            .zip(&signed)
            .map(|(e, signed)| crate::keys::Pending {
                key: &vk,
                signed,
                sig: &e.sig.0,
            })
            .collect();
        let single: Vec<bool> = envs
            .iter()
            .map(|e| verify_envelope_with(&vk, e).is_ok())
            .collect();
        assert_eq!(single, [true, false, true, false]);
        assert_eq!(crate::keys::verify_batch(&pending), single);
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
        let mut h2 = peek_header(&env).unwrap();
        h2.room = RoomId([9; 16]);
        let hb = serde_json::to_vec(&h2).unwrap();
        let sig = k.sign(
            MESSAGE,
            &signed_part(&hb, &crate::sha256(env.ciphertext.as_slice())),
        );
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

    #[test]
    fn franking_binds_the_sender_to_the_plaintext() {
        let (k, rk, h, c) = setup();
        let (env, att) = seal_attributed(&k, &rk, &h, &c).unwrap();
        let vk = crate::keys::VerifyKey::from_bytes(&k.sign_pk()).unwrap();
        let ct_sha = crate::sha256(env.ciphertext.as_slice());
        // the recipient's view gives the same attribution as the sender's
        let hdr = verify_envelope(&k.sign_pk(), &env).unwrap();
        let (c2, att2) = decrypt_attributed(&rk, &hdr, &env).unwrap();
        assert_eq!((c2, &att2), (c.clone(), &att));
        let (h3, c3) = verify_attribution(&vk, &att, &ct_sha).unwrap();
        assert_eq!((h3.id, c3), (h.id, c.clone()));
        // an insider who knows the franking key claims other words
        let mut lie = att.clone();
        lie.plaintext = Bytes(br#"{"type":"text","text":"sell everything"}"#.to_vec());
        assert_eq!(
            verify_attribution(&vk, &lie, &ct_sha),
            Err(CryptoError::BadCommitment)
        );
        // or another message's ciphertext, or another signer
        assert_eq!(
            verify_attribution(&vk, &att, &[0; 32]),
            Err(CryptoError::BadSignature)
        );
        let mallory = DeviceKeys::generate().unwrap();
        let mvk = crate::keys::VerifyKey::from_bytes(&mallory.sign_pk()).unwrap();
        assert_eq!(
            verify_attribution(&mvk, &att, &ct_sha),
            Err(CryptoError::BadSignature)
        );
        // a sender whose commitment does not match what it encrypted is
        // refused by every recipient
        let mut hb = peek_header(&env).unwrap();
        hb.commit = Fixed([1; 32]);
        let pt = serde_json::to_vec(&c).unwrap();
        let bad = seal_raw(
            &k,
            &rk,
            h.id.as_bytes(),
            serde_json::to_vec(&hb).unwrap(),
            &pt,
        )
        .unwrap();
        let hdr = verify_envelope(&k.sign_pk(), &bad).unwrap();
        assert_eq!(
            decrypt_envelope(&rk, &hdr, &bad),
            Err(CryptoError::BadCommitment)
        );
    }
}
