//! Information-barrier evaluation at a bank's scale: 10^4 users, 10^3
//! barrier groups (each user in 3), 10^3 BLOCK policies. One key release
//! checks the requester against a room's members; the figure per pair and
//! per 10-member room is in docs/benchmarks.md.
#![allow(clippy::unwrap_used)]

use cloister_policy::barriers::{Barrier, Barriers};
use cloister_proto::UserId;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let users: Vec<UserId> = (0..10_000)
        .map(|i| format!("u{i}@acme").parse().unwrap())
        .collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut memberships = Vec::new();
    for u in &users {
        for _ in 0..3 {
            memberships.push((u.clone(), format!("g{}", next() % 1_000)));
        }
    }
    let policies: Vec<Barrier> = (0..1_000)
        .map(|i| Barrier {
            id: format!("p{i}"),
            a: format!("g{}", next() % 1_000),
            b: format!("g{}", next() % 1_000),
            active: true,
            reason: String::new(),
        })
        .collect();
    let b = Barriers::new(memberships, &policies);
    let room: Vec<UserId> = (0..10).map(|i| users[i * 997 % 10_000].clone()).collect();
    let mut g = c.benchmark_group("barriers_1e4_users_1e3_groups_1e3_policies");
    g.bench_function("blocked_pair", |bch| {
        bch.iter(|| b.blocked(black_box(&users[17]), black_box(&users[4242])))
    });
    g.bench_function("may_join_10_member_room", |bch| {
        bch.iter(|| b.may_join(black_box(&users[31]), room.iter()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
