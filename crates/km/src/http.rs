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

/// The KM's API: routes and OpenAPI description from the same handler
/// annotations. (The SCIM endpoint's contract is RFC 7644's, described by
/// its own `/scim/v2/Schemas` and checked by scim2-tester.)
fn api() -> utoipa_axum::router::OpenApiRouter<Arc<Km>> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(info))
        .routes(routes!(request))
}

/// The routes only services call: the vault's deny list, KM to KM.
fn service_api() -> utoipa_axum::router::OpenApiRouter<Arc<Km>> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(deny_list))
        .routes(routes!(federation_room_keys))
        .routes(routes!(federation_directory))
}

fn enrol_api() -> utoipa_axum::router::OpenApiRouter<Arc<Km>> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new().routes(routes!(enrol))
}

/// The KM's OpenAPI description (served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().merge(enrol_api()).merge(service_api()).into_openapi()
}

pub fn router(km: Arc<Km>) -> Router {
    use cloister_http::limit::{Limiter, per_address};
    let metrics = km.metrics().clone();
    let ready = km.ready_check();
    let limits = km.limits().clone();
    let doc = openapi().to_pretty_json().unwrap_or_default();
    // Enrolment codes are guessed from somewhere: few tries per address.
    let enrol_route = per_address(
        enrol_api()
            .split_for_parts()
            .0
            .layer(DefaultBodyLimit::max(cloister_proto::limits::MAX_JSON_BODY))
            .with_state(km.clone()),
        Arc::new(Limiter::per_minute(
            "enrolment attempts from this address",
            limits.enrolments_per_min,
            limits.enrolments_per_min,
        )),
    );
    let services = service_api()
        .split_for_parts()
        .0
        .layer(DefaultBodyLimit::max(cloister_proto::limits::MAX_JSON_BODY))
        .with_state(km.clone());
    let services = if km.requires_service_certs() {
        cloister_http::listen::require_client_cert(services)
    } else {
        services
    };
    let api = api()
        .split_for_parts()
        .0
        .merge(cloister_http::openapi_route(doc))
        .fallback(cloister_http::not_found)
        .method_not_allowed_fallback(cloister_http::method_not_allowed)
        .layer(DefaultBodyLimit::max(cloister_proto::limits::MAX_JSON_BODY))
        .with_state(km.clone())
        .merge(enrol_route)
        .merge(services)
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

#[utoipa::path(get, path = "/v1/info", tag = "km", responses((status = 200, body = KmInfo)))]
async fn info(State(km): State<Arc<Km>>) -> Json<KmInfo> {
    Json(km.info())
}

#[utoipa::path(post, path = "/v1/enrol", tag = "devices", request_body = EnrolRequest, responses((status = 200, body = SignedCert), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn enrol(
    State(km): State<Arc<Km>>,
    ApiJson(req): ApiJson<EnrolRequest>,
) -> Result<Json<SignedCert>, ApiError> {
    Ok(Json(km.enrol(&req).await?))
}

#[utoipa::path(post, path = "/v1/request", tag = "requests", request_body(content = SignedRequest, description = "a device-signed RequestBody; its `op` decides the answer (docs/protocol.md)"), responses((status = 200, description = "the answer to the op", body = serde_json::Value), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn request(
    State(km): State<Arc<Km>>,
    ApiJson(req): ApiJson<SignedRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(km.handle(&req).await?))
}

#[utoipa::path(post, path = "/v1/deny-list", tag = "standing", request_body = DenyListRequest, responses((status = 200, body = SignedBlob), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn deny_list(
    State(km): State<Arc<Km>>,
    ApiJson(req): ApiJson<DenyListRequest>,
) -> Result<Json<SignedBlob>, ApiError> {
    Ok(Json(km.deny_list(&req).await?))
}

#[utoipa::path(post, path = "/v1/federation/room-keys", tag = "federation", request_body(content = SignedBlob, description = "a KmKeyRequest signed by a pinned partner KM"), responses((status = 200, body = SignedBlob), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn federation_room_keys(
    State(km): State<Arc<Km>>,
    ApiJson(req): ApiJson<SignedBlob>,
) -> Result<Json<SignedBlob>, ApiError> {
    Ok(Json(km.serve_key_request(&req).await?))
}

#[utoipa::path(post, path = "/v1/federation/directory", tag = "federation", request_body(content = SignedBlob, description = "a DirectoryQuery signed by a pinned partner KM"), responses((status = 200, body = SignedBlob), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
async fn federation_directory(
    State(km): State<Arc<Km>>,
    ApiJson(req): ApiJson<SignedBlob>,
) -> Result<Json<SignedBlob>, ApiError> {
    Ok(Json(km.serve_directory_query(&req).await?))
}
