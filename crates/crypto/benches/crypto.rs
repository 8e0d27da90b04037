//! Hot cryptographic paths: message seal/open, HPKE key release, signatures, file chunks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloister_crypto::{DeviceKeys, KmSigner, RoomKey, file, hpke_seal, keys, message};
use cloister_proto::server::{Content, MessageHeader};
use cloister_proto::{MessageId, RoomId, TenantId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn header(k: &DeviceKeys) -> MessageHeader {
    MessageHeader {
        v: 1,
        room: RoomId([1; 16]),
        epoch: 3,
        id: MessageId([2; 16]),
        sender: "alice@acme".parse().unwrap(),
        device: k.device_id(),
        ts: 1_700_000_000_000,
        commit: cloister_proto::b64::Fixed([0; 32]),
        counter: 1,
        after: vec![],
    }
}

fn messages(c: &mut Criterion) {
    let k = DeviceKeys::generate().unwrap();
    let rk = RoomKey::generate().unwrap();
    let h = header(&k);
    let mut g = c.benchmark_group("message");
    for size in [1024usize, 64 * 1024] {
        let content = Content::Text {
            text: "x".repeat(size),
        };
        let env = message::seal_message(&k, &rk, &h, &content).unwrap();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("seal/{}KiB", size / 1024), |b| {
            b.iter(|| message::seal_message(&k, &rk, black_box(&h), black_box(&content)).unwrap())
        });
        g.bench_function(format!("open/{}KiB", size / 1024), |b| {
            b.iter(|| message::open_message(&k.sign_pk(), &rk, black_box(&env)).unwrap())
        });
        // Franking alone: the commitment a sender adds (and a recipient
        // recomputes), and the export's attribution check (signature,
        // commitment, content parse) from an audit envelope.
        let pt = serde_json::to_vec(&content).unwrap();
        g.bench_function(format!("franking_commit/{}KiB", size / 1024), |b| {
            b.iter(|| {
                let fk = message::franking_key(&rk, h.id.as_bytes()).unwrap();
                message::commitment(&fk, black_box(&pt))
            })
        });
        let (env2, att) = message::seal_attributed(&k, &rk, &h, &content).unwrap();
        let ct_sha = cloister_crypto::sha256(env2.ciphertext.as_slice());
        let vk = keys::VerifyKey::from_bytes(&k.sign_pk()).unwrap();
        g.bench_function(format!("verify_attribution/{}KiB", size / 1024), |b| {
            b.iter(|| message::verify_attribution(&vk, black_box(&att), &ct_sha).unwrap())
        });
    }
    g.finish();
}

fn key_release_primitives(c: &mut Criterion) {
    let dev = DeviceKeys::generate().unwrap();
    let km = KmSigner::generate().unwrap();
    let t: TenantId = "acme".parse().unwrap();
    let room = RoomId([5; 16]);
    let rk = RoomKey::generate().unwrap();
    let sealed =
        hpke_seal::seal_room_key(&dev.hpke_pk(), &t, &room, 0, &dev.device_id(), 9, &rk).unwrap();
    let msg = vec![7u8; 300];
    let sig = dev.sign("d", &msg);
    let mut g = c.benchmark_group("primitives");
    g.bench_function("hpke_seal_room_key", |b| {
        b.iter(|| {
            hpke_seal::seal_room_key(
                &dev.hpke_pk(),
                &t,
                &room,
                0,
                &dev.device_id(),
                9,
                black_box(&rk),
            )
            .unwrap()
        })
    });
    g.bench_function("hpke_open_room_key", |b| {
        b.iter(|| hpke_seal::open_room_key(&dev, &t, black_box(&sealed)).unwrap())
    });
    g.bench_function("ed25519_sign_300B", |b| {
        b.iter(|| km.sign("d", black_box(&msg)))
    });
    g.bench_function("ed25519_verify_300B", |b| {
        b.iter(|| keys::verify(&dev.sign_pk(), "d", black_box(&msg), &sig).unwrap())
    });
    g.finish();
}

fn files(c: &mut Criterion) {
    let key = RoomKey::generate().unwrap();
    let data = vec![3u8; 4 * 1024 * 1024];
    let ct = file::seal_all(&key, &data).unwrap();
    let mut g = c.benchmark_group("file");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("seal_4MiB", |b| {
        b.iter(|| file::seal_all(&key, black_box(&data)).unwrap())
    });
    g.bench_function("open_4MiB", |b| {
        b.iter(|| file::open_all(&key, black_box(&ct)).unwrap())
    });
    g.finish();
}

