//! Room rules as pure functions.
//!
//! ```text
//!  SignedStatement + actor's verified cert ──apply()──▶ new RoomState (staged)
//!  RoomState ──may_read(user, epoch)──▶ key release decision (KM)
//!  RoomState ──may_post(user)──▶ routing decision (server)
//! ```
//!
//! The KM and the server both replay a room's log through [`apply`]; neither
//! believes a statement it has not verified here. Epochs are a pure function
//! of the log: removing or losing a member starts a new epoch, and so does
//! adding one when `view_history` is off. Nobody can make the KM release a key
//! for an epoch that the verified log does not contain.
#![forbid(unsafe_code)]

pub mod barriers;
pub mod controls;
pub mod dlp;
pub mod federation;

use cloister_crypto::signed::{entry_hash, verify_statement};
use cloister_proto::room::{
    Action, KM_DEVICE, KM_USER_NAME, RoomKind, RoomSettings, SignedStatement, Statement,
};
use cloister_proto::{RoomId, TenantId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Why a membership statement was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("bad signature on membership statement {seq}")]
    BadSignature { seq: u64 },
    #[error("malformed membership statement: {0}")]
    Malformed(String),
    #[error("membership statement signed by {cert_user}'s device claims to act as {claimed}")]
    ActorMismatch { cert_user: UserId, claimed: UserId },
    #[error("membership statement is for another room")]
    WrongRoom,
    #[error("membership log out of order: expected seq {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("membership log chain broken at seq {seq}: previous hash does not match")]
    BrokenChain { seq: u64 },
    #[error("the first statement of a room must create it")]
    GenesisExpected,
    #[error("the room already exists")]
    AlreadyCreated,
    #[error("{0} is not a member of the room")]
    NotMember(UserId),
    #[error("{0} is already a member of the room")]
    AlreadyMember(UserId),
    #[error("{0} is not an owner of the room")]
    NotOwner(UserId),
    #[error("only owners may add members to this room")]
    InviteNotAllowed,
    #[error("a 1:1 conversation has exactly two members and fixed settings")]
    ImImmutable,
    #[error("an IM needs exactly one other member")]
    BadIm,
    #[error(
        "room id {0} is in the 1:1 id space: only the IM of the two users it is derived from may be created there"
    )]
    ImSpace(RoomId),
    #[error("room member limit reached")]
    TooManyMembers,
    #[error("room name too long (at most 200 bytes)")]
    NameTooLong,
    #[error("the only owner cannot leave or be demoted; promote another owner first")]
    LastOwner,
    #[error("only the tenant's KM may {0}")]
    KmOnly(&'static str),
    #[error("the room is locked by compliance officer {by}: {justification}")]
    Locked { by: UserId, justification: String },
    #[error("{0} was banned from this room by a compliance officer")]
    Banned(UserId),
    #[error("room policy: {0}")]
    Constraint(String),
    #[error("only a public room can be joined without an invitation")]
    NotPublic,
}

/// The user the tenant's KM signs its statements as.
pub fn km_user(tenant: &TenantId) -> UserId {
    UserId::reserved(KM_USER_NAME, tenant)
}

/// Who must have signed a log entry: the KM (for its own actor id) or the
/// device named. The caller looks up the key: the KM's, or the device's
/// certificate.
pub fn signed_by_km(entry: &SignedStatement) -> bool {
    entry.actor == KM_DEVICE
}

/// A compliance officer's lock on a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub by: UserId,
    pub justification: String,
}

/// One stretch of epochs a user may read: `[from, until)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub from: u64,
    pub until: Option<u64>,
}

/// A room's state after replaying its verified log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomState {
    pub room: RoomId,
    pub tenant: TenantId,
    pub kind: RoomKind,
    pub settings: RoomSettings,
    pub epoch: u64,
    /// Seq of the last applied statement.
    pub seq: u64,
    /// Chain hash of the last applied statement.
    pub head: [u8; 32],
    pub owners: BTreeSet<UserId>,
    pub members: BTreeSet<UserId>,
    pub grants: BTreeMap<UserId, Vec<Grant>>,
    /// Locked by a compliance officer (through the KM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<LockInfo>,
    /// Banned by a compliance officer: may not be added or join again.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub banned: BTreeSet<UserId>,
}

