//! SCIM filters and attribute paths from an identity provider's query
//! string: parse, evaluate over a user, project by the path. None may panic.
#![no_main]

use cloister_scim::{Ctx, SCHEMA_ENTERPRISE, SCHEMA_USER, parse_filter, parse_path, project};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = Ctx {
        core: SCHEMA_USER,
        case_exact: &["id", "externalid", "members.value"],
        extensions: &[SCHEMA_ENTERPRISE],
    };
    let user = json!({
        "schemas": [SCHEMA_USER, SCHEMA_ENTERPRISE],
        "id": "0000002a",
        "userName": "alice@acme",
        "name": {"givenName": "Alice", "familyName": "Ng"},
        "title": "Trader",
        "active": true,
        "emails": [{"value": "alice@bank.example", "type": "work", "primary": true}],
        "groups": [{"value": "g1", "display": "Rates"}],
        "meta": {"lastModified": "2026-11-01T10:00:00Z", "version": "W/\"3\""},
        SCHEMA_ENTERPRISE: {"department": "Credit", "employeeNumber": 42}
    });
    if let Ok(f) = parse_filter(s) {
        let _ = f.matches(&user, &ctx);
    }
    if let Ok(p) = parse_path(s) {
        let _ = project(&user, std::slice::from_ref(&p.attr), &[], &["id"], &ctx);
        let _ = project(&user, &[], std::slice::from_ref(&p.attr), &["id"], &ctx);
    }
});
