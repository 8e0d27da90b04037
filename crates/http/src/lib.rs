//! The HTTP edge shared by the KM and the messaging server.
//!
//! Every error leaves as `{ "error": code, "message": ... }` with a precise
//! status. Internal details (database, crypto) are logged server-side under a
//! correlation id and never sent to the caller.
#![forbid(unsafe_code)]

pub mod batch;
pub mod limit;
pub mod listen;
pub mod ops;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cloister_proto::ErrorBody;
use serde::de::DeserializeOwned;

/// An API error: status, stable code, human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds to wait (`Retry-After`), on a 429 or a 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// `429 rate_limited`, come back in `retry_after_secs`.
    pub fn too_many(retry_after_secs: u64, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }
    /// An internal failure: the detail is logged with an id; the caller sees only the id.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let id = cloister_proto::now_millis();
        tracing::error!(error_id = id, "internal error: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error (reference {id}); nothing was changed"),
        )
    }
}

/// The one mapping of device-standing refusals to HTTP.
impl From<cloister_standing::StandingError> for ApiError {
    fn from(e: cloister_standing::StandingError) -> Self {
        use cloister_proto::km::Role;
        use cloister_standing::StandingError as E;
        let code = match &e {
            E::WrongTenant { .. } => "wrong_tenant",
            E::Expired(_) => "cert_expired",
            E::Revoked(_) => "device_revoked",
            E::Disabled(_) => "user_disabled",
            E::MissingRole {
                role: Role::Admin, ..
            } => "not_admin",
            E::MissingRole {
                role: Role::Compliance,
                ..
            } => "not_compliance",
            E::MissingRole { .. } => "not_entitled",
            E::Unknown(_) => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "standing_unknown",
                    e.to_string(),
                );
            }
        };
        Self::forbidden(code, e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        r
    }
}

/// JSON body extractor with precise errors (size, content type, syntax, schema).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ct_ok = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !ct_ok {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large(format!(
                        "request body larger than {} bytes",
                        cloister_proto::limits::MAX_JSON_BODY
                    ))
                } else {
                    ApiError::bad_request("bad_body", "could not read the request body")
                }
            })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            ApiError::bad_request("malformed_json", format!("invalid request body: {e}"))
        })
    }
}

/// Map a path or query parameter parse error.
pub fn bad_param(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("bad_parameter", format!("invalid {what}: {e}"))
}

/// Fallback for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no_such_endpoint", "no such endpoint")
}

/// Fallback for a known route asked with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// `GET /openapi.json`: a service's API description, as generated from its
/// handlers (`json`, serialised once).
pub fn openapi_route<S: Clone + Send + Sync + 'static>(json: String) -> axum::Router<S> {
    let body = axum::body::Bytes::from(json);
    axum::Router::new().route(
        "/openapi.json",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }
        }),
    )
}

/// Serve a router on a plain TCP listener until `shutdown` resolves (see
/// [`serve_with`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, None, router, shutdown).await
}

/// Serve a router on a listener, over TLS when `tls` is given, until
/// `shutdown` resolves; `TCP_NODELAY` on every connection.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    tls: Option<&cloister_tls::ServerTls>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer's address reaches the handlers (per-address rate limits).
    let app = router.into_make_service_with_connect_info::<listen::Peer>();
    match tls {
        Some(tls) => {
            axum::serve(listen::TlsListener::new(listener, tls)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listen::TcpNoDelay(listener), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