fn capture(c: &mut Criterion) {
    use cloister_crypto::{capture, escrow};
    use cloister_proto::b64::Fixed;
    use cloister_proto::vault::AuditEnvelope;
    let (pk, _sk) = escrow::generate().unwrap();
    let t: TenantId = "acme".parse().unwrap();
    let index_key = RoomKey::generate().unwrap();
    let text: String = "Client XJ-77 wants 250mm 5y payer swaption, indication by 10:30 "
        .repeat(16)[..1024]
        .to_owned();
    let env = AuditEnvelope {
        message_id: MessageId([1; 16]),
        room: RoomId([2; 16]),
        epoch: 0,
        sender: "alice@acme".parse().unwrap(),
        device: cloister_proto::DeviceId([3; 16]),
        participants: (0..10)
            .map(|i| format!("u{i}@acme").parse().unwrap())
            .collect(),
        ts: 1_795_305_600_000,
        ciphertext_sha256: Fixed([4; 32]),
        content: Content::Text { text: text.clone() },
        attachment_sha256: vec![],
        attribution: cloister_proto::vault::Attribution {
            header: cloister_proto::b64::Bytes(vec![b'x'; 300]),
            sig: Fixed([5; 64]),
            franking_key: Fixed([6; 32]),
            plaintext: cloister_proto::b64::Bytes(text.into_bytes()),
        },
        dlp_flags: vec![],
        sender_cert: None,
    };
    let mut g = c.benchmark_group("capture");
    g.bench_function("seal_envelope_1KiB", |b| {
        b.iter(|| capture::seal(&pk, &t, black_box(&env)).unwrap())
    });
    g.bench_function("tokens_1KiB_10_participants", |b| {
        b.iter(|| capture::tokens(&index_key, black_box(&env)))
    });
    g.finish();
}

/// The KM-to-KM exchange of one epoch key: the home KM seals it to the
/// partner's exchange key and signs the grant; the partner verifies the
/// grant and opens the key.
fn exchange(c: &mut Criterion) {
    use cloister_crypto::signed::{KM_KEY_GRANT, km_sign_blob, verify_blob};
    use cloister_proto::federation::{ExchangedKey, KmKeyGrant};
    let home = cloister_crypto::KmSigner::generate().unwrap();
    let partner = cloister_crypto::ExchangeKey::generate().unwrap();
    let (acme, bank): (cloister_proto::TenantId, cloister_proto::TenantId) =
        ("acme".parse().unwrap(), "bank".parse().unwrap());
    let room = cloister_proto::RoomId([5; 16]);
    let key = cloister_crypto::RoomKey::generate().unwrap();
    let grant = |k: &cloister_crypto::RoomKey| {
        let (enc, ct) =
            hpke_seal::seal_exchanged_key(&partner.public(), &acme, &bank, &room, 7, k).unwrap();
        let g = KmKeyGrant {
            home: acme.clone(),
            to: bank.clone(),
            room,
            seq: 12,
            head: cloister_proto::b64::Fixed([1; 32]),
            keys: vec![ExchangedKey {
                epoch: 7,
                enc: cloister_proto::b64::Fixed(enc),
                ct: ct.into(),
            }],
            ts: 1,
        };
        km_sign_blob(&home, KM_KEY_GRANT, &g).unwrap()
    };
    let blob = grant(&key);
    let mut g = c.benchmark_group("exchange");
    g.bench_function("home_seal_and_sign_1_epoch", |b| b.iter(|| grant(&key)));
    g.bench_function("partner_verify_and_open_1_epoch", |b| {
        b.iter(|| {
            let g: KmKeyGrant = verify_blob(&home.public(), KM_KEY_GRANT, &blob, "grant").unwrap();
            let k = &g.keys[0];
            hpke_seal::open_exchanged_key(
                &partner,
                &acme,
                &bank,
                &room,
                7,
                &k.enc.0,
                k.ct.as_slice(),
            )
            .unwrap()
        })
    });
    g.finish();
}

/// Sender signatures as the server checks them: one at a time (strict)
/// and in batches of n (ADR 0017), per signature.
fn signature_batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    let items: Vec<(keys::VerifyKey, Vec<u8>, [u8; 64])> = (0..64)
        .map(|n| {
            let k = DeviceKeys::generate().unwrap();
            let msg = vec![n as u8; 300];
            let sig = k.sign(message::MESSAGE, &msg);
            let mut signed = message::MESSAGE.as_bytes().to_vec();
            signed.push(0);
            signed.extend_from_slice(&msg);
            (
                keys::VerifyKey::from_bytes(&k.sign_pk()).unwrap(),
                signed,
                sig,
            )
        })
        .collect();
    for n in [1usize, 2, 4, 8, 16, 32, 64] {
        let pending: Vec<keys::Pending<'_>> = items[..n]
            .iter()
            .map(|(key, signed, sig)| keys::Pending { key, signed, sig })
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("batch/{n}"), |b| {
            b.iter(|| assert!(keys::verify_batch(black_box(&pending)).iter().all(|&ok| ok)))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    messages,
    signature_batches,
    key_release_primitives,
    files,
    capture,
    exchange
);
criterion_main!(benches);
