//! Witness cosigning, after C2SP `tlog-cosignature` (Ed25519,
//! `cosignature/v1`) and `tlog-witness` (`add-checkpoint`). Pure: no I/O.
//!
//! ```text
//!  log ──add-checkpoint{old size, consistency proof, signed checkpoint}──▶ witness
//!  witness: log signature ok? old == size it last cosigned? proof from
//!           (its size, its root) to the new checkpoint verifies?
//!           ──▶ remember (size, root) ──▶ "— <name> base64(key id ‖ time ‖ sig)"
//!  client: a checkpoint counts only with cosignatures from k of its n witnesses
//! ```
//!
//! Signed message: `cosignature/v1\ntime <unix secs>\n` followed by the
//! checkpoint's note text. Key id: SHA-256(name ‖ "\n" ‖ 0x04 ‖ key)[0..4].
//! A witness never cosigns two inconsistent views of one log, so a log that
//! shows different histories to different people cannot get the same
//! witnesses to vouch for both.

use crate::note::{Checkpoint, DASH, NoteError, NoteVerifier, typed_key_id, valid_name};
use crate::tree::{Hash, verify_consistency};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloister_crypto::KmSigner;
use cloister_crypto::keys::VerifyKey;

const COSIGNATURE_V1: u8 = 0x04;
/// At most this many consistency proof lines (C2SP).
const MAX_PROOF: usize = 63;

fn message(ts: u64, text: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {ts}\n{text}").into_bytes()
}

/// The verifier key string of a witness: `<name>+<hex key id>+<base64(0x04 ‖ key)>`.
pub fn witness_key(name: &str, pk: &[u8; 32]) -> String {
    let id = typed_key_id(name, COSIGNATURE_V1, pk);
    let mut k = vec![COSIGNATURE_V1];
    k.extend_from_slice(pk);
    format!("{name}+{}+{}", hex_id(&id), STANDARD.encode(k))
}

fn hex_id(id: &[u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The note text of a signed note (everything before the signature block).
pub fn note_text(note: &str) -> Result<&str, NoteError> {
    Ok(crate::note::split_note(note)?.0)
}

/// A witness's signing side.
pub struct Cosigner<'a> {
    pub name: &'a str,
    pub key: &'a KmSigner,
}

impl Cosigner<'_> {
    /// One cosignature line (ending in a newline) over a checkpoint's note text.
    pub fn cosign(&self, text: &str, ts: u64) -> String {
        let sig = self.key.sign_raw(&message(ts, text));
        let mut blob = Vec::with_capacity(76);
        blob.extend_from_slice(&typed_key_id(self.name, COSIGNATURE_V1, &self.key.public()));
        blob.extend_from_slice(&ts.to_be_bytes());
        blob.extend_from_slice(&sig);
        format!("{DASH}{} {}\n", self.name, STANDARD.encode(blob))
    }

    pub fn key_string(&self) -> String {
        witness_key(self.name, &self.key.public())
    }
}

/// Checks one witness's cosignatures.
#[derive(Debug, Clone)]
pub struct CosignatureVerifier {
    pub name: String,
    id: [u8; 4],
    pk: [u8; 32],
    key: VerifyKey,
}

impl CosignatureVerifier {
    pub fn parse(s: &str) -> Result<CosignatureVerifier, NoteError> {
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::Key("expected name+keyid+key"));
        };
        let raw = STANDARD
            .decode(key_b64)
            .map_err(|_| NoteError::Key("key is not base64"))?;
        if !valid_name(name) || raw.len() != 33 || raw[0] != COSIGNATURE_V1 {
            return Err(NoteError::Key("not a cosignature/v1 Ed25519 key"));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[1..]);
        let id = typed_key_id(name, COSIGNATURE_V1, &pk);
        if hex_id(&id) != id_hex {
            return Err(NoteError::Key("key id does not match the key"));
        }
        Ok(CosignatureVerifier {
            name: name.to_owned(),
            id,
            pk,
            key: VerifyKey::from_bytes(&pk).map_err(|_| NoteError::Key("invalid Ed25519 key"))?,
        })
    }

    /// The time of this witness's valid cosignature on `note`, if any.
    pub fn verify(&self, note: &str) -> Result<u64, NoteError> {
        let (text, sigs) = crate::note::split_note(note)?;
        for line in sigs.lines() {
            let Some((name, b64)) = line.strip_prefix(DASH).and_then(|r| r.split_once(' ')) else {
                continue;
            };
            if name != self.name {
                continue;
            }
            let Ok(blob) = STANDARD.decode(b64) else {
                continue;
            };
            if blob.len() != 76 || blob[..4] != self.id {
                continue;
            }
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&blob[4..12]);
            let ts = u64::from_be_bytes(ts);
            let mut sig = [0u8; 64];
            sig.copy_from_slice(&blob[12..]);
            if ts < 1 << 63 && self.key.verify_raw(&message(ts, text), &sig).is_ok() {
                return Ok(ts);
            }
        }
        Err(NoteError::NotSigned(self.name.clone()))
    }
}

