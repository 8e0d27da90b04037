//! The message pipeline after a request's checks: a verify stage checks the
//! senders' signatures in batches (ADR 0017), then group commit inserts the
//! messages in batches, one transaction (and one fsync) per batch, and fans
//! them out in commit order only after they are durable. The two stages run
//! at once: one batch is verified while the one before it commits.

use crate::cluster::{Delivery, Fanout};
use cloister_crypto::keys::{Pending, VerifyKey, verify_batch};
use cloister_policy::RoomState;
use cloister_proto::RoomId;
use cloister_proto::server::{Envelope, Event};
use cloister_store::{Inserted, NewMessage, ServerStore};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 1024;
/// Signatures per batch beyond which batching saves little more.
const GOOD_BATCH: usize = 64;
/// A batch at least this large says many requests are in flight: the next
/// one may wait to fill.
const BUSY_BATCH: usize = 8;
/// How many times the verify stage then lets other tasks run to fill a
/// batch, and how long it then waits at most.
const LINGER: usize = 4;
/// A job that comes this soon after the batch before also says the load is
/// high, though that batch was small.
const BUSY_GAP: std::time::Duration = std::time::Duration::from_micros(250);
const LINGER_TIME: std::time::Duration = std::time::Duration::from_micros(1000);

/// Why the pipeline refused a message.
#[derive(Debug)]
pub enum WriteError {
    /// The sender's signature does not hold.
    BadSignature,
    /// The store failed (the message is not stored).
    Store(String),
}

pub struct Job {
    pub msg: NewMessage,
    pub room: RoomId,
    pub envelope: Envelope,
    pub state: Arc<RoomState>,
    pub sender: cloister_proto::DeviceId,
    /// The sender's key and the bytes its signature must cover.
    pub key: VerifyKey,
    pub signed: Vec<u8>,
    pub reply: oneshot::Sender<Result<Inserted, WriteError>>,
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

/// Wait for one job, then take every job already queued (up to a batch).
/// With `linger`, and only when the load is high (`busy`: the batch before
/// was large, or this job came within `BUSY_GAP` of it), a short batch waits
/// to fill: first by letting the runtime run what is ready (the requests in
/// flight) up to `linger` times, then for up to `LINGER_TIME`. A job that
/// comes alone waits for nothing. Without the gap, a busy node fell into
/// batches of one: each lone job was verified before the next came.
async fn next_batch(
    rx: &mut mpsc::Receiver<Job>,
    batch: &mut Vec<Job>,
    linger: usize,
    busy: bool,
    last: &mut Option<std::time::Instant>,
) -> bool {
    let Some(job) = rx.recv().await else {
        return false;
    };
    let now = std::time::Instant::now();
    let busy = busy || last.is_some_and(|t| now.duration_since(t) < BUSY_GAP);
    *last = Some(now);
    batch.push(job);
    let drain = |rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>| {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
    };
    drain(rx, batch);
    if !busy || linger == 0 {
        return true;
    }
    for _ in 0..linger {
        if batch.len() >= GOOD_BATCH {
            return true;
        }
        tokio::task::yield_now().await;
        drain(rx, batch);
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    while batch.len() < GOOD_BATCH {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(j)) => batch.push(j),
            _ => break,
        }
    }
    true
}

impl Writer {
    pub fn start(store: Arc<dyn ServerStore>, fanout: Fanout) -> Writer {
        let (tx, mut verify_rx) = mpsc::channel::<Job>(8 * MAX_BATCH);
        let (commit_tx, mut commit_rx) = mpsc::channel::<Job>(8 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut busy = false;
            let mut last = None;
            while next_batch(&mut verify_rx, &mut batch, LINGER, busy, &mut last).await {
                busy = batch.len() >= BUSY_BATCH;
                let verdicts = {
                    let pending: Vec<Pending<'_>> = batch
                        .iter()
                        .map(|j| Pending {
                            key: &j.key,
                            signed: &j.signed,
                            sig: &j.envelope.sig.0,
                        })
                        .collect();
                    verify_batch(&pending)
                };
                for (job, ok) in batch.drain(..).zip(verdicts) {
                    if !ok {
                        let _ = job.reply.send(Err(WriteError::BadSignature));
                    } else if let Err(e) = commit_tx.send(job).await {
                        let _ =
                            e.0.reply
                                .send(Err(WriteError::Store("writer stopped".into())));
                    }
                }
            }
        });
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut last = None;
            while next_batch(&mut commit_rx, &mut batch, 0, false, &mut last).await {
                commit(&*store, &fanout, &mut batch).await;
            }
        });
        Writer { tx }
    }

    pub async fn submit(&self, job: Job) -> bool {
        self.tx.send(job).await.is_ok()
    }
}

/// Insert a batch in one transaction, then fan the stored messages out in
/// seq order and answer each request.
async fn commit(store: &dyn ServerStore, fanout: &Fanout, batch: &mut Vec<Job>) {
    // The rows move to the store: the envelope stays for the fan-out.
    let msgs: Vec<NewMessage> = batch
        .iter_mut()
        .map(|j| std::mem::take(&mut j.msg))
        .collect();
    let results = match store.insert_messages(&msgs).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("message batch insert failed: {e}");
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(WriteError::Store(e.to_string())));
            }
            return;
        }
    };
    let mut done: Vec<(Job, Inserted)> = batch.drain(..).zip(results).collect();
    done.sort_by_key(|(_, r)| match r {
        Inserted::Seq { seq, .. } => *seq,
        Inserted::Duplicate => 0,
    });
    for (job, res) in done {
        if let Inserted::Seq { seq, prev } = res {
            let ev = Event::Message {
                room: job.room,
                seq,
                envelope: job.envelope,
            };
            if let Ok(event) = serde_json::to_string(&ev) {
                let d = Delivery {
                    tenant: job.state.tenant.clone(),
                    users: job.state.members.iter().cloned().collect(),
                    skip: Some(job.sender),
                    watchers: true,
                    event,
                };
                fanout.message(job.room, seq, prev, d).await;
            }
        }
        let _ = job.reply.send(Ok(res));
    }
}
