//! `cloister admin backup` and `restore`: an online, consistent copy of a
//! service's SQLite data directory (KM, server, vault, witness) and its
//! return.
//!
//! Each database is copied with `VACUUM INTO` (one read transaction: the
//! database as of one instant, while the service goes on writing); the
//! other files (the sealed master key, the operator token, attachments)
//! are copied after it, so every attachment the copy names is there. A
//! manifest lists every file with its SHA-256 and, for each database with
//! an audit log, the newest checkpoint the copy holds. A restore checks
//! every hash before it writes anything, into an empty directory only,
//! and leaves `restored.json` there: the KM records the restore in its
//! audit log on its next start, and every device or witness that saw a
//! later checkpoint reports the rollback with both sizes, so what was lost
//! is named, never silently forked over.

use crate::BoxError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The manifest's file name in a backup.
pub const MANIFEST: &str = "backup.json";
/// The marker a restore leaves in the data directory.
pub const RESTORED: &str = "restored.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub created_ms: u64,
    pub files: Vec<FileEntry>,
    /// Each audit log in the copy: its database and newest checkpoint.
    pub logs: Vec<LogState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the data directory, `/`-separated.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogState {
    pub database: String,
    /// Entries in the log at the backup (all under `checkpoint`).
    pub size: u64,
    /// The signed checkpoint (C2SP note) of that size.
    pub checkpoint: String,
}

/// What a restore leaves for the service to record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    pub backup_created_ms: u64,
    pub restored_ms: u64,
    pub logs: Vec<LogState>,
}

fn io(path: &Path, e: std::io::Error) -> BoxError {
    format!("{}: {e}", path.display()).into()
}

fn is_sidecar(name: &str) -> bool {
    name.ends_with("-wal") || name.ends_with("-shm") || name.ends_with("-journal")
}

/// Files of `dir` (recursively), relative paths, sorted.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), BoxError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let path = e.path();
        let t = e.file_type().map_err(|e| io(&path, e))?;
        if t.is_dir() {
            walk(&path, &rel.join(&name), out)?;
        } else if t.is_file() {
            out.push(rel.join(&name));
        }
    }
    Ok(())
}

fn rel_string(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn hash_file(path: &Path) -> Result<(u64, String), BoxError> {
    let data = std::fs::read(path).map_err(|e| io(path, e))?;
    Ok((
        data.len() as u64,
        hex::encode(cloister_crypto::sha256(&data)),
    ))
}

/// Copy `src` to the new file `dst` with its permissions, synced.
fn copy_file(src: &Path, dst: &Path) -> Result<(), BoxError> {
    if let Some(p) = dst.parent() {
        std::fs::create_dir_all(p).map_err(|e| io(p, e))?;
    }
    std::fs::copy(src, dst).map_err(|e| io(src, e))?;
    std::fs::File::open(dst)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(dst, e))?;
    Ok(())
}

/// Back up the data directory `data_dir` into the new directory `out`.
pub async fn backup(data_dir: &Path, out: &Path) -> Result<Manifest, BoxError> {
    if !data_dir.is_dir() {
        return Err(format!("{} is not a data directory", data_dir.display()).into());
    }
    if out.exists() {
        return Err(format!(
            "{} already exists; a backup goes to a new directory",
            out.display()
        )
        .into());
    }
    let mut files = Vec::new();
    walk(data_dir, Path::new(""), &mut files)?;
    let (dbs, others): (Vec<_>, Vec<_>) = files
        .into_iter()
        .filter(|p| !is_sidecar(&p.to_string_lossy()))
        .partition(|p| p.extension().is_some_and(|e| e == "db"));
    if dbs.is_empty() {
        return Err(format!("{} holds no database (*.db)", data_dir.display()).into());
    }
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    // Databases first: a file written later (an attachment) is still
    // copied; one the copy names is never missing.
    let mut logs = Vec::new();
    for db in &dbs {
        let dst = out.join(db);
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).map_err(|e| io(p, e))?;
        }
        cloister_store::sqlite_snapshot(&data_dir.join(db), &dst).await?;
        if let Some((size, checkpoint)) = cloister_store::sqlite_latest_checkpoint(&dst).await? {
            logs.push(LogState {
                database: rel_string(db),
                size,
                checkpoint,
            });
        }
    }
    for f in &others {
        copy_file(&data_dir.join(f), &out.join(f))?;
    }
    let mut entries = Vec::new();
    for f in dbs.iter().chain(others.iter()) {
        let (bytes, sha256) = hash_file(&out.join(f))?;
        entries.push(FileEntry {
            path: rel_string(f),
            bytes,
            sha256,
        });
    }
    let m = Manifest {
        version: 1,
        created_ms: cloister_proto::now_millis(),
        files: entries,
        logs,
    };
    let path = out.join(MANIFEST);
    std::fs::write(&path, serde_json::to_vec_pretty(&m)?).map_err(|e| io(&path, e))?;
    Ok(m)
}

