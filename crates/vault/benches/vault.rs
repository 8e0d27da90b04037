//! The vault's hot paths: envelope ingest (`Vault::handle(Capture)`: request
//! and certificate verification, one group-committed transaction holding the
//! envelope, its tokens and its ingestion-log entry, a signed receipt) with
//! 64 and 256 captures in flight; and blind-index search latency over a large
//! archive (`CLOISTER_BENCH_ENVELOPES`, default 100,000; the figure in
//! docs/benchmarks.md uses 1,000,000). The archive is built once under
//! `target/` and reused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloister_crypto::blind::{self, Field};
use cloister_crypto::signed::{self, sign_cert};
use cloister_crypto::{DeviceKeys, KmSigner, RoomKey};
use cloister_log::{AuditEvent, AuditRecord};
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::km::{DeviceCert, Role};
use cloister_proto::vault::{Capture, PeriodQuery, SealedEnvelope, VaultOp, VaultRequest};
use cloister_proto::{MessageId, RoomId, TenantId};
use cloister_store::{AuditIn, AuditStore, CaptureRow, SideEffect, VaultStore};
use cloister_vault::Vault;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Device {
    keys: DeviceKeys,
    cert: cloister_proto::km::SignedCert,
}

fn device(km: &KmSigner, tenant: &TenantId, roles: Vec<Role>) -> Device {
    let keys = DeviceKeys::generate().unwrap();
    let cert = sign_cert(
        km,
        &DeviceCert {
            tenant: tenant.clone(),
            user: "bench@acme".parse().unwrap(),
            device: keys.device_id(),
            sign_pk: Fixed(keys.sign_pk()),
            hpke_pk: Fixed(keys.hpke_pk()),
            roles,
            issued_at: 0,
            not_after: u64::MAX / 2,
            jurisdiction: String::new(),
        },
    )
    .unwrap();
    Device { keys, cert }
}

/// A capture shaped like a 1 KiB text message's: ~1.3 KB sealed envelope, 16 tokens.
fn capture_req(d: &Device, tenant: &TenantId, n: u64) -> VaultRequest {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8..].copy_from_slice(&cloister_crypto::random_bytes::<8>().unwrap());

    // The message the capture is for, really signed by the device.
    let room = RoomId([(n % 200) as u8 + 1; 16]);
    let ts = cloister_proto::now_millis();
    let msg = cloister_crypto::message::seal_message(
        &d.keys,
        &RoomKey::from_bytes([7; 32]),
        &cloister_proto::server::MessageHeader {
            v: 1,
            room,
            epoch: 0,
            id: MessageId(id),
            sender: "bench@acme".parse().unwrap(),
            device: d.keys.device_id(),
            ts,
            commit: Fixed([0; 32]),
            counter: 1,
            after: vec![],
        },
        &cloister_proto::server::Content::Text {
            text: "x".repeat(1024),
        },
    )
    .unwrap();
    let env = SealedEnvelope {
        tenant: tenant.clone(),
        message_id: MessageId(id),
        room,
        ts,
        ciphertext_sha256: Fixed(cloister_crypto::sha256(msg.ciphertext.as_slice())),
        enc: Fixed([4; 32]),
        ct: Bytes(vec![5; 1300]),
        generation: 1,
    };
    let op = VaultOp::Capture {
        ts: cloister_proto::now_millis(),
        capture: Capture {
            envelope: Bytes(serde_json::to_vec(&env).unwrap()),
            period: 1,
            tokens: capture_tokens(n, &room, ts),
            received: false,
            header: msg.header.clone(),
            sig: msg.sig,
            sender_cert: d.cert.clone(),
        },
    };
    signed::sign_vault_request(&d.keys, &d.cert, &op).unwrap()
}

