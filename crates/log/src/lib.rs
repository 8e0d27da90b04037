//! The tenant audit transparency log, without I/O.
//!
//! ```text
//!  AuditRecord (typed event) ──JSON bytes──▶ leaf_hash = SHA-256(0x00 ‖ bytes)
//!  Tree: levels[k][i] = hash of the complete subtree of 2^k leaves at i·2^k
//!        root(n), inclusion_proof(i, n), consistency_proof(m, n)   (RFC 6962 §2.1)
//!  verify_inclusion / verify_consistency                            (RFC 9162 §2.1.3.2, §2.1.4.2)
//!  Checkpoint {origin, size, root} ──C2SP tlog-checkpoint──▶ note text
//!  note text ──C2SP signed-note, Ed25519──▶ signed checkpoint
//! ```
//!
//! Storage lives behind the store crate's `AuditStore` trait; this crate only
//! computes. The leaf bytes are the exact bytes stored, so nothing is ever
//! re-encoded before hashing.
#![forbid(unsafe_code)]

pub mod event;
pub mod note;
pub mod tree;
pub mod witness;

pub use event::{AuditEvent, AuditRecord};
pub use note::{Checkpoint, NoteError, NoteSigner, NoteVerifier};
pub use tree::{
    Hash, ProofError, Tree, leaf_hash, node_hash, verify_consistency, verify_inclusion,
};
