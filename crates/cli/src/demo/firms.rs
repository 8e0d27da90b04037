//! The demo's second firm: Harbour Asset Management, a buy-side client of
//! Acme Bank, with its own KM and vault on the same messaging server. The
//! two firms pin each other's KM keys, a trader and two portfolio managers
//! connect, share an external room, a member is removed and refused the next
//! epoch by both KMs, and each firm exports its own record of the
//! conversation and verifies it offline against its own KM key.

use super::Demo;
use crate::{BoxError, Stack};
use cloister_client::{Client, Storage};
use cloister_crypto::passphrase::Cost;
use cloister_proto::controls::Entitlement;
use cloister_proto::km::Role;
use cloister_proto::room::RoomSettings;
use cloister_proto::{RoomId, TenantId, UserId};
use std::path::Path;
use std::sync::Arc;

pub(super) struct Cast<'a> {
    pub stack: &'a Stack,
    pub admin: &'a Client,
    pub alice: &'a Client,
    pub olivia: &'a Client,
    /// Acme's escrow custodians (two approve a case).
    pub custodians: &'a [Client],
    pub dir: &'a Path,
}

/// Harbour's services, running in this process on their own ports.
struct Harbour {
    km: Arc<cloister_km::Km>,
    km_url: String,
    vault_url: String,
    admin: Client,
    tenant: TenantId,
}

async fn start(stack: &Stack, dir: &Path) -> Result<Harbour, BoxError> {
    let f = crate::firm::start_partner_firm(
        dir,
        crate::firm::FirmOptions {
            tenant: "harbour".parse()?,
            km_passphrase: b"harbour KM passphrase (development only)",
            cost: Cost::DEFAULT,
            server_url: &stack.server_url,
            operator_token: &stack.operator_token,
            vault_refresh: std::time::Duration::from_secs(1),
            tls: stack.tls.as_ref(),
        },
    )
    .await?;
    let admin = Client::enrol(
        cloister_tls::http_client(),
        &stack.server_url,
        &f.km_url,
        &"admin@harbour".parse()?,
        &f.admin_code,
        Storage::Memory,
    )
    .await?;
    Ok(Harbour {
        km: f.km,
        km_url: f.km_url,
        vault_url: f.vault_url,
        admin,
        tenant: f.tenant,
    })
}

impl Harbour {
    async fn user(&self, stack: &Stack, name: &str, roles: &[Role]) -> Result<Client, BoxError> {
        let user: UserId = format!("{name}@harbour").parse()?;
        let code = self.admin.admin_add_user_roles(&user, roles).await?.code;
        Ok(Client::enrol(
            cloister_tls::http_client(),
            &stack.server_url,
            &self.km_url,
            &user,
            &code,
            Storage::Memory,
        )
        .await?)
    }
}

/// Does `c` read `text` in the room (verified and decrypted)?
async fn sees(c: &Client, room: RoomId, text: &str) -> Result<bool, BoxError> {
    Ok(c.read(&room, 10, None).await?.iter().any(|m| {
        m.as_ref().is_ok_and(
            |r| matches!(&r.content, cloister_proto::server::Content::Text { text: t } if t == text),
        )
    }))
}

/// How many key exchanges of the room the admin's KM recorded.
async fn exchanges(admin: &Client, room: RoomId) -> Result<usize, BoxError> {
    Ok(admin
        .audit_list(0, 1000, Some("key_exchange".into()), Some(room), None)
        .await?
        .len())
}

/// Who the admin's KM released the room's keys to.
async fn holders(admin: &Client, room: RoomId) -> Result<Vec<String>, BoxError> {
    Ok(admin
        .who_has_keys(&room)
        .await?
        .iter()
        .map(|r| r.user.to_string())
        .collect())
}

fn scope(room: RoomId) -> cloister_proto::km::CaseScope {
    let now = cloister_proto::now_millis();
    cloister_proto::km::CaseScope {
        custodians: vec![],
        rooms: vec![room],
        from_ms: now - 3_600_000,
        to_ms: now + 3_600_000,
        reseal: None,
    }
}

