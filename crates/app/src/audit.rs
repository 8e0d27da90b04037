//! The audit log in the admin console: a table with filters, each row's
//! inclusion proof checked here against a checkpoint this device verified
//! (and proved consistent with the last one it saw); an alert when the log
//! does not agree with what this device saw.

use crate::App;
use crate::admin::admin;
use crate::pages::{Failure, locked, page, sidebar, when};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use cloister_proto::km::{InclusionProof, KmOp};
use maud::html;
use std::sync::Arc;

#[derive(serde::Deserialize, Default)]
pub(crate) struct Filter {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    room: String,
    #[serde(default)]
    from: Option<u64>,
}

/// Rows per page.
const ROWS: u32 = 50;

/// `GET /admin/audit?kind=&room=&from=`.
pub(crate) async fn audit(
    State(app): State<Arc<App>>,
    Query(f): Query<Filter>,
) -> Result<Response, Failure> {
    if app.client().is_none() {
        return Ok(locked());
    }
    let c = admin(&app)?;
    let room = if f.room.trim().is_empty() {
        None
    } else {
        Some(f.room.trim().parse().map_err(|_| {
            Failure::new(
                axum::http::StatusCode::BAD_REQUEST,
                "Audit log not loaded",
                "the room filter is not a room id",
            )
        })?)
    };
    let kind = (!f.kind.trim().is_empty()).then(|| f.kind.trim().to_owned());
    // the checkpoint first: verified, and consistent with what this
    // device saw before (a fork or a rollback is the alert)
    let checkpoint = c.audit_checkpoint().await;
    let rows = c
        .audit_list(f.from.unwrap_or(0), ROWS, kind.clone(), room, None)
        .await
        .map_err(|e| Failure::of("Audit log not loaded", &e))?;
    let mut proven = Vec::with_capacity(rows.len());
    for (index, _, _) in &rows {
        let ok = match &checkpoint {
            Ok((cp, _)) if *index < cp.size => {
                let p: Result<InclusionProof, _> = c
                    .km_request(KmOp::AuditProve {
                        index: *index,
                        size: Some(cp.size),
                    })
                    .await;
                match p {
                    Ok(p) => cloister_client::check_inclusion(&p, cp)
                        .map(|_| cp.size)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(_) => Err("after the newest checkpoint".into()),
            Err(_) => Err("no verified checkpoint".into()),
        };
        proven.push(ok);
    }
    let alerts = c.alerts();
    let next = rows.last().map(|(i, _, _)| i + 1);
    let side = sidebar(&app, &c, None).await;
    Ok(page(
        "Audit log",
        Some(side),
        html! {
            nav.tabs aria-label="Admin console" {
                a href="/admin" { "Users and devices" }
                a href="/admin/controls" { "Groups, barriers, entitlements" }
                a href="/admin/firms" { "SCIM and trusted firms" }
                a href="/admin/audit" aria-current="page" { "Audit log" }
            }
            h1 { "Audit log" }
            @match &checkpoint {
                Ok((cp, _)) => p.ok role="status" {
                    "Checkpoint of " (cp.size) " entries: signature verified, consistent with every checkpoint this device saw before."
                },
                Err(e) => p.error.alert role="alert" {
                    "ALERT: the audit log does not agree with what this device saw: " (e)
                },
            }
            @for a in &alerts { p.error.alert role="alert" { "ALERT: " (a) } }
            form.filters method="get" action="/admin/audit" {
                label for="f-kind" { "Kind" }
                select #f-kind name="kind" {
                    option value="" { "any" }
                    @for k in cloister_log::AuditEvent::KINDS {
                        option value=(k) selected[kind.as_deref() == Some(k)] { (k) }
                    }
                }
                label for="f-room" { "Room id" }
                input #f-room name="room" type="text" value=(f.room) autocomplete="off";
                label for="f-from" { "From entry" }
                input #f-from name="from" type="number" min="0" value=(f.from.unwrap_or(0));
                button type="submit" { "Filter" }
            }
            table.grid {
                caption { (rows.len()) " entries" }
                thead { tr {
                    th scope="col" { "Entry" } th scope="col" { "Time" } th scope="col" { "Who" }
                    th scope="col" { "Kind" } th scope="col" { "Details" } th scope="col" { "Proof" }
                } }
                tbody {
                    @for ((index, rec, bytes), proof) in rows.iter().zip(&proven) {
                        tr {
                            td { (index) }
                            td { time datetime=(rec.ts) { (when(rec.ts)) } }
                            td { (rec.actor.as_ref().map(|a| a.to_string()).unwrap_or_default()) }
                            td { (rec.event.kind()) }
                            td.details { code { (String::from_utf8_lossy(bytes)) } }
                            @match proof {
                                Ok(size) => td.ok { "✓ in the log of " (size) " entries" },
                                Err(e) => td.error { "✗ not proven: " (e) },
                            }
                        }
                    }
                }
            }
            @if let Some(n) = next {
                @if rows.len() as u32 == ROWS {
                    p { a href={ "/admin/audit?kind=" (f.kind) "&room=" (f.room) "&from=" (n) } { "Next entries" } }
                }
            }
        },
    )
    .into_response())
}
