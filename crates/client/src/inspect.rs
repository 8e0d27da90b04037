//! Malware verdicts: the firm's scanner (a device with the inspector role)
//! posts a signed verdict on each shared file; every device checks the
//! verdicts (signature, KM-signed certificate, inspector role, tenant)
//! before it opens a file, and refuses one found infected.

use super::*;
use cloister_proto::server::{SignedVerdict, Verdict};

impl Client {
    /// Every room of my tenant (surveillance and inspector roles).
    pub async fn tenant_rooms(&self) -> Result<Vec<RoomSummary>> {
        self.server(|h, s| h.get(format!("{s}/v1/tenant-rooms")))
            .await
    }

    /// Inspector: sign and post a verdict.
    pub async fn post_verdict(&self, v: &Verdict) -> Result<()> {
        let signed = signed::sign_verdict(&self.keys, &self.cert(), v)?;
        let room = v.room;
        let _: serde_json::Value = self
            .server(|h, s| {
                h.post(format!("{s}/v1/rooms/{room}/verdicts"))
                    .json(&signed)
            })
            .await?;
        Ok(())
    }

    /// The verdicts on a message that check out: signed by a device the
    /// tenant's KM certified as its inspector, about this room and message.
    /// (The server takes verdicts only from an inspector device in good
    /// standing; a verdict only ever stops a file from opening.)
    pub async fn verdicts(&self, room: &RoomId, message: &MessageId) -> Result<Vec<Verdict>> {
        let raw: Vec<SignedVerdict> = self
            .server(|h, s| h.get(format!("{s}/v1/rooms/{room}/verdicts/{message}")))
            .await?;
        let mut out = Vec::new();
        for sv in &raw {
            let Ok((cert, v)) = signed::verify_verdict(&self.profile.km_sign_pk.0, sv) else {
                self.alert(format!(
                    "the server showed a verdict on message {message} that is not validly signed; ignored"
                ));
                continue;
            };
            if !cert.roles.contains(&cloister_proto::km::Role::Inspector)
                || cert.tenant != self.profile.tenant
                || v.room != *room
                || v.message_id != *message
            {
                continue;
            }
            out.push(v);
        }
        Ok(out)
    }

    /// Open a received file: refused if the firm's scanner found it
    /// infected (the reason is shown); otherwise downloaded, verified and
    /// decrypted to `out`.
    pub async fn open_file(&self, msg: &Received, out: &Path) -> Result<u64> {
        let Content::File { name, sha256, .. } = msg.content.said() else {
            return Err(ClientError::Input("that message is not a file".into()));
        };
        for v in self.verdicts(&msg.room, &msg.id).await? {
            if v.infected && v.sha256 == *sha256 {
                return Err(ClientError::Refused {
                    code: "infected",
                    message: format!(
                        "{name} is not opened: the firm's malware scanner ({}) found {} in it",
                        v.engine, v.signature
                    ),
                });
            }
        }
        self.get_file(&msg.content, out).await
    }
}
