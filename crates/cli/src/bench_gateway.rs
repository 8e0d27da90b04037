//! `cloister bench-gateway`: messages through the firm's gateway to a real
//! Synapse on loopback and back. Out: a Cloister user sends N messages one
//! after another; the added latency of each is the Matrix event's
//! `origin_server_ts` minus the moment the sender's `send` returned (the
//! message was stored by the Cloister server). In: the Matrix user sends N;
//! each one's latency is the relayed Cloister message's timestamp (the
//! gateway sealed it) minus the Matrix event's. Same machine, same clock.
//! Throughput: N over the time from the first send to the last arrival.

use crate::bench::pct;
use crate::matrix_lab::MatrixLab;
use crate::{BoxError, Stack, StackOptions};
use cloister_client::{Client, Storage};
use cloister_crypto::passphrase::Cost;
use cloister_proto::controls::Entitlement;
use cloister_proto::km::Role;
use cloister_proto::server::Content;
use cloister_proto::{UserId, now_millis};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct GatewayBenchArgs {
    /// Messages each way.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Messages each way sent one at a time (each waits for the previous
    /// to arrive): the added latency without a queue.
    #[arg(long, default_value_t = 20)]
    pub paced: usize,
    /// Keep data here (default: a temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

async fn enrol(
    stack: &Stack,
    admin: &Client,
    name: &str,
    roles: &[Role],
) -> Result<Client, BoxError> {
    let user: UserId = format!("{name}@acme")
        .parse()
        .map_err(|e: cloister_proto::IdError| e.to_string())?;
    let code = admin.admin_add_user_roles(&user, roles).await?.code;
    Ok(Client::enrol(
        cloister_tls::http_client(),
        &stack.server_url,
        &stack.km_url,
        &user,
        &code,
        Storage::Memory,
    )
    .await?)
}

fn summary(mut lat: Vec<f64>) -> serde_json::Value {
    lat.sort_by(f64::total_cmp);
    serde_json::json!({"samples": lat.len(), "p50": pct(&lat, 0.5), "p90": pct(&lat, 0.9), "p99": pct(&lat, 0.99), "max": lat.last().copied().unwrap_or(f64::NAN)})
}

pub async fn run(a: GatewayBenchArgs, json: bool) -> Result<(), BoxError> {
    let py = crate::synapse::python().ok_or_else(|| {
        format!(
            "Synapse is not installed: scripts/tools installs it into {}",
            crate::synapse::VENV
        )
    })?;
    let tmp = tempfile::tempdir()?;
    let dir = a.data_dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let stack = Stack::start(
        &dir,
        StackOptions {
            cost: Cost::TEST,
            ..StackOptions::new("acme".parse()?)
        },
    )
    .await?;
    let admin = Client::enrol(
        cloister_tls::http_client(),
        &stack.server_url,
        &stack.km_url,
        &"admin@acme".parse()?,
        stack
            .admin_code
            .as_deref()
            .ok_or("the KM gave no admin code")?,
        Storage::Memory,
    )
    .await?;
    let gw = enrol(&stack, &admin, "gateway", &[Role::Gateway]).await?;
    let alice = enrol(&stack, &admin, "alice", &[Role::User]).await?;
    for u in [gw.user(), alice.user()] {
        admin
            .admin_entitle(Some(u), None, &[Entitlement::Federation], &[])
            .await?;
    }
    let gw_user = gw.user().clone();
    let lab = MatrixLab::start(&py, &dir, gw).await?;
    let room = alice
        .open_bridge("matrix", &lab.mat.0, &gw_user, &[])
        .await?;
    alice.send_text(&room, "warm-up").await?;
    let mroom = lab.join_next_invite().await?;

    // out
    let n = a.messages;
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        alice.send_text(&room, &format!("out {i}")).await?;
        sent.push(now_millis());
    }
    let mut arrived = Vec::new();
    for _ in 0..600 {
        arrived = lab.messages(&mroom).await?;
        if arrived.len() > n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out_lat = Vec::with_capacity(n);
    let mut out_last = 0;
    for (_, body, ts) in &arrived {
        if let Some(i) = body
            .strip_prefix("out ")
            .and_then(|s| s.parse::<usize>().ok())
        {
            out_lat.push(ts.saturating_sub(sent[i]) as f64);
            out_last = out_last.max(*ts);
        }
    }
    let out_secs = (out_last.saturating_sub(sent.first().copied().unwrap_or(0))) as f64 / 1000.0;

    // in
    let mut events = Vec::with_capacity(n);
    let t0 = now_millis();
    for i in 0..n {
        events.push(
            lab.send(&mroom, &format!("in-{i}"), &format!("in {i}"))
                .await?,
        );
    }
    let mut origin = Vec::with_capacity(n);
    for e in &events {
        origin.push(lab.event_ts(&mroom, e).await?);
    }
    let mut got: Vec<(usize, u64)> = Vec::new();
    for _ in 0..600 {
        got = alice
            .read(&room, 1000, None)
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|m| match &m.content {
                Content::Relayed { content, .. } => match &**content {
                    Content::Text { text } => text
                        .strip_prefix("in ")
                        .and_then(|s| s.parse().ok())
                        .map(|i| (i, m.ts)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let in_lat: Vec<f64> = got
        .iter()
        .map(|(i, ts)| ts.saturating_sub(origin[*i]) as f64)
        .collect();
    let in_last = got.iter().map(|(_, ts)| *ts).max().unwrap_or(t0);
    let in_secs = in_last.saturating_sub(t0) as f64 / 1000.0;
    // one at a time: the latency a conversation sees
    let mut out_paced = Vec::new();
    let mut in_paced = Vec::new();
    for i in 0..a.paced {
        let text = format!("paced out {i}");
        alice.send_text(&room, &text).await?;
        let t = now_millis();
        for _ in 0..3000 {
            let m = lab.messages(&mroom).await?;
            if let Some((_, _, ts)) = m.iter().rev().find(|(_, b, _)| *b == text) {
                out_paced.push(ts.saturating_sub(t) as f64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let text = format!("paced in {i}");
        let ev = lab.send(&mroom, &format!("paced-{i}"), &text).await?;
        let origin = lab.event_ts(&mroom, &ev).await?;
        for _ in 0..3000 {
            let got = alice
                .read(&room, 20, None)
                .await?
                .into_iter()
                .filter_map(Result::ok)
                .find_map(|m| match &m.content {
                    Content::Relayed { content, .. } => match &**content {
                        Content::Text { text: t } if *t == text => Some(m.ts),
                        _ => None,
                    },
                    _ => None,
                });
            if let Some(ts) = got {
                in_paced.push(ts.saturating_sub(origin) as f64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let report = serde_json::json!({
        "paced": {"out_added_latency_ms": summary(out_paced), "in_added_latency_ms": summary(in_paced)},
        "messages_each_way": n,
        "out": {"delivered": out_lat.len(), "msgs_per_s": out_lat.len() as f64 / out_secs.max(1e-3), "added_latency_ms": summary(out_lat.clone())},
        "in": {"delivered": in_lat.len(), "msgs_per_s": in_lat.len() as f64 / in_secs.max(1e-3), "added_latency_ms": summary(in_lat.clone())},
        "failures": lab.gateway.store().failures(100).await?.len(),
    });
    if json {
        println!("{report}");
    } else {
        for dir in ["out", "in"] {
            let r = &report[dir];
            let l = &r["added_latency_ms"];
            println!(
                "{dir:<4} {} of {n} delivered, {:.1} msg/s; added latency p50 {} ms p90 {} ms p99 {} ms max {} ms",
                r["delivered"],
                r["msgs_per_s"].as_f64().unwrap_or(0.0),
                l["p50"],
                l["p90"],
                l["p99"],
                l["max"]
            );
        }
        for (dir, k) in [
            ("out", "out_added_latency_ms"),
            ("in", "in_added_latency_ms"),
        ] {
            let l = &report["paced"][k];
            println!(
                "{dir:<4} one at a time ({} samples): added latency p50 {} ms p90 {} ms max {} ms",
                l["samples"], l["p50"], l["p90"], l["max"]
            );
        }
        println!("failures recorded by the gateway: {}", report["failures"]);
    }
    drop(lab);
    Ok(())
}
