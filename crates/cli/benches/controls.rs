//! Communication controls at a bank's scale, end to end over loopback HTTP
//! (KM and server in this process, SQLite): a SCIM list with a filter over
//! 10^4 provisioned users, and the eviction a new barrier causes across
//! 1,000 rooms. Prints the figures recorded in docs/benchmarks.md.
//!
//! `cargo bench -p cloister-cli --bench controls` (USERS, ROOMS override).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cloister_cli::{Stack, StackOptions};
use cloister_client::{Client, Storage};
use cloister_crypto::passphrase::Cost;
use cloister_proto::room::RoomSettings;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn enrol(stack: &Stack, admin: &Client, name: &str) -> Client {
    let user = format!("{name}@acme").parse().unwrap();
    let code = admin.admin_add_user(&user, false).await.unwrap().code;
    Client::enrol(
        cloister_tls::http_client(),
        &stack.server_url,
        &stack.km_url,
        &user,
        &code,
        Storage::Memory,
    )
    .await
    .unwrap()
}

fn main() {
    let users = env("USERS", 10_000);
    let rooms = env("ROOMS", 1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut o = StackOptions::new("acme".parse().unwrap());
        o.cost = Cost::TEST;
        let stack = Stack::start(dir.path(), o).await.unwrap();
        let http = cloister_tls::http_client();
        let admin = Client::enrol(
            http.clone(),
            &stack.server_url,
            &stack.km_url,
            &"admin@acme".parse().unwrap(),
            stack.admin_code.as_deref().unwrap(),
            Storage::Memory,
        )
        .await
        .unwrap();
        let token = admin.admin_scim_token("bench").await.unwrap().token;
        let base = format!("{}/scim/v2", stack.km_url);

        // provision users over SCIM, 16 at a time
        let t = Instant::now();
        let depts = ["Rates", "Credit", "FX", "Equities", "Research"];
        futures_util::stream::iter(0..users)
            .map(|i| {
                let (http, base, token) = (http.clone(), base.clone(), token.clone());
                async move {
                    let body = json!({
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
                        "userName": format!("user{i:05}@bank.example"),
                        "title": if i % 3 == 0 { "Trader" } else { "Analyst" },
                        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":
                            {"department": depts[i % depts.len()]}
                    });
                    let r = http
                        .post(format!("{base}/Users"))
                        .bearer_auth(&token)
                        .header("content-type", "application/scim+json")
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let prov = t.elapsed().as_secs_f64();
        println!(
            "provisioned {users} users over SCIM in {prov:.1} s ({:.0} users/s)",
            users as f64 / prov
        );

        // let the KM finish what provisioning queued (controls pushed to the
        // server, eviction sweep): steady state is what is measured
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;

        // SCIM list with a filter, one page of 100
        let filter = "title%20eq%20%22trader%22%20and%20urn%3Aietf%3Aparams%3Ascim%3Aschemas%3Aextension%3Aenterprise%3A2.0%3AUser%3Adepartment%20sw%20%22cr%22";
        // three rounds of 200 after 20 discarded requests (the first
        // requests after provisioning run on cold caches)
        let mut total = 0;
        for round in 0..4 {
        let mut lat = Vec::new();
        for _ in 0..if round == 0 { 20 } else { 200 } {
            let t = Instant::now();
            let r: Value = http
                .get(format!("{base}/Users?filter={filter}&count=100"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            total = r["totalResults"].as_u64().unwrap();
        }
        if round == 0 {
            println!("  warm-up: p50 {:.2} ms", pct(&mut lat, 0.5));
            continue;
        }
        println!(
            "SCIM list, filter over {users} users ({total} match, page of 100), round {round}: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.95),
            pct(&mut lat, 0.99)
        );
        }

        for (label, q) in [
            ("no filter, count=0", "count=0".to_owned()),
            ("filter, count=0", format!("filter={filter}&count=0")),
            ("no filter, count=100", "count=100".to_owned()),
        ] {
            let mut lat = Vec::new();
            for _ in 0..50 {
                let t = Instant::now();
                let _: Value = http
                    .get(format!("{base}/Users?{q}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            println!("  SCIM list, {label}: p50 {:.2} ms", pct(&mut lat, 0.5));
        }
        if std::env::var("ONLY_SCIM").is_ok() {
            return;
        }

        // 1,000 rooms, each with a trader and an analyst of groups about to be walled
        let owner = enrol(&stack, &admin, "owner").await;
        let tom = enrol(&stack, &admin, "tom").await;
        let rita = enrol(&stack, &admin, "rita").await;
        let t = Instant::now();
        let owner = std::sync::Arc::new(owner);
        futures_util::stream::iter(0..rooms)
            .map(|i| {
                let owner = owner.clone();
                let members = vec![tom.user().clone(), rita.user().clone()];
                async move {
                    owner
                        .create_room(
                            RoomSettings {
                                name: format!("desk-{i}"),
                                ..Default::default()
                            },
                            &members,
                        )
                        .await
                        .unwrap();
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        println!(
            "created {rooms} rooms in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        admin
            .admin_group_set("research", &[rita.user().clone()], &[])
            .await
            .unwrap();
        admin
            .admin_group_set("trading", &[tom.user().clone()], &[])
            .await
            .unwrap();
        let t = Instant::now();
        let added = admin
            .barrier_add("research", "trading", "bench")
            .await
            .unwrap();
        let took = t.elapsed().as_secs_f64();
        assert!(added.pending.is_empty(), "{:?}", added.pending);
        println!(
            "barrier added: {} evictions across {rooms} rooms in {took:.2} s ({:.0} evictions/s)",
            added.evicted.len(),
            added.evicted.len() as f64 / took
        );
        stack.stop().await;
    });
}
