//! One connection layer for both backends: a URL picks SQLite or
//! PostgreSQL, the store's versioned migrations for that backend run on
//! open, and a database newer than this binary is refused.
//!
//! The stores' queries are written once, in the SQL both engines accept
//! (`$1` parameters, `ON CONFLICT`, `RETURNING`); the few places where the
//! engines differ (write transactions, row locks, scrubbing) ask [`Db`].

use crate::{Result, StoreError};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, SqlSafeStr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The engine behind a connection of the run-time driver.
    pub fn of(conn: &sqlx::AnyConnection) -> Backend {
        if conn.backend_name().eq_ignore_ascii_case("sqlite") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }
}

/// Which service's tables a database holds. Each keeps its own migration
/// history, so a database given to the wrong service is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Km,
    Vault,
    Witness,
    Gateway,
}

impl Role {
    const ALL: [Role; 5] = [
        Role::Server,
        Role::Km,
        Role::Vault,
        Role::Witness,
        Role::Gateway,
    ];

    fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Km => "km",
            Role::Vault => "vault",
            Role::Witness => "witness",
            Role::Gateway => "gateway",
        }
    }

    fn table(self) -> &'static str {
        match self {
            Role::Server => "_cloister_server_migrations",
            Role::Km => "_cloister_km_migrations",
            Role::Vault => "_cloister_vault_migrations",
            Role::Witness => "_cloister_witness_migrations",
            Role::Gateway => "_cloister_gateway_migrations",
        }
    }

    /// Every migration of this role for `backend`, oldest first. A file,
    /// once released, never changes (its checksum is stored); a change is a
    /// new file.
    fn migrations(self, backend: Backend) -> &'static [(i64, &'static str, &'static str)] {
        macro_rules! m {
            ($b:literal, $r:literal, [$(($v:literal, $name:literal)),*]) => {
                &[$(($v, $name, include_str!(concat!("../migrations/", $b, "/", $r, "/", $name, ".sql")))),*]
            };
        }
        match (backend, self) {
            (Backend::Sqlite, Role::Server) => {
                m!(
                    "sqlite",
                    "server",
                    [
                        (1, "0001_initial"),
                        (2, "0002_blob_chunks"),
                        (3, "0003_meta"),
                        (4, "0004_mls")
                    ]
                )
            }
            (Backend::Sqlite, Role::Km) => m!(
                "sqlite",
                "km",
                [
                    (1, "0001_initial"),
                    (2, "0002_code_failures"),
                    (3, "0003_escrow_generations")
                ]
            ),
            (Backend::Sqlite, Role::Vault) => m!(
                "sqlite",
                "vault",
                [(1, "0001_initial"), (2, "0002_escrow_generation")]
            ),
            (Backend::Sqlite, Role::Witness) => m!("sqlite", "witness", [(1, "0001_initial")]),
            (Backend::Sqlite, Role::Gateway) => m!("sqlite", "gateway", [(1, "0001_initial")]),
            (Backend::Postgres, Role::Server) => {
                m!(
                    "postgres",
                    "server",
                    [
                        (1, "0001_initial"),
                        (2, "0002_blob_chunks"),
                        (3, "0003_meta"),
                        (4, "0004_mls")
                    ]
                )
            }
            (Backend::Postgres, Role::Km) => m!(
                "postgres",
                "km",
                [
                    (1, "0001_initial"),
                    (2, "0002_code_failures"),
                    (3, "0003_escrow_generations")
                ]
            ),
            (Backend::Postgres, Role::Vault) => m!(
                "postgres",
                "vault",
                [(1, "0001_initial"), (2, "0002_escrow_generation")]
            ),
            (Backend::Postgres, Role::Witness) => m!("postgres", "witness", [(1, "0001_initial")]),
            (Backend::Postgres, Role::Gateway) => m!("postgres", "gateway", [(1, "0001_initial")]),
        }
    }

    fn migrator(self, backend: Backend) -> Migrator {
        let list = self
            .migrations(backend)
            .iter()
            .map(|(v, name, sql)| {
                Migration::new(
                    *v,
                    (*name).into(),
                    MigrationType::Simple,
                    sqlx::AssertSqlSafe(*sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut m = Migrator::with_migrations(list);
        m.dangerous_set_table_name(self.table());
        m
    }
}

/// A store's connections: SQLite gets one writer connection (writes queue
/// in this process, in order, instead of backing off in SQLite's busy
/// handler) and eight readers; PostgreSQL one pool for both.
#[derive(Clone)]
pub struct Db {
    pub readers: AnyPool,
    pub writer: AnyPool,
    pub backend: Backend,
}

/// The URL of a SQLite database file (created if missing).
pub fn sqlite_url(path: &Path) -> String {
    let mut s = String::from("sqlite://");
    for b in path.to_string_lossy().bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'_' | b'-' => {
                s.push(b as char)
            }
            _ => s.push_str(&format!("%{b:02X}")),
        }
    }
    s.push_str("?mode=rwc");
    s
}

/// A plain SQLite pool on a database file, for tools and tests that must
/// reach under the stores (to tamper with a file, say).
pub async fn open_sqlite(path: &Path, max_conns: u32) -> Result<sqlx::SqlitePool> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    Ok(sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(max_conns)
        .connect_with(opts)
        .await?)
}

