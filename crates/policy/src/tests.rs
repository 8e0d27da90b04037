use super::*;
use cloister_crypto::DeviceKeys;
use cloister_crypto::signed::sign_statement;
use cloister_proto::b64::Fixed;
use proptest::prelude::*;

struct Actor {
    user: UserId,
    keys: DeviceKeys,
}

fn actor(name: &str) -> Actor {
    Actor {
        user: format!("{name}@acme").parse().unwrap(),
        keys: DeviceKeys::generate().unwrap(),
    }
}

fn stmt(a: &Actor, room: RoomId, s: Option<&RoomState>, action: Action) -> SignedStatement {
    let st = Statement {
        room,
        seq: s.map_or(0, |s| s.seq + 1),
        prev: Fixed(s.map_or([0; 32], |s| s.head)),
        actor: a.keys.device_id(),
        actor_user: a.user.clone(),
        ts: 1,
        action,
        connections: Vec::new(),
    };
    sign_statement(&a.keys, &st).unwrap()
}

fn run(
    s: Option<&RoomState>,
    room: RoomId,
    a: &Actor,
    action: Action,
) -> Result<RoomState, PolicyError> {
    let e = stmt(a, room, s, action);
    apply(s, &room, &e, &a.user, &a.keys.sign_pk()).map(|(n, _)| n)
}

fn create(a: &Actor, room: RoomId, members: &[&Actor], view_history: bool) -> RoomState {
    run(
        None,
        room,
        a,
        Action::Create {
            kind: RoomKind::Room,
            settings: RoomSettings {
                name: "desk".into(),
                view_history,
                ..Default::default()
            },
            members: members.iter().map(|m| m.user.clone()).collect(),
        },
    )
    .unwrap()
}

#[test]
fn remove_starts_epoch_and_removed_member_cannot_read_it() {
    let (a, b, c) = (actor("alice"), actor("bob"), actor("carol"));
    let room = RoomId([1; 16]);
    let s0 = create(&a, room, &[&b, &c], true);
    assert_eq!(s0.epoch, 0);
    assert!(s0.may_read(&b.user, 0));
    let s1 = run(
        Some(&s0),
        room,
        &a,
        Action::Remove {
            user: b.user.clone(),
        },
    )
    .unwrap();
    assert_eq!(s1.epoch, 1);
    assert!(
        s1.may_read(&b.user, 0),
        "removed member keeps what they had"
    );
    assert!(
        !s1.may_read(&b.user, 1),
        "removed member refused the new epoch"
    );
    assert!(s1.may_read(&c.user, 1));
    assert!(!s1.may_read(&c.user, 2), "future epochs do not exist yet");
    assert!(!s1.may_post(&b.user));
}

#[test]
fn view_history_false_starts_epoch_on_add() {
    let (a, b, d) = (actor("alice"), actor("bob"), actor("dave"));
    let room = RoomId([2; 16]);
    let s0 = create(&a, room, &[&b], false);
    let s1 = run(
        Some(&s0),
        room,
        &a,
        Action::Add {
            user: d.user.clone(),
        },
    )
    .unwrap();
    assert_eq!(s1.epoch, 1);
    assert!(!s1.may_read(&d.user, 0));
    assert!(s1.may_read(&d.user, 1));
    // with view_history the newcomer reads everything
    let room2 = RoomId([3; 16]);
    let t0 = create(&a, room2, &[&b], true);
    let t1 = run(
        Some(&t0),
        room2,
        &a,
        Action::Add {
            user: d.user.clone(),
        },
    )
    .unwrap();
    assert_eq!(t1.epoch, 0);
    assert!(t1.may_read(&d.user, 0));
}

