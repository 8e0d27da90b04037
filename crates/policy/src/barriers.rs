//! Information barriers: groups of users and BLOCK policies between groups
//! (a Chinese wall between research and trading). Pure: the KM, the server
//! and every client evaluate the same rules on the same data.
//!
//! ```text
//!  blocked(a, b)      ─▶ the active policy that separates a and b, if any
//!  may_join(u, room)  ─▶ refused with the policy if u is walled off from a member
//!  to_evict(members)  ─▶ after a new policy: who leaves each room, and why
//! ```
//!
//! Cost: `blocked` looks up each group of one user against the other's
//! groups in a hash set of blocked pairs: O(g_a × g_b), a handful of
//! lookups for users in a few groups, whatever the number of policies.

use cloister_proto::{TenantId, UserId};
use std::collections::{BTreeSet, HashMap, HashSet};

/// The prefix of a barrier group that stands for every user of another
/// firm (`firm:bank`): a firm walls its own groups off from outside firms.
pub const FIRM_GROUP: &str = "firm:";

/// The firm a barrier group name stands for, if it is a firm group.
pub fn firm_of_group(g: &str) -> Option<TenantId> {
    g.strip_prefix(FIRM_GROUP).and_then(|t| t.parse().ok())
}

/// A barrier group's name (e.g. `research`, from SCIM or an admin).
pub type Group = String;

pub use cloister_proto::controls::Barrier;

/// Why a user may not be with another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an information barrier ({barrier}: {group_a} / {group_b}) separates {user} from {other}")]
pub struct Walled {
    pub user: UserId,
    pub other: UserId,
    pub barrier: String,
    pub group_a: Group,
    pub group_b: Group,
}

/// The tenant's barrier groups and policies, indexed for evaluation.
#[derive(Debug, Clone, Default)]
pub struct Barriers {
    groups_of: HashMap<UserId, BTreeSet<Group>>,
    /// Active policies by their (ordered) pair of groups.
    blocks: HashMap<(Group, Group), Barrier>,
    /// Groups that take part in at least one active policy.
    walled: HashSet<Group>,
    /// Firm groups (`firm:TENANT`) that take part in an active policy.
    firms: HashMap<TenantId, Group>,
}