/// The backend a database URL names, or a clear error.
pub fn backend_of(url: &str) -> Result<Backend> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::Backend(
            "unsupported database URL: use sqlite://PATH or postgres://HOST/DB".into(),
        ))
    }
}

/// A database URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Db {
    /// Connect, check that the database belongs to `role` and is not newer
    /// than this binary, and apply the missing migrations.
    pub async fn open(url: &str, role: Role) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(url)?;
        let opts = AnyConnectOptions::from_str(url).map_err(|e| {
            StoreError::Backend(format!("bad database URL {}: {e}", redact_url(url)))
        })?;
        let db = match backend {
            Backend::Sqlite => Db {
                writer: sqlite_pool(&opts, 1).await?,
                readers: sqlite_pool(&opts, 8).await?,
                backend,
            },
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await
                    .map_err(|e| {
                        StoreError::Backend(format!("cannot connect to {}: {e}", redact_url(url)))
                    })?;
                Db {
                    readers: pool.clone(),
                    writer: pool,
                    backend,
                }
            }
        };
        db.refuse_other_roles(role).await?;
        role.migrator(backend)
            .run(&db.writer)
            .await
            .map_err(|e| migrate_error(role, e))?;
        Ok(db)
    }

    /// A database that already holds another service's tables is refused
    /// (the server and the KM both have `rooms`, for one).
    async fn refuse_other_roles(&self, role: Role) -> Result<()> {
        for other in Role::ALL.into_iter().filter(|r| *r != role) {
            let sql = match self.backend {
                Backend::Sqlite => {
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1"
                }
                Backend::Postgres => {
                    "SELECT COUNT(*) FROM information_schema.tables
                     WHERE table_schema = current_schema() AND table_name = $1"
                }
            };
            let n: i64 = sqlx::query_scalar(sql)
                .bind(other.table())
                .fetch_one(&self.readers)
                .await?;
            if n > 0 {
                return Err(StoreError::Backend(format!(
                    "this database holds the {}'s tables; give the {} a database of its own",
                    other.name(),
                    role.name()
                )));
            }
        }
        Ok(())
    }

    /// Begin a write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`) instead of failing when a read lock cannot be
    /// upgraded.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        })
    }

    /// Whether the database answers a query (readiness), within 2 s.
    pub async fn ping(&self) -> Result<()> {
        let q = sqlx::query("SELECT 1").execute(&self.readers);
        match tokio::time::timeout(std::time::Duration::from_secs(2), q).await {
            Ok(r) => r.map(|_| ()).map_err(Into::into),
            Err(_) => Err(StoreError::Backend(
                "the database did not answer within 2 s".into(),
            )),
        }
    }

    /// ` FOR UPDATE` where the engine has row locks (PostgreSQL); SQLite's
    /// write transaction already excludes every other writer.
    pub fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// Serialise writers of one key (e.g. a room's messages) until the end
    /// of `tx`, across every process sharing the database. SQLite's write
    /// transaction already does.
    pub async fn lock_key(&self, tx: &mut sqlx::AnyConnection, key: &str) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// Make deleted bytes unrecoverable from the database files. SQLite:
    /// fold the WAL into the database (whose freed space `secure_delete`
    /// zeroed) and truncate it; a busy reader is waited for, then it is an
    /// error. PostgreSQL: rewrite `tables` (VACUUM FULL), so no dead tuple
    /// keeps the old bytes; its WAL segments and backups are the operator's
    /// to rotate (docs/operations.md).
    pub async fn scrub(&self, tables: &[&str]) -> Result<()> {
        match self.backend {
            Backend::Sqlite => {
                for _ in 0..20 {
                    let (busy, _, _): (i64, i64, i64) =
                        sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                            .fetch_one(&self.writer)
                            .await?;
                    if busy == 0 {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(StoreError::Backend(
                    "the WAL could not be truncated (a reader stays busy); retry".into(),
                ))
            }
            Backend::Postgres => {
                for t in tables {
                    self.writer
                        .execute(sqlx::AssertSqlSafe(format!("VACUUM FULL {t}")))
                        .await?;
                }
                Ok(())
            }
        }
    }
}

fn migrate_error(role: Role, e: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError as M;
    let known = role
        .migrations(Backend::Sqlite)
        .len()
        .max(role.migrations(Backend::Postgres).len());
    StoreError::Backend(match e {
        M::VersionMissing(v) => format!(
            "the {} database is at schema version {v}, newer than this binary knows (up to {known}): \
             run the newer binary or restore a backup",
            role.name()
        ),
        M::VersionMismatch(v) => format!(
            "the {} database's migration {v} differs from this binary's: the database was changed by hand \
             or by a different build",
            role.name()
        ),
        M::Dirty(v) => format!(
            "the {} database's migration {v} failed part way; restore a backup",
            role.name()
        ),
        e => format!("migrating the {} database: {e}", role.name()),
    })
}

/// Open a SQLite pool with the pragmas every connection needs: WAL with
/// full fsync, a busy timeout, foreign keys, a 32 MiB page cache (index
/// pages of large tables stay in memory), `secure_delete` (deleted
/// content is overwritten with zeros: retention must destroy, not hide),
/// and a checkpoint every 32,768 WAL pages (128 MiB) instead of SQLite's
/// 1,000: an index page that every batch dirties (a room's, a busy blind
/// token's) is copied into the database once per checkpoint, not once per
/// 4 MiB of log. Measured on the vault's ingest: 47 % more captures per
/// second, a third fewer bytes written (docs/benchmarks.md).
async fn sqlite_pool(opts: &AnyConnectOptions, max: u32) -> Result<AnyPool> {
    Ok(AnyPoolOptions::new()
        .max_connections(max)
        .after_connect(|conn, _| {
            Box::pin(async move {
                for p in [
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = FULL",
                    "PRAGMA busy_timeout = 10000",
                    "PRAGMA foreign_keys = ON",
                    "PRAGMA cache_size = -32768",
                    "PRAGMA secure_delete = ON",
                    "PRAGMA temp_store = MEMORY",
                    "PRAGMA wal_autocheckpoint = 32768",
                ] {
                    conn.execute(p).await?;
                }
                Ok(())
            })
        })
        .connect_with(opts.clone())
        .await?)
}

/// Map a uniqueness violation to `Conflict(msg)`, anything else to `Backend`.
pub(crate) fn unique(msg: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(msg),
        e => e.into(),
    }
}

