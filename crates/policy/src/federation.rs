//! Rooms between firms: which statements may put users of several firms in
//! one room. Pure: the caller says which firm keys it trusts.
//!
//! ```text
//!  check_step(before, statement, after, keys_of)
//!    a room with users of several firms is an IM or an `external` room;
//!    every user of another firm than the actor's that the statement puts
//!    in the room needs an accepted connection with the actor:
//!    request signed by the asker's KM + acceptance signed by the asked
//!    user's KM, both under keys `keys_of` trusts
//! ```
//!
//! The KMs (under the keys their admins pinned), the server (under the keys
//! its tenants registered) and every device (under its KM's signed partner
//! list) run this same check.

use crate::RoomState;
use cloister_crypto::signed::{
    CONNECTION_ANSWER, CONNECTION_REQUEST, connection_id, peek_blob, verify_blob,
};
use cloister_proto::federation::{ConnectionAnswer, ConnectionProof, ConnectionRequest};
use cloister_proto::room::{RoomKind, Statement};
use cloister_proto::{TenantId, UserId};

/// At most this many connection proofs ride on one statement (a room of
/// 300 members from 25 firms, Symphony's limit for external rooms, is
/// created in one statement).
pub const MAX_PROOFS: usize = 512;

/// Why a statement may not mix firms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error(
        "{0} belongs to another firm: only an IM or an external room (`--external`) may have users of several firms"
    )]
    NotExternal(UserId),
    #[error("{actor} and {user} are not connected: a connection request must be accepted first")]
    NotConnected { actor: UserId, user: UserId },
    #[error("{0} is not a trusted firm")]
    Untrusted(TenantId),
    #[error("connection proof refused: {0}")]
    BadProof(String),
}

impl FederationError {
    /// A stable code for APIs.
    pub fn code(&self) -> &'static str {
        match self {
            FederationError::NotExternal(_) => "not_external",
            FederationError::NotConnected { .. } => "not_connected",
            FederationError::Untrusted(_) => "not_trusted",
            FederationError::BadProof(_) => "bad_connection",
        }
    }
}

/// Does the room have users of more than one firm?
pub fn mixed(room: &RoomState) -> bool {
    room.members.iter().any(|m| m.tenant() != room.tenant)
}