/// A client's witness policy: a checkpoint counts only with valid
/// cosignatures from at least `quorum` of `witnesses`.
#[derive(Debug, Clone)]
pub struct WitnessPolicy {
    pub witnesses: Vec<CosignatureVerifier>,
    pub quorum: usize,
}

impl WitnessPolicy {
    pub fn parse(keys: &[String], quorum: usize) -> Result<WitnessPolicy, NoteError> {
        let witnesses = keys
            .iter()
            .map(|k| CosignatureVerifier::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        if quorum == 0 || quorum > witnesses.len() {
            return Err(NoteError::Key(
                "the quorum must be between 1 and the number of witnesses",
            ));
        }
        // One key counts once, whatever names it is listed under (the
        // cosigned message does not commit to the name).
        let mut pks: Vec<[u8; 32]> = witnesses.iter().map(|w| w.pk).collect();
        pks.sort_unstable();
        pks.dedup();
        if pks.len() != witnesses.len() {
            return Err(NoteError::Key("a witness key is listed twice"));
        }
        Ok(WitnessPolicy { witnesses, quorum })
    }

    /// How many of the witnesses cosigned `note`; an error below the quorum.
    pub fn check(&self, note: &str) -> Result<usize, WitnessError> {
        let have = self
            .witnesses
            .iter()
            .filter(|w| w.verify(note).is_ok())
            .count();
        if have < self.quorum {
            return Err(WitnessError::Quorum {
                have,
                need: self.quorum,
            });
        }
        Ok(have)
    }
}

/// Why a witness refuses a checkpoint (mapped to HTTP as C2SP says).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    #[error("malformed add-checkpoint request: {0}")]
    Malformed(&'static str),
    #[error("this witness does not follow the log {0}")]
    UnknownLog(String),
    #[error("the checkpoint is not signed by the log's key")]
    BadSignature,
    #[error("the old size {old} is above the checkpoint's size {new}")]
    OldAboveNew { old: u64, new: u64 },
    /// The witness last cosigned another size (C2SP: 409 with that size).
    #[error("this witness last cosigned size {0}")]
    Conflict(u64),
    #[error("same size as the last cosigned checkpoint but another root: the log forked")]
    Fork,
    #[error("the consistency proof does not verify: the log forked or rolled back")]
    BadProof,
    #[error("only {have} of the {need} witness cosignatures the policy requires")]
    Quorum { have: usize, need: usize },
}

/// A parsed `add-checkpoint` request body.
#[derive(Debug)]
pub struct AddCheckpoint<'a> {
    pub old: u64,
    pub proof: Vec<Hash>,
    pub note: &'a str,
}

/// The request body: `old N\n`, proof lines, an empty line, the signed note.
pub fn add_checkpoint_body(old: u64, proof: &[Hash], note: &str) -> String {
    let mut s = format!("old {old}\n");
    for h in proof {
        s.push_str(&STANDARD.encode(h));
        s.push('\n');
    }
    s.push('\n');
    s.push_str(note);
    s
}

impl<'a> AddCheckpoint<'a> {
    pub fn parse(body: &'a str) -> Result<AddCheckpoint<'a>, WitnessError> {
        let bad = WitnessError::Malformed;
        let (head, note) = body.split_once("\n\n").ok_or(bad("no empty line"))?;
        let mut lines = head.split('\n');
        let old_s = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .ok_or(bad("no old size line"))?;
        if old_s.is_empty()
            || (old_s.len() > 1 && old_s.starts_with('0'))
            || !old_s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("old size is not a decimal number"));
        }
        let old = old_s.parse().map_err(|_| bad("old size out of range"))?;
        let mut proof = Vec::new();
        for l in lines {
            if proof.len() == MAX_PROOF {
                return Err(bad("more than 63 proof lines"));
            }
            let h: Hash = STANDARD
                .decode(l)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(bad("a proof line is not a base64 hash"))?;
            proof.push(h);
        }
        Ok(AddCheckpoint { old, proof, note })
    }
}

