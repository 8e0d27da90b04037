//! `cloister bench`: N clients in rooms of M members over loopback.
//!
//! By default the KM and the server run as separate child processes (this
//! binary's `km serve` and `server`), so their memory can be measured on
//! their own; `--in-process` runs them inside the bench process instead.
//! Every client is a real SDK client: it seals and signs each message, posts
//! it over HTTP, and receives the others' messages over its WebSocket; every
//! `--verify-every`-th receipt is fully verified and decrypted, and end-to-end
//! latency (before sealing → after verification and decryption) is measured
//! on those.

use crate::BoxError;
use cloister_client::{Client, Storage};
use cloister_proto::server::{Content, Event};
use cloister_proto::{MessageId, RoomId, UserId};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Number of clients (each a user with one device).
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    /// Members per room; clients are split into rooms of this size.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// How many clients send (default: all). In a 1,000-member room, use a few senders.
    #[arg(long)]
    pub senders: Option<usize>,
    /// Sends in flight per sender.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Fully verify and decrypt every Nth receipt (latency is measured on those).
    #[arg(long, default_value_t = 1)]
    pub verify_every: u64,
    /// Run KM and server inside this process instead of as child processes.
    #[arg(long)]
    pub in_process: bool,
    /// Keep data here (default: a temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Server nodes to start (above 1: on --database-url postgres://…,
    /// with live events over --nats).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// The started servers' database (default: SQLite in the data directory).
    #[arg(long = "database-url")]
    pub database_url: Option<String>,
    /// NATS JetStream for several nodes, e.g. nats://127.0.0.1:4222.
    #[arg(long)]
    pub nats: Option<String>,
    /// Target a running deployment instead: its server URLs (repeatable;
    /// clients are spread across them). Needs --km and --admin-home.
    #[arg(long = "server")]
    pub servers: Vec<String>,
    /// The running deployment's KM.
    #[arg(long)]
    pub km: Option<String>,
    /// An enrolled admin device's home (passphrase in CLOISTER_PASSPHRASE),
    /// to create the bench's users in a running deployment.
    #[arg(long)]
    pub admin_home: Option<PathBuf>,
    /// How senders post: through their live socket (`socket`), or one HTTP
    /// request per message (`http`).
    #[arg(long, value_enum, default_value_t = PostOver::Socket)]
    pub post_over: PostOver,
    /// Run the services it starts over TLS (a development CA made for the
    /// run); every client verifies them.
    #[arg(long, conflicts_with = "servers")]
    pub tls: bool,
    /// Room mode: `managed` (KM-made keys) or `mls` (RFC 9420 groups; every
    /// receipt is decrypted, as an MLS message must be read once, in order).
    #[arg(long, value_enum, default_value_t = BenchMode::Managed)]
    pub mode: BenchMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    Managed,
    Mls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PostOver {
    Socket,
    Http,
}

pub(crate) mod target;
use target::{Target, cpu_secs, rss_kib};

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bar(json: bool, len: u64, msg: &'static str) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(msg);
    b
}

