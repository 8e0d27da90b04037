//! HTTP + WebSocket API of the messaging server.
//!
//! | method | path | auth | body / answer |
//! |---|---|---|---|
//! | POST | `/v1/tenants` | operator token | `RegisterTenant` |
//! | POST | `/v1/tenants/{tenant}/pin` | | `PinCheck` → `PinCheckResponse` |
//! | POST | `/v1/devices` | KM-signed cert | `RegisterDevice` |
//! | GET | `/v1/devices/{device}` | session of the same tenant | `SignedCert` |
//! | POST | `/v1/session` | device signature | `LoginRequest` → `LoginResponse` |
//! | POST | `/v1/notices` | KM signature | `PostNotice` |
//! | GET | `/v1/rooms` | session | `[RoomSummary]` |
//! | GET | `/v1/rooms/{room}` | member | `RoomSummary` |
//! | GET/POST | `/v1/rooms/{room}/log` | member / actor | `LogPage` / `AppendLog` |
//! | GET/POST | `/v1/rooms/{room}/messages` | member | `HistoryPage` / `Envelope` |
//! | PUT | `/v1/rooms/{room}/blobs/{id}` | member | streamed bytes → `BlobResponse` |
//! | GET | `/v1/blobs/{id}` | member of the blob's room | streamed bytes |
//! | GET | `/v1/ws` | session (header or `?token=`) | stream of `Event`; `ClientFrame` posts (`live`) |
//! | | `/v1/mls/…`, `/v1/rooms/{room}/mls/…` | session / member | the MLS delivery service (`mls`) |

use crate::{Caller, Server};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use cloister_crypto::signed::{LOGIN, login_transcript, verify_cert, verify_notice};
use cloister_http::{ApiError, ApiJson, bad_param};
use cloister_policy::RoomState;
use cloister_proto::b64::Fixed;
use cloister_proto::km::{Notice, SignedCert};
use cloister_proto::room::SignedStatement;
use cloister_proto::server::{
    AppendLog, AppendLogResponse, BlobResponse, Envelope, Event, HistoryPage, LogPage,
    LoginRequest, LoginResponse, Ok as OkBody, PinCheck, PinCheckResponse, PostNotice,
    RegisterDevice, RegisterTenant, RoomSummary, StoredMessage,
};
use cloister_proto::{DeviceId, RoomId, TenantId, limits, now_millis, now_secs};
use cloister_store::{BlobRow, DeviceRow};
use futures_util::StreamExt;
use serde::Deserialize;
use std::sync::Arc;

type S = State<Arc<Server>>;

/// Largest KM notice (a controls notice names the members of walled groups).
const MAX_NOTICE: usize = 16 << 20;

/// The server's API: its routes and their OpenAPI description, from the
/// same handler annotations.
fn api(blob_limit: usize) -> utoipa_axum::router::OpenApiRouter<Arc<Server>> {
    use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
    use utoipa_axum::routes;
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(register_tenant))
        .routes(routes!(pin_check))
        .routes(routes!(register_device))
        .routes(routes!(get_device))
        .routes(routes!(login))
        // a large firm's controls notice (walled groups' members) is big
        .routes(routes!(post_notice).layer(DefaultBodyLimit::max(MAX_NOTICE)))
        .routes(routes!(list_rooms))
        .routes(routes!(crate::roomlog::directory))
        .routes(routes!(crate::inspect::tenant_rooms))
        .routes(routes!(crate::inspect::post_verdict))
        .routes(routes!(crate::inspect::get_verdicts))
        .routes(routes!(get_room))
        .routes(routes!(get_log, append_log))
        .routes(routes!(crate::roomlog::km_append))
        .routes(routes!(crate::roomlog::km_append_batch))
        .routes(routes!(
            crate::connections::request,
            crate::connections::list
        ))
        .routes(routes!(crate::connections::answer))
        .routes(routes!(crate::connections::remove))
        .routes(routes!(crate::roomlog::km_read))
        .routes(routes!(history, crate::post::post_message))
        .routes(routes!(put_blob).layer(DefaultBodyLimit::max(blob_limit)))
        .routes(routes!(get_blob))
        .routes(routes!(crate::live::ws))
        .routes(routes!(
            crate::mls::upload_key_packages,
            crate::mls::key_package_count
        ))
        .routes(routes!(crate::mls::claim))
        .routes(routes!(crate::mls::status))
        .routes(routes!(crate::mls::init_group))
        .routes(routes!(crate::mls::commits, crate::mls::post_commit))
        .routes(routes!(crate::mls::welcomes))
        .routes(routes!(crate::mls::delete_welcome))
}

