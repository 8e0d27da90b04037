//! The page shell (sidebar of rooms and IMs with unread counts), the
//! unlock page, errors in words, and the built-in script and style.

use crate::App;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use cloister_client::Client;
use cloister_proto::km::Role;
use cloister_proto::room::RoomKind;
use cloister_proto::server::RoomSummary;
use maud::{DOCTYPE, Markup, html};
use std::sync::Arc;

pub(crate) async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/app.js"),
    )
        .into_response()
}

pub(crate) async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/app.css"),
    )
        .into_response()
}

/// A whole page: the sidebar (once unlocked) and `main`.
pub(crate) fn page(title: &str, sidebar: Option<Markup>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Cloister" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to the conversation" }
                div.shell {
                    @if let Some(s) = sidebar { (s) }
                    main #main tabindex="-1" { (main) }
                }
            }
        }
    }
}

/// What a failed step says to the user: the SDK's message in words.
pub(crate) fn error_page(status: StatusCode, what: &str, why: &str) -> Response {
    let body = page(
        what,
        None,
        html! {
            h1 { (what) }
            p.error role="alert" { (why) }
            p { a href="/" { "Back to your rooms" } }
        },
    );
    (status, body).into_response()
}

/// A step that did not happen, said in words on a page of its own: what
/// (the page's title) and why (the SDK's message). The status is chosen
/// here, from the SDK's kind of failure, and nowhere else.
pub(crate) struct Failure {
    pub status: StatusCode,
    pub what: &'static str,
    pub why: String,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, what: &'static str, why: impl Into<String>) -> Failure {
        Failure {
            status,
            what,
            why: why.into(),
        }
    }

    /// An SDK failure while doing `what`.
    pub(crate) fn of(what: &'static str, e: &cloister_client::ClientError) -> Failure {
        Failure::new(status_of(e), what, e.to_string())
    }
}

/// The status a refusal gets: the SDK's kind of failure.
pub(crate) fn status_of(e: &cloister_client::ClientError) -> StatusCode {
    use cloister_client::ClientError;
    match e {
        ClientError::Input(_) => StatusCode::BAD_REQUEST,
        ClientError::Api(a) => StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY),
        _ => StatusCode::BAD_GATEWAY,
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        error_page(self.status, self.what, &self.why)
    }
}

/// A room's name as the user sees it: its name, or for an IM the other
/// person's name.
pub(crate) fn room_name(app: &App, me: &str, r: &RoomSummary) -> String {
    if r.kind == RoomKind::Im {
        let other = r
            .members
            .iter()
            .find(|m| m.as_str() != me)
            .map(|u| u.to_string())
            .unwrap_or_else(|| me.to_owned());
        return app.name_of(&other);
    }
    if r.settings.name.trim().is_empty() {
        format!("room {}", &r.room.to_hex()[..8])
    } else {
        r.settings.name.clone()
    }
}

/// A time as people read it: `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn when(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        cloister_crypto::blind::day_of(ms),
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

/// This device's roles, from its KM-signed certificate.
pub(crate) fn roles_of(c: &Client) -> Vec<Role> {
    cloister_crypto::signed::verify_cert(&c.profile().km_sign_pk.0, &c.cert())
        .map(|cert| cert.roles)
        .unwrap_or_default()
}

