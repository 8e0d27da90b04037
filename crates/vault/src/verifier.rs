//! The vault's signature checks, in batches: every capture carries two
//! Ed25519 signatures (the device's over the request, the sender's over the
//! message header), and the requests in flight share one batch check
//! (`cloister_crypto::keys::verify_batch`, ADR 0017; batching policy
//! `cloister_http::batch`). A bad signature in a batch condemns only itself.

use cloister_crypto::keys::{Pending, VerifyKey, verify_batch};
use cloister_http::batch::{Batcher, Linger};
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 256;

struct Item {
    key: VerifyKey,
    signed: Vec<u8>,
    sig: [u8; 64],
    reply: oneshot::Sender<bool>,
}

/// A handle to the vault's verify task.
pub(crate) struct Verifier {
    tx: mpsc::Sender<Item>,
}

impl Verifier {
    /// How many requests wait in its queue (for a gauge; holds no handle).
    pub(crate) fn queued_probe(&self) -> impl Fn() -> i64 + Send + Sync + 'static {
        let w = self.tx.downgrade();
        move || {
            w.upgrade()
                .map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as i64)
        }
    }
    /// Start the task (on the current runtime); it ends with the handle.
    pub(crate) fn start() -> Verifier {
        let (tx, rx) = mpsc::channel::<Item>(4 * MAX_BATCH);
        let mut batches = Batcher::new(rx, MAX_BATCH, Some(Linger::SIGNATURES));
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while batches.next(&mut batch).await {
                let verdicts = verify_batch(
                    &batch
                        .iter()
                        .map(|i| Pending {
                            key: &i.key,
                            signed: &i.signed,
                            sig: &i.sig,
                        })
                        .collect::<Vec<_>>(),
                );
                for (item, ok) in batch.drain(..).zip(verdicts) {
                    let _ = item.reply.send(ok);
                }
            }
        });
        Verifier { tx }
    }

    /// Whether `sig` by `key` covers `signed` (the bytes exactly as signed,
    /// domain framing included). False also if the task is gone.
    pub(crate) async fn check(&self, key: &VerifyKey, signed: Vec<u8>, sig: &[u8; 64]) -> bool {
        let (reply, verdict) = oneshot::channel();
        let item = Item {
            key: key.clone(),
            signed,
            sig: *sig,
            reply,
        };
        if self.tx.send(item).await.is_err() {
            return false;
        }
        verdict.await.unwrap_or(false)
    }
}
