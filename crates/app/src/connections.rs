//! Connections with people of other firms (trusted by both firms' admins):
//! ask, accept or decline, end. A connection lets the two share rooms.

use crate::App;
use crate::pages::{Failure, locked, page, sidebar};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use cloister_client::ConnectionView;
use cloister_proto::UserId;
use maud::html;
use std::sync::Arc;

/// `GET /connections`.
pub(crate) async fn list(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    let Some(c) = app.client() else {
        return Ok(locked());
    };
    let all = c
        .connections()
        .await
        .map_err(|e| Failure::of("Connections not loaded", &e))?;
    let views: Vec<ConnectionView> = all
        .iter()
        .filter_map(|x| ConnectionView::of(x).ok())
        .collect();
    let me = c.user().clone();
    let side = sidebar(&app, &c, None).await;
    Ok(page(
        "Connections",
        Some(side),
        html! {
            h1 { "Connections with other firms" }
            p { "You can share rooms with a person of another firm once both firms trust each other and that person accepts your connection." }
            form.inline method="post" action="/connections" {
                label for="conn-to" { "Ask to connect with" }
                input #conn-to name="user" type="text" placeholder="name@otherfirm" required autocomplete="off";
                button type="submit" { "Ask" }
            }
            table.grid #connections {
                thead { tr { th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "State" } th scope="col" { span.sr { "Actions" } } } }
                tbody {
                    @for v in &views {
                        tr {
                            td { (v.from) }
                            td { (v.to) }
                            td { (v.state) }
                            td {
                                @if v.state == "pending" && v.to == me {
                                    form.inline-row method="post" action="/connections/answer" {
                                        input type="hidden" name="id" value=(v.id);
                                        input type="hidden" name="accept" value="yes";
                                        button type="submit" aria-label={ "Accept connection from " (v.from) } { "Accept" }
                                    }
                                    form.inline-row method="post" action="/connections/answer" {
                                        input type="hidden" name="id" value=(v.id);
                                        input type="hidden" name="accept" value="no";
                                        button type="submit" aria-label={ "Decline connection from " (v.from) } { "Decline" }
                                    }
                                }
                                @if v.state == "accepted" {
                                    form.inline-row method="post" action="/connections/remove" {
                                        input type="hidden" name="id" value=(v.id);
                                        button type="submit" aria-label={ "End connection between " (v.from) " and " (v.to) } { "End" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct AskForm {
    user: String,
}

/// `POST /connections`: ask.
pub(crate) async fn ask(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<AskForm>,
) -> Result<Response, Failure> {
    let c = app
        .client()
        .ok_or_else(|| Failure::new(StatusCode::UNAUTHORIZED, "Locked", "unlock the app first"))?;
    let to: UserId = f.user.trim().parse().map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "Not asked",
            format!("{:?} is not a user id (name@firm)", f.user.trim()),
        )
    })?;
    c.connect_request(&to)
        .await
        .map_err(|e| Failure::of("Not asked", &e))?;
    Ok(Redirect::to("/connections").into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct AnswerForm {
    id: String,
    #[serde(default)]
    accept: String,
}

/// `POST /connections/answer`.
pub(crate) async fn answer(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<AnswerForm>,
) -> Result<Response, Failure> {
    let c = app
        .client()
        .ok_or_else(|| Failure::new(StatusCode::UNAUTHORIZED, "Locked", "unlock the app first"))?;
    c.connect_answer(f.id.trim(), f.accept == "yes")
        .await
        .map_err(|e| Failure::of("Not answered", &e))?;
    Ok(Redirect::to("/connections").into_response())
}

/// `POST /connections/remove`.
pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<AnswerForm>,
) -> Result<Response, Failure> {
    let c = app
        .client()
        .ok_or_else(|| Failure::new(StatusCode::UNAUTHORIZED, "Locked", "unlock the app first"))?;
    c.connect_remove(f.id.trim())
        .await
        .map_err(|e| Failure::of("Not ended", &e))?;
    Ok(Redirect::to("/connections").into_response())
}