/// Open a case on the room, have two custodians approve, export, verify
/// against `km`: (messages, verified).
async fn export_side(
    officer: &Client,
    approvers: &[&Client],
    room: RoomId,
    out: &Path,
    km: [u8; 32],
) -> Result<(u64, bool, bool), BoxError> {
    officer
        .case_open("harbour-axes", "Harbour axes review", scope(room), false)
        .await?;
    for a in approvers {
        a.case_approve("harbour-axes").await?;
    }
    let x = officer.case_export("harbour-axes", out, &|_, _| {}).await?;
    let v = cloister_client::export::verify(out, Some(km));
    let clean = v.as_ref().is_ok_and(|r| r.unattributable == 0) && x.summary.unattributable == 0;
    Ok((x.summary.messages, v.is_ok(), clean))
}

pub(super) async fn run(
    d: &mut Demo,
    c: Cast<'_>,
    secrets: &mut Vec<String>,
) -> Result<(), BoxError> {
    d.section("A client firm joins: Harbour Asset Management, with its own KM and vault");
    let h = start(c.stack, &c.dir.join("harbour")).await?;
    d.say(
        "harbour admin",
        format!(
            "Harbour's KM on {} holds Harbour's own master key; its vault on {}",
            h.km_url, h.vault_url
        ),
    );
    let (hugo, hana) = (
        h.user(c.stack, "hugo", &[Role::Custodian]).await?,
        h.user(c.stack, "hana", &[Role::Custodian]).await?,
    );
    let holly = h.user(c.stack, "holly", &[Role::Compliance]).await?;
    h.admin
        .admin_escrow_init(&[hugo.user().clone(), hana.user().clone()], 2)
        .await?;
    h.admin.admin_vault_register(&h.vault_url, true).await?;
    d.say(
        "harbour admin",
        "escrow 2-of-2 (hugo, hana), holly as compliance officer, capture = required into Harbour's own vault",
    );

    // trust, compared out of band, both ways
    let acme_id = c.admin.trust_self().await?;
    let harbour_id = h.admin.trust_self().await?;
    d.say(
        "both admins",
        format!(
            "read each other's KM fingerprints on a call: acme {} / harbour {}",
            acme_id.fingerprint, harbour_id.fingerprint
        ),
    );
    c.admin
        .trust_add_at(
            &h.tenant,
            &harbour_id.km_key,
            Some(&harbour_id.fingerprint),
            Some(&h.km_url),
        )
        .await?;
    h.admin
        .trust_add_at(
            c.stack.km.tenant(),
            &acme_id.km_key,
            Some(&acme_id.fingerprint),
            Some(&c.stack.km_url),
        )
        .await?;
    d.say(
        "both admins",
        "pinned each other's KM key (and its address)",
    );

    let pat = h.user(c.stack, "pat", &[Role::User]).await?;
    let quinn = h.user(c.stack, "quinn", &[Role::User]).await?;
    for p in [&pat, &quinn, &holly] {
        p.use_registered_vault().await?;
    }
    c.admin
        .admin_entitle(
            Some(c.alice.user()),
            None,
            &[Entitlement::ExternalChat],
            &[],
        )
        .await?;
    for p in [&pat, &quinn] {
        h.admin
            .admin_entitle(Some(p.user()), None, &[Entitlement::ExternalChat], &[])
            .await?;
    }
    d.say(
        "admins",
        "granted external_chat to alice (Acme) and to pat and quinn (Harbour's portfolio managers)",
    );
    for p in [&pat, &quinn] {
        let v = c.alice.connect_request(p.user()).await?;
        p.connect_answer(&v.id, true).await?;
    }
    d.say(
        "alice",
        "asked pat and quinn to connect; both accepted (each step signed by the user's own KM)",
    );

    let room = c
        .alice
        .create_room(
            RoomSettings {
                name: "harbour-axes".into(),
                external: true,
                ..Default::default()
            },
            &[pat.user().clone(), quinn.user().clone()],
        )
        .await?;
    d.say(
        "alice",
        format!("created external room harbour-axes ({room}) with pat and quinn"),
    );
    let t1 = "Axe: we sell 25mm Harbourview 2033s at 101.25";
    let t2 = "Harbour buys 10mm at 101.25, confirm";
    c.alice.send_text(&room, t1).await?;
    let pat_sees = sees(&pat, room, t1).await?;
    d.say(
        "pat",
        "reads alice's axe: Harbour's KM got epoch 0 from Acme's KM (sealed to Harbour's pinned key) and released it to pat",
    );
    d.check(pat_sees, "a Harbour user reads an Acme user's message");
    pat.send_text(&room, t2).await?;
    let alice_sees = sees(c.alice, room, t2).await?;
    d.check(
        alice_sees,
        "and an Acme user reads the Harbour user's reply",
    );
    secrets.extend([t1.to_owned(), t2.to_owned()]);
    let (sent, got) = (
        exchanges(c.admin, room).await?,
        exchanges(&h.admin, room).await?,
    );
    d.say(
        "auditors",
        format!("Acme's audit log records {sent} key exchange(s) sent to Harbour; Harbour's records {got} received"),
    );
    let (acme_holders, harbour_holders) = (
        holders(c.admin, room).await?,
        holders(&h.admin, room).await?,
    );
    d.check(
        acme_holders.iter().all(|u| u.ends_with("@acme"))
            && harbour_holders.iter().all(|u| u.ends_with("@harbour"))
            && !harbour_holders.is_empty(),
        "each KM released keys only to its own firm's devices (who-has-keys on either side)",
    );

    c.alice.remove_member(&room, quinn.user()).await?;
    let t3 = "Quinn is off the account; pat, final allocation at 3pm";
    c.alice.send_text(&room, t3).await?;
    secrets.push(t3.into());
    let refused = quinn.room_keys(&room, &[1]).await.err();
    d.say(
        "quinn",
        format!(
            "removed; asks Harbour's KM for epoch 1: {}",
            refused
                .as_ref()
                .map_or("released (!)".to_owned(), |e| e.to_string())
        ),
    );
    let pat_reads = sees(&pat, room, t3).await?;
    d.check(
        refused.is_some() && pat_reads,
        "the removed member is refused the next epoch by her own KM; pat still gets it",
    );
    // and when Harbour has no one left, Acme's KM refuses Harbour's KM
    c.alice.remove_member(&room, pat.user()).await?;
    let st = c.alice.room_state(&room).await?;
    let ask = h.km.key_request(&st, &[st.epoch]).await?;
    let r = cloister_tls::http_client()
        .post(format!("{}/v1/federation/room-keys", c.stack.km_url))
        .json(&ask)
        .send()
        .await?;
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await?;
    d.say(
        "acme KM",
        format!(
            "Harbour's KM asks for epoch {} after its last member left: {status} {}",
            st.epoch, body["error"]
        ),
    );
    d.check(
        status == 403 && body["error"] == "no_members",
        "a firm with no member left never gets a later epoch from the home KM",
    );

    // each firm's own record, exported on its own
    let (n_acme, ok_acme, clean_acme) = export_side(
        c.olivia,
        &[&c.custodians[0], &c.custodians[1]],
        room,
        &c.dir.join("export-harbour-axes-acme"),
        c.stack.km.info().sign_pk.0,
    )
    .await?;
    let (n_harbour, ok_harbour, clean_harbour) = export_side(
        &holly,
        &[&hugo, &hana],
        room,
        &c.dir.join("harbour").join("export-harbour-axes"),
        h.km.info().sign_pk.0,
    )
    .await?;
    d.say(
        "olivia (acme)",
        format!("exports Acme's record of harbour-axes: {n_acme} message(s), verified against Acme's KM key"),
    );
    d.say(
        "holly (harbour)",
        format!("exports Harbour's record of the same room: {n_harbour} message(s), verified against Harbour's KM key"),
    );
    d.check(
        ok_acme && ok_harbour && clean_acme && clean_harbour && n_acme == 3 && n_harbour == 3,
        "each firm's export of the shared room (all 3 messages) verifies offline, every message attributable",
    );
    Ok(())
}
