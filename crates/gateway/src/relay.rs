//! The Cloister side of the gateway, the same for every network: it is a
//! KM-certified device of the firm's gateway user, a member of each bridged
//! room. Out: it reads what the firm's users send (a logged key release;
//! captured as received) and hands it to the network as that user. In: it
//! posts what the room's contact sends as a `relayed` message (captured as
//! sent). Where a message cannot cross, it is retried, then reported on
//! the side it came from and kept in the failure record; never dropped.

use crate::connector::{Body, Connector, ConnectorError, Inbound, Pushed, Sink};
use cloister_client::{Client, ClientError};
use cloister_proto::room::{Bridge, RoomSettings};
use cloister_proto::server::Content;
use cloister_proto::{RoomId, UserId, now_millis};
use cloister_store::{Conversation, Failure, GatewayStore};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Attempts at one message before it is reported undeliverable.
pub const MAX_ATTEMPTS: u32 = 8;
/// Messages read from a room per page.
const PAGE: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cloister: {0}")]
    Client(#[from] ClientError),
    #[error("gateway store: {0}")]
    Store(#[from] cloister_store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub sent_out: u32,
    pub posted_in: u32,
    pub failed: u32,
}

pub struct Gateway {
    client: Arc<Client>,
    store: Arc<GatewayStore>,
    connectors: BTreeMap<String, Arc<dyn Connector>>,
    wake: Arc<Notify>,
    /// Rooms seen not to be bridged to this gateway.
    not_bridged: Mutex<HashSet<RoomId>>,
    /// Failed attempts at the next outbound message of a room: (seq, n).
    out_attempts: Mutex<HashMap<RoomId, (u64, u32)>>,
    /// One pass at a time.
    pass: tokio::sync::Mutex<()>,
}

/// The webhook's sink: a pushed transaction goes to the store's inbox.
struct StoreSink {
    store: Arc<GatewayStore>,
    wake: Arc<Notify>,
}

#[async_trait::async_trait]
impl Sink for StoreSink {
    async fn take(&self, network: &str, txn: &str, items: Vec<Pushed>) -> Result<bool, String> {
        let mut rows = Vec::with_capacity(items.len());
        for p in items {
            let body = serde_json::to_vec(&p.item).map_err(|e| e.to_string())?;
            rows.push((p.id, body));
        }
        let new = self
            .store
            .accept_transaction(network, txn, now_millis(), &rows)
            .await
            .map_err(|e| e.to_string())?;
        if new {
            self.wake.notify_one();
        }
        Ok(new)
    }
}

fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Network { .. } => true,
        ClientError::Api(a) => a.status >= 500 || a.status == 429 || a.code == "stale_epoch",
        _ => false,
    }
}

impl Gateway {
    pub fn new(
        client: Arc<Client>,
        store: Arc<GatewayStore>,
        connectors: Vec<Arc<dyn Connector>>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            client,
            store,
            connectors: connectors
                .into_iter()
                .map(|c| (c.network().to_owned(), c))
                .collect(),
            wake: Arc::new(Notify::new()),
            not_bridged: Mutex::new(HashSet::new()),
            out_attempts: Mutex::new(HashMap::new()),
            pass: tokio::sync::Mutex::new(()),
        })
    }

    pub fn me(&self) -> &UserId {
        self.client.user()
    }

    /// The gateway's own Cloister device.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn store(&self) -> &GatewayStore {
        &self.store
    }

    /// Every connector's webhook, on one router.
    pub fn router(&self) -> axum::Router {
        let sink: Arc<dyn Sink> = Arc::new(StoreSink {
            store: self.store.clone(),
            wake: self.wake.clone(),
        });
        self.connectors.values().fold(axum::Router::new(), |r, c| {
            r.merge(c.clone().webhook(sink.clone()))
        })
    }

    /// Relay until `stop`: a pass whenever Cloister or a network has
    /// something, and every `every` anyway.
    pub async fn run(self: Arc<Self>, every: std::time::Duration, stop: impl std::future::Future) {
        let events = tokio::spawn(self.clone().follow_events());
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!("gateway pass: {e}");
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
        events.abort();
    }

    /// Wake a pass on every Cloister event (reconnecting as needed).
    async fn follow_events(self: Arc<Self>) {
        loop {
            match self.client.connect_events().await {
                Ok(mut s) => {
                    while let Ok(Some(_)) = s.next().await {
                        self.wake.notify_one();
                    }
                }
                Err(e) => tracing::warn!("gateway event stream: {e}"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// One pass: new bridged rooms, then what waits in either direction.
    pub async fn pass(&self) -> Result<Pass, GatewayError> {
        let _one = self.pass.lock().await;
        tracing::debug!("gateway pass");
        let mut p = Pass::default();
        self.discover().await?;
        self.inbound(&mut p).await?;
        for conv in self.store.conversations().await? {
            if let Err(e) = self.outbound(&conv, &mut p).await {
                tracing::warn!(room = %conv.room, "outbound: {e}");
            }
        }
        Ok(p)
    }

    fn bridge_of(&self, settings: &RoomSettings) -> Option<Bridge> {
        settings
            .bridge
            .clone()
            .filter(|b| b.gateway == *self.me() && self.connectors.contains_key(&b.network))
    }

    /// Follow every bridged room this gateway is a member of.
    async fn discover(&self) -> Result<(), GatewayError> {
        for r in self.client.list_rooms().await? {
            if self.not_bridged.lock().is_ok_and(|n| n.contains(&r.room)) {
                continue;
            }
            match self.bridge_of(&r.settings) {
                Some(b) => {
                    self.store
                        .add_conversation(&r.room.to_hex(), &b.network, &b.contact)
                        .await?;
                }
                None => {
                    if let Ok(mut n) = self.not_bridged.lock() {
                        n.insert(r.room);
                    }
                }
            }
        }
        Ok(())
    }

    async fn fail(
        &self,
        direction: &str,
        room: Option<&str>,
        item: &str,
        reason: &str,
        p: &mut Pass,
    ) -> Result<(), GatewayError> {
        tracing::warn!(direction, room, item, "not delivered: {reason}");
        p.failed += 1;
        self.store
            .record_failure(&Failure {
                direction: direction.into(),
                room: room.map(str::to_owned),
                item: item.into(),
                reason: reason.into(),
                at_ms: now_millis(),
            })
            .await?;
        Ok(())
    }

    /// The firm's users' new messages in one room, to the network.
    async fn outbound(&self, conv: &Conversation, p: &mut Pass) -> Result<(), GatewayError> {
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
                    // unreadable here: reported, and the cursor moves past it
                    // with the next message that crosses
                    self.fail("outbound", Some(&conv.room), "?", &e.to_string(), p)
                        .await?;
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

    /// What the networks pushed, into Cloister.
    async fn inbound(&self, p: &mut Pass) -> Result<(), GatewayError> {
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

/// A private temporary folder for one file crossing.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    let d = std::env::temp_dir().join(format!("cloister-gateway-{}", hex::encode(b)));
    std::fs::create_dir(&d)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(d)
}

/// A file name safe to write (the contact chose it).
fn sanitize(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || ".-_ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    let n = n.trim_start_matches('.').to_owned();
    if n.is_empty() { "file".into() } else { n }
}