impl RoomState {
    /// May `user` hold the key of `epoch`?
    pub fn may_read(&self, user: &UserId, epoch: u64) -> bool {
        epoch <= self.epoch
            && self.grants.get(user).is_some_and(|gs| {
                gs.iter()
                    .any(|g| g.from <= epoch && g.until.is_none_or(|u| epoch < u))
            })
    }

    /// May `user` post in the current epoch?
    pub fn may_post(&self, user: &UserId) -> bool {
        self.members.contains(user)
            && self.locked.is_none()
            && (!self.settings.read_only || self.owners.contains(user))
    }

    /// Why `user` may not post, if they may not (for a clear refusal).
    pub fn why_not_post(&self, user: &UserId) -> Option<String> {
        if !self.members.contains(user) {
            Some(format!("{user} is not a member of the room"))
        } else if let Some(l) = &self.locked {
            Some(format!(
                "the room is locked by compliance officer {}: {}",
                l.by, l.justification
            ))
        } else if self.settings.read_only && !self.owners.contains(user) {
            Some("the room is read-only: only owners may post".into())
        } else {
            None
        }
    }

    fn capacity(&self) -> usize {
        self.settings
            .max_members
            .map_or(cloister_proto::limits::MAX_ROOM_MEMBERS, |m| {
                (m as usize).min(cloister_proto::limits::MAX_ROOM_MEMBERS)
            })
    }

    pub fn is_member(&self, user: &UserId) -> bool {
        self.members.contains(user)
    }

    fn grant(&mut self, user: &UserId, from: u64) {
        self.grants
            .entry(user.clone())
            .or_default()
            .push(Grant { from, until: None });
    }

    fn close(&mut self, user: &UserId, until: u64) {
        if let Some(gs) = self.grants.get_mut(user) {
            for g in gs.iter_mut().filter(|g| g.until.is_none()) {
                g.until = Some(until);
            }
        }
    }
}

/// The top bit of a room id's first byte splits the id space: set for 1:1
/// conversations (derived from the two users), clear for named rooms (random).
const IM_SPACE_BIT: u8 = 0x80;

/// Is `room` in the 1:1 id space? Only the IM of the two users whose
/// [`im_room_id`] it is may ever be created there.
pub fn is_im_space(room: &RoomId) -> bool {
    room.0[0] & IM_SPACE_BIT != 0
}

/// A named room's id from 16 random bytes (moved out of the 1:1 id space).
pub fn room_id_from_random(mut bytes: [u8; 16]) -> RoomId {
    bytes[0] &= !IM_SPACE_BIT;
    RoomId(bytes)
}

/// Deterministic id of the 1:1 conversation between two users.
pub fn im_room_id(a: &UserId, b: &UserId) -> RoomId {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let mut v = b"cloister/im/v1\0".to_vec();
    v.extend_from_slice(x.as_str().as_bytes());
    v.push(0);
    v.extend_from_slice(y.as_str().as_bytes());
    let h = cloister_crypto::sha256(&v);
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[..16]);
    id[0] |= IM_SPACE_BIT;
    RoomId(id)
}

/// Verify one log entry against the current state and return the staged new
/// state. `actor_user` and `actor_pk` come from the actor device's certificate,
/// which the caller has verified (issuer, expiry, revocation).
pub fn apply(
    state: Option<&RoomState>,
    room: &RoomId,
    entry: &SignedStatement,
    actor_user: &UserId,
    actor_pk: &[u8; 32],
) -> Result<(RoomState, Statement), PolicyError> {
    let peek_seq = cloister_crypto::signed::peek_statement(entry)
        .map(|s| s.seq)
        .map_err(|e| PolicyError::Malformed(e.to_string()))?;
    let st = verify_statement(actor_pk, entry)
        .map_err(|_| PolicyError::BadSignature { seq: peek_seq })?;
    if &st.actor_user != actor_user {
        return Err(PolicyError::ActorMismatch {
            cert_user: actor_user.clone(),
            claimed: st.actor_user.clone(),
        });
    }
    if &st.room != room {
        return Err(PolicyError::WrongRoom);
    }
    let hash = entry_hash(entry);
    let next = match state {
        None => genesis(&st, hash)?,
        Some(s) => step(s, &st, hash)?,
    };
    Ok((next, st))
}

