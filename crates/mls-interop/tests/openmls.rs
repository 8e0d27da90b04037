//! OpenMLS, an independent implementation of RFC 9420, as a foreign
//! client: it joins a Cloister MLS group from Cloister's Welcome, reads
//! and sends application messages, follows a Cloister commit, and makes a
//! commit of its own that passes Cloister's membership-log check. Its
//! leaf carries a certificate from the firm's KM like any device's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cloister_crypto::{DeviceKeys, KmSigner};
use cloister_mls::{DeviceStore, Expected, KmIdentity, LogBinding, Member, Received};
use cloister_proto::b64::Fixed;
use cloister_proto::km::{DeviceCert, SignedCert};
use cloister_proto::{RoomId, TenantId, UserId};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

const ROOM: RoomId = RoomId([9; 16]);
const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

fn certify(km: &KmSigner, tenant: &TenantId, user: &UserId, keys: &DeviceKeys) -> SignedCert {
    let cert = DeviceCert {
        tenant: tenant.clone(),
        user: user.clone(),
        device: keys.device_id(),
        sign_pk: Fixed(keys.sign_pk()),
        hpke_pk: Fixed(keys.hpke_pk()),
        roles: vec![],
        issued_at: 0,
        not_after: u64::MAX / 2,
        jurisdiction: String::new(),
    };
    cloister_crypto::signed::sign_cert(km, &cert).unwrap()
}

/// The credential Cloister expects: the certificate's `sig ‖ body`.
fn credential_bytes(cert: &SignedCert) -> Vec<u8> {
    [cert.sig.0.as_slice(), cert.body.as_slice()].concat()
}

fn mls_bytes(m: &MlsMessageOut) -> Vec<u8> {
    m.tls_serialize_detached().unwrap()
}

fn mls_in(b: &[u8]) -> MlsMessageIn {
    MlsMessageIn::tls_deserialize_exact(b).unwrap()
}

