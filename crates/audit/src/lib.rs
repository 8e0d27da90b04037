//! An append-only transparency log as a service runs it: the KM's audit log
//! and the compliance vault's ingestion log are both this runtime.
//!
//! ```text
//!  append(record) ──mpsc──▶ appender task: batch ─▶ tree.push(leaf hashes)
//!        ─▶ sign {origin, size, root} (C2SP signed note) for the batch
//!        ─▶ entries + checkpoint in one transaction (durable) ─▶ reply indexes
//!  checkpoint() ─▶ the newest batch's signed checkpoint
//!  open(): rebuild the tree from the stored entries and check the whole of
//!          it against the newest stored checkpoint: an altered, deleted,
//!          inserted, reordered or rolled-back entry stops the service.
//! ```

mod witnessing;
pub use witnessing::Witnesses;

use cloister_crypto::KmSigner;
use cloister_http::ApiError;
use cloister_log::note::{NoteSigner, verifier_key};
use cloister_log::{AuditRecord, Checkpoint, NoteVerifier, Tree, leaf_hash};
use cloister_store::{AuditIn, AuditStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 4096;

type Reply = oneshot::Sender<Result<u64, String>>;

enum Job {
    Append {
        row: AuditIn,
        reply: Reply,
    },
    /// Change the signing keys after every batch before it is committed;
    /// answered with the newest checkpoint the old keys signed.
    Keys {
        keys: Vec<Arc<KmSigner>>,
        reply: oneshot::Sender<Option<(u64, String)>>,
    },
}

/// The keys that sign each checkpoint: one, or two during a hand-over
/// from the first to the second.
type Signers = Arc<RwLock<Vec<Arc<KmSigner>>>>;

/// The running audit log.
pub struct AuditLog {
    origin: String,
    signers: Signers,
    tree: Arc<RwLock<Tree>>,
    store: Arc<dyn AuditStore>,
    tx: mpsc::Sender<Job>,
    /// The newest signed checkpoint (of the last committed batch).
    latest: Arc<Mutex<Option<(u64, String)>>>,
    /// Entries committed (the tree may briefly hold a batch being stored).
    committed: Arc<AtomicU64>,
    /// When the newest checkpoint was signed (ms since the Unix epoch; on
    /// start, the start; 0 while the log is empty).
    checkpoint_ms: Arc<AtomicU64>,
}

/// Why the stored log cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    #[error("audit log entry {0} is missing or out of order")]
    Gap(u64),
    #[error(
        "audit log has {have} entries but already signed a checkpoint of {signed}: it was rolled back"
    )]
    RolledBack { have: u64, signed: u64 },
    #[error(
        "audit log has {have} entries but its newest signed checkpoint covers {signed}: entries were added outside the log"
    )]
    Unsigned { have: u64, signed: u64 },
    #[error(
        "audit log does not match the checkpoint it signed at size {0}: entries were altered, deleted or reordered"
    )]
    Mismatch(u64),
    #[error("stored checkpoint is unreadable: {0}")]
    BadCheckpoint(String),
    #[error("storage: {0}")]
    Store(#[from] cloister_store::StoreError),
}

/// The KM's audit log origin (and note key name) for a tenant.
pub fn origin_for(tenant: &cloister_proto::TenantId) -> String {
    format!("cloister-audit/{tenant}")
}

/// The vault's ingestion log origin (and note key name) for a tenant.
pub fn vault_origin(tenant: &cloister_proto::TenantId) -> String {
    format!("cloister-vault/{tenant}")
}

