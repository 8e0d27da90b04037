//! Transcript integrity: what a device remembers of each room's messages, so
//! that a server which replays, reorders or drops them is noticed.
//!
//! ```text
//!  send:  header.counter = this device's next counter in the room (persisted)
//!         header.after   = the newest message ids this device verified there
//!  live:  counter == last + 1 from that device?  no: gap ("missing 17 from
//!         alice") or out of order; an id already verified: replay (refused)
//!  page:  per device, counters rise with the server's order and without
//!         holes; `after` ids come earlier; an id seen before under another
//!         seq is a replay; the newest page must not end below the highest
//!         counter this device already verified from someone (withheld)
//! ```
//!
//! The state is sealed in the device's home (`transcript.sealed`) and kept
//! across runs.

use crate::{Client, ClientError, Received, Result};
use cloister_proto::server::MAX_AFTER;
use cloister_proto::{DeviceId, MessageId, RoomId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Verified ids remembered per room (oldest forgotten first).
const REMEMBER: usize = 10_000;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Transcript {
    /// This device's last counter per room.
    sent: HashMap<RoomId, u64>,
    /// Highest verified counter per room and sender device.
    high: HashMap<RoomId, HashMap<DeviceId, u64>>,
    /// Verified message ids per room with the server seq they came at.
    seen: HashMap<RoomId, BTreeMap<MessageId, u64>>,
    /// The same ids in the order they were verified (to forget the oldest).
    order: HashMap<RoomId, VecDeque<MessageId>>,
    /// The newest verified ids per room (for `after`).
    latest: HashMap<RoomId, VecDeque<MessageId>>,
}

const STATE: &str = "transcript";

impl Transcript {
    pub(crate) fn load(home: &crate::store::Home) -> Transcript {
        home.load_sealed(STATE)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn remember(&mut self, room: &RoomId, r: &Received) {
        let high = self
            .high
            .entry(*room)
            .or_default()
            .entry(r.device)
            .or_default();
        *high = (*high).max(r.counter);
        let seen = self.seen.entry(*room).or_default();
        if seen.insert(r.id, r.seq).is_none() {
            let order = self.order.entry(*room).or_default();
            order.push_back(r.id);
            while order.len() > REMEMBER {
                if let Some(oldest) = order.pop_front() {
                    seen.remove(&oldest);
                }
            }
        }
        let latest = self.latest.entry(*room).or_default();
        if !latest.contains(&r.id) {
            latest.push_back(r.id);
            while latest.len() > MAX_AFTER {
                latest.pop_front();
            }
        }
    }
}

fn who(r: &Received) -> String {
    format!("{} (device {})", r.sender, r.device)
}

impl Client {
    fn save_transcript(&self, t: &Transcript) -> Result<()> {
        if !self.home.persistent() {
            return Ok(());
        }
        let b = serde_json::to_vec(t).map_err(|e| ClientError::Local(e.to_string()))?;
        self.home.save_sealed(STATE, &b)
    }

    fn transcript(&self) -> Result<std::sync::MutexGuard<'_, Transcript>> {
        self.transcript
            .lock()
            .map_err(|_| ClientError::Local("transcript poisoned".into()))
    }

    /// This device's next counter in `room` and the ids its header names.
    pub(crate) fn next_counter(&self, room: &RoomId) -> Result<(u64, Vec<MessageId>)> {
        let mut t = self.transcript()?;
        let c = t.sent.entry(*room).or_default();
        *c += 1;
        let counter = *c;
        let after = t
            .latest
            .get(room)
            .map(|l| l.iter().copied().collect())
            .unwrap_or_default();
        self.save_transcript(&t)?;
        Ok((counter, after))
    }

    /// Give a number back after a send failed (only the newest one: a
    /// later send may already have taken the next).
    pub(crate) fn release_counter(&self, room: &RoomId, counter: u64) -> Result<()> {
        let mut t = self.transcript()?;
        if let Some(c) = t.sent.get_mut(room)
            && *c == counter
        {
            *c -= 1;
            self.save_transcript(&t)?;
        }
        Ok(())
    }

    /// A message from the live stream: refuse a replay, alert on a gap or
    /// on disorder, remember it.
    pub(crate) fn check_live(&self, room: &RoomId, r: &Received) -> Result<()> {
        let mut t = self.transcript()?;
        if let Some(seq) = t.seen.get(room).and_then(|s| s.get(&r.id)) {
            let msg = format!(
                "message {} from {} was already received (at seq {seq}); the server replayed it",
                r.id,
                who(r)
            );
            drop(t);
            self.alert(msg.clone());
            return Err(ClientError::BadMessage {
                id: r.id.to_hex(),
                reason: msg,
            });
        }
        let high = t
            .high
            .get(room)
            .and_then(|h| h.get(&r.device))
            .copied()
            .unwrap_or(0);
        let mut alerts = Vec::new();
        if high > 0 && r.counter <= high {
            alerts.push(format!(
                "message {} from {} (number {}) arrived after number {high}: out of order",
                r.id,
                who(r),
                r.counter
            ));
        } else if high > 0 && r.counter > high + 1 {
            alerts.push(gap(r, high + 1, r.counter - 1));
        }
        t.remember(room, r);
        self.save_transcript(&t)?;
        drop(t);
        for a in alerts {
            self.alert(a);
        }
        Ok(())
    }

    /// A page of history (oldest first, each already verified): mark
    /// replays, alert on gaps, disorder and withheld tails, remember it.
    pub(crate) fn check_page(
        &self,
        room: &RoomId,
        page: &mut [Result<Received>],
        newest: bool,
    ) -> Result<()> {
        let mut alerts = Vec::new();
        let mut t = self.transcript()?;
        let seq_of: HashMap<MessageId, u64> =
            page.iter().flatten().map(|r| (r.id, r.seq)).collect();
        let mut last: HashMap<DeviceId, (u64, u64)> = HashMap::new();
        for item in page.iter_mut() {
            let Ok(r) = item else { continue };
            // seen before under another seq: an old message served as new
            if let Some(seq) = t.seen.get(room).and_then(|s| s.get(&r.id))
                && *seq != r.seq
            {
                let msg = format!(
                    "message {} from {} was received before at seq {seq} and is served again at seq {}: replayed",
                    r.id,
                    who(r),
                    r.seq
                );
                alerts.push(msg.clone());
                *item = Err(ClientError::BadMessage {
                    id: r.id.to_hex(),
                    reason: msg,
                });
                continue;
            }
            if let Some((prev, _)) = last.get(&r.device).copied() {
                if r.counter <= prev {
                    alerts.push(format!(
                        "message {} from {} (number {}) is placed after number {prev}: the server reordered them",
                        r.id,
                        who(r),
                        r.counter
                    ));
                } else if r.counter > prev + 1 {
                    alerts.push(gap(r, prev + 1, r.counter - 1));
                }
            }
            for a in &r.after {
                if seq_of.get(a).is_some_and(|s| *s > r.seq) {
                    alerts.push(format!(
                        "message {} from {} answers {a}, which the server placed after it: reordered",
                        r.id,
                        who(r)
                    ));
                }
            }
            last.insert(r.device, (r.counter, r.seq));
        }
        if newest {
            // the newest page must reach what this device already verified
            if let Some(high) = t.high.get(room) {
                for (device, h) in high {
                    let shown = last.get(device).map_or(0, |(c, _)| *c);
                    if shown > 0 && shown < *h {
                        alerts.push(format!(
                            "the server shows device {device}'s messages only up to number {shown}, but this device already received number {h}: newer messages are withheld"
                        ));
                    }
                }
            }
        }
        for r in page.iter().flatten() {
            t.remember(room, r);
        }
        self.save_transcript(&t)?;
        drop(t);
        for a in alerts {
            self.alert(a);
        }
        Ok(())
    }
}

fn gap(r: &Received, from: u64, to: u64) -> String {
    if from == to {
        format!("missing message {from} from {}", who(r))
    } else {
        format!("missing messages {from}..={to} from {}", who(r))
    }
}
