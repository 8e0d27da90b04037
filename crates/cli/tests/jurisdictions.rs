//! Escrow custodians carry a jurisdiction (the directory's), and an escrow
//! policy can require that any threshold of shares span several
//! jurisdictions: 2-of-3 with no two from the same one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_proto::km::{ProfileUpdate, Role};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escrow_shares_spread_over_jurisdictions() {
    let w = World::new().await;
    let mut custodians = Vec::new();
    for (name, j) in [
        ("cora", Some(" uk")), // the same jurisdiction as dana's "UK"
        ("dana", Some("UK")),
        ("cole", Some("US-NY")),
        ("cruz", Some("SG")),
        ("eve", None),
    ] {
        let c = w.user_with(name, &[Role::Custodian]).await;
        if let Some(j) = j {
            w.admin
                .admin_profile_set(
                    c.user(),
                    ProfileUpdate {
                        jurisdiction: Some(j.into()),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
        custodians.push(c.user().clone());
    }
    // a jurisdiction is a country or subdivision code, nothing else
    let e = w
        .admin
        .admin_profile_set(
            &custodians[4],
            ProfileUpdate {
                jurisdiction: Some("United Kingdom".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_jurisdiction"), "{e}");
    let pick = |names: &[&str]| {
        custodians
            .iter()
            .filter(|u| names.contains(&u.name()))
            .cloned()
            .collect::<Vec<_>>()
    };
    // two of the three in the UK: two UK custodians alone could open it
    let e = w
        .admin
        .admin_escrow_init_spread(&pick(&["cora", "dana", "cole"]), 2, 2)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_escrow"), "{e}");
    assert!(e.to_string().contains("UK (2)"), "{e}");
    // a custodian with no jurisdiction cannot count
    let e = w
        .admin
        .admin_escrow_init_spread(&pick(&["cora", "cole", "eve"]), 2, 2)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no jurisdiction"), "{e}");
    // a rule the threshold cannot meet
    let e = w
        .admin
        .admin_escrow_init_spread(&pick(&["cora", "cole", "cruz"]), 2, 3)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_escrow"), "{e}");

    // UK, US-NY, SG: any two shares span two jurisdictions
    let d = w
        .admin
        .admin_escrow_init_spread(&pick(&["cora", "cole", "cruz"]), 2, 2)
        .await
        .unwrap();
    assert_eq!(d.min_jurisdictions, 2);
    let by: Vec<(String, String)> = d
        .custodians
        .iter()
        .map(|u| u.name().to_owned())
        .zip(d.jurisdictions.iter().cloned())
        .collect();
    assert_eq!(
        by,
        [
            ("cora".to_owned(), "UK".to_owned()),
            ("cole".to_owned(), "US-NY".to_owned()),
            ("cruz".to_owned(), "SG".to_owned())
        ]
    );
    // every device sees the same, KM-signed
    let seen = w.user("alice").await.escrow_info().await.unwrap();
    assert_eq!(seen, d);
}
