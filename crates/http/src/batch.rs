//! Taking queued work in batches: the policy the server's writer stages and
//! the vault's signature checks share (ADR 0017).
//!
//! [`Batcher::next`] waits for one item, then takes every item already
//! queued. With a [`Linger`], and only when the load is high (the batch
//! before was large, or this item came within `busy_gap` of it), a short
//! batch waits to fill: first by letting the runtime run what is ready (the
//! requests in flight) a few times, then for a bounded time. An item that
//! comes alone waits for nothing. Without the gap test, a busy service fell
//! into batches of one: each lone item was handled before the next came.

use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a short batch may wait to fill, and when.
#[derive(Clone, Copy, Debug)]
pub struct Linger {
    /// A batch this large is worth having: stop waiting.
    pub good: usize,
    /// A batch at least this large says many requests are in flight.
    pub busy_batch: usize,
    /// An item this soon after the batch before also says so.
    pub busy_gap: Duration,
    /// How many times to let other tasks run before waiting on the clock.
    pub yields: usize,
    /// The longest wait on the clock.
    pub wait: Duration,
}

impl Linger {
    /// Signature checks: batches of 64 cost about half as much per
    /// signature as one alone; a millisecond at most.
    pub const SIGNATURES: Linger = Linger {
        good: 64,
        busy_batch: 8,
        busy_gap: Duration::from_micros(250),
        yields: 4,
        wait: Duration::from_micros(1000),
    };
}

/// Takes batches from a queue.
pub struct Batcher<T> {
    rx: mpsc::Receiver<T>,
    max: usize,
    linger: Option<Linger>,
    busy: bool,
    last: Option<Instant>,
}

impl<T> Batcher<T> {
    /// Batches of at most `max`; `linger` as above, or none (take what is
    /// queued and go).
    pub fn new(rx: mpsc::Receiver<T>, max: usize, linger: Option<Linger>) -> Self {
        Batcher {
            rx,
            max: max.max(1),
            linger,
            busy: false,
            last: None,
        }
    }

    /// Fill `batch` (which the caller has emptied); false once every sender
    /// is gone and the queue is empty.
    pub async fn next(&mut self, batch: &mut Vec<T>) -> bool {
        let Some(item) = self.rx.recv().await else {
            return false;
        };
        let now = Instant::now();
        let busy = self.busy
            || self.linger.is_some_and(|l| {
                self.last
                    .is_some_and(|t| now.duration_since(t) < l.busy_gap)
            });
        self.last = Some(now);
        batch.push(item);
        self.drain(batch);
        if let Some(l) = self.linger
            && busy
        {
            for _ in 0..l.yields {
                if batch.len() >= l.good {
                    break;
                }
                tokio::task::yield_now().await;
                self.drain(batch);
            }
            let deadline = tokio::time::Instant::now() + l.wait;
            while batch.len() < l.good.min(self.max) {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(item)) => batch.push(item),
                    _ => break,
                }
            }
        }
        self.busy = self.linger.is_some_and(|l| batch.len() >= l.busy_batch);
        true
    }

    fn drain(&mut self, batch: &mut Vec<T>) {
        while batch.len() < self.max {
            match self.rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_what_is_queued_up_to_the_limit_and_ends_when_senders_go() {
        let (tx, rx) = mpsc::channel(100);
        for k in 0..10 {
            tx.send(k).await.unwrap();
        }
        let mut b = Batcher::new(rx, 4, None);
        let mut batch = Vec::new();
        assert!(b.next(&mut batch).await);
        assert_eq!(batch, vec![0, 1, 2, 3]);
        batch.clear();
        assert!(b.next(&mut batch).await);
        assert_eq!(batch, vec![4, 5, 6, 7]);
        batch.clear();
        drop(tx);
        assert!(b.next(&mut batch).await);
        assert_eq!(batch, vec![8, 9]);
        batch.clear();
        assert!(!b.next(&mut batch).await);
    }

    #[tokio::test]
    async fn a_lone_item_waits_for_nothing_but_a_busy_queue_lingers() {
        let (tx, rx) = mpsc::channel(100);
        // generous times: a loaded test machine must not flip the outcome
        let linger = Linger {
            busy_gap: Duration::from_millis(50),
            wait: Duration::from_millis(500),
            ..Linger::SIGNATURES
        };
        let mut b = Batcher::new(rx, 1024, Some(linger));
        let mut batch = Vec::new();
        // alone, after a quiet spell: handled at once
        tx.send(1).await.unwrap();
        assert!(b.next(&mut batch).await);
        assert_eq!(batch, vec![1]);
        batch.clear();
        tokio::time::sleep(Duration::from_millis(150)).await;
        tx.send(2).await.unwrap();
        assert!(b.next(&mut batch).await);
        assert_eq!(batch, vec![2], "a quiet queue does not linger");
        batch.clear();
        // right after a batch: the next one waits for more (sent later)
        let late = tx.clone();
        tx.send(3).await.unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            late.send(4).await.unwrap();
        });
        assert!(b.next(&mut batch).await);
        assert_eq!(batch, vec![3, 4], "a busy queue lingers for the next item");
    }
}