/// A capture's 16 blind-index tokens, as a client makes them: sender, room,
/// day and 13 keywords drawn Zipf-like from a 20,000-word vocabulary, under
/// the period's index key. Their positions in the token index are as
/// scattered as real ones (an earlier version used tokens that sorted by
/// capture number, which made every batch's inserts adjacent and the bench
/// about 2.5 times too kind).
fn capture_tokens(n: u64, room: &RoomId, ts: u64) -> Vec<Fixed<16>> {
    let key = RoomKey::from_bytes([1; 32]);
    let mut rng = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let sender = format!("u{}@acme", next() % USERS);
    let mut toks = vec![
        blind::token(&key, Field::Sender, &sender),
        blind::token(&key, Field::Room, &room.to_hex()),
        blind::token(&key, Field::Day, &blind::day_of(ts)),
    ];
    while toks.len() < 16 {
        let r = (next() % 1_000_000) as f64 / 1_000_000.0;
        let w = ((WORDS as f64).powf(r) as usize).min(WORDS - 1);
        toks.push(blind::token(&key, Field::Keyword, &word(w)));
    }
    toks.sort();
    toks.dedup();
    toks.into_iter().map(Fixed).collect()
}

/// A KM-signed deny list naming nobody, issued now.
fn deny_nobody(vault: &Vault, km: &KmSigner, tenant: &TenantId) {
    let body = cloister_standing::DenyListBody {
        tenant: tenant.clone(),
        issued_ms: cloister_proto::now_millis(),
        revoked: vec![],
        disabled: vec![],
        partners: vec![],
        escrow_generation: 0,
        pinned: vec![],
    };
    let blob = signed::km_sign_blob(km, signed::DENY_LIST, &body).unwrap();
    vault.apply_deny_list(&blob).unwrap();
}

/// Ingest into a vault on SQLite (`database` `None`) or on the database at
/// `database` (PostgreSQL).
fn ingest(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    database: Option<&str>,
    inflight: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    let tenant: TenantId = "acme".parse().unwrap();
    let km = KmSigner::generate().unwrap();
    let mut vault = rt
        .block_on(Vault::open_url(
            dir.path(),
            database,
            Some((&tenant, km.public())),
        ))
        .unwrap();
    // the bench measures ingest, not the rate limiter
    vault.set_limits(cloister_vault::VaultLimits::off());
    let vault = Arc::new(vault);
    // Nobody is revoked: a KM-signed, current deny list (renewed before each
    // iteration, as the vault's 5 s pull would).
    let fresh_list = || deny_nobody(&vault, &km, &tenant);
    fresh_list();
    let dev = device(&km, &tenant, vec![Role::User]);
    const N: u64 = 20_000;
    let mut g = c.benchmark_group("vault");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(N));
    let mut base = 0u64;
    // CPU this process spent in the timed part (every thread), to say what
    // a capture costs apart from waiting.
    let mut cpu = 0.0f64;
    let mut written = 0u64;
    let mut captures = 0u64;
    let mut wall = 0.0f64;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fresh_list();
                let reqs: Vec<VaultRequest> = (0..N)
                    .map(|i| capture_req(&dev, &tenant, base + i))
                    .collect();
                base += N;
                let v = vault.clone();
                let cpu0 = process_cpu_secs();
                let written0 = process_bytes_written();
                let spent = rt.block_on(async move {
                    let reqs = Arc::new(reqs);
                    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                    let t = Instant::now();
                    let mut tasks = Vec::new();
                    for _ in 0..inflight {
                        let (v, reqs, next) = (v.clone(), reqs.clone(), next.clone());
                        tasks.push(tokio::spawn(async move {
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(r) = reqs.get(i) else { break };
                                v.handle(r).await.unwrap();
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    t.elapsed()
                });
                cpu += process_cpu_secs() - cpu0;
                written += process_bytes_written().saturating_sub(written0);
                captures += N;
                wall += spent.as_secs_f64();
                total += spent;
            }
            total
        })
    });
    g.finish();
    if captures > 0 {
        // On PostgreSQL the writes are the server's, not this process's.
        let written = match database {
            None => format!(
                ", {:.1} KiB written to files per capture",
                written as f64 / 1024.0 / captures as f64
            ),
            Some(_) => String::new(),
        };
        eprintln!(
            "vault/{name}: {:.0} µs of this process's CPU per capture, {:.2} of 2 cores busy{written}",
            cpu * 1e6 / captures as f64,
            cpu / wall,
        );
    }
}

