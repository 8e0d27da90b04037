//! The live socket, `GET /v1/ws`: the events of the caller's rooms as JSON
//! text frames, and the client's `post` frames ([`ClientFrame`]), each
//! answered on the same socket by `posted` or `refused` with its `req`.
//!
//! A post frame passes exactly the checks of `POST /v1/rooms/{room}/messages`
//! (`crate::post::accept`), after the session token the socket was opened
//! with is checked again (expiry, the device's and user's standing): a socket
//! outlives neither its token nor a revocation (the hub also closes the
//! sockets of a revoked device). Many posts may be in flight; past
//! [`MAX_IN_FLIGHT`] the server stops reading the socket until one is
//! answered, so a client cannot queue unbounded work.

use crate::api::{authenticate, bearer};
use crate::{Caller, Server};
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use cloister_http::ApiError;
use cloister_proto::limits;
use cloister_proto::server::{ClientFrame, Event};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::Arc;

/// Posts one socket may have in flight.
pub const MAX_IN_FLIGHT: usize = 64;
/// Events and answers written before one flush.
const WRITE_BATCH: usize = 256;
/// WebSocket close code "policy violation" (RFC 6455, 7.4.1).
const CLOSE_POLICY: u16 = 1008;

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

#[utoipa::path(get, path = "/v1/ws", tag = "live", params(("token" = Option<String>, Query, description = "session token, when no Authorization header")), security(("session" = [])), responses((status = 101, description = "WebSocket: server Events, client post frames (docs/protocol.md)"), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn ws(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    up: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)
        .map(str::to_owned)
        .or(q.token)
        .ok_or_else(|| ApiError::unauthorized("no_token", "missing session token"))?;
    let caller = authenticate(&s, &token).await?;
    // Small read buffers; a modest write buffer keeps 1,000s of
    // connections cheap.
    Ok(up
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(limits::MAX_LIVE_FRAME)
        .max_frame_size(limits::MAX_LIVE_FRAME)
        .on_upgrade(move |sock| run(s, caller, token.into(), sock)))
}

fn encode(ev: &Event) -> Utf8Bytes {
    serde_json::to_string(ev)
        .map(Utf8Bytes::from)
        .unwrap_or_else(|_| Utf8Bytes::from_static("{\"type\":\"refused\",\"req\":null,\"status\":500,\"error\":\"internal\",\"message\":\"answer not encodable\"}"))
}

fn refused(req: Option<u64>, e: ApiError) -> Event {
    Event::Refused {
        req,
        status: e.status.as_u16(),
        error: e.code.to_owned(),
        message: e.message,
    }
}

/// The answer to one frame from the client.
async fn answer(s: Arc<Server>, token: Arc<str>, frame: Utf8Bytes) -> Utf8Bytes {
    let ev = match serde_json::from_str::<ClientFrame>(frame.as_str()) {
        Err(e) => refused(
            None,
            ApiError::bad_request("bad_frame", format!("unreadable frame: {e}")),
        ),
        Ok(ClientFrame::Post {
            req,
            room,
            envelope,
        }) => {
            let posted = async {
                let c = authenticate(&s, &token).await?;
                crate::post::accept(&s, &c, room, envelope).await
            };
            match posted.await {
                Ok(seq) => Event::Posted { req, seq },
                Err(e) => refused(Some(req), e),
            }
        }
    };
    encode(&ev)
}

async fn run(s: Arc<Server>, c: Caller, token: Arc<str>, sock: WebSocket) {
    let (id, mut rx) = s.hub.register(&c.user, c.device);
    if c.reads_tenant() {
        s.hub.watch(&c.tenant, &c.user);
    }
    let (mut sink, mut stream) = sock.split();
    let mut posts = FuturesUnordered::new();
    let mut close: Option<CloseFrame> = None;
    loop {
        // What to write now: an event or an answer, then whatever else is
        // ready, with one flush.
        let first = tokio::select! {
            ev = rx.recv() => match ev {
                Some(text) => text,
                None => break, // dropped by the hub (revoked, disabled, too slow)
            },
            Some(text) = posts.next(), if !posts.is_empty() => text,
            inc = stream.next(), if posts.len() < MAX_IN_FLIGHT => match inc {
                Some(Ok(WsMessage::Text(t))) => {
                    posts.push(answer(s.clone(), token.clone(), t));
                    continue;
                }
                Some(Ok(WsMessage::Binary(_))) => encode(&refused(
                    None,
                    ApiError::bad_request("bad_frame", "frames are JSON text"),
                )),
                Some(Ok(WsMessage::Close(_))) | None => break,
                Some(Err(e)) => {
                    // too large, or not WebSocket: say why, then close
                    close = Some(CloseFrame {
                        code: CLOSE_POLICY,
                        reason: format!("frame refused: {e}").chars().take(120).collect::<String>().into(),
                    });
                    break;
                }
                Some(Ok(_)) => continue, // ping, pong
            },
        };
        let mut ok = sink.feed(WsMessage::Text(first)).await.is_ok();
        let mut n = 1;
        while ok && n < WRITE_BATCH {
            let more = match rx.try_recv() {
                Ok(t) => t,
                Err(_) => match posts.next().now_or_never() {
                    Some(Some(t)) => t,
                    _ => break,
                },
            };
            ok = sink.feed(WsMessage::Text(more)).await.is_ok();
            n += 1;
        }
        if !ok || sink.flush().await.is_err() {
            break;
        }
    }
    s.hub.unregister(&c.user, id);
    if let Some(f) = close {
        let _ = sink.send(WsMessage::Close(Some(f))).await;
    }
    let _ = sink.close().await;
}
