//! Directory search: colleagues by name, title, desk; a conversation with
//! any of them is one click away.

use crate::App;
use crate::pages::{Failure, locked, page, sidebar};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use std::sync::Arc;

#[derive(serde::Deserialize, Default)]
pub(crate) struct Q {
    #[serde(default)]
    q: String,
}

/// `GET /directory?q=`.
pub(crate) async fn directory(
    State(app): State<Arc<App>>,
    Query(q): Query<Q>,
) -> Result<Response, Failure> {
    let Some(c) = app.client() else {
        return Ok(locked());
    };
    let found = if q.q.trim().is_empty() {
        Vec::new()
    } else {
        c.directory_search(q.q.trim(), 50)
            .await
            .map_err(|e| Failure::of("Directory not searched", &e))?
    };
    let side = sidebar(&app, &c, None).await;
    Ok(page(
        "Directory",
        Some(side),
        html! {
            h1 { "Directory" }
            form.filters method="get" action="/directory" {
                label for="dq" { "Name, title, desk or user id" }
                input #dq name="q" type="search" value=(q.q) autocomplete="off";
                button type="submit" { "Search" }
            }
            @if !q.q.trim().is_empty() {
                table.grid #people {
                    caption { (found.len()) " people" }
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Title" } th scope="col" { "Desk" }
                        th scope="col" { "Location" } th scope="col" { span.sr { "Actions" } }
                    } }
                    tbody {
                        @for e in &found {
                            tr {
                                td { (e.display_name) br; code { (e.user) } }
                                td { (e.title) }
                                td { (e.desk) }
                                td { (e.location) }
                                td {
                                    @if e.user != *c.user() {
                                        form.inline-row method="post" action="/im" {
                                            input type="hidden" name="user" value=(e.user);
                                            button type="submit" aria-label={ "Message " (e.display_name) } { "Message" }
                                        }
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