/// SQL text with numbered parameters (`$1`, `$2`, …) built piece by piece.
#[derive(Default)]
pub(crate) struct Sql {
    pub text: String,
    n: usize,
    /// SQLite: bare `?` placeholders, bound in order. SQLite looks a named
    /// parameter (`$7`) up by a linear scan, so binding a statement with
    /// hundreds of them costs time quadratic in their number.
    anonymous: bool,
}

impl Sql {
    pub fn new(s: &str) -> Sql {
        Sql {
            text: s.to_owned(),
            n: 0,
            anonymous: false,
        }
    }
    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }
    /// Append the next parameter.
    pub fn param(&mut self) -> &mut Self {
        self.n += 1;
        if self.anonymous {
            self.text.push('?');
        } else {
            self.text.push_str(&format!("${}", self.n));
        }
        self
    }
    /// Append `n` parameters separated by commas.
    pub fn params(&mut self, n: usize) -> &mut Self {
        for k in 0..n {
            if k > 0 {
                self.text.push_str(", ");
            }
            self.param();
        }
        self
    }
    /// `PREFIX VALUES ($1, …), …` for `rows` rows of `cols` columns (`?`
    /// for each on SQLite); `prefix` itself must hold no parameter.
    pub fn insert(backend: Backend, prefix: &str, cols: usize, rows: usize) -> Sql {
        let mut s = Sql::new(prefix);
        s.anonymous = backend == Backend::Sqlite;
        s.push(" VALUES ");
        for r in 0..rows {
            if r > 0 {
                s.push(", ");
            }
            s.push("(").params(cols).push(")");
        }
        s
    }
    pub fn build(self) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(self.text)
    }
}

