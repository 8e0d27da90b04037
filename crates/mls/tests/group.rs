#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The MLS core against itself: members and the server's observer run the
//! same commit rules; forward secrecy and post-compromise security hold
//! for a stolen device state.

use cloister_crypto::{DeviceKeys, KmSigner};
use cloister_mls::{
    Change, CommitRefusal, DeviceStore, Error, Expected, KmIdentity, LogBinding, Member, Observer,
    Received,
};
use cloister_proto::b64::Fixed;
use cloister_proto::km::{DeviceCert, SignedCert};
use cloister_proto::{DeviceId, RoomId, TenantId, UserId};
use std::collections::BTreeSet;

struct Firm {
    km: KmSigner,
    tenant: TenantId,
}

impl Firm {
    fn new(name: &str) -> Firm {
        Firm {
            km: KmSigner::generate().unwrap(),
            tenant: name.parse().unwrap(),
        }
    }
    fn identity(&self) -> KmIdentity {
        KmIdentity::new([(self.tenant.clone(), self.km.public())])
    }
    fn cert(&self, user: &str, keys: &DeviceKeys, not_after: u64) -> SignedCert {
        let cert = DeviceCert {
            tenant: self.tenant.clone(),
            user: format!("{user}@{}", self.tenant).parse().unwrap(),
            device: keys.device_id(),
            sign_pk: Fixed(keys.sign_pk()),
            hpke_pk: Fixed(keys.hpke_pk()),
            roles: vec![],
            issued_at: 0,
            not_after,
            jurisdiction: String::new(),
        };
        cloister_crypto::signed::sign_cert(&self.km, &cert).unwrap()
    }
    fn device(&self, user: &str) -> Dev {
        let keys = DeviceKeys::generate().unwrap();
        let cert = self.cert(user, &keys, u64::MAX / 2);
        let member = Member::new(&keys, &cert, self.identity(), DeviceStore::default()).unwrap();
        Dev {
            user: format!("{user}@{}", self.tenant).parse().unwrap(),
            keys,
            cert,
            member,
        }
    }
}

struct Dev {
    user: UserId,
    keys: DeviceKeys,
    cert: SignedCert,
    member: Member,
}

impl Dev {
    fn id(&self) -> DeviceId {
        self.member.device()
    }
    fn kp(&self) -> Vec<u8> {
        self.member.key_packages(1).unwrap().remove(0)
    }
}

fn expected(seq: u64, members: &[&UserId]) -> Expected {
    Expected {
        binding: LogBinding {
            seq,
            head: [seq as u8; 32],
        },
        members: members.iter().map(|u| (*u).clone()).collect(),
        barred: BTreeSet::new(),
    }
}

const ROOM: RoomId = RoomId([7; 16]);

/// alice creates the room's group and adds bob and carol; the server
/// follows along.
fn three() -> (Firm, Dev, Dev, Dev, Observer, cloister_mls::Observed) {
    let firm = Firm::new("acme");
    let (a, b, c) = (
        firm.device("alice"),
        firm.device("bob"),
        firm.device("carol"),
    );
    let info = a.member.create(&ROOM).unwrap();
    let observer = Observer::new(firm.identity());
    let mut observed = observer.observe(&ROOM, &info).unwrap();
    let exp = expected(1, &[&a.user, &b.user, &c.user]);
    let staged = a
        .member
        .commit(&ROOM, &[b.kp(), c.kp()], &[], &exp)
        .unwrap();
    assert_eq!(staged.changes.len(), 2);
    let changes = observer
        .apply_commit(&mut observed, &staged.commit, &exp)
        .unwrap();
    assert_eq!(changes, staged.changes);
    let welcome = staged.welcome.clone().unwrap();
    assert_eq!(a.member.merge(staged).unwrap(), 1);
    assert_eq!(b.member.join(&welcome).unwrap(), (ROOM, 1));
    assert_eq!(c.member.join(&welcome).unwrap(), (ROOM, 1));
    assert_eq!(observed.epoch(), 1);
    (firm, a, b, c, observer, observed)
}

fn send(from: &Dev, text: &str) -> Vec<u8> {
    from.member
        .encrypt(&ROOM, text.as_bytes(), b"id")
        .unwrap()
        .1
}

fn read(to: &Dev, msg: &[u8]) -> Result<String, Error> {
    match to.member.process(&ROOM, msg, |_| Err(Error::NoGroup))? {
        Received::Application { data, .. } => Ok(String::from_utf8(data.to_vec()).unwrap()),
        other => panic!("not an application message: {other:?}"),
    }
}

fn receive_commit(to: &Dev, commit: &[u8], exp: &Expected) -> Result<Received, Error> {
    to.member.process(&ROOM, commit, |_| Ok(exp.clone()))
}

