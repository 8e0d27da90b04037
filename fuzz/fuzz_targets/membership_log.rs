//! Room membership logs as the KM, the server and every client replay them.
//! The input is tried as signed entries as they come, and as a sequence of
//! actions by three users and the KM that are chained and signed here, so
//! the policy behind the signature check (epochs, grants, settings,
//! locks, bans, evictions) is reached. No sequence may panic, and every
//! accepted state must satisfy the invariants checked below.
#![no_main]

use cloister_crypto::signed::{entry_hash, sign_statement, sign_statement_km};
use cloister_crypto::{DeviceKeys, KmSigner};
use cloister_policy::{RoomState, apply};
use cloister_proto::RoomId;
use cloister_proto::b64::Fixed;
use cloister_proto::room::{Action, KM_DEVICE, SignedStatement, Statement};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[derive(Deserialize)]
struct Step {
    who: u8,
    #[serde(default)]
    ts: u64,
    action: Action,
}

fuzz_target!(|data: &[u8]| {
    let room = RoomId([1u8; 16]);
    let Ok(km) = KmSigner::from_secret(&[2u8; 32]) else {
        return;
    };
    let users: Vec<cloister_proto::UserId> = ["alice@acme", "bob@acme", "carol@acme"]
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect();
    let keys: Vec<DeviceKeys> = (0..3u8)
        .filter_map(|i| DeviceKeys::from_secrets(&[10 + i; 32], &[20 + i; 32]).ok())
        .collect();
    if users.len() != 3 || keys.len() != 3 {
        return;
    }
    let Ok(tenant) = "acme".parse() else { return };
    let km_user = cloister_policy::km_user(&tenant);

    // entries as they arrive from a server
    if let Ok(entries) = serde_json::from_slice::<Vec<SignedStatement>>(data) {
        let mut state: Option<RoomState> = None;
        for e in entries.iter().take(64) {
            let (user, pk) = if e.actor == KM_DEVICE {
                (&km_user, km.public())
            } else {
                (&users[0], keys[0].sign_pk())
            };
            if let Ok((next, _)) = apply(state.as_ref(), &room, e, user, &pk) {
                state = Some(next);
            }
        }
    }

    // actions, chained and signed here
    let Ok(steps) = serde_json::from_slice::<Vec<Step>>(data) else {
        return;
    };
    let mut state: Option<RoomState> = None;
    for s in steps.iter().take(64) {
        let i = usize::from(s.who % 4);
        let (seq, prev) = state
            .as_ref()
            .map_or((0, [0u8; 32]), |st| (st.seq + 1, st.head));
        let (actor, actor_user) = if i == 3 {
            (KM_DEVICE, km_user.clone())
        } else {
            (keys[i].device_id(), users[i].clone())
        };
        let st = Statement {
            room,
            seq,
            prev: Fixed(prev),
            actor,
            actor_user: actor_user.clone(),
            ts: s.ts,
            action: s.action.clone(),
            connections: Vec::new(),
        };
        let (entry, pk) = if i == 3 {
            (sign_statement_km(&km, &st), km.public())
        } else {
            (sign_statement(&keys[i], &st), keys[i].sign_pk())
        };
        let Ok(entry) = entry else { continue };
        if let Ok((next, _)) = apply(state.as_ref(), &room, &entry, &actor_user, &pk) {
            assert_eq!(next.seq, seq, "the state moves one entry at a time");
            assert_eq!(
                next.head,
                entry_hash(&entry),
                "the head is the entry's hash"
            );
            assert!(next.owners.is_subset(&next.members), "owners are members");
            assert!(
                next.banned.is_disjoint(&next.members),
                "a banned user is not a member"
            );
            if let Some(prev) = &state {
                assert!(next.epoch >= prev.epoch, "epochs never go back");
                if prev.settings.copy_protected {
                    assert!(next.settings.copy_protected, "copy protection stays");
                }
            }
            state = Some(next);
        }
    }
});