impl AuditLog {
    pub async fn open(
        store: Arc<dyn AuditStore>,
        signer: KmSigner,
        origin: String,
    ) -> Result<Arc<AuditLog>, AuditOpenError> {
        let rows = store.audit_all().await?;
        let mut tree = Tree::new();
        for (i, r) in rows.iter().enumerate() {
            if r.index != i as u64 {
                return Err(AuditOpenError::Gap(i as u64));
            }
            tree.push(leaf_hash(&r.data));
        }
        let verifier = NoteVerifier::parse(&verifier_key(&origin, &signer.public()))
            .map_err(|e| AuditOpenError::BadCheckpoint(e.to_string()))?;
        // Every committed batch stored its signed checkpoint with it, so the
        // newest one must cover the whole stored log, exactly.
        let latest = store.audit_latest_checkpoint().await?;
        let signed = match &latest {
            Some((size, note)) => {
                let cp = verifier
                    .verify_checkpoint(note)
                    .map_err(|e| AuditOpenError::BadCheckpoint(e.to_string()))?;
                if cp.size != *size || cp.origin != origin {
                    return Err(AuditOpenError::BadCheckpoint(
                        "stored under another size or origin".into(),
                    ));
                }
                if cp.size > tree.len() {
                    return Err(AuditOpenError::RolledBack {
                        have: tree.len(),
                        signed: cp.size,
                    });
                }
                let root = tree
                    .root(cp.size)
                    .map_err(|_| AuditOpenError::Mismatch(cp.size))?;
                if root != cp.root {
                    return Err(AuditOpenError::Mismatch(cp.size));
                }
                cp.size
            }
            None => 0,
        };
        if tree.len() > signed {
            return Err(AuditOpenError::Unsigned {
                have: tree.len(),
                signed,
            });
        }
        let tree = Arc::new(RwLock::new(tree));
        let signers: Signers = Arc::new(RwLock::new(vec![Arc::new(signer)]));
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let latest = Arc::new(Mutex::new(latest));
        let committed = Arc::new(AtomicU64::new(signed));
        // Checkpoints carry no time: on start, count from now.
        let checkpoint_ms = Arc::new(AtomicU64::new(if rows.is_empty() {
            0
        } else {
            cloister_proto::now_millis()
        }));
        tokio::spawn(appender(
            rx,
            Appender {
                store: store.clone(),
                tree: tree.clone(),
                signers: signers.clone(),
                origin: origin.clone(),
                latest: latest.clone(),
                committed: committed.clone(),
                checkpoint_ms: checkpoint_ms.clone(),
            },
        ));
        Ok(Arc::new(AuditLog {
            origin,
            signers,
            tree,
            store,
            tx,
            latest,
            committed,
            checkpoint_ms,
        }))
    }

