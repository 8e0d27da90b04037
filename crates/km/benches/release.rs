//! Key release at the KM (`Km::handle` for one room-epoch key, warm caches,
//! SQLite store, file TMK provider), measured next to the primitives it must
//! run: one Ed25519 verification and one HPKE seal. The ratio is reported in
//! docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloister_crypto::passphrase::Cost;
use cloister_crypto::signed::{self, sign_statement};
use cloister_crypto::{DeviceKeys, RoomKey, hpke_seal, keys};
use cloister_km::provider::{FileKeyProvider, KeyProvider};
use cloister_km::{Km, KmConfig};
use cloister_proto::b64::Fixed;
use cloister_proto::km::{EnrolRequest, KmOp, RequestBody, Role};
use cloister_proto::room::{Action, RoomKind, RoomSettings, Statement};
use cloister_proto::{RoomId, TenantId, UserId};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod softhsm;

/// A KM with one enrolled device and one room whose key epoch 0 exists.
fn setup(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    provider: Arc<dyn KeyProvider>,
) -> (Arc<Km>, DeviceKeys, RoomId) {
    let tenant: TenantId = "acme".parse().unwrap();
    rt.block_on(async {
        let store = Arc::new(
            cloister_store::SqlKmStore::open(&cloister_store::sqlite_url(&dir.join("km.db")))
                .await
                .unwrap(),
        );
        let (km, _) = Km::init(
            store.clone(),
            store,
            provider,
            tenant,
            // the bench measures release, not the rate limiter
            KmConfig {
                limits: cloister_km::KmLimits::off(),
                ..KmConfig::default()
            },
        )
        .await
        .unwrap();
        let user: UserId = "alice@acme".parse().unwrap();
        let code = km.add_user(None, &user, &[Role::User]).await.unwrap().code;
        let dev = DeviceKeys::generate().unwrap();
        let pop = dev.sign(
            signed::ENROL,
            &signed::enrol_transcript(&user, &code, &dev.sign_pk(), &dev.hpke_pk()),
        );
        km.enrol(&EnrolRequest {
            user: user.clone(),
            code,
            sign_pk: Fixed(dev.sign_pk()),
            hpke_pk: Fixed(dev.hpke_pk()),
            pop: Fixed(pop),
            evidence: None,
        })
        .await
        .unwrap();
        let room = RoomId([9; 16]);
        let g = sign_statement(
            &dev,
            &Statement {
                room,
                seq: 0,
                prev: Fixed([0; 32]),
                actor: dev.device_id(),
                actor_user: user,
                ts: 1,
                action: Action::Create {
                    kind: RoomKind::Room,
                    settings: RoomSettings::default(),
                    members: vec![],
                },
                connections: Vec::new(),
            },
        )
        .unwrap();
        let req = |log| RequestBody {
            device: dev.device_id(),
            ts: cloister_proto::now_millis(),
            nonce: Fixed(cloister_crypto::random_bytes().unwrap()),
            op: KmOp::RoomKeys {
                room,
                epochs: vec![0],
                log_from: 0,
                log,
                certs: Vec::new(),
            },
        };
        km.handle(&signed::sign_request(&dev, &req(vec![g])).unwrap())
            .await
            .unwrap();
        (Arc::new(km), dev, room)
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (km, dev, room) = setup(&rt, dir.path(), file_provider(dir.path()));
    let tenant: TenantId = "acme".parse().unwrap();
    let make = || release_request(&dev, room);
    let mut g = c.benchmark_group("km");
    // The freshness check a sender makes once per room per freshness period:
    // request verification, the verified room state, a signed head.
    let head_req = || {
        let body = RequestBody {
            device: dev.device_id(),
            ts: cloister_proto::now_millis(),
            nonce: Fixed(cloister_crypto::random_bytes().unwrap()),
            op: KmOp::RoomHead {
                room,
                log_from: 1,
                log: vec![],
                certs: Vec::new(),
            },
        };
        signed::sign_request(&dev, &body).unwrap()
    };
    g.bench_function("room_head", |b| {
        b.iter_batched(
            head_req,
            |req| rt.block_on(km.handle(&req)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // Latency of one release, alone: includes waiting for its audit record to be durable (fsync).
    g.bench_function("key_release_1_epoch_latency", |b| {
        b.iter_batched(
            make,
            |req| rt.block_on(km.handle(&req)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // Throughput on one core: 64 concurrent releases driven by a single-threaded
    // runtime; their audit records are group-committed.
    let one = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    g.throughput(Throughput::Elements(64));
    g.bench_function("key_release_1_epoch_x64_one_core", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let reqs: Vec<_> = (0..64).map(|_| make()).collect();
                let t = Instant::now();
                let res = one.block_on(futures_util::future::join_all(
                    reqs.iter().map(|r| km.handle(r)),
                ));
                total += t.elapsed();
                assert!(res.iter().all(|r| r.is_ok()));
            }
            total
        })
    });
    // Throughput under a sustained load on one core: 512 releases with 64
    // in flight at any time, so one group commit's fsync overlaps the
    // work of the next releases, as in a loaded KM (the block above waits
    // for the last fsync of every 64 with the core idle).
    g.throughput(Throughput::Elements(512));
    g.bench_function("key_release_1_epoch_sustained_64_in_flight_one_core", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| sustained(&one, &km, make)).sum())
    });
    g.throughput(Throughput::Elements(1));
    // The primitives' limit, measured in the same run.
    let sample = make();
    let rk = RoomKey::generate().unwrap();
    g.bench_function("limit_verify_plus_hpke_seal", |b| {
        b.iter(|| {
            keys::verify(
                &dev.sign_pk(),
                signed::KM_REQUEST,
                sample.body.as_slice(),
                &sample.sig.0,
            )
            .unwrap();
            hpke_seal::seal_room_key(&dev.hpke_pk(), &tenant, &room, 0, &dev.device_id(), 1, &rk)
                .unwrap()
        })
    });
    g.finish();
}

/// The TMK in a sealed file in `dir`.
fn file_provider(dir: &std::path::Path) -> Arc<dyn KeyProvider> {
    Arc::new(FileKeyProvider::create(&dir.join("tmk"), b"pw", Cost::TEST).unwrap())
}

/// A signed request for epoch 0 of `room`.
fn release_request(dev: &DeviceKeys, room: RoomId) -> cloister_proto::km::SignedRequest {
    let body = RequestBody {
        device: dev.device_id(),
        ts: cloister_proto::now_millis(),
        nonce: Fixed(cloister_crypto::random_bytes().unwrap()),
        op: KmOp::RoomKeys {
            room,
            epochs: vec![0],
            log_from: 1,
            log: vec![],
            certs: Vec::new(),
        },
    };
    signed::sign_request(dev, &body).unwrap()
}

/// 512 releases with 64 in flight at any time on one core, so one group
/// commit's fsync overlaps the work of the next releases, as in a loaded
/// KM: the time they take.
fn sustained(
    one: &tokio::runtime::Runtime,
    km: &Km,
    make: impl Fn() -> cloister_proto::km::SignedRequest,
) -> Duration {
    use futures_util::StreamExt;
    let reqs: Vec<_> = (0..512).map(|_| make()).collect();
    let t = Instant::now();
    let ok = one.block_on(
        futures_util::stream::iter(reqs.iter().map(|r| km.handle(r)))
            .buffer_unordered(64)
            .filter(|r| std::future::ready(r.is_ok()))
            .count(),
    );
    let took = t.elapsed();
    assert_eq!(ok, 512);
    took
}

/// Key releases per second with the master key in a sealed file and in
/// SoftHSM2 over PKCS#11 (each release unwraps the key through the provider).
fn custody(c: &mut Criterion) {
    let (rt, one) = (
        tokio::runtime::Runtime::new().unwrap(),
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
    let file_dir = tempfile::tempdir().unwrap();
    let file = file_provider(file_dir.path());
    let mut kms = vec![("file", setup(&rt, file_dir.path(), file))];
    let hsm_dir = tempfile::tempdir().unwrap();
    let hsm = softhsm::softhsm().map(Arc::new);
    if let Some(h) = &hsm {
        kms.push(("pkcs11_softhsm", setup(&rt, hsm_dir.path(), h.clone())));
    }
    let mut g = c.benchmark_group("custody");
    g.throughput(Throughput::Elements(512));
    for (name, (km, dev, room)) in &kms {
        g.bench_function(format!("{name}/key_release_sustained_one_core"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| sustained(&one, km, || release_request(dev, *room)))
                    .sum()
            })
        });
    }
    g.finish();
    drop(kms);
    if let Some(h) = hsm.and_then(|h| Arc::try_unwrap(h).ok()) {
        softhsm::drop_token(h);
    }
}

/// Durable audit appends per second (batched group commit on SQLite).
fn appends(c: &mut Criterion) {
    use cloister_log::{AuditEvent, AuditRecord};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = rt.block_on(async {
        let store = Arc::new(
            cloister_store::SqlKmStore::open(&cloister_store::sqlite_url(
                &dir.path().join("km.db"),
            ))
            .await
            .unwrap(),
        );
        cloister_km::audit::AuditLog::open(
            store,
            cloister_crypto::KmSigner::generate().unwrap(),
            "cloister-audit/bench".into(),
        )
        .await
        .unwrap()
    });
    let rec = AuditRecord {
        ts: 1,
        actor: Some("alice@acme".parse().unwrap()),
        event: AuditEvent::KeyReleased {
            room: RoomId([1; 16]),
            epochs: vec![0],
            user: "alice@acme".parse().unwrap(),
            device: cloister_proto::DeviceId([2; 16]),
            lease_until: 3,
            surveillance: false,
            inspection: false,
            gateway: false,
        },
    };
    const N: u64 = 20_000;
    let mut g = c.benchmark_group("audit");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_function("durable_appends_20k_concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                let futs = (0..N).map(|_| log.append(&rec));
                let res = futures_util::future::join_all(futs).await;
                assert!(res.iter().all(|r| r.is_ok()));
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench, appends, custody);
criterion_main!(benches);
