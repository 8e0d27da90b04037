//! What the firm's malware scanner (`cloister inspect`, a device with the
//! inspector role) needs from the server: every room of its tenant, and a
//! place for its signed verdicts, which members' devices fetch and check
//! before they open a file.
//!
//! ```text
//!  inspector  GET  /v1/tenant-rooms                      (surveillance, inspector)
//!  inspector  POST /v1/rooms/{room}/verdicts             signed Verdict (inspector only)
//!  member     GET  /v1/rooms/{room}/verdicts/{message}   verdicts, each with its KM-signed cert
//! ```

use crate::api::parse_room;
use crate::{Caller, Server};
use axum::Json;
use axum::extract::{Path, State};
use cloister_http::{ApiError, ApiJson};
use cloister_proto::km::Role;
use cloister_proto::server::{Ok as OkBody, RoomSummary, SignedVerdict};
use cloister_proto::{MessageId, RoomId};
use std::sync::Arc;

type S = State<Arc<Server>>;

/// Every room of the caller's tenant (surveillance and the scanner).
#[utoipa::path(get, path = "/v1/tenant-rooms", tag = "inspection", security(("session" = [])), responses((status = 200, body = Vec<cloister_proto::server::RoomSummary>), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn tenant_rooms(
    State(s): S,
    c: Caller,
) -> Result<Json<Vec<RoomSummary>>, ApiError> {
    if !c.reads_tenant() {
        return Err(ApiError::forbidden(
            "not_entitled",
            "listing every room of the firm needs the surveillance or inspector role",
        ));
    }
    let ids = s
        .store
        .tenant_rooms(&c.tenant)
        .await
        .map_err(ApiError::internal)?;
    let mut out = Vec::new();
    for id in ids.iter().filter_map(|i| i.parse::<RoomId>().ok()) {
        if let Some(st) = s.room(&id).await?
            && st.tenant == c.tenant
        {
            out.push(crate::api::summary(&st));
        }
    }
    Ok(Json(out))
}

/// The scanner's verdict on a file message of its tenant.
#[utoipa::path(post, path = "/v1/rooms/{room}/verdicts", tag = "inspection", params(("room" = String, Path, description = "room id, 32 hex digits")), request_body = cloister_proto::server::SignedVerdict, security(("session" = [])), responses((status = 200, body = cloister_proto::server::Ok), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn post_verdict(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(v): ApiJson<SignedVerdict>,
) -> Result<Json<OkBody>, ApiError> {
    let room = parse_room(&room)?;
    if !c.cert.roles.contains(&Role::Inspector) {
        return Err(ApiError::forbidden(
            "not_entitled",
            "only the firm's malware scanner (inspector role) posts verdicts",
        ));
    }
    let km = s.tenant_key(&c.tenant).await?;
    let (cert, verdict) = cloister_crypto::signed::verify_verdict(&km, &v).map_err(|_| {
        ApiError::unauthorized(
            "bad_signature",
            "the verdict's signature or certificate is invalid",
        )
    })?;
    if cert.device != c.device {
        return Err(ApiError::forbidden(
            "not_actor",
            "a device may only post verdicts it signed itself",
        ));
    }
    if verdict.room != room || verdict.tenant != c.tenant {
        return Err(ApiError::forbidden(
            "wrong_room",
            "the verdict names another room or tenant",
        ));
    }
    s.readable_room(&room, &c).await?;
    let bytes = serde_json::to_vec(&v).map_err(ApiError::internal)?;
    s.store
        .put_verdict(&room, &verdict.message_id, &c.device, &bytes)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(%room, message = %verdict.message_id, infected = verdict.infected, "verdict stored");
    Ok(Json(OkBody { ok: true }))
}

/// Verdicts on one message, for anyone who may read the room.
#[utoipa::path(get, path = "/v1/rooms/{room}/verdicts/{message}", tag = "inspection", params(("room" = String, Path, description = "room id, 32 hex digits"), ("message" = String, Path, description = "message id, 32 hex digits")), security(("session" = [])), responses((status = 200, body = Vec<cloister_proto::server::SignedVerdict>), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn get_verdicts(
    State(s): S,
    c: Caller,
    Path((room, message)): Path<(String, String)>,
) -> Result<Json<Vec<SignedVerdict>>, ApiError> {
    let room = parse_room(&room)?;
    let message: MessageId = message.parse().map_err(|_| {
        ApiError::bad_request("bad_message", "message id must be 32 hex characters")
    })?;
    s.readable_room(&room, &c).await?;
    let rows = s
        .store
        .verdicts(&room, &message)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        rows.iter()
            .filter_map(|r| serde_json::from_slice(r).ok())
            .collect(),
    ))
}