/// CPU seconds this process has used (user + system, every thread).
fn process_cpu_secs() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, after)) = s.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Bytes this process has handed to `write` and its kin (`wchar` of
/// /proc/self/io: the WAL, the database file and its checkpoints).
fn process_bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

const WORDS: usize = 20_000;
const USERS: u64 = 1_000;
const ROOMS: u64 = 5_000;

fn word(i: usize) -> String {
    format!("w{i}")
}

/// Build (or reuse) an archive of `n` envelopes over 12 months: each from one
/// of 1,000 senders in one of 5,000 rooms, with 8 keywords drawn from a
/// Zipf-like vocabulary of 20,000 words, tokens made with real index keys.
async fn archive(path: &Path, n: u64, tenant: &TenantId, km: &KmSigner) -> Arc<Vault> {
    let db = cloister_vault::db_path(path);
    if db.exists() {
        match Vault::open_dir(path, None).await {
            Ok(mut v) => {
                v.set_limits(cloister_vault::VaultLimits::off());
                return Arc::new(v);
            }
            // an archive cached by an older build (no signed checkpoints)
            Err(e) => {
                eprintln!("rebuilding the cached archive: {e}");
                std::fs::remove_dir_all(path).unwrap();
            }
        }
    }
    let vault = Vault::open_dir(path, Some((tenant, km.public())))
        .await
        .unwrap();
    drop(vault);
    let store = cloister_store::SqlVaultStore::open(&cloister_store::sqlite_url(&db))
        .await
        .unwrap();
    let keys: Vec<RoomKey> = (0..12)
        .map(|p| RoomKey::from_bytes([p as u8 + 1; 32]))
        .collect();
    let start_ms = 1_767_225_600_000u64; // 2026-01-01
    let span = 365 * 86_400_000u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let t = Instant::now();
    let mut index = 0u64;
    let mut tree = cloister_log::Tree::new();
    while index < n {
        let mut rows = Vec::with_capacity(2000);
        for _ in 0..2000.min(n - index) {
            let ts = start_ms + index * (span / n);
            let period = blind::period_of(ts);
            let k = &keys[(period as usize) % 12];
            let sender = format!("u{}@acme", next() % USERS);
            let room = RoomId({
                let mut r = [0u8; 16];
                r[..8].copy_from_slice(&(next() % ROOMS + 1).to_be_bytes());
                r
            });
            let mut toks = vec![
                blind::token(k, Field::Sender, &sender),
                blind::token(k, Field::Room, &room.to_hex()),
                blind::token(k, Field::Day, &blind::day_of(ts)),
            ];
            for _ in 0..8 {
                // Zipf-like: low word numbers are far more frequent.
                let r = (next() % 1_000_000) as f64 / 1_000_000.0;
                let w = ((WORDS as f64).powf(r) as usize).min(WORDS - 1);
                toks.push(blind::token(k, Field::Keyword, &word(w)));
            }
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&index.to_be_bytes());
            let message_id = MessageId(id);
            let rec = AuditRecord {
                ts,
                actor: None,
                event: AuditEvent::EnvelopeIngested {
                    message_id: message_id.to_hex(),
                    room,
                    envelope_sha256: "00".repeat(32),
                    ciphertext_sha256: "00".repeat(32),
                    device: cloister_proto::DeviceId([1; 16]),
                },
            };
            rows.push(AuditIn {
                index,
                ts,
                kind: "envelope_ingested".into(),
                room: Some(room.to_hex()),
                data: {
                    let data = rec.to_bytes().unwrap();
                    tree.push(cloister_log::leaf_hash(&data));
                    data
                },
                side: Some(SideEffect::Capture(Box::new(CaptureRow {
                    message_id: message_id.to_hex(),
                    room: room.to_hex(),
                    ts,
                    ciphertext_sha256: vec![0; 32],
                    envelope: vec![7; 1300],
                    envelope_sha256: vec![0; 32],
                    received_ms: ts,
                    period,
                    tokens: toks.iter().map(|t| t.to_vec()).collect(),
                    device: "01".repeat(16),
                    generation: 1,
                }))),
            });
            index += 1;
        }
        // as the vault's log runtime does: a signed checkpoint with the batch
        let log_key = store.vault_meta("log_key").await.unwrap().unwrap();
        let origin = cloister_audit::vault_origin(tenant);
        let cp = cloister_log::Checkpoint {
            origin: origin.clone(),
            size: tree.len(),
            root: tree.root(tree.len()).unwrap(),
        };
        let note = cloister_log::NoteSigner {
            name: &origin,
            key: &KmSigner::from_secret(&log_key).unwrap(),
        }
        .sign(&cp.body())
        .unwrap();
        store
            .audit_append(&rows, Some((cp.size, &note)))
            .await
            .unwrap();
        if index.is_multiple_of(100_000) {
            eprintln!("archive: {index} envelopes in {:.0?}", t.elapsed());
        }
    }
    drop(store);
    let mut v = Vault::open_dir(path, None).await.unwrap();
    v.set_limits(cloister_vault::VaultLimits::off());
    Arc::new(v)
}

