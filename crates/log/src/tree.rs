//! RFC 6962 / RFC 9162 Merkle tree with stored complete subtrees.

use cloister_crypto::Sha256Stream;

pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256Stream::default();
    h.update(&[0]);
    h.update(data);
    h.finish()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256Stream::default();
    h.update(&[1]);
    h.update(left);
    h.update(right);
    h.finish()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    cloister_crypto::sha256(&[])
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("size {size} is larger than the log ({len} entries)")]
    SizeOutOfRange { size: u64, len: u64 },
    #[error("old size {old} is larger than new size {new}")]
    Order { old: u64, new: u64 },
    #[error("inclusion proof does not verify")]
    BadInclusion,
    #[error("consistency proof does not verify: the log was forked or rolled back")]
    BadConsistency,
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// An append-only Merkle tree keeping every complete subtree hash, so roots
/// and proofs for any size need O(log n) stored hashes plus O(log n) hashing
/// along the right edge.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new() -> Self {
        Tree::default()
    }

    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(h);
            let n = row.len();
            if n % 2 == 1 {
                return;
            }
            h = node_hash(&row[n - 2], &row[n - 1]);
            level += 1;
        }
    }

    /// Drop every leaf from `size` on (undo appends that were not stored).
    pub fn truncate(&mut self, size: u64) {
        for (k, row) in self.levels.iter_mut().enumerate() {
            row.truncate((size >> k) as usize);
        }
        while self.levels.last().is_some_and(|l| l.is_empty()) {
            self.levels.pop();
        }
    }

    /// Leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()
            .and_then(|l| l.get(index as usize).copied())
    }

    /// MTH(D[a:b]) for 0 ≤ a < b ≤ len, with `a` aligned as in RFC 6962 recursion.
    fn subtree(&self, a: u64, b: u64) -> Hash {
        let n = b - a;
        if n.is_power_of_two() {
            let k = n.trailing_zeros() as usize;
            if let Some(h) = self.levels.get(k).and_then(|l| l.get((a >> k) as usize)) {
                return *h;
            }
        }
        // Not complete: split at the largest power of two below n.
        let k = split(n);
        node_hash(&self.subtree(a, a + k), &self.subtree(a + k, b))
    }

    /// Root hash of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        if size > self.len() {
            return Err(ProofError::SizeOutOfRange {
                size,
                len: self.len(),
            });
        }
        Ok(if size == 0 {
            empty_root()
        } else {
            self.subtree(0, size)
        })
    }

    /// Inclusion proof of leaf `index` in the tree of the first `size` leaves (RFC 6962 §2.1.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if size > self.len() {
            return Err(ProofError::SizeOutOfRange {
                size,
                len: self.len(),
            });
        }
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut out = Vec::with_capacity(64);
        self.path(index, 0, size, &mut out);
        Ok(out)
    }

    fn path(&self, m: u64, a: u64, b: u64, out: &mut Vec<Hash>) {
        let n = b - a;
        if n == 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, a, a + k, out);
            out.push(self.subtree(a + k, b));
        } else {
            self.path(m - k, a + k, b, out);
            out.push(self.subtree(a, a + k));
        }
    }

    /// Consistency proof between the trees of sizes `old` and `new` (RFC 6962 §2.1.2).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        if new > self.len() {
            return Err(ProofError::SizeOutOfRange {
                size: new,
                len: self.len(),
            });
        }
        if old > new {
            return Err(ProofError::Order { old, new });
        }
        let mut out = Vec::with_capacity(64);
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut out);
        }
        Ok(out)
    }

    fn subproof(&self, m: u64, a: u64, b: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = b - a;
        if m == n {
            if !whole {
                out.push(self.subtree(a, b));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, a, a + k, whole, out);
            out.push(self.subtree(a + k, b));
        } else {
            self.subproof(m - k, a + k, b, false, out);
            out.push(self.subtree(a, a + k));
        }
    }
}

/// Verify an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::BadInclusion);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode == 0 && cloister_crypto::ct_eq(&r, root) {
        Ok(())
    } else {
        Err(ProofError::BadInclusion)
    }
}

/// Verify a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::Order { old, new });
    }
    if old == new {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::BadConsistency)
        };
    }
    if old == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::BadConsistency)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::BadConsistency);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::BadConsistency);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode == 0 && cloister_crypto::ct_eq(&fr, old_root) && cloister_crypto::ct_eq(&sr, new_root)
    {
        Ok(())
    } else {
        Err(ProofError::BadConsistency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference MTH straight from RFC 6962's definition, over leaf data.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn roots_match_the_definition_for_every_size() {
        let mut t = Tree::new();
        let mut leaves = Vec::new();
        assert_eq!(t.root(0).unwrap(), empty_root());
        for i in 0..70u32 {
            let l = leaf_hash(&i.to_be_bytes());
            t.push(l);
            leaves.push(l);
            for size in 1..=leaves.len() {
                assert_eq!(
                    t.root(size as u64).unwrap(),
                    mth(&leaves[..size]),
                    "size {size}"
                );
            }
        }
    }

    #[test]
    fn truncate_undoes_appends_exactly() {
        for keep in 0..40u64 {
            let mut t = Tree::new();
            let mut fresh = Tree::new();
            for i in 0..40u32 {
                let l = leaf_hash(&i.to_be_bytes());
                t.push(l);
                if u64::from(i) < keep {
                    fresh.push(l);
                }
            }
            t.truncate(keep);
            assert_eq!(t.len(), keep);
            assert_eq!(t.root(keep).unwrap(), fresh.root(keep).unwrap());
            // and grows again as if never extended
            t.push(leaf_hash(b"x"));
            fresh.push(leaf_hash(b"x"));
            assert_eq!(t.root(keep + 1).unwrap(), fresh.root(keep + 1).unwrap());
            assert_eq!(t.levels, fresh.levels);
        }
    }

    #[test]
    fn every_proof_verifies_and_wrong_ones_do_not() {
        let mut t = Tree::new();
        for i in 0..40u32 {
            t.push(leaf_hash(&i.to_be_bytes()));
        }
        for size in 1..=40u64 {
            let root = t.root(size).unwrap();
            for i in 0..size {
                let p = t.inclusion_proof(i, size).unwrap();
                let leaf = t.leaf(i).unwrap();
                verify_inclusion(i, size, &leaf, &p, &root).unwrap();
                assert!(verify_inclusion(i, size, &leaf_hash(b"x"), &p, &root).is_err());
                if size > 1 {
                    assert!(verify_inclusion((i + 1) % size, size, &leaf, &p, &root).is_err());
                }
            }
            for old in 0..=size {
                let p = t.consistency_proof(old, size).unwrap();
                let old_root = t.root(old).unwrap();
                verify_consistency(old, size, &old_root, &root, &p).unwrap();
                if old > 0 && old < size {
                    assert!(verify_consistency(old, size, &leaf_hash(b"fork"), &root, &p).is_err());
                    assert!(
                        verify_consistency(old, size, &old_root, &leaf_hash(b"fork"), &p).is_err()
                    );
                }
            }
        }
        assert!(t.inclusion_proof(5, 5).is_err());
        assert!(t.consistency_proof(6, 5).is_err());
        assert!(t.root(41).is_err());
    }
}
