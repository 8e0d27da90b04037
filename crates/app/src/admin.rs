//! The admin console (admin devices): users and devices, roles and
//! entitlements, groups and barriers, SCIM tokens, trusted firms.

use crate::App;
use crate::pages::{Failure, locked, page, roles_of, sidebar};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use cloister_client::Client;
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

pub(crate) async fn admin_page(app: &App, c: &Client, title: &str, main: Markup) -> Response {
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

pub(crate) fn user_of(s: &str, what: &'static str) -> Result<UserId, Failure> {
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

#[derive(serde::Deserialize)]
pub(crate) struct IdForm {
    pub id: String,
    #[serde(default)]
    pub reason: String,
}