/// The sidebar: rooms and IMs with unread counts, starting an IM,
/// creating a room.
pub(crate) async fn sidebar(app: &App, c: &Client, current: Option<&str>) -> Markup {
    let rooms = c.list_rooms().await.unwrap_or_default();
    let me = c.user().to_string();
    let partners: Vec<String> = rooms
        .iter()
        .filter(|r| r.kind == RoomKind::Im)
        .flat_map(|r| r.members.iter().map(|m| m.to_string()))
        .filter(|m| *m != me)
        .collect();
    app.learn_names(c, &partners).await;
    let unread = app.unread.lock().map(|u| u.clone()).unwrap_or_default();
    let (ims, named): (Vec<&RoomSummary>, Vec<&RoomSummary>) =
        rooms.iter().partition(|r| r.kind == RoomKind::Im);
    let item = |r: &RoomSummary| {
        let id = r.room.to_hex();
        let n = unread.get(&r.room).copied().unwrap_or(0);
        let name = room_name(app, &me, r);
        html! {
            li {
                a href={ "/r/" (id) } data-room=(id)
                    aria-current=[(current == Some(id.as_str())).then_some("page")] {
                    span.name { (name) }
                    span.unread data-unread=(id) hidden[n == 0]
                        aria-label={ (n) " unread" } { (n) }
                }
            }
        }
    };
    html! {
        nav.sidebar aria-label="Rooms and conversations" {
            p.brand { "Cloister" }
            p.who { "Signed in as " strong { (app.name_of(&me)) } " (" (me) ")" }
            form.inline-row method="post" action="/lock" {
                button type="submit" { "Lock" }
            }
            @let roles = roles_of(c);
            @if roles.contains(&Role::Admin) || roles.contains(&Role::Compliance) || roles.contains(&Role::Custodian) {
                ul.consoles {
                    @if roles.contains(&Role::Admin) { li { a href="/admin" { "Admin console" } } }
                    @if roles.contains(&Role::Compliance) || roles.contains(&Role::Custodian) {
                        li { a href="/compliance/cases" { "Compliance console" } }
                    }
                }
            }
            p.links { a href="/connections" { "Connections with other firms" } }
            form.inline method="get" action="/directory" {
                label for="dir-q" { "Find people" }
                input #dir-q name="q" type="search" autocomplete="off";
                button type="submit" { "Search" }
            }
            h2 #rooms-h { "Rooms" }
            ul aria-labelledby="rooms-h" { @for r in &named { (item(r)) } }
            h2 #ims-h { "Direct messages" }
            ul aria-labelledby="ims-h" { @for r in &ims { (item(r)) } }
            form.inline method="post" action="/im" {
                label for="im-user" { "Message a colleague" }
                input #im-user name="user" type="text" placeholder="name@firm" required
                    autocomplete="off";
                button type="submit" { "Start" }
            }
            form.inline method="post" action="/bridge" {
                label for="bridge-contact" { "Talk with a contact on Matrix (through the firm's gateway)" }
                input #bridge-contact name="contact" type="text" placeholder="@name:server" required
                    autocomplete="off";
                input type="hidden" name="network" value="matrix";
                button type="submit" { "Start" }
            }
            form.inline method="post" action="/rooms" {
                label for="room-name" { "New room" }
                input #room-name name="name" type="text" required autocomplete="off";
                label for="room-members" { "Members (comma-separated)" }
                input #room-members name="members" type="text" autocomplete="off";
                details {
                    summary { "Room policies" }
                    label.check { input type="checkbox" name="view_history" value="on" checked; " New members read earlier messages" }
                    label.check { input type="checkbox" name="members_may_invite" value="on"; " Any member may add members" }
                    label.check { input type="checkbox" name="read_only" value="on"; " Only owners post" }
                    label.check { input type="checkbox" name="public" value="on"; " Anyone of the firm may join" }
                    label.check { input type="checkbox" name="discoverable" value="on"; " Listed in the room directory" }
                    label.check { input type="checkbox" name="copy_protected" value="on"; " No copy, forward or export (cannot be undone)" }
                    label.check { input type="checkbox" name="mls" value="on"; " End-to-end mode (MLS): keys agreed by the members' devices, none at the firm's KM; still captured for compliance (fixed at creation)" }
                    label.check { input type="checkbox" name="external" value="on"; " May have members of other firms" }
                    label for="room-max" { "Most members" }
                    input #room-max name="max_members" type="number" min="2";
                }
                button type="submit" { "Create" }
            }
        }
    }
}