fn genesis(st: &Statement, hash: [u8; 32]) -> Result<RoomState, PolicyError> {
    let Action::Create {
        kind,
        settings,
        members,
    } = &st.action
    else {
        return Err(PolicyError::GenesisExpected);
    };
    if st.seq != 0 {
        return Err(PolicyError::Gap {
            expected: 0,
            got: st.seq,
        });
    }
    if st.room == RoomId([0; 16]) {
        // Reserved: blind-index keys are released under room id zero.
        return Err(PolicyError::Malformed("room id 0 is reserved".into()));
    }
    if st.prev.0 != [0u8; 32] {
        return Err(PolicyError::BrokenChain { seq: 0 });
    }
    if st.actor == KM_DEVICE || action_km_only(&st.action) {
        return Err(PolicyError::KmOnly("sign such a statement"));
    }
    check_settings(None, settings, members.len() + 1)?;
    let creator = &st.actor_user;
    let others: BTreeSet<UserId> = members.iter().filter(|m| *m != creator).cloned().collect();
    let cap = settings
        .max_members
        .map_or(cloister_proto::limits::MAX_ROOM_MEMBERS, |m| {
            (m as usize).min(cloister_proto::limits::MAX_ROOM_MEMBERS)
        });
    if others.len() + 1 > cap {
        return Err(PolicyError::TooManyMembers);
    }
    match kind {
        RoomKind::Im => {
            if others.len() != 1 || members.len() != 1 {
                return Err(PolicyError::BadIm);
            }
            let Some(other) = others.iter().next() else {
                return Err(PolicyError::BadIm);
            };
            if st.room != im_room_id(creator, other) {
                return Err(PolicyError::BadIm);
            }
            // An IM's settings are fixed; only its mode is chosen (the
            // firms' MLS policies decide which one it may have).
            let fixed = RoomSettings {
                mode: settings.mode,
                ..RoomSettings::default()
            };
            if *settings != fixed {
                return Err(PolicyError::ImImmutable);
            }
        }
        // Any other creation in the 1:1 id space would squat a conversation.
        RoomKind::Room if is_im_space(&st.room) => return Err(PolicyError::ImSpace(st.room)),
        RoomKind::Room => {
            if let Some(b) = &settings.bridge {
                if b.gateway.tenant() != creator.tenant() {
                    return Err(PolicyError::Constraint(
                        "a bridged room's gateway is of the creator's firm".into(),
                    ));
                }
                if *creator != b.gateway && !others.contains(&b.gateway) {
                    return Err(PolicyError::Constraint(format!(
                        "a bridged room is created with its gateway {} as a member",
                        b.gateway
                    )));
                }
            }
        }
    }
    let mut s = RoomState {
        room: st.room,
        tenant: creator.tenant(),
        kind: *kind,
        settings: settings.clone(),
        epoch: 0,
        seq: 0,
        head: hash,
        owners: BTreeSet::new(),
        members: BTreeSet::new(),
        grants: BTreeMap::new(),
        locked: None,
        banned: BTreeSet::new(),
    };
    if *kind == RoomKind::Room {
        s.owners.insert(creator.clone());
    }
    for u in std::iter::once(creator).chain(others.iter()) {
        s.members.insert(u.clone());
        s.grant(u, 0);
    }
    Ok(s)
}

