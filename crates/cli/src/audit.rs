//! Offline verification of the audit log: a signed checkpoint, inclusion
//! proofs, a consistency proof from a remembered older checkpoint, and (given
//! the exported entries) a full recomputation of the tree, which catches any
//! altered, deleted, inserted or reordered entry.

use cloister_log::{
    Checkpoint, NoteVerifier, Tree, leaf_hash, verify_consistency, verify_inclusion,
};
use cloister_proto::km::{ConsistencyProof, InclusionProof};
use std::path::Path;

/// One line of `cloister audit who-has-keys`: releases to a surveillance
/// role are marked in the plain output, not only in `--json`.
pub fn release_line(r: &cloister_client::KeyRelease) -> String {
    format!(
        "#{:<6} {} device {} epochs {:?}{} (proven)",
        r.index,
        r.user,
        r.device,
        r.epochs,
        if r.surveillance {
            " SURVEILLANCE (not a member)"
        } else if r.inspection {
            " MALWARE SCANNER"
        } else if r.gateway {
            " GATEWAY (leaves end-to-end encryption)"
        } else {
            ""
        }
    )
}

/// What to verify; every path is a file written by `cloister audit ... --json`
/// or `cloister audit export`.
#[derive(Debug)]
pub struct VerifyInput<'a> {
    pub key: &'a str,
    pub checkpoint: &'a Path,
    pub entries: Option<&'a Path>,
    pub previous: Option<&'a Path>,
    pub consistency: Option<&'a Path>,
    pub inclusion: &'a [std::path::PathBuf],
}

/// One exported entry (a line of `entries.jsonl`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ExportedEntry {
    pub index: u64,
    /// The exact bytes hashed into the log, base64url.
    pub data: cloister_proto::b64::Bytes,
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Run every requested check; returns human-readable lines of what held, or the first failure.
pub fn verify(input: &VerifyInput<'_>) -> Result<Vec<String>, String> {
    let v = NoteVerifier::parse(input.key).map_err(|e| format!("log key: {e}"))?;
    let mut out = Vec::new();
    let cp = v
        .verify_checkpoint(&read(input.checkpoint)?)
        .map_err(|e| format!("checkpoint {}: {e}", input.checkpoint.display()))?;
    out.push(format!(
        "checkpoint signature valid: {} size {} root {}",
        cp.origin,
        cp.size,
        hex::encode(cp.root)
    ));
    // A remembered older checkpoint: checked first, so a rollback is reported as such.
    let previous = match input.previous {
        Some(prev) => {
            let old = v
                .verify_checkpoint(&read(prev)?)
                .map_err(|e| format!("previous checkpoint: {e}"))?;
            if old.size > cp.size {
                return Err(format!(
                    "ROLLBACK: the checkpoint has {} entries but the remembered one had {}",
                    cp.size, old.size
                ));
            }
            Some(old)
        }
        None => None,
    };

    for p in input.inclusion {
        let proof: InclusionProof = serde_json::from_str(&read(p)?)
            .map_err(|e| format!("{}: not an inclusion proof: {e}", p.display()))?;
        check_inclusion(&proof, &cp).map_err(|e| format!("{}: {e}", p.display()))?;
        out.push(format!(
            "entry {} is included in the checkpoint",
            proof.index
        ));
    }

    if let Some(old) = previous {
        match input.consistency {
            Some(cf) => {
                let p: ConsistencyProof = serde_json::from_str(&read(cf)?)
                    .map_err(|e| format!("{}: not a consistency proof: {e}", cf.display()))?;
                if p.old != old.size || p.new != cp.size {
                    return Err(format!(
                        "consistency proof is for {} → {}, checkpoints are {} → {}",
                        p.old, p.new, old.size, cp.size
                    ));
                }
                let proof: Vec<[u8; 32]> = p.proof.iter().map(|h| h.0).collect();
                verify_consistency(old.size, cp.size, &old.root, &cp.root, &proof).map_err(
                    |_| {
                        format!(
                            "FORK: the log at {} does not extend the one at {}",
                            cp.size, old.size
                        )
                    },
                )?;
                out.push(format!(
                    "consistent with the remembered checkpoint of size {}",
                    old.size
                ));
            }
            None if input.entries.is_none() && old != cp => {
                return Err("--previous needs --consistency or --entries".into());
            }
            None => {}
        }
        if let Some(ef) = input.entries {
            let tree = rebuild(ef, cp.size)?;
            let root = tree.root(old.size).map_err(|e| e.to_string())?;
            if root != old.root {
                return Err(format!(
                    "FORK: the entries do not reproduce the remembered checkpoint of size {}",
                    old.size
                ));
            }
            out.push(format!(
                "entries reproduce the remembered checkpoint of size {}",
                old.size
            ));
        }
    }

    if let Some(ef) = input.entries {
        let tree = rebuild(ef, cp.size)?;
        let root = tree.root(cp.size).map_err(|e| e.to_string())?;
        if root != cp.root {
            return Err(format!(
                "TAMPERED: the {} entries do not hash to the signed root (altered, deleted, inserted or reordered)",
                cp.size
            ));
        }
        out.push(format!("all {} entries reproduce the signed root", cp.size));
    }
    Ok(out)
}

fn rebuild(path: &Path, size: u64) -> Result<Tree, String> {
    let text = read(path)?;
    let mut tree = Tree::new();
    for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let e: ExportedEntry = serde_json::from_str(line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        if e.index != n as u64 {
            return Err(format!(
                "TAMPERED: entry at line {} has index {} (deleted, inserted or reordered entries)",
                n + 1,
                e.index
            ));
        }
        tree.push(leaf_hash(e.data.as_slice()));
    }
    if tree.len() < size {
        return Err(format!(
            "TAMPERED: {} entries exported but the checkpoint commits to {size}",
            tree.len()
        ));
    }
    Ok(tree)
}

fn check_inclusion(p: &InclusionProof, cp: &Checkpoint) -> Result<(), String> {
    if p.size != cp.size {
        return Err(format!(
            "proof is for size {}, checkpoint is {}",
            p.size, cp.size
        ));
    }
    let proof: Vec<[u8; 32]> = p.proof.iter().map(|h| h.0).collect();
    verify_inclusion(
        p.index,
        p.size,
        &leaf_hash(p.data.as_slice()),
        &proof,
        &cp.root,
    )
    .map_err(|_| format!("entry {} is NOT included in the checkpoint", p.index))
}

/// Write `checkpoint.note`, `log.key` and `entries.jsonl` (every entry the
/// checkpoint commits to) to `out`; returns the checkpoint size.
pub async fn export(c: &cloister_client::Client, out: &Path) -> Result<u64, crate::BoxError> {
    let (cp, note) = c.audit_checkpoint().await?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut lines = String::new();
    let mut from = 0;
    while from < cp.size {
        let rows = c.audit_list(from, 10_000, None, None, None).await?;
        if rows.is_empty() {
            break;
        }
        for (i, _, data) in rows {
            if i >= cp.size {
                break;
            }
            // The exact stored bytes, never re-encoded.
            let e = ExportedEntry {
                index: i,
                data: data.into(),
            };
            lines.push_str(&serde_json::to_string(&e)?);
            lines.push('\n');
            from = i + 1;
        }
    }
    std::fs::write(out.join("entries.jsonl"), lines)?;
    std::fs::write(out.join("checkpoint.note"), &note)?;
    // the key that signed the exported checkpoint: the newest this device trusts
    let key = c.log_keys().pop().unwrap_or_default();
    std::fs::write(out.join("log.key"), format!("{key}\n"))?;
    Ok(cp.size)
}
