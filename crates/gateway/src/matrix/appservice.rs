//! The application-service API the homeserver calls: transactions of
//! events (each taken once, by transaction id, stored before the answer),
//! and user queries for ghosts a Matrix user invites before they exist.
//! Every call must carry the homeserver's token.

use super::Matrix;
use crate::connector::{Body, Inbound, Pushed, Sink};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};
use std::sync::Arc;

/// Most events taken from one transaction.
const MAX_EVENTS: usize = 1_000;
/// Largest transaction body.
const MAX_BODY: usize = 8 * 1024 * 1024;

struct AppService {
    matrix: Arc<Matrix>,
    sink: Arc<dyn Sink>,
}

type S = State<Arc<AppService>>;

pub(super) fn router(matrix: Arc<Matrix>, sink: Arc<dyn Sink>) -> axum::Router {
    let st = Arc::new(AppService { matrix, sink });
    axum::Router::new()
        .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
        .route("/_matrix/app/v1/users/{user}", get(user_query))
        .route("/_matrix/app/v1/rooms/{alias}", get(room_query))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(st)
}

fn error(status: StatusCode, errcode: &str, msg: &str) -> Response {
    (status, Json(json!({"errcode": errcode, "error": msg}))).into_response()
}

/// Unless the call carries the homeserver's token (compared in constant
/// time): the refusal.
fn refused(st: &AppService, headers: &HeaderMap) -> Option<Response> {
    let Some(given) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
            "the homeserver's token is missing",
        ));
    };
    let want = st.matrix.cfg.hs_token.as_bytes();
    if subtle::ConstantTimeEq::ct_eq(given.as_bytes(), want).into() {
        None
    } else {
        Some(error(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "not the homeserver's token",
        ))
    }
}

async fn transaction(
    State(st): S,
    Path(txn): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refused(&st, &headers) {
        return r;
    }
    if txn.is_empty() || txn.len() > 255 {
        return error(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "bad transaction id",
        );
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                &format!("transaction is not JSON: {e}"),
            );
        }
    };
    let Some(events) = v["events"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "no events array");
    };
    if events.len() > MAX_EVENTS {
        return error(
            StatusCode::BAD_REQUEST,
            "M_TOO_LARGE",
            &format!("at most {MAX_EVENTS} events in a transaction"),
        );
    }
    let mut items = Vec::new();
    for ev in events {
        match item(&st.matrix, ev).await {
            Ok(Some(p)) => items.push(p),
            Ok(None) => {}
            // a file we could not fetch now: the homeserver retries the
            // whole transaction later (nothing of it was taken)
            Err(e) => {
                tracing::warn!("transaction {txn} not taken yet: {e}");
                return error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", &e);
            }
        }
    }
    match st.sink.take("matrix", &txn, items).await {
        Ok(_) => (StatusCode::OK, Json(json!({}))).into_response(),
        Err(e) => {
            tracing::warn!("transaction {txn} not stored: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_UNKNOWN",
                "the gateway could not store the transaction; retry",
            )
        }
    }
}

/// What an event means for the gateway (`None`: nothing).
async fn item(m: &Matrix, ev: &Value) -> Result<Option<Pushed>, String> {
    let (Some(id), Some(room), Some(sender), Some(kind)) = (
        ev["event_id"].as_str(),
        ev["room_id"].as_str(),
        ev["sender"].as_str(),
        ev["type"].as_str(),
    ) else {
        return Ok(None);
    };
    if m.is_ours(sender) {
        // our own echo
        return Ok(None);
    }
    let c = &ev["content"];
    let inbound = match kind {
        "m.room.member" => {
            let (Some(target), Some("invite")) =
                (ev["state_key"].as_str(), c["membership"].as_str())
            else {
                return Ok(None);
            };
            let Some(to) = m.user_of_ghost(target) else {
                return Ok(None);
            };
            Inbound::Invite {
                conversation: room.to_owned(),
                from: sender.to_owned(),
                to,
            }
        }
        "m.room.message" => {
            let text = c["body"].as_str().unwrap_or_default();
            let body = match c["msgtype"].as_str() {
                Some("m.text" | "m.notice" | "m.emote") => Body::Text {
                    text: text.to_owned(),
                },
                Some("m.file" | "m.image" | "m.video" | "m.audio") => {
                    let Some(url) = c["url"].as_str() else {
                        // an encrypted file: the gateway is not in E2EE rooms
                        return Ok(Some(Pushed {
                            id: id.to_owned(),
                            item: Inbound::Message {
                                conversation: room.to_owned(),
                                from: sender.to_owned(),
                                body: Body::Text {
                                    text: format!(
                                        "[{text}: an encrypted file the gateway cannot read]"
                                    ),
                                },
                            },
                        }));
                    };
                    match m.download(url).await {
                        Ok(data) => Body::File {
                            name: if text.is_empty() {
                                "file".into()
                            } else {
                                text.to_owned()
                            },
                            data,
                        },
                        Err(e) if e.is_transient() => return Err(e.to_string()),
                        Err(e) => Body::Text {
                            text: format!("[{text}: a file the gateway could not relay: {e}]"),
                        },
                    }
                }
                _ => return Ok(None),
            };
            Inbound::Message {
                conversation: room.to_owned(),
                from: sender.to_owned(),
                body,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(Pushed {
        id: id.to_owned(),
        item: inbound,
    }))
}

/// The homeserver asks whether a user of the namespace exists before an
/// invitation to it: a well-formed ghost is registered now.
async fn user_query(State(st): S, Path(user): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&st, &headers) {
        return r;
    }
    let Some(u) = st.matrix.user_of_ghost(&user) else {
        return error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "not a Cloister user");
    };
    match st.matrix.ensure_registered(&u).await {
        Ok(_) => (StatusCode::OK, Json(json!({}))).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", &e.to_string()),
    }
}

async fn room_query(State(st): S, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&st, &headers) {
        return r;
    }
    error(
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "the gateway keeps no room aliases",
    )
}
