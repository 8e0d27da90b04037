//! Per-room order for live events that reach a node from several places
//! (its own writer, other nodes through the event bus), sans IO.
//!
//! Every stored message carries `prev`, the seq of its room's message
//! before it (the store computes it under the room's write lock). A node
//! delivers a room's events only along that chain: an event whose `prev`
//! is not yet delivered waits; a duplicate (a redelivery, an event this
//! node already delivered) is dropped. An event that waits too long means
//! its predecessor's event was lost (its node died between commit and
//! publish): the caller reads the gap from the database ([`overdue`]) and
//! hands it in with [`fill`].
//!
//! [`overdue`]: Sequencer::overdue
//! [`fill`]: Sequencer::fill

use cloister_proto::RoomId;
use std::collections::{BTreeMap, HashMap};

/// Rooms remembered without waiting events before the oldest are forgotten.
const MAX_ROOMS: usize = 100_000;

struct Waiting<T> {
    seq: u64,
    item: T,
    since_ms: u64,
}

#[derive(Default)]
struct Room<T> {
    /// The newest seq delivered (0: none yet).
    last: u64,
    /// Events waiting for their predecessor, by `prev`.
    waiting: BTreeMap<u64, Waiting<T>>,
}

/// The per-room chain state of one node.
pub struct Sequencer<T> {
    rooms: HashMap<RoomId, Room<T>>,
    max_wait_ms: u64,
}

impl<T> Sequencer<T> {
    pub fn new(max_wait_ms: u64) -> Self {
        Sequencer {
            rooms: HashMap::new(),
            max_wait_ms,
        }
    }

    /// An event at `seq` (after `prev`): what may be delivered now, in order
    /// (this one and any that waited for it), or nothing if it must wait or
    /// was already delivered. A room this node has not seen yet starts at
    /// its first event.
    pub fn offer(&mut self, room: RoomId, seq: u64, prev: u64, item: T, now_ms: u64) -> Vec<T> {
        self.forget_idle();
        let r = self.rooms.entry(room).or_insert_with(|| Room {
            last: prev,
            waiting: BTreeMap::new(),
        });
        if seq <= r.last || r.waiting.values().any(|w| w.seq == seq) {
            return Vec::new();
        }
        if prev != r.last {
            r.waiting.entry(prev).or_insert(Waiting {
                seq,
                item,
                since_ms: now_ms,
            });
            return Vec::new();
        }
        r.last = seq;
        let mut out = vec![item];
        release(r, &mut out);
        out
    }

    /// Rooms whose oldest waiting event waited longer than the limit: the
    /// room, the last seq delivered and the first seq waiting. Read the
    /// messages in between from the database and hand them to `fill`.
    pub fn overdue(&self, now_ms: u64) -> Vec<(RoomId, u64, u64)> {
        self.rooms
            .iter()
            .filter_map(|(id, r)| {
                let first = r.waiting.values().min_by_key(|w| w.seq)?;
                let oldest = r.waiting.values().map(|w| w.since_ms).min()?;
                (now_ms.saturating_sub(oldest) >= self.max_wait_ms)
                    .then_some((*id, r.last, first.seq))
            })
            .collect()
    }

    /// The gap of a room read from the database (`(seq, item)` in seq order,
    /// after the last delivered): deliver them, then what waited behind
    /// them. If the database has nothing in the gap either, the waiting
    /// events go out in seq order.
    pub fn fill(&mut self, room: RoomId, gap: Vec<(u64, T)>) -> Vec<T> {
        let Some(r) = self.rooms.get_mut(&room) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (seq, item) in gap {
            if seq > r.last && !r.waiting.values().any(|w| w.seq == seq) {
                r.last = seq;
                out.push(item);
            }
        }
        release(r, &mut out);
        // Still waiting: their predecessors are in no database (an insert
        // that never committed); skip ahead in order.
        while let Some(prev) = r.waiting.keys().next().copied() {
            if let Some(w) = r.waiting.remove(&prev)
                && w.seq > r.last
            {
                r.last = w.seq;
                out.push(w.item);
                release(r, &mut out);
            }
        }
        out
    }

    /// Events waiting, over all rooms (a gauge).
    pub fn waiting(&self) -> usize {
        self.rooms.values().map(|r| r.waiting.len()).sum()
    }

    fn forget_idle(&mut self) {
        if self.rooms.len() > MAX_ROOMS {
            self.rooms.retain(|_, r| !r.waiting.is_empty());
        }
    }
}

/// Deliver what waited for the room's new last seq, along the chain.
fn release<T>(r: &mut Room<T>, out: &mut Vec<T>) {
    while let Some(w) = r.waiting.remove(&r.last) {
        r.last = w.seq;
        out.push(w.item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: RoomId = RoomId([1; 16]);

    #[test]
    fn in_order_events_pass_through() {
        let mut s = Sequencer::new(1000);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert_eq!(s.offer(R, 9, 5, "b", 0), ["b"]);
    }

    #[test]
    fn late_predecessor_releases_the_chain() {
        let mut s = Sequencer::new(1000);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert!(s.offer(R, 9, 7, "c", 0).is_empty());
        assert!(s.offer(R, 11, 9, "d", 0).is_empty());
        assert_eq!(s.waiting(), 2);
        assert_eq!(s.offer(R, 7, 5, "b", 0), ["b", "c", "d"]);
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut s = Sequencer::new(1000);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert!(s.offer(R, 5, 3, "a", 0).is_empty());
        assert!(s.offer(R, 9, 7, "c", 0).is_empty());
        assert!(s.offer(R, 9, 7, "c", 0).is_empty(), "a waiting duplicate");
        assert_eq!(s.offer(R, 7, 5, "b", 0), ["b", "c"]);
        assert!(s.offer(R, 7, 5, "b", 0).is_empty());
    }

    #[test]
    fn a_lost_event_is_filled_from_the_database() {
        let mut s = Sequencer::new(500);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert!(s.offer(R, 9, 7, "c", 100).is_empty());
        assert!(s.overdue(400).is_empty());
        assert_eq!(s.overdue(600), vec![(R, 5, 9)]);
        assert_eq!(s.fill(R, vec![(7, "b")]), ["b", "c"]);
        assert!(s.overdue(10_000).is_empty());
    }

    #[test]
    fn an_empty_gap_skips_ahead_in_order() {
        let mut s = Sequencer::new(500);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert!(s.offer(R, 12, 10, "d", 0).is_empty());
        assert!(s.offer(R, 9, 7, "c", 0).is_empty());
        assert!(s.offer(R, 10, 9, "x", 0).is_empty());
        assert_eq!(s.fill(R, vec![]), ["c", "x", "d"]);
        assert_eq!(s.offer(R, 13, 12, "e", 0), ["e"]);
    }

    #[test]
    fn rooms_are_independent() {
        let mut s = Sequencer::new(1000);
        let other = RoomId([2; 16]);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert_eq!(s.offer(other, 6, 4, "b", 0), ["b"]);
        assert!(s.offer(R, 8, 7, "c", 0).is_empty());
        assert_eq!(s.offer(other, 8, 6, "d", 0), ["d"]);
    }
}
