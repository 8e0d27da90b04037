//! SCIM PATCH bodies (RFC 7644 §3.5.2) from an identity provider: decode,
//! parse the operations, apply them to a user. None may panic.
#![no_main]

use cloister_scim::{Ctx, SCHEMA_ENTERPRISE, SCHEMA_USER, apply_patch, parse_patch};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let ctx = Ctx {
        core: SCHEMA_USER,
        case_exact: &["id", "externalid", "members.value"],
        extensions: &[SCHEMA_ENTERPRISE],
    };
    let Ok(ops) = parse_patch(&body) else {
        return;
    };
    let mut user = json!({
        "schemas": [SCHEMA_USER, SCHEMA_ENTERPRISE],
        "id": "0000002a",
        "userName": "alice@acme",
        "name": {"givenName": "Alice"},
        "active": true,
        "emails": [{"value": "alice@bank.example", "type": "work"}],
        "members": [{"value": "u1"}, {"value": "u2"}],
        SCHEMA_ENTERPRISE: {"department": "Credit"}
    });
    let _ = apply_patch(&mut user, &ops, &ctx);
});
