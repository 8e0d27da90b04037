//! The one check of a commit against the room's membership log, run by the
//! server (as delivery service, before it orders the commit) and by every
//! member (before it applies the commit).
//!
//! A Cloister commit carries, as MLS authenticated data, the position and
//! chain hash of the membership-log entry it implements ([`LogBinding`]).
//! The checker replays the log to that entry with `cloister_policy` (so
//! barriers, entitlements, bans and room rules have already been applied to
//! the statements) and hands over the result as [`Expected`]. A commit then
//! passes only if every change it makes is justified by that state:
//!
//! - an **add** brings in a device of a user who is a member at that entry,
//!   whose certificate verifies under a pinned KM key and who is in good
//!   standing, and who has no leaf yet;
//! - a **remove** takes out a leaf whose user is not a member at that entry,
//!   or whose device or user lost its standing;
//! - nothing else is proposed (no pre-shared keys, re-init, external init,
//!   extension changes or proposals by reference), and the committer is a
//!   member (no external commits).
//!
//! An empty commit (the committer's own update) is always allowed: it is
//! what gives post-compromise security.

use crate::identity::KmIdentity;
use cloister_proto::{DeviceId, UserId};
use mls_rs::MlsMessage;
use mls_rs::group::proposal::Proposal;
use mls_rs::group::{ContentType, Sender};
use mls_rs::identity::SigningIdentity;
use std::collections::BTreeSet;

const BINDING_TAG: &[u8] = b"cloister/mls-commit/v1";

/// The membership-log entry a commit implements: carried as the commit's
/// authenticated data, readable by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBinding {
    /// Position of the entry in the room's log.
    pub seq: u64,
    /// Its chain hash (`cloister_crypto::signed::entry_hash`).
    pub head: [u8; 32],
}

impl LogBinding {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(BINDING_TAG.len() + 40);
        v.extend_from_slice(BINDING_TAG);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.head);
        v
    }

    pub fn decode(b: &[u8]) -> Option<LogBinding> {
        let rest = b.strip_prefix(BINDING_TAG)?;
        if rest.len() != 40 {
            return None;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&rest[..8]);
        let mut head = [0u8; 32];
        head.copy_from_slice(&rest[8..]);
        Some(LogBinding {
            seq: u64::from_be_bytes(seq),
            head,
        })
    }
}

/// The leaves a commit (not yet applied) adds, read without verifying:
/// only to look up their standing before the check (index 0: unknown).
pub fn added_leaves(commit: &[u8]) -> Vec<Leaf> {
    let Ok(msg) = MlsMessage::from_bytes(commit) else {
        return Vec::new();
    };
    msg.proposals_by_value()
        .into_iter()
        .filter_map(|p| match p {
            Proposal::Add(a) => existing_owner(a.signing_identity()).map(|(user, device)| Leaf {
                index: 0,
                user,
                device,
            }),
            _ => None,
        })
        .collect()
}

/// The log entry a commit names, read without verifying (only to know which
/// entry to check it against).
pub fn peek_binding(commit: &[u8]) -> Option<LogBinding> {
    let msg = MlsMessage::from_bytes(commit).ok()?;
    match msg.description() {
        mls_rs::MlsMessageDescription::PublicProtocolMessage {
            authenticated_data, ..
        } => LogBinding::decode(authenticated_data),
        _ => None,
    }
}

/// What the room's verified log (and the checker's view of device
/// standing) allows at the entry a commit names.
#[derive(Debug, Clone)]
pub struct Expected {
    pub binding: LogBinding,
    /// Users who are members at that entry.
    pub members: BTreeSet<UserId>,
    /// Devices that may not hold a leaf: revoked, or of a disabled user.
    pub barred: BTreeSet<DeviceId>,
}

impl Expected {
    /// May this device hold a leaf in the group?
    pub fn allows(&self, user: &UserId, device: &DeviceId) -> bool {
        self.members.contains(user) && !self.barred.contains(device)
    }
}

/// One leaf of the group as the checker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub index: u32,
    pub user: UserId,
    pub device: DeviceId,
}

/// A membership change a commit makes (after it passed the check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add { user: UserId, device: DeviceId },
    Remove { user: UserId, device: DeviceId },
}

/// Why a commit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitRefusal {
    #[error("not an MLS commit in the clear (commits must be public messages)")]
    NotACommit,
    #[error("the commit is for another group")]
    WrongGroup,
    #[error("the commit is for epoch {got}; the group is at epoch {current}")]
    StaleEpoch { got: u64, current: u64 },
    #[error("the committer is not a member of the group")]
    NotFromMember,
    #[error("the commit does not name the membership-log entry it implements")]
    Unbound,
    #[error(
        "the commit implements log entry {got}, but the verified log is at {expected} (or differs there)"
    )]
    WrongLogEntry { got: u64, expected: u64 },
    #[error("proposals must be carried by value")]
    ByReference,
    #[error("a {0} proposal is not allowed in a Cloister group")]
    ProposalNotAllowed(&'static str),
    #[error("adds a leaf whose credential fails: {0}")]
    BadCredential(String),
    #[error("adds {user}'s device, but the membership log does not let {user} in")]
    NotAMember { user: UserId },
    #[error("adds device {device} of {user}, which is revoked or whose user is disabled")]
    Barred { user: UserId, device: DeviceId },
    #[error("adds device {0}, which already holds a leaf")]
    AlreadyInGroup(DeviceId),
    #[error("removes leaf {0}, which does not exist")]
    NoSuchLeaf(u32),
    #[error("removes {user}'s device {device}, which the membership log still allows")]
    UnjustifiedRemove { user: UserId, device: DeviceId },
}