/// The server's OpenAPI description (served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api(0).into_openapi()
}

pub fn router(server: Arc<Server>) -> Router {
    let blob_limit = server.config.max_attachment as usize + 1;
    let metrics = server.metrics().clone();
    let ready = server.ready_check();
    let per_address = Arc::new(cloister_http::limit::Limiter::per_second(
        "requests from this address",
        server.config.limits.per_address_per_sec,
    ));
    let (routes, doc) = api(blob_limit).split_for_parts();
    let api = routes
        .merge(cloister_http::openapi_route(
            doc.to_pretty_json().unwrap_or_default(),
        ))
        .fallback(cloister_http::not_found)
        .method_not_allowed_fallback(cloister_http::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits::MAX_JSON_BODY))
        .with_state(server);
    let api = cloister_http::limit::per_address(api, per_address);
    cloister_http::ops::instrument(api, &metrics, ready)
}

// ---------- authentication ----------

const TOKEN_LEN: usize = 16 + 8 + 32;

fn make_token(key: &[u8; 32], device: &DeviceId, expires: u64) -> String {
    let mac = cloister_crypto::hmac_sha256(
        key,
        &[
            b"cloister/session/v1",
            device.as_bytes(),
            &expires.to_be_bytes(),
        ],
    );
    let mut t = Vec::with_capacity(TOKEN_LEN);
    t.extend_from_slice(device.as_bytes());
    t.extend_from_slice(&expires.to_be_bytes());
    t.extend_from_slice(&mac);
    cloister_proto::b64::encode(&t)
}

fn check_token(key: &[u8; 32], token: &str) -> Result<DeviceId, ApiError> {
    let bad = || {
        ApiError::unauthorized(
            "bad_token",
            "session token is invalid or expired; log in again",
        )
    };
    let raw = cloister_proto::b64::decode(token).map_err(|_| bad())?;
    if raw.len() != TOKEN_LEN {
        return Err(bad());
    }
    let mut dev = [0u8; 16];
    dev.copy_from_slice(&raw[..16]);
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&raw[16..24]);
    let expires = u64::from_be_bytes(exp);
    let device = DeviceId(dev);
    let mac = cloister_crypto::hmac_sha256(key, &[b"cloister/session/v1", device.as_bytes(), &exp]);
    if !cloister_crypto::ct_eq(&mac, &raw[24..]) || expires < now_secs() {
        return Err(bad());
    }
    Ok(device)
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

pub(crate) async fn authenticate(server: &Server, token: &str) -> Result<Caller, ApiError> {
    let device = check_token(&server.session_key, token)?;
    let cert = server.cert(&device).await?;
    server.check_standing(&cert)?;
    Ok(Caller {
        device,
        user: cert.user.clone(),
        tenant: cert.tenant.clone(),
        cert,
    })
}

impl FromRequestParts<Arc<Server>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, server: &Arc<Server>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("no_token", "missing Authorization: Bearer <session token>")
        })?;
        authenticate(server, token).await
    }
}

pub(crate) fn parse_room(s: &str) -> Result<RoomId, ApiError> {
    s.parse().map_err(|e| bad_param("room id", e))
}

// ---------- tenants, devices, sessions, notices ----------

