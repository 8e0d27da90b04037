//! MLS group operations at 10 to 10,000 members, with Cloister's
//! credentials (KM-signed certificates, checked on every new leaf) and the
//! membership-log check on every commit.
//!
//! Per size N: creating the commit that adds one member / removes one
//! member (the committer's cost), processing it (each other member's cost),
//! and, printed once, the Welcome size, the time to add N-1 members in one
//! commit and the time for one device to join from that Welcome.
//!
//! `CLOISTER_MLS_BENCH_SIZES=10,100` picks sizes (default 10,100,1000,10000).
//! Figures: docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloister_crypto::{DeviceKeys, KmSigner};
use cloister_mls::{DeviceStore, Expected, KmIdentity, LogBinding, Member};
use cloister_proto::b64::Fixed;
use cloister_proto::km::DeviceCert;
use cloister_proto::{RoomId, TenantId, UserId};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const ROOM: RoomId = RoomId([3; 16]);

struct Firm {
    km: KmSigner,
    tenant: TenantId,
}

impl Firm {
    fn identity(&self) -> KmIdentity {
        KmIdentity::new([(self.tenant.clone(), self.km.public())])
    }
    fn device(&self, i: usize) -> (UserId, Member, DeviceKeys, cloister_proto::km::SignedCert) {
        let keys = DeviceKeys::generate().unwrap();
        let user: UserId = format!("u{i}@{}", self.tenant).parse().unwrap();
        let cert = DeviceCert {
            tenant: self.tenant.clone(),
            user: user.clone(),
            device: keys.device_id(),
            sign_pk: Fixed(keys.sign_pk()),
            hpke_pk: Fixed(keys.hpke_pk()),
            roles: vec![],
            issued_at: 0,
            not_after: u64::MAX / 2,
            jurisdiction: String::new(),
        };
        let signed = cloister_crypto::signed::sign_cert(&self.km, &cert).unwrap();
        let m = Member::new(&keys, &signed, self.identity(), DeviceStore::default()).unwrap();
        (user, m, keys, signed)
    }
}

fn sizes() -> Vec<usize> {
    std::env::var("CLOISTER_MLS_BENCH_SIZES")
        .unwrap_or_else(|_| "10,100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n >= 3)
        .collect()
}

fn bench(c: &mut Criterion) {
    let firm = Firm {
        km: KmSigner::generate().unwrap(),
        tenant: "acme".parse().unwrap(),
    };
    for n in sizes() {
        // alice (0) creates, bob (1) is the member who processes, the rest
        // fill the group; "new" is the one added in the add benchmark
        let devices: Vec<_> = (0..n).map(|i| firm.device(i)).collect();
        let (new_user, new_member, _, _) = firm.device(n);
        let mut members: BTreeSet<UserId> = devices.iter().map(|d| d.0.clone()).collect();
        members.insert(new_user.clone());
        let expected = Expected {
            binding: LogBinding {
                seq: 1,
                head: [1; 32],
            },
            members,
            barred: BTreeSet::new(),
        };
        let alice = &devices[0].1;
        alice.create(&ROOM).unwrap();
        let kps: Vec<Vec<u8>> = devices[1..]
            .iter()
            .map(|d| d.1.key_packages(1).unwrap().remove(0))
            .collect();
        let t = Instant::now();
        let staged = alice.commit(&ROOM, &kps, &[], &expected).unwrap();
        let add_all = t.elapsed();
        let welcome = staged.welcome.clone().unwrap();
        alice.merge(staged).unwrap();
        let bob = &devices[1].1;
        let t = Instant::now();
        bob.join(&welcome).unwrap();
        let join = t.elapsed();
        eprintln!(
            "mls n={n}: add {} members in one commit {:.1} ms; join from its Welcome ({} KiB) {:.1} ms",
            n - 1,
            add_all.as_secs_f64() * 1e3,
            welcome.len() / 1024,
            join.as_secs_f64() * 1e3
        );

        // A freshly built group's tree is mostly blank, so its first
        // removal encrypts to nearly every leaf; a group in use is not.
        let blank = alice.commit(&ROOM, &[], &[devices[n - 1].1.device()], &{
            let mut e = expected.clone();
            e.members.remove(&devices[n - 1].0);
            e
        });
        let blank = blank.unwrap();
        eprintln!(
            "mls n={n}: a removal on the freshly built (blank) tree: commit {} KiB",
            blank.commit.len() / 1024
        );
        // Populate the tree as use does: one member in each of alice's
        // copath subtrees (leaves 1, 2, 4, 8, …) commits an update, and
        // everyone who keeps state processes it.
        let mut updates: Vec<Vec<u8>> = Vec::new();
        let mut k = 1usize;
        while k < n {
            let x = &devices[k].1;
            if k != 1 {
                x.join(&welcome).unwrap();
                for u in &updates {
                    x.process(&ROOM, u, |_| Ok(expected.clone())).unwrap();
                }
            }
            let up = x.commit(&ROOM, &[], &[], &expected).unwrap();
            let commit = up.commit.clone();
            x.merge(up).unwrap();
            alice
                .process(&ROOM, &commit, |_| Ok(expected.clone()))
                .unwrap();
            let mut j = 1usize;
            while j < k {
                devices[j]
                    .1
                    .process(&ROOM, &commit, |_| Ok(expected.clone()))
                    .unwrap();
                j *= 2;
            }
            updates.push(commit);
            k *= 2;
        }
        eprintln!("mls n={n}: tree populated by {} updates", updates.len());

        let mut g = c.benchmark_group(format!("mls_{n}_members"));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(if n >= 1000 { 20 } else { 5 }));
        let new_kp = new_member.key_packages(1).unwrap().remove(0);
        g.bench_function("add_one_create", |b| {
            b.iter(|| {
                alice
                    .commit(&ROOM, std::slice::from_ref(&new_kp), &[], &expected)
                    .unwrap()
            })
        });
        let add = alice
            .commit(&ROOM, std::slice::from_ref(&new_kp), &[], &expected)
            .unwrap();
        eprintln!(
            "mls n={n}: one add: commit {} B, Welcome {} KiB",
            add.commit.len(),
            add.welcome.as_ref().map_or(0, |w| w.len() / 1024)
        );
        let bob_state = bob.store().export();
        let (bob_keys, bob_cert) = (&devices[1].2, &devices[1].3);
        let fresh_bob = || {
            Member::new(
                bob_keys,
                bob_cert,
                firm.identity(),
                DeviceStore::import(&bob_state).unwrap(),
            )
            .unwrap()
        };
        g.bench_function("add_one_process", |b| {
            b.iter_batched(
                fresh_bob,
                |m| {
                    m.process(&ROOM, &add.commit, |_| Ok(expected.clone()))
                        .unwrap()
                },
                BatchSize::LargeInput,
            )
        });
        // the log removed the last user
        let gone = &devices[n - 1];
        let mut after = expected.clone();
        after.members.remove(&gone.0);
        let gone_device = gone.1.device();
        g.bench_function("remove_one_create", |b| {
            b.iter(|| alice.commit(&ROOM, &[], &[gone_device], &after).unwrap())
        });
        let remove = alice.commit(&ROOM, &[], &[gone_device], &after).unwrap();
        eprintln!("mls n={n}: one removal: commit {} B", remove.commit.len());
        g.bench_function("remove_one_process", |b| {
            b.iter_batched(
                fresh_bob,
                |m| {
                    m.process(&ROOM, &remove.commit, |_| Ok(after.clone()))
                        .unwrap()
                },
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
