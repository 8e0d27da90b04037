//! Property tests: every decoder and verifier takes arbitrary input without
//! panicking, and no mutation of a valid object is accepted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cloister_crypto::{
    DeviceKeys, KmSigner, RoomKey, file, hpke_seal, message, passphrase, signed, wrap,
};
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::km::{DeviceCert, Role, SignedCert, SignedRequest};
use cloister_proto::room::SignedStatement;
use cloister_proto::server::{Content, Envelope, MessageHeader};
use cloister_proto::{MessageId, RoomId};
use proptest::prelude::*;

fn any_envelope() -> impl Strategy<Value = Envelope> {
    (
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::array::uniform32(any::<u8>()),
    )
        .prop_map(|(h, c, s)| {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&s);
            Envelope {
                header: Bytes(h),
                ciphertext: Bytes(c),
                sig: Fixed(sig),
                receipt: None,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn json_decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = serde_json::from_slice::<Envelope>(&data);
        let _ = serde_json::from_slice::<SignedStatement>(&data);
        let _ = serde_json::from_slice::<SignedRequest>(&data);
        let _ = serde_json::from_slice::<SignedCert>(&data);
        let _ = serde_json::from_slice::<MessageHeader>(&data);
        let _ = serde_json::from_slice::<Content>(&data);
        let _ = serde_json::from_slice::<cloister_proto::km::KmOp>(&data);
        let _ = serde_json::from_slice::<cloister_proto::server::Event>(&data);
    }

    #[test]
    fn verifiers_never_panic(env in any_envelope(), key in proptest::array::uniform32(any::<u8>()), blob in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = message::peek_header(&env);
        let _ = message::verify_envelope(&key, &env);
        let _ = message::decrypt_envelope(&RoomKey::from_bytes(key), &MessageHeader {
            v: 1, room: RoomId([0; 16]), epoch: 0, id: MessageId([0; 16]),
            sender: "a@b".parse().unwrap(), device: cloister_proto::DeviceId([0; 16]), ts: 0, commit: Fixed([0; 32]), counter: 1, after: vec![] }, &env);
        let att = cloister_proto::vault::Attribution { header: env.header.clone(), sig: env.sig, franking_key: Fixed(key), plaintext: Bytes(blob.clone()) };
        if let Ok(vk) = cloister_crypto::keys::VerifyKey::from_bytes(&key) {
            let _ = message::verify_attribution(&vk, &att, &key);
        }
        let st = SignedStatement { actor: cloister_proto::DeviceId([1; 16]), body: Bytes(blob.clone()), sig: env.sig };
        let _ = signed::peek_statement(&st);
        let _ = signed::verify_statement(&key, &st);
        let _ = signed::verify_cert(&key, &SignedCert { body: Bytes(blob.clone()), sig: env.sig });
        let _ = wrap::unwrap(&RoomKey::from_bytes(key), b"", &blob);
        let _ = passphrase::open(b"pw", &blob);
        let _ = file::open_all(&RoomKey::from_bytes(key), &blob);
        let _ = hpke_seal::open(&key, &key, b"", b"", &blob);
    }

    /// Flipping any bit of a valid envelope makes it fail to open.
    #[test]
    fn any_bit_flip_is_rejected(pos in 0usize..10_000, bit in 0u8..8) {
        let k = DeviceKeys::generate().unwrap();
        let rk = RoomKey::generate().unwrap();
        let h = MessageHeader { v: 1, room: RoomId([1; 16]), epoch: 2, id: MessageId([3; 16]),
            sender: "alice@acme".parse().unwrap(), device: k.device_id(), ts: 5, commit: Fixed([0; 32]), counter: 1, after: vec![] };
        let env = message::seal_message(&k, &rk, &h, &Content::Text { text: "flip me".into() }).unwrap();
        let total = env.header.len() + env.ciphertext.len() + 64;
        let p = pos % total;
        let mut bad = env.clone();
        if p < bad.header.len() {
            bad.header.0[p] ^= 1 << bit;
        } else if p < bad.header.len() + bad.ciphertext.len() {
            bad.ciphertext.0[p - env.header.len()] ^= 1 << bit;
        } else {
            bad.sig.0[p - env.header.len() - env.ciphertext.len()] ^= 1 << bit;
        }
        prop_assert!(message::open_message(&k.sign_pk(), &rk, &bad).is_err());
    }

    /// Flipping any bit of a certificate makes it fail verification.
    #[test]
    fn certificate_bit_flips_are_rejected(pos in 0usize..1000, bit in 0u8..8) {
        let km = KmSigner::generate().unwrap();
        let d = DeviceKeys::generate().unwrap();
        let cert = DeviceCert { tenant: "acme".parse().unwrap(), user: "a@acme".parse().unwrap(), device: d.device_id(),
            sign_pk: Fixed(d.sign_pk()), hpke_pk: Fixed(d.hpke_pk()), roles: vec![Role::User], issued_at: 1, not_after: 2, jurisdiction: String::new() };
        let mut sc = signed::sign_cert(&km, &cert).unwrap();
        let n = sc.body.len();
        if pos % (n + 64) < n { sc.body.0[pos % (n + 64)] ^= 1 << bit; } else { sc.sig.0[pos % (n + 64) - n] ^= 1 << bit; }
        prop_assert!(signed::verify_cert(&km.public(), &sc).is_err());
    }
}
