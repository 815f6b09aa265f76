//! Test support: a fresh, migrated database of either backend per test, and an Apache Kafka
//! broker (`kafka`) for the distributed-mode tests and benchmarks.
//!
//! PostgreSQL comes from `LUMINA_TEST_DATABASE_URL`, a URL of a role allowed to create
//! databases; `scripts/test.sh` starts a server and sets it. Without it, PostgreSQL tests fail
//! with a message saying so: they never skip.
#![allow(clippy::expect_used, clippy::panic)]

pub mod kafka;

use lumina_eventlog::{Backend, Database};
use sqlx::Connection;

/// Environment variable holding the PostgreSQL URL tests create their databases with.
pub const PG_ENV: &str = "LUMINA_TEST_DATABASE_URL";

/// Both backends, for tests that must hold on each.
pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// An empty database for one test; SQLite files live as long as this value.
pub struct TestDb {
    /// Connection URL of the database.
    pub url: String,
    /// Which backend it is.
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

/// The PostgreSQL URL tests use, or a panic explaining how to get one.
pub fn postgres_url() -> String {
    std::env::var(PG_ENV).unwrap_or_else(|_| {
        panic!(
            "{PG_ENV} is not set: PostgreSQL tests need a server. Run ./scripts/test.sh, which \
             starts PostgreSQL and sets it, or export {PG_ENV}=postgres://USER:PASS@127.0.0.1:5432/postgres"
        )
    })
}

/// A fresh, empty (not migrated) database of `backend`.
pub async fn fresh_database(backend: Backend) -> TestDb {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = lumina_eventlog::db::sqlite_url(&dir.path().join("test.db"));
            TestDb {
                url,
                backend,
                _dir: Some(dir),
            }
        }
        Backend::Postgres => {
            let admin = postgres_url();
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {PG_ENV}: {e}"));
            let name = format!("lumina_t_{}", uuid::Uuid::new_v4().simple());
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let _ = conn.close().await;
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            TestDb {
                url: format!("{base}/{name}"),
                backend,
                _dir: None,
            }
        }
    }
}

/// A fresh database of `backend`, connected and migrated.
pub async fn migrated_database(backend: Backend) -> (TestDb, Database) {
    let test_db = fresh_database(backend).await;
    let db = Database::connect(&test_db.url)
        .await
        .unwrap_or_else(|e| panic!("connect {:?}: {e}", backend));
    (test_db, db)
}
