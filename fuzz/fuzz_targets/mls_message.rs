//! Bytes a member or the server takes from the network in an MLS room: a
//! key package (the server validates uploads), a commit's log binding
//! (read before anything is verified), and any MLS message processed by a
//! member of a real three-member group and by the server's observer. None
//! may panic; a commit that gets through must have passed the membership
//! check.
#![no_main]

use cloister_crypto::{DeviceKeys, KmSigner};
use cloister_mls::{DeviceStore, Expected, KmIdentity, LogBinding, Member, Observed, Observer};
use cloister_proto::b64::Fixed;
use cloister_proto::km::DeviceCert;
use cloister_proto::{RoomId, UserId};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const ROOM: RoomId = RoomId([5; 16]);

struct World {
    bob: Member,
    observer: Observer,
    observed_state: Vec<u8>,
    expected: Expected,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let km = KmSigner::generate().unwrap();
        let tenant: cloister_proto::TenantId = "acme".parse().unwrap();
        let identity = KmIdentity::new([(tenant.clone(), km.public())]);
        let device = |name: &str| {
            let keys = DeviceKeys::generate().unwrap();
            let user: UserId = format!("{name}@acme").parse().unwrap();
            let cert = DeviceCert {
                tenant: tenant.clone(),
                user: user.clone(),
                device: keys.device_id(),
                sign_pk: Fixed(keys.sign_pk()),
                hpke_pk: Fixed(keys.hpke_pk()),
                roles: vec![],
                issued_at: 0,
                not_after: u64::MAX / 2,
                jurisdiction: String::new(),
            };
            let signed = cloister_crypto::signed::sign_cert(&km, &cert).unwrap();
            let m = Member::new(&keys, &signed, identity.clone(), DeviceStore::default()).unwrap();
            (user, m)
        };
        let (a, alice) = device("alice");
        let (b, bob) = device("bob");
        let (c, carol) = device("carol");
        let info = alice.create(&ROOM).unwrap();
        let observer = Observer::new(identity.clone());
        let mut observed = observer.observe(&ROOM, &info).unwrap();
        let expected = Expected {
            binding: LogBinding { seq: 1, head: [1; 32] },
            members: [a, b, c].into(),
            barred: Default::default(),
        };
        let kps = vec![
            bob.key_packages(1).unwrap().remove(0),
            carol.key_packages(1).unwrap().remove(0),
        ];
        let staged = alice.commit(&ROOM, &kps, &[], &expected).unwrap();
        observer
            .apply_commit(&mut observed, &staged.commit, &expected)
            .unwrap();
        let welcome = staged.welcome.clone().unwrap();
        alice.merge(staged).unwrap();
        bob.join(&welcome).unwrap();
        World {
            bob,
            observer,
            observed_state: observed.snapshot().unwrap(),
            expected,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let _ = LogBinding::decode(data);
    let _ = cloister_mls::rules::peek_binding(data);
    let _ = Observed::added_devices(data);
    let _ = w.observer.key_package(data);
    // the server's side, on a fresh copy of the group each time
    if let Ok(mut observed) = w.observer.load(&w.observed_state)
        && let Ok(changes) = w.observer.apply_commit(&mut observed, data, &w.expected)
    {
        // no change can pass: adds need a KM-signed certificate and every
        // member is allowed, so nothing may be removed
        assert!(changes.is_empty(), "{changes:?}");
    }
    // a member's side (its state changes only when a message is accepted)
    let _ = w.bob.process(&ROOM, data, |_| Ok(w.expected.clone()));
});
