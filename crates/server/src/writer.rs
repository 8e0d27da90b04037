//! The message pipeline after a request's checks: a verify stage checks the
//! senders' signatures in batches (ADR 0017), then group commit inserts the
//! messages in batches, one transaction (and one fsync) per batch, and fans
//! them out in commit order only after they are durable. The two stages run
//! at once: one batch is verified while the one before it commits.

use crate::cluster::{Delivery, Fanout};
use cloister_crypto::keys::{Pending, VerifyKey, verify_batch};
use cloister_http::batch::{Batcher, Linger};
use cloister_http::ops::prometheus_client::metrics::counter::Counter;
use cloister_policy::RoomState;
use cloister_proto::RoomId;
use cloister_proto::server::{Envelope, Event};
use cloister_store::{Inserted, NewMessage, ServerStore};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 1024;

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

impl Writer {
    /// Start the writer; `accepted` counts the messages it stores.
    pub fn start(store: Arc<dyn ServerStore>, fanout: Fanout, accepted: Counter) -> Writer {
        let (tx, verify_rx) = mpsc::channel::<Job>(8 * MAX_BATCH);
        let (commit_tx, commit_rx) = mpsc::channel::<Job>(8 * MAX_BATCH);
        let mut verify = Batcher::new(verify_rx, MAX_BATCH, Some(Linger::SIGNATURES));
        let mut commits = Batcher::new(commit_rx, MAX_BATCH, None);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while verify.next(&mut batch).await {
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
            while commits.next(&mut batch).await {
                commit(&*store, &fanout, &accepted, &mut batch).await;
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
async fn commit(
    store: &dyn ServerStore,
    fanout: &Fanout,
    accepted: &Counter,
    batch: &mut Vec<Job>,
) {
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
    accepted.inc_by(
        done.iter()
            .filter(|(_, r)| matches!(r, Inserted::Seq { .. }))
            .count() as u64,
    );
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
