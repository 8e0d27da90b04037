//! The demo's gateway: alice talks with a contact on Matrix (a real
//! Synapse on loopback) through the firm's gateway, and the compliance
//! officer finds both sides of it. Without Synapse the demo says how to
//! install it and goes on.

use super::{Demo, enrol_as};
use crate::matrix_lab::MatrixLab;
use crate::{BoxError, Stack};
use cloister_client::Client;
use cloister_proto::controls::Entitlement;
use cloister_proto::km::Role;
use cloister_proto::server::Content;
use std::path::Path;
use std::time::Duration;

pub(super) struct Cast<'a> {
    pub stack: &'a Stack,
    pub admin: &'a Client,
    pub alice: &'a Client,
    pub olivia: &'a Client,
    pub clients: &'a Path,
    pub dir: &'a Path,
}

/// Poll `f` for up to 30 s.
async fn within<T, F, Fut>(mut f: F) -> Result<Option<T>, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, BoxError>>,
{
    for _ in 0..300 {
        if let Some(t) = f().await? {
            return Ok(Some(t));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

pub(super) async fn run(
    d: &mut Demo,
    c: Cast<'_>,
    secrets: &mut Vec<String>,
) -> Result<(), BoxError> {
    d.section("A contact on Matrix, through the firm's gateway");
    let Some(py) = crate::synapse::python() else {
        d.say(
            "note",
            format!(
                "Synapse is not installed, so this part is skipped: scripts/tools installs it (PyPI matrix-synapse into {})",
                crate::synapse::VENV
            ),
        );
        return Ok(());
    };
    let gw_client = enrol_as(c.stack, c.admin, c.clients, "gateway", &[Role::Gateway]).await?;
    gw_client.use_registered_vault().await?;
    let gw_user = gw_client.user().clone();
    for u in [c.alice.user(), &gw_user] {
        c.admin
            .admin_entitle(Some(u), None, &[Entitlement::Federation], &[])
            .await?;
    }
    d.say(
        "admin",
        "enrols the gateway (role gateway) and grants alice and it `federation`",
    );
    let lab = MatrixLab::start(&py, c.dir, gw_client).await?;
    let mat = lab.mat.0.clone();
    d.say(
        "mat",
        format!(
            "a Matrix user ({mat}) on a Synapse homeserver at {}",
            lab.synapse.url
        ),
    );

    let room = c.alice.open_bridge("matrix", &mat, &gw_user, &[]).await?;
    let t1 = "Gateway: can you confirm the 5y at 2.41?";
    c.alice.send_text(&room, t1).await?;
    secrets.push(t1.into());
    d.say(
        "alice",
        format!("opens a bridged room with {mat} and says  {t1}"),
    );
    let mroom = lab.join_next_invite().await?;
    let seen = within(|| async {
        Ok(lab
            .messages(&mroom)
            .await?
            .into_iter()
            .next()
            .map(|(who, body, _)| format!("{who}: {body}")))
    })
    .await?;
    d.say(
        "mat",
        format!("sees on Matrix  {}", seen.as_deref().unwrap_or("nothing")),
    );
    d.check(
        seen.is_some_and(|s| s.ends_with(t1)),
        "alice's message reached the Matrix user, from her puppet",
    );
    let t2 = "Confirmed from Matrix: 2.41 on the 5y";
    secrets.push(t2.into());
    lab.send(&mroom, "demo1", t2).await?;
    let back = within(|| async {
        Ok(c.alice
            .read(&room, 50, None)
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .find_map(|m| match &m.content {
                Content::Relayed { from, content, .. } => match &**content {
                    Content::Text { text } => Some((from.clone(), text.clone())),
                    _ => None,
                },
                _ => None,
            }))
    })
    .await?;
    if let Some((from, text)) = &back {
        d.say("alice", format!("reads  {from} (via the gateway): {text}"));
    }
    d.check(
        back.as_ref().is_some_and(|(f, t)| *f == mat && t == t2),
        "the Matrix user's answer reached alice, marked as relayed from them",
    );
    let who = c.admin.who_has_keys(&room).await?;
    d.say(
        "auditor",
        format!(
            "who has the bridged room's keys: {}",
            who.iter()
                .map(|k| format!("{}{}", k.user, if k.gateway { " (GATEWAY)" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    d.check(
        who.iter().any(|k| k.gateway && k.user == gw_user),
        "the gateway's key release is on the record, flagged as the gateway",
    );
    let now = cloister_proto::now_millis();
    let hits = within(|| async {
        let h = c
            .olivia
            .compliance_search(
                &[(cloister_crypto::blind::Field::Participant, mat.clone())],
                now - 3_600_000,
                now + 3_600_000,
                10,
            )
            .await?;
        Ok((!h.is_empty()).then_some(h))
    })
    .await?
    .unwrap_or_default();
    d.say(
        "olivia",
        format!(
            "searches the archive for participant {mat}: {} hit(s)",
            hits.len()
        ),
    );
    d.check(
        hits.iter().any(|h| h.room == room),
        "the compliance officer finds the conversation with the Matrix user",
    );
    drop(lab);
    Ok(())
}
