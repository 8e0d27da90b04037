//! The tenant's communication controls as one evaluator: entitlements and
//! information barriers. The KM (before releasing a key or accepting a log
//! entry) and the messaging server (before routing) call the same checks on
//! the same KM-signed [`Controls`].
//!
//! ```text
//!  Controls ──Rules::new──▶ Rules
//!  Rules.check_step(firm, before, statement, after) ─▶ Ok | Refusal (names what is missing)
//!  Rules.may_hold_keys(firm, room, user)            ─▶ Ok | Refusal (a barrier, or no external_chat)
//!  Rules.require(user, entitlement)                 ─▶ Ok | Refusal::Missing
//! ```
//!
//! A firm's rules judge only that firm's users (`firm`): in a room shared
//! with other firms each firm's KM, and the server for each firm, apply
//! that firm's entitlements and barriers to its own side. Every user of
//! `firm` in a room with another firm's users needs `external_chat`.

use crate::RoomState;
use crate::barriers::{Barriers, Walled};
use cloister_proto::controls::{Controls, Entitlement};
use cloister_proto::room::{Action, RoomKind, Statement};
use cloister_proto::{TenantId, UserId};
use std::collections::{BTreeSet, HashMap};

/// Why a control refused an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{user} lacks the entitlement {entitlement}")]
    Missing {
        user: UserId,
        entitlement: Entitlement,
    },
    #[error(transparent)]
    Walled(#[from] Walled),
    #[error(
        "{0} is a guest: guests take part only in rooms the firm's users put them in (they create, join and invite nothing)"
    )]
    Guest(UserId),
    #[error("{user}'s firm {why}")]
    Mode { user: UserId, why: &'static str },
}

impl Refusal {
    /// A stable code for APIs: `entitlement` or `barrier`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Missing { .. } => "entitlement",
            Refusal::Walled(_) => "barrier",
            Refusal::Guest(_) => "guest",
            Refusal::Mode { .. } => "room_mode",
        }
    }
}

/// Controls indexed for evaluation.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub version: u64,
    barriers: Barriers,
    default: BTreeSet<Entitlement>,
    entitlements: HashMap<UserId, BTreeSet<Entitlement>>,
    guests: BTreeSet<UserId>,
    mls: cloister_proto::controls::MlsPolicy,
}

impl Rules {
    pub fn new(c: &Controls) -> Rules {
        let memberships = c
            .groups
            .iter()
            .flat_map(|(g, us)| us.iter().map(move |u| (u.clone(), g.clone())));
        Rules {
            version: c.version,
            barriers: Barriers::new(memberships, &c.barriers),
            default: c.default_entitlements.iter().copied().collect(),
            entitlements: c
                .entitlements
                .iter()
                .map(|(u, es)| (u.clone(), es.iter().copied().collect()))
                .collect(),
            guests: c.guests.iter().cloned().collect(),
            mls: c.mls,
        }
    }

    pub fn barriers(&self) -> &Barriers {
        &self.barriers
    }

    /// Is `user` one of the firm's sponsored guests?
    pub fn is_guest(&self, user: &UserId) -> bool {
        self.guests.contains(user)
    }

    pub fn has(&self, user: &UserId, e: Entitlement) -> bool {
        match self.entitlements.get(user) {
            Some(s) => s.contains(&e),
            None => self.default.contains(&e),
        }
    }

    pub fn require(&self, user: &UserId, e: Entitlement) -> Result<(), Refusal> {
        if self.has(user, e) {
            Ok(())
        } else {
            Err(Refusal::Missing {
                user: user.clone(),
                entitlement: e,
            })
        }
    }

