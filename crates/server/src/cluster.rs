//! Several server nodes on one database: live events between them over
//! NATS JetStream.
//!
//! ```text
//!  node A: writer ─commit─▶ fan-out ─▶ its own clients (through its sequencer)
//!                                 └──▶ NATS  cloister.<cluster>.<tenant>.room.<room>
//!                                            cloister.<cluster>.<tenant>.ctl
//!  node B: durable consumer "node-B" ─▶ sequencer ─▶ its clients
//! ```
//!
//! The database stays the source of truth: an event says what to deliver
//! or which cache is stale, and a node that missed events (it was down, or
//! the node that committed a message died before publishing it) gets them
//! from the database: its caches are rebuilt on start, a gap in a room's
//! chain of messages is read back from the store (`sequencer`). So events
//! are published without waiting for JetStream's acknowledgement and the
//! consumers do not acknowledge either (their position is kept by the
//! server); the stream keeps an hour of events for a node that restarts.
//!
//! A standing event carries nothing a node trusts: it only tells the node
//! to reload the deny list from the database. Message events carry the
//! sender-signed envelope that every recipient verifies.
//!
//! Every event is authenticated: its payload is an HMAC-SHA256 (under a key
//! derived from the session key the nodes share in the database) over the
//! subject and the event, then the event. A node drops an event whose tag
//! does not hold, so whoever can publish on the NATS server but cannot read
//! the database cannot make a node deliver, reorder or suppress anything
//! (a forged event at the next seq of a room would otherwise stand in for
//! the real message on that node's sockets).

use crate::hub::Hub;
use crate::sequencer::Sequencer;
use axum::extract::ws::Utf8Bytes;
use cloister_proto::server::{Envelope, Event};
use cloister_proto::{DeviceId, RoomId, TenantId, UserId};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long a node waits for a missing event before reading it from the
/// database.
const MAX_WAIT_MS: u64 = 300;

/// What a node needs to join a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// This node's name, stable across restarts (its durable consumer).
    pub node: String,
}

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid node name {0:?}: use 1-64 of A-Z, a-z, 0-9, '-' and '_'")]
    BadName(String),
    #[error("NATS at {url}: {reason}")]
    Nats { url: String, reason: String },
}

/// One delivery: an event for the members of a room (and, for messages,
/// the tenant's connected surveillance users on each node).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Delivery {
    pub tenant: TenantId,
    pub users: Vec<UserId>,
    pub skip: Option<DeviceId>,
    pub watchers: bool,
    pub event: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Kind {
    /// A stored message, chained in its room by `prev`.
    Message {
        room: RoomId,
        seq: u64,
        prev: u64,
        d: Delivery,
    },
    /// A room's state changed (membership, keys shredded): drop the cached
    /// state and deliver.
    Room { room: RoomId, d: Delivery },
    /// Standing changed (a device revoked, a user disabled or enabled).
    Standing,
    /// A tenant's controls or capture policy changed.
    Notices,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    node: String,
    #[serde(flatten)]
    kind: Kind,
}

/// This node's link to the others.
pub(crate) struct Node {
    client: async_nats::Client,
    name: String,
    /// Authenticates events between the nodes.
    key: [u8; 32],
    /// `cloister.<cluster>`
    prefix: String,
    seq: Mutex<Sequencer<Delivery>>,
}

/// Delivery of live events: straight to this node's clients, or through
/// the cluster.
#[derive(Clone)]
pub(crate) struct Fanout {
    hub: Hub,
    node: Option<Arc<Node>>,
}

impl Fanout {
    pub fn local(hub: Hub) -> Fanout {
        Fanout { hub, node: None }
    }

    /// `Err` when this node has lost NATS (its clients would miss what
    /// other nodes accept).
    pub fn ready(&self) -> Result<(), String> {
        match &self.node {
            Some(n) if n.client.connection_state() != async_nats::connection::State::Connected => {
                Err("NATS is not connected".into())
            }
            _ => Ok(()),
        }
    }

