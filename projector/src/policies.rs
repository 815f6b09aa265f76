//! Routing policies in the read model, and the traffic a new policy is built from.
//!
//! `PolicyPublished` stores a version's document and activates it; `PolicyActivated` makes an
//! earlier version the active one again. The active policy is the version of the newest
//! activation (by `occurred_at`, then event id), which every gateway polls. The samples
//! ([`ReadModel::attempt_samples`], [`ReadModel::feedback_samples`],
//! [`ReadModel::eval_samples`]) are the request and eval views
//! `lumina policy build` reads; they come from events only, so a rebuilt read model gives the
//! same samples and the same policy.

use lumina_eventlog::ApplyError;
use lumina_schemas::{Event, Payload};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::ReadModel;

/// Applies `PolicyPublished` and `PolicyActivated`; other events are ignored. A second
/// publication of a version already stored is ignored whole (the first one stands).
pub(crate) async fn apply(conn: &mut AnyConnection, event: &Event) -> Result<(), ApplyError> {
    let env = &event.envelope;
    let event_id = env.event_id.to_string();
    let (version, reason) = match &event.payload {
        Payload::PolicyPublished(p) => {
            let inserted = sqlx::query(
                "INSERT INTO policies (version, snapshot_json, reason, published_at, event_id)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (version) DO NOTHING",
            )
            .bind(p.policy_version)
            .bind(&p.snapshot_json)
            .bind(&p.reason)
            .bind(env.occurred_at)
            .bind(&event_id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Ok(());
            }
            (p.policy_version, p.reason.as_str())
        }
        Payload::PolicyActivated(p) => (p.policy_version, p.reason.as_str()),
        _ => return Ok(()),
    };
    sqlx::query(
        "INSERT INTO policy_activations (event_id, version, activated_at, reason)
         SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM policies WHERE version = $2)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&event_id)
    .bind(version)
    .bind(env.occurred_at)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A published policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyRow {
    /// Its version.
    pub version: i64,
    /// The document, as published.
    pub snapshot_json: String,
    /// Why it was published.
    pub reason: String,
    /// When, µs since the epoch.
    pub published_at: i64,
    /// Its newest activation, µs since the epoch.
    pub activated_at: Option<i64>,
    /// Whether it is the one in force.
    pub active: bool,
}

/// One upstream attempt with the path and task class of its request.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptSample {
    /// The request's path.
    pub path: String,
    /// The request's task class.
    pub task_class: String,
    /// `provider/model`.
    pub deployment: String,
    /// How long the attempt took, µs.
    pub duration_us: i64,
    /// Whether it answered.
    pub ok: bool,
    /// Its error class when it failed (`timeout`, `rate_limited`, …).
    pub error_class: Option<String>,
    /// Whether the request moved on to another deployment after it.
    pub fell_back: bool,
}

/// One feedback score with the path and task class of its request.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackSample {
    /// The request's path.
    pub path: String,
    /// The request's task class.
    pub task_class: String,
    /// The score, 0 to 1.
    pub score: f64,
}

/// A (path, task class, score) row.
fn score_sample(r: &AnyRow) -> Result<FeedbackSample, sqlx::Error> {
    Ok(FeedbackSample {
        path: r.try_get(0)?,
        task_class: r.try_get(1)?,
        score: r.try_get(2)?,
    })
}

const POLICY_COLUMNS: &str = "p.version, p.snapshot_json, p.reason, p.published_at,
    (SELECT MAX(a.activated_at) FROM policy_activations a WHERE a.version = p.version)";

fn policy_row(r: &AnyRow, active: Option<i64>) -> Result<PolicyRow, sqlx::Error> {
    let version: i64 = r.try_get(0)?;
    Ok(PolicyRow {
        version,
        snapshot_json: r.try_get(1)?,
        reason: r.try_get(2)?,
        published_at: r.try_get(3)?,
        activated_at: r.try_get(4)?,
        active: active == Some(version),
    })
}

impl ReadModel {
    /// The version of the newest activation, if any policy was ever published.
    pub async fn active_policy_version(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query(
            "SELECT version FROM policy_activations
             ORDER BY activated_at DESC, event_id DESC LIMIT 1",
        )
        .fetch_optional(&self.database().pool)
        .await?
        .map(|r| r.try_get(0))
        .transpose()
    }

    /// The policy of `version`.
    pub async fn policy(&self, version: i64) -> Result<Option<PolicyRow>, sqlx::Error> {
        let active = self.active_policy_version().await?;
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {POLICY_COLUMNS} FROM policies p WHERE p.version = $1"
        ));
        sqlx::query(sql)
            .bind(version)
            .fetch_optional(&self.database().pool)
            .await?
            .map(|r| policy_row(&r, active))
            .transpose()
    }

    /// Every published policy, newest version first.
    pub async fn policies(&self) -> Result<Vec<PolicyRow>, sqlx::Error> {
        let active = self.active_policy_version().await?;
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {POLICY_COLUMNS} FROM policies p ORDER BY p.version DESC"
        ));
        let rows = sqlx::query(sql).fetch_all(&self.database().pool).await?;
        rows.iter().map(|r| policy_row(r, active)).collect()
    }

    /// The highest version ever published.
    pub async fn latest_policy_version(&self) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query("SELECT MAX(version) FROM policies")
            .fetch_one(&self.database().pool)
            .await?;
        row.try_get(0)
    }

    /// Upstream attempts of requests routed at or after `since` (µs), in a stable order.
    pub async fn attempt_samples(&self, since: i64) -> Result<Vec<AttemptSample>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT q.path, COALESCE(q.task_class, 'chat'), a.deployment, a.duration_us,
                    a.outcome, a.error_class, a.fell_back
             FROM request_attempts a JOIN requests q ON q.request_id = a.request_id
             WHERE q.path IS NOT NULL AND q.routed_at >= $1
             ORDER BY a.request_id, a.attempt",
        )
        .bind(since)
        .fetch_all(&self.database().pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptSample {
                    path: r.try_get(0)?,
                    task_class: r.try_get(1)?,
                    deployment: r.try_get(2)?,
                    duration_us: r.try_get(3)?,
                    ok: r.try_get::<String, _>(4)? == "ok",
                    error_class: r.try_get(5)?,
                    fell_back: r.try_get::<i64, _>(6)? != 0,
                })
            })
            .collect()
    }

    /// Eval scores (`lumina eval run`) of items completed at or after `since` (µs), keyed by
    /// the task class the gateway routed them as, in a stable order.
    pub async fn eval_samples(&self, since: i64) -> Result<Vec<FeedbackSample>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT path, COALESCE(routed_task_class, task_class, 'chat'), score FROM eval_results
             WHERE completed_at >= $1 ORDER BY event_id",
        )
        .bind(since)
        .fetch_all(&self.database().pool)
        .await?;
        rows.iter().map(score_sample).collect()
    }

    /// Feedback scores of requests routed at or after `since` (µs), in a stable order.
    pub async fn feedback_samples(&self, since: i64) -> Result<Vec<FeedbackSample>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT path, COALESCE(task_class, 'chat'), feedback_score FROM requests
             WHERE feedback_score IS NOT NULL AND path IS NOT NULL AND routed_at >= $1
             ORDER BY request_id",
        )
        .bind(since)
        .fetch_all(&self.database().pool)
        .await?;
        rows.iter().map(score_sample).collect()
    }
}
