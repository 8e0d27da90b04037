//! Attribution in eDiscovery exports: an insider (who holds the escrow
//! public key, index keys and room keys) seals an envelope saying words its
//! sender never signed. The exporter leaves it out with the reason, and
//! `verify` refuses an export that shows it as a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cloister_client::export::{self, ExportItem, Source};
use cloister_crypto::signed::{self, km_sign_blob};
use cloister_crypto::{DeviceKeys, KmSigner, RoomKey, capture, escrow};
use cloister_log::{AuditEvent, AuditRecord, Checkpoint, NoteSigner, Tree, leaf_hash};
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::km::{Case, CaseScope, InclusionProof, Role, SignedCert, VaultDescriptor};
use cloister_proto::server::Content;
use cloister_proto::vault::AuditEnvelope;
use cloister_proto::{RoomId, TenantId, UserId};
use std::path::Path;

mod support;
use support::cert;

const ROOM: RoomId = RoomId([0x21; 16]);

/// A message `sender` really sent, as its audit envelope.
fn sent(n: u8, sender: &DeviceKeys, user: &str, text: &str, rk: &RoomKey) -> AuditEnvelope {
    let content = Content::Text { text: text.into() };
    support::attributed(n as u64, ROOM, sender, user, content, vec![], rk)
}

struct Fixture {
    km: KmSigner,
    officer: DeviceKeys,
    officer_cert: SignedCert,
    case: cloister_proto::km::SignedBlob,
    vault: cloister_proto::km::SignedBlob,
    checkpoint: String,
    items: Vec<ExportItem>,
}

