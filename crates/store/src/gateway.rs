//! A gateway's storage: each bridged room's conversation on the other
//! network and how far it was relayed, the network's transactions (so a
//! retried one is taken once), the inbound messages not yet posted into
//! Cloister, and what could not be delivered (reported, never dropped).

use crate::Result;
use crate::db::{Db, Role};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A bridged room and its conversation on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The Cloister room (hex id).
    pub room: String,
    pub network: String,
    pub contact: String,
    /// The conversation's id on the network, once it exists there.
    pub remote: Option<String>,
    /// The Cloister user it was opened for (or by the contact with).
    pub opener: Option<String>,
    /// The newest Cloister seq relayed (or reported undeliverable).
    pub cursor: u64,
}

/// An inbound message waiting to be posted into Cloister.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub id: i64,
    pub network: String,
    pub remote_id: String,
    pub body: Vec<u8>,
    pub attempts: u32,
}

/// A message that could not be delivered, either way.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `outbound` (Cloister to the network) or `inbound`.
    pub direction: String,
    pub room: Option<String>,
    /// The message (Cloister message id, or the network's event id).
    pub item: String,
    pub reason: String,
    pub at_ms: u64,
}

pub struct GatewayStore {
    db: Db,
}

fn u64_of(v: i64) -> u64 {
    v.max(0) as u64
}

