//! Live messages: one socket to the server per app; each message is
//! verified and decrypted here, rendered, and pushed to the open pages as
//! Server-Sent Events (the room being looked at gets the message, the
//! others an unread count).

use crate::App;
use crate::messaging::{render_message, render_refused};
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cloister_client::Client;
use cloister_proto::RoomId;
use cloister_proto::server::Event;
use std::sync::Arc;
use std::time::Duration;

/// What the open pages are told.
#[derive(Clone, Debug)]
pub(crate) enum PageEvent {
    /// A message of `room`, rendered.
    Message {
        room: RoomId,
        seq: u64,
        html: String,
    },
    /// The room's membership changed (the page reloads its header).
    Membership { room: RoomId },
    /// A statement of the room's log, rendered (shown inline).
    Log {
        room: RoomId,
        seq: u64,
        html: String,
    },
    /// An export's progress (`total` 0: it ended).
    Progress { job: String, done: u64, total: u64 },
}

/// Follow the server's live socket for as long as the app runs,
/// reconnecting after a failure (the page catches up from history).
pub(crate) fn start(app: Arc<App>, c: Arc<Client>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(200);
        loop {
            match c.connect_events().await {
                Ok(mut stream) => {
                    wait = Duration::from_millis(200);
                    loop {
                        match stream.next().await {
                            Ok(Some(ev)) => on_event(&app, &c, ev).await,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!("live socket: {e}");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("live socket not connected: {e}"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    })
}

async fn on_event(app: &App, c: &Client, ev: Event) {
    match ev {
        Event::Message {
            room,
            seq,
            envelope,
        } => {
            let html = match c.receive(&room, seq, &envelope).await {
                Ok(m) => {
                    app.learn_names(c, &[m.sender.to_string()]).await;
                    render_message(app, c.user().as_str(), (&m).into())
                }
                Err(e) => render_refused(&e),
            };
            let viewed = app.events.receiver_count() > 0 && app.viewing(&room);
            if !viewed && let Ok(mut u) = app.unread.lock() {
                *u.entry(room).or_default() += 1;
            }
            let _ = app.events.send(PageEvent::Message {
                room,
                seq,
                html: html.into_string(),
            });
        }
        Event::Membership { room, seq } => {
            // the statement, verified with the room's log, shown inline
            if let Ok(log) = c.room_events(&room).await {
                let people: Vec<String> = log.iter().map(|s| s.actor_user.to_string()).collect();
                app.learn_names(c, &people).await;
                for s in log.iter().filter(|s| s.seq >= seq) {
                    let html = crate::events::render_statement(app, s);
                    let _ = app.events.send(PageEvent::Log {
                        room,
                        seq: s.seq,
                        html: html.into_string(),
                    });
                }
            }
            let _ = app.events.send(PageEvent::Membership { room });
        }
        Event::KeysShredded { room, notice } => {
            if let Err(e) = c.on_keys_shredded(&room, &notice) {
                tracing::warn!("shredded keys not dropped: {e}");
            }
        }
        // a member's new device waits to be added to an MLS room's group
        Event::MlsNewDevice { room, .. } => {
            if let Err(e) = c.mls_reconcile(&room).await {
                tracing::warn!(%room, "new device not added to the MLS group: {e}");
            }
        }
        _ => {}
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct Watch {
    /// The room the page shows (hex), if any.
    #[serde(default)]
    room: Option<String>,
}

/// Which rooms open pages are showing, with how many pages each.
pub(crate) struct Viewing(std::sync::Mutex<std::collections::HashMap<RoomId, usize>>);

impl Viewing {
    pub(crate) fn new() -> Viewing {
        Viewing(std::sync::Mutex::new(std::collections::HashMap::new()))
    }
}

/// One open page showing a room, until its event stream ends.
struct Watching {
    app: Arc<App>,
    room: Option<RoomId>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        if let Some(r) = self.room
            && let Ok(mut v) = self.app.viewing.0.lock()
            && let Some(n) = v.get_mut(&r)
        {
            *n -= 1;
            if *n == 0 {
                v.remove(&r);
            }
        }
    }
}

impl App {
    fn viewing(&self, room: &RoomId) -> bool {
        self.viewing.0.lock().is_ok_and(|v| v.contains_key(room))
    }
}

/// `GET /events?room=HEX`: the page's live feed: messages of its room,
/// unread counts of the others.
pub(crate) async fn events(State(app): State<Arc<App>>, Query(w): Query<Watch>) -> Response {
    if app.client().is_none() {
        return crate::pages::locked();
    }
    let room: Option<RoomId> = w.room.as_deref().and_then(|r| r.parse().ok());
    if let Some(r) = room
        && let Ok(mut v) = app.viewing.0.lock()
    {
        *v.entry(r).or_default() += 1;
    }
    let watching = Watching {
        app: app.clone(),
        room,
    };
    let rx = app.events.subscribe();
    let stream = futures_util::stream::unfold((rx, watching), move |(mut rx, w)| async move {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // too far behind: the page reloads and catches up
                    let e = SseEvent::default().event("reload").data("behind");
                    return Some((Ok::<_, std::convert::Infallible>(e), (rx, w)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            let e = match ev {
                PageEvent::Message { room, seq, html } if Some(room) == w.room => {
                    SseEvent::default()
                        .event("message")
                        .id(seq.to_string())
                        .data(html.replace('\n', " "))
                }
                PageEvent::Message { room, .. } => {
                    let n = w
                        .app
                        .unread
                        .lock()
                        .map(|u| u.get(&room).copied().unwrap_or(0))
                        .unwrap_or(0);
                    SseEvent::default()
                        .event("unread")
                        .data(format!("{} {n}", room.to_hex()))
                }
                PageEvent::Membership { room } if Some(room) == w.room => {
                    SseEvent::default().event("membership").data(room.to_hex())
                }
                PageEvent::Membership { .. } => continue,
                PageEvent::Log { room, seq, html } if Some(room) == w.room => SseEvent::default()
                    .event("log")
                    .data(format!("{seq} {}", html.replace('\n', " "))),
                PageEvent::Log { .. } => continue,
                PageEvent::Progress { job, done, total } => SseEvent::default()
                    .event("progress")
                    .data(format!("{done} {total} {job}")),
            };
            return Some((Ok(e), (rx, w)));
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