    /// Export the log's size and the age of its newest checkpoint as
    /// gauges of `metrics` (read at each scrape).
    pub fn register_metrics(self: &Arc<Self>, metrics: &cloister_http::ops::Metrics) {
        let size = metrics.gauge(
            "audit_log_entries",
            "Entries in the transparency log, all under a signed checkpoint",
        );
        let age = metrics.seconds_gauge(
            "audit_checkpoint_age_seconds",
            "Seconds since the log's newest checkpoint was signed (or since start)",
        );
        let queue = metrics.gauge(
            "audit_append_queue",
            "Records waiting to be appended to the transparency log",
        );
        let log = Arc::downgrade(self);
        metrics.on_scrape(move || {
            if let Some(log) = log.upgrade() {
                size.set(i64::try_from(log.size()).unwrap_or(i64::MAX));
                queue.set((log.tx.max_capacity() - log.tx.capacity()) as i64);
                let at = log.checkpoint_ms.load(Ordering::Acquire);
                let now = cloister_proto::now_millis();
                age.set(if at == 0 {
                    0.0
                } else {
                    now.saturating_sub(at) as f64 / 1000.0
                });
            }
        });
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The verifier key string (`name+id+key`) clients pin: the newest key's.
    pub fn verifier_key(&self) -> String {
        let pk = self
            .signers
            .read()
            .ok()
            .and_then(|s| s.last().map(|k| k.public()))
            .unwrap_or_default();
        verifier_key(&self.origin, &pk)
    }

    /// Start handing the log over to `next`: every batch from now on is
    /// signed by the current key and by `next`, so a verifier that knows
    /// the current key can learn the next one from a checkpoint both
    /// signed.
    pub async fn begin_handover(&self, next: KmSigner) -> Result<(), ApiError> {
        let current = self.signer(|s| s.last())?;
        self.set_keys(vec![current, Arc::new(next)]).await?;
        Ok(())
    }

    /// End a hand-over: only the newest key signs batches from now on.
    /// Returns the newest checkpoint both keys signed (every batch before
    /// this call is in it).
    pub async fn end_handover(&self) -> Result<(u64, String), ApiError> {
        let newest = self.signer(|s| s.last())?;
        match self.set_keys(vec![newest]).await? {
            Some(cp) => Ok(cp),
            None => {
                let (cp, note) = self.checkpoint().await?;
                Ok((cp.size, note))
            }
        }
    }

    /// Give up a hand-over before anything recorded it: only the old key
    /// signs again.
    pub async fn cancel_handover(&self) -> Result<(), ApiError> {
        let old = self.signer(|s| s.first())?;
        self.set_keys(vec![old]).await?;
        Ok(())
    }

    /// One of the current signing keys.
    fn signer(
        &self,
        pick: impl Fn(&[Arc<KmSigner>]) -> Option<&Arc<KmSigner>>,
    ) -> Result<Arc<KmSigner>, ApiError> {
        let s = self
            .signers
            .read()
            .map_err(|_| ApiError::internal("signer lock"))?;
        pick(&s)
            .cloned()
            .ok_or_else(|| ApiError::internal("the log has no key"))
    }

    async fn set_keys(&self, keys: Vec<Arc<KmSigner>>) -> Result<Option<(u64, String)>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Keys { keys, reply })
            .await
            .map_err(|_| ApiError::internal("audit appender stopped"))?;
        rx.await
            .map_err(|_| ApiError::internal("audit appender dropped the request"))
    }

    /// Entries committed and covered by a signed checkpoint.
    pub fn size(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Append a record; returns its index once it is durable.
    pub async fn append(&self, rec: &AuditRecord) -> Result<u64, ApiError> {
        self.append_with(rec, None).await
    }

    /// Append a record and commit `side` in the same transaction.
    pub async fn append_with(
        &self,
        rec: &AuditRecord,
        side: Option<cloister_store::SideEffect>,
    ) -> Result<u64, ApiError> {
        let data = rec.to_bytes().map_err(ApiError::internal)?;
        let row = AuditIn {
            index: 0,
            ts: rec.ts,
            kind: rec.event.kind().to_owned(),
            room: rec.event.room().map(|r| r.to_hex()),
            data,
            side,
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Append { row, reply })
            .await
            .map_err(|_| ApiError::internal("audit appender stopped"))?;
        match rx.await {
            Ok(Ok(i)) => Ok(i),
            Ok(Err(e)) => Err(ApiError::internal(format!("audit append failed: {e}"))),
            Err(_) => Err(ApiError::internal("audit appender dropped the request")),
        }
    }

    /// The newest signed checkpoint: every committed batch has one. (An
    /// empty log gets one signed here.)
    pub async fn checkpoint(&self) -> Result<(Checkpoint, String), ApiError> {
        if let Some((_, note)) = self.latest.lock().ok().and_then(|l| l.clone()) {
            let text = cloister_log::note::split_note(&note)
                .map(|(t, _)| t)
                .map_err(ApiError::internal)?;
            let cp = Checkpoint::parse_body(text).map_err(ApiError::internal)?;
            return Ok((cp, note));
        }
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size: 0,
            root: cloister_log::tree::empty_root(),
        };
        let note = sign_checkpoint(&self.signers, &self.origin, &cp)?;
        if let Ok(mut l) = self.latest.lock()
            && l.is_none()
        {
            *l = Some((0, note.clone()));
        }
        Ok((cp, note))
    }

    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<[u8; 32]>, ApiError> {
        let t = self
            .tree
            .read()
            .map_err(|_| ApiError::internal("tree lock"))?;
        t.inclusion_proof(index, size)
            .map_err(|e| ApiError::bad_request("bad_proof_request", e.to_string()))
    }

    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>, ApiError> {
        let t = self
            .tree
            .read()
            .map_err(|_| ApiError::internal("tree lock"))?;
        t.consistency_proof(old, new)
            .map_err(|e| ApiError::bad_request("bad_proof_request", e.to_string()))
    }

    pub fn store(&self) -> &Arc<dyn AuditStore> {
        &self.store
    }
}

