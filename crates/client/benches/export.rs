//! eDiscovery export, the two halves of a decryption session's work per
//! message: opening a sealed envelope with the reconstructed escrow key, and
//! writing the export (EML with MIME attachments, sealed copy, JSONL,
//! manifest with hashes and proofs, signature). Throughput is bytes written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cloister_client::export::{ExportItem, Source, write};
use cloister_crypto::signed::{self, km_sign_blob};
use cloister_crypto::{DeviceKeys, KmSigner, capture, escrow};
use cloister_proto::b64::Fixed;
use cloister_proto::km::{Case, CaseScope, InclusionProof, Role, VaultDescriptor};
use cloister_proto::server::Content;
use cloister_proto::vault::AuditEnvelope;
use cloister_proto::{RoomId, TenantId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "../tests/support/mod.rs"]
mod support;
use support::cert as cert_for;

/// An attributable audit envelope of alice's message number `i`.
fn envelope(i: u64, content: Content, sender: &DeviceKeys) -> AuditEnvelope {
    support::attributed(
        i,
        RoomId([2; 16]),
        sender,
        "alice@acme",
        content,
        vec!["alice@acme".parse().unwrap(), "bob@acme".parse().unwrap()],
        &cloister_crypto::RoomKey::from_bytes([7; 32]),
    )
}

fn bench(c: &mut Criterion) {
    let tenant: TenantId = "acme".parse().unwrap();
    let (pk, sk) = escrow::generate().unwrap();
    let km = KmSigner::generate().unwrap();
    let alice = DeviceKeys::generate().unwrap();
    let alice_cert = cert_for(&km, &alice, "alice@acme", Role::User);
    let text = "Harbourview 2033s: sell 40mm at 101.5, ".repeat(26); // ≈ 1 KiB
    let sealed = capture::seal(
        &pk,
        &tenant,
        &envelope(0, Content::Text { text: text.clone() }, &alice),
    )
    .unwrap();
    let mut g = c.benchmark_group("export");
    g.throughput(Throughput::Elements(1));
    g.bench_function("open_1k_envelope", |b| {
        b.iter(|| capture::open(&sk, &sealed).unwrap())
    });

    let dev = DeviceKeys::generate().unwrap();
    let cert = cert_for(&km, &dev, "olivia@acme", Role::Compliance);
    let case = km_sign_blob(
        &km,
        signed::CASE,
        &Case {
            tenant: tenant.clone(),
            case: "bench".into(),
            title: String::new(),
            officer: "olivia@acme".parse().unwrap(),
            officer_device: dev.device_id(),
            session_pk: Fixed(pk),
            scope: CaseScope {
                custodians: vec![],
                rooms: vec![RoomId([2; 16])],
                from_ms: 0,
                to_ms: u64::MAX / 2,
                reseal: None,
            },
            version: 1,
            hold: false,
            opened_ms: 0,
        },
    )
    .unwrap();
    let vault = km_sign_blob(
        &km,
        signed::VAULT,
        &VaultDescriptor {
            tenant: tenant.clone(),
            url: "http://vault".into(),
            receipt_pk: Fixed([1; 32]),
            log_key: "x".into(),
            capture_required: true,
            registered_ms: 0,
            jurisdiction: String::new(),
        },
    )
    .unwrap();
    let src = Source {
        keys: &dev,
        cert: &cert,
        case: &case,
        vault: &vault,
        km_sign_pk: km.public(),
        checkpoint: "checkpoint",
        unopened: &[],
        partners: None,
    };
    let sealed_bytes = serde_json::to_vec(&sealed).unwrap();
    let entry = InclusionProof {
        index: 0,
        size: 1 << 20,
        data: vec![0u8; 250].into(),
        proof: vec![Fixed([9; 32]); 20],
    };
    let file = vec![0x5au8; 1 << 20];
    for (name, n, with_files) in [
        ("1000_text_messages", 1000u64, false),
        ("100_messages_with_1MiB_files", 100, true),
    ] {
        let items: Vec<ExportItem> = (0..n)
            .map(|i| {
                let content = if with_files {
                    Content::File {
                        name: format!("sheet-{i}.bin"),
                        size: file.len() as u64,
                        blob: "b".into(),
                        key: Fixed([1; 32]),
                        blob_sha256: Fixed([2; 32]),
                        sha256: Fixed([3; 32]),
                    }
                } else {
                    Content::Text { text: text.clone() }
                };
                ExportItem {
                    envelope: envelope(i, content, &alice),
                    sealed: sealed_bytes.clone(),
                    entry: entry.clone(),
                    attachment: with_files.then(|| file.clone()),
                    sender_cert: Some(alice_cert.clone()),
                }
            })
            .collect();
        // bytes one run writes
        let probe = tempfile::tempdir().unwrap();
        let bytes = write(&probe.path().join("x"), &src, &items, &|_, _| {})
            .unwrap()
            .bytes;
        g.throughput(Throughput::Bytes(bytes));
        g.sample_size(10);
        // Exports of text cases are kept until the end: deleting thousands of
        // files between iterations makes ext4's inode allocator scan
        // recently deleted inodes, which a real export into a fresh
        // directory does not meet.
        let keep = std::sync::Mutex::new(Vec::new());
        g.bench_function(name, |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |d| {
                    let r = write(&d.path().join("x"), &src, &items, &|_, _| {}).unwrap();
                    if !with_files {
                        keep.lock().unwrap().push(d);
                        return (None, r);
                    }
                    (Some(d), r)
                },
                criterion::BatchSize::PerIteration,
            )
        });
        drop(keep);
    }
    g.finish();
}

criterion_group!(export, bench);
criterion_main!(export);
