//! The compliance console (compliance and custodian roles): blind search,
//! cases (open, scope, hold), approvals (a custodian approves in their own
//! app), the export with a progress bar and its offline verification, and
//! retention.

use crate::App;
use crate::admin::form_pairs;
use crate::live::PageEvent;
use crate::pages::{Failure, locked, page, roles_of, sidebar, when};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use cloister_client::Client;
use cloister_crypto::blind::Field;
use cloister_proto::km::{CaseScope, Role};
use cloister_proto::{RoomId, UserId};
use maud::{Markup, html};
use std::sync::Arc;

/// Where an export stands (one per case at a time).
#[derive(Clone, Debug)]
pub(crate) enum Job {
    Running {
        done: u64,
        total: u64,
    },
    Done {
        dir: String,
        messages: u64,
        files: u64,
    },
    Failed(String),
}

fn console(app: &App, need: &[Role]) -> Result<Arc<Client>, Failure> {
    let c = app
        .client()
        .ok_or_else(|| Failure::new(StatusCode::UNAUTHORIZED, "Locked", "unlock the app first"))?;
    let roles = roles_of(&c);
    if !need.iter().any(|r| roles.contains(r)) {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "Not a compliance device",
            "the compliance console needs a device enrolled with the compliance or custodian role",
        ));
    }
    Ok(c)
}

async fn console_page(app: &App, c: &Client, title: &str, main: Markup) -> Response {
    let side = sidebar(app, c, None).await;
    page(
        title,
        Some(side),
        html! {
            nav.tabs aria-label="Compliance console" {
                a href="/compliance" { "Search" }
                a href="/compliance/cases" { "Cases and approvals" }
                a href="/compliance/retention" { "Retention" }
            }
            (main)
        },
    )
    .into_response()
}

/// Midnight UTC of a `YYYY-MM-DD` day, in ms.
fn day_ms(s: &str) -> Option<u64> {
    cloister_crypto::blind::parse_day(s.trim())
}

fn today() -> String {
    cloister_crypto::blind::day_of(cloister_proto::now_millis())
}

/// `GET /compliance` and `POST /compliance` (a search).
pub(crate) async fn search(State(app): State<Arc<App>>, body: String) -> Result<Response, Failure> {
    if app.client().is_none() {
        return Ok(locked());
    }
    let c = console(&app, &[Role::Compliance])?;
    let form = form_pairs(&body);
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let (words, sender, participant, room) =
        (get("words"), get("sender"), get("participant"), get("room"));
    let (from, to) = (get("from"), get("to"));
    let mut results = None;
    if !form.is_empty() {
        let mut terms: Vec<(Field, String)> = words
            .split_whitespace()
            .map(|w| (Field::Keyword, w.to_owned()))
            .collect();
        if !sender.is_empty() {
            terms.push((Field::Sender, sender.clone()));
        }
        if !participant.is_empty() {
            terms.push((Field::Participant, participant.clone()));
        }
        if !room.is_empty() {
            terms.push((Field::Room, room.clone()));
        }
        let now = cloister_proto::now_millis();
        let from_ms = day_ms(&from).unwrap_or(now.saturating_sub(30 * 86_400_000));
        let to_ms = day_ms(&to).map(|d| d + 86_400_000 - 1).unwrap_or(now);
        results = Some(c.compliance_search(&terms, from_ms, to_ms, 200).await);
    }
    Ok(console_page(
        &app,
        &c,
        "Compliance search",
        html! {
            h1 { "Search the archive" }
            p { "Search terms become blind tokens on this device: the vault matches tokens and never sees a word or a name. Results are metadata; reading content needs a case approved by the custodians." }
            form.filters method="post" action="/compliance" {
                label for="s-words" { "Words (all must appear)" }
                input #s-words name="words" type="text" value=(words) autocomplete="off";
                label for="s-sender" { "Sender" }
                input #s-sender name="sender" type="text" value=(sender) placeholder="name@firm" autocomplete="off";
                label for="s-part" { "Participant" }
                input #s-part name="participant" type="text" value=(participant) placeholder="name@firm" autocomplete="off";
                label for="s-room" { "Room id" }
                input #s-room name="room" type="text" value=(room) autocomplete="off";
                label for="s-from" { "From (YYYY-MM-DD)" }
                input #s-from name="from" type="text" value=(from) placeholder="30 days ago" autocomplete="off";
                label for="s-to" { "To (YYYY-MM-DD)" }
                input #s-to name="to" type="text" value=(to) placeholder=(today()) autocomplete="off";
                button type="submit" { "Search" }
            }
            @match &results {
                None => {},
                Some(Err(e)) => p.error role="alert" { "Not searched: " (e) },
                Some(Ok(hits)) => {
                    table.grid #hits {
                        caption { (hits.len()) " messages match" }
                        thead { tr { th scope="col" { "Time" } th scope="col" { "Room" } th scope="col" { "Message" } } }
                        tbody {
                            @for h in hits {
                                tr { td { time datetime=(h.ts) { (when(h.ts)) } } td { code { (h.room) } } td { code { (h.message_id) } } }
                            }
                        }
                    }
                }
            }
        },
    )
    .await)
}

