//! The demo's end-to-end room: the desk's most sensitive talk in an MLS
//! room whose keys the members' devices agree (the KM holds none), a
//! member removed and locked out of the next epoch, a device refreshing its
//! own key, and compliance still finding what was said.

use super::Demo;
use crate::BoxError;
use cloister_client::Client;
use cloister_proto::room::{RoomMode, RoomSettings};
use cloister_proto::server::Content;

pub(super) struct Cast<'a> {
    pub alice: &'a Client,
    /// bob's current device (his old one is revoked by now)
    pub bob: &'a Client,
    pub carol: &'a Client,
    pub olivia: &'a Client,
}

pub(super) async fn run(
    d: &mut Demo,
    c: Cast<'_>,
    secrets: &mut Vec<String>,
) -> Result<(), BoxError> {
    d.section("An end-to-end (MLS) room");
    for m in [c.alice, c.bob, c.carol] {
        m.replenish_key_packages().await?;
    }
    let room = c
        .alice
        .create_room(
            RoomSettings {
                name: "rates-e2e".into(),
                mode: RoomMode::Mls,
                ..Default::default()
            },
            &[c.bob.user().clone(), c.carol.user().clone()],
        )
        .await?;
    let leaves = c.alice.mls_roster(&room).await?;
    d.say(
        "alice",
        format!(
            "creates MLS room rates-e2e (RFC 9420): {} leaves, each a KM-certified device: {}",
            leaves.len(),
            leaves
                .iter()
                .map(|l| l.user.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    d.check(
        leaves.len() == 3,
        "the group holds the three members' current devices (bob's revoked one is not added)",
    );
    let t1 = "E2E: we show Meridian Capital 4.10 on the 7y swap";
    c.alice.send_text(&room, t1).await?;
    secrets.push(t1.into());
    d.say("alice", format!("says  {t1}"));
    let read = |r: &[cloister_client::Result<cloister_client::Received>]| -> Vec<String> {
        r.iter()
            .filter_map(|m| match m.as_ref().ok().map(|m| &m.content) {
                Some(Content::Text { text }) => Some(text.clone()),
                _ => None,
            })
            .collect()
    };
    let carol_reads = read(&c.carol.read(&room, 10, None).await?);
    d.say("carol", format!("reads {carol_reads:?}"));
    d.check(
        carol_reads == [t1],
        "carol's device decrypts it with the group's key, agreed by the devices",
    );
    let km = c.alice.room_keys(&room, &[0]).await;
    d.check(
        matches!(&km, Err(e) if e.code() == Some("mls_room")),
        "the KM holds no key of the MLS room and gives none (refusal audited)",
    );

    c.alice.remove_member(&room, c.carol.user()).await?;
    let epoch = c.alice.mls_sync(&room).await?;
    d.say(
        "alice",
        format!("removes carol: the log entry, then a commit without her leaf (epoch {epoch})"),
    );
    let t2 = "E2E: Meridian confirmed, 50mm done at 4.10";
    c.alice.send_text(&room, t2).await?;
    secrets.push(t2.into());
    d.say("alice", format!("says  {t2}"));
    let carol_after = c.carol.read(&room, 10, None).await;
    d.say(
        "carol",
        match &carol_after {
            Ok(m) => format!("reads {:?}", read(m)),
            Err(e) => format!("cannot read on: {e}"),
        },
    );
    d.check(
        carol_after.is_err(),
        "forward secrecy: carol's device has no key to the epoch after her removal",
    );
    let e = c.bob.mls_update(&room).await?;
    d.say(
        "bob",
        format!("refreshes his leaf's key (post-compromise security): epoch {e}"),
    );
    let bob_reads = read(&c.bob.read(&room, 10, None).await?);
    d.check(
        bob_reads == [t1, t2],
        "bob reads both messages (each decrypted once and kept on his device)",
    );

    let now = cloister_proto::now_millis();
    let hits = c
        .olivia
        .compliance_search(
            &[(cloister_crypto::blind::Field::Keyword, "meridian".into())],
            now - 3_600_000,
            now + 3_600_000,
            10,
        )
        .await?;
    d.say(
        "olivia",
        format!(
            "searches the archive for \"meridian\": {} hit(s) in the MLS room",
            hits.iter().filter(|h| h.room == room).count()
        ),
    );
    d.check(
        hits.iter().filter(|h| h.room == room).count() == 2,
        "compliance finds the MLS room's messages like any others (captured by the devices)",
    );
    Ok(())
}
