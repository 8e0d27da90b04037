//! Live delivery: every connected device of every room member gets each event.
//!
//! Connections are indexed by user, not by room, so membership changes need no
//! resubscription: fan-out reads the member list of the room's current state.
//! Events are `Utf8Bytes`: serialised once, shared by every connection.
//! A connection whose queue is full is dropped (the client reconnects and
//! catches up from history), so one slow reader never slows a room.

use axum::extract::ws::Utf8Bytes;
use cloister_http::ops::prometheus_client::metrics::counter::Counter;
use cloister_proto::{DeviceId, TenantId, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

const QUEUE: usize = 4096;

struct Conn {
    id: u64,
    device: DeviceId,
    tx: mpsc::Sender<Utf8Bytes>,
}

#[derive(Clone, Default)]
pub struct Hub {
    conns: Arc<RwLock<HashMap<UserId, Vec<Conn>>>>,
    /// Connected users with the surveillance role, per tenant: they receive
    /// every message of their tenant's rooms (their keys come from the KM,
    /// which logs each release).
    watchers: Arc<RwLock<HashMap<TenantId, HashSet<UserId>>>>,
    next: Arc<AtomicU64>,
    count: Arc<AtomicUsize>,
    /// Events queued to connections.
    pub(crate) delivered: Counter,
    /// Connections dropped because they fell behind.
    pub(crate) dropped: Counter,
}

impl Hub {
    pub fn register(&self, user: &UserId, device: DeviceId) -> (u64, mpsc::Receiver<Utf8Bytes>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.conns.write() {
            m.entry(user.clone())
                .or_default()
                .push(Conn { id, device, tx });
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        (id, rx)
    }

    pub fn unregister(&self, user: &UserId, id: u64) {
        if let Ok(mut m) = self.conns.write()
            && let Some(v) = m.get_mut(user)
        {
            let before = v.len();
            v.retain(|c| c.id != id);
            self.count.fetch_sub(before - v.len(), Ordering::Relaxed);
            if v.is_empty() {
                m.remove(user);
                if let Ok(mut w) = self.watchers.write() {
                    for set in w.values_mut() {
                        set.remove(user);
                    }
                }
            }
        }
    }

    /// Deliver every message of `tenant`'s rooms to `user` (surveillance).
    pub fn watch(&self, tenant: &TenantId, user: &UserId) {
        if let Ok(mut w) = self.watchers.write() {
            w.entry(tenant.clone()).or_default().insert(user.clone());
        }
    }

    /// The surveillance users of a tenant who are connected.
    pub fn watchers(&self, tenant: &TenantId) -> Vec<UserId> {
        self.watchers
            .read()
            .ok()
            .and_then(|w| w.get(tenant).map(|s| s.iter().cloned().collect()))
            .unwrap_or_default()
    }

    pub fn connections(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Queue `event` for every connection of the given users, except `skip`
    /// (the device that sent it, which already has it).
    pub fn send<'a>(
        &self,
        users: impl Iterator<Item = &'a UserId>,
        skip: Option<DeviceId>,
        event: Utf8Bytes,
    ) {
        let mut full = Vec::new();
        let mut queued = 0u64;
        if let Ok(m) = self.conns.read() {
            for u in users {
                if let Some(conns) = m.get(u) {
                    for c in conns.iter().filter(|c| Some(c.device) != skip) {
                        if c.tx.try_send(event.clone()).is_err() {
                            full.push((u.clone(), c.id));
                        } else {
                            queued += 1;
                        }
                    }
                }
            }
        }
        self.delivered.inc_by(queued);
        self.dropped.inc_by(full.len() as u64);
        for (u, id) in full {
            tracing::warn!(user = %u, "dropping a live connection that fell behind");
            self.unregister(&u, id);
        }
    }

    /// Close every connection.
    pub fn close_all(&self) {
        if let Ok(mut m) = self.conns.write() {
            let n: usize = m.values().map(Vec::len).sum();
            m.clear();
            self.count.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Close every connection whose user or device `denied` names.
    pub fn drop_if(&self, denied: impl Fn(&UserId, &DeviceId) -> bool) {
        if let Ok(mut m) = self.conns.write() {
            let mut removed = 0;
            for (u, v) in m.iter_mut() {
                let before = v.len();
                v.retain(|c| !denied(u, &c.device));
                removed += before - v.len();
            }
            m.retain(|_, v| !v.is_empty());
            self.count.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    /// Close every connection of a device (revoked) or of a user (disabled).
    pub fn drop_where(&self, user: Option<&UserId>, device: Option<&DeviceId>) {
        if let Ok(mut m) = self.conns.write() {
            let mut removed = 0;
            for (u, v) in m.iter_mut() {
                let before = v.len();
                v.retain(|c| user != Some(u) && device != Some(&c.device));
                removed += before - v.len();
            }
            m.retain(|_, v| !v.is_empty());
            self.count.fetch_sub(removed, Ordering::Relaxed);
        }
    }
}