/// The witness's decision: given the log's key and what it last cosigned
/// (`(size, root)`, or none), may it cosign `req`? Returns the checkpoint to
/// remember (the caller stores it atomically with the check).
pub fn witness_step(
    log: &NoteVerifier,
    last: Option<(u64, Hash)>,
    req: &AddCheckpoint<'_>,
) -> Result<Checkpoint, WitnessError> {
    let cp = log
        .verify_checkpoint(req.note)
        .map_err(|_| WitnessError::BadSignature)?;
    if req.old > cp.size {
        return Err(WitnessError::OldAboveNew {
            old: req.old,
            new: cp.size,
        });
    }
    let (size, root) = last.unwrap_or((0, crate::tree::empty_root()));
    if req.old != size {
        return Err(WitnessError::Conflict(size));
    }
    if size == cp.size {
        return if root == cp.root {
            Ok(cp)
        } else {
            Err(WitnessError::Fork)
        };
    }
    if size == 0 && !req.proof.is_empty() {
        return Err(WitnessError::BadProof);
    }
    verify_consistency(size, cp.size, &root, &cp.root, &req.proof)
        .map_err(|_| WitnessError::BadProof)?;
    Ok(cp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::note::NoteSigner;
    use crate::tree::{Tree, leaf_hash};

    fn log(n: u32, tag: &str) -> Tree {
        let mut t = Tree::new();
        for i in 0..n {
            t.push(leaf_hash(format!("{tag}{i}").as_bytes()));
        }
        t
    }

    #[test]
    fn a_witness_follows_one_history_and_refuses_a_fork() {
        let lk = KmSigner::generate().unwrap();
        let origin = "cloister-audit/acme";
        let signer = NoteSigner {
            name: origin,
            key: &lk,
        };
        let v = NoteVerifier::parse(&signer.verifier_key()).unwrap();
        let note = |t: &Tree| {
            let cp = Checkpoint {
                origin: origin.into(),
                size: t.len(),
                root: t.root(t.len()).unwrap(),
            };
            signer.sign(&cp.body()).unwrap()
        };
        let wk = KmSigner::generate().unwrap();
        let w = Cosigner {
            name: "witness.acme/w1",
            key: &wk,
        };
        let policy = WitnessPolicy::parse(&[w.key_string()], 1).unwrap();
        // the same key twice (or under another name) is one witness
        assert!(WitnessPolicy::parse(&[w.key_string(), w.key_string()], 2).is_err());
        let renamed = witness_key("witness.other/w9", &wk.public());
        assert!(WitnessPolicy::parse(&[w.key_string(), renamed], 2).is_err());

        let t1 = log(5, "a");
        let n1 = note(&t1);
        let body = add_checkpoint_body(0, &[], &n1);
        let cp1 = witness_step(&v, None, &AddCheckpoint::parse(&body).unwrap()).unwrap();
        let cosigned = format!("{n1}{}", w.cosign(note_text(&n1).unwrap(), 1_700_000_000));
        assert_eq!(policy.check(&cosigned), Ok(1));
        assert_eq!(
            policy.check(&n1),
            Err(WitnessError::Quorum { have: 0, need: 1 })
        );
        let last = Some((cp1.size, cp1.root));

        // the log grows: a proof from 5 to 9 is accepted
        let t2 = log(9, "a");
        let p = t2.consistency_proof(5, 9).unwrap();
        let req = add_checkpoint_body(5, &p, &note(&t2));
        let cp2 = witness_step(&v, last, &AddCheckpoint::parse(&req).unwrap()).unwrap();
        let last2 = Some((cp2.size, cp2.root));
        // a stale old size gets the witness's size back
        assert_eq!(
            witness_step(&v, last2, &AddCheckpoint::parse(&req).unwrap()).unwrap_err(),
            WitnessError::Conflict(9)
        );
        // a forked history (same first 5 entries, then others) is refused
        let mut fork = log(5, "a");
        for i in 0..6 {
            fork.push(leaf_hash(format!("b{i}").as_bytes()));
        }
        let p = fork.consistency_proof(9, 11).unwrap();
        let req = add_checkpoint_body(9, &p, &note(&fork));
        assert_eq!(
            witness_step(&v, last2, &AddCheckpoint::parse(&req).unwrap()).unwrap_err(),
            WitnessError::BadProof
        );
        let other = log(9, "c");
        let req = add_checkpoint_body(9, &[], &note(&other));
        assert_eq!(
            witness_step(&v, last2, &AddCheckpoint::parse(&req).unwrap()).unwrap_err(),
            WitnessError::Fork
        );
        // a checkpoint signed by another key
        let lk2 = KmSigner::generate().unwrap();
        let forged = NoteSigner {
            name: origin,
            key: &lk2,
        }
        .sign(
            &Checkpoint {
                origin: origin.into(),
                size: 12,
                root: [0; 32],
            }
            .body(),
        )
        .unwrap();
        let req = add_checkpoint_body(9, &[], &forged);
        assert_eq!(
            witness_step(&v, last2, &AddCheckpoint::parse(&req).unwrap()).unwrap_err(),
            WitnessError::BadSignature
        );
        // malformed bodies
        for b in ["", "old 01\n\nx", "old 1\nnot-base64\n\nx", "new 1\n\nx"] {
            assert!(AddCheckpoint::parse(b).is_err(), "{b:?}");
        }
        // a cosignature over another checkpoint does not count
        let moved = cosigned.replace(&format!("\n{}\n", t1.len()), "\n6\n");
        assert!(policy.check(&moved).is_err());
    }
}