#[test]
fn rights_are_enforced() {
    let (a, b, m) = (actor("alice"), actor("bob"), actor("mallory"));
    let room = RoomId([4; 16]);
    let s0 = create(&a, room, &[&b], true);
    assert_eq!(
        run(
            Some(&s0),
            room,
            &b,
            Action::Remove {
                user: a.user.clone()
            }
        ),
        Err(PolicyError::NotOwner(b.user.clone()))
    );
    assert_eq!(
        run(
            Some(&s0),
            room,
            &b,
            Action::Add {
                user: m.user.clone()
            }
        ),
        Err(PolicyError::InviteNotAllowed)
    );
    assert_eq!(
        run(
            Some(&s0),
            room,
            &m,
            Action::Add {
                user: m.user.clone()
            }
        ),
        Err(PolicyError::NotMember(m.user.clone()))
    );
    assert_eq!(
        run(Some(&s0), room, &a, Action::Leave),
        Err(PolicyError::LastOwner)
    );
}

#[test]
fn forged_statements_are_rejected() {
    let (a, b, m) = (actor("alice"), actor("bob"), actor("mallory"));
    let room = RoomId([5; 16]);
    let s0 = create(&a, room, &[&b], true);
    // bad signature: mallory signs, claims alice's key
    let e = stmt(
        &m,
        room,
        Some(&s0),
        Action::Add {
            user: m.user.clone(),
        },
    );
    assert!(matches!(
        apply(Some(&s0), &room, &e, &a.user, &a.keys.sign_pk()),
        Err(PolicyError::BadSignature { .. })
    ));
    // actor claims to be someone else than its certificate says
    let mut st: Statement = serde_json::from_slice(e.body.as_slice()).unwrap();
    st.actor_user = a.user.clone();
    let e2 = sign_statement(&m.keys, &st).unwrap();
    assert!(matches!(
        apply(Some(&s0), &room, &e2, &m.user, &m.keys.sign_pk()),
        Err(PolicyError::ActorMismatch { .. })
    ));
    // broken chain
    let mut st3 = st.clone();
    st3.actor_user = a.user.clone();
    st3.actor = a.keys.device_id();
    st3.prev = Fixed([9; 32]);
    let e3 = sign_statement(&a.keys, &st3).unwrap();
    assert_eq!(
        apply(Some(&s0), &room, &e3, &a.user, &a.keys.sign_pk()).map(|x| x.0),
        Err(PolicyError::BrokenChain { seq: 1 })
    );
    // gap
    st3.prev = Fixed(s0.head);
    st3.seq = 5;
    let e4 = sign_statement(&a.keys, &st3).unwrap();
    assert_eq!(
        apply(Some(&s0), &room, &e4, &a.user, &a.keys.sign_pk()).map(|x| x.0),
        Err(PolicyError::Gap {
            expected: 1,
            got: 5
        })
    );
    // replay of genesis into another room
    let other = RoomId([6; 16]);
    let g = stmt(
        &a,
        room,
        None,
        Action::Create {
            kind: RoomKind::Room,
            settings: Default::default(),
            members: vec![],
        },
    );
    assert_eq!(
        apply(None, &other, &g, &a.user, &a.keys.sign_pk()).map(|x| x.0),
        Err(PolicyError::WrongRoom)
    );
}

