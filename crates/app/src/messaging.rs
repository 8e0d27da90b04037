//! A room: its history (verified and decrypted here, paged as the user
//! scrolls), the compose box, sending, starting an IM, creating a room.

use crate::App;
use crate::pages::{Failure, locked, page, room_name, sidebar, status_of};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use cloister_client::{Client, ClientError, Received};
use cloister_proto::room::RoomSettings;
use cloister_proto::server::Content;
use cloister_proto::{RoomId, UserId};
use maud::{Markup, html};
use std::sync::Arc;

/// Messages per page of history.
pub(crate) const PAGE: u32 = 50;

pub(crate) fn parse_room(s: &str) -> Result<RoomId, Failure> {
    s.parse().map_err(|_| {
        Failure::new(
            StatusCode::NOT_FOUND,
            "No such room",
            "that address does not name a room",
        )
    })
}

/// What the page shows of a message.
pub(crate) struct View<'a> {
    pub room: String,
    pub seq: u64,
    pub sender: &'a str,
    pub ts: u64,
    pub content: &'a Content,
}

impl<'a> From<&'a Received> for View<'a> {
    fn from(m: &'a Received) -> View<'a> {
        View {
            room: m.room.to_hex(),
            seq: m.seq,
            sender: m.sender.as_str(),
            ts: m.ts,
            content: &m.content,
        }
    }
}

/// One message as the page shows it.
pub(crate) fn render_message(app: &App, me: &str, m: View<'_>) -> Markup {
    let mine = m.sender == me;
    let when = time_of(m.ts);
    html! {
        li.msg.mine[mine] data-seq=(m.seq) id={ "m" (m.seq) } {
            p.meta {
                span.sender title=(m.sender) { (app.name_of(m.sender)) }
                " "
                time datetime=(m.ts) { (when) }
            }
            @if let Content::Relayed { from, network, .. } = &m.content {
                p.relayed { "From " strong { (from) } " on " (network) ", relayed by the firm's gateway" }
            }
            @match m.content.said() {
                Content::Text { text } => p.text { (text) },
                Content::Relayed { .. } => p.text { "[relayed twice]" },
                Content::File { name, size, sha256, .. } => p.file {
                    a href={ "/r/" (m.room) "/file/" (m.seq) } download=(name) { (name) }
                    " (" (size) " bytes) "
                    span.hash title="SHA-256 of the file, signed by its sender; checked when it is downloaded" {
                        "SHA-256 " code { (hex::encode(sha256.0)) }
                    }
                },
            }
        }
    }
}

/// A message that did not pass a check: shown in place, in words.
pub(crate) fn render_refused(e: &ClientError) -> Markup {
    html! {
        li.msg.refused role="note" {
            p { "A message here was not shown: " (e) }
        }
    }
}

/// `HH:MM` UTC of a millisecond timestamp (the page shows it; the full
/// time is in the element's `datetime`).
fn time_of(ts_ms: u64) -> String {
    let s = ts_ms / 1000;
    format!("{:02}:{:02} UTC", (s / 3600) % 24, (s / 60) % 60)
}

