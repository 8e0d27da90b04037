//! History handed from one of a user's devices to another (MLS rooms,
//! where no KM can serve what was said before a device joined): the
//! sending device signs the bundle with its device key and seals it with
//! HPKE to the receiving device's certified key, binding both device ids.

use crate::keys::DeviceKeys;
use crate::{CryptoError, hpke_seal};
use cloister_proto::DeviceId;
use cloister_proto::b64::{Bytes, Fixed};
use serde::{Deserialize, Serialize};

/// Signature domain of a history bundle.
pub const HISTORY: &str = "cloister/mls-history/v1";
const INFO: &[u8] = b"cloister/mls-history/v1";

/// A bundle as it travels (a file the user carries, or any channel):
/// nothing in it is readable but by `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedHistory {
    pub from: DeviceId,
    pub to: DeviceId,
    pub enc: Fixed<32>,
    pub ct: Bytes,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signed {
    body: Bytes,
    sig: Fixed<64>,
}

fn aad(from: &DeviceId, to: &DeviceId) -> Vec<u8> {
    [from.as_bytes().as_slice(), to.as_bytes().as_slice()].concat()
}

/// Sign `body` as this device and seal it to device `to`.
pub fn seal(
    keys: &DeviceKeys,
    to: &DeviceId,
    to_hpke_pk: &[u8; 32],
    body: &[u8],
) -> Result<SealedHistory, CryptoError> {
    let sig = keys.sign(HISTORY, body);
    let signed = serde_json::to_vec(&Signed {
        body: Bytes(body.to_vec()),
        sig: Fixed(sig),
    })
    .map_err(|_| CryptoError::Encrypt)?;
    let from = keys.device_id();
    let (enc, ct) = hpke_seal::seal(to_hpke_pk, INFO, &aad(&from, to), &signed)?;
    Ok(SealedHistory {
        from,
        to: *to,
        enc: Fixed(enc),
        ct: Bytes(ct),
    })
}

/// Open a bundle sealed to this device and check the sender's signature
/// under `from_sign_pk` (the caller takes it from `from`'s certificate).
pub fn open(
    keys: &DeviceKeys,
    sealed: &SealedHistory,
    from_sign_pk: &[u8; 32],
) -> Result<Vec<u8>, CryptoError> {
    if sealed.to != keys.device_id() {
        return Err(CryptoError::Malformed(
            "history bundle (for another device)",
        ));
    }
    let plain = hpke_seal::open(
        keys.hpke_secret(),
        &sealed.enc.0,
        INFO,
        &aad(&sealed.from, &sealed.to),
        sealed.ct.as_slice(),
    )?;
    let signed: Signed =
        serde_json::from_slice(&plain).map_err(|_| CryptoError::Malformed("history bundle"))?;
    crate::keys::verify(from_sign_pk, HISTORY, signed.body.as_slice(), &signed.sig.0)?;
    Ok(signed.body.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_device_opens_and_only_the_signer_is_believed() {
        let (a, b, c) = (
            DeviceKeys::generate().unwrap(),
            DeviceKeys::generate().unwrap(),
            DeviceKeys::generate().unwrap(),
        );
        let s = seal(&a, &b.device_id(), &b.hpke_pk(), b"history").unwrap();
        assert_eq!(open(&b, &s, &a.sign_pk()).unwrap(), b"history");
        // another device cannot open it, even renamed
        assert!(open(&c, &s, &a.sign_pk()).is_err());
        let mut to_c = s.clone();
        to_c.to = c.device_id();
        assert!(open(&c, &to_c, &a.sign_pk()).is_err());
        // a claimed sender whose key did not sign it
        assert!(open(&b, &s, &c.sign_pk()).is_err());
        // another sender id: the associated data no longer matches
        let mut from_c = s.clone();
        from_c.from = c.device_id();
        assert!(open(&b, &from_c, &a.sign_pk()).is_err());
        // tampered ciphertext
        let mut t = s;
        t.ct.0[0] ^= 1;
        assert!(open(&b, &t, &a.sign_pk()).is_err());
    }
}