#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = cloister_proto::server::RegisterTenant, security(("operator" = [])), responses((status = 200, body = cloister_proto::server::Ok), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn register_tenant(
    State(s): S,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RegisterTenant>,
) -> Result<Json<OkBody>, ApiError> {
    let ok = bearer(&headers).is_some_and(|t| {
        cloister_crypto::ct_eq(
            &cloister_crypto::sha256(t.as_bytes()),
            &s.operator_token_hash,
        )
    });
    if !ok {
        return Err(ApiError::unauthorized(
            "not_operator",
            "registering a tenant needs the operator token",
        ));
    }
    s.store
        .put_tenant(&req.tenant, &req.km_sign_pk.0)
        .await
        .map_err(|e| match e {
            cloister_store::StoreError::Conflict(m) => ApiError::conflict("tenant_exists", m),
            e => ApiError::internal(e),
        })?;
    tracing::info!(tenant = %req.tenant, "tenant registered");
    Ok(Json(OkBody { ok: true }))
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/pin", tag = "tenants", params(("tenant" = String, Path, description = "tenant id")), request_body = cloister_proto::server::PinCheck, responses((status = 200, body = cloister_proto::server::PinCheckResponse), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn pin_check(
    State(s): S,
    Path(tenant): Path<String>,
    ApiJson(req): ApiJson<PinCheck>,
) -> Result<Json<PinCheckResponse>, ApiError> {
    let tenant: TenantId = tenant.parse().map_err(|e| bad_param("tenant", e))?;
    let pinned = match s.tenant_key(&tenant).await {
        Ok(k) => cloister_crypto::ct_eq(&k, &req.km_sign_pk.0),
        Err(e) if e.code == "unknown_tenant" => false,
        Err(e) => return Err(e),
    };
    Ok(Json(PinCheckResponse { pinned }))
}

#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = cloister_proto::server::RegisterDevice, responses((status = 200, body = cloister_proto::server::Ok), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn register_device(
    State(s): S,
    ApiJson(req): ApiJson<RegisterDevice>,
) -> Result<Json<OkBody>, ApiError> {
    // Learn the claimed tenant, then verify against that tenant's pinned KM key.
    let peek: cloister_proto::km::DeviceCert = serde_json::from_slice(req.cert.body.as_slice())
        .map_err(|_| ApiError::bad_request("bad_certificate", "certificate body is malformed"))?;
    let key = s.tenant_key(&peek.tenant).await?;
    let cert = verify_cert(&key, &req.cert).map_err(|e| {
        ApiError::forbidden("bad_certificate", format!("certificate rejected: {e}"))
    })?;
    s.check_standing(&cert)?;
    // A renewed certificate replaces an older one, never the other way:
    // an old certificate (other roles, an earlier expiry) presented again
    // by anyone is refused.
    if let Some(row) = s
        .store
        .get_device(&cert.device)
        .await
        .map_err(ApiError::internal)?
        && let Ok(stored) = serde_json::from_slice::<SignedCert>(&row.cert)
        && let Ok(stored) =
            serde_json::from_slice::<cloister_proto::km::DeviceCert>(stored.body.as_slice())
        && (stored.issued_at, stored.not_after) > (cert.issued_at, cert.not_after)
    {
        return Err(ApiError::conflict(
            "stale_certificate",
            format!(
                "device {} has a newer certificate (issued {}) than this one (issued {})",
                cert.device, stored.issued_at, cert.issued_at
            ),
        ));
    }
    s.store
        .put_device(&DeviceRow {
            device: cert.device.to_hex(),
            tenant: cert.tenant.to_string(),
            user: cert.user.to_string(),
            cert: serde_json::to_vec(&req.cert).map_err(ApiError::internal)?,
            revoked: false,
        })
        .await
        .map_err(ApiError::internal)?;
    if let Ok(mut m) = s.certs.write() {
        m.remove(&cert.device);
    }
    Ok(Json(OkBody { ok: true }))
}

#[utoipa::path(get, path = "/v1/devices/{device}", tag = "devices", params(("device" = String, Path, description = "device id, 32 hex digits")), security(("session" = [])), responses((status = 200, body = cloister_proto::km::SignedCert), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn get_device(
    State(s): S,
    c: Caller,
    Path(device): Path<String>,
) -> Result<Json<SignedCert>, ApiError> {
    let device: DeviceId = device.parse().map_err(|e| bad_param("device id", e))?;
    let row = s.device_row(&device).await?;
    // Another firm's certificates (user names, roles) are for this caller
    // only if the two users share (or shared) a room or are connected:
    // otherwise the same answer as for a device that does not exist.
    if row.tenant != c.tenant.as_str() && !s.may_see_user(&c.user, &row.user).await? {
        return Err(ApiError::not_found(
            "unknown_device",
            format!("device {device} is not registered"),
        ));
    }
    Ok(Json(
        serde_json::from_slice(&row.cert).map_err(ApiError::internal)?,
    ))
}

