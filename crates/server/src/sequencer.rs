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
//! A room the node has not delivered anything of yet has no known place in
//! its chain: its first events wait (all of them, whatever order they come
//! in) until the wait runs out, and then the earliest one starts the chain.
//! Only a room's very first message (`prev` 0) goes out at once. So after a
//! node starts, the first live event of each room that already had messages
//! is held for the wait.
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

struct Room<T> {
    /// The newest seq delivered (`None`: nothing yet, place in the chain
    /// not known).
    last: Option<u64>,
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
            last: None,
            waiting: BTreeMap::new(),
        });
        if r.last.is_some_and(|l| seq <= l) || r.waiting.values().any(|w| w.seq == seq) {
            return Vec::new();
        }
        // a room's very first message starts its chain
        if r.last.is_none() && prev == 0 {
            r.last = Some(0);
        }
        if r.last != Some(prev) {
            r.waiting.entry(prev).or_insert(Waiting {
                seq,
                item,
                since_ms: now_ms,
            });
            return Vec::new();
        }
        r.last = Some(seq);
        let mut out = vec![item];
        release(r, &mut out);
        out
    }

    /// Rooms whose oldest waiting event waited longer than the limit: the
    /// room, the last seq delivered (`None`: the room's place in the chain
    /// is not known; hand `fill` an empty gap) and the first seq waiting.
    /// Read the messages in between from the database and hand them to
    /// `fill`.
    pub fn overdue(&self, now_ms: u64) -> Vec<(RoomId, Option<u64>, u64)> {
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
        if r.last.is_none() {
            // the room's place in the chain: just before its earliest event
            let start = r
                .waiting
                .iter()
                .min_by_key(|(_, w)| w.seq)
                .map(|(prev, _)| *prev);
            r.last = start;
        }
        let Some(mut last) = r.last else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (seq, item) in gap {
            if seq > last && !r.waiting.values().any(|w| w.seq == seq) {
                last = seq;
                out.push(item);
            }
        }
        r.last = Some(last);
        release(r, &mut out);
        // Still waiting: their predecessors are in no database (an insert
        // that never committed); skip ahead in order.
        while let Some(prev) = r.waiting.keys().next().copied() {
            if let Some(w) = r.waiting.remove(&prev)
                && r.last.is_none_or(|l| w.seq > l)
            {
                r.last = Some(w.seq);
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
    while let Some(last) = r.last
        && let Some(w) = r.waiting.remove(&last)
    {
        r.last = Some(w.seq);
        out.push(w.item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: RoomId = RoomId([1; 16]);

    /// A sequencer that has delivered `R` up to 3.
    fn at_3(max_wait_ms: u64) -> Sequencer<&'static str> {
        let mut s = Sequencer::new(max_wait_ms);
        assert!(s.offer(R, 3, 1, "start", 0).is_empty());
        assert_eq!(s.fill(R, vec![]), ["start"]);
        s
    }

    #[test]
    fn in_order_events_pass_through() {
        let mut s = at_3(1000);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert_eq!(s.offer(R, 9, 5, "b", 0), ["b"]);
    }

    #[test]
    fn a_new_rooms_first_message_goes_out_at_once() {
        let mut s = Sequencer::new(1000);
        assert_eq!(s.offer(R, 4, 0, "a", 0), ["a"]);
        assert_eq!(s.offer(R, 7, 4, "b", 0), ["b"]);
    }

    #[test]
    fn an_unknown_room_starts_at_its_earliest_event() {
        // the second message arrives first, from another node
        let mut s = Sequencer::new(300);
        assert!(s.offer(R, 12, 10, "b", 0).is_empty());
        assert!(s.offer(R, 10, 8, "a", 5).is_empty());
        assert!(s.overdue(200).is_empty());
        assert_eq!(s.overdue(300), vec![(R, None, 10)]);
        assert_eq!(s.fill(R, vec![]), ["a", "b"]);
        assert_eq!(s.offer(R, 13, 12, "c", 400), ["c"]);
    }

    #[test]
    fn late_predecessor_releases_the_chain() {
        let mut s = at_3(1000);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert!(s.offer(R, 9, 7, "c", 0).is_empty());
        assert!(s.offer(R, 11, 9, "d", 0).is_empty());
        assert_eq!(s.waiting(), 2);
        assert_eq!(s.offer(R, 7, 5, "b", 0), ["b", "c", "d"]);
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut s = at_3(1000);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert!(s.offer(R, 5, 3, "a", 0).is_empty());
        assert!(s.offer(R, 9, 7, "c", 0).is_empty());
        assert!(s.offer(R, 9, 7, "c", 0).is_empty(), "a waiting duplicate");
        assert_eq!(s.offer(R, 7, 5, "b", 0), ["b", "c"]);
        assert!(s.offer(R, 7, 5, "b", 0).is_empty());
    }

    #[test]
    fn a_lost_event_is_filled_from_the_database() {
        let mut s = at_3(500);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert!(s.offer(R, 9, 7, "c", 100).is_empty());
        assert!(s.overdue(400).is_empty());
        assert_eq!(s.overdue(600), vec![(R, Some(5), 9)]);
        assert_eq!(s.fill(R, vec![(7, "b")]), ["b", "c"]);
        assert!(s.overdue(10_000).is_empty());
    }

    #[test]
    fn an_empty_gap_skips_ahead_in_order() {
        let mut s = at_3(500);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert!(s.offer(R, 12, 10, "d", 0).is_empty());
        assert!(s.offer(R, 9, 7, "c", 0).is_empty());
        assert!(s.offer(R, 10, 9, "x", 0).is_empty());
        assert_eq!(s.fill(R, vec![]), ["c", "x", "d"]);
        assert_eq!(s.offer(R, 13, 12, "e", 0), ["e"]);
    }

    #[test]
    fn rooms_are_independent() {
        let mut s = at_3(1000);
        let other = RoomId([2; 16]);
        assert_eq!(s.offer(R, 5, 3, "a", 0), ["a"]);
        assert_eq!(s.offer(other, 6, 0, "b", 0), ["b"]);
        assert!(s.offer(R, 8, 7, "c", 0).is_empty());
        assert_eq!(s.offer(other, 8, 6, "d", 0), ["d"]);
    }
}