/// One page of history before `before` (or the newest), with the room's
/// log statements of the same stretch of time (`until`: where the newer
/// page began) in time order; and where the page before it begins.
async fn history(
    app: &App,
    c: &Client,
    room: &RoomId,
    before: Option<u64>,
    until: Option<u64>,
) -> Result<(Markup, Option<(u64, u64)>), ClientError> {
    let page = c.read(room, PAGE, before).await?;
    let log = c.room_events(room).await.unwrap_or_default();
    let mut people: Vec<String> = page
        .iter()
        .filter_map(|m| m.as_ref().ok().map(|m| m.sender.to_string()))
        .collect();
    people.extend(log.iter().map(|s| s.actor_user.to_string()));
    app.learn_names(c, &people).await;
    let me = c.user().to_string();
    let oldest = page
        .iter()
        .filter_map(|m| m.as_ref().ok().map(|m| (m.seq, m.ts)))
        .min();
    let full = page.len() as u32 >= PAGE;
    // the statements of this stretch of time: from the page's first
    // message (or the room's start when it is the oldest page) to where
    // the newer page began
    let lo = if full {
        oldest.map_or(0, |(_, ts)| ts)
    } else {
        0
    };
    let hi = until.unwrap_or(u64::MAX);
    // messages in the server's order (seq); each log statement before the
    // first message sent after it
    let mut events = crate::events::between(&log, lo, hi).into_iter().peekable();
    let mut items: Vec<Markup> = Vec::with_capacity(page.len() + 4);
    for m in &page {
        let (ts, html) = match m {
            Ok(m) => (m.ts, render_message(app, &me, m.into())),
            Err(e) => (0, render_refused(e)),
        };
        while let Some(s) = events.next_if(|s| s.ts < ts) {
            items.push(crate::events::render_statement(app, s));
        }
        items.push(html);
    }
    items.extend(events.map(|s| crate::events::render_statement(app, s)));
    let html = html! { @for i in &items { (i) } };
    Ok((html, if full { oldest } else { None }))
}

/// The room as this device's member list shows it; a room it is not a
/// member of (or that does not exist) is a 404 in words.
pub(crate) async fn summary_of(
    c: &Client,
    room: &RoomId,
) -> Result<cloister_proto::server::RoomSummary, Failure> {
    c.list_rooms()
        .await
        .map_err(|e| Failure::of("Rooms not loaded", &e))?
        .into_iter()
        .find(|r| r.room == *room)
        .ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                "Not a member",
                "you are not a member of this room (or it does not exist)",
            )
        })
}

/// `GET /r/ROOM`: the room with its newest page of history.
pub(crate) async fn room_page(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
) -> Result<Response, Failure> {
    let Some(c) = app.client() else {
        return Ok(locked());
    };
    let room = parse_room(&room)?;
    let summary = summary_of(&c, &room).await?;
    if let Ok(mut u) = app.unread.lock() {
        u.remove(&room);
    }
    let (items, older) = history(&app, &c, &room, None, None)
        .await
        .map_err(|e| Failure::of("History not loaded", &e))?;
    let me = c.user().to_string();
    let name = room_name(&app, &me, &summary);
    let hex = room.to_hex();
    let side = sidebar(&app, &c, Some(&hex)).await;
    // an MLS room: the group as this device holds it
    let mls = if summary.settings.mode == cloister_proto::room::RoomMode::Mls {
        Some(match c.mls_roster(&room).await {
            Ok(leaves) => format!(
                "End-to-end (MLS): keys agreed by the members' devices, none at the firm's KM; {} devices in the group, group epoch {}",
                leaves.len(),
                c.mls_sync(&room).await.unwrap_or_default()
            ),
            Err(e) => format!("End-to-end (MLS): this device is not in the group yet ({e})"),
        })
    } else {
        None
    };
    Ok(page(
        &name,
        Some(side),
        html! {
            header.room-head {
                h1 { (name) }
                p.members {
                    @if mls.is_some() {
                        (summary.members.len()) " members · "
                    } @else {
                        (summary.members.len()) " members, key epoch " (summary.epoch) " · "
                    }
                    a href={ "/r/" (hex) "/people" } { "People and keys" }
                }
                @if let Some(m) = &mls {
                    p.mode #room-mode { (m) }
                }
                @if let Some(b) = &summary.settings.bridge {
                    p.mode #room-bridge {
                        "Bridged to " strong { (b.contact) } " on " (b.network)
                        " through the firm's gateway (" (b.gateway) "): what is said here leaves end-to-end encryption there, and is kept in the firm's archive both ways"
                    }
                }
                p #membership-note role="status" hidden {
                    "The room's membership changed. " a href={ "/r/" (hex) } { "Reload" }
                }
            }
            section.history aria-label="Messages" {
                @if let Some((seq, ts)) = older {
                    a.older href={ "/r/" (hex) "/older?before=" (seq) "&until=" (ts) } {
                        "Show older messages"
                    }
                }
                ol #messages data-room=(hex) aria-live="polite" { (items) }
            }
            form #compose method="post" action={ "/r/" (hex) "/send" } data-room=(hex) {
                label for="text" { "Message " (name) }
                textarea #text name="text" rows="2" required
                    placeholder="Write a message; Enter sends, Shift+Enter adds a line" {}
                button type="submit" { "Send" }
                div.attach {
                    label for="file" { "Attach a file" }
                    input #file type="file" data-upload={ "/r/" (hex) "/upload" };
                    progress #upload-progress max="100" value="0" hidden aria-label="Upload progress" {}
                    span #upload-status role="status" {}
                }
                p #compose-error.error role="alert" hidden {}
            }
        },
    )
    .into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct Older {
    before: u64,
    #[serde(default)]
    until: Option<u64>,
}