#[test]
fn ims_are_fixed() {
    let (a, b, c) = (actor("alice"), actor("bob"), actor("carol"));
    let room = im_room_id(&a.user, &b.user);
    assert_eq!(room, im_room_id(&b.user, &a.user));
    let s0 = run(
        None,
        room,
        &a,
        Action::Create {
            kind: RoomKind::Im,
            settings: Default::default(),
            members: vec![b.user.clone()],
        },
    )
    .unwrap();
    assert!(s0.may_read(&b.user, 0));
    assert_eq!(
        run(
            Some(&s0),
            room,
            &a,
            Action::Add {
                user: c.user.clone()
            }
        ),
        Err(PolicyError::ImImmutable)
    );
    // an IM under a room id that is not the pair's is refused
    assert_eq!(
        run(
            None,
            RoomId([7; 16]),
            &a,
            Action::Create {
                kind: RoomKind::Im,
                settings: Default::default(),
                members: vec![b.user.clone()]
            }
        ),
        Err(PolicyError::BadIm)
    );
    // an IM's mode is chosen at creation; nothing else of its settings is
    let mls = RoomSettings {
        mode: cloister_proto::room::RoomMode::Mls,
        ..Default::default()
    };
    let im = |settings: RoomSettings| {
        run(
            None,
            room,
            &a,
            Action::Create {
                kind: RoomKind::Im,
                settings,
                members: vec![b.user.clone()],
            },
        )
    };
    assert_eq!(
        im(mls.clone()).unwrap().settings.mode,
        cloister_proto::room::RoomMode::Mls
    );
    assert_eq!(
        im(RoomSettings {
            name: "side deal".into(),
            ..mls
        })
        .unwrap_err(),
        PolicyError::ImImmutable
    );
}