    /// May this (already rule-checked) log entry take effect, as far as
    /// `firm`'s users are concerned? The creator of a named room needs
    /// `create_rooms`; no one may join a room where a barrier separates
    /// them from a member; when anyone joins a room shared with another
    /// firm, every user of `firm` in it needs `external_chat`.
    pub fn check_step(
        &self,
        firm: &TenantId,
        before: Option<&RoomState>,
        st: &Statement,
        after: &RoomState,
    ) -> Result<(), Refusal> {
        let own_actor = st.actor_user.tenant() == *firm;
        // a guest only leaves: the firm's users put them in rooms
        if own_actor && self.is_guest(&st.actor_user) && st.action != Action::Leave {
            return Err(Refusal::Guest(st.actor_user.clone()));
        }
        match &st.action {
            Action::Create {
                kind: RoomKind::Room,
                settings,
                ..
            } if own_actor => {
                self.require(&st.actor_user, Entitlement::CreateRooms)?;
                if settings.public {
                    self.require(&st.actor_user, Entitlement::CreatePublicRooms)?;
                }
            }
            Action::Settings { settings }
                if own_actor && settings.public && !before.is_some_and(|b| b.settings.public) =>
            {
                self.require(&st.actor_user, Entitlement::CreatePublicRooms)?;
            }
            _ => {}
        }
        let mut joined = after
            .members
            .iter()
            .filter(|m| before.is_none_or(|b| !b.members.contains(*m)))
            .peekable();
        if joined.peek().is_none() {
            return Ok(());
        }
        for j in joined {
            self.barriers.may_join(j, &after.members)?;
            if j.tenant() == *firm {
                self.fits_mode(j, after.settings.mode)?;
            }
        }
        if shared_with_others(firm, after) {
            for m in after.members.iter().filter(|m| m.tenant() == *firm) {
                self.require(m, Entitlement::ExternalChat)?;
            }
        }
        if after.settings.bridge.is_some() {
            for m in after.members.iter().filter(|m| m.tenant() == *firm) {
                self.require(m, Entitlement::Federation)?;
            }
        }
        Ok(())
    }

    /// The firm's MLS policy holds for every room (and IM) its users
    /// join, whoever created it: `required`, end-to-end (MLS) rooms only;
    /// `forbidden`, managed rooms only.
    fn fits_mode(
        &self,
        user: &UserId,
        mode: cloister_proto::room::RoomMode,
    ) -> Result<(), Refusal> {
        use cloister_proto::controls::MlsPolicy;
        use cloister_proto::room::RoomMode;
        let why = match (self.mls, mode) {
            (MlsPolicy::Required, RoomMode::Managed) => {
                "requires end-to-end (MLS) rooms: its users join no managed room (create it with --mode mls)"
            }
            (MlsPolicy::Forbidden, RoomMode::Mls) => {
                "forbids MLS rooms: its users join only managed rooms"
            }
            _ => return Ok(()),
        };
        Err(Refusal::Mode {
            user: user.clone(),
            why,
        })
    }

    /// May `user` (of `firm`) hold the keys of `room` now? Refused while a
    /// barrier separates them from another member (until the eviction
    /// lands), and in a room shared with another firm without
    /// `external_chat`.
    pub fn may_hold_keys(
        &self,
        firm: &TenantId,
        room: &RoomState,
        user: &UserId,
    ) -> Result<(), Refusal> {
        self.barriers.may_join(user, &room.members)?;
        if user.tenant() == *firm && shared_with_others(firm, room) {
            self.require(user, Entitlement::ExternalChat)?;
        }
        if user.tenant() == *firm && room.settings.bridge.is_some() {
            self.require(user, Entitlement::Federation)?;
        }
        Ok(())
    }
}

