//! The live socket with posting: one WebSocket carries the events of the
//! device's rooms and its posts ([`ClientFrame::Post`]), each answered on
//! the socket by `posted` or `refused` with the post's `req`.
//!
//! A task owns the socket: it writes the posts queued by every [`Poster`]
//! (several per flush), resolves each post from its answer, and passes the
//! other events on to [`Live::next`]. Up to [`EVENT_BUFFER`] events wait for
//! the reader; past that the task stops reading the socket, so answers wait
//! too: keep reading events while posting.

use crate::api::{ApiFailure, ws_connect};
use crate::{ClientError, Result};
use cloister_proto::RoomId;
use cloister_proto::server::{ClientFrame, Envelope, Event};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Events waiting for [`Live::next`].
pub const EVENT_BUFFER: usize = 4096;
/// Posts waiting to be written.
const POST_QUEUE: usize = 1024;

type Answer = oneshot::Sender<Result<u64>>;

/// The device's live socket: events, and a [`Poster`] to post through it.
pub struct Live {
    events: mpsc::Receiver<Result<Event>>,
    poster: Poster,
}

/// Posts messages over a live socket; cheap to clone, usable from many tasks.
#[derive(Clone)]
pub struct Poster {
    tx: mpsc::Sender<(String, u64, Answer)>,
    next: Arc<AtomicU64>,
}

fn closed() -> ClientError {
    ClientError::Network {
        url: "live socket".into(),
        reason: "the live socket closed before the post was answered".into(),
    }
}

impl Live {
    pub(crate) async fn connect(
        server: &str,
        token: &str,
        tls: &cloister_tls::ClientTls,
    ) -> Result<Live> {
        let ws = ws_connect(server, token, tls).await?;
        let (tx, rx) = mpsc::channel(POST_QUEUE);
        let (ev_tx, events) = mpsc::channel(EVENT_BUFFER);
        tokio::spawn(pump(ws, rx, ev_tx));
        Ok(Live {
            events,
            poster: Poster {
                tx,
                next: Arc::new(AtomicU64::new(1)),
            },
        })
    }

    /// A handle to post through this socket.
    pub fn poster(&self) -> Poster {
        self.poster.clone()
    }

    /// The next event of the device's rooms, or `None` once the socket closed.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        self.events.recv().await.transpose()
    }
}

impl Poster {
    /// Post a sealed message; its seq once the server stored it. The
    /// server's refusals are the errors `POST /v1/rooms/{room}/messages`
    /// answers (same status and code).
    pub async fn post(&self, room: &RoomId, envelope: &Envelope) -> Result<u64> {
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        let frame = ClientFrame::Post {
            req,
            room: *room,
            envelope: envelope.clone(),
        };
        let text = serde_json::to_string(&frame)
            .map_err(|e| ClientError::Local(format!("cannot encode a post: {e}")))?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((text, req, reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Own the socket: write queued posts, route answers, pass events on.
async fn pump(
    ws: Socket,
    mut posts: mpsc::Receiver<(String, u64, Answer)>,
    events: mpsc::Sender<Result<Event>>,
) {
    let (mut sink, mut stream) = ws.split();
    let mut pending: HashMap<u64, Answer> = HashMap::new();
    let failure = loop {
        tokio::select! {
            p = posts.recv() => {
                let Some((text, req, reply)) = p else {
                    break None; // the Live and every Poster are gone
                };
                pending.insert(req, reply);
                let mut ok = sink.feed(Message::Text(text.into())).await.is_ok();
                while ok && let Ok((text, req, reply)) = posts.try_recv() {
                    pending.insert(req, reply);
                    ok = sink.feed(Message::Text(text.into())).await.is_ok();
                }
                if !ok || sink.flush().await.is_err() {
                    break Some("cannot write to the live socket".to_string());
                }
            }
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Event>(t.as_str()) {
                    Ok(Event::Posted { req, seq }) => {
                        if let Some(a) = pending.remove(&req) {
                            let _ = a.send(Ok(seq));
                        }
                    }
                    Ok(Event::Refused { req, status, error, message }) => {
                        let e = ClientError::Api(ApiFailure { status, code: error, message });
                        match req.and_then(|r| pending.remove(&r)) {
                            Some(a) => { let _ = a.send(Err(e)); }
                            None => { let _ = events.send(Err(e)).await; }
                        }
                    }
                    Ok(ev) => { let _ = events.send(Ok(ev)).await; }
                    Err(e) => {
                        let _ = events
                            .send(Err(ClientError::Local(format!("bad event from server: {e}"))))
                            .await;
                    }
                },
                Some(Ok(Message::Close(f))) => {
                    break f.map(|f| format!("closed by the server: {} {}", u16::from(f.code), f.reason));
                }
                None => break None,
                Some(Err(e)) => break Some(e.to_string()),
                Some(Ok(_)) => {}
            },
        }
    };
    for (_, a) in pending.drain() {
        let _ = a.send(Err(closed()));
    }
    if let Some(reason) = failure {
        let _ = events
            .send(Err(ClientError::Network {
                url: "live socket".into(),
                reason,
            }))
            .await;
    }
}
