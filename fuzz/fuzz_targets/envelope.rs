//! Message envelopes and attributions as the server, a recipient, the
//! vault and `export verify` receive them, and the live socket's frames
//! (a client's `post`, the server's events). The input is tried as JSON as it
//! comes, and split into header and plaintext that are sealed and signed
//! with a fixed device key, so the header and content decoders behind the
//! signature and the AEAD are reached.
#![no_main]

use cloister_crypto::message::{open_message, peek_header, seal_raw, verify_attribution};
use cloister_crypto::{DeviceKeys, RoomKey};
use cloister_proto::server::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = DeviceKeys::from_secrets(&[3u8; 32], &[4u8; 32]) else {
        return;
    };
    let room_key = RoomKey::from_bytes([5u8; 32]);
    let Ok(vk) = cloister_crypto::keys::VerifyKey::from_bytes(&keys.sign_pk()) else {
        return;
    };
    if let Ok(env) = serde_json::from_slice::<Envelope>(data) {
        let _ = peek_header(&env);
        let _ = open_message(&keys.sign_pk(), &room_key, &env);
    }
    if let Ok(cloister_proto::server::ClientFrame::Post { envelope, .. }) =
        serde_json::from_slice::<cloister_proto::server::ClientFrame>(data)
    {
        let _ = peek_header(&envelope);
    }
    if let Ok(cloister_proto::server::Event::Message { envelope, .. }) =
        serde_json::from_slice::<cloister_proto::server::Event>(data)
    {
        let _ = open_message(&keys.sign_pk(), &room_key, &envelope);
    }
    if let Ok(att) = serde_json::from_slice::<cloister_proto::vault::Attribution>(data) {
        let _ = verify_attribution(&vk, &att, &[0u8; 32]);
    }
    let (header, plaintext) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(env) = seal_raw(&keys, &room_key, &[6u8; 16], header.to_vec(), plaintext) {
        let _ = open_message(&keys.sign_pk(), &room_key, &env);
    }
});