fn pair(a: &str, b: &str) -> (Group, Group) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl Barriers {
    /// Build from memberships (user, group) and policies (inactive ones
    /// are kept by the caller for the record, ignored here).
    pub fn new<'a>(
        memberships: impl IntoIterator<Item = (UserId, Group)>,
        policies: impl IntoIterator<Item = &'a Barrier>,
    ) -> Barriers {
        let mut b = Barriers::default();
        for p in policies.into_iter().filter(|p| p.active) {
            for g in [&p.a, &p.b] {
                b.walled.insert(g.clone());
                if let Some(t) = firm_of_group(g) {
                    b.firms.insert(t, g.clone());
                }
            }
            b.blocks.insert(pair(&p.a, &p.b), p.clone());
        }
        for (u, g) in memberships {
            // only groups that take part in a policy matter
            if b.walled.contains(&g) {
                b.groups_of.entry(u).or_default().insert(g);
            }
        }
        b
    }

    /// The active policy that separates `x` from `y`, if any (a user is
    /// never walled off from themselves, even if in both groups).
    pub fn blocked(&self, x: &UserId, y: &UserId) -> Option<Walled> {
        if x == y {
            return None;
        }
        if !self.firms.is_empty() {
            return self.blocked_with_firms(x, y);
        }
        let (gx, gy) = (self.groups_of.get(x)?, self.groups_of.get(y)?);
        self.first_block(x, y, gx.iter(), gy.iter())
    }

    /// [`Barriers::blocked`] when policies name other firms: each user is
    /// also in their firm's group.
    fn blocked_with_firms(&self, x: &UserId, y: &UserId) -> Option<Walled> {
        let groups = |u: &UserId| -> Vec<&Group> {
            let mut v: Vec<&Group> = self.groups_of.get(u).into_iter().flatten().collect();
            if let Some(g) = self.firms.get(&u.tenant()) {
                v.push(g);
            }
            v
        };
        let (gx, gy) = (groups(x), groups(y));
        if gx.is_empty() || gy.is_empty() {
            return None;
        }
        self.first_block(x, y, gx.into_iter(), gy.into_iter())
    }

    fn first_block<'a>(
        &self,
        x: &UserId,
        y: &UserId,
        gx: impl Iterator<Item = &'a Group>,
        gy: impl Iterator<Item = &'a Group> + Clone,
    ) -> Option<Walled> {
        for a in gx {
            for b in gy.clone() {
                if let Some(p) = self.blocks.get(&pair(a, b)) {
                    return Some(Walled {
                        user: x.clone(),
                        other: y.clone(),
                        barrier: p.id.clone(),
                        group_a: a.clone(),
                        group_b: b.clone(),
                    });
                }
            }
        }
        None
    }

    /// May `user` be in a room with these members?
    pub fn may_join<'a>(
        &self,
        user: &UserId,
        members: impl IntoIterator<Item = &'a UserId>,
    ) -> Result<(), Walled> {
        if !self.groups_of.contains_key(user) && self.firms.is_empty() {
            return Ok(());
        }
        for m in members {
            if m != user
                && let Some(w) = self.blocked(user, m)
            {
                return Err(w);
            }
        }
        Ok(())
    }

    /// After a policy change: the members who must leave a room so that no
    /// two remaining members are walled off, each with the reason. The
    /// members listed first (the room's owners, say) are kept when two
    /// collide; later ones leave.
    pub fn to_evict(&self, members: &[UserId]) -> Vec<Walled> {
        let mut kept: Vec<&UserId> = Vec::with_capacity(members.len());
        let mut out = Vec::new();
        for m in members {
            match kept.iter().find_map(|k| self.blocked(m, k)) {
                Some(w) => out.push(w),
                None => kept.push(m),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn u(n: &str) -> UserId {
        format!("{n}@acme").parse().unwrap()
    }

    fn wall(id: &str, a: &str, b: &str, active: bool) -> Barrier {
        Barrier {
            id: id.into(),
            a: a.into(),
            b: b.into(),
            active,
            reason: String::new(),
        }
    }

    #[test]
    fn a_wall_separates_both_ways_and_only_while_active() {
        let members = [
            (u("rita"), "research".to_owned()),
            (u("tom"), "trading".to_owned()),
            (u("tom"), "desk-rates".to_owned()),
            (u("sam"), "sales".to_owned()),
        ];
        let policies = [wall("cw-1", "research", "trading", true)];
        let b = Barriers::new(members.clone(), &policies);
        let w = b.blocked(&u("rita"), &u("tom")).unwrap();
        assert_eq!(w.barrier, "cw-1");
        assert!(w.to_string().contains("separates rita@acme from tom@acme"));
        assert!(b.blocked(&u("tom"), &u("rita")).is_some());
        assert!(b.blocked(&u("rita"), &u("sam")).is_none());
        assert!(b.may_join(&u("rita"), &[u("sam"), u("tom")]).is_err());
        assert!(b.may_join(&u("sam"), &[u("rita"), u("tom")]).is_ok());
        // eviction keeps the first of a colliding pair
        let ev = b.to_evict(&[u("tom"), u("sam"), u("rita")]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].user, u("rita"));
        // disabled: no effect
        let off = [wall("cw-1", "research", "trading", false)];
        let b = Barriers::new(members, &off);
        assert!(b.blocked(&u("rita"), &u("tom")).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// `blocked` is symmetric and agrees with a brute-force reading of
        /// the policies; after eviction no two members are walled off.
        #[test]
        fn evaluation_matches_the_definition(
            ms in proptest::collection::vec((0u8..12, 0u8..6), 0..40),
            ps in proptest::collection::vec((0u8..6, 0u8..6, any::<bool>()), 0..8),
        ) {
            let members: Vec<(UserId, Group)> =
                ms.iter().map(|(x, g)| (u(&format!("u{x}")), format!("g{g}"))).collect();
            let policies: Vec<Barrier> = ps
                .iter()
                .enumerate()
                .map(|(i, (a, b, on))| wall(&format!("p{i}"), &format!("g{a}"), &format!("g{b}"), *on))
                .collect();
            let b = Barriers::new(members.clone(), &policies);
            let groups = |x: &UserId| -> Vec<&Group> {
                members.iter().filter(|(m, _)| m == x).map(|(_, g)| g).collect()
            };
            let users: Vec<UserId> = (0..12).map(|x| u(&format!("u{x}"))).collect();
            for x in &users {
                for y in &users {
                    let brute = x != y && policies.iter().filter(|p| p.active).any(|p| {
                        let (gx, gy) = (groups(x), groups(y));
                        (gx.contains(&&p.a) && gy.contains(&&p.b)) || (gx.contains(&&p.b) && gy.contains(&&p.a))
                    });
                    prop_assert_eq!(b.blocked(x, y).is_some(), brute);
                    prop_assert_eq!(b.blocked(x, y).is_some(), b.blocked(y, x).is_some());
                }
            }
            let evicted: Vec<UserId> = b.to_evict(&users).into_iter().map(|w| w.user).collect();
            let kept: Vec<&UserId> = users.iter().filter(|x| !evicted.contains(x)).collect();
            for x in &kept {
                for y in &kept {
                    prop_assert!(b.blocked(x, y).is_none());
                }
            }
        }
    }
}
