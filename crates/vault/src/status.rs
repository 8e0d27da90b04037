//! Where the messages being captured stand, read in batches: every capture
//! needs its message's status (deleted, captured, new) before it is checked
//! and stored, and the captures in flight share one read
//! ([`VaultStore::capture_statuses`]) instead of a query each. Batching
//! policy: `cloister_http::batch` (no linger: what is queued goes).

use cloister_http::batch::Batcher;
use cloister_proto::MessageId;
use cloister_store::{CaptureStatus, MAX_STATUS_BATCH, StoreError, VaultStore};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<CaptureStatus, String>>;

/// A handle to the vault's status-reading task.
pub(crate) struct StatusReader {
    tx: mpsc::Sender<(MessageId, Reply)>,
}

impl StatusReader {
    /// How many requests wait in its queue (for a gauge; holds no handle).
    pub(crate) fn queued_probe(&self) -> impl Fn() -> i64 + Send + Sync + 'static {
        let w = self.tx.downgrade();
        move || {
            w.upgrade()
                .map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as i64)
        }
    }
    /// Start the task (on the current runtime); it ends with the handle.
    pub(crate) fn start(store: Arc<dyn VaultStore>) -> StatusReader {
        let (tx, rx) = mpsc::channel::<(MessageId, Reply)>(4 * MAX_STATUS_BATCH);
        let mut batches = Batcher::new(rx, MAX_STATUS_BATCH, None);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_STATUS_BATCH);
            while batches.next(&mut batch).await {
                let ids: Vec<MessageId> = batch.iter().map(|(id, _)| *id).collect();
                match store.capture_statuses(&ids).await {
                    Ok(statuses) => {
                        for ((_, reply), s) in batch.drain(..).zip(statuses) {
                            let _ = reply.send(Ok(s));
                        }
                    }
                    Err(e) => {
                        let why = e.to_string();
                        for (_, reply) in batch.drain(..) {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                }
            }
        });
        StatusReader { tx }
    }

    /// Where `id` stands now.
    pub(crate) async fn status(&self, id: MessageId) -> Result<CaptureStatus, StoreError> {
        let gone = || StoreError::Backend("the vault's status reader stopped".into());
        let (reply, rx) = oneshot::channel();
        self.tx.send((id, reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?.map_err(StoreError::Backend)
    }
}
