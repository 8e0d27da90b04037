//! History of MLS rooms handed from one of a user's devices to another
//! (a new laptop): no KM can serve it, so the old device signs what it read
//! and seals it to the new one (`cloister_crypto::history`); the new
//! device checks every message's own attribution before keeping it.

use super::*;
use mls::Seen;

/// What one device hands another of the same user: the MLS messages it
/// read, by room (signed and sealed by `cloister_crypto::history`).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryBody {
    user: UserId,
    from: DeviceId,
    to: DeviceId,
    created_ms: u64,
    rooms: Vec<HistoryRoom>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryRoom {
    room: RoomId,
    messages: Vec<Seen>,
}

impl Client {
    /// Hand the MLS history this device holds (of `rooms`, or of every MLS
    /// room) to another device of the same user: signed by this device,
    /// sealed to the other's certified key. Returns the bundle and the
    /// number of messages in it.
    pub async fn mls_history_export(
        &self,
        to: &DeviceId,
        rooms: &[RoomId],
    ) -> Result<(cloister_crypto::history::SealedHistory, usize)> {
        if *to == self.device() {
            return Err(ClientError::Input(
                "history goes to another device, not this one".into(),
            ));
        }
        let cert = self.cert_of(to).await?;
        if cert.user != *self.user() {
            return Err(ClientError::Input(format!(
                "device {to} belongs to {}: history goes only to another device of {}",
                cert.user,
                self.user()
            )));
        }
        let standing: cloister_proto::km::DeviceStandingAnswer = self
            .km_request(cloister_proto::km::KmOp::DeviceStanding { devices: vec![*to] })
            .await?;
        if !standing.barred.is_empty() {
            return Err(ClientError::Input(format!(
                "device {to} is revoked (or its user disabled): no history for it"
            )));
        }
        let g = self.mls_state().await?;
        let st = g
            .as_ref()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let picked: Vec<HistoryRoom> = st
            .seen
            .iter()
            .filter(|(r, _)| rooms.is_empty() || rooms.contains(r))
            .map(|(r, m)| HistoryRoom {
                room: *r,
                messages: m.values().cloned().collect(),
            })
            .collect();
        drop(g);
        let n = picked.iter().map(|r| r.messages.len()).sum();
        let body = zeroize::Zeroizing::new(
            serde_json::to_vec(&HistoryBody {
                user: self.user().clone(),
                from: self.device(),
                to: *to,
                created_ms: now_millis(),
                rooms: picked,
            })
            .map_err(|e| ClientError::Local(e.to_string()))?,
        );
        let sealed = cloister_crypto::history::seal(&self.keys, to, &cert.hpke_pk.0, &body)?;
        Ok((sealed, n))
    }

    /// Take a history bundle another device of this user sealed to this
    /// one: the sender's certificate and signature, then every message's
    /// own attribution (its sender device's signature and the commitment
    /// to its words) are checked before it is kept. Returns how many
    /// messages were new here.
    pub async fn mls_history_import(
        &self,
        sealed: &cloister_crypto::history::SealedHistory,
    ) -> Result<usize> {
        let from = self.cert_of(&sealed.from).await?;
        if from.user != *self.user() {
            return Err(ClientError::Input(format!(
                "the bundle comes from a device of {}, not of {}",
                from.user,
                self.user()
            )));
        }
        let body = zeroize::Zeroizing::new(cloister_crypto::history::open(
            &self.keys,
            sealed,
            &from.sign_pk.0,
        )?);
        let hb: HistoryBody = serde_json::from_slice(&body)
            .map_err(|_| ClientError::Local("unreadable history bundle".into()))?;
        if hb.from != sealed.from || hb.to != self.device() || hb.user != *self.user() {
            return Err(ClientError::Local(
                "the history bundle names other devices than it was sealed between".into(),
            ));
        }
        // every message checked before any is kept
        let mut checked = Vec::new();
        for r in hb.rooms {
            for m in r.messages {
                let h = message::peek_header(&m.envelope)?;
                let id = h.id.to_hex();
                let bad = |reason: String| ClientError::BadMessage {
                    id: id.clone(),
                    reason,
                };
                if h.room != r.room || h.v != 2 {
                    return Err(bad("not a message of that MLS room".into()));
                }
                let sender = self.cert_of(&h.device).await?;
                if sender.user != h.sender {
                    return Err(bad("the header names another user than the device's".into()));
                }
                let vk = cloister_crypto::keys::VerifyKey::from_bytes(&sender.sign_pk.0)?;
                let att = cloister_proto::vault::Attribution {
                    header: m.envelope.header.clone(),
                    sig: m.envelope.sig,
                    franking_key: m.franking_key,
                    plaintext: m.plaintext.clone(),
                };
                message::verify_attribution(
                    &vk,
                    &att,
                    &cloister_crypto::sha256(m.envelope.ciphertext.as_slice()),
                )
                .map_err(|e| bad(format!("not attributable to its sender: {e}")))?;
                checked.push((r.room, m));
            }
        }
        let mut g = self.mls_state().await?;
        let st = g
            .as_mut()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let mut new = 0;
        for (room, m) in checked {
            if st.seen.get(&room).is_some_and(|s| s.contains_key(&m.seq)) {
                continue;
            }
            self.keep_seen(st, &room, m)?;
            new += 1;
        }
        Ok(new)
    }
}
