//! Group commit: messages from all requests are inserted in batches, one
//! transaction (and one fsync) per batch, and fanned out in commit order only
//! after they are durable.

use crate::cluster::{Delivery, Fanout};
use cloister_policy::RoomState;
use cloister_proto::RoomId;
use cloister_proto::server::{Envelope, Event};
use cloister_store::{Inserted, NewMessage, ServerStore};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 1024;

pub struct Job {
    pub msg: NewMessage,
    pub room: RoomId,
    pub envelope: Envelope,
    pub state: Arc<RoomState>,
    pub sender: cloister_proto::DeviceId,
    pub reply: oneshot::Sender<Result<Inserted, String>>,
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    pub fn start(store: Arc<dyn ServerStore>, fanout: Fanout) -> Writer {
        let (tx, mut rx) = mpsc::channel::<Job>(8 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while let Some(job) = rx.recv().await {
                batch.push(job);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                let msgs: Vec<NewMessage> = batch.iter().map(|j| j.msg.clone()).collect();
                match store.insert_messages(&msgs).await {
                    Ok(results) => {
                        for (job, res) in batch.drain(..).zip(results) {
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
                    Err(e) => {
                        tracing::error!("message batch insert failed: {e}");
                        for job in batch.drain(..) {
                            let _ = job.reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        Writer { tx }
    }

    pub async fn submit(&self, job: Job) -> bool {
        self.tx.send(job).await.is_ok()
    }
}