pub async fn run(a: BenchArgs, json: bool) -> Result<(), BoxError> {
    if a.clients < 2
        || a.room_size < 2
        || a.room_size > a.clients
        || a.messages == 0
        || a.window == 0
    {
        return Err("need clients >= room-size >= 2, messages >= 1, window >= 1".into());
    }
    if a.clients > 5000 || a.messages > 1_000_000 {
        return Err("at most 5,000 clients and 1,000,000 messages per sender".into());
    }
    if a.nodes == 0 || a.nodes > 16 {
        return Err("--nodes: 1 to 16".into());
    }
    let tmp = tempfile::tempdir()?;
    let dir = a.data_dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    // Before any client is made: they trust its CA.
    let local_tls = if a.tls {
        Some(crate::tls_args::LocalTls::create(&dir.join("tls"))?)
    } else {
        None
    };
    let http = cloister_tls::http_builder()
        .pool_max_idle_per_host(4096)
        .build()?;
    let t = target::target(&a, &dir, &http, local_tls.as_ref()).await?;
    let admin = t.admin.clone();
    let (km_url, tenant) = (t.km_url.clone(), admin.tenant().clone());
    // users of this run: a prefix of its own, so that runs against one
    // deployment never collide
    let run_id = hex::encode(cloister_crypto::random_bytes::<3>()?);

    // Enrol users.
    let pb = bar(json, a.clients as u64, "enrolling");
    let clients: Vec<Arc<Client>> = futures_util::stream::iter(0..a.clients)
        .map(|i| {
            let (admin, http, km_url, pb, tenant, run_id) = (
                admin.clone(),
                http.clone(),
                km_url.clone(),
                pb.clone(),
                tenant.clone(),
                run_id.clone(),
            );
            let server_url = t.server_urls[i % t.server_urls.len()].clone();
            async move {
                let user: UserId = format!("b{run_id}u{i}@{tenant}").parse()?;
                let code = admin.admin_add_user(&user, false).await?.code;
                let c = Client::enrol(http, &server_url, &km_url, &user, &code, Storage::Memory)
                    .await?;
                pb.inc(1);
                Ok::<_, BoxError>(Arc::new(c))
            }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    pb.finish_and_clear();

    let mls = a.mode == BenchMode::Mls;
    if mls {
        let pb = bar(json, a.clients as u64, "key pkgs");
        futures_util::stream::iter(clients.iter())
            .map(|c| {
                let pb = pb.clone();
                async move {
                    c.replenish_key_packages().await?;
                    pb.inc(1);
                    Ok::<_, BoxError>(())
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        pb.finish_and_clear();
    }
    // Rooms.
    let mut rooms: Vec<(RoomId, Vec<Arc<Client>>)> = Vec::new();
    for group in clients.chunks(a.room_size) {
        if group.len() < 2 {
            continue;
        }
        let members: Vec<UserId> = group[1..].iter().map(|c| c.user().clone()).collect();
        let room = group[0]
            .create_room(
                cloister_proto::room::RoomSettings {
                    name: format!("bench-{}", rooms.len()),
                    mode: if mls {
                        cloister_proto::room::RoomMode::Mls
                    } else {
                        cloister_proto::room::RoomMode::Managed
                    },
                    ..Default::default()
                },
                &members,
            )
            .await?;
        rooms.push((room, group.to_vec()));
    }
    // Warm up: every member verifies the log and fetches the epoch key once.
    let pb = bar(json, a.clients as u64, "keys");
    for (room, members) in &rooms {
        futures_util::stream::iter(members.iter())
            .map(|c| {
                let pb = pb.clone();
                async move {
                    if mls {
                        c.mls_sync(room).await?;
                    } else {
                        c.room_keys(room, &[0]).await?;
                    }
                    pb.inc(1);
                    Ok::<_, BoxError>(())
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
    }
    pb.finish_and_clear();

    // Receivers.
    let sent_at: Arc<Mutex<HashMap<MessageId, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let received = Arc::new(AtomicU64::new(0));
    let verify_failures = Arc::new(AtomicU64::new(0));
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let mut receivers = Vec::new();
    let mut posters = HashMap::new();
    for (room, members) in &rooms {
        for c in members {
            let mut stream = c.connect_live().await?;
            posters.insert(c.device(), stream.poster());
            let (c, room) = (c.clone(), *room);
            let (sent_at, received, lat, vf) = (
                sent_at.clone(),
                received.clone(),
                latencies.clone(),
                verify_failures.clone(),
            );
            let every = if mls { 1 } else { a.verify_every.max(1) };
            receivers.push(tokio::spawn(async move {
                let me = c.device();
                let mut n: u64 = 0;
                while let Ok(Some(ev)) = stream.next().await {
                    let Event::Message {
                        room: r,
                        seq,
                        envelope,
                    } = ev
                    else {
                        continue;
                    };
                    if r != room {
                        continue;
                    }
                    let Ok(h) = cloister_crypto::message::peek_header(&envelope) else {
                        continue;
                    };
                    if h.device == me {
                        continue;
                    }
                    n += 1;
                    if n.is_multiple_of(every) {
                        // every receipt: the full checks (transcript too);
                        // a sample: signature and decryption only
                        let opened = if every == 1 {
                            c.receive(&room, seq, &envelope).await
                        } else {
                            c.open_envelope(&room, seq, &envelope).await
                        };
                        match opened {
                            Ok(_) => {
                                let t0 = sent_at.lock().ok().and_then(|m| m.get(&h.id).copied());
                                if let (Some(t0), Ok(mut l)) = (t0, lat.lock()) {
                                    l.push(t0.elapsed().as_secs_f64() * 1000.0);
                                }
                            }
                            Err(_) => {
                                vf.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server_rss_connected = t.servers_sum(|pid| rss_kib(pid).map(|k| k as f64));

    // Senders.
    let nsenders_per_room = a.senders.map(|s| s.div_ceil(rooms.len()).max(1));
    let mut senders = Vec::new();
    let mut expected_deliveries = 0u64;
    for (room, members) in &rooms {
        let k = nsenders_per_room
            .unwrap_or(members.len())
            .min(members.len());
        expected_deliveries += (k * a.messages * (members.len() - 1)) as u64;
        for c in members.iter().take(k) {
            let poster = (a.post_over == PostOver::Socket)
                .then(|| posters.get(&c.device()).cloned())
                .flatten();
            senders.push((*room, c.clone(), poster));
        }
    }
    let total = (senders.len() * a.messages) as u64;
    let pb = bar(json, total, "sending");
    let text = "x".repeat(a.size);
    let server_cpu0 = t.servers_sum(cpu_secs);
    let self_cpu0 = cpu_secs(std::process::id());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (room, c, poster) in senders {
        let (sent_at, pb, text, window, n) = (
            sent_at.clone(),
            pb.clone(),
            text.clone(),
            a.window,
            a.messages,
        );
        tasks.push(tokio::spawn(async move {
            let results: Vec<Result<(), cloister_client::ClientError>> =
                futures_util::stream::iter(0..n)
                    .map(|_| {
                        let (c, sent_at, pb, text, poster) = (
                            c.clone(),
                            sent_at.clone(),
                            pb.clone(),
                            text.clone(),
                            poster.clone(),
                        );
                        async move {
                            let start = Instant::now();
                            let env = c.seal(&room, &Content::Text { text }).await?;
                            let id = cloister_crypto::message::peek_header(&env)?.id;
                            if let Ok(mut m) = sent_at.lock() {
                                m.insert(id, start);
                            }
                            match poster {
                                Some(p) => p.post(&room, &env).await?,
                                None => c.post_envelope(&room, &env).await?,
                            };
                            pb.inc(1);
                            Ok(())
                        }
                    })
                    .buffer_unordered(window)
                    .collect()
                    .await;
            results.into_iter().filter(|r| r.is_err()).count()
        }));
    }
    let mut send_errors = 0;
    for t in tasks {
        send_errors += t.await.unwrap_or(1);
    }
    let send_secs = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    // Wait for deliveries (bounded).
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < expected_deliveries && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliver_secs = t0.elapsed().as_secs_f64();
    let server_rss_end = t.servers_sum(|pid| rss_kib(pid).map(|k| k as f64));
    let server_cpu = t.servers_sum(cpu_secs).zip(server_cpu0).map(|(a, b)| a - b);
    let clients_cpu = cpu_secs(std::process::id())
        .zip(self_cpu0)
        .map(|(a, b)| a - b);
    for r in &receivers {
        r.abort();
    }
    let got = received.load(Ordering::Relaxed);
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_by(|x, y| x.total_cmp(y));
    let accepted = total - send_errors as u64;
    let report = serde_json::json!({
        "clients": a.clients, "room_size": a.room_size, "rooms": rooms.len(), "messages_per_sender": a.messages,
        "message_bytes": a.size, "post_over": format!("{:?}", a.post_over).to_lowercase(), "window": a.window, "verify_every": a.verify_every,
        "mode": t.mode, "room_mode": format!("{:?}", a.mode).to_lowercase(), "server_urls": t.server_urls.len(),
        "server_cpu_us_per_message": server_cpu.map(|c| c * 1e6 / (total - send_errors as u64).max(1) as f64),
        "accepted": accepted, "send_errors": send_errors, "send_seconds": send_secs,
        "messages_per_sec": accepted as f64 / send_secs,
        "deliveries": got, "expected_deliveries": expected_deliveries,
        "deliveries_per_sec": got as f64 / deliver_secs,
        "verify_failures": verify_failures.load(Ordering::Relaxed),
        "latency_ms": {"samples": lat.len(), "p50": pct(&lat, 0.5), "p90": pct(&lat, 0.9), "p99": pct(&lat, 0.99), "max": lat.last().copied().unwrap_or(f64::NAN)},
        "cpu_seconds": {"server": server_cpu, "clients_and_bench": clients_cpu},
        "server_rss_mib": {"connected": server_rss_connected.map(|k| k / 1024.0), "end": server_rss_end.map(|k| k / 1024.0)},
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "clients {} in {} {} room(s) of {}, {} B messages, window {}, {}",
            a.clients,
            rooms.len(),
            report["room_mode"].as_str().unwrap_or(""),
            a.room_size,
            a.size,
            a.window,
            report["mode"].as_str().unwrap_or("")
        );
        println!(
            "accepted   {accepted} messages in {send_secs:.2} s = {:.0} msg/s ({send_errors} errors)",
            accepted as f64 / send_secs
        );
        println!(
            "delivered  {got}/{expected_deliveries} in {deliver_secs:.2} s = {:.0} deliveries/s",
            got as f64 / deliver_secs
        );
        println!(
            "latency    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} verified+decrypted samples, {} failures)",
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            lat.len(),
            verify_failures.load(Ordering::Relaxed)
        );
        if let (Some(s), Some(c)) = (server_cpu, clients_cpu) {
            println!(
                "cpu        server {s:.2} s ({:.0} µs per accepted message), clients {c:.2} s (over {deliver_secs:.2} s wall, 2 cores = {:.2} core-s)",
                s * 1e6 / accepted.max(1) as f64,
                2.0 * deliver_secs
            );
        }
        if let (Some(c), Some(e)) = (server_rss_connected, server_rss_end) {
            println!(
                "server RSS {:.1} MiB with all clients connected, {:.1} MiB at the end (all nodes)",
                c / 1024.0,
                e / 1024.0
            );
        }
    }
    let Target { procs, stack, .. } = t;
    drop(procs);
    if let Some(s) = stack {
        s.stop().await;
    }
    if got < expected_deliveries || send_errors > 0 || verify_failures.load(Ordering::Relaxed) > 0 {
        return Err(format!(
            "incomplete run: {got}/{expected_deliveries} deliveries, {send_errors} send errors"
        )
        .into());
    }
    Ok(())
}
