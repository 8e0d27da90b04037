//! The SCIM 2.0 provisioning endpoint (RFC 7643/7644) at `/scim/v2`: the
//! firm's identity provider (Okta, Entra ID) keeps the directory here.
//!
//! ```text
//!  IdP ──Bearer token (minted by an admin, stored hashed)──▶ /scim/v2/{Users,Groups}[/id]
//!      create · get · list(filter, startIndex, count, attributes) · PUT · PATCH · DELETE
//!      ETags (W/"n") with If-Match / If-None-Match; errors as SCIM Error bodies
//!  Users:  active=false disables the user, active=true enables it again,
//!          DELETE disables, revokes every device, keeps the history
//!  Groups: members are users; barrier groups cannot be renamed or deleted
//! ```
//!
//! This file is the edge (routes, auth, statuses, bodies); the resources'
//! rules are in `users.rs` and `groups.rs`, the schemas in `discovery.rs`.

mod discovery;
mod groups;
mod users;

use crate::{Denied, Km};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cloister_scim::{AttrPath, SCHEMA_ERROR, SCHEMA_LIST};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

const SCIM_JSON: &str = "application/scim+json";
/// Largest SCIM request body.
const MAX_BODY: usize = 1 << 20;
/// Largest page of a list.
pub(crate) const MAX_COUNT: usize = 1000;

/// What a resource operation answers.
pub(crate) struct Answer {
    pub created: bool,
    pub body: Value,
    pub version: Option<u64>,
}

/// How a resource is asked for: the base URL (for `location` and `$ref`)
/// and the caller's preconditions.
pub(crate) struct Req {
    pub base: String,
    pub if_match: Option<String>,
    pub token: String,
}

pub(crate) fn router(km: Arc<Km>) -> Router {
    Router::new()
        .route(
            "/scim/v2/ServiceProviderConfig",
            get(discovery::spc).fallback(not_allowed),
        )
        .route(
            "/scim/v2/ResourceTypes",
            get(discovery::resource_types).fallback(not_allowed),
        )
        .route(
            "/scim/v2/ResourceTypes/{id}",
            get(discovery::resource_type).fallback(not_allowed),
        )
        .route(
            "/scim/v2/Schemas",
            get(discovery::schemas).fallback(not_allowed),
        )
        .route(
            "/scim/v2/Schemas/{id}",
            get(discovery::schema).fallback(not_allowed),
        )
        .route(
            "/scim/v2/.search",
            axum::routing::post(search_all).fallback(not_allowed),
        )
        .route(
            "/scim/v2/{rt}",
            get(list).post(create).fallback(not_allowed),
        )
        .route(
            "/scim/v2/{rt}/{id}",
            get(get_one)
                .put(put_one)
                .patch(patch_one)
                .delete(delete_one)
                .fallback(not_allowed),
        )
        .route("/scim/v2", axum::routing::any(not_found))
        .route("/scim/v2/{rt}/{id}/{*rest}", axum::routing::any(not_found))
        .with_state(km)
}

/// A SCIM error body with its status (the status comes from the one
/// mapping of the KM's refusals; `scimType` is the refusal's code when it
/// is one of RFC 7644 §3.12's).
pub(crate) struct Fail(pub Denied);

impl From<Denied> for Fail {
    fn from(d: Denied) -> Fail {
        Fail(d)
    }
}

const SCIM_TYPES: [&str; 8] = [
    "invalidFilter",
    "tooMany",
    "uniqueness",
    "mutability",
    "invalidSyntax",
    "invalidPath",
    "noTarget",
    "invalidValue",
];

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let code = self.0.code;
        let api: cloister_http::ApiError = self.0.into();
        let mut body = json!({
            "schemas": [SCHEMA_ERROR],
            "status": api.status.as_u16().to_string(),
            "detail": api.message,
        });
        if SCIM_TYPES.contains(&code) {
            body["scimType"] = json!(code);
        }
        let mut r = (api.status, scim_json(&body)).into_response();
        if api.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cloister-scim\""),
            );
        }
        r
    }
}

pub(crate) fn scim_error(e: cloister_scim::ScimError) -> Denied {
    let code = match e.kind {
        cloister_scim::ScimType::InvalidFilter => "invalidFilter",
        cloister_scim::ScimType::TooMany => "tooMany",
        cloister_scim::ScimType::Uniqueness => "uniqueness",
        cloister_scim::ScimType::Mutability => "mutability",
        cloister_scim::ScimType::InvalidSyntax => "invalidSyntax",
        cloister_scim::ScimType::InvalidPath => "invalidPath",
        cloister_scim::ScimType::NoTarget => "noTarget",
        cloister_scim::ScimType::InvalidValue => "invalidValue",
    };
    if code == "uniqueness" {
        Denied::conflict(code, e.detail)
    } else {
        Denied::malformed(code, e.detail)
    }
}

