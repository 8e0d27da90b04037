//! Out: the firm's users' new messages in a bridged room, by cursor, to
//! the network as those users; what will not cross is reported in the
//! room and kept in the failure record.

use super::*;

impl Gateway {
    /// The firm's users' new messages in one room, to the network.
    pub(super) async fn outbound(
        &self,
        conv: &Conversation,
        p: &mut Pass,
    ) -> Result<(), GatewayError> {
        let Some(conn) = self.connectors.get(&conv.network) else {
            return Ok(());
        };
        let room: RoomId = conv
            .room
            .parse()
            .map_err(|_| GatewayError::Other(format!("bad room id {}", conv.room)))?;
        for m in self.unrelayed(&room, conv.cursor).await? {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    // unreadable here (a forged or tampered message): kept
                    // in the failure record once; the cursor moves past it
                    // with the next message that crosses
                    let id = match &e {
                        ClientError::BadMessage { id, .. } => id.clone(),
                        _ => "?".into(),
                    };
                    let first = self
                        .unreadable
                        .lock()
                        .is_ok_and(|mut u| u.insert((room, id.clone())));
                    if first {
                        self.fail("outbound", Some(&conv.room), &id, &e.to_string(), p)
                            .await?;
                    }
                    continue;
                }
            };
            if m.sender == *self.me() {
                self.store.advance_cursor(&conv.room, m.seq).await?;
                continue;
            }
            let body = match self.body_of(&room, &m.content).await {
                Ok(b) => b,
                Err(why) => {
                    self.report_out(conv, &room, &m, &why, p).await?;
                    continue;
                }
            };
            let conv = match &conv.remote {
                Some(_) => conv.clone(),
                None => match conn.open(&m.sender, &conv.contact).await {
                    Ok(remote) => {
                        self.store
                            .set_remote(&conv.room, &remote, m.sender.as_str())
                            .await?;
                        Conversation {
                            remote: Some(remote),
                            opener: Some(m.sender.as_str().to_owned()),
                            ..conv.clone()
                        }
                    }
                    Err(e) => {
                        self.attempt_failed(conv, &room, &m, e, p).await?;
                        return Ok(());
                    }
                },
            };
            let (Some(remote), Some(opener)) = (&conv.remote, conv.opener_user()) else {
                return Ok(());
            };
            tracing::debug!(room = %conv.room, seq = m.seq, %remote, "relaying out");
            match conn
                .send(remote, &opener, &m.sender, &m.id.to_hex(), &body)
                .await
            {
                Ok(_) => {
                    self.store.advance_cursor(&conv.room, m.seq).await?;
                    if let Ok(mut a) = self.out_attempts.lock() {
                        a.remove(&room);
                    }
                    p.sent_out += 1;
                }
                Err(e) => {
                    if self.attempt_failed(&conv, &room, &m, e, p).await? {
                        continue;
                    }
                    // later messages wait: the order is kept
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A failed attempt: `true` if it was the last (reported; move on).
    async fn attempt_failed(
        &self,
        conv: &Conversation,
        room: &RoomId,
        m: &cloister_client::Received,
        e: ConnectorError,
        p: &mut Pass,
    ) -> Result<bool, GatewayError> {
        let n = {
            let mut a = self
                .out_attempts
                .lock()
                .map_err(|_| GatewayError::Other("attempts lock".into()))?;
            let entry = a.entry(*room).or_insert((m.seq, 0));
            if entry.0 != m.seq {
                *entry = (m.seq, 0);
            }
            entry.1 += 1;
            entry.1
        };
        if e.is_transient() && n < MAX_ATTEMPTS {
            tracing::info!(room = %conv.room, attempt = n, "outbound retry: {e}");
            return Ok(false);
        }
        self.report_out(conv, room, m, &e.to_string(), p).await?;
        if let Ok(mut a) = self.out_attempts.lock() {
            a.remove(room);
        }
        Ok(true)
    }

    /// An outbound message that will not cross: said in the room (by the
    /// gateway), kept in the failure record, and the cursor moves on.
    async fn report_out(
        &self,
        conv: &Conversation,
        room: &RoomId,
        m: &cloister_client::Received,
        why: &str,
        p: &mut Pass,
    ) -> Result<(), GatewayError> {
        self.fail("outbound", Some(&conv.room), &m.id.to_hex(), why, p)
            .await?;
        let text = format!(
            "Not delivered to {} on {}: message {} of {} ({why})",
            conv.contact,
            conv.network,
            m.id.to_hex(),
            m.sender
        );
        self.client.send_text(room, &text).await?;
        self.store.advance_cursor(&conv.room, m.seq).await?;
        Ok(())
    }

    /// The room's messages after `cursor`, oldest first.
    async fn unrelayed(
        &self,
        room: &RoomId,
        cursor: u64,
    ) -> Result<Vec<Result<cloister_client::Received, ClientError>>, GatewayError> {
        let mut pages: Vec<Vec<Result<cloister_client::Received, ClientError>>> = Vec::new();
        let mut before = None;
        loop {
            let page = self.client.read(room, PAGE, before).await?;
            let oldest = page
                .iter()
                .filter_map(|m| m.as_ref().ok())
                .map(|m| m.seq)
                .min();
            let full = page.len() as u32 >= PAGE;
            pages.push(page);
            match oldest {
                Some(o) if full && o > cursor + 1 => before = Some(o),
                _ => break,
            }
        }
        let mut out = Vec::new();
        for page in pages.into_iter().rev() {
            for m in page {
                match &m {
                    Ok(r) if r.seq <= cursor => {}
                    _ => out.push(m),
                }
            }
        }
        Ok(out)
    }

    /// What crosses for a Cloister message (a file is fetched, decrypted
    /// and checked first).
    async fn body_of(&self, room: &RoomId, c: &Content) -> Result<Body, String> {
        match c {
            Content::Text { text } => Ok(Body::Text { text: text.clone() }),
            Content::File { name, .. } => {
                let dir = tempfile_dir().map_err(|e| e.to_string())?;
                let path = dir.join("file");
                let r = self.client.get_file(c, &path).await;
                let data = r
                    .map_err(|e| format!("the file could not be fetched: {e}"))
                    .and_then(|_| std::fs::read(&path).map_err(|e| e.to_string()));
                let _ = std::fs::remove_dir_all(&dir);
                let _ = room;
                Ok(Body::File {
                    name: name.clone(),
                    data: data?,
                })
            }
            Content::Relayed { .. } => Err("a relayed message does not cross again".into()),
        }
    }
}
