//! Helpers shared by the attribution test and the export bench: KM-signed
//! certificates and audit envelopes of messages really sent.
#![allow(dead_code, clippy::unwrap_used)]

use cloister_crypto::signed::sign_cert;
use cloister_crypto::{DeviceKeys, KmSigner, RoomKey, message};
use cloister_proto::b64::Fixed;
use cloister_proto::km::{DeviceCert, Role, SignedCert};
use cloister_proto::server::{Content, MessageHeader};
use cloister_proto::vault::AuditEnvelope;
use cloister_proto::{MessageId, RoomId, UserId};

/// A certificate of tenant `acme` for `keys`, signed by `km`.
pub fn cert(km: &KmSigner, keys: &DeviceKeys, user: &str, role: Role) -> SignedCert {
    sign_cert(
        km,
        &DeviceCert {
            tenant: "acme".parse().unwrap(),
            user: user.parse().unwrap(),
            device: keys.device_id(),
            sign_pk: Fixed(keys.sign_pk()),
            hpke_pk: Fixed(keys.hpke_pk()),
            roles: vec![role],
            issued_at: 0,
            not_after: u64::MAX / 2,
            jurisdiction: String::new(),
        },
    )
    .unwrap()
}

/// The audit envelope of message number `n` that `sender`'s device (as
/// `user`) really sealed in `room` under `rk`: attributable.
pub fn attributed(
    n: u64,
    room: RoomId,
    sender: &DeviceKeys,
    user: &str,
    content: Content,
    participants: Vec<UserId>,
    rk: &RoomKey,
) -> AuditEnvelope {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    let header = MessageHeader {
        v: 1,
        room,
        epoch: 0,
        id: MessageId(id),
        sender: user.parse().unwrap(),
        device: sender.device_id(),
        ts: 1_795_305_600_000 + n,
        commit: Fixed([0; 32]),
        counter: 1,
        after: vec![],
    };
    let (env, attribution) = message::seal_attributed(sender, rk, &header, &content).unwrap();
    AuditEnvelope {
        message_id: header.id,
        room,
        epoch: 0,
        sender: header.sender,
        device: header.device,
        participants,
        ts: header.ts,
        ciphertext_sha256: Fixed(cloister_crypto::sha256(env.ciphertext.as_slice())),
        content,
        attachment_sha256: vec![],
        attribution,
        dlp_flags: vec![],
        sender_cert: None,
    }
}
