//! Messages: sealed, captured and posted; read, verified, decrypted and
//! checked against the transcript, from history or the live stream.

use super::*;

impl Client {
    /// Encrypt, sign and post a message; returns (message id, server seq).
    pub async fn send(&self, room: &RoomId, content: &Content) -> Result<(MessageId, u64)> {
        if let Content::Text { text } = content
            && text.len() > limits::MAX_TEXT
        {
            return Err(ClientError::Input(format!(
                "message text over {} bytes",
                limits::MAX_TEXT
            )));
        }
        // The firm's DLP policies first: nothing blocked is ever sealed.
        self.dlp_check(content).await?;
        // One number per message: a retry reuses it, a failure gives it back,
        // so recipients see no gap that is not the server's doing.
        let number = self.next_counter(room)?;
        let r = self.send_numbered(room, content, &number).await;
        if r.is_err() {
            self.release_counter(room, number.0)?;
        }
        r
    }

    async fn send_numbered(
        &self,
        room: &RoomId,
        content: &Content,
        number: &(u64, Vec<MessageId>),
    ) -> Result<(MessageId, u64)> {
        for attempt in 0..2 {
            let (mut env, att) = self.seal_with(room, content, attempt > 0, number).await?;
            let id = message::peek_header(&env)?.id;
            // Capture first: the archive holds every message this device
            // sends, and the server may demand the vault's receipt.
            env.receipt = self
                .capture_envelope(room, &env, content, &att, false)
                .await?;
            match self.post_envelope(room, &env).await {
                Ok(seq) => {
                    if message::peek_header(&env)?.v == 2 {
                        self.mls_sent(room, seq, &env, &att).await?;
                    }
                    return Ok((id, seq));
                }
                Err(ClientError::Api(a)) if a.code == "stale_epoch" && attempt == 0 => continue,
                // an MLS group still holds a leaf that must go: remove it, then send
                Err(ClientError::Api(a)) if a.code == "commit_required" && attempt == 0 => {
                    self.mls_reconcile(room).await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Local(
            "the room's epoch kept changing; try again".into(),
        ))
    }

    pub async fn send_text(&self, room: &RoomId, text: &str) -> Result<(MessageId, u64)> {
        self.send(
            room,
            &Content::Text {
                text: text.to_owned(),
            },
        )
        .await
    }

    /// Post a pre-built envelope as-is (tests of the server's checks; replays).
    pub async fn post_envelope(&self, room: &RoomId, env: &Envelope) -> Result<u64> {
        let r: PostMessageResponse = self
            .server(|h, s| h.post(format!("{s}/v1/rooms/{room}/messages")).json(env))
            .await?;
        Ok(r.seq)
    }

    /// Seal a message without sending it (tests and tools).
    pub async fn seal(&self, room: &RoomId, content: &Content) -> Result<Envelope> {
        let number = self.next_counter(room)?;
        Ok(self.seal_with(room, content, false, &number).await?.0)
    }

    pub(crate) async fn seal_with(
        &self,
        room: &RoomId,
        content: &Content,
        refresh: bool,
        number: &(u64, Vec<MessageId>),
    ) -> Result<(Envelope, cloister_proto::vault::Attribution)> {
        // Never in an epoch older than the newest one the KM knows.
        let state = self.current_state(room, refresh).await?;
        if state.settings.mode == cloister_proto::room::RoomMode::Mls {
            return self.mls_seal(room, content, number, refresh).await;
        }
        let epoch = state.epoch;
        let keys = self.room_keys(room, &[epoch]).await?;
        let key = keys
            .get(&epoch)
            .ok_or_else(|| ClientError::Local("no key".into()))?;
        let (counter, after) = (number.0, number.1.clone());
        let ts = now_millis();
        let header = MessageHeader {
            v: 1,
            room: *room,
            epoch,
            id: ordered_id(ts)?,
            sender: self.user().clone(),
            device: self.device(),
            ts,
            commit: Fixed([0; 32]),
            counter,
            after,
        };
        Ok(message::seal_attributed(&self.keys, key, &header, content)?)
    }

    /// Verify and decrypt one envelope that the server says belongs to `room`.
    pub async fn open_envelope(&self, room: &RoomId, seq: u64, env: &Envelope) -> Result<Received> {
        let bad = |id: String, reason: String| ClientError::BadMessage { id, reason };
        let h =
            message::peek_header(env).map_err(|e| bad(format!("at seq {seq}"), e.to_string()))?;
        let id = h.id.to_hex();
        if h.room != *room {
            return Err(bad(
                id,
                format!(
                    "it was addressed to room {}, not {room} (re-addressed)",
                    h.room
                ),
            ));
        }
        let cert = self
            .cert_of(&h.device)
            .await
            .map_err(|e| bad(id.clone(), e.to_string()))?;
        if cert.user != h.sender {
            return Err(bad(
                id,
                format!(
                    "device {} belongs to {}, not {}",
                    h.device, cert.user, h.sender
                ),
            ));
        }
        message::verify_envelope(&cert.sign_pk.0, env).map_err(|_| {
            bad(
                id.clone(),
                "signature does not verify (forged or tampered)".into(),
            )
        })?;
        let mode = self.with_state(room, false, |s| s.settings.mode).await?;
        if mode != h.mode() {
            return Err(bad(
                id,
                format!("a {} message in a {} room", h.mode().name(), mode.name()),
            ));
        }
        if mode == cloister_proto::room::RoomMode::Mls {
            // the sender's leaf in that epoch, matched to the signed header,
            // is what proves membership in an MLS room
            return self.mls_open(room, seq, env, &h).await;
        }
        let check = |s: &RoomState| (h.epoch <= s.epoch, s.may_read(&h.sender, h.epoch));
        let mut ok = self.with_state(room, false, check).await?;
        if !ok.0 || !ok.1 {
            // Our copy may be behind: refresh once before refusing.
            ok = self.with_state(room, true, check).await?;
        }
        if !ok.1 {
            return Err(bad(
                id,
                format!(
                    "{} was not a member of the room at epoch {}",
                    h.sender, h.epoch
                ),
            ));
        }
        let keys = self.room_keys(room, &[h.epoch]).await?;
        let key = keys
            .get(&h.epoch)
            .ok_or_else(|| ClientError::Local("no key".into()))?;
        let (content, attribution) = message::decrypt_attributed(key, &h, env)
            .map_err(|e| bad(id.clone(), e.to_string()))?;
        if let Content::Relayed { network, from, .. } = &content {
            // the bridge is fixed at creation: the state we hold names it
            self.with_state(room, false, |st| {
                cloister_policy::check_relayed(st, &cert.user, &cert.roles, network, from)
            })
            .await?
            .map_err(|why| bad(id, why))?;
        }
        Ok(Received::of(seq, *room, h, content, attribution))
    }

    /// One page of history (oldest first), each message verified and decrypted.
    /// Messages that fail a check are returned as errors in place, not dropped silently.
    pub async fn read(
        &self,
        room: &RoomId,
        limit: u32,
        before: Option<u64>,
    ) -> Result<Vec<Result<Received>>> {
        let limit = limit.clamp(1, limits::MAX_PAGE);
        let q = match before {
            Some(b) => format!("limit={limit}&before={b}"),
            None => format!("limit={limit}"),
        };
        let page: HistoryPage = self
            .server(|h, s| h.get(format!("{s}/v1/rooms/{room}/messages?{q}")))
            .await?;
        // Keys retention destroyed leave the cache before anything is opened.
        let shredded = self.shredded_epochs(room, &page.shredded);
        self.forget_keys(room, &shredded)?;
        // Fetch all needed epochs in one KM request.
        let mut epochs: Vec<u64> = page
            .messages
            .iter()
            .filter_map(|m| message::peek_header(&m.envelope).ok())
            .filter(|h| h.v == 1)
            .map(|h| h.epoch)
            .filter(|e| !shredded.contains(e))
            .collect();
        epochs.sort_unstable();
        epochs.dedup();
        let me = self.user().clone();
        let readable: Vec<u64> = self
            .with_state(room, true, |st| {
                epochs
                    .into_iter()
                    .filter(|e| st.may_read(&me, *e))
                    .collect()
            })
            .await?;
        if !readable.is_empty() {
            self.room_keys(room, &readable).await?;
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(page.messages.len());
        for m in &page.messages {
            if let Ok(h) = message::peek_header(&m.envelope)
                && shredded.contains(&h.epoch)
            {
                out.push(Err(ClientError::BadMessage {
                    id: h.id.to_hex(),
                    reason: format!(
                        "expired: the key of epoch {} was destroyed by retention",
                        h.epoch
                    ),
                }));
                continue;
            }
            let r = self.open_envelope(room, m.seq, &m.envelope).await;
            if let Ok(rc) = &r
                && rc.sender != *self.user()
            {
                // The recipient's capture into this firm's own vault
                // (idempotent there), whichever firm the sender is of.
                if let Err(e) = self
                    .capture_envelope(room, &m.envelope, &rc.content, &rc.attribution, true)
                    .await
                {
                    tracing::warn!(message = %rc.id, "capture of a received message failed: {e}");
                }
            }
            let r = match r {
                Ok(rc) if !seen.insert(rc.id) => {
                    let reason = format!(
                        "message {} from {} appears twice (at seq {}): replayed",
                        rc.id, rc.sender, rc.seq
                    );
                    self.alert(reason.clone());
                    Err(ClientError::BadMessage {
                        id: rc.id.to_hex(),
                        reason,
                    })
                }
                other => other,
            };
            out.push(r);
        }
        self.check_page(room, &mut out, before.is_none())?;
        Ok(out)
    }

    /// One message from the live stream: verified, decrypted, and checked
    /// against what this device remembers (replays refused; gaps and
    /// disorder alerted).
    pub async fn receive(&self, room: &RoomId, seq: u64, env: &Envelope) -> Result<Received> {
        let m = self.open_envelope(room, seq, env).await?;
        self.check_live(room, &m)?;
        Ok(m)
    }

    /// Connect to the live event stream.
    pub async fn connect_events(&self) -> Result<api::EventStream> {
        let token = self.token().await?;
        api::EventStream::connect(&self.profile.server, &token, &self.tls).await
    }

    /// The live socket with posting: events as [`Self::connect_events`]
    /// gives them, and a [`crate::Poster`] that posts sealed messages
    /// through the same socket instead of one HTTP request each.
    pub async fn connect_live(&self) -> Result<crate::Live> {
        let token = self.token().await?;
        crate::Live::connect(&self.profile.server, &token, &self.tls).await
    }

    /// Follow a room live: verified, decrypted messages as they arrive.
    ///
    /// Not cancel-safe: an event is taken from the stream before it is
    /// verified (which may fetch a key), so dropping this future part way
    /// (a `timeout` around it) can lose that message. Put a timeout around
    /// [`api::EventStream::next`] instead and call [`Client::receive`], or
    /// catch up from history after the last seq seen.
    pub async fn next_message(
        &self,
        stream: &mut api::EventStream,
        room: &RoomId,
    ) -> Result<Option<Received>> {
        loop {
            match stream.next().await? {
                None => return Ok(None),
                Some(Event::Message {
                    room: r,
                    seq,
                    envelope,
                }) if r == *room => match self.receive(room, seq, &envelope).await {
                    Ok(m) => return Ok(Some(m)),
                    // a replay: alerted, not shown
                    Err(ClientError::BadMessage { reason, .. }) if reason.contains("replayed") => {
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                Some(Event::KeysShredded { room: r, notice }) => {
                    self.on_keys_shredded(&r, &notice)?
                }
                Some(_) => continue,
            }
        }
    }
}

/// A message id that sorts by time: the send time in milliseconds (48 bits,
/// big-endian) then 80 random bits. Stores index ids in arrival order, so a
/// batch of new messages touches the index's last page instead of one
/// random page each; 80 random bits keep ids unguessable (nobody can claim
/// another device's next id in advance).
pub(crate) fn ordered_id(ts: u64) -> Result<MessageId> {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&ts.to_be_bytes()[2..]);
    id[6..].copy_from_slice(&cloister_crypto::random_bytes::<10>()?);
    Ok(MessageId(id))
}
