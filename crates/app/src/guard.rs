//! Who may talk to the app: the browser that opened the launch URL, on
//! this machine's loopback address, from the app's own pages. And what
//! every answer tells the browser: keep nothing, run only our script,
//! never be framed.

use crate::App;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

const COOKIE: &str = "cloister_session";

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

/// `GET /launch/SECRET`: trade the one-time launch secret for a session
/// cookie. The secret is spent whether or not it matched.
pub(crate) async fn launch(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(secret): Path<String>,
) -> Response {
    if !host_ok(&app, &headers) {
        return refuse(StatusCode::FORBIDDEN, "wrong host");
    }
    let Some(expected) = app.launch.lock().ok().and_then(|mut l| l.take()) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "this launch link was used already; restart `cloister app` for a new one",
        );
    };
    let given = hex::decode(secret.trim()).unwrap_or_default();
    if given.len() != 32 || !bool::from(given.ct_eq(&expected)) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this launch link is not the one `cloister app` printed; restart it for a new one",
        );
    }
    let Ok(session) = cloister_crypto::random_bytes::<32>() else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    if let Ok(mut s) = app.sessions.lock() {
        s.insert(cloister_crypto::sha256(&session));
    }
    // session-only (no expiry), never sent cross-site, never readable by script
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        hex::encode(session)
    );
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn host_ok(app: &App, headers: &HeaderMap) -> bool {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h == app.host)
}

fn session_ok(app: &App, headers: &HeaderMap) -> bool {
    let Some(id) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find_map(|v| hex::decode(v).ok())
    else {
        return false;
    };
    let h = cloister_crypto::sha256(&id);
    app.sessions.lock().is_ok_and(|s| s.contains(&h))
}

/// Every route but the launch: the right host, a session, and for a
/// change, the app's own origin.
pub(crate) async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if !host_ok(&app, headers) {
        return refuse(StatusCode::FORBIDDEN, "wrong host");
    }
    if !session_ok(&app, headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "open the launch link `cloister app` printed",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if origin != Some(app.origin.as_str()) {
            return refuse(
                StatusCode::FORBIDDEN,
                "a change must come from the app's own page",
            );
        }
    }
    next.run(req).await
}

/// What every answer carries.
pub(crate) async fn headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
        // same-origin: other sites learn nothing, and the app's own POSTs
        // carry their Origin (no-referrer would make it "null")
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}