/// `GET /compliance/cases`: cases (officers open, custodians approve).
pub(crate) async fn cases(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    if app.client().is_none() {
        return Ok(locked());
    }
    let c = console(&app, &[Role::Compliance, Role::Custodian])?;
    let roles = roles_of(&c);
    let list = c
        .case_list()
        .await
        .map_err(|e| Failure::of("Cases not loaded", &e))?;
    let jobs = app.jobs.lock().map(|j| j.clone()).unwrap_or_default();
    Ok(console_page(
        &app,
        &c,
        "Cases",
        html! {
            h1 { "Cases and approvals" }
            table.grid #cases {
                thead { tr {
                    th scope="col" { "Case" } th scope="col" { "Scope" } th scope="col" { "Officer" }
                    th scope="col" { "Hold" } th scope="col" { "Actions" }
                } }
                tbody {
                    @for (_, k) in &list {
                        tr {
                            td { strong { (k.case) } " v" (k.version) br; (k.title) }
                            td {
                                (cloister_crypto::blind::day_of(k.scope.from_ms)) " to " (cloister_crypto::blind::day_of(k.scope.to_ms))
                                @if !k.scope.custodians.is_empty() { br; "people: " (k.scope.custodians.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ")) }
                                @if !k.scope.rooms.is_empty() { br; "rooms: " (k.scope.rooms.len()) }
                                @if let Some(g) = k.scope.reseal { br; "re-seal of escrow generation " (g) }
                            }
                            td { (k.officer) }
                            td { @if k.hold { "legal hold" } }
                            td {
                                @if roles.contains(&Role::Custodian) {
                                    form.inline-row method="post" action={ "/compliance/cases/" (k.case) "/approve" } {
                                        button type="submit" aria-label={ "Approve case " (k.case) } { "Approve" }
                                    }
                                }
                                @if k.officer == *c.user() && k.scope.reseal.is_none() {
                                    details {
                                        summary { "Change scope (approvals are asked again)" }
                                        form.inline method="post" action={ "/compliance/cases/" (k.case) "/scope" } {
                                            label for={ "sp-" (k.case) } { "People (comma-separated user ids)" }
                                            input id={ "sp-" (k.case) } name="people" type="text" autocomplete="off"
                                                value=(k.scope.custodians.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", "));
                                            label for={ "sr-" (k.case) } { "Rooms (comma-separated room ids)" }
                                            input id={ "sr-" (k.case) } name="rooms" type="text" autocomplete="off"
                                                value=(k.scope.rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "));
                                            label for={ "sf-" (k.case) } { "From (YYYY-MM-DD)" }
                                            input id={ "sf-" (k.case) } name="from" type="text" required value=(cloister_crypto::blind::day_of(k.scope.from_ms));
                                            label for={ "st-" (k.case) } { "To (YYYY-MM-DD)" }
                                            input id={ "st-" (k.case) } name="to" type="text" required value=(cloister_crypto::blind::day_of(k.scope.to_ms));
                                            button type="submit" { "Change scope" }
                                        }
                                    }
                                }
                                @if k.officer == *c.user() && k.officer_device == c.device() && k.scope.reseal.is_none() {
                                    form.inline-row method="post" action={ "/compliance/cases/" (k.case) "/export" } {
                                        button type="submit" aria-label={ "Export case " (k.case) } { "Export" }
                                    }
                                    @match jobs.get(&k.case) {
                                        Some(Job::Running { done, total }) => {
                                            progress data-job=(k.case) max=(total.max(&1)) value=(done) aria-label={ "Export of " (k.case) } {}
                                        }
                                        Some(Job::Done { dir, messages, files }) => {
                                            p.ok { "Exported " (messages) " messages, " (files) " files to " code { (dir) } }
                                            form.inline-row method="post" action={ "/compliance/cases/" (k.case) "/verify" } {
                                                button type="submit" aria-label={ "Verify export of " (k.case) } { "Verify export" }
                                            }
                                        }
                                        Some(Job::Failed(why)) => p.error role="alert" { "Export failed: " (why) },
                                        None => {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if roles.contains(&Role::Compliance) {
                form.inline method="post" action="/compliance/cases" {
                    fieldset {
                        legend { "Open a case (this device keeps its decryption session key)" }
                        label for="c-name" { "Case name" }
                        input #c-name name="case" type="text" required autocomplete="off";
                        label for="c-title" { "Title" }
                        input #c-title name="title" type="text" autocomplete="off";
                        label for="c-people" { "People (comma-separated user ids)" }
                        input #c-people name="people" type="text" autocomplete="off";
                        label for="c-rooms" { "Rooms (comma-separated room ids)" }
                        input #c-rooms name="rooms" type="text" autocomplete="off";
                        label for="c-from" { "From (YYYY-MM-DD)" }
                        input #c-from name="from" type="text" required value=(today()) autocomplete="off";
                        label for="c-to" { "To (YYYY-MM-DD)" }
                        input #c-to name="to" type="text" required value=(today()) autocomplete="off";
                        label.check { input type="checkbox" name="hold" value="on"; " Legal hold (retention keeps it)" }
                        button type="submit" { "Open case" }
                    }
                }
            }
        },
    )
    .await)
}

#[derive(serde::Deserialize)]
pub(crate) struct CaseForm {
    case: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    people: String,
    #[serde(default)]
    rooms: String,
    from: String,
    to: String,
    #[serde(default)]
    hold: Option<String>,
}

/// `POST /compliance/cases`: open a case.
pub(crate) async fn open_case(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<CaseForm>,
) -> Result<Response, Failure> {
    let c = console(&app, &[Role::Compliance])?;
    let scope = scope_of(&f.people, &f.rooms, (&f.from, &f.to), "Case not opened")?;
    c.case_open(f.case.trim(), f.title.trim(), scope, f.hold.is_some())
        .await
        .map_err(|e| Failure::of("Case not opened", &e))?;
    Ok(Redirect::to("/compliance/cases").into_response())
}

/// A case scope from a form's fields.
fn scope_of(
    people: &str,
    rooms: &str,
    (from, to): (&str, &str),
    what: &'static str,
) -> Result<CaseScope, Failure> {
    let bad = |why: String| Failure::new(StatusCode::BAD_REQUEST, what, why);
    let custodians = people
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<UserId>()
                .map_err(|_| bad(format!("{u:?} is not a user id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rooms = rooms
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            r.parse::<RoomId>()
                .map_err(|_| bad(format!("{r:?} is not a room id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let from_ms =
        day_ms(from).ok_or_else(|| bad(format!("{from:?} is not a date (YYYY-MM-DD)")))?;
    let to_ms = day_ms(to).ok_or_else(|| bad(format!("{to:?} is not a date (YYYY-MM-DD)")))?
        + 86_400_000
        - 1;
    Ok(CaseScope {
        custodians,
        rooms,
        from_ms,
        to_ms,
        reseal: None,
    })
}

#[derive(serde::Deserialize)]
pub(crate) struct ScopeForm {
    #[serde(default)]
    people: String,
    #[serde(default)]
    rooms: String,
    from: String,
    to: String,
}

/// `POST /compliance/cases/CASE/scope`: a new scope (approvals again).
pub(crate) async fn rescope(
    State(app): State<Arc<App>>,
    Path(case): Path<String>,
    axum::Form(f): axum::Form<ScopeForm>,
) -> Result<Response, Failure> {
    let c = console(&app, &[Role::Compliance])?;
    let scope = scope_of(&f.people, &f.rooms, (&f.from, &f.to), "Scope not changed")?;
    c.case_rescope(&case, scope)
        .await
        .map_err(|e| Failure::of("Scope not changed", &e))?;
    Ok(Redirect::to("/compliance/cases").into_response())
}

/// `POST /compliance/cases/CASE/approve` (custodian).
pub(crate) async fn approve(
    State(app): State<Arc<App>>,
    Path(case): Path<String>,
) -> Result<Response, Failure> {
    let c = console(&app, &[Role::Custodian])?;
    c.case_approve(&case)
        .await
        .map_err(|e| Failure::of("Not approved", &e))?;
    Ok(console_page(
        &app,
        &c,
        "Approved",
        html! {
            h1 { "Case " (case) " approved" }
            p.ok role="status" { "Your escrow share is released to this case's decryption session only." }
            p { a href="/compliance/cases" { "Back to cases" } }
        },
    )
    .await)
}

/// `POST /compliance/cases/CASE/export`: start the export in the app; the
/// page follows its progress.
pub(crate) async fn export(
    State(app): State<Arc<App>>,
    Path(case): Path<String>,
) -> Result<Response, Failure> {
    let c = console(&app, &[Role::Compliance])?;
    {
        let mut jobs = app.jobs.lock().map_err(|_| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Not exported",
                "job lock",
            )
        })?;
        if matches!(jobs.get(&case), Some(Job::Running { .. })) {
            return Ok(Redirect::to("/compliance/cases").into_response());
        }
        jobs.insert(case.clone(), Job::Running { done: 0, total: 0 });
    }
    let dir = app.home.join("exports").join(format!(
        "{}-{}",
        case.replace(|ch: char| !ch.is_ascii_alphanumeric() && ch != '-', "_"),
        cloister_proto::now_millis()
    ));
    let app2 = app.clone();
    tokio::spawn(async move {
        let events = app2.events.clone();
        let jobs = &app2.jobs;
        let progress = |done: u64, total: u64| {
            if let Ok(mut j) = jobs.lock() {
                j.insert(case.clone(), Job::Running { done, total });
            }
            let _ = events.send(PageEvent::Progress {
                job: case.clone(),
                done,
                total,
            });
        };
        let r = c.case_export(&case, &dir, &progress).await;
        let state = match r {
            Ok(x) => Job::Done {
                dir: dir.display().to_string(),
                messages: x.summary.messages,
                files: x.summary.files,
            },
            Err(e) => Job::Failed(e.to_string()),
        };
        if let Ok(mut j) = app2.jobs.lock() {
            j.insert(case.clone(), state);
        }
        let _ = app2.events.send(PageEvent::Progress {
            job: case,
            done: 1,
            total: 0,
        });
    });
    Ok(Redirect::to("/compliance/cases").into_response())
}

/// `POST /compliance/cases/CASE/verify`: verify the export offline, as a
/// reviewer would, against this firm's KM key.
pub(crate) async fn verify(
    State(app): State<Arc<App>>,
    Path(case): Path<String>,
) -> Result<Response, Failure> {
    let c = console(&app, &[Role::Compliance])?;
    let Some(Job::Done { dir, .. }) = app.jobs.lock().ok().and_then(|j| j.get(&case).cloned())
    else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "Not verified",
            "this case has no finished export here",
        ));
    };
    let km = c.profile().km_sign_pk.0;
    let r = tokio::task::spawn_blocking(move || {
        cloister_client::export::verify(std::path::Path::new(&dir), Some(km))
    })
    .await
    .map_err(|_| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Not verified",
            "the check stopped",
        )
    })?;
    Ok(console_page(
        &app,
        &c,
        "Export verified",
        html! {
            h1 { "Export of " (case) }
            @match r {
                Ok(v) => p.ok role="status" {
                    "Verified: " (v.messages) " messages (" (v.files) " files in the package), each proven in the vault's log (checkpoint of "
                    (v.checkpoint_size) " entries) and attributed to its sender's device; signed by KM key " code { (v.km_sign_pk) } "."
                },
                Err(e) => p.error role="alert" { "The export does not verify: " (e) },
            }
            p { a href="/compliance/cases" { "Back to cases" } }
        },
    )
    .await)
}

/// `GET /compliance/retention`.
pub(crate) async fn retention(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    if app.client().is_none() {
        return Ok(locked());
    }
    let c = console(&app, &[Role::Compliance])?;
    Ok(console_page(
        &app,
        &c,
        "Retention",
        html! {
            h1 { "Retention" }
            form.inline method="post" action="/compliance/retention" {
                fieldset {
                    legend { "Keep messages for" }
                    label for="r-kind" { "Conversations" }
                    select #r-kind name="kind" { option value="im" { "direct messages" } option value="group" { "rooms" } }
                    label for="r-days" { "Days" }
                    input #r-days name="days" type="number" min="1" max="36500" required;
                    button type="submit" { "Set" }
                }
            }
            form.inline method="post" action="/compliance/retention/run" {
                p { "A run destroys the keys of expired epochs and deletes expired captures from every vault, except what a hold covers." }
                button type="submit" { "Run retention now" }
            }
        },
    )
    .await)
}

#[derive(serde::Deserialize)]
pub(crate) struct RetentionForm {
    kind: String,
    days: u32,
}

/// `POST /compliance/retention`.
pub(crate) async fn retention_set(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<RetentionForm>,
) -> Result<Response, Failure> {
    let c = console(&app, &[Role::Compliance])?;
    c.retention_set(&f.kind, f.days)
        .await
        .map_err(|e| Failure::of("Retention not set", &e))?;
    Ok(Redirect::to("/compliance/retention").into_response())
}

/// `POST /compliance/retention/run`.
pub(crate) async fn retention_run(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    let c = console(&app, &[Role::Compliance])?;
    let (r, p) = c
        .retention_run()
        .await
        .map_err(|e| Failure::of("Retention not run", &e))?;
    Ok(console_page(
        &app,
        &c,
        "Retention run",
        html! {
            h1 { "Retention run" }
            p.ok role="status" {
                (r.shredded.len()) " epoch keys destroyed, " (r.held.len()) " kept for holds; "
                (p.deleted) " captures deleted, " (p.kept_for_hold) " kept for holds."
            }
            p { a href="/compliance/retention" { "Back" } }
        },
    )
    .await)
}
