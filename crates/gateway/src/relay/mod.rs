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

mod inbound;
mod outbound;

/// Attempts at one message before it is reported undeliverable.
pub const MAX_ATTEMPTS: u32 = 8;
/// How long transaction and event ids are kept to recognise a retry.
const KEEP_IDS_MS: u64 = 7 * 24 * 3_600_000;
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
    /// Unreadable messages already reported (room, message id).
    unreadable: Mutex<HashSet<(RoomId, String)>>,
    /// Failed attempts at the next outbound message of a room: (seq, n).
    out_attempts: Mutex<HashMap<RoomId, (u64, u32)>>,
    /// One pass at a time; when ids were last pruned.
    pass: tokio::sync::Mutex<u64>,
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
            unreadable: Mutex::new(HashSet::new()),
            out_attempts: Mutex::new(HashMap::new()),
            pass: tokio::sync::Mutex::new(0),
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
        let mut pruned = self.pass.lock().await;
        let now = now_millis();
        if now.saturating_sub(*pruned) > 3_600_000 {
            self.store
                .prune_transactions(now.saturating_sub(KEEP_IDS_MS))
                .await?;
            *pruned = now;
        }
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

    /// Follow every bridged room this gateway is a member of. The bridge
    /// (above all its contact) is read from the membership log this device
    /// replayed and verified, never from the server's room list.
    async fn discover(&self) -> Result<(), GatewayError> {
        let known: HashSet<String> = self
            .store
            .conversations()
            .await?
            .into_iter()
            .map(|c| c.room)
            .collect();
        for r in self.client.list_rooms().await? {
            if known.contains(&r.room.to_hex())
                || self.not_bridged.lock().is_ok_and(|n| n.contains(&r.room))
            {
                continue;
            }
            let verified = match self.client.room_state(&r.room).await {
                Ok(st) => st,
                Err(e) => {
                    tracing::warn!(room = %r.room, "room not followed: {e}");
                    continue;
                }
            };
            match self.bridge_of(&verified.settings) {
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