#[test]
fn the_im_id_space_cannot_be_squatted() {
    let (a, b, m) = (actor("alice"), actor("bob"), actor("mallory"));
    let room = im_room_id(&a.user, &b.user);
    assert!(is_im_space(&room));
    assert!(!is_im_space(&room_id_from_random([0xff; 16])));
    // a third user creates a group room at alice and bob's IM id, with both in it
    let squat = Action::Create {
        kind: RoomKind::Room,
        settings: Default::default(),
        members: vec![a.user.clone(), b.user.clone()],
    };
    assert_eq!(run(None, room, &m, squat), Err(PolicyError::ImSpace(room)));
    // nor may alice herself make a group room there
    let own = Action::Create {
        kind: RoomKind::Room,
        settings: Default::default(),
        members: vec![b.user.clone()],
    };
    assert_eq!(run(None, room, &a, own), Err(PolicyError::ImSpace(room)));
    // an IM by a third party at that id is not theirs either
    let im = |with: &Actor| Action::Create {
        kind: RoomKind::Im,
        settings: Default::default(),
        members: vec![with.user.clone()],
    };
    assert_eq!(run(None, room, &m, im(&b)), Err(PolicyError::BadIm));
    // an IM with non-default settings is refused
    let named = Action::Create {
        kind: RoomKind::Im,
        settings: RoomSettings {
            name: "rates".into(),
            ..Default::default()
        },
        members: vec![b.user.clone()],
    };
    assert_eq!(run(None, room, &a, named), Err(PolicyError::ImImmutable));
    assert!(run(None, room, &a, im(&b)).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random sequences of actions by random actors never panic, and the state
    /// invariants hold: every member has an open grant at the current epoch,
    /// nobody else does, owners are members.
    #[test]
    fn random_logs_keep_invariants(ops in proptest::collection::vec((0usize..4, 0usize..6, 0usize..4), 1..40)) {
        let actors: Vec<Actor> = ["a", "b", "c", "d"].iter().map(|n| actor(n)).collect();
        let room = RoomId([8; 16]);
        let mut s = create(&actors[0], room, &[&actors[1]], false);
        for (who, what, target) in ops {
            let t = actors[target].user.clone();
            let action = match what {
                0 => Action::Add { user: t },
                1 => Action::Remove { user: t },
                2 => Action::Leave,
                3 => Action::Promote { user: t },
                4 => Action::Settings { settings: RoomSettings { view_history: target % 2 == 0, ..Default::default() } },
                _ => Action::Create { kind: RoomKind::Room, settings: Default::default(), members: vec![] },
            };
            if let Ok(n) = run(Some(&s), room, &actors[who], action) {
                prop_assert!(n.epoch >= s.epoch);
                s = n;
            }
            for a in &actors {
                prop_assert_eq!(s.may_read(&a.user, s.epoch), s.members.contains(&a.user));
            }
            prop_assert!(s.owners.is_subset(&s.members));
        }
    }
}

/// The KM's statements, signed with its key as `KM_DEVICE`.
fn km_run(
    s: &RoomState,
    km: &cloister_crypto::KmSigner,
    action: Action,
) -> Result<RoomState, PolicyError> {
    let st = Statement {
        room: s.room,
        seq: s.seq + 1,
        prev: Fixed(s.head),
        actor: KM_DEVICE,
        actor_user: km_user(&s.tenant),
        ts: 1,
        action,
        connections: Vec::new(),
    };
    let e = cloister_crypto::signed::sign_statement_km(km, &st).unwrap();
    apply(Some(s), &s.room, &e, &km_user(&s.tenant), &km.public()).map(|(n, _)| n)
}

#[test]
fn only_the_km_evicts_bans_and_locks() {
    let (a, b) = (actor("alice"), actor("bob"));
    let km = cloister_crypto::KmSigner::generate().unwrap();
    let room = RoomId([9; 16]);
    let s0 = create(&a, room, &[&b], true);
    // a member cannot sign KM actions, even as owner
    let e = run(
        Some(&s0),
        room,
        &a,
        Action::Lock {
            by: a.user.clone(),
            justification: "x".into(),
        },
    );
    assert!(matches!(e, Err(PolicyError::KmOnly(_))), "{e:?}");
    // a statement naming the KM but signed by a device fails its signature
    let st = Statement {
        room,
        seq: 1,
        prev: Fixed(s0.head),
        actor: KM_DEVICE,
        actor_user: km_user(&s0.tenant),
        ts: 1,
        action: Action::Unlock {
            by: a.user.clone(),
            justification: "x".into(),
        },
        connections: Vec::new(),
    };
    let body = serde_json::to_vec(&st).unwrap();
    let forged = SignedStatement {
        actor: KM_DEVICE,
        body: cloister_proto::b64::Bytes(body.clone()),
        sig: Fixed(a.keys.sign(cloister_crypto::signed::STATEMENT, &body)),
    };
    assert!(matches!(
        apply(
            Some(&s0),
            &room,
            &forged,
            &km_user(&s0.tenant),
            &km.public()
        ),
        Err(PolicyError::BadSignature { .. })
    ));
    // lock: nobody posts or changes anything; unlock needs a lock
    let locked = km_run(
        &s0,
        &km,
        Action::Lock {
            by: a.user.clone(),
            justification: "case 1".into(),
        },
    )
    .unwrap();
    assert!(!locked.may_post(&a.user));
    assert!(locked.why_not_post(&a.user).unwrap().contains("case 1"));
    let e = run(
        Some(&locked),
        room,
        &a,
        Action::Add {
            user: actor("carl").user,
        },
    );
    assert!(matches!(e, Err(PolicyError::Locked { .. })), "{e:?}");
    assert!(
        km_run(
            &locked,
            &km,
            Action::Lock {
                by: a.user.clone(),
                justification: "again".into()
            }
        )
        .is_err()
    );
    let open = km_run(
        &locked,
        &km,
        Action::Unlock {
            by: a.user.clone(),
            justification: "done".into(),
        },
    )
    .unwrap();
    assert!(open.may_post(&a.user));
    // ban: a new epoch without them; never re-added; evict: may come back
    let banned = km_run(
        &open,
        &km,
        Action::Ban {
            user: b.user.clone(),
            by: a.user.clone(),
            justification: "leak".into(),
        },
    )
    .unwrap();
    assert_eq!(banned.epoch, open.epoch + 1);
    assert!(!banned.may_read(&b.user, banned.epoch) && banned.may_read(&b.user, 0));
    let e = run(
        Some(&banned),
        room,
        &a,
        Action::Add {
            user: b.user.clone(),
        },
    );
    assert!(matches!(e, Err(PolicyError::Banned(_))), "{e:?}");
    // rekey: a new epoch, members unchanged; only the KM signs it, with a reason
    let rekeyed = km_run(
        &banned,
        &km,
        Action::Rekey {
            by: a.user.clone(),
            reason: "device lost".into(),
        },
    )
    .unwrap();
    assert_eq!(rekeyed.epoch, banned.epoch + 1);
    assert_eq!(rekeyed.members, banned.members);
    assert!(rekeyed.may_read(&a.user, rekeyed.epoch) && rekeyed.may_read(&a.user, 0));
    assert!(
        km_run(
            &banned,
            &km,
            Action::Rekey {
                by: a.user.clone(),
                reason: " ".into()
            }
        )
        .is_err()
    );
    let e = run(
        Some(&banned),
        room,
        &a,
        Action::Rekey {
            by: a.user.clone(),
            reason: "forged".into(),
        },
    );
    assert!(matches!(e, Err(PolicyError::KmOnly(_))), "{e:?}");
    let c = actor("carl");
    let s = run(
        Some(&banned),
        room,
        &a,
        Action::Add {
            user: c.user.clone(),
        },
    )
    .unwrap();
    let ev = km_run(
        &s,
        &km,
        Action::Evict {
            user: c.user.clone(),
            reason: "barrier".into(),
        },
    )
    .unwrap();
    assert!(!ev.is_member(&c.user));
    run(
        Some(&ev),
        room,
        &a,
        Action::Add {
            user: c.user.clone(),
        },
    )
    .unwrap();
    // the KM signs nothing else
    assert!(
        km_run(
            &s0,
            &km,
            Action::Add {
                user: c.user.clone()
            }
        )
        .is_err()
    );
}

#[test]
fn room_settings_constraints() {
    let ok = |s: RoomSettings| check_settings(None, &s, 1);
    assert!(
        ok(RoomSettings {
            public: true,
            discoverable: true,
            ..Default::default()
        })
        .is_ok()
    );
    assert!(
        ok(RoomSettings {
            public: true,
            ..Default::default()
        })
        .is_err()
    );
    assert!(
        ok(RoomSettings {
            external: true,
            discoverable: true,
            ..Default::default()
        })
        .is_err()
    );
    assert!(
        ok(RoomSettings {
            max_members: Some(1),
            ..Default::default()
        })
        .is_err()
    );
    assert!(
        check_settings(
            None,
            &RoomSettings {
                max_members: Some(3),
                ..Default::default()
            },
            4
        )
        .is_err()
    );
    let cp = RoomSettings {
        copy_protected: true,
        ..Default::default()
    };
    assert!(check_settings(Some(&cp), &RoomSettings::default(), 1).is_err());
    assert!(check_settings(Some(&RoomSettings::default()), &cp, 1).is_ok());
    let ext = RoomSettings {
        external: true,
        ..Default::default()
    };
    assert!(check_settings(Some(&ext), &RoomSettings::default(), 1).is_err());
    // public rooms are joined without invitation; others are not
    let (a, b) = (actor("alice"), actor("bob"));
    let room = RoomId([3; 16]);
    let s = run(
        None,
        room,
        &a,
        Action::Create {
            kind: RoomKind::Room,
            settings: RoomSettings {
                public: true,
                discoverable: true,
                max_members: Some(2),
                ..Default::default()
            },
            members: vec![],
        },
    )
    .unwrap();
    let s = run(Some(&s), room, &b, Action::Join).unwrap();
    assert!(s.is_member(&b.user));
    assert!(matches!(
        run(Some(&s), room, &actor("carl"), Action::Join),
        Err(PolicyError::TooManyMembers)
    ));
    let private = create(&a, RoomId([4; 16]), &[], true);
    assert!(matches!(
        run(Some(&private), RoomId([4; 16]), &b, Action::Join),
        Err(PolicyError::NotPublic)
    ));
    // demote: owners only, never the last owner
    let s = run(
        Some(&s),
        room,
        &a,
        Action::Promote {
            user: b.user.clone(),
        },
    )
    .unwrap();
    let s = run(
        Some(&s),
        room,
        &a,
        Action::Demote {
            user: b.user.clone(),
        },
    )
    .unwrap();
    assert!(!s.owners.contains(&b.user));
    assert!(matches!(
        run(
            Some(&s),
            room,
            &a,
            Action::Demote {
                user: a.user.clone()
            }
        ),
        Err(PolicyError::LastOwner)
    ));
}

/// A bridged room: one firm's users and its contact, through a gateway of
/// the creator's firm that is a member from the start; never public,
/// discoverable, external or MLS; its bridge fixed.
#[test]
fn bridged_rooms_are_fixed_and_private() {
    use cloister_proto::room::{Bridge, RoomMode};
    let (a, g) = (actor("alice"), actor("gateway"));
    let bridge = |gateway: &UserId| Bridge {
        network: "matrix".into(),
        contact: "@mat:example.org".into(),
        gateway: gateway.clone(),
    };
    let settings = |b: Bridge| RoomSettings {
        bridge: Some(b),
        ..Default::default()
    };
    let ok = |s: RoomSettings| check_settings(None, &s, 2);
    assert!(ok(settings(bridge(&g.user))).is_ok());
    for bad in [
        RoomSettings {
            public: true,
            discoverable: true,
            ..settings(bridge(&g.user))
        },
        RoomSettings {
            discoverable: true,
            ..settings(bridge(&g.user))
        },
        RoomSettings {
            external: true,
            ..settings(bridge(&g.user))
        },
        RoomSettings {
            mode: RoomMode::Mls,
            ..settings(bridge(&g.user))
        },
        settings(Bridge {
            network: "Matrix!".into(),
            ..bridge(&g.user)
        }),
        settings(Bridge {
            contact: "@mat\n:example.org".into(),
            ..bridge(&g.user)
        }),
        settings(Bridge {
            contact: "x".repeat(Bridge::MAX_CONTACT + 1),
            ..bridge(&g.user)
        }),
    ] {
        assert!(ok(bad.clone()).is_err(), "{bad:?}");
    }
    let create = |s: RoomSettings, members: Vec<UserId>| {
        run(
            None,
            RoomId([9; 16]),
            &a,
            Action::Create {
                kind: RoomKind::Room,
                settings: s,
                members,
            },
        )
    };
    // the gateway is a member from the start, and of the creator's firm
    let s0 = create(settings(bridge(&g.user)), vec![g.user.clone()]).unwrap();
    assert!(is_gateway_of(&s0, &g.user));
    assert!(!is_gateway_of(&s0, &a.user));
    assert!(create(settings(bridge(&g.user)), vec![]).is_err());
    let other: UserId = "gateway@bank".parse().unwrap();
    assert!(create(settings(bridge(&other)), vec![other.clone()]).is_err());
    // the bridge cannot change
    let moved = run(
        Some(&s0),
        RoomId([9; 16]),
        &a,
        Action::Settings {
            settings: settings(Bridge {
                contact: "@eve:example.org".into(),
                ..bridge(&g.user)
            }),
        },
    );
    assert!(moved.is_err());
    // only the room's gateway, with the role, speaks for its contact
    use cloister_proto::km::Role;
    assert!(check_relayed(&s0, &g.user, &[Role::Gateway], "matrix", "@mat:example.org").is_ok());
    for (who, roles, net, from) in [
        (&a.user, vec![Role::Gateway], "matrix", "@mat:example.org"),
        (&g.user, vec![Role::User], "matrix", "@mat:example.org"),
        (&g.user, vec![Role::Gateway], "matrix", "@eve:example.org"),
        (&g.user, vec![Role::Gateway], "sms", "@mat:example.org"),
    ] {
        assert!(
            check_relayed(&s0, who, &roles, net, from).is_err(),
            "{who} {net} {from}"
        );
    }
}