#[utoipa::path(post, path = "/v1/session", tag = "devices", request_body = cloister_proto::server::LoginRequest, responses((status = 200, body = cloister_proto::server::LoginResponse), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn login(
    State(s): S,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let cert = s.cert(&req.device).await.map_err(|_| {
        ApiError::unauthorized(
            "unknown_device",
            format!("device {} is not registered", req.device),
        )
    })?;
    s.check_standing(&cert)?;
    cloister_crypto::keys::verify(
        &cert.sign_pk.0,
        LOGIN,
        &login_transcript(&req.device, req.ts, &req.nonce.0),
        &req.sig.0,
    )
    .map_err(|_| ApiError::unauthorized("bad_signature", "login signature is invalid"))?;
    let now = now_millis();
    let skew = limits::MAX_SKEW_SECS * 1000;
    if !cloister_proto::within_skew(req.ts) {
        return Err(ApiError::unauthorized(
            "stale_request",
            "login timestamp is outside the allowed clock skew",
        ));
    }
    // In the database, so that a login is good once on any node.
    let fresh = s
        .store
        .use_login_nonce(&req.nonce.0, req.ts, now.saturating_sub(2 * skew))
        .await
        .map_err(ApiError::internal)?;
    if !fresh {
        return Err(ApiError::conflict(
            "replayed_request",
            "this login was already used",
        ));
    }
    let expires_at = now_secs() + s.config.session_secs;
    Ok(Json(LoginResponse {
        token: make_token(&s.session_key, &req.device, expires_at),
        expires_at,
    }))
}