/// Envelopes as a vault would hold them: sealed to the escrow key, each an
/// ingestion entry of a signed log, with inclusion proofs.
fn fixture(km: KmSigner, envelopes: Vec<(AuditEnvelope, SignedCert)>) -> Fixture {
    let tenant: TenantId = "acme".parse().unwrap();
    let officer = DeviceKeys::generate().unwrap();
    let officer_cert = cert(&km, &officer, "olivia@acme", Role::Compliance);
    let (escrow_pk, _) = escrow::generate().unwrap();
    let log_key = KmSigner::generate().unwrap();
    let origin = cloister_audit::vault_origin(&tenant);
    let mut tree = Tree::new();
    let mut sealed = Vec::new();
    for (e, _) in &envelopes {
        let s = serde_json::to_vec(&capture::seal(&escrow_pk, &tenant, e).unwrap()).unwrap();
        let rec = AuditRecord {
            ts: e.ts,
            actor: None,
            event: AuditEvent::EnvelopeIngested {
                message_id: e.message_id.to_hex(),
                room: ROOM,
                envelope_sha256: hex::encode(cloister_crypto::sha256(&s)),
                ciphertext_sha256: hex::encode(e.ciphertext_sha256.0),
                device: e.device,
            },
        };
        let data = rec.to_bytes().unwrap();
        tree.push(leaf_hash(&data));
        sealed.push((s, data));
    }
    let size = tree.len();
    let cp = Checkpoint {
        origin: origin.clone(),
        size,
        root: tree.root(size).unwrap(),
    };
    let signer = NoteSigner {
        name: &origin,
        key: &log_key,
    };
    let checkpoint = signer.sign(&cp.body()).unwrap();
    let items = envelopes
        .into_iter()
        .zip(sealed)
        .enumerate()
        .map(|(i, ((e, sender_cert), (s, data)))| ExportItem {
            envelope: e,
            sealed: s,
            entry: InclusionProof {
                index: i as u64,
                size,
                data: data.into(),
                proof: tree
                    .inclusion_proof(i as u64, size)
                    .unwrap()
                    .into_iter()
                    .map(Fixed)
                    .collect(),
            },
            attachment: None,
            sender_cert: Some(sender_cert),
        })
        .collect();
    let case = km_sign_blob(
        &km,
        signed::CASE,
        &Case {
            tenant: tenant.clone(),
            case: "c1".into(),
            title: String::new(),
            officer: "olivia@acme".parse().unwrap(),
            officer_device: officer.device_id(),
            session_pk: Fixed([0; 32]),
            scope: CaseScope {
                custodians: vec![],
                rooms: vec![ROOM],
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
            tenant,
            url: "http://vault".into(),
            receipt_pk: Fixed([1; 32]),
            log_key: signer.verifier_key(),
            capture_required: true,
            registered_ms: 0,
            jurisdiction: String::new(),
        },
    )
    .unwrap();
    Fixture {
        km,
        officer,
        officer_cert,
        case,
        vault,
        checkpoint,
        items,
    }
}

fn write(f: &Fixture, dir: &Path) -> export::ExportSummary {
    let src = Source {
        keys: &f.officer,
        cert: &f.officer_cert,
        case: &f.case,
        vault: &f.vault,
        km_sign_pk: f.km.public(),
        checkpoint: &f.checkpoint,
        unopened: &[],
        partners: None,
    };
    export::write(dir, &src, &f.items, &|_, _| {}).unwrap()
}

#[test]
fn forged_envelopes_are_left_out_and_an_export_showing_one_fails_verify() {
    let rk = RoomKey::generate().unwrap();
    let alice = DeviceKeys::generate().unwrap();
    let bob = DeviceKeys::generate().unwrap();
    let honest = sent(1, &alice, "alice@acme", "buy 10mm UST 10y at 4.12", &rk);
    // bob, an insider, re-seals alice's real message with other words: he
    // knows the room key, so the franking key too, but not a second opening
    let mut lie = sent(2, &alice, "alice@acme", "sell 10mm", &rk);
    lie.content = Content::Text {
        text: "I approve the off-book trade".into(),
    };
    lie.attribution.plaintext = Bytes(serde_json::to_vec(&lie.content).unwrap());
    // and signs a message of his own that names alice as its sender
    let mut claimed = sent(3, &bob, "alice@acme", "wire it to account 4471", &rk);
    claimed.sender = "alice@acme".parse::<UserId>().unwrap();

    let km = KmSigner::generate().unwrap();
    let alice_cert = cert(&km, &alice, "alice@acme", Role::User);
    let bob_cert = cert(&km, &bob, "bob@acme", Role::User);
    let f = fixture(
        km,
        vec![
            (honest.clone(), alice_cert.clone()),
            (lie, alice_cert.clone()),
            // bob's signature offered as alice's device
            (claimed.clone(), alice_cert),
            // or with his own certificate, which is not alice's
            (claimed, bob_cert),
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let s = write(&f, &out);
    assert_eq!((s.messages, s.unattributable), (1, 3));
    let m: export::Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let reasons: Vec<&str> = m.unattributable.iter().map(|u| u.reason.as_str()).collect();
    assert!(
        reasons[0].contains("not what the sender committed to"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("signature does not cover"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("not the certificate's holder"),
        "{reasons:?}"
    );
    let jsonl = std::fs::read_to_string(out.join("messages.jsonl")).unwrap();
    assert!(jsonl.contains("buy 10mm") && !jsonl.contains("off-book") && !jsonl.contains("4471"));
    let v = export::verify(&out, Some(f.km.public())).unwrap();
    assert_eq!((v.messages, v.unattributable), (1, 3));

    // A dishonest exporter shows the honest message with other words and
    // re-signs everything with the officer's own key: verify names it.
    let mut m = m;
    let e = &mut m.envelopes[0];
    let forged = Content::Text {
        text: "sell 10mm UST 10y at 4.12".into(),
    };
    e.attribution.plaintext = Bytes(serde_json::to_vec(&forged).unwrap());
    let new_jsonl = jsonl.replace("buy 10mm", "sell 10mm");
    std::fs::write(out.join("messages.jsonl"), &new_jsonl).unwrap();
    for fe in m.files.iter_mut().filter(|fe| fe.path == "messages.jsonl") {
        fe.sha256 = hex::encode(cloister_crypto::sha256(new_jsonl.as_bytes()));
        fe.size = new_jsonl.len() as u64;
    }
    let mb = serde_json::to_vec_pretty(&m).unwrap();
    std::fs::write(out.join("manifest.json"), &mb).unwrap();
    let sig = f.officer.sign(export::EXPORT, &mb);
    std::fs::write(out.join("manifest.sig"), cloister_proto::b64::encode(&sig)).unwrap();
    let err = export::verify(&out, Some(f.km.public())).unwrap_err();
    assert!(err.starts_with("UNATTRIBUTABLE"), "{err}");
    assert!(err.contains("not what the sender committed to"), "{err}");

    // Showing the signed words but under another name fails too.
    let mut m2 = m.clone();
    m2.envelopes[0].attribution = honest.attribution.clone();
    std::fs::write(
        out.join("messages.jsonl"),
        jsonl.replace("alice@acme", "bob@acme"),
    )
    .unwrap();
    let jl = std::fs::read(out.join("messages.jsonl")).unwrap();
    for fe in m2.files.iter_mut().filter(|fe| fe.path == "messages.jsonl") {
        fe.sha256 = hex::encode(cloister_crypto::sha256(&jl));
        fe.size = jl.len() as u64;
    }
    let mb = serde_json::to_vec_pretty(&m2).unwrap();
    std::fs::write(out.join("manifest.json"), &mb).unwrap();
    std::fs::write(
        out.join("manifest.sig"),
        cloister_proto::b64::encode(&f.officer.sign(export::EXPORT, &mb)),
    )
    .unwrap();
    let err = export::verify(&out, Some(f.km.public())).unwrap_err();
    assert!(err.contains("not shown as its sender signed it"), "{err}");
}