fn step(s: &RoomState, st: &Statement, hash: [u8; 32]) -> Result<RoomState, PolicyError> {
    if st.seq != s.seq + 1 {
        return Err(PolicyError::Gap {
            expected: s.seq + 1,
            got: st.seq,
        });
    }
    if st.prev.0 != s.head {
        return Err(PolicyError::BrokenChain { seq: st.seq });
    }
    let actor = &st.actor_user;
    let mut n = s.clone();
    n.seq = st.seq;
    n.head = hash;
    if st.actor == KM_DEVICE {
        if *actor != km_user(&s.tenant) {
            return Err(PolicyError::ActorMismatch {
                cert_user: km_user(&s.tenant),
                claimed: actor.clone(),
            });
        }
        km_step(&mut n, &st.action)?;
        return Ok(n);
    }
    if action_km_only(&st.action) {
        return Err(PolicyError::KmOnly(st.action.name()));
    }
    if let Some(l) = &s.locked {
        return Err(PolicyError::Locked {
            by: l.by.clone(),
            justification: l.justification.clone(),
        });
    }
    if st.action == Action::Join {
        if s.kind == RoomKind::Im || !s.settings.public {
            return Err(PolicyError::NotPublic);
        }
        if s.members.contains(actor) {
            return Err(PolicyError::AlreadyMember(actor.clone()));
        }
        admit(&mut n, actor)?;
        return Ok(n);
    }
    if !s.members.contains(actor) {
        return Err(PolicyError::NotMember(actor.clone()));
    }
    let is_owner = s.owners.contains(actor);
    let im = s.kind == RoomKind::Im;
    match &st.action {
        Action::Create { .. } => return Err(PolicyError::AlreadyCreated),
        Action::Add { user } => {
            if im {
                return Err(PolicyError::ImImmutable);
            }
            if !is_owner && !s.settings.members_may_invite {
                return Err(PolicyError::InviteNotAllowed);
            }
            if s.members.contains(user) {
                return Err(PolicyError::AlreadyMember(user.clone()));
            }
            admit(&mut n, user)?;
        }
        Action::Remove { user } => {
            if im {
                return Err(PolicyError::ImImmutable);
            }
            if !is_owner {
                return Err(PolicyError::NotOwner(actor.clone()));
            }
            if !s.members.contains(user) {
                return Err(PolicyError::NotMember(user.clone()));
            }
            if user == actor && s.owners.len() == 1 {
                return Err(PolicyError::LastOwner);
            }
            expel(&mut n, user);
        }
        Action::Leave => {
            if im {
                return Err(PolicyError::ImImmutable);
            }
            if is_owner && s.owners.len() == 1 && s.members.len() > 1 {
                return Err(PolicyError::LastOwner);
            }
            expel(&mut n, actor);
        }
        Action::Promote { user } => {
            if im {
                return Err(PolicyError::ImImmutable);
            }
            if !is_owner {
                return Err(PolicyError::NotOwner(actor.clone()));
            }
            if !s.members.contains(user) {
                return Err(PolicyError::NotMember(user.clone()));
            }
            n.owners.insert(user.clone());
        }
        Action::Demote { user } => {
            if im {
                return Err(PolicyError::ImImmutable);
            }
            if !is_owner {
                return Err(PolicyError::NotOwner(actor.clone()));
            }
            if !s.owners.contains(user) {
                return Err(PolicyError::NotOwner(user.clone()));
            }
            if s.owners.len() == 1 {
                return Err(PolicyError::LastOwner);
            }
            n.owners.remove(user);
        }
        Action::Settings { settings } => {
            if im {
                return Err(PolicyError::ImImmutable);
            }
            if !is_owner {
                return Err(PolicyError::NotOwner(actor.clone()));
            }
            check_settings(Some(&s.settings), settings, s.members.len())?;
            n.settings = settings.clone();
        }
        Action::Join
        | Action::Evict { .. }
        | Action::Ban { .. }
        | Action::Lock { .. }
        | Action::Unlock { .. }
        | Action::Rekey { .. } => return Err(PolicyError::KmOnly(st.action.name())),
    }
    Ok(n)
}

fn action_km_only(a: &Action) -> bool {
    a.km_only()
}

/// A new member (added or joining): not banned, room not full; a new epoch
/// unless history is visible.
fn admit(n: &mut RoomState, user: &UserId) -> Result<(), PolicyError> {
    if n.banned.contains(user) {
        return Err(PolicyError::Banned(user.clone()));
    }
    if n.members.len() >= n.capacity() {
        return Err(PolicyError::TooManyMembers);
    }
    let from = if n.settings.view_history {
        0
    } else {
        n.epoch += 1;
        n.epoch
    };
    n.members.insert(user.clone());
    n.grant(user, from);
    Ok(())
}

/// A member leaves (removed, left, evicted, banned): a new epoch without them.
fn expel(n: &mut RoomState, user: &UserId) {
    n.epoch += 1;
    n.members.remove(user);
    n.owners.remove(user);
    n.close(user, n.epoch);
}