/// `GET /`: unlock the keystore, or the first room.
pub(crate) async fn home(State(app): State<Arc<App>>) -> Response {
    let Some(c) = app.client() else {
        return unlock_page(None).into_response();
    };
    let side = sidebar(&app, &c, None).await;
    page(
        "Rooms",
        Some(side),
        html! {
            h1 { "Welcome" }
            p { "Pick a room or a conversation, or start one." }
        },
    )
    .into_response()
}

fn unlock_page(error: Option<&str>) -> Markup {
    page(
        "Unlock",
        None,
        html! {
            h1 { "Unlock this device" }
            p { "Your keys are sealed on this device under your passphrase. They never leave this program; the page only shows what it decrypts." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/unlock" {
                label for="passphrase" { "Passphrase" }
                input #passphrase name="passphrase" type="password" required autofocus
                    autocomplete="current-password";
                button type="submit" { "Unlock" }
            }
        },
    )
}

#[derive(serde::Deserialize)]
pub(crate) struct UnlockForm {
    passphrase: String,
}

/// `POST /unlock`: open the home with the passphrase (Argon2id, off the
/// async threads), keep only the opened client, start the live feed.
pub(crate) async fn unlock(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<UnlockForm>,
) -> Response {
    if app.client().is_some() {
        return Redirect::to("/").into_response();
    }
    let (home, http) = (app.home.clone(), app.http.clone());
    let pass = f.passphrase.into_bytes();
    let opened = tokio::task::spawn_blocking(move || Client::open(http, &home, &pass)).await;
    match opened {
        Ok(Ok(c)) => {
            let c = Arc::new(c);
            if let Ok(mut slot) = app.client.write() {
                *slot = Some(c.clone());
            }
            let kp = c.clone();
            tokio::spawn(async move {
                if let Err(e) = kp.replenish_key_packages().await {
                    tracing::warn!("MLS key packages not topped up: {e}");
                }
            });
            let feed = crate::live::start(app.clone(), c);
            if let Ok(mut f) = app.feed.lock()
                && let Some(old) = f.replace(feed)
            {
                old.abort();
            }
            Redirect::to("/").into_response()
        }
        Ok(Err(e)) => (
            StatusCode::UNAUTHORIZED,
            unlock_page(Some(&format!("Not unlocked: {e}"))),
        )
            .into_response(),
        Err(_) => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Not unlocked",
            "the unlock step stopped unexpectedly",
        ),
    }
}

impl App {
    /// A user's display name from the directory (cached), else the id.
    pub(crate) fn name_of(&self, user: &str) -> String {
        self.names
            .lock()
            .ok()
            .and_then(|n| n.get(user).cloned())
            .unwrap_or_else(|| user.to_owned())
    }

    /// Learn display names from the directory for these users.
    pub(crate) async fn learn_names(&self, c: &Client, users: &[String]) {
        let missing: Vec<&String> = {
            let Ok(n) = self.names.lock() else { return };
            users.iter().filter(|u| !n.contains_key(*u)).collect()
        };
        for u in missing {
            let name = match c.directory_search(u, 5).await {
                Ok(found) => found
                    .into_iter()
                    .find(|e| e.user.as_str() == u.as_str())
                    .map(|e| e.display_name)
                    .filter(|n| !n.trim().is_empty()),
                Err(_) => None,
            };
            if let Ok(mut n) = self.names.lock() {
                n.insert(u.clone(), name.unwrap_or_else(|| u.clone()));
            }
        }
    }
}

/// `POST /lock`: drop the opened keystore from the app's memory (the
/// live feed stops with it); the page asks for the passphrase again.
pub(crate) async fn lock(State(app): State<Arc<App>>) -> Response {
    if let Ok(mut f) = app.feed.lock()
        && let Some(feed) = f.take()
    {
        feed.abort();
    }
    if let Ok(mut c) = app.client.write() {
        *c = None;
    }
    if let Ok(mut n) = app.names.lock() {
        n.clear();
    }
    if let Ok(mut u) = app.unread.lock() {
        u.clear();
    }
    Redirect::to("/").into_response()
}

/// A locked app sends every page to the unlock form.
pub(crate) fn locked() -> Response {
    Redirect::to("/").into_response()
}
