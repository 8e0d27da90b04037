//! Passphrase sealing (Argon2id → AES-256-GCM) for key files at rest.
//!
//! Format: `"CLSP1" ‖ m_cost u32 ‖ t_cost u32 ‖ p_cost u32 ‖ salt[16] ‖ wrap(nonce ‖ ct)`.
//! The header is bound as associated data, so parameters cannot be downgraded.

use crate::{CryptoError, RoomKey, SecretBytes, random_bytes, wrap};
use zeroize::Zeroizing;

const MAGIC: &[u8; 5] = b"CLSP1";
const HEADER: usize = 5 + 12 + 16;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Cost {
    /// OWASP's first recommended Argon2id setting (19 MiB, t=2, p=1).
    pub const DEFAULT: Cost = Cost {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };
    /// Cheap setting for tests and benchmarks only.
    pub const TEST: Cost = Cost {
        m_kib: 256,
        t: 1,
        p: 1,
    };
}

fn derive(pass: &[u8], salt: &[u8], cost: Cost) -> Result<RoomKey, CryptoError> {
    if cost.m_kib > 4 * 1024 * 1024 || cost.t > 64 || cost.p > 16 {
        return Err(CryptoError::Malformed(
            "sealed file (cost parameters out of range)",
        ));
    }
    let params = argon2::Params::new(cost.m_kib, cost.t, cost.p, Some(32))
        .map_err(|_| CryptoError::Malformed("sealed file (cost parameters)"))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(pass, salt, &mut out[..])
        .map_err(|_| CryptoError::Passphrase)?;
    Ok(RoomKey::from_bytes(*out))
}

/// Seal `secret` under a passphrase.
pub fn seal(pass: &[u8], secret: &[u8], cost: Cost) -> Result<Vec<u8>, CryptoError> {
    let salt = random_bytes::<16>()?;
    let mut out = Vec::with_capacity(HEADER + 28 + secret.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&cost.m_kib.to_be_bytes());
    out.extend_from_slice(&cost.t.to_be_bytes());
    out.extend_from_slice(&cost.p.to_be_bytes());
    out.extend_from_slice(&salt);
    let kek = derive(pass, &salt, cost)?;
    let w = wrap::wrap(&kek, &out, secret)?;
    out.extend_from_slice(&w);
    Ok(out)
}

/// The cost a sealed file was made with (to seal a successor alike).
pub fn cost_of(sealed: &[u8]) -> Option<Cost> {
    if sealed.len() < HEADER || &sealed[..5] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| {
        sealed
            .get(i..i + 4)?
            .try_into()
            .ok()
            .map(u32::from_be_bytes)
    };
    Some(Cost {
        m_kib: u32_at(5)?,
        t: u32_at(9)?,
        p: u32_at(13)?,
    })
}

/// Open a file sealed by [`seal`].
pub fn open(pass: &[u8], sealed: &[u8]) -> Result<SecretBytes, CryptoError> {
    if sealed.len() < HEADER + 28 || &sealed[..5] != MAGIC {
        return Err(CryptoError::Malformed(
            "sealed file (not a Cloister sealed file)",
        ));
    }
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&sealed[i..i + 4]);
        u32::from_be_bytes(b)
    };
    let cost = Cost {
        m_kib: u32_at(5),
        t: u32_at(9),
        p: u32_at(13),
    };
    let (header, rest) = sealed.split_at(HEADER);
    let kek = derive(pass, &header[17..], cost)?;
    wrap::unwrap(&kek, header, rest).map_err(|_| CryptoError::Passphrase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_wrong_pass_and_tamper() {
        let s = seal(b"correct horse", b"tmk bytes", Cost::TEST).unwrap();
        assert_eq!(open(b"correct horse", &s).unwrap().expose(), b"tmk bytes");
        assert_eq!(open(b"wrong", &s).unwrap_err(), CryptoError::Passphrase);
        let mut t = s.clone();
        t[8] ^= 1; // cost parameter downgrade attempt
        assert!(open(b"correct horse", &t).is_err());
        assert!(open(b"x", b"garbage").is_err());
    }
}