/// Split `items` into runs for multi-row statements: runs of `max` (a power
/// of two), then what is left in falling powers of two. A statement's text
/// then takes one of `log2(max) + 1` shapes, which the driver keeps prepared,
/// instead of a new text (parsed and planned again) for every batch size.
pub(crate) fn runs<T>(mut items: &[T], max: usize) -> Vec<&[T]> {
    debug_assert!(max.is_power_of_two());
    let mut out = Vec::new();
    while !items.is_empty() {
        let n = if items.len() >= max {
            max
        } else {
            1 << items.len().ilog2()
        };
        let (run, rest) = items.split_at(n);
        out.push(run);
        items = rest;
    }
    out
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn u(v: i64) -> u64 {
    v.max(0) as u64
}

pub(crate) fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            sqlite_url(Path::new("/tmp/a b/s.db")),
            "sqlite:///tmp/a%20b/s.db?mode=rwc"
        );
        assert_eq!(backend_of("sqlite:///x").unwrap(), Backend::Sqlite);
        assert_eq!(backend_of("postgres://h/db").unwrap(), Backend::Postgres);
        assert!(backend_of("mysql://h/db").is_err());
        assert_eq!(
            redact_url("postgres://bob:secret@h:5432/db"),
            "postgres://bob:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn sql_builder_numbers_parameters() {
        let sizes = |n: usize| {
            let v: Vec<usize> = (0..n).collect();
            runs(&v, 64).iter().map(|r| r.len()).collect::<Vec<_>>()
        };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), vec![1]);
        assert_eq!(sizes(100), vec![64, 32, 4]);
        assert_eq!(sizes(200), vec![64, 64, 64, 8]);
        let v: Vec<usize> = (0..77).collect();
        assert_eq!(runs(&v, 64).concat(), v, "in order, each item once");
        let mut s = Sql::insert(Backend::Postgres, "INSERT INTO t (a, b)", 2, 2);
        s.push(" WHERE x IN (").params(2).push(")");
        assert_eq!(
            s.text,
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) WHERE x IN ($5, $6)"
        );
        let s = Sql::insert(Backend::Sqlite, "INSERT INTO t (a, b)", 2, 2);
        assert_eq!(s.text, "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)");
    }
}
