//! The database every consumer writes: SQLite (embedded) or PostgreSQL (distributed) behind
//! one sqlx `Any` pool, with the migrations of `migrations/<backend>/` applied on connect.
//!
//! SQL shared by both backends uses `$n` placeholders, `ON CONFLICT` upserts and integer
//! columns only (i64 in Rust, BIGINT in PostgreSQL), so one statement text serves both.
//! Batches of rows go through [`fetch_rows`] and [`fetch_in`]: on SQLite a small batch is one
//! statement carrying its rows as one JSON array, otherwise multi-row `VALUES` pieces.

use std::fmt::Write as _;
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
        Database::connect_at_most(url, None).await
    }

    /// Connects to `url` without touching the schema, with at most `connections` open at once
    /// (`None`: 4 on SQLite, 8 on PostgreSQL). Each SQLite connection keeps its own page cache
    /// and prepared statements.
    pub async fn connect_at_most(url: &str, connections: Option<u32>) -> Result<Database, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let options = AnyConnectOptions::from_str(url)?;
        let pool_options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let pool = match backend {
            Backend::Sqlite => {
                pool_options
                    .max_connections(connections.unwrap_or(4))
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
                    .max_connections(connections.unwrap_or(8))
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
fn values_sql(
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

/// A query being bound.
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

/// A value a multi-row write carries: a bound parameter on PostgreSQL, an element of the one
/// JSON array that carries all of a write's rows on SQLite.
pub trait RowValue<'q>: sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send + 'q {
    /// Whether SQLite reads the JSON back as exactly this value. Its JSON parser rounds some
    /// doubles (1e-300 comes back as 9.999999999999999e-301), so writes carrying any are bound
    /// as parameters instead.
    const JSON_EXACT: bool = true;

    /// Appends the value as JSON.
    fn write_json(&self, out: &mut String);
}

impl RowValue<'_> for i64 {
    fn write_json(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl RowValue<'_> for f64 {
    const JSON_EXACT: bool = false;

    fn write_json(&self, out: &mut String) {
        if self.is_finite() {
            // `{:?}` is the shortest text that reads back as the same double.
            let _ = write!(out, "{self:?}");
        } else {
            out.push_str("null");
        }
    }
}

impl<'q> RowValue<'q> for &'q str {
    fn write_json(&self, out: &mut String) {
        json_string(self, out);
    }
}

impl RowValue<'_> for String {
    fn write_json(&self, out: &mut String) {
        json_string(self, out);
    }
}

impl<'q, T: RowValue<'q>> RowValue<'q> for Option<T>
where
    Option<T>: sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    const JSON_EXACT: bool = T::JSON_EXACT;

    fn write_json(&self, out: &mut String) {
        match self {
            Some(value) => value.write_json(out),
            None => out.push_str("null"),
        }
    }
}

/// The bytes a JSON string must escape: `"`, `\\` and the control characters.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// `text` as a JSON string.
fn json_string(text: &str, out: &mut String) {
    out.reserve(text.len() + 2);
    out.push('"');
    let bytes = text.as_bytes();
    let mut plain = 0;
    while let Some(at) = bytes[plain..]
        .iter()
        .position(|&b| NEEDS_ESCAPE[usize::from(b)])
    {
        let i = plain + at;
        out.push_str(&text[plain..i]);
        match bytes[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        plain = i + 1;
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

/// The values of a multi-row write's rows, as the binder of [`insert_rows`] adds them.
pub struct RowValues<'q> {
    values: Values<'q>,
    /// Values of the current row so far.
    in_row: usize,
}

enum Values<'q> {
    Params(AnyQuery<'q>),
    Json(String),
    /// A value JSON would not carry exactly was bound: the write goes as parameters.
    Inexact,
}

impl<'q> RowValues<'q> {
    /// Adds the current row's next value.
    pub fn bind<V: RowValue<'q>>(self, value: V) -> Self {
        let values = match self.values {
            Values::Params(query) => Values::Params(query.bind(value)),
            Values::Json(mut out) if V::JSON_EXACT => {
                if self.in_row > 0 {
                    out.push(',');
                }
                value.write_json(&mut out);
                Values::Json(out)
            }
            Values::Json(_) | Values::Inexact => Values::Inexact,
        };
        RowValues {
            values,
            in_row: self.in_row + 1,
        }
    }
}

/// Binds one row; fails when the binder gave other than `cols` values.
fn bind_row<'r, T>(
    values: RowValues<'r>,
    cols: usize,
    row: &'r T,
    bind: &impl Fn(RowValues<'r>, &'r T) -> RowValues<'r>,
) -> Result<RowValues<'r>, sqlx::Error> {
    let bound = bind(
        RowValues {
            in_row: 0,
            ..values
        },
        row,
    );
    if bound.in_row == cols {
        Ok(bound)
    } else {
        Err(sqlx::Error::Encode(
            format!(
                "a row of {} values where {cols} were expected",
                bound.in_row
            )
            .into(),
        ))
    }
}

