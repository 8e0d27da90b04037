//! Freshness: a device never seals in an epoch older than the newest one
//! the KM has verified, whatever the server shows it.
//!
//! ```text
//!  current_state(room):
//!    local verified state (from the server's log)
//!    KM-signed head {seq, hash, epoch, issued_ms}, at most `freshness` old
//!      (cached from the last key release or head request)
//!    head ahead of local? ─▶ refetch from the server ─▶ still behind?
//!      ─▶ take the missing entries from the KM, verify them, ALERT (withheld)
//!    same seq, other hash? ─▶ fork: refuse
//! ```
//!
//! So a member removed at time t can read what others send for at most
//! `freshness` (default 60 s) after the KM learns of the removal, even if the
//! operator helps them by withholding it.

use crate::{Client, ClientError, Result};
use cloister_crypto::signed::{self, verify_blob};
use cloister_policy::RoomState;
use cloister_proto::km::{KmOp, RoomHead, RoomHeadResponse, RoomLogResponse, SignedBlob};
use cloister_proto::{RoomId, now_millis};
use std::sync::atomic::Ordering;

/// Alerts kept in memory (the oldest are dropped; each is also logged).
const MAX_ALERTS: usize = 1_000;

/// Default bound on the age of the KM-signed head a send relies on.
pub const DEFAULT_FRESHNESS_MS: u64 = 60_000;

impl Client {
    /// How old (ms) the KM-signed room head may be when this device seals.
    pub fn set_freshness(&self, ms: u64) {
        self.freshness_ms.store(ms, Ordering::Relaxed);
    }

    /// What this device noticed its server doing, oldest first.
    pub fn alerts(&self) -> Vec<String> {
        self.alerts.lock().map(|a| a.clone()).unwrap_or_default()
    }

    pub(crate) fn alert(&self, msg: String) {
        tracing::warn!("SERVER ALERT: {msg}");
        if let Ok(mut a) = self.alerts.lock() {
            if a.len() >= MAX_ALERTS {
                a.remove(0);
            }
            a.push(msg);
        }
    }

    /// Check and remember a KM-signed head (the newest per room wins; a
    /// head behind one already seen means the KM's view went backwards).
    pub(crate) fn accept_head(&self, room: &RoomId, blob: &SignedBlob) -> Result<RoomHead> {
        let h: RoomHead = verify_blob(
            &self.profile.km_sign_pk.0,
            signed::ROOM_HEAD,
            blob,
            "room head",
        )
        .map_err(|_| ClientError::Local("the room head is not signed by our KM".into()))?;
        if h.room != *room || h.tenant != self.profile.tenant {
            return Err(ClientError::Local(
                "the KM answered with another room's head".into(),
            ));
        }
        let mut m = self
            .heads
            .lock()
            .map_err(|_| ClientError::Local("head cache poisoned".into()))?;
        if let Some(old) = m.get(room)
            && (old.seq > h.seq || (old.seq == h.seq && old.head != h.head))
        {
            return Err(ClientError::Audit(format!(
                "the KM's log of room {room} went from seq {} back to {} (or changed at the same seq)",
                old.seq, h.seq
            )));
        }
        m.insert(*room, h.clone());
        Ok(h)
    }

    /// A KM-signed head of at most the freshness bound's age.
    async fn fresh_head(&self, room: &RoomId) -> Result<RoomHead> {
        let bound = self.freshness_ms.load(Ordering::Relaxed);
        if let Some(h) = self.heads.lock().ok().and_then(|m| m.get(room).cloned())
            && now_millis().saturating_sub(h.issued_ms) <= bound
        {
            return Ok(h);
        }
        self.tell_km(room).await
    }

    /// Give the KM the log entries it may not have and take its signed head.
    pub(crate) async fn tell_km(&self, room: &RoomId) -> Result<RoomHead> {
        let from = self
            .km_seq
            .lock()
            .ok()
            .and_then(|m| m.get(room).map(|s| s + 1))
            .unwrap_or(0);
        let ask = |from: u64| async move {
            let log = self.log_since(room, from).await;
            self.km_request::<RoomHeadResponse>(KmOp::RoomHead {
                room: *room,
                log_from: from,
                certs: self.foreign_certs(&log).await,
                log,
            })
            .await
        };
        let mut r = ask(from).await;
        if matches!(&r, Err(ClientError::Api(a)) if a.code == "log_behind") {
            r = ask(0).await;
        }
        let h = self.accept_head(room, &r?.head)?;
        if let Ok(mut m) = self.km_seq.lock() {
            m.insert(*room, h.seq);
        }
        Ok(h)
    }

    /// The room's verified state, no older than what the KM knows: entries
    /// the server withholds are taken from the KM (with an alert).
    pub(crate) async fn current_state(&self, room: &RoomId, refresh: bool) -> Result<RoomState> {
        let mut st = self.with_state(room, refresh, |s| s.clone()).await?;
        let head = self.fresh_head(room).await?;
        if head.seq > st.seq {
            // once more from the server: the entry may be newer than our fetch
            st = self.room_state(room).await?;
        }
        if head.seq > st.seq {
            let from = st.seq + 1;
            let r: RoomLogResponse = self.km_request(KmOp::RoomLog { room: *room, from }).await?;
            {
                let mut rooms = self.rooms.lock().await;
                self.apply_entries(&mut rooms, room, r.entries).await?;
            }
            st = self.with_state(room, false, |s| s.clone()).await?;
            self.alert(format!(
                "the server {} withheld membership entries {from}..={} of room {room} (the KM has them): it may be hiding a removal",
                self.profile.server, head.seq
            ));
        }
        if head.seq > st.seq {
            return Err(ClientError::Local(format!(
                "room {room}: the KM's log is at seq {} but only {} could be verified; not sending",
                head.seq, st.seq
            )));
        }
        if head.seq == st.seq && head.head.0 != st.head {
            let msg = format!(
                "the server {} shows room {room} a different membership history than the KM verified (fork at seq {})",
                self.profile.server, st.seq
            );
            self.alert(msg.clone());
            return Err(ClientError::Audit(msg));
        }
        Ok(st)
    }
}