/// The leaves of a group, as a lookup by leaf index.
pub trait Roster {
    fn leaf(&self, index: u32) -> Option<Leaf>;
    /// Does `device` (whose new leaf is `si`) already hold a leaf?
    fn has_device(&self, device: &DeviceId, si: &SigningIdentity) -> bool;
}

/// Check a commit message (bytes parsed) before applying it.
pub fn check_commit(
    msg: &MlsMessage,
    group_id: &[u8],
    epoch: u64,
    roster: &dyn Roster,
    identity: &KmIdentity,
    expected: &Expected,
) -> Result<Vec<Change>, CommitRefusal> {
    let mls_rs::MlsMessageDescription::PublicProtocolMessage {
        group_id: gid,
        epoch_id,
        content_type,
        sender,
        authenticated_data,
    } = msg.description()
    else {
        return Err(CommitRefusal::NotACommit);
    };
    if content_type != ContentType::Commit {
        return Err(CommitRefusal::NotACommit);
    }
    if gid != group_id {
        return Err(CommitRefusal::WrongGroup);
    }
    if epoch_id != epoch {
        return Err(CommitRefusal::StaleEpoch {
            got: epoch_id,
            current: epoch,
        });
    }
    let Sender::Member(committer) = sender else {
        return Err(CommitRefusal::NotFromMember);
    };
    if roster.leaf(committer).is_none() {
        return Err(CommitRefusal::NotFromMember);
    }
    let binding = LogBinding::decode(authenticated_data).ok_or(CommitRefusal::Unbound)?;
    if binding != expected.binding {
        return Err(CommitRefusal::WrongLogEntry {
            got: binding.seq,
            expected: expected.binding.seq,
        });
    }
    let proposals: Vec<&Proposal> = msg.proposals_by_value();
    check_proposals(proposals.into_iter(), roster, identity, expected)
}

/// The same rules over proposals an implementation hands over (the
/// member-side [`mls_rs::mls_rules::MlsRules`] hook sees these).
pub fn check_proposals<'a>(
    proposals: impl Iterator<Item = &'a Proposal>,
    roster: &dyn Roster,
    identity: &KmIdentity,
    expected: &Expected,
) -> Result<Vec<Change>, CommitRefusal> {
    let mut changes = Vec::new();
    let mut added = BTreeSet::new();
    for p in proposals {
        match p {
            Proposal::Add(add) => {
                let (user, device) = leaf_owner(identity, add.signing_identity())?;
                if !expected.members.contains(&user) {
                    return Err(CommitRefusal::NotAMember { user });
                }
                if expected.barred.contains(&device) {
                    return Err(CommitRefusal::Barred { user, device });
                }
                if roster.has_device(&device, add.signing_identity()) || !added.insert(device) {
                    return Err(CommitRefusal::AlreadyInGroup(device));
                }
                changes.push(Change::Add { user, device });
            }
            Proposal::Remove(r) => {
                let leaf = roster
                    .leaf(r.to_remove())
                    .ok_or(CommitRefusal::NoSuchLeaf(r.to_remove()))?;
                if expected.allows(&leaf.user, &leaf.device) {
                    return Err(CommitRefusal::UnjustifiedRemove {
                        user: leaf.user,
                        device: leaf.device,
                    });
                }
                changes.push(Change::Remove {
                    user: leaf.user,
                    device: leaf.device,
                });
            }
            Proposal::ReInit(_) => return Err(CommitRefusal::ProposalNotAllowed("re-init")),
            Proposal::ExternalInit(_) => {
                return Err(CommitRefusal::ProposalNotAllowed("external init"));
            }
            Proposal::GroupContextExtensions(_) => {
                return Err(CommitRefusal::ProposalNotAllowed(
                    "group context extensions",
                ));
            }
            #[allow(unreachable_patterns)]
            _ => return Err(CommitRefusal::ProposalNotAllowed("other")),
        }
    }
    Ok(changes)
}

/// The certified owner of a leaf.
pub fn leaf_owner(
    identity: &KmIdentity,
    si: &SigningIdentity,
) -> Result<(UserId, DeviceId), CommitRefusal> {
    let cert = identity
        .certificate(si)
        .map_err(|e| CommitRefusal::BadCredential(e.to_string()))?;
    Ok((cert.user, cert.device))
}

/// The owner of a leaf already in the group: its credential was validated
/// when it entered, so it is only read here.
pub fn existing_owner(si: &SigningIdentity) -> Option<(UserId, DeviceId)> {
    let signed = crate::identity::signed_cert_of(&si.credential).ok()?;
    let cert: cloister_proto::km::DeviceCert = serde_json::from_slice(&signed.body.0).ok()?;
    Some((cert.user, cert.device))
}