    /// Deliver to this node's connected clients now.
    pub fn deliver(&self, d: &Delivery) {
        let text: Utf8Bytes = d.event.as_str().into();
        if d.watchers {
            let watchers = self.hub.watchers(&d.tenant);
            let users = d
                .users
                .iter()
                .chain(watchers.iter().filter(|w| !d.users.contains(*w)));
            self.hub.send(users, d.skip, text);
        } else {
            self.hub.send(d.users.iter(), d.skip, text);
        }
    }

    /// A message committed at `seq` (after `prev` in its room).
    pub async fn message(&self, room: RoomId, seq: u64, prev: u64, d: Delivery) {
        let Some(n) = &self.node else {
            return self.deliver(&d);
        };
        n.publish(
            &d.tenant,
            Some(&room),
            Kind::Message {
                room,
                seq,
                prev,
                d: d.clone(),
            },
        )
        .await;
        n.offer_and_deliver(room, seq, prev, d, self);
    }

    /// A room's state changed; deliver its event here and on every node.
    pub async fn room(&self, room: RoomId, d: Delivery) {
        self.deliver(&d);
        if let Some(n) = &self.node {
            n.publish(&d.tenant.clone(), Some(&room), Kind::Room { room, d })
                .await;
        }
    }

    /// Standing changed: every other node reloads its deny list.
    pub async fn standing(&self, tenant: &TenantId) {
        if let Some(n) = &self.node {
            n.publish(tenant, None, Kind::Standing).await;
        }
    }

    /// Controls or capture policy changed: every other node reloads them.
    pub async fn notices(&self, tenant: &TenantId) {
        if let Some(n) = &self.node {
            n.publish(tenant, None, Kind::Notices).await;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Node {
    fn subject(&self, tenant: &TenantId, room: Option<&RoomId>) -> String {
        match room {
            Some(r) => format!("{}.{tenant}.room.{}", self.prefix, r.to_hex()),
            None => format!("{}.{tenant}.ctl", self.prefix),
        }
    }

    async fn publish(&self, tenant: &TenantId, room: Option<&RoomId>, kind: Kind) {
        let wire = Wire {
            node: self.name.clone(),
            kind,
        };
        let Ok(body) = serde_json::to_vec(&wire) else {
            return;
        };
        let subject = self.subject(tenant, room);
        let mut payload = event_tag(&self.key, &subject, &body).to_vec();
        payload.extend_from_slice(&body);
        // Into the stream without waiting for its acknowledgement: the
        // database is the source of truth (see the module's docs).
        if let Err(e) = self.client.publish(subject, payload.into()).await {
            tracing::warn!("cannot publish a live event to NATS: {e}");
        }
    }

    /// Offer an event to the room's chain and deliver what is ready, in
    /// order, while holding the chain: this node's writer and the bus
    /// consumer both deliver, and two deliveries decided one after the
    /// other must not reach a client the other way round. (Delivery only
    /// queues to each connection, without waiting.)
    fn offer_and_deliver(&self, room: RoomId, seq: u64, prev: u64, d: Delivery, f: &Fanout) {
        if let Ok(mut s) = self.seq.lock() {
            for ready in s.offer(room, seq, prev, d, now_ms()) {
                f.deliver(&ready);
            }
        }
    }
}

/// A node that joined, not yet consuming (the server it feeds is built
/// after the fan-out its writer needs).
pub(crate) struct Joined {
    messages: async_nats::jetstream::consumer::pull::Stream,
    node: Arc<Node>,
    fanout: Fanout,
}

/// Connect to NATS and make sure the cluster's stream and this node's
/// durable consumer exist. `cluster` is the id the database holds (every
/// node of one database shares it).
/// The key that authenticates a cluster's events, from the session key its
/// nodes share.
pub(crate) fn event_key(session_key: &[u8; 32]) -> [u8; 32] {
    cloister_crypto::hmac_sha256(session_key, &[b"cloister/cluster-event-key/v1"])
}

fn event_tag(key: &[u8; 32], subject: &str, body: &[u8]) -> [u8; 32] {
    cloister_crypto::hmac_sha256(
        key,
        &[
            b"cloister/cluster-event/v1",
            &(subject.len() as u64).to_be_bytes(),
            subject.as_bytes(),
            body,
        ],
    )
}

/// The event inside an authenticated payload, if its tag holds.
fn open_event<'a>(key: &[u8; 32], subject: &str, payload: &'a [u8]) -> Option<&'a [u8]> {
    let (tag, body) = payload.split_at_checked(32)?;
    cloister_crypto::ct_eq(tag, &event_tag(key, subject, body)).then_some(body)
}

pub(crate) async fn join(
    cfg: &ClusterConfig,
    cluster: &str,
    key: [u8; 32],
    hub: Hub,
) -> Result<(Fanout, Joined), ClusterError> {
    use async_nats::jetstream::{self, consumer, stream};
    if !valid_name(&cfg.node) {
        return Err(ClusterError::BadName(cfg.node.clone()));
    }
    let nats = |e: &dyn std::fmt::Display| ClusterError::Nats {
        url: cfg.nats_url.clone(),
        reason: e.to_string(),
    };
    let client = async_nats::ConnectOptions::new()
        .name(format!("cloister-server {}", cfg.node))
        .connect(&cfg.nats_url)
        .await
        .map_err(|e| nats(&e))?;
    let js = jetstream::new(client.clone());
    let prefix = format!("cloister.{cluster}");
    let st = js
        .get_or_create_stream(stream::Config {
            name: format!("CLOISTER_{cluster}"),
            subjects: vec![format!("{prefix}.>")],
            max_age: Duration::from_secs(3600),
            max_bytes: 1 << 30,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let durable = format!("node-{}", cfg.node);
    let consumer = st
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| nats(&e))?;
    let messages = consumer.messages().await.map_err(|e| nats(&e))?;
    let node = Arc::new(Node {
        client,
        name: cfg.node.clone(),
        key,
        prefix,
        seq: Mutex::new(Sequencer::new(MAX_WAIT_MS)),
    });
    let fanout = Fanout {
        hub,
        node: Some(node.clone()),
    };
    let joined = Joined {
        messages,
        node,
        fanout: fanout.clone(),
    };
    Ok((fanout, joined))
}

impl Joined {
    /// Consume the cluster's events for `server`, and fill gaps from its
    /// store, until the server is dropped.
    pub fn start(self, server: Weak<crate::Server>) {
        let Joined {
            mut messages,
            node,
            fanout: f,
        } = self;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(MAX_WAIT_MS / 3));
            loop {
                tokio::select! {
                    m = messages.next() => match m {
                        Some(Ok(m)) => {
                            let Some(s) = server.upgrade() else { break };
                            apply(&s, &f, &node, m.subject.as_str(), &m.payload).await;
                        }
                        Some(Err(e)) => tracing::warn!("NATS consumer: {e}"),
                        None => break,
                    },
                    _ = tick.tick() => {
                        let Some(s) = server.upgrade() else { break };
                        fill_gaps(&s, &f, &node).await;
                    }
                }
            }
        });
    }
}