/// Does `room` have members of another firm than `firm`?
pub fn shared_with_others(firm: &TenantId, room: &RoomState) -> bool {
    room.members.iter().any(|m| m.tenant() != *firm)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Grant;
    use cloister_proto::b64::Fixed;
    use cloister_proto::room::RoomSettings;
    use cloister_proto::{DeviceId, RoomId};
    use std::collections::BTreeMap;

    fn u(s: &str) -> UserId {
        s.parse().unwrap()
    }

    fn state(members: &[&str]) -> RoomState {
        let members: BTreeSet<UserId> = members.iter().map(|m| u(m)).collect();
        RoomState {
            room: RoomId([1; 16]),
            tenant: "acme".parse().unwrap(),
            kind: RoomKind::Room,
            settings: RoomSettings {
                external: true,
                ..Default::default()
            },
            epoch: 0,
            seq: 1,
            head: [0; 32],
            owners: BTreeSet::new(),
            grants: members
                .iter()
                .map(|m| {
                    (
                        m.clone(),
                        vec![Grant {
                            from: 0,
                            until: None,
                        }],
                    )
                })
                .collect(),
            members,
            locked: None,
            banned: BTreeSet::new(),
        }
    }

    /// Each firm's rules judge its own users: every one of them in a room
    /// shared with another firm needs `external_chat`, at the change and
    /// at every key release.
    #[test]
    fn a_firm_judges_its_own_side_of_a_shared_room() {
        let rules = Rules::new(&Controls {
            version: 1,
            default_entitlements: vec![Entitlement::CreateRooms],
            entitlements: BTreeMap::from([(u("alice@acme"), vec![Entitlement::ExternalChat])]),
            ..Default::default()
        });
        let acme: TenantId = "acme".parse().unwrap();
        let bank: TenantId = "bank".parse().unwrap();
        let before = state(&["alice@acme", "carol@acme"]);
        let after = state(&["alice@acme", "carol@acme", "bob@bank"]);
        let st = Statement {
            room: RoomId([1; 16]),
            seq: 2,
            prev: Fixed([0; 32]),
            actor: DeviceId([2; 16]),
            actor_user: u("alice@acme"),
            ts: 1,
            action: Action::Add {
                user: u("bob@bank"),
            },
            connections: Vec::new(),
        };
        // carol (acme) lacks external_chat: acme refuses
        let r = rules
            .check_step(&acme, Some(&before), &st, &after)
            .unwrap_err();
        assert_eq!(
            r,
            Refusal::Missing {
                user: u("carol@acme"),
                entitlement: Entitlement::ExternalChat
            }
        );
        assert!(
            rules
                .may_hold_keys(&acme, &after, &u("carol@acme"))
                .is_err()
        );
        assert!(rules.may_hold_keys(&acme, &after, &u("alice@acme")).is_ok());
        // acme's rules say nothing of bank's users
        assert!(rules.may_hold_keys(&acme, &after, &u("bob@bank")).is_ok());
        let bank_side = Rules::new(&Controls {
            version: 1,
            entitlements: BTreeMap::from([(u("bob@bank"), vec![Entitlement::ExternalChat])]),
            ..Default::default()
        });
        assert!(
            bank_side
                .check_step(&bank, Some(&before), &st, &after)
                .is_ok()
        );
        // a room of one firm needs no external_chat
        assert!(
            rules
                .may_hold_keys(&acme, &before, &u("carol@acme"))
                .is_ok()
        );
    }

    /// A firm's MLS policy holds for every room its users join, whoever
    /// created it; another firm's users are that firm's to judge.
    #[test]
    fn a_firms_mls_policy_holds_for_every_room_its_users_join() {
        use cloister_proto::controls::MlsPolicy;
        use cloister_proto::room::RoomMode;
        let all = vec![Entitlement::CreateRooms, Entitlement::ExternalChat];
        let with = |mls| {
            Rules::new(&Controls {
                version: 1,
                default_entitlements: all.clone(),
                mls,
                ..Default::default()
            })
        };
        let (acme, bank): (TenantId, TenantId) = ("acme".parse().unwrap(), "bank".parse().unwrap());
        let before = state(&["alice@acme"]);
        let add = |mode| {
            let mut after = state(&["alice@acme", "bob@bank"]);
            after.settings.mode = mode;
            let st = Statement {
                room: RoomId([1; 16]),
                seq: 2,
                prev: Fixed([0; 32]),
                actor: DeviceId([2; 16]),
                actor_user: u("alice@acme"),
                ts: 1,
                action: Action::Add {
                    user: u("bob@bank"),
                },
                connections: Vec::new(),
            };
            (st, after)
        };
        let (st, mls_room) = add(RoomMode::Mls);
        let (st2, managed_room) = add(RoomMode::Managed);
        // bank forbids MLS: bob may not join acme's MLS room, but its
        // managed one
        let r = with(MlsPolicy::Forbidden)
            .check_step(&bank, Some(&before), &st, &mls_room)
            .unwrap_err();
        assert_eq!(r.code(), "room_mode");
        assert!(r.to_string().contains("bob@bank's firm forbids MLS"), "{r}");
        assert!(
            with(MlsPolicy::Forbidden)
                .check_step(&bank, Some(&before), &st2, &managed_room)
                .is_ok()
        );
        // bank requires MLS: the other way round
        let r = with(MlsPolicy::Required)
            .check_step(&bank, Some(&before), &st2, &managed_room)
            .unwrap_err();
        assert!(r.to_string().contains("requires end-to-end"), "{r}");
        assert!(
            with(MlsPolicy::Required)
                .check_step(&bank, Some(&before), &st, &mls_room)
                .is_ok()
        );
        // acme's policy does not judge bob (only acme's users joining)
        assert!(
            with(MlsPolicy::Forbidden)
                .check_step(&acme, Some(&before), &st, &mls_room)
                .is_ok()
        );
    }
}