fn i64_of(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn conversation(r: &AnyRow) -> Result<Conversation> {
    Ok(Conversation {
        room: r.try_get("room")?,
        network: r.try_get("network")?,
        contact: r.try_get("contact")?,
        remote: r.try_get("remote")?,
        opener: r.try_get("opener")?,
        cursor: u64_of(r.try_get("cursor")?),
    })
}

/// The conversations query with a fixed tail (a static string for sqlx).
macro_rules! conversations {
    ($tail:literal) => {
        concat!(
            "SELECT room, network, contact, remote, opener, cursor FROM conversations ",
            $tail
        )
    };
}

impl Conversation {
    /// The Cloister user the conversation was opened for.
    pub fn opener_user(&self) -> Option<cloister_proto::UserId> {
        self.opener.as_deref().and_then(|o| o.parse().ok())
    }
}

impl GatewayStore {
    /// Open the database at `url` (`sqlite://…` or `postgres://…`).
    pub async fn open(url: &str) -> Result<Self> {
        Ok(GatewayStore {
            db: Db::open(url, Role::Gateway).await?,
        })
    }

    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await
    }

    /// Start following a bridged room (kept as it is if followed already).
    pub async fn add_conversation(&self, room: &str, network: &str, contact: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO conversations (room, network, contact) VALUES ($1, $2, $3)
             ON CONFLICT (room) DO NOTHING",
        )
        .bind(room)
        .bind(network)
        .bind(contact)
        .execute(&self.db.writer)
        .await?;
        Ok(())
    }

    /// The network's conversation for a room, once made there, and the
    /// user it was opened for.
    pub async fn set_remote(&self, room: &str, remote: &str, opener: &str) -> Result<()> {
        sqlx::query("UPDATE conversations SET remote = $1, opener = $2 WHERE room = $3")
            .bind(remote)
            .bind(opener)
            .bind(room)
            .execute(&self.db.writer)
            .await?;
        Ok(())
    }

    pub async fn conversation(&self, room: &str) -> Result<Option<Conversation>> {
        sqlx::query(conversations!("WHERE room = $1"))
            .bind(room)
            .fetch_optional(&self.db.readers)
            .await?
            .map(|r| conversation(&r))
            .transpose()
    }

    pub async fn conversation_of_remote(
        &self,
        network: &str,
        remote: &str,
    ) -> Result<Option<Conversation>> {
        sqlx::query(conversations!("WHERE network = $1 AND remote = $2"))
            .bind(network)
            .bind(remote)
            .fetch_optional(&self.db.readers)
            .await?
            .map(|r| conversation(&r))
            .transpose()
    }

    pub async fn conversations(&self) -> Result<Vec<Conversation>> {
        sqlx::query(conversations!("ORDER BY room"))
            .fetch_all(&self.db.readers)
            .await?
            .iter()
            .map(conversation)
            .collect()
    }

    /// Move a room's cursor forward (never back).
    pub async fn advance_cursor(&self, room: &str, seq: u64) -> Result<()> {
        sqlx::query("UPDATE conversations SET cursor = $1 WHERE room = $2 AND cursor < $1")
            .bind(i64_of(seq))
            .bind(room)
            .execute(&self.db.writer)
            .await?;
        Ok(())
    }

    /// Take a transaction the network pushed: its messages join the inbox
    /// in the same database transaction. `false` (and nothing stored) if
    /// this transaction id was taken before: a retry.
    pub async fn accept_transaction(
        &self,
        network: &str,
        txn: &str,
        now_ms: u64,
        messages: &[(String, Vec<u8>)],
    ) -> Result<bool> {
        let mut tx = self.db.begin().await?;
        let new = sqlx::query(
            "INSERT INTO transactions (network, txn, received_ms) VALUES ($1, $2, $3)
             ON CONFLICT (network, txn) DO NOTHING",
        )
        .bind(network)
        .bind(txn)
        .bind(i64_of(now_ms))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !new {
            return Ok(false);
        }
        for (remote_id, body) in messages {
            // the same event in another transaction is taken once too,
            // even after it was posted and left the inbox
            let first = sqlx::query(
                "INSERT INTO seen_events (network, remote_id, received_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (network, remote_id) DO NOTHING",
            )
            .bind(network)
            .bind(remote_id.as_str())
            .bind(i64_of(now_ms))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !first {
                continue;
            }
            sqlx::query(
                "INSERT INTO inbox (network, remote_id, body) VALUES ($1, $2, $3)
                 ON CONFLICT (network, remote_id) DO NOTHING",
            )
            .bind(network)
            .bind(remote_id.as_str())
            .bind(body.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The oldest inbound messages not yet posted.
    pub async fn inbox(&self, limit: u32) -> Result<Vec<Inbound>> {
        sqlx::query("SELECT id, network, remote_id, body, attempts FROM inbox ORDER BY id LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.db.readers)
            .await?
            .iter()
            .map(|r| {
                Ok(Inbound {
                    id: r.try_get("id")?,
                    network: r.try_get("network")?,
                    remote_id: r.try_get("remote_id")?,
                    body: r.try_get("body")?,
                    attempts: u64_of(r.try_get("attempts")?).min(u64::from(u32::MAX)) as u32,
                })
            })
            .collect()
    }

    /// An inbound message was posted (or reported): it leaves the inbox,
    /// and its text with it.
    pub async fn inbox_done(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM inbox WHERE id = $1")
            .bind(id)
            .execute(&self.db.writer)
            .await?;
        Ok(())
    }

    /// An attempt to post it failed; it stays for the next one.
    pub async fn inbox_retry(&self, id: i64, error: &str) -> Result<u32> {
        sqlx::query("UPDATE inbox SET attempts = attempts + 1, last_error = $1 WHERE id = $2")
            .bind(error)
            .bind(id)
            .execute(&self.db.writer)
            .await?;
        let n: Option<i64> = sqlx::query_scalar("SELECT attempts FROM inbox WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.readers)
            .await?;
        Ok(u64_of(n.unwrap_or(0)).min(u64::from(u32::MAX)) as u32)
    }

    pub async fn record_failure(&self, f: &Failure) -> Result<()> {
        sqlx::query(
            "INSERT INTO failures (direction, room, item, reason, at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(f.direction.as_str())
        .bind(f.room.as_deref())
        .bind(f.item.as_str())
        .bind(f.reason.as_str())
        .bind(i64_of(f.at_ms))
        .execute(&self.db.writer)
        .await?;
        Ok(())
    }

    /// The newest failures first.
    pub async fn failures(&self, limit: u32) -> Result<Vec<Failure>> {
        sqlx::query(
            "SELECT direction, room, item, reason, at_ms FROM failures ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.db.readers)
        .await?
        .iter()
        .map(|r| {
            Ok(Failure {
                direction: r.try_get("direction")?,
                room: r.try_get("room")?,
                item: r.try_get("item")?,
                reason: r.try_get("reason")?,
                at_ms: u64_of(r.try_get("at_ms")?),
            })
        })
        .collect()
    }

    /// Forget transaction and event ids older than `before_ms` (the
    /// network retries for far less long).
    pub async fn prune_transactions(&self, before_ms: u64) -> Result<u64> {
        let mut n = 0;
        for q in [
            "DELETE FROM transactions WHERE received_ms < $1",
            "DELETE FROM seen_events WHERE received_ms < $1",
        ] {
            n += sqlx::query(q)
                .bind(i64_of(before_ms))
                .execute(&self.db.writer)
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}
