//! Fresh databases for tests: a SQLite file in a temporary directory, or a
//! PostgreSQL database created for the test and dropped after it.
//!
//! PostgreSQL is found at `CLOISTER_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Where it cannot be reached, a test
//! that asks for it fails when `CI` is set (the project's CI always has
//! it); elsewhere it says so loudly on stderr and gets `None`.

use sqlx::Connection;
use std::sync::atomic::{AtomicU32, Ordering};

/// The server the test databases are made on.
pub fn postgres_admin_url() -> String {
    std::env::var("CLOISTER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database of its own for one test; dropped (with its connections)
/// when this is dropped.
pub struct PgDatabase {
    pub url: String,
    name: String,
    admin: String,
}

impl PgDatabase {
    /// Create a fresh, empty database; `None` (after a loud warning) where
    /// PostgreSQL is not reachable and `CI` is not set.
    pub async fn create() -> Option<PgDatabase> {
        static N: AtomicU32 = AtomicU32::new(0);
        let admin = postgres_admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => return unavailable(&admin, &e),
        };
        let name = format!(
            "cloister_t{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            crate::db::now_ms() % 1_000_000
        );
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
        {
            return unavailable(&admin, &e);
        }
        let _ = conn.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Some(PgDatabase {
            url: format!("{base}/{name}"),
            name,
            admin,
        })
    }
}

/// Fail in CI, warn loudly elsewhere.
fn unavailable<T>(admin: &str, e: &dyn std::fmt::Display) -> Option<T> {
    let msg = format!(
        "PostgreSQL is not usable at {} ({e}): the PostgreSQL half of this test did NOT run. \
         Start PostgreSQL or set CLOISTER_TEST_POSTGRES.",
        crate::redact_url(admin)
    );
    if std::env::var_os("CI").is_some() {
        #[allow(clippy::panic)]
        {
            panic!("{msg}");
        }
    }
    eprintln!("\n*** WARNING: {msg}\n");
    None
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop from a thread of its own: this may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}
