//! The KM's domain errors: what kind of refusal, a stable code and a
//! human message. Domain code never names an HTTP status; `http.rs` maps
//! each kind to one, in one place.

use std::fmt::Display;

/// What kind of refusal (the edge chooses the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or asks for something impossible.
    Malformed,
    /// The caller could not be authenticated (signature, code, freshness).
    Unauthenticated,
    /// The caller may not do this.
    Forbidden,
    NotFound,
    /// It conflicts with the current state (replay, fork, exists already).
    Conflict,
    /// It existed and was destroyed (retention).
    Gone,
    /// The caller's precondition (an ETag) no longer holds.
    Precondition,
    TooLarge,
    /// Over a rate limit: come back later.
    TooMany,
    /// The KM cannot tell (a standing list it depends on is stale).
    Unavailable,
    /// A fault of the KM's own; the detail is logged, never sent.
    Internal,
}

/// A refusal by the KM.
#[derive(Debug, Clone)]
pub struct Denied {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
    /// Seconds until a retry may succeed (rate limits).
    pub retry_after: Option<u64>,
}

impl Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Denied {}

impl Denied {
    fn of(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        Denied {
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn malformed(code: &'static str, message: impl Into<String>) -> Self {
        Self::of(Kind::Malformed, code, message)
    }
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::of(Kind::Unauthenticated, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::of(Kind::Forbidden, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::of(Kind::NotFound, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::of(Kind::Conflict, code, message)
    }
    pub fn gone(code: &'static str, message: impl Into<String>) -> Self {
        Self::of(Kind::Gone, code, message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::of(Kind::Unavailable, code, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::of(Kind::Precondition, "precondition", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::of(Kind::TooLarge, "too_large", message)
    }
    /// An internal fault: logged with a reference; the caller sees only it.
    pub fn internal(detail: impl Display) -> Self {
        let id = cloister_proto::now_millis();
        tracing::error!(error_id = id, "KM internal error: {detail}");
        Self::of(
            Kind::Internal,
            "internal",
            format!("internal error (reference {id}); nothing was changed"),
        )
    }
}

/// Refusals from the shared standing check keep their codes.
impl From<cloister_standing::StandingError> for Denied {
    fn from(e: cloister_standing::StandingError) -> Self {
        use cloister_standing::StandingError as E;
        let kind = match e {
            E::Unknown(_) => Kind::Unavailable,
            _ => Kind::Forbidden,
        };
        let code = cloister_http::ApiError::from(e.clone()).code;
        Self::of(kind, code, e.to_string())
    }
}

/// Errors of the shared runtimes the KM uses (the audit log) come back as
/// HTTP errors already; they are internal faults from the KM's side.
impl From<cloister_http::ApiError> for Denied {
    fn from(e: cloister_http::ApiError) -> Self {
        let kind = match e.status.as_u16() {
            400 | 422 => Kind::Malformed,
            401 => Kind::Unauthenticated,
            403 => Kind::Forbidden,
            404 => Kind::NotFound,
            409 => Kind::Conflict,
            410 => Kind::Gone,
            413 => Kind::TooLarge,
            503 => Kind::Unavailable,
            _ => Kind::Internal,
        };
        Self::of(kind, e.code, e.message)
    }
}

impl From<cloister_http::limit::Limited> for Denied {
    fn from(l: cloister_http::limit::Limited) -> Self {
        Denied {
            retry_after: Some(l.retry_after_secs),
            ..Self::of(Kind::TooMany, "rate_limited", l.to_string())
        }
    }
}

/// The one reading of a key provider's failure: a destroyed generation is
/// gone; a key the provider cannot use (HSM key deleted or disabled, PIN
/// changed, module unreachable, the sealed file unreadable) is a
/// crypto-locked tenant; anything else is the KM's own fault.
impl From<crate::provider::ProviderError> for Denied {
    fn from(e: crate::provider::ProviderError) -> Self {
        use crate::provider::ProviderError as P;
        match e {
            P::Destroyed(_) => Self::gone("key_shredded", "this key was destroyed by retention"),
            P::Hsm(_) | P::Unlock(_) | P::Io { .. } => {
                tracing::error!("key provider: {e}");
                Self::unavailable(
                    "crypto_locked",
                    "the tenant is crypto-locked: its master key cannot be used in the key \
                     provider; nothing is released until it is restored",
                )
            }
            e => Self::internal(e),
        }
    }
}