/// Most rows [`fetch_rows`] carries as one JSON array on SQLite.
pub const JSON_ROWS: usize = 64;

/// Runs `prefix ROWS suffix` over `rows`, every row's `cols` values bound by `bind`, and
/// returns what the statements return: an `INSERT INTO t (…)` prefix writes them (`suffix`
/// may hold an upsert and `RETURNING`), a `SELECT … WHERE (a, b) IN (` prefix with a `)`
/// suffix looks them up.
///
/// On SQLite up to [`JSON_ROWS`] rows go in one statement: ROWS is `SELECT r.value ->> 0, …
/// FROM jsonb_each(?) AS r WHERE true`, the rows one JSON array parameter, and the text is the
/// same for every batch, hence always prepared. Through sqlx every statement is a round trip
/// to the connection's worker thread (two context switches when both sides idle), which is
/// what small batches pay most for. More rows, rows on PostgreSQL, and rows carrying a value
/// JSON would not carry exactly ([`RowValue::JSON_EXACT`]) go as a multi-row `VALUES` of at
/// most `per_statement` rows, one statement per [`pieces`] slice: per row, SQLite's JSON
/// extraction costs about twice what binding parameters does (`->> c` walks the row's array
/// from its start), which outweighs the trips saved once batches are large.
pub async fn fetch_rows<'r, T>(
    conn: &mut sqlx::AnyConnection,
    prefix: &str,
    cols: usize,
    suffix: &str,
    per_statement: usize,
    rows: &'r [T],
    bind: impl Fn(RowValues<'r>, &'r T) -> RowValues<'r>,
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    if rows.len() <= JSON_ROWS && conn.backend_name().eq_ignore_ascii_case("sqlite") {
        let mut values = RowValues {
            values: Values::Json(String::with_capacity(rows.len() * cols * 12 + 2)),
            in_row: 0,
        };
        for (i, row) in rows.iter().enumerate() {
            if let Values::Json(out) = &mut values.values {
                out.push_str(if i == 0 { "[[" } else { "],[" });
            }
            values = bind_row(values, cols, row, &bind)?;
            if matches!(values.values, Values::Inexact) {
                break;
            }
        }
        if let Values::Json(mut array) = values.values {
            array.push_str("]]");
            return sqlx::query(sqlx::AssertSqlSafe(json_rows_sql(prefix, cols, suffix)))
                .bind(array)
                .fetch_all(&mut *conn)
                .await;
        }
    }
    let mut returned = Vec::new();
    for chunk in pieces(rows, per_statement) {
        let sql = values_sql(conn, prefix, cols, chunk.len(), suffix);
        let mut values = RowValues {
            values: Values::Params(sqlx::query(sqlx::AssertSqlSafe(sql))),
            in_row: 0,
        };
        for row in chunk {
            values = bind_row(values, cols, row, &bind)?;
        }
        let Values::Params(query) = values.values else {
            return Err(sqlx::Error::Encode("rows lost their query".into()));
        };
        returned.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(returned)
}

/// `prefix SELECT r.value ->> 0, … FROM jsonb_each(?) AS r WHERE true suffix`: the rows of
/// one JSON array parameter as a statement's rows.
fn json_rows_sql(prefix: &str, cols: usize, suffix: &str) -> String {
    let mut sql = String::with_capacity(prefix.len() + suffix.len() + 48 + cols * 18);
    sql.push_str(prefix);
    sql.push_str(" SELECT ");
    for c in 0..cols {
        if c > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "r.value ->> {c}");
    }
    // `WHERE true`: without it SQLite would read the `ON CONFLICT` of an upsert as a join's.
    sql.push_str(" FROM jsonb_each(?) AS r WHERE true ");
    sql.push_str(suffix);
    sql
}

/// [`fetch_rows`] for writes that return nothing.
pub async fn insert_rows<'r, T>(
    conn: &mut sqlx::AnyConnection,
    prefix: &str,
    cols: usize,
    suffix: &str,
    per_statement: usize,
    rows: &'r [T],
    bind: impl Fn(RowValues<'r>, &'r T) -> RowValues<'r>,
) -> Result<(), sqlx::Error> {
    fetch_rows(conn, prefix, cols, suffix, per_statement, rows, bind).await?;
    Ok(())
}

/// The rows of `head IN (…) tail` for the keys `ids`, by [`fetch_rows`]: one statement for up
/// to [`JSON_ROWS`] keys on SQLite, else one per slice of at most `per_statement` keys.
pub async fn fetch_in<S: AsRef<str> + Sync>(
    conn: &mut sqlx::AnyConnection,
    head: &str,
    tail: &str,
    per_statement: usize,
    ids: &[S],
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let prefix = format!("{head} IN (");
    let suffix = format!(") {tail}");
    fetch_rows(
        conn,
        &prefix,
        1,
        &suffix,
        per_statement,
        ids,
        |values, id| values.bind(id.as_ref()),
    )
    .await
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
