//! The database every consumer writes: SQLite (embedded) or PostgreSQL (distributed) behind
//! one sqlx `Any` pool, with the migrations of `migrations/<backend>/` applied on connect.
//!
//! SQL shared by both backends uses `$n` placeholders, `ON CONFLICT` upserts and integer
//! columns only (i64 in Rust, BIGINT in PostgreSQL), so one statement text serves both.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (embedded mode).
    Sqlite,
    /// A PostgreSQL server (distributed mode).
    Postgres,
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error("unsupported database url `{0}`: expected sqlite://FILE or postgres://…")]
    UnsupportedUrl(String),
    /// Connecting or querying failed.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// A connection pool and the backend it talks to.
#[derive(Clone, Debug)]
pub struct Database {
    /// The pool; statements must be valid on both backends or branch on [`Database::backend`].
    pub pool: AnyPool,
    /// The backend behind the pool.
    pub backend: Backend,
}

impl Backend {
    /// The backend a URL names.
    pub fn of_url(url: &str) -> Result<Backend, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(DbError::UnsupportedUrl(redact(url)))
        }
    }
}

/// The URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The URL of a SQLite database file, created when missing.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

impl Database {
    /// Connects to `url` and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Database, DbError> {
        let db = Database::connect_without_migrating(url).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Connects to `url` without touching the schema.
    pub async fn connect_without_migrating(url: &str) -> Result<Database, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let options = AnyConnectOptions::from_str(url)?;
        let pool_options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let pool = match backend {
            Backend::Sqlite => {
                pool_options
                    .max_connections(4)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Backend::Postgres => {
                pool_options
                    .max_connections(8)
                    .connect_with(options)
                    .await?
            }
        };
        Ok(Database { pool, backend })
    }

    /// Applies the backend's pending migrations.
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }
}

/// `prefix VALUES (…), (…) suffix` for `rows` rows of `cols` parameters, with the placeholder
/// style that is fast on `conn`'s backend: `?` on SQLite (whose lookup of numbered parameters
/// is linear, so thousands of `$n` in one statement cost quadratic time), `$n` on PostgreSQL.
pub fn values_sql(
    conn: &sqlx::AnyConnection,
    prefix: &str,
    cols: usize,
    rows: usize,
    suffix: &str,
) -> String {
    let numbered = !conn.backend_name().eq_ignore_ascii_case("sqlite");
    let mut sql = String::with_capacity(prefix.len() + suffix.len() + 16 + rows * cols * 6);
    sql.push_str(prefix);
    sql.push_str(" VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push(',');
            }
            if numbered {
                sql.push('$');
                sql.push_str(&(r * cols + c + 1).to_string());
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    if !suffix.is_empty() {
        sql.push(' ');
        sql.push_str(suffix);
    }
    sql
}

/// A query being bound, as [`insert_rows`] hands it to its binder.
pub type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// `rows` cut into slices whose lengths are powers of four (at most `max`, rounded down to
/// one), largest first. Statements built per slice then come in five shapes at most (1, 4, 16,
/// 64, 256 rows), so every shape of every statement fits a connection's statement cache
/// (100 statements) and stays prepared, instead of a new text being parsed for every batch
/// size; a batch of n rows takes at most 3 · log4(n) + 1 statements.
pub fn pieces<T>(rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let power_of_four = |n: usize| 1usize << (n.max(1).ilog2() & !1);
    let cap = power_of_four(max);
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = cap.min(power_of_four(rest.len()));
        let (head, tail) = rest.split_at(size);
        rest = tail;
        Some(head)
    })
}

/// Writes `rows` with multi-row statements of at most `per_statement` rows each (cut by
/// [`pieces`]): `prefix VALUES (…), (…) suffix`, every row's `cols` values bound by `bind`.
pub async fn insert_rows<'r, T>(
    conn: &mut sqlx::AnyConnection,
    prefix: &str,
    cols: usize,
    suffix: &str,
    per_statement: usize,
    rows: &'r [T],
    bind: impl Fn(AnyQuery<'r>, &'r T) -> AnyQuery<'r>,
) -> Result<(), sqlx::Error> {
    for chunk in pieces(rows, per_statement) {
        let sql = values_sql(conn, prefix, cols, chunk.len(), suffix);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = bind(query, row);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `(p1, p2, …)` for an `IN` list of `n` parameters, in `conn`'s fast placeholder style.
pub fn in_list(conn: &sqlx::AnyConnection, n: usize) -> String {
    let numbered = !conn.backend_name().eq_ignore_ascii_case("sqlite");
    let items: Vec<String> = (1..=n)
        .map(|i| {
            if numbered {
                format!("${i}")
            } else {
                "?".to_string()
            }
        })
        .collect();
    format!("({})", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_powers_of_four_and_cover_every_row_once() {
        let rows: Vec<usize> = (0..1000).collect();
        for n in [0, 1, 2, 3, 37, 255, 256, 257, 1000] {
            let sizes: Vec<usize> = pieces(&rows[..n], 500).map(<[usize]>::len).collect();
            assert!(
                sizes
                    .iter()
                    .all(|s| s.is_power_of_two() && s.ilog2() % 2 == 0 && *s <= 256),
                "{n}: {sizes:?}"
            );
            assert_eq!(sizes.iter().sum::<usize>(), n);
            let joined: Vec<usize> = pieces(&rows[..n], 500).flatten().copied().collect();
            assert_eq!(joined, rows[..n]);
        }
        assert_eq!(
            pieces(&rows[..37], 500)
                .map(<[usize]>::len)
                .collect::<Vec<_>>(),
            [16, 16, 4, 1]
        );
    }
}
