//! The route table: for each path, its deployments in fallback order, each with its provider
//! adapter and circuit breaker. Built once at start from the configuration.

use std::sync::Arc;

use crate::config::{GatewayConfig, PATHS, ProviderKind};
use crate::providers::breaker::Breaker;
use crate::providers::{self, Provider};
use crate::routing::catalog::RoutePath;

/// One model at one provider.
pub struct Deployment {
    /// `provider/model`, as recorded in events.
    pub id: String,
    /// The provider's configured name.
    pub provider_name: String,
    /// What the provider speaks.
    pub kind: ProviderKind,
    /// The model name sent upstream.
    pub upstream_model: String,
    /// The adapter.
    pub provider: Arc<dyn Provider>,
    /// Health of this deployment.
    pub breaker: Breaker,
}

/// Deployments per path, and the version of the policy that made them.
pub struct RouteTable {
    paths: [Vec<Arc<Deployment>>; 3],
    /// Version of the routing policy in force.
    pub policy_version: i64,
}

fn index(path: RoutePath) -> usize {
    match path {
        RoutePath::Fast => 0,
        RoutePath::Balanced => 1,
        RoutePath::Reasoning | RoutePath::Fusion => 2,
    }
}

impl RouteTable {
    /// Builds adapters and breakers for a resolved configuration; `env` reads API keys.
    pub fn build(
        config: &GatewayConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<RouteTable, String> {
        let mut adapters = Vec::new();
        for (i, p) in config.providers.iter().enumerate() {
            let adapter = providers::build(p, &env).map_err(|e| format!("providers[{i}]: {e}"))?;
            adapters.push(adapter);
        }
        // One deployment object per (provider, path), shared when several paths use the same
        // upstream model so they share its breaker.
        let mut deployments: Vec<Arc<Deployment>> = Vec::new();
        let mut paths: [Vec<Arc<Deployment>>; 3] = Default::default();
        for path in PATHS {
            let Some(route) = config.routes.get(path.as_str()) else {
                return Err(format!("routes.{}: missing", path.as_str()));
            };
            for name in &route.providers {
                let Some(i) = config.providers.iter().position(|p| &p.name == name) else {
                    return Err(format!(
                        "routes.{}.providers: no provider named '{name}'",
                        path.as_str()
                    ));
                };
                let p = &config.providers[i];
                let Some(model) = p.models.get(path.as_str()) else {
                    return Err(format!(
                        "routes.{}.providers: provider '{name}' has no models.{}",
                        path.as_str(),
                        path.as_str()
                    ));
                };
                let id = format!("{name}/{model}");
                let deployment = match deployments.iter().find(|d| d.id == id) {
                    Some(d) => d.clone(),
                    None => {
                        let d = Arc::new(Deployment {
                            id,
                            provider_name: name.clone(),
                            kind: p.kind,
                            upstream_model: model.clone(),
                            provider: adapters[i].clone(),
                            breaker: Breaker::new(config.breaker.clone()),
                        });
                        deployments.push(d.clone());
                        d
                    }
                };
                paths[index(path)].push(deployment);
            }
        }
        Ok(RouteTable {
            paths,
            // Loads the default policy's weights now, at start, rather than on the first request.
            policy_version: crate::routing::policy::default_policy().version,
        })
    }

    /// The deployments of `path`, in fallback order.
    pub fn deployments(&self, path: RoutePath) -> &[Arc<Deployment>] {
        &self.paths[index(path)]
    }
}
