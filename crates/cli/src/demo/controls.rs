//! The demo's communication controls: the identity provider provisions a
//! research analyst and her group over SCIM, compliance puts up a Chinese
//! wall, an announcement room is read-only, DLP stops a deal name, and the
//! firm's malware scanner stops an infected file.

use super::{Demo, enrol_as};
use crate::inspect::{EICAR, Inspector, LocalClamd};
use crate::{BoxError, Stack};
use cloister_client::Client;
use cloister_proto::controls::{DlpAction, DlpPolicy};
use cloister_proto::km::Role;
use cloister_proto::room::RoomSettings;
use serde_json::{Value, json};
use std::path::Path;

/// One SCIM call as an identity provider makes it.
async fn scim(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, BoxError> {
    let mut r = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r
            .header("content-type", "application/scim+json")
            .body(b.to_string());
    }
    let r = r.send().await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        return Err(format!("SCIM {path}: {status}: {v}").into());
    }
    Ok(v)
}

pub(super) struct Cast<'a> {
    pub stack: &'a Stack,
    pub admin: &'a Client,
    pub alice: &'a Client,
    pub carol: &'a Client,
    pub olivia: &'a Client,
    pub clients: &'a Path,
    pub dir: &'a Path,
}

pub(super) async fn run(d: &mut Demo, c: Cast<'_>) -> Result<(), BoxError> {
    d.section("The directory arrives over SCIM");
    let token = c.admin.admin_scim_token("okta").await?;
    d.say(
        "admin",
        format!(
            "mints SCIM token {} for the identity provider (stored only as a hash)",
            token.id
        ),
    );
    let http = cloister_tls::http_client();
    let base = format!("{}/scim/v2", c.stack.km_url);
    let rita = scim(
        &http,
        &base,
        &token.token,
        reqwest::Method::POST,
        "/Users",
        Some(json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
            "userName": "rita@acme-bank.example",
            "displayName": "Rita Research",
            "title": "Credit Research Analyst",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Research"}
        })),
    )
    .await?;
    let found = scim(
        &http,
        &base,
        &token.token,
        reqwest::Method::GET,
        "/Users?filter=userName%20eq%20%22alice%40acme%22",
        None,
    )
    .await?;
    let alice_id = found["Resources"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    d.say(
        "okta",
        "POST /Users rita@acme-bank.example (Credit Research Analyst) → Cloister user rita@acme",
    );
    scim(
        &http,
        &base,
        &token.token,
        reqwest::Method::POST,
        "/Groups",
        Some(
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": "research", "members": [{"value": rita["id"]}]}),
        ),
    )
    .await?;
    scim(
        &http,
        &base,
        &token.token,
        reqwest::Method::POST,
        "/Groups",
        Some(
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": "trading", "members": [{"value": alice_id}]}),
        ),
    )
    .await?;
    d.say("okta", "POST /Groups research [rita], trading [alice]");
    let rita = enrol_as(c.stack, c.admin, c.clients, "rita", &[Role::User]).await?;
    d.say("admin", "issues rita an enrolment code; her laptop enrols");
    let hits = c.carol.directory_search("credit research", 10).await?;
    d.check(
        hits.iter()
            .any(|h| h.user == *rita.user() && h.title == "Credit Research Analyst"),
        "carol finds rita in the directory by title",
    );

    d.section("A Chinese wall");
    let b = c
        .olivia
        .barrier_add("research", "trading", "research must not talk to trading")
        .await?;
    d.say(
        "olivia",
        format!(
            "cloister admin barrier add research trading  → {}",
            b.barrier.barrier.id
        ),
    );
    let refused = rita.im(c.alice.user()).await;
    match &refused {
        Err(e) => d.say("rita", format!("tries to IM alice: refused: {e}")),
        Ok(_) => d.say("rita", "opened an IM with alice!"),
    }
    d.check(
        matches!(&refused, Err(e) if e.code() == Some("barrier")),
        "the barrier refuses rita's IM to alice, naming the barrier",
    );
    let seen = rita.directory_search("alice", 10).await?;
    d.check(
        seen.is_empty(),
        "rita does not even find alice in the directory",
    );

    d.section("An announcement room");
    let ann = c
        .alice
        .create_room(
            RoomSettings {
                name: "desk-announcements".into(),
                read_only: true,
                ..Default::default()
            },
            &[c.carol.user().clone()],
        )
        .await?;
    c.alice
        .send_text(
            &ann,
            "Reminder: CPI print at 8:30, no quotes in the minute before",
        )
        .await?;
    d.say("alice", "posts in read-only room desk-announcements");
    let r = c.carol.send_text(&ann, "noted").await;
    if let Err(e) = &r {
        d.say("carol", format!("replies: refused: {e}"));
    }
    d.check(r.is_err(), "only owners post in a read-only room");

    d.section("DLP");
    c.olivia
        .dlp_put(DlpPolicy {
            id: "mna-falcon".into(),
            name: "Project Falcon (M&A)".into(),
            action: DlpAction::Block,
            keywords: vec!["project falcon".into()],
            patterns: vec![],
            file_types: vec!["exe".into()],
            max_file_bytes: None,
            message: "deal names stay off chat".into(),
            active: true,
        })
        .await?;
    d.say(
        "olivia",
        "adds DLP policy mna-falcon (block \"project falcon\", .exe files)",
    );
    let chat = rita
        .create_room(
            RoomSettings {
                name: "credit-notes".into(),
                ..Default::default()
            },
            &[c.carol.user().clone()],
        )
        .await?;
    let r = rita
        .send_text(&chat, "Project Falcon: the issuer signs Friday")
        .await;
    if let Err(e) = &r {
        d.say("rita", format!("sends a deal name: {e}"));
    }
    d.check(
        matches!(&r, Err(e) if e.code() == Some("dlp_blocked")),
        "DLP blocks the message on rita's device before it is sealed",
    );

    d.section("Malware scanning");
    if !LocalClamd::available() {
        d.say(
            "operator",
            "clamd is not installed here (Debian clamav-daemon; scripts/tools installs it): malware scanning skipped",
        );
        return Ok(());
    }
    let clamd = LocalClamd::start(&c.dir.join("clamd")).await?;
    let scanner = enrol_as(c.stack, c.admin, c.clients, "inspect", &[Role::Inspector]).await?;
    d.say(
        "admin",
        "enrols the firm's scanner inspect@acme (inspector role), clamd behind it",
    );
    let bad = c.dir.join("invoice.pdf");
    std::fs::write(&bad, EICAR)?;
    c.carol.send_file(&chat, &bad).await?;
    std::fs::remove_file(&bad)?;
    d.say("carol", "sends invoice.pdf (the EICAR test file)");
    let mut insp = Inspector::new(scanner, clamd.clamd.clone());
    let rep = insp.pass().await?;
    d.say(
        "inspect",
        format!(
            "{} rooms, {} file(s) scanned, {} infected",
            rep.rooms,
            rep.scanned,
            rep.infected.len()
        ),
    );
    let msg = rita
        .read(&chat, 10, None)
        .await?
        .into_iter()
        .flatten()
        .find(|m| matches!(&m.content, cloister_proto::server::Content::File { .. }))
        .ok_or("rita does not see the file")?;
    let out = c.dir.join("rita-invoice.pdf");
    let r = rita.open_file(&msg, &out).await;
    if let Err(e) = &r {
        d.say("rita", format!("opens invoice.pdf: {e}"));
    }
    d.check(
        matches!(&r, Err(e) if e.code() == Some("infected")) && !out.exists(),
        "rita's device refuses to open the infected file and says why",
    );
    Ok(())
}