fn scim_json(v: &Value) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, SCIM_JSON)], v.to_string())
}

fn respond(a: Answer) -> Response {
    let status = if a.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut r = (status, scim_json(&a.body)).into_response();
    if let Some(v) = a.version
        && let Ok(h) = HeaderValue::from_str(&crate::directory::etag(v))
    {
        r.headers_mut().insert(header::ETAG, h);
    }
    if a.created
        && let Some(loc) = a.body.pointer("/meta/location").and_then(Value::as_str)
        && let Ok(h) = HeaderValue::from_str(loc)
    {
        r.headers_mut().insert(header::LOCATION, h);
    }
    r
}

/// Authenticate the bearer token; build the request context.
fn auth(km: &Km, headers: &HeaderMap) -> Result<Req, Fail> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            let (scheme, tok) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| tok.trim())
        })
        .ok_or_else(|| {
            Denied::unauthenticated("unauthenticated", "a SCIM bearer token is required")
        })?;
    let token = km.scim_token(bearer).ok_or_else(|| {
        Denied::unauthenticated(
            "unauthenticated",
            "the SCIM bearer token is unknown or revoked",
        )
    })?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    Ok(Req {
        base: format!("{proto}://{host}/scim/v2"),
        if_match: headers
            .get(header::IF_MATCH)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned),
        token,
    })
}

fn body_json(b: &Bytes) -> Result<Value, Fail> {
    if b.len() > MAX_BODY {
        return Err(
            Denied::too_large(format!("a SCIM request is at most {MAX_BODY} bytes")).into(),
        );
    }
    let v: Value = serde_json::from_slice(b).map_err(|e| {
        Denied::malformed("invalidSyntax", format!("the body is not valid JSON: {e}"))
    })?;
    if !v.is_object() {
        return Err(Denied::malformed("invalidSyntax", "the body must be a JSON object").into());
    }
    Ok(v)
}

/// `If-None-Match` holds the current version: 304.
fn not_modified(headers: &HeaderMap, version: Option<u64>) -> bool {
    let Some(v) = version else { return false };
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| {
            h.split(',')
                .any(|t| t.trim() == crate::directory::etag(v) || t.trim() == "*")
        })
}

/// Does `If-Match` (if given) name this version?
pub(crate) fn check_if_match(req: &Req, version: u64) -> Result<(), Denied> {
    let Some(h) = &req.if_match else {
        return Ok(());
    };
    let want = crate::directory::etag(version);
    let strong = want.trim_start_matches("W/");
    if h.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t == want || t.trim_start_matches("W/") == strong
    }) {
        Ok(())
    } else {
        Err(Denied::precondition(format!(
            "the resource changed: its version is {want}, the request's If-Match is {h}"
        )))
    }
}

/// List parameters (RFC 7644 §3.4.2).
pub(crate) struct ListQuery {
    pub filter: Option<cloister_scim::Filter>,
    pub start: usize,
    pub count: usize,
    pub attributes: Vec<AttrPath>,
    pub excluded: Vec<AttrPath>,
}

fn attr_list(s: Option<&String>) -> Result<Vec<AttrPath>, Denied> {
    let Some(s) = s else { return Ok(Vec::new()) };
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .take(100)
        .map(|a| {
            let p = cloister_scim::parse_path(a).map_err(scim_error)?;
            if p.filter.is_some() {
                return Err(Denied::malformed(
                    "invalidValue",
                    format!("{a}: attributes name attributes, not filters"),
                ));
            }
            Ok(p.attr)
        })
        .collect()
}

pub(crate) fn get_query(
    q: &HashMap<String, String>,
) -> Result<(Vec<AttrPath>, Vec<AttrPath>), Denied> {
    Ok((
        attr_list(q.get("attributes"))?,
        attr_list(q.get("excludedAttributes"))?,
    ))
}

fn list_query(q: &HashMap<String, String>) -> Result<ListQuery, Denied> {
    let num = |k: &str, default: usize| -> Result<usize, Denied> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .map(|n| n.max(0) as usize)
                .map_err(|_| {
                    Denied::malformed("invalidValue", format!("{k} must be an integer, not {v:?}"))
                }),
        }
    };
    if q.contains_key("sortBy") {
        return Err(Denied::malformed(
            "invalidValue",
            "sorting is not supported (see /ServiceProviderConfig); results come in a stable order",
        ));
    }
    let filter = match q.get("filter") {
        Some(f) if !f.trim().is_empty() => {
            Some(cloister_scim::parse_filter(f).map_err(scim_error)?)
        }
        _ => None,
    };
    let (attributes, excluded) = get_query(q)?;
    Ok(ListQuery {
        filter,
        start: num("startIndex", 1)?.max(1),
        count: num("count", MAX_COUNT)?.min(MAX_COUNT),
        attributes,
        excluded,
    })
}

