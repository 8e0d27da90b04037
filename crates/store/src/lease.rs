//! The appender lease: of several processes sharing one PostgreSQL
//! database (two KMs), only the holder writes. It is a session-level
//! advisory lock held on a connection of its own, so PostgreSQL frees it
//! the moment the holder's connection ends: a holder killed with -9 loses
//! it as soon as the kernel closes its socket, and a standby polling for it
//! takes over within a poll interval.
//!
//! The lease is what lets a standby *start*; it is not what keeps the
//! audit log single. That is the store's own check (an append must
//! continue the log, and the index is the primary key), so a holder that
//! lost its lease without noticing cannot fork the log: its appends fail.

use crate::{Result, StoreError, redact_url};
use sqlx::Connection;
use std::time::Duration;

/// A held lease. Dropping it releases the lock (its connection closes).
pub struct Lease {
    conn: sqlx::PgConnection,
    key: String,
}

impl Lease {
    /// Wait until this process holds the lease named `key`, trying every
    /// `poll`. `waiting` is called once if another process holds it.
    pub async fn acquire(
        url: &str,
        key: &str,
        poll: Duration,
        waiting: impl FnOnce(),
    ) -> Result<Lease> {
        let mut conn = sqlx::PgConnection::connect(url).await.map_err(|e| {
            StoreError::Backend(format!("cannot connect to {}: {e}", redact_url(url)))
        })?;
        let mut waiting = Some(waiting);
        loop {
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await?;
            if got {
                return Ok(Lease {
                    conn,
                    key: key.to_owned(),
                });
            }
            if let Some(w) = waiting.take() {
                w();
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Resolve when the lease is lost: its connection failed (a session
    /// lock lasts as long as the session, and this process never unlocks
    /// it). Checked every `every`.
    pub async fn lost(&mut self, every: Duration) -> StoreError {
        loop {
            tokio::time::sleep(every).await;
            let alive: std::result::Result<i32, sqlx::Error> = sqlx::query_scalar("SELECT 1")
                .fetch_one(&mut self.conn)
                .await;
            if let Err(e) = alive {
                return StoreError::Backend(format!(
                    "the connection holding the lease {:?} failed: {e}",
                    self.key
                ));
            }
        }
    }
}
