//! A room's people and keys: members (add, remove; a refusal from a
//! barrier, an entitlement or a room policy said in words) and who has
//! ever been given the room's keys, each release proven in the audit log.

use crate::App;
use crate::messaging::parse_room;
use crate::pages::{Failure, locked, page, room_name, sidebar};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use cloister_proto::UserId;
use maud::html;
use std::sync::Arc;

/// `GET /r/ROOM/people`: members and key releases.
pub(crate) async fn people(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
) -> Result<Response, Failure> {
    let Some(c) = app.client() else {
        return Ok(locked());
    };
    let room = parse_room(&room)?;
    let summary = crate::messaging::summary_of(&c, &room).await?;
    let members: Vec<String> = summary.members.iter().map(|m| m.to_string()).collect();
    app.learn_names(&c, &members).await;
    let me = c.user().to_string();
    let owner = summary.owners.iter().any(|o| o.as_str() == me);
    let releases = c.who_has_keys(&room).await;
    let name = room_name(&app, &me, &summary);
    let hex = room.to_hex();
    let side = sidebar(&app, &c, Some(&hex)).await;
    Ok(page(
        &format!("{name}: people and keys"),
        Some(side),
        html! {
            p { a href={ "/r/" (hex) } { "Back to " (name) } }
            h1 { "People and keys of " (name) }
            h2 { "Members" }
            table.grid {
                caption { (members.len()) " members; owners may add and remove" }
                thead { tr { th scope="col" { "Name" } th scope="col" { "User" } th scope="col" { "Role" } th scope="col" { span.sr { "Actions" } } } }
                tbody {
                    @for m in &summary.members {
                        tr {
                            td { (app.name_of(m.as_str())) }
                            td { code { (m) } }
                            td { @if summary.owners.contains(m) { "owner" } @else { "member" } }
                            td {
                                @if (owner || m.as_str() == me) && summary.kind != cloister_proto::room::RoomKind::Im {
                                    form.inline-row method="post" action={ "/r/" (hex) "/people/remove" } {
                                        input type="hidden" name="user" value=(m);
                                        @if m.as_str() == me {
                                            button type="submit" aria-label="Leave this room" { "Leave" }
                                        } @else {
                                            button type="submit" aria-label={ "Remove " (m) } { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if summary.kind != cloister_proto::room::RoomKind::Im {
                form.inline method="post" action={ "/r/" (hex) "/people/add" } {
                    label for="add-user" { "Add a member" }
                    input #add-user name="user" type="text" placeholder="name@firm" required autocomplete="off";
                    button type="submit" { "Add" }
                }
            }
            h2 { "Who has been given this room's keys" }
            @match &releases {
                Ok(rs) => {
                    p { "Every release below was checked on this device: its entry is in the firm's audit log, proven against a checkpoint this device verified." }
                    table.grid {
                        thead { tr { th scope="col" { "User" } th scope="col" { "Device" } th scope="col" { "Epochs" } th scope="col" { "Proof" } } }
                        tbody {
                            @for r in rs {
                                tr {
                                    td { (r.user) @if r.surveillance { " (surveillance)" } @if r.inspection { " (malware scanner)" } @if r.gateway { " (gateway: leaves end-to-end encryption)" } }
                                    td { code { (r.device) } }
                                    td { (r.epochs.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")) }
                                    td.ok { "✓ in the audit log, entry " (r.index) }
                                }
                            }
                        }
                    }
                }
                Err(e) => p.error role="alert" { "The key releases could not be proven: " (e) },
            }
        },
    )
    .into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct UserForm {
    user: String,
}

fn user_of(s: &str, what: &'static str) -> Result<UserId, Failure> {
    s.trim().parse().map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            what,
            format!("{:?} is not a user id (name@firm)", s.trim()),
        )
    })
}

/// `POST /r/ROOM/people/add`.
pub(crate) async fn add(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    axum::Form(f): axum::Form<UserForm>,
) -> Result<Response, Failure> {
    let Some(c) = app.client() else {
        return Ok(locked());
    };
    let room = parse_room(&room)?;
    let user = user_of(&f.user, "Not added")?;
    c.add_member(&room, &user)
        .await
        .map_err(|e| Failure::of("Not added", &e))?;
    Ok(Redirect::to(&format!("/r/{}/people", room.to_hex())).into_response())
}

/// `POST /r/ROOM/people/remove` (yourself: leave).
pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    axum::Form(f): axum::Form<UserForm>,
) -> Result<Response, Failure> {
    let Some(c) = app.client() else {
        return Ok(locked());
    };
    let room = parse_room(&room)?;
    let user = user_of(&f.user, "Not removed")?;
    if user == *c.user() {
        c.leave(&room)
            .await
            .map_err(|e| Failure::of("Not left", &e))?;
        return Ok(Redirect::to("/").into_response());
    }
    c.remove_member(&room, &user)
        .await
        .map_err(|e| Failure::of("Not removed", &e))?;
    Ok(Redirect::to(&format!("/r/{}/people", room.to_hex())).into_response())
}