fn search(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let n: u64 = std::env::var("CLOISTER_BENCH_ENVELOPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tenant: TenantId = "acme".parse().unwrap();
    // A fixed KM key, so a cached archive stays valid across runs.
    let km = KmSigner::from_secret(&[42; 32]).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/bench-vault")
        .join(n.to_string());
    let vault = rt.block_on(archive(&path, n, &tenant, &km));
    // Nobody is revoked; the list stays valid for the whole run.
    deny_nobody(&vault, &km, &tenant);
    vault.set_standing_max_age(u64::MAX / 4);
    let officer = device(&km, &tenant, vec![Role::Compliance]);
    let keys: Vec<RoomKey> = (0..12)
        .map(|p| RoomKey::from_bytes([p as u8 + 1; 32]))
        .collect();
    let start_ms = 1_767_225_600_000u64;
    let p0 = blind::period_of(start_ms);
    // one month, every period's tokens: a rare and a common keyword, AND a sender
    let query = |terms: &[(Field, String)], months: u32| {
        let queries = (0..months)
            .map(|m| {
                let p = p0 + m;
                let k = &keys[(p as usize) % 12];
                PeriodQuery {
                    period: p,
                    tokens: terms
                        .iter()
                        .map(|(f, t)| Fixed(blind::token(k, *f, t)))
                        .collect(),
                }
            })
            .collect();
        let op = VaultOp::Search {
            ts: cloister_proto::now_millis(),
            queries,
            from_ms: start_ms,
            to_ms: start_ms + months as u64 * 31 * 86_400_000,
            limit: 100,
        };
        signed::sign_vault_request(&officer.keys, &officer.cert, &op).unwrap()
    };
    let mut g = c.benchmark_group(format!("vault_search_{n}"));
    g.sample_size(50);
    for (name, terms, months) in [
        (
            "rare_keyword_1_month",
            vec![(Field::Keyword, word(15_000))],
            1,
        ),
        (
            "common_keyword_and_sender_1_month",
            vec![(Field::Keyword, word(3)), (Field::Sender, "u7@acme".into())],
            1,
        ),
        (
            "two_keywords_12_months",
            vec![(Field::Keyword, word(50)), (Field::Keyword, word(400))],
            12,
        ),
    ] {
        let req = query(&terms, months);
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(vault.handle(&req)).unwrap());
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // 64 captures in flight (64 clients each waiting for its receipt), and
    // 256: group commit is latency-bound at 64 (every request waits in the
    // same batch), so more in flight shows what the vault can take.
    for inflight in [64, 256] {
        let name = format!("ingest_20k_captures_{inflight}_in_flight");
        ingest(c, &rt, &name, None, inflight);
        // the same on PostgreSQL (a database made for the run, dropped after)
        if let Some(pg) = rt.block_on(cloister_store::testkit::PgDatabase::create()) {
            ingest(c, &rt, &format!("{name}_postgres"), Some(&pg.url), inflight);
        }
    }
    search(c, &rt);
}

criterion_group!(vault, benches);
criterion_main!(vault);
