//! The Responses API's stored responses, per account, in the shared database (`responses`
//! table): a row is written `in_progress` before the upstream is called and made final
//! (`completed`, `failed`, `cancelled`) before the response's last byte, so a
//! `previous_response_id` works on the very next turn and on every gateway that shares the
//! database. The gateway owns this table; it is state, not a projection of events.

use lumina_eventlog::Database;
use sqlx::Row;

/// A stored response.
#[derive(Debug, Clone)]
pub struct Stored {
    /// `in_progress`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// The response object (JSON) as last rendered.
    pub response: String,
    /// The conversation it ends (a JSON array of OpenAI chat messages).
    pub conversation: String,
}

/// What a new row holds.
pub struct NewResponse<'a> {
    /// `resp_…`.
    pub id: &'a str,
    /// Its owner.
    pub account_id: &'a str,
    /// The key's project.
    pub project_id: &'a str,
    /// The key that created it.
    pub api_key_id: &'a str,
    /// The request behind it.
    pub request_id: &'a str,
    /// The response it continues.
    pub previous_id: Option<&'a str>,
    /// Unix seconds.
    pub created_at: i64,
    /// The response object while in progress.
    pub response: &'a str,
    /// The conversation so far (earlier turns and this turn's input).
    pub conversation: &'a str,
}

/// Stored responses.
#[derive(Debug, Clone)]
pub struct ResponseStore {
    db: Database,
}

impl ResponseStore {
    /// The store in `db`.
    pub fn new(db: Database) -> ResponseStore {
        ResponseStore { db }
    }

    /// Writes a response about to be generated, `in_progress`.
    pub async fn begin(&self, new: NewResponse<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO responses (id, account_id, project_id, api_key_id, request_id,
                 previous_id, status, created_at, updated_at, response, conversation)
             VALUES ($1, $2, $3, $4, $5, $6, 'in_progress', $7, $7, $8, $9)",
        )
        .bind(new.id)
        .bind(new.account_id)
        .bind(new.project_id)
        .bind(new.api_key_id)
        .bind(new.request_id)
        .bind(new.previous_id)
        .bind(new.created_at)
        .bind(new.response)
        .bind(new.conversation)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Makes a response final: its status, object and conversation.
    pub async fn finish(
        &self,
        id: &str,
        status: &str,
        response: &str,
        conversation: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE responses SET status = $2, response = $3, conversation = $4, updated_at = $5
             WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(response)
        .bind(conversation)
        .bind(lumina_schemas::now_micros() / 1_000_000)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// `account_id`'s response `id`, if it exists.
    pub async fn get(&self, account_id: &str, id: &str) -> Result<Option<Stored>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT status, response, conversation FROM responses
             WHERE id = $1 AND account_id = $2",
        )
        .bind(id)
        .bind(account_id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|r| {
            Ok(Stored {
                status: r.try_get(0)?,
                response: r.try_get(1)?,
                conversation: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Deletes `account_id`'s response `id`; whether it existed.
    pub async fn delete(&self, account_id: &str, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM responses WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account_id)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