/// `GET /r/ROOM/older?before=SEQ`: the page of history before `SEQ`, as
/// list items (the script inserts them above; without the script it is a
/// page of its own).
pub(crate) async fn older(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(q): Query<Older>,
) -> Response {
    let Some(c) = app.client() else {
        return locked();
    };
    let room = match parse_room(&room) {
        Ok(r) => r,
        Err(f) => return (f.status, f.why).into_response(),
    };
    match history(&app, &c, &room, Some(q.before), q.until).await {
        Ok((items, older)) => {
            let mut r = items.into_string().into_response();
            if let Some((seq, ts)) = older
                && let Ok(v) = format!("before={seq}&until={ts}").parse()
            {
                r.headers_mut().insert("x-older", v);
            }
            r
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct Newer {
    after: u64,
}

/// `GET /r/ROOM/newer?after=SEQ`: the messages after SEQ (the newest page
/// at most), for a page that opened its live feed after they arrived.
pub(crate) async fn newer(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(q): Query<Newer>,
) -> Response {
    let Some(c) = app.client() else {
        return locked();
    };
    let room = match parse_room(&room) {
        Ok(r) => r,
        Err(f) => return (f.status, f.why).into_response(),
    };
    match c.read(&room, PAGE, None).await {
        Ok(page) => {
            let me = c.user().to_string();
            let fresh: Vec<&Received> = page
                .iter()
                .filter_map(|m| m.as_ref().ok())
                .filter(|m| m.seq > q.after)
                .collect();
            let senders: Vec<String> = fresh.iter().map(|m| m.sender.to_string()).collect();
            app.learn_names(&c, &senders).await;
            html! { @for m in &fresh { (render_message(&app, &me, (*m).into())) } }
                .into_string()
                .into_response()
        }
        Err(e) => (status_of(&e), e.to_string()).into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct SendForm {
    text: String,
}

/// `POST /r/ROOM/send`: seal and post a text. The script posts it and
/// waits for the live event; without the script, back to the room.
pub(crate) async fn send(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: axum::http::HeaderMap,
    axum::Form(f): axum::Form<SendForm>,
) -> Response {
    let Some(c) = app.client() else {
        return locked();
    };
    let room = match parse_room(&room) {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    let text = f.text.trim_end();
    if text.trim().is_empty() {
        return (StatusCode::BAD_REQUEST, "write something first").into_response();
    }
    let by_script = headers.contains_key("x-cloister-fetch");
    match c.send_text(&room, text).await {
        Ok((_, seq)) if by_script => {
            // this device's own pages learn of it here (the server's live
            // socket tells the other members' devices)
            let content = Content::Text {
                text: text.to_owned(),
            };
            let me = c.user().to_string();
            let html = render_message(
                &app,
                &me,
                View {
                    room: room.to_hex(),
                    seq,
                    sender: &me,
                    ts: cloister_proto::now_millis(),
                    content: &content,
                },
            );
            let _ = app.events.send(crate::live::PageEvent::Message {
                room,
                seq,
                html: html.into_string(),
            });
            seq.to_string().into_response()
        }
        Ok(_) => Redirect::to(&format!("/r/{}", room.to_hex())).into_response(),
        Err(e) if by_script => (status_of(&e), format!("Not sent: {e}")).into_response(),
        Err(e) => Failure::of("Not sent", &e).into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct ImForm {
    user: String,
}

/// `POST /im`: open (or find) the IM with a colleague.
pub(crate) async fn start_im(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<ImForm>,
) -> Response {
    let Some(c) = app.client() else {
        return locked();
    };
    let user: UserId = match f.user.trim().parse() {
        Ok(u) => u,
        Err(_) => {
            return Failure::new(
                StatusCode::BAD_REQUEST,
                "No conversation started",
                format!("{:?} is not a user id (name@firm)", f.user.trim()),
            )
            .into_response();
        }
    };
    match c.im(&user).await {
        Ok(room) => Redirect::to(&format!("/r/{}", room.to_hex())).into_response(),
        Err(e) => Failure::of("No conversation started", &e).into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct BridgeForm {
    network: String,
    contact: String,
}

/// `POST /bridge`: a bridged room with a contact on another network,
/// through the firm's gateway user (`gateway@<firm>`).
pub(crate) async fn open_bridge(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<BridgeForm>,
) -> Response {
    let Some(c) = app.client() else {
        return locked();
    };
    let gateway = match format!("gateway@{}", c.user().tenant()).parse::<UserId>() {
        Ok(g) => g,
        Err(e) => {
            return Failure::new(StatusCode::BAD_REQUEST, "Not started", e.to_string())
                .into_response();
        }
    };
    match c.open_bridge(&f.network, &f.contact, &gateway, &[]).await {
        Ok(room) => Redirect::to(&format!("/r/{}", room.to_hex())).into_response(),
        Err(e) => Failure::of("Conversation not started", &e).into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct RoomForm {
    name: String,
    #[serde(default)]
    members: String,
    #[serde(default)]
    view_history: Option<String>,
    #[serde(default)]
    members_may_invite: Option<String>,
    #[serde(default)]
    read_only: Option<String>,
    #[serde(default)]
    public: Option<String>,
    #[serde(default)]
    discoverable: Option<String>,
    #[serde(default)]
    copy_protected: Option<String>,
    mls: Option<String>,
    #[serde(default)]
    external: Option<String>,
    #[serde(default)]
    max_members: String,
}

/// `POST /rooms`: create a room with these members.
pub(crate) async fn create_room(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<RoomForm>,
) -> Response {
    let Some(c) = app.client() else {
        return locked();
    };
    let mut members = Vec::new();
    for m in f
        .members
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        match m.parse::<UserId>() {
            Ok(u) => members.push(u),
            Err(_) => {
                return Failure::new(
                    StatusCode::BAD_REQUEST,
                    "Room not created",
                    format!("{m:?} is not a user id (name@firm)"),
                )
                .into_response();
            }
        }
    }
    let max_members = match f.max_members.trim() {
        "" => None,
        n => Some(n.parse::<u32>().map_err(|_| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "Room not created",
                format!("{n:?} is not a number of members"),
            )
        })),
    };
    let max_members = match max_members {
        Some(Err(f)) => return f.into_response(),
        Some(Ok(n)) => Some(n),
        None => None,
    };
    let settings = RoomSettings {
        name: f.name.trim().to_owned(),
        view_history: f.view_history.is_some(),
        members_may_invite: f.members_may_invite.is_some(),
        read_only: f.read_only.is_some(),
        public: f.public.is_some(),
        discoverable: f.discoverable.is_some() || f.public.is_some(),
        copy_protected: f.copy_protected.is_some(),
        max_members,
        external: f.external.is_some(),
        mode: if f.mls.is_some() {
            cloister_proto::room::RoomMode::Mls
        } else {
            cloister_proto::room::RoomMode::Managed
        },
        bridge: None,
    };
    match c.create_room(settings, &members).await {
        Ok(room) => Redirect::to(&format!("/r/{}", room.to_hex())).into_response(),
        Err(e) => Failure::of("Room not created", &e).into_response(),
    }
}
