//! An append-only transparency log as a service runs it: the KM's audit log
//! and the compliance vault's ingestion log are both this runtime.
//!
//! ```text
//!  append(record) ──mpsc──▶ appender task: batch ─▶ one transaction (durable)
//!                                           └──▶ tree.push(leaf hashes) ─▶ reply indexes
//!  checkpoint() ─▶ sign {origin, size, root} as a C2SP signed note; remembered in the store
//!  open(): rebuild the tree from the stored entries and check it against the
//!          newest remembered checkpoint: altered, deleted, reordered or rolled
//!          back entries stop the KM from starting.
//! ```

use cloister_crypto::KmSigner;
use cloister_http::ApiError;
use cloister_log::note::{NoteSigner, verifier_key};
use cloister_log::{AuditRecord, Checkpoint, NoteVerifier, Tree, leaf_hash};
use cloister_store::{AuditIn, AuditStore};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 4096;

type Reply = oneshot::Sender<Result<u64, String>>;

struct Job {
    row: AuditIn,
    reply: Reply,
}

/// The running audit log.
pub struct AuditLog {
    origin: String,
    signer: KmSigner,
    tree: Arc<RwLock<Tree>>,
    store: Arc<dyn AuditStore>,
    tx: mpsc::Sender<Job>,
    latest: Mutex<Option<(u64, String)>>,
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
        let latest = store.audit_latest_checkpoint().await?;
        if let Some((size, note)) = &latest {
            let cp = verifier
                .verify_checkpoint(note)
                .map_err(|e| AuditOpenError::BadCheckpoint(e.to_string()))?;
            if cp.size != *size || *size > tree.len() {
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
        }
        let tree = Arc::new(RwLock::new(tree));
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(appender(rx, store.clone(), tree.clone()));
        Ok(Arc::new(AuditLog {
            origin,
            signer,
            tree,
            store,
            tx,
            latest: Mutex::new(latest),
        }))
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The verifier key string (`name+id+key`) clients pin.
    pub fn verifier_key(&self) -> String {
        verifier_key(&self.origin, &self.signer.public())
    }

    pub fn size(&self) -> u64 {
        self.tree.read().map(|t| t.len()).unwrap_or(0)
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
            .send(Job { row, reply })
            .await
            .map_err(|_| ApiError::internal("audit appender stopped"))?;
        match rx.await {
            Ok(Ok(i)) => Ok(i),
            Ok(Err(e)) => Err(ApiError::internal(format!("audit append failed: {e}"))),
            Err(_) => Err(ApiError::internal("audit appender dropped the request")),
        }
    }

    /// A signed checkpoint of the current log (re-signed only when it grew).
    pub async fn checkpoint(&self) -> Result<(Checkpoint, String), ApiError> {
        let (size, root) = {
            let t = self
                .tree
                .read()
                .map_err(|_| ApiError::internal("tree lock"))?;
            (t.len(), t.root(t.len()).map_err(ApiError::internal)?)
        };
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
        };
        if let Some((s, note)) = self.latest.lock().ok().and_then(|l| l.clone())
            && s == size
        {
            return Ok((cp, note));
        }
        let note = NoteSigner {
            name: &self.origin,
            key: &self.signer,
        }
        .sign(&cp.body())
        .map_err(ApiError::internal)?;
        self.store
            .audit_put_checkpoint(size, &note)
            .await
            .map_err(ApiError::internal)?;
        if let Ok(mut l) = self.latest.lock() {
            *l = Some((size, note.clone()));
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

async fn appender(
    mut rx: mpsc::Receiver<Job>,
    store: Arc<dyn AuditStore>,
    tree: Arc<RwLock<Tree>>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(j) = rx.recv().await {
        batch.push(j);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let start = tree.read().map(|t| t.len()).unwrap_or(0);
        let mut rows: Vec<AuditIn> = Vec::with_capacity(batch.len());
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        for (i, j) in batch.drain(..).enumerate() {
            rows.push(AuditIn {
                index: start + i as u64,
                ..j.row
            });
            replies.push(j.reply);
        }
        match store.audit_append(&rows).await {
            Ok(()) => {
                if let Ok(mut t) = tree.write() {
                    for r in &rows {
                        t.push(leaf_hash(&r.data));
                    }
                }
                for (reply, r) in replies.into_iter().zip(rows.iter()) {
                    let _ = reply.send(Ok(r.index));
                }
            }
            Err(e) => {
                tracing::error!("audit append failed: {e}");
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
