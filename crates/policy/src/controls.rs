//! The tenant's communication controls as one evaluator: entitlements and
//! information barriers. The KM (before releasing a key or accepting a log
//! entry) and the messaging server (before routing) call the same checks on
//! the same KM-signed [`Controls`].
//!
//! ```text
//!  Controls ──Rules::new──▶ Rules
//!  Rules.check_step(before, statement, after)  ─▶ Ok | Refusal (names what is missing)
//!  Rules.may_hold_keys(room, user)             ─▶ Ok | Walled (a barrier now applies)
//!  Rules.require(user, entitlement)            ─▶ Ok | Refusal::Missing
//! ```

use crate::RoomState;
use crate::barriers::{Barriers, Walled};
use cloister_proto::UserId;
use cloister_proto::controls::{Controls, Entitlement};
use cloister_proto::room::{Action, RoomKind, Statement};
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
}

impl Refusal {
    /// A stable code for APIs: `entitlement` or `barrier`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Missing { .. } => "entitlement",
            Refusal::Walled(_) => "barrier",
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
        }
    }

    pub fn barriers(&self) -> &Barriers {
        &self.barriers
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

    /// May this (already rule-checked) log entry take effect? The creator of
    /// a named room needs `create_rooms`; no one may join a room where a
    /// barrier separates them from a member.
    pub fn check_step(
        &self,
        before: Option<&RoomState>,
        st: &Statement,
        after: &RoomState,
    ) -> Result<(), Refusal> {
        match &st.action {
            Action::Create {
                kind: RoomKind::Room,
                settings,
                ..
            } => {
                self.require(&st.actor_user, Entitlement::CreateRooms)?;
                if settings.public {
                    self.require(&st.actor_user, Entitlement::CreatePublicRooms)?;
                }
            }
            Action::Settings { settings }
                if settings.public && !before.is_some_and(|b| b.settings.public) =>
            {
                self.require(&st.actor_user, Entitlement::CreatePublicRooms)?;
            }
            _ => {}
        }
        for joined in after
            .members
            .iter()
            .filter(|m| before.is_none_or(|b| !b.members.contains(*m)))
        {
            self.barriers.may_join(joined, &after.members)?;
        }
        Ok(())
    }

    /// May `user` hold the keys of `room` now? Refused while a barrier
    /// separates them from another member (until the eviction lands).
    pub fn may_hold_keys(&self, room: &RoomState, user: &UserId) -> Result<(), Walled> {
        self.barriers.may_join(user, &room.members)
    }
}
