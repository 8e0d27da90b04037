//! `/ServiceProviderConfig`, `/ResourceTypes` and `/Schemas` (RFC 7643
//! §5–7): what this endpoint supports, described for clients that discover.

use super::{Fail, K, Req, auth, list_response, scim_json};
use crate::Denied;
use crate::directory::model::SCHEMA_CLOISTER_USER;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use cloister_scim::{SCHEMA_ENTERPRISE, SCHEMA_GROUP, SCHEMA_USER};
use serde_json::{Value, json};

const SCHEMA_SPC: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
const SCHEMA_RT: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

fn ok(v: Value) -> Response {
    scim_json(&v).into_response()
}

pub(super) async fn spc(State(km): K, h: HeaderMap) -> Result<Response, Fail> {
    let req = auth(&km, &h)?;
    Ok(ok(json!({
        "schemas": [SCHEMA_SPC],
        "documentationUri": "https://github.com/cloister/cloister/blob/main/docs/controls.md",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": super::MAX_COUNT},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "A token minted by a tenant admin with `cloister admin scim-token`",
            "primary": true
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{}/ServiceProviderConfig", req.base)}
    })))
}

fn resource_types_of(req: &Req) -> Vec<Value> {
    vec![
        json!({
            "schemas": [SCHEMA_RT],
            "id": "User",
            "name": "User",
            "endpoint": "/Users",
            "description": "People of the firm",
            "schema": SCHEMA_USER,
            "schemaExtensions": [
                {"schema": SCHEMA_ENTERPRISE, "required": false},
                {"schema": SCHEMA_CLOISTER_USER, "required": false}
            ],
            "meta": {"resourceType": "ResourceType", "location": format!("{}/ResourceTypes/User", req.base)}
        }),
        json!({
            "schemas": [SCHEMA_RT],
            "id": "Group",
            "name": "Group",
            "endpoint": "/Groups",
            "description": "Groups: information-barrier and entitlement groups",
            "schema": SCHEMA_GROUP,
            "meta": {"resourceType": "ResourceType", "location": format!("{}/ResourceTypes/Group", req.base)}
        }),
    ]
}

pub(super) async fn resource_types(State(km): K, h: HeaderMap) -> Result<Response, Fail> {
    let req = auth(&km, &h)?;
    let all = resource_types_of(&req);
    Ok(ok(list_response(all.len(), 1, all)))
}

pub(super) async fn resource_type(
    State(km): K,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    let req = auth(&km, &h)?;
    resource_types_of(&req)
        .into_iter()
        .find(|r| r["id"].as_str() == Some(id.as_str()))
        .map(ok)
        .ok_or_else(|| {
            Fail(Denied::not_found(
                "not_found",
                format!("no resource type {id}"),
            ))
        })
}

/// One attribute definition.
fn attr(name: &str, ty: &str, desc: &str) -> Value {
    json!({
        "name": name,
        "type": ty,
        "multiValued": false,
        "description": desc,
        "required": false,
        "caseExact": false,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": "none"
    })
}

fn with(mut a: Value, k: &str, v: Value) -> Value {
    a[k] = v;
    a
}

fn multi(a: Value) -> Value {
    with(a, "multiValued", json!(true))
}

fn complex(name: &str, desc: &str, subs: Vec<Value>) -> Value {
    with(
        attr(name, "complex", desc),
        "subAttributes",
        Value::Array(subs),
    )
}

fn schemas_of(req: &Req) -> Vec<Value> {
    let s = |n, d| attr(n, "string", d);
    let user_attrs = vec![
        with(
            with(
                s(
                    "userName",
                    "Unique name of the user at the identity provider",
                ),
                "required",
                json!(true),
            ),
            "uniqueness",
            json!("server"),
        ),
        complex(
            "name",
            "The person's name",
            vec![
                s("formatted", "Full name"),
                s("familyName", "Family name"),
                s("givenName", "Given name"),
                s("middleName", "Middle name"),
            ],
        ),
        s("displayName", "Name shown in the directory"),
        s("title", "Job title"),
        attr(
            "active",
            "boolean",
            "False suspends the user (keys refused, devices cut off)",
        ),
        multi(complex(
            "emails",
            "Email addresses",
            vec![
                s("value", "Address"),
                with(
                    s("type", "work, home or other"),
                    "canonicalValues",
                    json!(["work", "home", "other"]),
                ),
                attr("primary", "boolean", "The primary address"),
            ],
        )),
        multi(complex(
            "entitlements",
            "Cloister entitlements: create_rooms, create_public_rooms, send_files, external_chat, compliance, custodian, surveillance (other values are kept and ignored)",
            vec![
                s("value", "Entitlement"),
                s("display", "Display name"),
                s("type", "Type"),
                attr("primary", "boolean", "Primary"),
            ],
        )),
    ];
    let enterprise = vec![s("department", "Department"), s("division", "Division")];
    let cloister = vec![
        s("desk", "Trading desk"),
        s("location", "Office location"),
        s("jobFunction", "Job function"),
        s(
            "jurisdiction",
            "Legal jurisdiction (escrow policies count custodians by it)",
        ),
        multi(s("assetClasses", "Asset classes covered")),
    ];
    let group_attrs = vec![
        with(
            s(
                "displayName",
                "Group name (barrier policies name groups by it)",
            ),
            "required",
            json!(true),
        ),
        multi(complex(
            "members",
            "Users in the group (nested groups are not supported)",
            vec![
                with(
                    with(
                        s("value", "The member's id"),
                        "mutability",
                        json!("immutable"),
                    ),
                    "caseExact",
                    json!(true),
                ),
                with(
                    with(
                        attr("$ref", "reference", "The member's URI"),
                        "referenceTypes",
                        json!(["User"]),
                    ),
                    "mutability",
                    json!("immutable"),
                ),
                with(
                    s("display", "The member's name"),
                    "mutability",
                    json!("readOnly"),
                ),
                with(
                    with(s("type", "User"), "canonicalValues", json!(["User"])),
                    "mutability",
                    json!("immutable"),
                ),
            ],
        )),
    ];
    let schema = |id: &str, name: &str, desc: &str, attrs: Vec<Value>| {
        json!({
            "schemas": [SCHEMA_SCHEMA],
            "id": id,
            "name": name,
            "description": desc,
            "attributes": attrs,
            "meta": {"resourceType": "Schema", "location": format!("{}/Schemas/{id}", req.base)}
        })
    };
    vec![
        schema(SCHEMA_USER, "User", "User account", user_attrs),
        schema(
            SCHEMA_ENTERPRISE,
            "EnterpriseUser",
            "Enterprise user",
            enterprise,
        ),
        schema(
            SCHEMA_CLOISTER_USER,
            "CloisterUser",
            "Cloister directory attributes",
            cloister,
        ),
        schema(SCHEMA_GROUP, "Group", "Group", group_attrs),
    ]
}

pub(super) async fn schemas(State(km): K, h: HeaderMap) -> Result<Response, Fail> {
    let req = auth(&km, &h)?;
    let all = schemas_of(&req);
    Ok(ok(list_response(all.len(), 1, all)))
}

pub(super) async fn schema(
    State(km): K,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    let req = auth(&km, &h)?;
    schemas_of(&req)
        .into_iter()
        .find(|r| r["id"].as_str() == Some(id.as_str()))
        .map(ok)
        .ok_or_else(|| Fail(Denied::not_found("not_found", format!("no schema {id}"))))
}
