//! What a network connector provides (Matrix here; WhatsApp, SMS or
//! WeChat the same way): canonical contact addresses, conversations opened
//! on behalf of the firm's users, idempotent sending, taking part in a
//! conversation a contact started, and a webhook that receives what the
//! network pushes. The relay (`crate::relay`) does everything Cloister-side
//! (keys, capture, controls, retries, reports) once for all networks.
//!
//! | network | receiving | sending as the firm's user | idempotency key |
//! |---|---|---|---|
//! | Matrix | application-service transactions (`PUT /_matrix/app/v1/transactions/{txn}`) | puppeted users in the service's namespace | the event's transaction id |
//! | WhatsApp Business (Cloud API) | webhook of message events, signed (`X-Hub-Signature-256`) | one business number per firm (users as named senders) | the message's `biz_opaque_callback_data` |
//! | SMS (an SMS provider's API) | delivery and inbound webhooks | a number per user or a shared sender id | the provider's client reference |
//! | WeChat (Official Account / WeCom) | callback URL, AES-encrypted events | the account, users as agents | the message's `msgid` |

use cloister_proto::UserId;
use serde::{Deserialize, Serialize};

/// A message's body on the way across.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Text { text: String },
    File { name: String, data: Vec<u8> },
}

/// What a network pushed: a message from a contact, or a contact starting
/// a conversation with one of the firm's users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Inbound {
    Message {
        /// The conversation on the network.
        conversation: String,
        /// The contact who wrote it.
        from: String,
        body: Body,
    },
    Invite {
        conversation: String,
        from: String,
        /// The firm's user the contact wants to talk with.
        to: UserId,
    },
}

/// One pushed item with its network-wide unique id (dedup key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    pub id: String,
    pub item: Inbound,
}

/// How the network took a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Accepted by the network (the homeserver, the carrier).
    Accepted,
    /// Shown as read by the contact.
    Read,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Worth retrying (the network is down, rate-limited, timed out).
    #[error("{0} (will retry)")]
    Transient(String),
    /// Retrying will not help (no such contact, refused, malformed).
    #[error("{0}")]
    Permanent(String),
}

impl ConnectorError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectorError::Transient(_))
    }
}

/// Where a connector's webhook hands what the network pushed: stored
/// durably (with the network's transaction id, so a retried push is taken
/// once) before the network is told it arrived.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// `Ok(false)`: this transaction was taken before (a retry).
    async fn take(&self, network: &str, txn: &str, items: Vec<Pushed>) -> Result<bool, String>;
}

/// A network the gateway bridges to.
#[async_trait::async_trait]
pub trait Connector: Send + Sync {
    /// The network's name in bridged rooms' settings (`matrix`).
    fn network(&self) -> &str;

    /// A contact address in canonical form, or why it is not one.
    fn contact(&self, address: &str) -> Result<String, ConnectorError>;

    /// Make the conversation between `user` (shown as themselves) and
    /// `contact` on the network; returns its id there.
    async fn open(&self, user: &UserId, contact: &str) -> Result<String, ConnectorError>;

    /// Deliver one message of `user` into `conversation` (opened for
    /// `opener`). Idempotent under `id`: sent again after a crash, the
    /// network keeps one copy.
    async fn send(
        &self,
        conversation: &str,
        opener: &UserId,
        user: &UserId,
        id: &str,
        body: &Body,
    ) -> Result<Delivery, ConnectorError>;

    /// Take part, as `user`, in a conversation a contact started.
    async fn accept(&self, conversation: &str, user: &UserId) -> Result<(), ConnectorError>;

    /// Turn down a conversation a contact started with `user`, saying why.
    async fn decline(
        &self,
        conversation: &str,
        user: &UserId,
        reason: &str,
    ) -> Result<(), ConnectorError>;

    /// Tell the contact, in the conversation (as a notice of `user`'s
    /// side, not a message of theirs), that something was not delivered.
    async fn notice(
        &self,
        conversation: &str,
        user: &UserId,
        text: &str,
    ) -> Result<(), ConnectorError>;

    /// The webhook the network pushes to, handing items to `sink`.
    fn webhook(self: std::sync::Arc<Self>, sink: std::sync::Arc<dyn Sink>) -> axum::Router;
}