#[test]
fn members_exchange_and_name_the_sender() {
    let (_f, a, b, c, _o, observed) = three();
    let m = send(&b, "buy 100 ACME");
    assert!(!m.windows(4).any(|w| w == b"ACME"));
    match a.member.process(&ROOM, &m, |_| unreachable!()).unwrap() {
        Received::Application {
            user, device, aad, ..
        } => {
            assert_eq!(user, b.user);
            assert_eq!(device, b.id());
            assert_eq!(aad, b"id");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(read(&c, &m).unwrap(), "buy 100 ACME");
    let devices: Vec<_> = observed.roster().into_iter().map(|l| l.device).collect();
    assert_eq!(devices, vec![a.id(), b.id(), c.id()]);
}

#[test]
fn removal_gives_forward_secrecy_to_the_rest() {
    let (_f, a, b, c, observer, mut observed) = three();
    // The log removed carol at entry 2.
    let exp = expected(2, &[&a.user, &b.user]);
    let staged = a.member.commit(&ROOM, &[], &[c.id()], &exp).unwrap();
    assert_eq!(
        staged.changes,
        vec![Change::Remove {
            user: c.user.clone(),
            device: c.id()
        }]
    );
    observer
        .apply_commit(&mut observed, &staged.commit, &exp)
        .unwrap();
    let commit = staged.commit.clone();
    a.member.merge(staged).unwrap();
    assert!(matches!(
        receive_commit(&b, &commit, &exp).unwrap(),
        Received::Commit { epoch: 2, .. }
    ));
    match receive_commit(&c, &commit, &exp).unwrap() {
        Received::Commit { removed, .. } => assert!(removed),
        other => panic!("{other:?}"),
    }
    assert!(!c.member.has_group(&ROOM));
    let m = send(&a, "after carol left");
    assert_eq!(read(&b, &m).unwrap(), "after carol left");
    assert!(read(&c, &m).is_err(), "a removed member reads nothing new");
}

#[test]
fn a_commit_the_log_does_not_allow_is_refused_by_server_and_members() {
    let (firm, a, b, c, observer, mut observed) = three();
    let mallory = firm.device("mallory");
    // A patched client: bob adds mallory, whom the log never let in; his
    // own check is bypassed by claiming a state that includes her.
    let lying = expected(1, &[&a.user, &b.user, &c.user, &mallory.user]);
    let staged = b
        .member
        .commit(&ROOM, &[mallory.kp()], &[], &lying)
        .unwrap();
    let truth = expected(1, &[&a.user, &b.user, &c.user]);
    let refused = |r: Result<_, Error>| match r {
        Err(Error::Refused(CommitRefusal::NotAMember { user })) => assert_eq!(user, mallory.user),
        other => panic!("{other:?}"),
    };
    refused(
        observer
            .apply_commit(&mut observed, &staged.commit, &truth)
            .map(|_| ()),
    );
    refused(receive_commit(&a, &staged.commit, &truth).map(|_| ()));
    // Nothing was applied: the group is still at epoch 1 everywhere.
    assert_eq!(observed.epoch(), 1);
    assert_eq!(a.member.epoch(&ROOM).unwrap(), 1);
}

#[test]
fn revoked_devices_unjustified_removals_and_wrong_log_entries_are_refused() {
    let (firm, a, b, c, observer, mut observed) = three();
    let bob2 = firm.device("bob");
    let mut exp = expected(3, &[&a.user, &b.user, &c.user]);
    exp.barred.insert(bob2.id());
    // Adding a revoked device: refused by the committer's own check...
    match a.member.commit(&ROOM, &[bob2.kp()], &[], &exp) {
        Err(Error::Refused(CommitRefusal::Barred { device, .. })) => assert_eq!(device, bob2.id()),
        other => panic!("{other:?}"),
    }
    // ...and by the server when a patched client sends it anyway.
    let mut lying = exp.clone();
    lying.barred.clear();
    let staged = a.member.commit(&ROOM, &[bob2.kp()], &[], &lying).unwrap();
    assert!(matches!(
        observer.apply_commit(&mut observed, &staged.commit, &exp),
        Err(Error::Refused(CommitRefusal::Barred { .. }))
    ));
    // Removing carol while the log keeps her.
    let staged = a
        .member
        .commit(&ROOM, &[], &[c.id()], &expected(3, &[&a.user, &b.user]))
        .unwrap();
    assert!(matches!(
        observer.apply_commit(&mut observed, &staged.commit, &exp),
        Err(Error::Refused(CommitRefusal::UnjustifiedRemove { .. }))
    ));
    // A commit bound to another log entry than the verified one.
    let staged = a
        .member
        .commit(&ROOM, &[], &[], &expected(2, &[&a.user]))
        .unwrap();
    assert!(matches!(
        observer.apply_commit(&mut observed, &staged.commit, &exp),
        Err(Error::Refused(CommitRefusal::WrongLogEntry {
            got: 2,
            expected: 3
        }))
    ));
    // A leaf whose certificate another KM signed.
    let other = Firm::new("acme");
    let forged = other.device("bob");
    assert!(matches!(
        a.member.commit(&ROOM, &[forged.kp()], &[], &exp),
        Err(Error::Mls(_)) | Err(Error::Refused(CommitRefusal::BadCredential(_)))
    ));
    let _ = (b, bob2.keys, bob2.cert);
}

#[test]
fn only_the_first_commit_of_an_epoch_wins_and_replays_are_stale() {
    let (_f, a, b, _c, observer, mut observed) = three();
    let exp = expected(1, &[&a.user, &b.user, &_c.user]);
    let first = a.member.commit(&ROOM, &[], &[], &exp).unwrap();
    let second = b.member.commit(&ROOM, &[], &[], &exp).unwrap();
    observer
        .apply_commit(&mut observed, &first.commit, &exp)
        .unwrap();
    assert!(matches!(
        observer.apply_commit(&mut observed, &second.commit, &exp),
        Err(Error::Refused(CommitRefusal::StaleEpoch {
            got: 1,
            current: 2
        }))
    ));
    let commit = first.commit.clone();
    a.member.merge(first).unwrap();
    receive_commit(&b, &commit, &exp).unwrap();
    // The same commit again, to the server and to a member.
    assert!(matches!(
        observer.apply_commit(&mut observed, &commit, &exp),
        Err(Error::Refused(CommitRefusal::StaleEpoch { .. }))
    ));
    assert!(matches!(
        receive_commit(&b, &commit, &exp),
        Err(Error::Refused(CommitRefusal::StaleEpoch { .. }))
    ));
}

/// A device state stolen at epoch n: after the victim's update it reads
/// nothing of epoch n+1 (post-compromise security), and a message whose
/// key the victim used before the theft is unreadable from the stolen copy
/// (forward secrecy).
#[test]
fn a_stolen_state_loses_the_future_and_the_used_past() {
    let (firm, a, b, c, _observer, _observed) = three();
    let m1 = send(&a, "epoch 1, read before the theft");
    let m2 = send(&a, "epoch 1, not yet read");
    assert_eq!(read(&b, &m1).unwrap(), "epoch 1, read before the theft");

    // The thief copies bob's whole MLS state (what the SDK seals to disk).
    let stolen = b.member.store().export();
    let thief = Member::new(
        &b.keys,
        &b.cert,
        firm.identity(),
        DeviceStore::import(&stolen).unwrap(),
    )
    .unwrap();
    let thief_reads = |m: &[u8]| match thief.process(&ROOM, m, |_| Err(Error::NoGroup)) {
        Ok(Received::Application { data, .. }) => Some(String::from_utf8(data.to_vec()).unwrap()),
        _ => None,
    };
    // The stolen state is real: it opens what bob had not read yet...
    assert_eq!(thief_reads(&m2).as_deref(), Some("epoch 1, not yet read"));
    // ...but not what bob had read: that key is gone.
    assert_eq!(thief_reads(&m1), None);

    // bob updates his leaf (a commit with no changes, a fresh path).
    let exp = expected(1, &[&a.user, &b.user, &c.user]);
    let update = b.member.commit(&ROOM, &[], &[], &exp).unwrap();
    let commit = update.commit.clone();
    b.member.merge(update).unwrap();
    receive_commit(&a, &commit, &exp).unwrap();
    receive_commit(&c, &commit, &exp).unwrap();
    let m3 = send(&a, "epoch 2, after bob's update");
    assert_eq!(read(&b, &m3).unwrap(), "epoch 2, after bob's update");
    assert_eq!(read(&c, &m3).unwrap(), "epoch 2, after bob's update");
    // The thief sees the commit but cannot follow it, nor read epoch 2.
    assert!(thief.process(&ROOM, &commit, |_| Ok(exp.clone())).is_err());
    assert_eq!(thief_reads(&m3), None);
}

#[test]
fn the_device_store_keeps_only_a_few_prior_epochs() {
    let (_f, a, b, c, _o, _obs) = three();
    let exp = expected(1, &[&a.user, &b.user, &c.user]);
    for _ in 0..5 {
        let s = a.member.commit(&ROOM, &[], &[], &exp).unwrap();
        let commit = s.commit.clone();
        a.member.merge(s).unwrap();
        receive_commit(&b, &commit, &exp).unwrap();
    }
    let kept = b.member.store().retained_epochs(&ROOM.0);
    assert!(
        kept.len() <= cloister_mls::storage::PRIOR_EPOCHS,
        "{kept:?}"
    );
    assert_eq!(b.member.epoch(&ROOM).unwrap(), 6);
}
