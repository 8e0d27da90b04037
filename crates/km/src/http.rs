//! The KM's HTTP API (axum).
//!
//! | method | path          | body            | answer |
//! |--------|---------------|-----------------|--------|
//! | GET    | `/v1/info`    |                 | [`KmInfo`] |
//! | POST   | `/v1/enrol`   | [`EnrolRequest`]| [`SignedCert`] |
//! | POST   | `/v1/request` | [`SignedRequest`] | depends on the op |
//! | POST   | `/v1/deny-list` | [`DenyListRequest`] (vault-signed) | signed deny list |
//! | POST   | `/v1/federation/room-keys` | [`SignedBlob`] of a `KmKeyRequest` (partner-KM-signed) | signed `KmKeyGrant` |
//! | POST   | `/v1/federation/directory` | [`SignedBlob`] of a `DirectoryQuery` (partner-KM-signed) | signed `DirectoryAnswer` |
//! | GET    | `/healthz`, `/readyz` |        | `{"status": …}`, 503 when not ready |

use crate::Km;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloister_http::{ApiError, ApiJson};
use cloister_proto::km::{
    DenyListRequest, EnrolRequest, KmInfo, SignedBlob, SignedCert, SignedRequest,
};
use std::sync::Arc;

/// The one mapping of the KM's refusals to HTTP.
impl From<crate::Denied> for ApiError {
    fn from(d: crate::Denied) -> Self {
        use crate::Kind;
        use axum::http::StatusCode as S;
        let status = match d.kind {
            Kind::Malformed => S::BAD_REQUEST,
            Kind::Unauthenticated => S::UNAUTHORIZED,
            Kind::Forbidden => S::FORBIDDEN,
            Kind::NotFound => S::NOT_FOUND,
            Kind::Conflict => S::CONFLICT,
            Kind::Gone => S::GONE,
            Kind::Precondition => S::PRECONDITION_FAILED,
            Kind::TooLarge => S::PAYLOAD_TOO_LARGE,
            Kind::TooMany => S::TOO_MANY_REQUESTS,
            Kind::Unavailable => S::SERVICE_UNAVAILABLE,
            Kind::Internal => S::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            retry_after: d.retry_after,
            ..ApiError::new(status, d.code, d.message)
        }
    }
}

pub fn router(km: Arc<Km>) -> Router {
    use cloister_http::limit::{Limiter, per_address};
    let metrics = km.metrics().clone();
    let ready = km.ready_check();
    let limits = km.limits().clone();
    // Enrolment codes are guessed from somewhere: few tries per address.
    let enrol_route = per_address(
        Router::new()
            .route("/v1/enrol", post(enrol))
            .layer(DefaultBodyLimit::max(cloister_proto::limits::MAX_JSON_BODY))
            .with_state(km.clone()),
        Arc::new(Limiter::per_minute(
            "enrolment attempts from this address",
            limits.enrolments_per_min,
            limits.enrolments_per_min,
        )),
    );
    let api = Router::new()
        .route("/v1/info", get(info))
        .route("/v1/request", post(request))
        .route("/v1/deny-list", post(deny_list))
        .route("/v1/federation/room-keys", post(federation_room_keys))
        .route("/v1/federation/directory", post(federation_directory))
        .fallback(cloister_http::not_found)
        .layer(DefaultBodyLimit::max(cloister_proto::limits::MAX_JSON_BODY))
        .with_state(km.clone())
        .merge(enrol_route)
        .merge(crate::scim::router(km));
    let api = per_address(
        api,
        Arc::new(Limiter::per_second(
            "requests from this address",
            limits.per_address_per_sec,
        )),
    );
    cloister_http::ops::instrument(api, &metrics, ready)
}

async fn info(State(km): State<Arc<Km>>) -> Json<KmInfo> {
    Json(km.info())
}

async fn enrol(
    State(km): State<Arc<Km>>,
    ApiJson(req): ApiJson<EnrolRequest>,
) -> Result<Json<SignedCert>, ApiError> {
    Ok(Json(km.enrol(&req).await?))
}

async fn request(
    State(km): State<Arc<Km>>,
    ApiJson(req): ApiJson<SignedRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(km.handle(&req).await?))
}

async fn deny_list(
    State(km): State<Arc<Km>>,
    ApiJson(req): ApiJson<DenyListRequest>,
) -> Result<Json<SignedBlob>, ApiError> {
    Ok(Json(km.deny_list(&req).await?))
}

async fn federation_room_keys(
    State(km): State<Arc<Km>>,
    ApiJson(req): ApiJson<SignedBlob>,
) -> Result<Json<SignedBlob>, ApiError> {
    Ok(Json(km.serve_key_request(&req).await?))
}

async fn federation_directory(
    State(km): State<Arc<Km>>,
    ApiJson(req): ApiJson<SignedBlob>,
) -> Result<Json<SignedBlob>, ApiError> {
    Ok(Json(km.serve_directory_query(&req).await?))
}
