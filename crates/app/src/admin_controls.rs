//! The admin console's controls: groups and their entitlements,
//! information barriers, data-loss policies.

use crate::App;
use crate::admin::{IdForm, admin, admin_page, user_of};
use crate::pages::{Failure, locked};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use cloister_proto::UserId;
use cloister_proto::controls::Entitlement;
use maud::html;
use std::sync::Arc;

/// `GET /admin/controls`: groups with their entitlements, barriers.
pub(crate) async fn controls(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    if app.client().is_none() {
        return Ok(locked());
    }
    let c = admin(&app)?;
    let groups = c
        .group_list()
        .await
        .map_err(|e| Failure::of("Groups not loaded", &e))?;
    let barriers = c
        .barrier_list()
        .await
        .map_err(|e| Failure::of("Barriers not loaded", &e))?;
    let dlp = c
        .dlp_policies()
        .await
        .map_err(|e| Failure::of("Policies not loaded", &e))?;
    Ok(admin_page(
        &app,
        &c,
        "Groups, barriers, entitlements",
        html! {
            h1 { "Groups, barriers and entitlements" }
            h2 { "Groups" }
            table.grid {
                thead { tr { th scope="col" { "Group" } th scope="col" { "Members" } th scope="col" { "Entitlements" } } }
                tbody {
                    @for g in &groups {
                        tr {
                            td { (g.name) }
                            td { (g.members.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")) }
                            td { (g.entitlements.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")) }
                        }
                    }
                }
            }
            form.inline method="post" action="/admin/groups" {
                fieldset {
                    legend { "Add people to a group (a new name makes the group)" }
                    label for="group-name" { "Group" }
                    input #group-name name="group" type="text" required autocomplete="off";
                    label for="group-add" { "Add (comma-separated user ids)" }
                    input #group-add name="add" type="text" autocomplete="off";
                    label for="group-remove" { "Remove (comma-separated user ids)" }
                    input #group-remove name="remove" type="text" autocomplete="off";
                    button type="submit" { "Save group" }
                }
            }
            form.inline method="post" action="/admin/entitle" {
                fieldset {
                    legend { "Entitlements of a user or a group" }
                    label for="ent-who" { "User id or group name" }
                    input #ent-who name="who" type="text" required autocomplete="off";
                    label for="ent-what" { "Entitlement" }
                    select #ent-what name="what" {
                        @for e in Entitlement::ALL { option value=(e.as_str()) { (e.as_str()) } }
                    }
                    label for="ent-how" { "Grant or revoke" }
                    select #ent-how name="how" { option value="grant" { "grant" } option value="revoke" { "revoke" } }
                    button type="submit" { "Apply" }
                }
            }
            h2 { "Information barriers" }
            table.grid {
                thead { tr { th scope="col" { "Barrier" } th scope="col" { "Between" } th scope="col" { "Reason" } th scope="col" { "State" } } }
                tbody {
                    @for b in &barriers {
                        tr {
                            td { code { (b.barrier.id) } }
                            td { (b.barrier.a) " / " (b.barrier.b) }
                            td { (b.barrier.reason) }
                            td {
                                @if b.barrier.active {
                                    form.inline-row method="post" action="/admin/barriers/disable" {
                                        input type="hidden" name="id" value=(b.barrier.id);
                                        button type="submit" aria-label={ "Disable barrier " (b.barrier.id) } { "Disable" }
                                    }
                                } @else { "disabled: " (b.disabled_reason) }
                            }
                        }
                    }
                }
            }
            h2 { "Data-loss policies" }
            table.grid #dlp {
                thead { tr { th scope="col" { "Policy" } th scope="col" { "Action" } th scope="col" { "Keywords" } th scope="col" { "Patterns" } th scope="col" { "Active" } } }
                tbody {
                    @for p in &dlp {
                        tr {
                            td { (p.name) br; code { (p.id) } }
                            td { (format!("{:?}", p.action).to_lowercase()) }
                            td { (p.keywords.join(", ")) }
                            td { code { (p.patterns.join("  ")) } }
                            td { @if p.active { "yes" } @else { "no" } }
                        }
                    }
                }
            }
            form.inline method="post" action="/admin/dlp" {
                fieldset {
                    legend { "Add or replace a data-loss policy (checked on each device before sending)" }
                    label for="dlp-id" { "Id" } input #dlp-id name="id" type="text" required autocomplete="off";
                    label for="dlp-name" { "Name" } input #dlp-name name="name" type="text" required autocomplete="off";
                    label for="dlp-action" { "Action" }
                    select #dlp-action name="action" { option value="flag" { "flag (archive marks it)" } option value="block" { "block (not sent)" } }
                    label for="dlp-words" { "Keywords (comma-separated)" } input #dlp-words name="keywords" type="text" autocomplete="off";
                    label for="dlp-message" { "Message to the sender when blocked" } input #dlp-message name="message" type="text" autocomplete="off";
                    label.check { input type="checkbox" name="active" value="on" checked; " Active" }
                    button type="submit" { "Save policy" }
                }
            }
            form.inline method="post" action="/admin/barriers" {
                fieldset {
                    legend { "Add a barrier between two groups" }
                    label for="bar-a" { "Group" } input #bar-a name="a" type="text" required autocomplete="off";
                    label for="bar-b" { "Other group" } input #bar-b name="b" type="text" required autocomplete="off";
                    label for="bar-why" { "Reason (shown in refusals)" } input #bar-why name="reason" type="text" required autocomplete="off";
                    button type="submit" { "Add barrier" }
                }
            }
        },
    )
    .await)
}

fn users_in(s: &str, what: &'static str) -> Result<Vec<UserId>, Failure> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| user_of(u, what))
        .collect()
}

#[derive(serde::Deserialize)]
pub(crate) struct GroupForm {
    group: String,
    #[serde(default)]
    add: String,
    #[serde(default)]
    remove: String,
}

/// `POST /admin/groups`.
pub(crate) async fn group_set(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<GroupForm>,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    let (add, remove) = (
        users_in(&f.add, "Group not saved")?,
        users_in(&f.remove, "Group not saved")?,
    );
    c.admin_group_set(f.group.trim(), &add, &remove)
        .await
        .map_err(|e| Failure::of("Group not saved", &e))?;
    Ok(Redirect::to("/admin/controls").into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct EntitleForm {
    who: String,
    what: String,
    how: String,
}

/// `POST /admin/entitle`.
pub(crate) async fn entitle(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<EntitleForm>,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    let e = Entitlement::ALL
        .into_iter()
        .find(|e| e.as_str() == f.what)
        .ok_or_else(|| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "Not applied",
                format!("{:?} is not an entitlement", f.what),
            )
        })?;
    let (grant, revoke) = if f.how == "revoke" {
        (vec![], vec![e])
    } else {
        (vec![e], vec![])
    };
    let who = f.who.trim();
    let r = if who.contains('@') {
        let u = user_of(who, "Not applied")?;
        c.admin_entitle(Some(&u), None, &grant, &revoke).await
    } else {
        c.admin_entitle(None, Some(who), &grant, &revoke).await
    };
    r.map_err(|e| Failure::of("Not applied", &e))?;
    Ok(Redirect::to("/admin/controls").into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct BarrierForm {
    a: String,
    b: String,
    reason: String,
}

/// `POST /admin/barriers`.
pub(crate) async fn barrier_add(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<BarrierForm>,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    c.barrier_add(f.a.trim(), f.b.trim(), f.reason.trim())
        .await
        .map_err(|e| Failure::of("Barrier not added", &e))?;
    Ok(Redirect::to("/admin/controls").into_response())
}

/// `POST /admin/barriers/disable`.
pub(crate) async fn barrier_disable(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<IdForm>,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    let reason = if f.reason.trim().is_empty() {
        "disabled in the admin console"
    } else {
        f.reason.trim()
    };
    c.barrier_disable(f.id.trim(), reason)
        .await
        .map_err(|e| Failure::of("Barrier not disabled", &e))?;
    Ok(Redirect::to("/admin/controls").into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct DlpForm {
    id: String,
    name: String,
    action: String,
    #[serde(default)]
    keywords: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    active: Option<String>,
}

/// `POST /admin/dlp`.
pub(crate) async fn dlp_put(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<DlpForm>,
) -> Result<Response, Failure> {
    use cloister_proto::controls::{DlpAction, DlpPolicy};
    let c = admin(&app)?;
    let action = match f.action.as_str() {
        "block" => DlpAction::Block,
        "flag" => DlpAction::Flag,
        other => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "Policy not saved",
                format!("{other:?} is not an action (flag or block)"),
            ));
        }
    };
    let policy = DlpPolicy {
        id: f.id.trim().to_owned(),
        name: f.name.trim().to_owned(),
        action,
        keywords: f
            .keywords
            .split(',')
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect(),
        patterns: vec![],
        file_types: vec![],
        max_file_bytes: None,
        message: f.message.trim().to_owned(),
        active: f.active.is_some(),
    };
    c.dlp_put(policy)
        .await
        .map_err(|e| Failure::of("Policy not saved", &e))?;
    Ok(Redirect::to("/admin/controls").into_response())
}
