//! The admin console's links outward: SCIM tokens for the identity
//! provider, and the firms this firm trusts.

use crate::App;
use crate::admin::{IdForm, admin, admin_page};
use crate::pages::{Failure, locked};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use std::sync::Arc;

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
    let own = c
        .trust_self()
        .await
        .map(|i| {
            format!(
                "firm {}, KM key {}, fingerprint {}",
                i.tenant, i.km_key, i.fingerprint
            )
        })
        .unwrap_or_else(|e| format!("(not available: {e})"));
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
            p { "This firm's identity, to give a partner's admin: " code #own-identity { (own) } }
            form.inline method="post" action="/admin/firms/trust" {
                fieldset {
                    legend { "Trust a firm (its admin gives you its identity)" }
                    label for="t-tenant" { "Firm" } input #t-tenant name="tenant" type="text" required autocomplete="off";
                    label for="t-key" { "Its KM key" } input #t-key name="km_key" type="text" required autocomplete="off";
                    label for="t-fp" { "Fingerprint (read aloud by its admin)" } input #t-fp name="fingerprint" type="text" autocomplete="off";
                    label for="t-url" { "Its KM's address (for rooms homed there)" } input #t-url name="km_url" type="url" autocomplete="off";
                    button type="submit" { "Trust" }
                }
            }
            table.grid {
                thead { tr { th scope="col" { "Firm" } th scope="col" { "Key fingerprint" } th scope="col" { "Added" } th scope="col" { "KM" } th scope="col" { span.sr { "Actions" } } } }
                tbody {
                    @for f in &firms {
                        tr {
                            td { (f.tenant) }
                            td { code { (f.fingerprint) } }
                            td { "by " (f.added_by) }
                            td { (f.km_url.clone().unwrap_or_default()) }
                            td {
                                form.inline-row method="post" action="/admin/firms/remove" {
                                    input type="hidden" name="tenant" value=(f.tenant);
                                    button type="submit" aria-label={ "Stop trusting " (f.tenant) } { "Stop trusting" }
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

#[derive(serde::Deserialize)]
pub(crate) struct TrustForm {
    tenant: String,
    km_key: String,
    #[serde(default)]
    fingerprint: String,
    #[serde(default)]
    km_url: String,
}

/// `POST /admin/firms/trust`.
pub(crate) async fn trust_add(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<TrustForm>,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    let tenant = f.tenant.trim().parse().map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "Not trusted",
            format!("{:?} is not a firm id", f.tenant.trim()),
        )
    })?;
    let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    c.trust_add_at(
        &tenant,
        f.km_key.trim(),
        opt(&f.fingerprint).as_deref(),
        opt(&f.km_url).as_deref(),
    )
    .await
    .map_err(|e| Failure::of("Not trusted", &e))?;
    Ok(Redirect::to("/admin/firms").into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct TenantForm {
    tenant: String,
}

/// `POST /admin/firms/remove`.
pub(crate) async fn trust_remove(
    State(app): State<Arc<App>>,
    axum::Form(f): axum::Form<TenantForm>,
) -> Result<Response, Failure> {
    let c = admin(&app)?;
    let tenant = f.tenant.trim().parse().map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "Not removed",
            "that is not a firm id",
        )
    })?;
    c.trust_remove(&tenant, "removed in the admin console")
        .await
        .map_err(|e| Failure::of("Not removed", &e))?;
    Ok(Redirect::to("/admin/firms").into_response())
}