#[utoipa::path(post, path = "/v1/notices", tag = "notices", request_body = cloister_proto::server::PostNotice, responses((status = 200, body = cloister_proto::server::Ok), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn post_notice(
    State(s): S,
    ApiJson(req): ApiJson<PostNotice>,
) -> Result<Json<OkBody>, ApiError> {
    let peek: Notice = serde_json::from_slice(req.notice.body.as_slice())
        .map_err(|_| ApiError::bad_request("bad_notice", "notice body is malformed"))?;
    let key = s.tenant_key(peek.tenant()).await?;
    let notice = verify_notice(&key, &req.notice).map_err(|_| {
        ApiError::forbidden("bad_signature", "notice is not signed by the tenant's KM")
    })?;
    match &notice {
        Notice::UserDisabled { user, ts, .. } | Notice::UserEnabled { user, ts, .. } => {
            if user.tenant() != *notice.tenant() {
                return Err(ApiError::forbidden(
                    "wrong_tenant",
                    "a KM can only act on its own users",
                ));
            }
            let disable = matches!(notice, Notice::UserDisabled { .. });
            if !s
                .store
                .set_user_standing(user, disable, *ts)
                .await
                .map_err(ApiError::internal)?
            {
                return Err(ApiError::conflict(
                    "stale_notice",
                    format!("a newer notice about {user} was already applied (replayed notice)"),
                ));
            }
            if let Ok(mut d) = s.deny.write() {
                if disable {
                    d.disable(user.clone());
                } else {
                    d.enable(user);
                }
            }
            if disable {
                s.hub.drop_where(Some(user), None);
            }
            s.fanout.standing(notice.tenant()).await;
            tracing::info!(%user, disable, "user standing changed by KM notice");
        }
        Notice::Controls {
            tenant, controls, ..
        } => {
            s.accept_controls(tenant, controls, &req.notice).await?;
        }
        Notice::DeviceRevoked { device, .. } => {
            let cert = s.cert(device).await?;
            if cert.tenant != *notice.tenant() {
                return Err(ApiError::forbidden(
                    "wrong_tenant",
                    "a KM can only act on its own devices",
                ));
            }
            s.store
                .revoke_device(device)
                .await
                .map_err(ApiError::internal)?;
            if let Ok(mut r) = s.deny.write() {
                r.revoke(*device);
            }
            s.hub.drop_where(None, Some(device));
            s.fanout.standing(notice.tenant()).await;
            tracing::info!(%device, "device revoked by KM notice");
        }
        Notice::CapturePolicy {
            tenant,
            receipt_pk,
            required,
            ts,
            regional,
        } => {
            let policy = crate::CapturePolicy::of(&receipt_pk.0, regional, *required, *ts)
                .map_err(|_| ApiError::bad_request("bad_notice", "a receipt key is malformed"))?;
            let notice_bytes = serde_json::to_vec(&req.notice).map_err(ApiError::internal)?;
            if !s
                .store
                .put_tenant_notice(tenant, "capture", *ts, &notice_bytes)
                .await
                .map_err(ApiError::internal)?
            {
                return Err(ApiError::conflict(
                    "stale_notice",
                    "a newer capture policy is already in force (replayed notice)",
                ));
            }
            if let Ok(mut m) = s.capture.write() {
                m.insert(tenant.clone(), policy);
            }
            s.fanout.notices(tenant).await;
            tracing::info!(%tenant, required, "capture policy updated by KM notice");
        }
        Notice::KeysShredded {
            tenant, shredded, ..
        } => {
            let rooms: std::collections::BTreeSet<RoomId> =
                shredded.iter().map(|(r, _)| *r).collect();
            let notice_bytes = serde_json::to_vec(&req.notice).map_err(ApiError::internal)?;
            let mut known = Vec::new();
            for room in rooms {
                let Some(st) = s.room(&room).await? else {
                    continue;
                };
                if st.tenant != *tenant {
                    return Err(ApiError::forbidden(
                        "wrong_tenant",
                        "a KM can only act on its own rooms",
                    ));
                }
                known.push((room, st));
            }
            for (room, st) in known {
                s.store
                    .add_shredded(&room, &notice_bytes)
                    .await
                    .map_err(ApiError::internal)?;
                let ev = Event::KeysShredded {
                    room,
                    notice: req.notice.clone(),
                };
                if let Ok(event) = serde_json::to_string(&ev) {
                    let d = crate::cluster::Delivery {
                        tenant: st.tenant.clone(),
                        users: st.members.iter().cloned().collect(),
                        skip: None,
                        watchers: false,
                        event,
                    };
                    s.fanout.room(room, d).await;
                }
            }
            tracing::info!(%tenant, n = shredded.len(), "shredded epochs announced by KM notice");
        }
    }
    Ok(Json(OkBody { ok: true }))
}

// ---------- rooms and the membership log ----------

pub(crate) fn summary(st: &RoomState) -> RoomSummary {
    RoomSummary {
        room: st.room,
        kind: st.kind,
        settings: st.settings.clone(),
        epoch: st.epoch,
        members: st.members.iter().cloned().collect(),
        owners: st.owners.iter().cloned().collect(),
        log_seq: st.seq,
    }
}