async fn apply(s: &crate::Server, f: &Fanout, node: &Node, subject: &str, payload: &[u8]) {
    let Some(body) = open_event(&node.key, subject, payload) else {
        tracing::warn!(
            subject,
            "ignoring a cluster event this cluster did not sign"
        );
        return;
    };
    let Ok(w) = serde_json::from_slice::<Wire>(body) else {
        tracing::warn!("ignoring a malformed cluster event");
        return;
    };
    if w.node == node.name {
        return;
    }
    match w.kind {
        Kind::Message { room, seq, prev, d } => {
            node.offer_and_deliver(room, seq, prev, d, f);
        }
        Kind::Room { room, d } => {
            s.forget_room(&room);
            f.deliver(&d);
        }
        Kind::Standing => {
            if let Err(e) = s.reload_standing().await {
                tracing::error!("cannot reload the deny list: {e}");
            }
        }
        Kind::Notices => {
            if let Err(e) = s.reload_notices().await {
                tracing::error!("cannot reload controls and capture policies: {e}");
            }
        }
    }
}

/// Rooms whose chain waits too long: read the missing messages from the
/// database and deliver them in order.
async fn fill_gaps(s: &crate::Server, f: &Fanout, node: &Node) {
    let overdue = match node.seq.lock() {
        Ok(q) => q.overdue(now_ms()),
        Err(_) => return,
    };
    for (room, last, first) in overdue {
        // a room whose place is not known starts at its earliest event;
        // otherwise the database has what fell between
        let gap = match last {
            None => Vec::new(),
            Some(last) => match s.gap(&room, last, first).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(%room, "cannot read a gap in the live events: {e}");
                    Vec::new()
                }
            },
        };
        // delivered under the chain, as `offer_and_deliver`
        let Ok(mut q) = node.seq.lock() else {
            return;
        };
        for d in q.fill(room, gap) {
            f.deliver(&d);
        }
    }
}

