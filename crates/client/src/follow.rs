//! Following a room live through lost connections: when the live socket
//! drops (its server node died, the network broke), [`Follow`] reconnects
//! with a growing pause, reads from history what it missed, and goes on. Each
//! message comes once, in seq order, verified and decrypted.
//!
//! The socket is opened before history is read, so nothing falls between
//! the two; a live event at or below the last seq returned is one history
//! already gave, and is skipped (not reported as a replay).

use crate::api::EventStream;
use crate::{Client, ClientError, Received, Result};
use cloister_proto::RoomId;
use cloister_proto::limits;
use cloister_proto::server::Event;
use std::collections::VecDeque;
use std::time::Duration;

/// The first pause before reconnecting; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// A room followed live; see the module docs.
pub struct Follow<'a> {
    client: &'a Client,
    room: RoomId,
    stream: Option<EventStream>,
    /// The last seq returned (or caught up to).
    last: u64,
    /// Caught-up messages not yet returned, in seq order.
    queue: VecDeque<Result<Received>>,
    pause: Duration,
    /// Failed connection attempts in a row; past `give_up`, `next` fails.
    failures: u32,
    give_up: u32,
    /// Live sockets opened so far.
    connections: u32,
}

impl Client {
    /// Follow `room` from the message after `after` (0: from its start).
    /// Connection failures are retried `give_up` times in a row (with
    /// pauses of 0.1 s doubling to 5 s) before [`Follow::next`] returns the
    /// network error.
    pub fn follow(&self, room: RoomId, after: u64, give_up: u32) -> Follow<'_> {
        Follow {
            client: self,
            room,
            stream: None,
            last: after,
            queue: VecDeque::new(),
            pause: FIRST_PAUSE,
            failures: 0,
            give_up,
            connections: 0,
        }
    }

    /// The newest seq of a room (0 if it has no message): where a follower
    /// that wants only new messages starts.
    pub async fn newest_seq(&self, room: &RoomId) -> Result<u64> {
        let page = self.read(room, 1, None).await?;
        Ok(page
            .iter()
            .filter_map(|m| m.as_ref().ok().map(|m| m.seq))
            .max()
            .unwrap_or(0))
    }
}

impl Follow<'_> {
    /// The last seq returned so far.
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// How many live sockets were opened (1 + reconnections).
    pub fn connections(&self) -> u32 {
        self.connections
    }

    /// The next message. A message that fails its checks comes as an error
    /// in its place (the follow goes on); a network error comes only after
    /// `give_up` failed reconnections in a row.
    pub async fn next(&mut self) -> Result<Received> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return m;
            }
            let Some(stream) = self.stream.as_mut() else {
                self.reconnect().await?;
                continue;
            };
            let ev = match stream.next().await {
                Ok(Some(ev)) => ev,
                // the node went away or the network broke: reconnect
                Ok(None) | Err(ClientError::Network { .. }) => {
                    self.stream = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match ev {
                Event::Message {
                    room,
                    seq,
                    envelope,
                } if room == self.room => {
                    if seq <= self.last {
                        continue; // history gave it already
                    }
                    self.last = seq;
                    return self.client.receive(&room, seq, &envelope).await;
                }
                Event::KeysShredded { room, notice } => {
                    self.client.on_keys_shredded(&room, &notice)?;
                }
                _ => {}
            }
        }
    }

    /// Open the socket (pausing between failures), then read what history
    /// holds after the last seq.
    async fn reconnect(&mut self) -> Result<()> {
        loop {
            match self.client.connect_events().await {
                Ok(s) => {
                    self.stream = Some(s);
                    self.connections += 1;
                    break;
                }
                Err(e @ ClientError::Network { .. }) => {
                    self.failures += 1;
                    if self.failures > self.give_up {
                        return Err(e);
                    }
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(MAX_PAUSE);
                }
                Err(e) => return Err(e),
            }
        }
        match self.catch_up().await {
            Ok(()) => {
                self.failures = 0;
                self.pause = FIRST_PAUSE;
                Ok(())
            }
            // the server answered the socket but not the read: try again
            Err(ClientError::Network { .. }) => {
                self.stream = None;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Queue every stored message after the last seq, oldest first.
    async fn catch_up(&mut self) -> Result<()> {
        let mut pages: Vec<Vec<Result<Received>>> = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .client
                .read(&self.room, limits::MAX_PAGE, before)
                .await?;
            let full = page.len() as u32 == limits::MAX_PAGE;
            let oldest = page
                .iter()
                .filter_map(|m| m.as_ref().ok())
                .map(|m| m.seq)
                .min();
            pages.push(page);
            match oldest {
                Some(o) if full && o > self.last + 1 => before = Some(o),
                _ => break,
            }
        }
        // A message that fails its checks carries no seq: it is new if it
        // comes after the last message returned.
        let mut past = self.last == 0;
        for page in pages.into_iter().rev() {
            for m in page {
                match m {
                    Ok(m) if m.seq <= self.last => past |= m.seq == self.last,
                    Ok(m) => {
                        past = true;
                        self.last = m.seq;
                        self.queue.push_back(Ok(m));
                    }
                    Err(e) if past => self.queue.push_back(Err(e)),
                    Err(_) => {}
                }
            }
        }
        Ok(())
    }
}