/// The KM's own statements: barrier evictions and compliance officers'
/// bans and locks.
fn km_step(n: &mut RoomState, a: &Action) -> Result<(), PolicyError> {
    match a {
        Action::Evict { user, .. } | Action::Ban { user, .. } => {
            if !n.members.contains(user) {
                return Err(PolicyError::NotMember(user.clone()));
            }
            expel(n, user);
            if matches!(a, Action::Ban { .. }) {
                n.banned.insert(user.clone());
            }
        }
        Action::Lock { by, justification } => {
            if n.locked.is_some() {
                return Err(PolicyError::Constraint("the room is already locked".into()));
            }
            if justification.trim().is_empty() {
                return Err(PolicyError::Constraint(
                    "a lock needs a justification".into(),
                ));
            }
            n.locked = Some(LockInfo {
                by: by.clone(),
                justification: justification.clone(),
            });
        }
        Action::Unlock { justification, .. } => {
            if n.locked.is_none() {
                return Err(PolicyError::Constraint("the room is not locked".into()));
            }
            if justification.trim().is_empty() {
                return Err(PolicyError::Constraint(
                    "an unlock needs a justification".into(),
                ));
            }
            n.locked = None;
        }
        Action::Rekey { reason, .. } => {
            if reason.trim().is_empty() {
                return Err(PolicyError::Constraint("a rekey needs a reason".into()));
            }
            n.epoch += 1;
        }
        _ => {
            return Err(PolicyError::Constraint(format!(
                "the KM does not sign `{}` statements",
                a.name()
            )));
        }
    }
    Ok(())
}

/// Whether `user` is the gateway of the bridged room `st` (the only room
/// whose keys a gateway device may hold).
pub fn is_gateway_of(st: &RoomState, user: &UserId) -> bool {
    st.settings
        .bridge
        .as_ref()
        .is_some_and(|b| b.gateway == *user)
}

/// May a message of `sender` (certified with `roles`) speak for `from` on
/// `network` in the room `st`? Only the bridged room's own gateway, with
/// the gateway role, for the room's own contact: anyone else claiming to
/// relay is lying about who wrote the message.
pub fn check_relayed(
    st: &RoomState,
    sender: &UserId,
    roles: &[cloister_proto::km::Role],
    network: &str,
    from: &str,
) -> Result<(), String> {
    let Some(b) = &st.settings.bridge else {
        return Err(format!(
            "it claims to be relayed from {from} on {network}, but room {} is not bridged",
            st.room
        ));
    };
    if b.gateway != *sender || !roles.contains(&cloister_proto::km::Role::Gateway) {
        return Err(format!(
            "it claims to be relayed from {from}, but {sender} is not the room's gateway ({})",
            b.gateway
        ));
    }
    if b.network != network || b.contact != from {
        return Err(format!(
            "it claims to be relayed from {from} on {network}; the room is bridged to {} on {}",
            b.contact, b.network
        ));
    }
    Ok(())
}

/// Room settings rules (Symphony's): at creation (`old` None) and on change.
pub fn check_settings(
    old: Option<&RoomSettings>,
    new: &RoomSettings,
    members: usize,
) -> Result<(), PolicyError> {
    let bad = |m: &str| Err(PolicyError::Constraint(m.into()));
    if new.name.len() > 200 {
        return Err(PolicyError::NameTooLong);
    }
    if new.public && !new.discoverable {
        return bad("a public room is discoverable (set discoverable too)");
    }
    if new.external && (new.public || new.discoverable) {
        return bad("an external room cannot be public or discoverable");
    }
    if let Some(b) = &new.bridge {
        if let Some(why) = b.malformed() {
            return bad(&format!("bridge: {why}"));
        }
        if new.public || new.discoverable || new.external {
            return bad(
                "a bridged room holds one firm's users and its contact: never public, discoverable or external",
            );
        }
        if new.mode != cloister_proto::room::RoomMode::Managed {
            return bad("a bridged room is managed: its gateway reads it (not MLS)");
        }
    }
    if let Some(m) = new.max_members {
        if m < 2 || m as usize > cloister_proto::limits::MAX_ROOM_MEMBERS {
            return bad(&format!(
                "max_members must be between 2 and {}",
                cloister_proto::limits::MAX_ROOM_MEMBERS
            ));
        }
        if (m as usize) < members {
            return bad(&format!(
                "the room has {members} members: max_members cannot be {m}"
            ));
        }
    }
    if let Some(o) = old {
        if o.copy_protected && !new.copy_protected {
            return bad("copy protection cannot be removed once set");
        }
        if o.external != new.external {
            return bad("whether a room is external is fixed at creation");
        }
        if o.mode != new.mode {
            return bad("a room's mode (managed or mls) is fixed at creation");
        }
        if o.bridge != new.bridge {
            return bad("a room's bridge (network, contact, gateway) is fixed at creation");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
