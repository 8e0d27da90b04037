//! Blobs (attachment ciphertext): written as a stream, visible under their
//! id only once complete, read back as a stream. On one node they are
//! files; server nodes sharing a PostgreSQL database keep them there, in
//! chunks, so any node can serve any blob.

use crate::db::{Db, i, now_ms};
use crate::{Result, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// A blob's bytes as a stream of chunks.
pub type BlobStream = BoxStream<'static, Result<Bytes>>;

/// Where blobs live. Ids are validated by the caller (hex).
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Start writing `id`; nothing is visible under it until `finish`.
    async fn create(&self, id: &str) -> Result<Box<dyn BlobWriter>>;
    /// Read `id` (`None` if there is no such blob).
    async fn open(&self, id: &str) -> Result<Option<BlobStream>>;
    /// Remove `id` (no error if absent).
    async fn remove(&self, id: &str) -> Result<()>;
}

/// A blob being written.
#[async_trait]
pub trait BlobWriter: Send {
    async fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Make the blob durable and visible under its id; its size.
    async fn finish(self: Box<Self>) -> Result<u64>;
    /// Drop what was written.
    async fn abort(self: Box<Self>);
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("blob file: {e}"))
}

/// Blobs as files in a directory (one node).
pub struct FsBlobStore {
    dir: PathBuf,
}

impl FsBlobStore {
    pub fn open(dir: &Path) -> Result<FsBlobStore> {
        std::fs::create_dir_all(dir).map_err(io)?;
        Ok(FsBlobStore {
            dir: dir.to_path_buf(),
        })
    }
}

struct FsWriter {
    file: tokio::fs::File,
    tmp: PathBuf,
    path: PathBuf,
    size: u64,
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn create(&self, id: &str) -> Result<Box<dyn BlobWriter>> {
        let tmp = self.dir.join(format!("{id}.part-{}", now_ms()));
        let file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        Ok(Box::new(FsWriter {
            file,
            tmp,
            path: self.dir.join(id),
            size: 0,
        }))
    }

    async fn open(&self, id: &str) -> Result<Option<BlobStream>> {
        match tokio::fs::File::open(self.dir.join(id)).await {
            Ok(f) => {
                use futures_util::StreamExt;
                let s = tokio_util::io::ReaderStream::with_capacity(f, 64 * 1024)
                    .map(|r| r.map_err(io));
                Ok(Some(s.boxed()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        match tokio::fs::remove_file(self.dir.join(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).await.map_err(io)?;
        self.size += data.len() as u64;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        let FsWriter {
            file,
            tmp,
            path,
            size,
        } = *self;
        let done = async {
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = done {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io(e));
        }
        Ok(size)
    }

    async fn abort(self: Box<Self>) {
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

/// Chunk size in the database.
const CHUNK: usize = 256 * 1024;

/// Blobs in the server's database, in chunks of 256 KiB. An upload writes
/// its chunks under a temporary name and the last step renames them in one
/// statement, so a blob is either whole or absent; chunks of an upload cut
/// by a crash are swept on open.
pub struct SqlBlobStore {
    db: Db,
}

impl SqlBlobStore {
    /// The blob store in a server store's database.
    pub async fn of(server: &crate::SqlServerStore) -> Result<SqlBlobStore> {
        use crate::sql::sealed::HasDb;
        let db = server.db().clone();
        sqlx::query("DELETE FROM blob_chunks WHERE id LIKE 'tmp:%' AND created < $1")
            .bind(i(now_ms().saturating_sub(24 * 3600 * 1000)))
            .execute(&db.writer)
            .await?;
        Ok(SqlBlobStore { db })
    }
}

struct SqlWriter {
    db: Db,
    id: String,
    tmp: String,
    buf: Vec<u8>,
    n: i64,
    size: u64,
}

impl SqlWriter {
    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        sqlx::query("INSERT INTO blob_chunks (id, n, data, created) VALUES ($1, $2, $3, $4)")
            .bind(&self.tmp)
            .bind(self.n)
            .bind(std::mem::take(&mut self.buf))
            .bind(i(now_ms()))
            .execute(&self.db.writer)
            .await?;
        self.n += 1;
        Ok(())
    }

    async fn drop_tmp(&self) -> Result<()> {
        sqlx::query("DELETE FROM blob_chunks WHERE id = $1")
            .bind(&self.tmp)
            .execute(&self.db.writer)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl BlobStore for SqlBlobStore {
    async fn create(&self, id: &str) -> Result<Box<dyn BlobWriter>> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)
            .map_err(|e| StoreError::Backend(format!("no randomness: {e}")))?;
        Ok(Box::new(SqlWriter {
            db: self.db.clone(),
            id: id.to_owned(),
            tmp: format!("tmp:{id}:{}", hex::encode(nonce)),
            buf: Vec::with_capacity(CHUNK),
            n: 0,
            size: 0,
        }))
    }

    async fn open(&self, id: &str) -> Result<Option<BlobStream>> {
        let chunks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blob_chunks WHERE id = $1")
            .bind(id)
            .fetch_one(&self.db.readers)
            .await?;
        if chunks == 0 {
            return Ok(None);
        }
        let (db, id) = (self.db.clone(), id.to_owned());
        // One chunk per query: no connection is held while the client reads.
        let s = stream::try_unfold(0i64, move |n| {
            let (db, id) = (db.clone(), id.clone());
            async move {
                if n >= chunks {
                    return Ok(None);
                }
                let data: Vec<u8> =
                    sqlx::query_scalar("SELECT data FROM blob_chunks WHERE id = $1 AND n = $2")
                        .bind(&id)
                        .bind(n)
                        .fetch_one(&db.readers)
                        .await?;
                Ok(Some((Bytes::from(data), n + 1)))
            }
        });
        Ok(Some(Box::pin(s)))
    }

    async fn remove(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM blob_chunks WHERE id = $1")
            .bind(id)
            .execute(&self.db.writer)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for SqlWriter {
    async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.size += data.len() as u64;
        while !data.is_empty() {
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let done = async {
            self.flush().await?;
            if self.n == 0 {
                // an empty blob is one empty chunk, so that it exists
                self.buf = Vec::new();
                sqlx::query(
                    "INSERT INTO blob_chunks (id, n, data, created) VALUES ($1, 0, $2, $3)",
                )
                .bind(&self.tmp)
                .bind(Vec::<u8>::new())
                .bind(i(now_ms()))
                .execute(&self.db.writer)
                .await?;
            }
            sqlx::query("UPDATE blob_chunks SET id = $1 WHERE id = $2")
                .bind(&self.id)
                .bind(&self.tmp)
                .execute(&self.db.writer)
                .await
                .map_err(crate::db::unique("blob id already used"))?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(e) = done {
            let _ = self.drop_tmp().await;
            return Err(e);
        }
        Ok(self.size)
    }

    async fn abort(self: Box<Self>) {
        let _ = self.drop_tmp().await;
    }
}