#[test]
fn openmls_joins_a_cloister_group_and_both_talk() {
    let km = KmSigner::generate().unwrap();
    let tenant: TenantId = "acme".parse().unwrap();
    let identity = KmIdentity::new([(tenant.clone(), km.public())]);

    // Cloister's side: alice's device, mls-rs underneath
    let alice_user: UserId = "alice@acme".parse().unwrap();
    let alice_keys = DeviceKeys::generate().unwrap();
    let alice_cert = certify(&km, &tenant, &alice_user, &alice_keys);
    let alice = Member::new(
        &alice_keys,
        &alice_cert,
        identity.clone(),
        DeviceStore::default(),
    )
    .unwrap();
    alice.create(&ROOM).unwrap();

    // the foreign device: its Ed25519 key certified by the same KM, its
    // MLS state entirely OpenMLS's
    let olaf_user: UserId = "olaf@acme".parse().unwrap();
    let olaf_keys = DeviceKeys::generate().unwrap();
    let olaf_cert = certify(&km, &tenant, &olaf_user, &olaf_keys);
    let provider = OpenMlsRustCrypto::default();
    let seed = olaf_keys.to_secret_bytes().expose()[..32].to_vec();
    let signer =
        SignatureKeyPair::from_raw(SignatureScheme::ED25519, seed, olaf_keys.sign_pk().to_vec());
    let credential = CredentialWithKey {
        credential: BasicCredential::new(credential_bytes(&olaf_cert)).into(),
        signature_key: olaf_keys.sign_pk().to_vec().into(),
    };
    let kp = KeyPackage::builder()
        .build(SUITE, &provider, &signer, credential)
        .unwrap();
    let kp_bytes = mls_bytes(&MlsMessageOut::from(kp.key_package().clone()));

    // alice adds olaf: the log (entry 1) has both as members
    let expected = Expected {
        binding: LogBinding {
            seq: 1,
            head: [1; 32],
        },
        members: [alice_user.clone(), olaf_user.clone()].into(),
        barred: Default::default(),
    };
    let staged = alice.commit(&ROOM, &[kp_bytes], &[], &expected).unwrap();
    assert_eq!(staged.changes.len(), 1);
    let welcome = staged.welcome.clone().unwrap();
    alice.merge(staged).unwrap();

    // olaf joins from Cloister's Welcome (ratchet tree in its extension)
    let join = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build();
    let MlsMessageBodyIn::Welcome(w) = mls_in(&welcome).extract() else {
        panic!("not a Welcome");
    };
    let mut olaf = StagedWelcome::new_from_welcome(&provider, &join, w, None)
        .unwrap()
        .into_group(&provider)
        .unwrap();
    assert_eq!(olaf.group_id().as_slice(), ROOM.0.as_slice());
    assert_eq!(olaf.epoch().as_u64(), 1);
    let creds: Vec<Vec<u8>> = olaf
        .members()
        .map(|m| m.credential.serialized_content().to_vec())
        .collect();
    assert!(creds.contains(&credential_bytes(&alice_cert)));

    // Cloister → OpenMLS
    let (_, ct) = alice
        .encrypt(&ROOM, b"hello from Cloister", b"id-1")
        .unwrap();
    let pm = olaf
        .process_message(&provider, mls_in(&ct).try_into_protocol_message().unwrap())
        .unwrap();
    assert_eq!(pm.aad(), b"id-1");
    let ProcessedMessageContent::ApplicationMessage(app) = pm.into_content() else {
        panic!("not an application message");
    };
    assert_eq!(app.into_bytes(), b"hello from Cloister");

    // OpenMLS → Cloister: alice sees olaf's certified device
    olaf.set_aad(b"id-2".to_vec());
    let out = olaf
        .create_message(&provider, &signer, b"hello from OpenMLS")
        .unwrap();
    match alice
        .process(&ROOM, &mls_bytes(&out), |_| unreachable!())
        .unwrap()
    {
        Received::Application {
            user,
            device,
            aad,
            data,
            ..
        } => {
            assert_eq!(user, olaf_user);
            assert_eq!(device, olaf_keys.device_id());
            assert_eq!(aad, b"id-2");
            assert_eq!(data.as_slice(), b"hello from OpenMLS");
        }
        other => panic!("{other:?}"),
    }

    // a Cloister commit (alice's update), followed by OpenMLS
    let update = alice.commit(&ROOM, &[], &[], &expected).unwrap();
    let commit = update.commit.clone();
    alice.merge(update).unwrap();
    let pm = olaf
        .process_message(
            &provider,
            mls_in(&commit).try_into_protocol_message().unwrap(),
        )
        .unwrap();
    assert_eq!(
        pm.aad(),
        LogBinding {
            seq: 1,
            head: [1; 32]
        }
        .encode()
    );
    let ProcessedMessageContent::StagedCommitMessage(sc) = pm.into_content() else {
        panic!("not a commit");
    };
    olaf.merge_staged_commit(&provider, *sc).unwrap();
    assert_eq!(olaf.epoch().as_u64(), 2);

    // an OpenMLS commit, bound to the log entry like Cloister's, passes
    // Cloister's check and moves both to epoch 3
    olaf.set_aad(expected.binding.encode());
    let (out, _, _) = olaf
        .self_update(&provider, &signer, LeafNodeParameters::default())
        .unwrap()
        .into_messages();
    olaf.merge_pending_commit(&provider).unwrap();
    match alice
        .process(&ROOM, &mls_bytes(&out), |b| {
            assert_eq!(b, Some(expected.binding));
            Ok(expected.clone())
        })
        .unwrap()
    {
        Received::Commit { epoch, changes, .. } => {
            assert_eq!(epoch, 3);
            assert!(changes.is_empty());
        }
        other => panic!("{other:?}"),
    }
    olaf.set_aad(b"id-3".to_vec());
    let out = olaf
        .create_message(&provider, &signer, b"after my update")
        .unwrap();
    match alice
        .process(&ROOM, &mls_bytes(&out), |_| unreachable!())
        .unwrap()
    {
        Received::Application { data, epoch, .. } => {
            assert_eq!(epoch, 3);
            assert_eq!(data.as_slice(), b"after my update");
        }
        other => panic!("{other:?}"),
    }

    // the same foreign client lying about who may join: its commit adding
    // someone the log does not let in is refused by Cloister's check
    let eve_keys = DeviceKeys::generate().unwrap();
    let eve_user: UserId = "eve@acme".parse().unwrap();
    let eve_cert = certify(&km, &tenant, &eve_user, &eve_keys);
    let eve_provider = OpenMlsRustCrypto::default();
    let eve_signer = SignatureKeyPair::from_raw(
        SignatureScheme::ED25519,
        eve_keys.to_secret_bytes().expose()[..32].to_vec(),
        eve_keys.sign_pk().to_vec(),
    );
    let eve_kp = KeyPackage::builder()
        .build(
            SUITE,
            &eve_provider,
            &eve_signer,
            CredentialWithKey {
                credential: BasicCredential::new(credential_bytes(&eve_cert)).into(),
                signature_key: eve_keys.sign_pk().to_vec().into(),
            },
        )
        .unwrap();
    olaf.set_aad(expected.binding.encode());
    let (out, _, _) = olaf
        .add_members(&provider, &signer, &[eve_kp.key_package().clone()])
        .unwrap();
    let r = alice.process(&ROOM, &mls_bytes(&out), |_| Ok(expected.clone()));
    assert!(
        matches!(
            r,
            Err(cloister_mls::Error::Refused(
                cloister_mls::CommitRefusal::NotAMember { .. }
            ))
        ),
        "{r:?}"
    );
    assert_eq!(alice.epoch(&ROOM).unwrap(), 3);
}