#[utoipa::path(get, path = "/v1/rooms", tag = "rooms", security(("session" = [])), responses((status = 200, body = Vec<cloister_proto::server::RoomSummary>), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn list_rooms(State(s): S, c: Caller) -> Result<Json<Vec<RoomSummary>>, ApiError> {
    let rows = s
        .store
        .rooms_of_user(&c.user)
        .await
        .map_err(ApiError::internal)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let st: RoomState = serde_json::from_slice(&r.state).map_err(ApiError::internal)?;
        out.push(summary(&st));
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/rooms/{room}", tag = "rooms", params(("room" = String, Path, description = "room id, 32 hex digits")), security(("session" = [])), responses((status = 200, body = cloister_proto::server::RoomSummary), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn get_room(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Json<RoomSummary>, ApiError> {
    let room = parse_room(&room)?;
    let st = s.readable_room(&room, &c).await?;
    Ok(Json(summary(&st)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    from: u64,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/rooms/{room}/log", tag = "rooms", params(("room" = String, Path, description = "room id, 32 hex digits"), ("from" = Option<u64>, Query, description = "first seq"), ("limit" = Option<u32>, Query, description = "at most this many entries")), security(("session" = [])), responses((status = 200, body = cloister_proto::server::LogPage), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn get_log(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LogPage>, ApiError> {
    let room = parse_room(&room)?;
    let Query(q) = q.map_err(|e| bad_param("query", e.body_text()))?;
    // Anyone who ever held a grant may read the log (it is what justifies their keys).
    match s.room(&room).await? {
        Some(st) if st.grants.contains_key(&c.user) => {}
        // a public room's log is what joining it needs
        Some(st) if st.settings.public && st.tenant == c.tenant => {}
        Some(_) if s.readable_room(&room, &c).await.is_ok() => {}
        _ => {
            return Err(ApiError::not_found(
                "no_such_room",
                format!("no room {room} that you are a member of"),
            ));
        }
    }
    let limit = q
        .limit
        .unwrap_or(limits::MAX_PAGE)
        .clamp(1, limits::MAX_PAGE);
    let rows = s
        .store
        .room_log(&room, q.from, limit)
        .await
        .map_err(ApiError::internal)?;
    let entries = rows
        .iter()
        .map(|r| serde_json::from_slice::<SignedStatement>(&r.entry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::internal)?;
    Ok(Json(LogPage { room, entries }))
}

#[utoipa::path(post, path = "/v1/rooms/{room}/log", tag = "rooms", params(("room" = String, Path, description = "room id, 32 hex digits")), request_body = cloister_proto::server::AppendLog, security(("session" = [])), responses((status = 200, body = cloister_proto::server::AppendLogResponse), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn append_log(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<AppendLog>,
) -> Result<Json<AppendLogResponse>, ApiError> {
    let room = parse_room(&room)?;
    if req.entry.actor != c.device {
        return Err(ApiError::forbidden(
            "not_actor",
            "a device may only submit statements it signed itself",
        ));
    }
    let by = crate::roomlog::Signer {
        user: c.user.clone(),
        pk: c.cert.sign_pk.0,
        tenant: c.tenant.clone(),
    };
    Ok(Json(s.append_entry(&room, &req.entry, &by).await?))
}

// ---------- messages ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    before: Option<u64>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/rooms/{room}/messages", tag = "messages", params(("room" = String, Path, description = "room id, 32 hex digits"), ("before" = Option<u64>, Query, description = "messages before this seq"), ("limit" = Option<u32>, Query, description = "at most this many")), security(("session" = [])), responses((status = 200, body = cloister_proto::server::HistoryPage), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn history(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let room = parse_room(&room)?;
    let Query(q) = q.map_err(|e| bad_param("query", e.body_text()))?;
    s.readable_room(&room, &c).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, limits::MAX_PAGE);
    let before = q.before.unwrap_or(i64::MAX as u64);
    let rows = s
        .store
        .history(&room, before, limit)
        .await
        .map_err(ApiError::internal)?;
    let next_before = if rows.len() as u32 == limit {
        rows.first().map(|r| r.seq)
    } else {
        None
    };
    let mut messages = Vec::with_capacity(rows.len());
    for r in rows {
        let sig: [u8; 64] = r
            .sig
            .try_into()
            .map_err(|_| ApiError::internal("corrupt signature"))?;
        messages.push(StoredMessage {
            seq: r.seq,
            envelope: Envelope {
                header: r.header.into(),
                ciphertext: r.ciphertext.into(),
                sig: Fixed(sig),
                receipt: None,
            },
        });
    }
    let shredded = s
        .store
        .shredded_notices(&room)
        .await
        .map_err(ApiError::internal)?
        .iter()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .collect();
    Ok(Json(HistoryPage {
        room,
        messages,
        next_before,
        shredded,
    }))
}

// ---------- blobs ----------

fn parse_blob_id(id: &str) -> Result<String, ApiError> {
    let ok = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(id.to_owned())
    } else {
        Err(bad_param("blob id", "expected 32 lowercase hex digits"))
    }
}

