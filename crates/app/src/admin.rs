//! The admin console (admin devices): users and devices, roles and
//! entitlements, groups and barriers, SCIM tokens, trusted firms.

use crate::App;
use crate::pages::{Failure, locked, page, roles_of, sidebar};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use cloister_client::Client;
use cloister_proto::controls::Entitlement;
use cloister_proto::km::Role;
use cloister_proto::{DeviceId, UserId};
use maud::{Markup, html};
use std::sync::Arc;

/// The opened client, if this device holds the admin role.
pub(crate) fn admin(app: &App) -> Result<Arc<Client>, Failure> {
    let c = app
        .client()
        .ok_or_else(|| Failure::new(StatusCode::UNAUTHORIZED, "Locked", "unlock the app first"))?;
    if !roles_of(&c).contains(&Role::Admin) {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "Not an admin device",
            "the admin console needs a device enrolled with the admin role",
        ));
    }
    Ok(c)
}

async fn admin_page(app: &App, c: &Client, title: &str, main: Markup) -> Response {
    let side = sidebar(app, c, None).await;
    page(
        title,
        Some(side),
        html! {
            nav.tabs aria-label="Admin console" {
                a href="/admin" { "Users and devices" }
                a href="/admin/controls" { "Groups, barriers, entitlements" }
                a href="/admin/firms" { "SCIM and trusted firms" }
                a href="/admin/audit" { "Audit log" }
            }
            (main)
        },
    )
    .into_response()
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

/// `GET /admin`: users, their roles and devices.
pub(crate) async fn users(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    if app.client().is_none() {
        return Ok(locked());
    }
    let c = admin(&app)?;
    let users = c
        .admin_list_users()
        .await
        .map_err(|e| Failure::of("Users not loaded", &e))?;
    Ok(admin_page(
        &app,
        &c,
        "Users and devices",
        html! {
            h1 { "Users and devices" }
            form.inline method="post" action="/admin/users" {
                fieldset {
                    legend { "Add a user (or a new device for one)" }
                    label for="new-user" { "User" }
                    input #new-user name="user" type="text" placeholder="name@firm" required autocomplete="off";
                    @for r in [Role::Admin, Role::Compliance, Role::Custodian] {
                        label.check {
                            input type="checkbox" name="role" value=(r.as_str());
                            " " (r.as_str())
                        }
                    }
                    button type="submit" { "Add and show the one-time code" }
                }
            }
            table.grid {
                caption { (users.len()) " users" }
                thead { tr {
                    th scope="col" { "User" } th scope="col" { "Status" } th scope="col" { "Roles" }
                    th scope="col" { "Devices" } th scope="col" { span.sr { "Actions" } }
                } }
                tbody {
                    @for u in &users {
                        tr {
                            td { code { (u.user) } }
                            td { (u.status) }
                            td { (u.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
                            td {
                                ul.plain {
                                    @for d in &u.devices {
                                        li {
                                            code { (d.device) } " " (d.status)
                                            @if d.status == "active" {
                                                form.inline-row method="post" action="/admin/devices/revoke" {
                                                    input type="hidden" name="device" value=(d.device);
                                                    button type="submit" aria-label={ "Revoke device " (d.device) " of " (u.user) } { "Revoke" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                            td {
                                @if u.status == "active" && u.user != *c.user() {
                                    form.inline-row method="post" action="/admin/users/disable" {
                                        input type="hidden" name="user" value=(u.user);
                                        button type="submit" aria-label={ "Disable " (u.user) } { "Disable" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
    .await)
}

/// `POST /admin/users`: the form's fields, with the roles repeated.
pub(crate) async fn add_user(
    State(app): State<Arc<App>>,
    body: String,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    let mut user = String::new();
    let mut roles = Vec::new();
    for (k, v) in form_pairs(&body) {
        match k.as_str() {
            "user" => user = v,
            "role" => roles.push(
                serde_json::from_value::<Role>(serde_json::Value::String(v.clone())).map_err(
                    |_| {
                        Failure::new(
                            StatusCode::BAD_REQUEST,
                            "User not added",
                            format!("{v:?} is not a role"),
                        )
                    },
                )?,
            ),
            _ => {}
        }
    }
    let user = user_of(&user, "User not added")?;
    let r = c
        .admin_add_user_roles(&user, &roles)
        .await
        .map_err(|e| Failure::of("User not added", &e))?;
    Ok(admin_page(
        &app,
        &c,
        "One-time code",
        html! {
            h1 { "Enrolment code for " (r.user) }
            p { "Give this code to " (r.user) " by a channel you trust. It is shown once: the KM keeps only its hash, and this page is not stored." }
            p.code-once { output aria-label="One-time enrolment code" { (r.code) } }
            p { "It expires at " (r.expires_at) " (seconds since 1970, UTC)." }
            p { a href="/admin" { "Back to users" } }
        },
    )
    .await)
}

/// `application/x-www-form-urlencoded` pairs, in order (repeated names kept).
pub(crate) fn form_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

#[derive(serde::Deserialize)]
pub(crate) struct UserForm {
    user: String,
}

/// `POST /admin/users/disable`.
pub(crate) async fn disable_user(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<UserForm>,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    let user = user_of(&f.user, "User not disabled")?;
    c.admin_disable_user(&user)
        .await
        .map_err(|e| Failure::of("User not disabled", &e))?;
    Ok(Redirect::to("/admin").into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct DeviceForm {
    device: String,
}

/// `POST /admin/devices/revoke`.
pub(crate) async fn revoke_device(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<DeviceForm>,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    let device: DeviceId = f.device.trim().parse().map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "Device not revoked",
            "that is not a device id",
        )
    })?;
    c.admin_revoke_device(&device)
        .await
        .map_err(|e| Failure::of("Device not revoked", &e))?;
    Ok(Redirect::to("/admin").into_response())
}

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

#[derive(serde::Deserialize)]
pub(crate) struct IdForm {
    id: String,
    #[serde(default)]
    reason: String,
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

/// `GET /admin/firms`: SCIM tokens and trusted firms.
pub(crate) async fn firms(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    if app.client().is_none() {
        return Ok(locked());
    }
    let c = admin(&app)?;
    let firms = c
        .trust_list()
        .await
        .map_err(|e| Failure::of("Trusted firms not loaded", &e))?;
    Ok(admin_page(
        &app,
        &c,
        "SCIM and trusted firms",
        html! {
            h1 { "SCIM tokens and trusted firms" }
            h2 { "SCIM" }
            p { "The firm's identity provider provisions users with a SCIM token. A new token is shown once." }
            form.inline method="post" action="/admin/scim" {
                label for="scim-label" { "Label for a new token" }
                input #scim-label name="label" type="text" required autocomplete="off";
                button type="submit" { "Issue token" }
            }
            form.inline method="post" action="/admin/scim/revoke" {
                label for="scim-id" { "Token id to revoke" }
                input #scim-id name="id" type="text" required autocomplete="off";
                button type="submit" { "Revoke token" }
            }
            h2 { "Trusted firms" }
            table.grid {
                thead { tr { th scope="col" { "Firm" } th scope="col" { "Key fingerprint" } th scope="col" { "Added" } th scope="col" { "KM" } } }
                tbody {
                    @for f in &firms {
                        tr {
                            td { (f.tenant) }
                            td { code { (f.fingerprint) } }
                            td { "by " (f.added_by) }
                            td { (f.km_url.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        },
    )
    .await)
}

#[derive(serde::Deserialize)]
pub(crate) struct LabelForm {
    label: String,
}

/// `POST /admin/scim`: a new token, shown once.
pub(crate) async fn scim_issue(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<LabelForm>,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    let t = c
        .admin_scim_token(f.label.trim())
        .await
        .map_err(|e| Failure::of("Token not issued", &e))?;
    Ok(admin_page(
        &app,
        &c,
        "SCIM token",
        html! {
            h1 { "SCIM token " (t.id) }
            p { "Configure it in the identity provider now: it is shown once, and the KM keeps only its hash." }
            p.code-once { output aria-label="SCIM token" { (t.token) } }
            p { a href="/admin/firms" { "Back" } }
        },
    )
    .await)
}

/// `POST /admin/scim/revoke`.
pub(crate) async fn scim_revoke(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<IdForm>,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    c.admin_scim_token_revoke(f.id.trim())
        .await
        .map_err(|e| Failure::of("Token not revoked", &e))?;
    Ok(Redirect::to("/admin/firms").into_response())
}