/// A manifest path that stays inside the backup.
fn safe_rel(p: &str) -> Result<PathBuf, BoxError> {
    let rel = PathBuf::from(p);
    let ok = !p.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(rel)
    } else {
        Err(format!("the manifest names a path outside the backup: {p:?}").into())
    }
}

/// Check a backup: every file present with its hash. Its manifest.
pub fn verify(from: &Path) -> Result<Manifest, BoxError> {
    let path = from.join(MANIFEST);
    let m: Manifest = serde_json::from_slice(&std::fs::read(&path).map_err(|e| io(&path, e))?)
        .map_err(|e| format!("{}: not a backup manifest: {e}", path.display()))?;
    if m.version != 1 {
        return Err(format!("{}: backup format {} is unknown", path.display(), m.version).into());
    }
    for f in &m.files {
        let p = from.join(safe_rel(&f.path)?);
        let (bytes, sha256) = hash_file(&p)?;
        if bytes != f.bytes || sha256 != f.sha256 {
            return Err(format!(
                "{} does not match the manifest: the backup is damaged; nothing was restored",
                p.display()
            )
            .into());
        }
    }
    Ok(m)
}

/// Restore the backup `from` into `data_dir`, which must be absent or
/// empty (stop the service and move its old directory aside first).
pub fn restore(from: &Path, data_dir: &Path) -> Result<Manifest, BoxError> {
    let m = verify(from)?;
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map_err(|e| io(data_dir, e))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} is not empty: stop the service and move it aside; a restore never mixes two states",
            data_dir.display()
        )
        .into());
    }
    std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
    for f in &m.files {
        let rel = safe_rel(&f.path)?;
        copy_file(&from.join(&rel), &data_dir.join(&rel))?;
    }
    let marker = Restored {
        backup_created_ms: m.created_ms,
        restored_ms: cloister_proto::now_millis(),
        logs: m.logs.clone(),
    };
    let path = data_dir.join(RESTORED);
    std::fs::write(&path, serde_json::to_vec_pretty(&marker)?).map_err(|e| io(&path, e))?;
    Ok(m)
}

/// The restore marker of a data directory, if one waits to be recorded.
pub fn pending_restore(data_dir: &Path) -> Result<Option<Restored>, BoxError> {
    let path = data_dir.join(RESTORED);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
            format!("{}: unreadable restore marker: {e}", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path, e)),
    }
}

/// The marker was recorded: keep it beside, under another name.
pub fn restore_recorded(data_dir: &Path) -> Result<(), BoxError> {
    let from = data_dir.join(RESTORED);
    let to = data_dir.join(format!("restored-{}.json", cloister_proto::now_millis()));
    std::fs::rename(&from, &to).map_err(|e| io(&from, e))
}

/// What an operator reads after a restore.
pub fn describe(m: &Manifest) -> String {
    let mut s = format!(
        "{} files restored from a backup taken at {} ms since the Unix epoch",
        m.files.len(),
        m.created_ms
    );
    for l in &m.logs {
        s.push_str(&format!(
            "\n{}: its log ends at {} entries (the backup's checkpoint). A device or witness \
             that saw a later checkpoint will report a rollback naming its size: the entries \
             after {} are lost.",
            l.database, l.size, l.size
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_stay_inside() {
        assert!(safe_rel("km.db").is_ok());
        assert!(safe_rel("blobs/ab/cd").is_ok());
        assert!(safe_rel("../etc/passwd").is_err());
        assert!(safe_rel("/etc/passwd").is_err());
        assert!(safe_rel("").is_err());
    }
}
