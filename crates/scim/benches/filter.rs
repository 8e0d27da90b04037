//! SCIM filter evaluation over a 10^4-user directory.
#![allow(clippy::unwrap_used)]
use cloister_scim::{Ctx, SCHEMA_ENTERPRISE, SCHEMA_USER, parse_filter};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::hint::black_box;

fn users(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "schemas": [SCHEMA_USER, SCHEMA_ENTERPRISE],
                "id": format!("{i:08x}"),
                "userName": format!("user{i}"),
                "displayName": format!("User Number {i}"),
                "title": if i % 3 == 0 { "Trader" } else { "Analyst" },
                "active": i % 10 != 0,
                "emails": [{"value": format!("user{i}@bank.example"), "type": "work"}],
                SCHEMA_ENTERPRISE: {"department": format!("dept{}", i % 50)}
            })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let ctx = Ctx {
        core: SCHEMA_USER,
        case_exact: &["id", "externalid"],
        extensions: &[SCHEMA_ENTERPRISE],
    };
    let dir = users(10_000);
    let f = parse_filter(&format!(
        r#"userName sw "user1" and (title eq "trader" or {SCHEMA_ENTERPRISE}:department eq "dept7") and not (active eq false)"#
    ))
    .unwrap();
    c.bench_function("scim filter over 10^4 users", |b| {
        b.iter(|| {
            let n = dir
                .iter()
                .filter(|u| f.matches(u, &ctx).unwrap_or(false))
                .count();
            black_box(n)
        })
    });
    c.bench_function("scim filter parse", |b| {
        b.iter(|| {
            parse_filter(black_box(
                r#"emails[type eq "work" and value co "@bank"] or userName eq "x""#,
            ))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
