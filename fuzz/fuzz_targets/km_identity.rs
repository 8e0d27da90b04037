//! A partner firm's KM identity as an admin pastes it: parse it, and a
//! parsed identity must print and parse back to itself.
#![no_main]

use cloister_proto::federation::KmIdentity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = KmIdentity::parse(s) {
        let text = id.to_key_string();
        assert_eq!(KmIdentity::parse(&text).ok(), Some(id), "round trip");
        let _ = cloister_crypto::km_identity_fingerprint(&text);
    }
});