/// The checkpoint signed by every current signer (one signature line each).
fn sign_checkpoint(signers: &Signers, origin: &str, cp: &Checkpoint) -> Result<String, ApiError> {
    let keys = signers
        .read()
        .map_err(|_| ApiError::internal("signer lock"))?
        .clone();
    let text = cp.body();
    let mut note = String::new();
    for key in keys {
        let signed = NoteSigner {
            name: origin,
            key: &key,
        }
        .sign(&text)
        .map_err(ApiError::internal)?;
        if note.is_empty() {
            note = signed;
        } else {
            let (_, sigs) = cloister_log::note::split_note(&signed).map_err(ApiError::internal)?;
            note.push_str(sigs);
        }
    }
    Ok(note)
}

struct Appender {
    store: Arc<dyn AuditStore>,
    tree: Arc<RwLock<Tree>>,
    signers: Signers,
    origin: String,
    latest: Arc<Mutex<Option<(u64, String)>>>,
    committed: Arc<AtomicU64>,
    checkpoint_ms: Arc<AtomicU64>,
}

impl Appender {
    /// Push the batch into the tree and sign its checkpoint; the tree is
    /// rolled back if the batch is not stored.
    fn stage(&self, rows: &[AuditIn]) -> Result<(u64, String), String> {
        let cp = {
            let mut t = self.tree.write().map_err(|_| "tree lock".to_owned())?;
            for r in rows {
                t.push(leaf_hash(&r.data));
            }
            let size = t.len();
            Checkpoint {
                origin: self.origin.clone(),
                size,
                root: t.root(size).map_err(|e| e.to_string())?,
            }
        };
        let note = sign_checkpoint(&self.signers, &self.origin, &cp).map_err(|e| e.message)?;
        Ok((cp.size, note))
    }

    fn unstage(&self, size: u64) {
        if let Ok(mut t) = self.tree.write() {
            t.truncate(size);
        }
    }
}

async fn appender(mut rx: mpsc::Receiver<Job>, a: Appender) {
    let mut batch: Vec<(AuditIn, Reply)> = Vec::with_capacity(MAX_BATCH);
    let mut keys: Option<(Vec<Arc<KmSigner>>, oneshot::Sender<_>)> = None;
    while let Some(j) = rx.recv().await {
        let mut next = Some(j);
        while let Some(j) = next.take() {
            match j {
                Job::Append { row, reply } => batch.push((row, reply)),
                Job::Keys { keys: k, reply } => {
                    keys = Some((k, reply));
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            a.commit(&mut batch).await;
        }
        if let Some((k, reply)) = keys.take() {
            if let Ok(mut s) = a.signers.write() {
                *s = k;
            }
            let _ = reply.send(a.latest.lock().ok().and_then(|l| l.clone()));
        }
    }
}

impl Appender {
    /// Store one batch under one signed checkpoint and answer its callers.
    async fn commit(&self, batch: &mut Vec<(AuditIn, Reply)>) {
        let a = self;
        let start = a.committed.load(Ordering::Acquire);
        let mut rows: Vec<AuditIn> = Vec::with_capacity(batch.len());
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        for (i, (row, reply)) in batch.drain(..).enumerate() {
            rows.push(AuditIn {
                index: start + i as u64,
                ..row
            });
            replies.push(reply);
        }
        let stored = match a.stage(&rows) {
            Ok((size, note)) => match a.store.audit_append(&rows, Some((size, &note))).await {
                Ok(()) => Ok((size, note)),
                Err(e) => {
                    a.unstage(start);
                    Err(e.to_string())
                }
            },
            Err(e) => {
                a.unstage(start);
                Err(e)
            }
        };
        match stored {
            Ok((size, note)) => {
                if let Ok(mut l) = a.latest.lock() {
                    *l = Some((size, note));
                }
                a.committed.store(size, Ordering::Release);
                a.checkpoint_ms
                    .store(cloister_proto::now_millis(), Ordering::Release);
                for (reply, r) in replies.into_iter().zip(rows.iter()) {
                    let _ = reply.send(Ok(r.index));
                }
            }
            Err(e) => {
                tracing::error!("audit append failed: {e}");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
