//! Group commit: messages from all requests are inserted in batches, one
//! transaction (and one fsync) per batch, and fanned out in commit order only
//! after they are durable.

use crate::hub::Hub;
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
    pub fn start(store: Arc<dyn ServerStore>, hub: Hub) -> Writer {
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
                            if let Inserted::Seq { seq, .. } = res {
                                let ev = Event::Message {
                                    room: job.room,
                                    seq,
                                    envelope: job.envelope,
                                };
                                if let Ok(s) = serde_json::to_string(&ev) {
                                    let watchers = hub.watchers(&job.state.tenant);
                                    let users = job.state.members.iter().chain(
                                        watchers.iter().filter(|w| !job.state.members.contains(*w)),
                                    );
                                    hub.send(users, Some(job.sender), s.into());
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
