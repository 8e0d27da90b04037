//! Messages of MLS rooms: sealed at the group's epoch with a random
//! franking key inside the MLS encryption, opened once (the key is gone
//! after) and kept on the device, with the MLS sender matched to the
//! signed header.

use super::*;
use cloister_mls::Received as MlsReceived;
use mls::{Seen, mls_err};

impl Client {
    /// Seal a message for an MLS room at the group's current epoch.
    pub(crate) async fn mls_seal(
        &self,
        room: &RoomId,
        content: &Content,
        number: &(u64, Vec<MessageId>),
        refresh: bool,
    ) -> Result<(Envelope, cloister_proto::vault::Attribution)> {
        // the server refuses a stale epoch (409), and the send is retried
        // with `refresh`: no round trip per message otherwise
        let joined = self
            .mls_state()
            .await?
            .as_ref()
            .is_some_and(|s| s.member.has_group(room));
        if refresh || !joined {
            self.mls_sync(room).await?;
        }
        let mut g = self.mls_state().await?;
        let st = g
            .as_mut()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let pt = zeroize::Zeroizing::new(
            serde_json::to_vec(content).map_err(|e| ClientError::Local(e.to_string()))?,
        );
        let fk = zeroize::Zeroizing::new(cloister_crypto::random_bytes::<32>()?);
        let ts = now_millis();
        let id = super::messages::ordered_id(ts)?;
        let epoch = st.member.epoch(room).map_err(mls_err)?;
        let header = MessageHeader {
            v: 2,
            room: *room,
            epoch,
            id,
            sender: self.user().clone(),
            device: self.device(),
            ts,
            commit: Fixed(message::commitment(&fk, &pt)),
            counter: number.0,
            after: number.1.clone(),
        };
        let header_bytes =
            serde_json::to_vec(&header).map_err(|e| ClientError::Local(e.to_string()))?;
        let (_, ct) = st
            .member
            .encrypt(room, &cloister_mls::payload::encode(&fk, &pt), &id.0)
            .map_err(mls_err)?;
        self.save_mls(st)?;
        let env = message::sign_envelope(&self.keys, header_bytes, ct);
        let att = cloister_proto::vault::Attribution {
            header: env.header.clone(),
            sig: env.sig,
            franking_key: Fixed(*fk),
            plaintext: cloister_proto::b64::Bytes(pt.to_vec()),
        };
        Ok((env, att))
    }

    /// Keep a message this device sent (it cannot decrypt its own).
    pub(crate) async fn mls_sent(
        &self,
        room: &RoomId,
        seq: u64,
        env: &Envelope,
        att: &cloister_proto::vault::Attribution,
    ) -> Result<()> {
        let mut g = self.mls_state().await?;
        let st = g
            .as_mut()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let mut env = env.clone();
        env.receipt = None;
        self.keep_seen(
            st,
            room,
            Seen {
                seq,
                envelope: env,
                franking_key: att.franking_key,
                plaintext: att.plaintext.clone(),
            },
        )
    }

    /// Open a message of an MLS room: from what this device kept if it read
    /// it before, else decrypted now (once) after the same checks as in a
    /// managed room, with the sender's leaf matched to the signed header.
    pub(crate) async fn mls_open(
        &self,
        room: &RoomId,
        seq: u64,
        env: &Envelope,
        h: &MessageHeader,
    ) -> Result<Received> {
        let bad = |reason: String| ClientError::BadMessage {
            id: h.id.to_hex(),
            reason,
        };
        {
            let g = self.mls_state().await?;
            let st = g
                .as_ref()
                .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
            if let Some(s) = st.seen.get(room).and_then(|m| m.get(&seq)) {
                if s.envelope.header != env.header || s.envelope.sig != env.sig {
                    return Err(bad(format!(
                        "the server now shows another message at seq {seq} than this device read there"
                    )));
                }
                return s.received(room);
            }
        }
        if h.device == self.device() {
            return Err(bad(
                "a message from this device that it has no record of sending".into(),
            ));
        }
        // not joined yet, or the message is of a newer epoch: catch up first
        let behind = {
            let g = self.mls_state().await?;
            g.as_ref()
                .is_none_or(|s| s.member.epoch(room).map_or(true, |e| e < h.epoch))
        };
        if behind {
            self.mls_sync(room).await?;
        }
        let mut g = self.mls_state().await?;
        let st = g
            .as_mut()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let r = st
            .member
            .process(room, env.ciphertext.as_slice(), |_| {
                Err(cloister_mls::Error::Malformed(
                    "a commit where a message belongs",
                ))
            })
            .map_err(|e| bad(format!("cannot decrypt: {e}")))?;
        let MlsReceived::Application {
            user,
            device,
            epoch,
            aad,
            data,
        } = r
        else {
            self.save_mls(st)?;
            return Err(bad("not an application message".into()));
        };
        let checked = self.check_opened(room, seq, env, h, user, device, epoch, &aad, &data);
        if let Ok(seen) = &checked {
            // kept before the state that no longer holds its key is saved
            self.keep_seen(st, room, seen.clone())?;
        }
        self.save_mls(st)?;
        checked?.received(room)
    }

    /// The checks of a decrypted MLS message against its signed header.
    #[allow(clippy::too_many_arguments)]
    fn check_opened(
        &self,
        _room: &RoomId,
        seq: u64,
        env: &Envelope,
        h: &MessageHeader,
        user: UserId,
        device: DeviceId,
        epoch: u64,
        aad: &[u8],
        data: &[u8],
    ) -> Result<Seen> {
        let bad = |reason: String| ClientError::BadMessage {
            id: h.id.to_hex(),
            reason,
        };
        if user != h.sender || device != h.device || epoch != h.epoch || aad != h.id.0 {
            return Err(bad(format!(
                "the MLS sender ({user}, device {device}, epoch {epoch}) does not match the signed header"
            )));
        }
        let (fk, content) =
            cloister_mls::payload::decode(data).ok_or_else(|| bad("truncated payload".into()))?;
        if !cloister_crypto::ct_eq(&message::commitment(&fk, content), &h.commit.0) {
            return Err(bad(
                "the content does not match the header's commitment".into()
            ));
        }
        Ok(Seen {
            seq,
            envelope: Envelope {
                receipt: None,
                ..env.clone()
            },
            franking_key: Fixed(fk),
            plaintext: cloister_proto::b64::Bytes(content.to_vec()),
        })
    }
}