/// The firms with users in the room (its home firm first).
pub fn firms(room: &RoomState) -> Vec<TenantId> {
    let mut out = vec![room.tenant.clone()];
    for m in &room.members {
        let t = m.tenant();
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// May this statement (already applied by [`crate::apply`]) take effect
/// across firms? `keys_of` answers a firm's KM signing key if the caller
/// trusts that firm.
pub fn check_step(
    before: Option<&RoomState>,
    st: &Statement,
    after: &RoomState,
    keys_of: &dyn Fn(&TenantId) -> Option<[u8; 32]>,
) -> Result<(), FederationError> {
    if st.connections.len() > MAX_PROOFS {
        return Err(FederationError::BadProof(format!(
            "at most {MAX_PROOFS} connection proofs per statement"
        )));
    }
    let joined: Vec<&UserId> = after
        .members
        .iter()
        .filter(|m| before.is_none_or(|b| !b.members.contains(*m)))
        .collect();
    if joined.is_empty() {
        return Ok(());
    }
    if mixed(after) && after.kind != RoomKind::Im && !after.settings.external {
        let first = after
            .members
            .iter()
            .find(|m| m.tenant() != after.tenant)
            .unwrap_or(&st.actor_user);
        return Err(FederationError::NotExternal(first.clone()));
    }
    let actor = &st.actor_user;
    let needed: Vec<&UserId> = joined
        .into_iter()
        .filter(|u| u.tenant() != actor.tenant())
        .collect();
    if needed.is_empty() {
        return Ok(());
    }
    // each proof is verified once: the actor's connected users
    let mut connected = std::collections::BTreeSet::new();
    let mut last = None;
    for p in &st.connections {
        match verify(p, keys_of) {
            Ok((a, b)) if &a == actor => {
                connected.insert(b);
            }
            Ok((a, b)) if &b == actor => {
                connected.insert(a);
            }
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    for user in needed {
        if !connected.contains(user) {
            return Err(last.unwrap_or_else(|| FederationError::NotConnected {
                actor: actor.clone(),
                user: user.clone(),
            }));
        }
    }
    Ok(())
}

/// Verify a connection proof: the request under its asker's firm key, the
/// acceptance of that very request under the asked user's firm key.
/// Answers the two connected users (asker, asked).
pub fn verify(
    p: &ConnectionProof,
    keys_of: &dyn Fn(&TenantId) -> Option<[u8; 32]>,
) -> Result<(UserId, UserId), FederationError> {
    let peek: ConnectionRequest = peek_blob(&p.request, "connection request")
        .map_err(|e| FederationError::BadProof(e.to_string()))?;
    let (from_t, to_t) = (peek.from.tenant(), peek.to.tenant());
    let kf = keys_of(&from_t).ok_or(FederationError::Untrusted(from_t))?;
    let kt = keys_of(&to_t).ok_or(FederationError::Untrusted(to_t))?;
    let req: ConnectionRequest = verify_blob(&kf, CONNECTION_REQUEST, &p.request, "request")
        .map_err(|_| {
            FederationError::BadProof(format!(
                "the request is not signed by {}'s KM",
                peek.from.tenant()
            ))
        })?;
    let ans: ConnectionAnswer =
        verify_blob(&kt, CONNECTION_ANSWER, &p.answer, "answer").map_err(|_| {
            FederationError::BadProof(format!(
                "the answer is not signed by {}'s KM",
                req.to.tenant()
            ))
        })?;
    if ans.request.0 != connection_id(&p.request) || ans.from != req.from || ans.to != req.to {
        return Err(FederationError::BadProof(
            "the answer is for another request".into(),
        ));
    }
    if !ans.accept {
        return Err(FederationError::BadProof(format!(
            "{} rejected the request",
            req.to
        )));
    }
    if req.from.tenant() == req.to.tenant() {
        return Err(FederationError::BadProof(
            "a connection is between two firms".into(),
        ));
    }
    Ok((req.from, req.to))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Grant;
    use cloister_crypto::KmSigner;
    use cloister_crypto::signed::km_sign_blob;
    use cloister_proto::RoomId;
    use cloister_proto::b64::Fixed;
    use cloister_proto::room::{Action, RoomSettings};
    use std::collections::{BTreeMap, BTreeSet};

    fn u(s: &str) -> UserId {
        s.parse().unwrap()
    }

    struct Firms {
        acme: KmSigner,
        bank: KmSigner,
    }

    impl Firms {
        fn keys(&self) -> impl Fn(&TenantId) -> Option<[u8; 32]> + '_ {
            move |t: &TenantId| match t.as_str() {
                "acme" => Some(self.acme.public()),
                "bank" => Some(self.bank.public()),
                _ => None,
            }
        }
        fn signer(&self, t: &TenantId) -> &KmSigner {
            if t.as_str() == "acme" {
                &self.acme
            } else {
                &self.bank
            }
        }
        /// `from` asks `to`; `to`'s KM signs the answer (`by` overrides the signer).
        fn proof(
            &self,
            from: &str,
            to: &str,
            accept: bool,
            by: Option<&KmSigner>,
        ) -> ConnectionProof {
            let req = ConnectionRequest {
                from: u(from),
                to: u(to),
                ts: 1,
                nonce: Fixed([7; 16]),
            };
            let request =
                km_sign_blob(self.signer(&req.from.tenant()), CONNECTION_REQUEST, &req).unwrap();
            let ans = ConnectionAnswer {
                request: Fixed(connection_id(&request)),
                from: req.from.clone(),
                to: req.to.clone(),
                accept,
                ts: 2,
            };
            let answer = km_sign_blob(
                by.unwrap_or_else(|| self.signer(&req.to.tenant())),
                CONNECTION_ANSWER,
                &ans,
            )
            .unwrap();
            ConnectionProof { request, answer }
        }
    }

    fn room(kind: RoomKind, external: bool, members: &[&str]) -> RoomState {
        let members: BTreeSet<UserId> = members.iter().map(|m| u(m)).collect();
        RoomState {
            room: RoomId([1; 16]),
            tenant: "acme".parse().unwrap(),
            kind,
            settings: RoomSettings {
                external,
                ..Default::default()
            },
            epoch: 0,
            seq: 0,
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
                .collect::<BTreeMap<_, _>>(),
            members,
            locked: None,
            banned: BTreeSet::new(),
        }
    }

    fn add(actor: &str, user: &str, proofs: Vec<ConnectionProof>) -> Statement {
        Statement {
            room: RoomId([1; 16]),
            seq: 1,
            prev: Fixed([0; 32]),
            actor: cloister_proto::DeviceId([9; 16]),
            actor_user: u(actor),
            ts: 1,
            action: Action::Add { user: u(user) },
            connections: proofs,
        }
    }

    #[test]
    fn users_of_another_firm_need_a_connection_with_the_actor() {
        let f = Firms {
            acme: KmSigner::generate().unwrap(),
            bank: KmSigner::generate().unwrap(),
        };
        let keys = f.keys();
        let before = room(RoomKind::Room, true, &["alice@acme"]);
        let after = room(RoomKind::Room, true, &["alice@acme", "bob@bank"]);
        let check = |st: &Statement| check_step(Some(&before), st, &after, &keys);
        // accepted, either direction of asking
        assert_eq!(
            check(&add(
                "alice@acme",
                "bob@bank",
                vec![f.proof("alice@acme", "bob@bank", true, None)]
            )),
            Ok(())
        );
        assert_eq!(
            check(&add(
                "alice@acme",
                "bob@bank",
                vec![f.proof("bob@bank", "alice@acme", true, None)]
            )),
            Ok(())
        );
        // none, or another pair's
        assert!(matches!(
            check(&add("alice@acme", "bob@bank", vec![])),
            Err(FederationError::NotConnected { .. })
        ));
        assert!(matches!(
            check(&add(
                "alice@acme",
                "bob@bank",
                vec![f.proof("carol@acme", "bob@bank", true, None)]
            )),
            Err(FederationError::NotConnected { .. })
        ));
        // rejected, or accepted by the asker's own KM (forged acceptance)
        assert!(matches!(
            check(&add(
                "alice@acme",
                "bob@bank",
                vec![f.proof("alice@acme", "bob@bank", false, None)]
            )),
            Err(FederationError::BadProof(_))
        ));
        assert!(matches!(
            check(&add(
                "alice@acme",
                "bob@bank",
                vec![f.proof("alice@acme", "bob@bank", true, Some(&f.acme))]
            )),
            Err(FederationError::BadProof(_))
        ));
        // an answer moved onto another request
        let (p1, p2) = (
            f.proof("alice@acme", "bob@bank", true, None),
            f.proof("alice@acme", "carol@bank", true, None),
        );
        let spliced = ConnectionProof {
            request: p1.request,
            answer: p2.answer,
        };
        assert!(matches!(
            check(&add("alice@acme", "bob@bank", vec![spliced])),
            Err(FederationError::BadProof(_))
        ));
        // a firm the checker does not trust
        let none = |_: &TenantId| None;
        assert!(matches!(
            check_step(
                Some(&before),
                &add(
                    "alice@acme",
                    "bob@bank",
                    vec![f.proof("alice@acme", "bob@bank", true, None)]
                ),
                &after,
                &none
            ),
            Err(FederationError::Untrusted(_))
        ));
        // colleagues need none; a statement that brings no one in needs none
        let after2 = room(RoomKind::Room, false, &["alice@acme", "carol@acme"]);
        assert_eq!(
            check_step(
                Some(&before),
                &add("alice@acme", "carol@acme", vec![]),
                &after2,
                &keys
            ),
            Ok(())
        );
        assert_eq!(
            check_step(
                Some(&after),
                &add("alice@acme", "x@acme", vec![]),
                &after,
                &keys
            ),
            Ok(())
        );
    }

    #[test]
    fn only_ims_and_external_rooms_mix_firms() {
        let f = Firms {
            acme: KmSigner::generate().unwrap(),
            bank: KmSigner::generate().unwrap(),
        };
        let keys = f.keys();
        let before = room(RoomKind::Room, false, &["alice@acme"]);
        let after = room(RoomKind::Room, false, &["alice@acme", "bob@bank"]);
        let st = add(
            "alice@acme",
            "bob@bank",
            vec![f.proof("alice@acme", "bob@bank", true, None)],
        );
        assert_eq!(
            check_step(Some(&before), &st, &after, &keys),
            Err(FederationError::NotExternal(u("bob@bank")))
        );
        let im = room(RoomKind::Im, false, &["alice@acme", "bob@bank"]);
        assert_eq!(check_step(None, &st, &im, &keys), Ok(()));
        assert!(mixed(&im));
        assert_eq!(
            firms(&im),
            ["acme".parse::<TenantId>().unwrap(), "bank".parse().unwrap()]
        );
        // too many proofs
        let many = add(
            "alice@acme",
            "bob@bank",
            vec![f.proof("alice@acme", "bob@bank", true, None); MAX_PROOFS + 1],
        );
        assert!(matches!(
            check_step(None, &many, &im, &keys),
            Err(FederationError::BadProof(_))
        ));
    }
}