/// A stored message as the live event its node would have sent.
pub(crate) fn message_event(room: RoomId, seq: u64, envelope: Envelope) -> Option<String> {
    serde_json::to_string(&Event::Message {
        room,
        seq,
        envelope,
    })
    .ok()
}

/// What a node reloads when another node says its copy is stale.
impl crate::Server {
    /// Drop this node's copy of a room's state (another node changed it).
    pub(crate) fn forget_room(&self, room: &RoomId) {
        if let Ok(mut m) = self.rooms.lock() {
            m.remove(room);
        }
    }

    /// Rebuild the deny list from the database and close the connections
    /// of every device and user it now denies.
    async fn reload_standing(&self) -> Result<(), cloister_store::StoreError> {
        use cloister_standing::Facts;
        let deny = crate::load_deny(&*self.store).await?;
        self.hub
            .drop_if(|user, device| deny.is_disabled(user) || deny.is_revoked(device));
        if let Ok(mut d) = self.deny.write() {
            *d = deny;
        }
        Ok(())
    }

    async fn reload_notices(&self) -> Result<(), crate::ServerError> {
        self.load_controls().await?;
        let capture = crate::load_capture(&*self.store).await?;
        if let Ok(mut c) = self.capture.write() {
            *c = capture;
        }
        Ok(())
    }

    /// The messages of `room` after `last` and before `first`, as the
    /// deliveries their nodes would have sent.
    async fn gap(
        &self,
        room: &RoomId,
        last: u64,
        first: u64,
    ) -> Result<Vec<(u64, Delivery)>, cloister_store::StoreError> {
        let Ok(Some(st)) = self.room(room).await else {
            return Ok(Vec::new());
        };
        let rows = self.store.history(room, first, 1000).await?;
        let mut out = Vec::new();
        for r in rows.into_iter().filter(|r| r.seq > last) {
            let Ok(sig) = <[u8; 64]>::try_from(r.sig.as_slice()) else {
                continue;
            };
            let envelope = Envelope {
                header: r.header.into(),
                ciphertext: r.ciphertext.into(),
                sig: cloister_proto::b64::Fixed(sig),
                receipt: None,
            };
            // the sender's device has its own message already
            let skip = cloister_crypto::message::peek_header(&envelope)
                .ok()
                .map(|h| h.device);
            if let Some(event) = message_event(*room, r.seq, envelope) {
                out.push((
                    r.seq,
                    Delivery {
                        tenant: st.tenant.clone(),
                        users: st.members.iter().cloned().collect(),
                        skip,
                        watchers: true,
                        event,
                    },
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_opens_only_under_its_key_and_subject() {
        let key = event_key(&[7; 32]);
        let body = br#"{"node":"a","t":"standing"}"#;
        let mut payload = event_tag(&key, "cloister.x.acme.ctl", body).to_vec();
        payload.extend_from_slice(body);
        assert_eq!(
            open_event(&key, "cloister.x.acme.ctl", &payload),
            Some(&body[..])
        );
        // another subject, another key, a changed byte, a short payload
        assert_eq!(open_event(&key, "cloister.x.other.ctl", &payload), None);
        assert_eq!(
            open_event(&event_key(&[8; 32]), "cloister.x.acme.ctl", &payload),
            None
        );
        let mut bad = payload.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(open_event(&key, "cloister.x.acme.ctl", &bad), None);
        assert_eq!(
            open_event(&key, "cloister.x.acme.ctl", &payload[..31]),
            None
        );
        assert_eq!(open_event(&key, "cloister.x.acme.ctl", body), None);
    }
}
