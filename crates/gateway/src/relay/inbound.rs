//! In: what a network pushed (stored by the webhook), posted in order as
//! `relayed` messages of the room's contact, or a conversation the contact
//! starts; what will not cross is told to the contact and kept.

use super::*;

impl Gateway {
    /// What the networks pushed, into Cloister.
    pub(super) async fn inbound(&self, p: &mut Pass) -> Result<(), GatewayError> {
        loop {
            let rows = self.store.inbox(PAGE).await?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in rows {
                let item: Inbound = match serde_json::from_slice(&row.body) {
                    Ok(i) => i,
                    Err(e) => {
                        self.fail("inbound", None, &row.remote_id, &e.to_string(), p)
                            .await?;
                        self.store.inbox_done(row.id).await?;
                        continue;
                    }
                };
                let Some(conn) = self.connectors.get(&row.network).cloned() else {
                    continue;
                };
                match self
                    .take_in(&*conn, &row.remote_id, &item, row.attempts > 0)
                    .await
                {
                    Ok(()) => {
                        if matches!(item, Inbound::Message { .. }) {
                            p.posted_in += 1;
                        }
                        self.store.inbox_done(row.id).await?;
                    }
                    Err(e) if transient(&e) => {
                        let n = self.store.inbox_retry(row.id, &e.to_string()).await?;
                        if n < MAX_ATTEMPTS {
                            // in order: what came after waits
                            return Ok(());
                        }
                        self.report_in(&*conn, &row.remote_id, &item, &e.to_string(), p)
                            .await?;
                        self.store.inbox_done(row.id).await?;
                    }
                    Err(e) => {
                        self.report_in(&*conn, &row.remote_id, &item, &e.to_string(), p)
                            .await?;
                        self.store.inbox_done(row.id).await?;
                    }
                }
            }
        }
    }

    /// An inbound item that will not cross: told to the contact, kept in
    /// the failure record.
    async fn report_in(
        &self,
        conn: &dyn Connector,
        remote_id: &str,
        item: &Inbound,
        why: &str,
        p: &mut Pass,
    ) -> Result<(), GatewayError> {
        let (conversation, room) = match item {
            Inbound::Message { conversation, .. } | Inbound::Invite { conversation, .. } => (
                conversation,
                self.store
                    .conversation_of_remote(conn.network(), conversation)
                    .await?,
            ),
        };
        self.fail(
            "inbound",
            room.as_ref().map(|c| c.room.as_str()),
            remote_id,
            why,
            p,
        )
        .await?;
        match item {
            Inbound::Invite { to, .. } => {
                let reason = format!("{to} cannot take this conversation: {why}");
                if let Err(e) = conn.decline(conversation, to, &reason).await {
                    tracing::warn!("decline: {e}");
                }
            }
            Inbound::Message { .. } => {
                if let Some(opener) = room.as_ref().and_then(|c| c.opener_user()) {
                    let text = format!("Not delivered to Cloister: {why}");
                    if let Err(e) = conn.notice(conversation, &opener, &text).await {
                        tracing::warn!("notice: {e}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Take one inbound item into Cloister. `retry`: an earlier attempt
    /// may have posted it already (look before posting again).
    async fn take_in(
        &self,
        conn: &dyn Connector,
        remote_id: &str,
        item: &Inbound,
        retry: bool,
    ) -> Result<(), ClientError> {
        let network = conn.network();
        match item {
            Inbound::Invite {
                conversation,
                from,
                to,
            } => {
                if self
                    .store
                    .conversation_of_remote(network, conversation)
                    .await
                    .map_err(|e| ClientError::Local(e.to_string()))?
                    .is_none()
                {
                    let settings = RoomSettings {
                        name: format!("{from} ({network})"),
                        bridge: Some(Bridge {
                            network: network.to_owned(),
                            contact: from.clone(),
                            gateway: self.me().clone(),
                        }),
                        ..RoomSettings::default()
                    };
                    let room = self
                        .client
                        .create_room(settings, std::slice::from_ref(to))
                        .await?;
                    let local = |e: cloister_store::StoreError| ClientError::Local(e.to_string());
                    self.store
                        .add_conversation(&room.to_hex(), network, from)
                        .await
                        .map_err(local)?;
                    self.store
                        .set_remote(&room.to_hex(), conversation, to.as_str())
                        .await
                        .map_err(local)?;
                }
                conn.accept(conversation, to)
                    .await
                    .map_err(|e| ClientError::Local(e.to_string()))
            }
            Inbound::Message {
                conversation,
                from,
                body,
            } => {
                let conv = self
                    .store
                    .conversation_of_remote(network, conversation)
                    .await
                    .map_err(|e| ClientError::Local(e.to_string()))?
                    .ok_or_else(|| {
                        ClientError::Input(format!(
                            "no bridged room follows the {network} conversation {conversation}"
                        ))
                    })?;
                if *from != conv.contact {
                    return Err(ClientError::Input(format!(
                        "{from} is not the bridged room's contact ({}): only the contact is relayed",
                        conv.contact
                    )));
                }
                let room: RoomId = conv
                    .room
                    .parse()
                    .map_err(|_| ClientError::Local("bad room id".into()))?;
                if retry && self.already_posted(&room, remote_id).await? {
                    return Ok(());
                }
                let inner = match body {
                    Body::Text { text } => Content::Text { text: text.clone() },
                    Body::File { name, data } => {
                        let dir = tempfile_dir().map_err(|e| ClientError::Local(e.to_string()))?;
                        let path = dir.join(sanitize(name));
                        std::fs::write(&path, data)
                            .map_err(|e| ClientError::Local(e.to_string()))?;
                        let c = self.client.upload_file(&room, &path).await;
                        let _ = std::fs::remove_dir_all(&dir);
                        c?
                    }
                };
                let content = Content::Relayed {
                    network: network.to_owned(),
                    from: from.clone(),
                    id: remote_id.to_owned(),
                    content: Box::new(inner),
                };
                self.client.send(&room, &content).await.map(|_| ())
            }
        }
    }

    /// Whether a relayed message with the network's id `remote_id` is in
    /// the room's newest page (a crash after posting, before the inbox
    /// knew).
    async fn already_posted(&self, room: &RoomId, remote_id: &str) -> Result<bool, ClientError> {
        Ok(self
            .client
            .read(room, PAGE, None)
            .await?
            .iter()
            .filter_map(|m| m.as_ref().ok())
            .any(|m| matches!(&m.content, Content::Relayed { id, .. } if id == remote_id)))
    }
}
