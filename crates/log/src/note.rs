//! C2SP `tlog-checkpoint` bodies signed as C2SP `signed-note`s with Ed25519.
//!
//! ```text
//! <origin>\n<tree size>\n<base64 root>\n          ← note text (signed bytes)
//! \n
//! — <key name> <base64(key id[4] ‖ signature[64])>\n
//! ```
//! Key id = SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)[0..4]; the verifier key
//! string is `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloister_crypto::KmSigner;
use cloister_crypto::keys::VerifyKey;

use crate::tree::Hash;

const ED25519: u8 = 0x01;
pub(crate) const DASH: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed signed note: {0}")]
    Malformed(&'static str),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
    #[error("malformed verifier key: {0}")]
    Key(&'static str),
    #[error("no valid signature by {0} on this note")]
    NotSigned(String),
}

/// A checkpoint: the log's origin, size and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text (tlog-checkpoint body), ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parse a note text as a checkpoint (extension lines are allowed and ignored).
    pub fn parse_body(text: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Checkpoint("no origin"))?;
        let size_s = lines.next().ok_or(NoteError::Checkpoint("no size"))?;
        if size_s.is_empty()
            || (size_s.len() > 1 && size_s.starts_with('0'))
            || !size_s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(NoteError::Checkpoint("size is not a decimal number"));
        }
        let size: u64 = size_s
            .parse()
            .map_err(|_| NoteError::Checkpoint("size out of range"))?;
        let root_s = lines.next().ok_or(NoteError::Checkpoint("no root hash"))?;
        let root: Hash = STANDARD
            .decode(root_s)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(NoteError::Checkpoint("root hash is not 32 bytes of base64"))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

fn key_id(name: &str, pk: &[u8; 32]) -> [u8; 4] {
    typed_key_id(name, ED25519, pk)
}

/// SHA-256(name ‖ "\n" ‖ type ‖ public key)[0..4].
pub(crate) fn typed_key_id(name: &str, typ: u8, pk: &[u8; 32]) -> [u8; 4] {
    let mut v = Vec::with_capacity(name.len() + 34);
    v.extend_from_slice(name.as_bytes());
    v.push(b'\n');
    v.push(typ);
    v.extend_from_slice(pk);
    let h = cloister_crypto::sha256(&v);
    [h[0], h[1], h[2], h[3]]
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// Signs notes under a key name.
pub struct NoteSigner<'a> {
    pub name: &'a str,
    pub key: &'a KmSigner,
}

impl NoteSigner<'_> {
    /// `text` must end with a newline; returns the whole signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') || text.contains("\n\n") {
            return Err(NoteError::Malformed(
                "note text must end with one newline and hold no blank line",
            ));
        }
        if !valid_name(self.name) {
            return Err(NoteError::Key("key name"));
        }
        let sig = self.key.sign_raw(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&key_id(self.name, &self.key.public()));
        blob.extend_from_slice(&sig);
        Ok(format!(
            "{text}\n{DASH}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }

    /// The verifier key string for this signer.
    pub fn verifier_key(&self) -> String {
        verifier_key(self.name, &self.key.public())
    }
}

/// `<name>+<hex key id>+<base64(0x01 ‖ pk)>`.
pub fn verifier_key(name: &str, pk: &[u8; 32]) -> String {
    let mut k = vec![ED25519];
    k.extend_from_slice(pk);
    let id = key_id(name, pk);
    format!(
        "{name}+{:02x}{:02x}{:02x}{:02x}+{}",
        id[0],
        id[1],
        id[2],
        id[3],
        STANDARD.encode(k)
    )
}

/// A signed note's text (ending in a newline) and its signature block.
pub fn split_note(note: &str) -> Result<(&str, &str), NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no signature block"))?;
    Ok((&note[..split + 1], &note[split + 2..]))
}

/// Verifies notes signed by one Ed25519 key.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    pub name: String,
    id: [u8; 4],
    pk: [u8; 32],
    key: VerifyKey,
}

impl NoteVerifier {
    /// Parse a verifier key string.
    pub fn parse(s: &str) -> Result<NoteVerifier, NoteError> {
        // The key itself is standard base64 and may contain '+'.
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::Key("expected name+keyid+key"));
        };
        if !valid_name(name) || id_hex.len() != 8 {
            return Err(NoteError::Key("name or key id"));
        }
        let raw = STANDARD
            .decode(key_b64)
            .map_err(|_| NoteError::Key("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ED25519 {
            return Err(NoteError::Key("not an Ed25519 key"));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[1..]);
        let id = key_id(name, &pk);
        let want: String = id.iter().map(|b| format!("{b:02x}")).collect();
        if want != id_hex {
            return Err(NoteError::Key("key id does not match the key"));
        }
        let key = VerifyKey::from_bytes(&pk).map_err(|_| NoteError::Key("invalid Ed25519 key"))?;
        Ok(NoteVerifier {
            name: name.to_owned(),
            id,
            pk,
            key,
        })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.pk
    }

    /// Verify a signed note; returns its text.
    pub fn verify<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let (text, sigs) = split_note(note)?;
        if !sigs.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature block must end with a newline",
            ));
        }
        for line in sigs.lines() {
            let rest = line
                .strip_prefix(DASH)
                .ok_or(NoteError::Malformed("signature line"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(NoteError::Malformed("signature line"))?;
            if name != self.name {
                continue;
            }
            let Ok(blob) = STANDARD.decode(b64) else {
                continue;
            };
            if blob.len() != 68 || blob[..4] != self.id {
                continue;
            }
            let mut sig = [0u8; 64];
            sig.copy_from_slice(&blob[4..]);
            if self.key.verify_raw(text.as_bytes(), &sig).is_ok() {
                return Ok(text);
            }
        }
        Err(NoteError::NotSigned(self.name.clone()))
    }

    /// Verify a signed checkpoint and parse it; its origin must be the key name.
    pub fn verify_checkpoint(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let text = self.verify(note)?;
        let cp = Checkpoint::parse_body(text)?;
        if cp.origin != self.name {
            return Err(NoteError::Checkpoint(
                "origin does not match the log's key name",
            ));
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let k = KmSigner::generate().unwrap();
        let s = NoteSigner {
            name: "cloister.audit/acme",
            key: &k,
        };
        let cp = Checkpoint {
            origin: "cloister.audit/acme".into(),
            size: 12,
            root: [7; 32],
        };
        let note = s.sign(&cp.body()).unwrap();
        let v = NoteVerifier::parse(&s.verifier_key()).unwrap();
        assert_eq!(v.verify_checkpoint(&note).unwrap(), cp);
        assert!(
            v.verify_checkpoint(&note.replace("\n12\n", "\n13\n"))
                .is_err()
        );
        let other = KmSigner::generate().unwrap();
        let v2 =
            NoteVerifier::parse(&verifier_key("cloister.audit/acme", &other.public())).unwrap();
        assert!(v2.verify(&note).is_err());
        assert!(NoteVerifier::parse("garbage").is_err());
        assert!(Checkpoint::parse_body("o\n012\nAAAA\n").is_err());
    }
}
