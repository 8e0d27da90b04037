//! Online, consistent copies of a SQLite database (`VACUUM INTO`: one read
//! transaction, so the copy is the database as of one instant, while the
//! service goes on writing), and what a copy's audit log holds.

use crate::{Result, StoreError};
use sqlx::Row;
use std::path::Path;

/// Copy the SQLite database at `src` into the new file `dst`.
pub async fn sqlite_snapshot(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        return Err(StoreError::Backend(format!(
            "{} already exists; a snapshot never overwrites",
            dst.display()
        )));
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(src)
        .create_if_missing(false)
        .busy_timeout(std::time::Duration::from_secs(30));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let to = dst
        .to_str()
        .ok_or_else(|| StoreError::Backend(format!("{} is not UTF-8", dst.display())))?;
    sqlx::query("VACUUM INTO $1")
        .bind(to)
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

/// The newest signed checkpoint `(size, note)` of the audit log in the
/// SQLite database at `path`, if it keeps one.
pub async fn sqlite_latest_checkpoint(path: &Path) -> Result<Option<(u64, String)>> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let has: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit_checkpoints'",
    )
    .fetch_optional(&pool)
    .await?;
    let out = match has {
        None => None,
        Some(_) => {
            let r =
                sqlx::query("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
                    .fetch_optional(&pool)
                    .await?;
            match r {
                Some(r) => Some((
                    u64::try_from(r.try_get::<i64, _>("size")?).unwrap_or(0),
                    r.try_get::<String, _>("note")?,
                )),
                None => None,
            }
        }
    };
    pool.close().await;
    Ok(out)
}
