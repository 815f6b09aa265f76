//! Multi-row writes and `IN` lookups (`db::fetch_rows`, `db::fetch_in`) on both backends:
//! every value comes back exactly as written whatever the batch size (SQLite carries the rows
//! as one JSON array, PostgreSQL as bound parameters; doubles, which SQLite's JSON parser may
//! round, are bound as parameters on both), upserts within one write behave as row-by-row
//! ones, and a binder that gives a row the wrong number of values is refused.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use lumina_eventlog::Backend;
use lumina_eventlog::db::{fetch_in, fetch_rows, insert_rows};
use lumina_testkit::{BACKENDS, migrated_database};
use sqlx::Row;

/// A row of every kind of value the projections write.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    id: String,
    text: Option<String>,
    number: Option<i64>,
}

/// `n` rows cycling through awkward texts and integers; a NUL character only on SQLite
/// (PostgreSQL's text refuses it, whichever way it is written).
fn samples(backend: Backend, n: usize) -> Vec<Sample> {
    let nul = if backend == Backend::Sqlite {
        "nul \u{0} inside"
    } else {
        "no nul"
    };
    let texts = [
        "plain",
        "quote \" and backslash \\ and slash /",
        "control \u{1} \t \n \r \u{1f} end",
        nul,
        "unicode: Grüße, 日本語, emoji 🦀, U+2028 \u{2028}",
        "",
        "{\"looks\": [\"like\", \"json\"]}",
        "'single' ; DROP TABLE t; --",
    ];
    let numbers = [0, 1, -1, i64::MAX, i64::MIN, 9_007_199_254_740_993];
    (0..n)
        .map(|i| Sample {
            id: format!("row-{i:05}"),
            text: (i % 9 != 8).then(|| texts[i % texts.len()].to_string()),
            number: (i % 7 != 6).then(|| numbers[i % numbers.len()]),
        })
        .collect()
}

async fn scenario_rows_round_trip_exactly(backend: Backend) {
    let (_t, db) = migrated_database(backend).await;
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query(
        "CREATE TABLE row_samples (id TEXT PRIMARY KEY, text_value TEXT, number_value BIGINT,
             real_value DOUBLE PRECISION, hits BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    // 1 and a few (one JSON array on SQLite), more than one statement holds, and past
    // SQLite's parameter limit.
    for n in [1, 7, 300, 9_000] {
        sqlx::query("DELETE FROM row_samples")
            .execute(&mut *conn)
            .await
            .unwrap();
        let rows = samples(backend, n);
        insert_rows(
            &mut conn,
            "INSERT INTO row_samples (id, text_value, number_value, hits)",
            4,
            "",
            256,
            &rows,
            |values, r| {
                values
                    .bind(r.id.as_str())
                    .bind(r.text.as_deref())
                    .bind(r.number)
                    .bind(1i64)
            },
        )
        .await
        .unwrap();
        let read: Vec<Sample> =
            sqlx::query("SELECT id, text_value, number_value FROM row_samples ORDER BY id")
                .fetch_all(&mut *conn)
                .await
                .unwrap()
                .iter()
                .map(|r| Sample {
                    id: r.get(0),
                    text: r.get(1),
                    number: r.get(2),
                })
                .collect();
        assert_eq!(read, rows, "{backend:?}, {n} rows");
    }

    // An upsert adding to existing rows, with RETURNING, and a key twice in one write on
    // SQLite (later wins, as row by row; PostgreSQL refuses that, so its callers never do it).
    let mut bumps: Vec<(String, i64)> = (0..5).map(|i| (format!("row-{i:05}"), 10)).collect();
    if backend == Backend::Sqlite {
        bumps.push(("row-00001".into(), 100));
    }
    let returned = fetch_rows(
        &mut conn,
        "INSERT INTO row_samples (id, real_value, hits)",
        3,
        "ON CONFLICT (id) DO UPDATE SET hits = row_samples.hits + excluded.hits
         RETURNING id, hits",
        256,
        &bumps,
        |values, (id, hits)| values.bind(id.as_str()).bind(None::<f64>).bind(*hits),
    )
    .await
    .unwrap();
    let returned: Vec<(String, i64)> = returned.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(returned.len(), bumps.len(), "{backend:?}: {returned:?}");
    assert!(returned.contains(&("row-00000".into(), 11)), "{returned:?}");
    if backend == Backend::Sqlite {
        assert!(
            returned.contains(&("row-00001".into(), 111)),
            "{returned:?}"
        );
    }

    // Doubles, exactly (SQLite's JSON parser would round 1e-300), a write of a few and of
    // more than one PostgreSQL statement holds.
    let reals = [
        0.0,
        1.0,
        -0.5,
        0.1,
        1e-300,
        123_456.789_012_345_67,
        f64::MAX,
        1.0 / 3.0,
    ];
    for n in [3, 700] {
        let rows: Vec<(String, f64)> = (0..n)
            .map(|i| {
                (
                    format!("real-{i:05}"),
                    reals[i % reals.len()] * (i as f64 + 1.0),
                )
            })
            .collect();
        insert_rows(
            &mut conn,
            "INSERT INTO row_samples (id, real_value, hits)",
            3,
            "ON CONFLICT (id) DO UPDATE SET real_value = excluded.real_value",
            256,
            &rows,
            |values, (id, real)| values.bind(id.as_str()).bind(*real).bind(0i64),
        )
        .await
        .unwrap();
        let read: Vec<(String, f64)> = sqlx::query(
            "SELECT id, real_value FROM row_samples WHERE id LIKE 'real-%' ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        assert_eq!(read[..n], rows, "{backend:?}, {n} doubles");
    }

    // Lookups by key: every asked key found once, unknown keys ignored, any number of keys.
    let mut ids: Vec<String> = (0..9_000)
        .step_by(3)
        .map(|i| format!("row-{i:05}"))
        .collect();
    ids.push("no-such-row".into());
    ids.push("quote \" id".into());
    let found = fetch_in(
        &mut conn,
        "SELECT id FROM row_samples WHERE id",
        "ORDER BY id",
        256,
        &ids,
    )
    .await
    .unwrap();
    let found: Vec<String> = found.iter().map(|r| r.get(0)).collect();
    assert_eq!(found, ids[..3_000], "{backend:?}");
}

async fn scenario_a_row_with_too_few_values_is_refused(backend: Backend) {
    let (_t, db) = migrated_database(backend).await;
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("CREATE TABLE short_rows (a TEXT, b BIGINT)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let rows = ["x".to_string(), "y".to_string()];
    let result = insert_rows(
        &mut conn,
        "INSERT INTO short_rows (a, b)",
        2,
        "",
        256,
        &rows,
        |values, r| values.bind(r.as_str()),
    )
    .await;
    let error = result.expect_err("a row of one value for two columns");
    assert!(
        error.to_string().contains("1 values where 2 were expected"),
        "{backend:?}: {error}"
    );
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM short_rows")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "{backend:?}: nothing written");
}

#[tokio::test]
async fn rows_round_trip_exactly_on_both_backends() {
    for backend in BACKENDS {
        scenario_rows_round_trip_exactly(backend).await;
    }
}

#[tokio::test]
async fn a_row_with_too_few_values_is_refused_on_both_backends() {
    for backend in BACKENDS {
        scenario_a_row_with_too_few_values_is_refused(backend).await;
    }
}
