//! Keeps a gateway on the active routing policy: [`PolicyFollower::sync`] reads the read
//! model's active version (one indexed row) and, when it changed, loads, validates and installs
//! that document. A policy that does not validate here is refused: the one in force stays, the
//! refusal is logged once and counted (`lumina_policy_refused_total`).

use std::sync::Arc;

use crate::routing::policy::Policy;
use crate::state::AppState;

/// The last active version looked at.
#[derive(Debug, Default)]
pub struct PolicyFollower {
    seen: Option<i64>,
}

impl PolicyFollower {
    /// Installs the read model's active policy if it is new to this follower.
    pub async fn sync(&mut self, state: &AppState) -> Result<(), sqlx::Error> {
        let Some(version) = state.read_model.active_policy_version().await? else {
            return Ok(());
        };
        if self.seen == Some(version) {
            return Ok(());
        }
        self.seen = Some(version);
        if version == state.routes.policy_version() {
            return Ok(());
        }
        let Some(row) = state.read_model.policy(version).await? else {
            return Ok(());
        };
        let installed = Policy::parse(&row.snapshot_json)
            .map_err(|e| e.to_string())
            .and_then(|p| state.routes.install(Arc::new(p)));
        match installed {
            Ok(()) => tracing::info!(version, "routing policy in force"),
            Err(e) => {
                metrics::counter!("lumina_policy_refused_total", "source" => "read_model")
                    .increment(1);
                tracing::error!(
                    version,
                    error = %e,
                    in_force = state.routes.policy_version(),
                    "refused the active routing policy; keeping the one in force"
                );
            }
        }
        Ok(())
    }
}