#[utoipa::path(put, path = "/v1/rooms/{room}/blobs/{id}", tag = "attachments", params(("room" = String, Path, description = "room id, 32 hex digits"), ("id" = String, Path, description = "attachment id, 32 hex digits")), request_body(content = cloister_proto::Binary, content_type = "application/octet-stream", description = "the encrypted attachment"), security(("session" = [])), responses((status = 200, body = cloister_proto::server::BlobResponse), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn put_blob(
    State(s): S,
    c: Caller,
    Path((room, id)): Path<(String, String)>,
    body: Body,
) -> Result<Json<BlobResponse>, ApiError> {
    s.limiters.uploads.check(&c.device)?;
    let room = parse_room(&room)?;
    let id = parse_blob_id(&id)?;
    let st = s.member_room(&room, &c.user).await?;
    s.check_may_post(&st, &c.user)?;
    s.require(
        &c.tenant,
        &c.user,
        cloister_proto::controls::Entitlement::SendFiles,
    )?;
    if s.store
        .get_blob(&id)
        .await
        .map_err(ApiError::internal)?
        .is_some()
    {
        return Err(ApiError::conflict(
            "blob_exists",
            "a blob with this id already exists",
        ));
    }
    let mut w = s.blobs.create(&id).await.map_err(ApiError::internal)?;
    let result = async {
        let mut size: u64 = 0;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| {
                ApiError::too_large(format!(
                    "attachment larger than {} bytes, or the upload was cut",
                    s.config.max_attachment
                ))
            })?;
            size += chunk.len() as u64;
            if size > s.config.max_attachment {
                return Err(ApiError::too_large(format!(
                    "attachment larger than {} bytes",
                    s.config.max_attachment
                )));
            }
            w.write(&chunk).await.map_err(ApiError::internal)?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        w.abort().await;
        return Err(e);
    }
    let size = w.finish().await.map_err(|e| match e {
        cloister_store::StoreError::Conflict(m) => ApiError::conflict("blob_exists", m),
        e => ApiError::internal(e),
    })?;
    let row = BlobRow {
        id: id.clone(),
        room: room.to_hex(),
        device: c.device.to_hex(),
        size,
    };
    if let Err(e) = s.store.put_blob(&row).await {
        let _ = s.blobs.remove(&id).await;
        return Err(match e {
            cloister_store::StoreError::Conflict(m) => ApiError::conflict("blob_exists", m),
            e => ApiError::internal(e),
        });
    }
    Ok(Json(BlobResponse { id, size }))
}

#[utoipa::path(get, path = "/v1/blobs/{id}", tag = "attachments", params(("id" = String, Path, description = "attachment id, 32 hex digits")), security(("session" = [])), responses((status = 200, description = "the encrypted attachment", content_type = "application/octet-stream", body = cloister_proto::Binary), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn get_blob(State(s): S, c: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_blob_id(&id)?;
    let nf = || {
        ApiError::not_found(
            "no_such_blob",
            "no such attachment in a room you are a member of",
        )
    };
    let row = s
        .store
        .get_blob(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(nf)?;
    let room: RoomId = row.room.parse().map_err(ApiError::internal)?;
    // Compliance may fetch attachment ciphertext of its tenant for an
    // export (the file key comes only from a k-of-n decrypted envelope).
    let compliance = c.cert.roles.contains(&cloister_proto::km::Role::Compliance)
        && s.room(&room).await?.is_some_and(|st| st.tenant == c.tenant);
    if !compliance {
        s.readable_room(&room, &c).await.map_err(|_| nf())?;
    }
    let stream = s
        .blobs
        .open(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("an attachment's row has no bytes"))?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_LENGTH, row.size.to_string())],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let k = [7u8; 32];
        let d = DeviceId([1; 16]);
        let t = make_token(&k, &d, now_secs() + 60);
        assert_eq!(check_token(&k, &t).unwrap(), d);
        assert!(check_token(&[8u8; 32], &t).is_err());
        assert!(check_token(&k, &make_token(&k, &d, now_secs() - 1)).is_err());
        let mut raw = cloister_proto::b64::decode(&t).unwrap();
        raw[0] ^= 1;
        assert!(check_token(&k, &cloister_proto::b64::encode(&raw)).is_err());
        assert!(check_token(&k, "garbage").is_err());
    }
}