/// A ListResponse of one page.
pub(crate) fn list_response(total: usize, start: usize, page: Vec<Value>) -> Value {
    json!({
        "schemas": [SCHEMA_LIST],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": page.len(),
        "Resources": page,
    })
}

/// A SCIM error the KM's refusals have no kind for (the edge's own).
fn edge_error(status: StatusCode, detail: &str) -> Response {
    let body = json!({
        "schemas": [SCHEMA_ERROR],
        "status": status.as_u16().to_string(),
        "detail": detail,
    });
    (status, scim_json(&body)).into_response()
}

async fn not_allowed() -> Response {
    edge_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "this method is not allowed on this SCIM endpoint",
    )
}

/// Searching several resource types at once (RFC 7644 §3.4.3 at the root).
async fn search_all(State(km): K, h: HeaderMap) -> Result<Response, Fail> {
    auth(&km, &h)?;
    Ok(edge_error(
        StatusCode::NOT_IMPLEMENTED,
        "searching several resource types at once is not supported; query /Users or /Groups",
    ))
}

async fn not_found() -> Fail {
    Fail(Denied::not_found(
        "not_found",
        "no such SCIM endpoint (see /scim/v2/ResourceTypes)",
    ))
}

type K = State<Arc<Km>>;
type Q = Query<HashMap<String, String>>;

/// The two resource types, from the path.
#[derive(Clone, Copy)]
enum Rt {
    Users,
    Groups,
}

fn rt(segment: &str) -> Result<Rt, Fail> {
    match segment {
        "Users" => Ok(Rt::Users),
        "Groups" => Ok(Rt::Groups),
        _ => Err(Fail(Denied::not_found(
            "not_found",
            "no such SCIM endpoint (see /scim/v2/ResourceTypes)",
        ))),
    }
}

async fn list(
    State(km): K,
    Path(t): Path<String>,
    h: HeaderMap,
    Query(q): Q,
) -> Result<Response, Fail> {
    let t = rt(&t)?;
    let req = auth(&km, &h)?;
    let lq = list_query(&q)?;
    Ok(respond(match t {
        Rt::Users => km.scim_users_list(&req, &lq)?,
        Rt::Groups => km.scim_groups_list(&req, &lq)?,
    }))
}

async fn create(
    State(km): K,
    Path(t): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> Result<Response, Fail> {
    let t = rt(&t)?;
    let req = auth(&km, &h)?;
    let body = body_json(&b)?;
    Ok(respond(match t {
        Rt::Users => km.scim_user_create(&req, body).await?,
        Rt::Groups => km.scim_group_create(&req, body).await?,
    }))
}

async fn get_one(
    State(km): K,
    Path((t, id)): Path<(String, String)>,
    h: HeaderMap,
    Query(q): Q,
) -> Result<Response, Fail> {
    let t = rt(&t)?;
    let req = auth(&km, &h)?;
    let (a, e) = get_query(&q)?;
    let ans = match t {
        Rt::Users => km.scim_user_get(&req, &id, &a, &e)?,
        Rt::Groups => km.scim_group_get(&req, &id, &a, &e)?,
    };
    if not_modified(&h, ans.version) {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    Ok(respond(ans))
}

async fn put_one(
    State(km): K,
    Path((t, id)): Path<(String, String)>,
    h: HeaderMap,
    b: Bytes,
) -> Result<Response, Fail> {
    let t = rt(&t)?;
    let req = auth(&km, &h)?;
    let body = body_json(&b)?;
    Ok(respond(match t {
        Rt::Users => km.scim_user_put(&req, &id, body).await?,
        Rt::Groups => km.scim_group_put(&req, &id, body).await?,
    }))
}

async fn patch_one(
    State(km): K,
    Path((t, id)): Path<(String, String)>,
    h: HeaderMap,
    b: Bytes,
) -> Result<Response, Fail> {
    let t = rt(&t)?;
    let req = auth(&km, &h)?;
    let body = body_json(&b)?;
    Ok(respond(match t {
        Rt::Users => km.scim_user_patch(&req, &id, body).await?,
        Rt::Groups => km.scim_group_patch(&req, &id, body).await?,
    }))
}

async fn delete_one(
    State(km): K,
    Path((t, id)): Path<(String, String)>,
    h: HeaderMap,
) -> Result<Response, Fail> {
    let t = rt(&t)?;
    let req = auth(&km, &h)?;
    match t {
        Rt::Users => km.scim_user_delete(&req, &id).await?,
        Rt::Groups => km.scim_group_delete(&req, &id).await?,
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
