//! The route table: for each path, its deployments, each with its provider adapter and circuit
//! breaker (built once at start from the configuration), and the routing policy in force,
//! swapped whole and without a lock when a new one is installed.
//!
//! A policy orders and weights a path's deployments. The weights become a schedule of
//! [`SLOTS`] attempt orders (smooth weighted round-robin: over any `SLOTS` consecutive requests
//! of a path each deployment comes first in proportion to its weight); in each order the
//! others follow by weight, then the deployments the policy does not name, in configured order,
//! so every deployment stays a fallback and the breakers stay the last line.
//!
//! The embeddings route, outside the classifier's paths and any policy, is tried in configured
//! order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::config::{EMBEDDINGS, GatewayConfig, PATHS, ProviderKind};
use crate::providers::breaker::Breaker;
use crate::providers::{self, Provider};
use crate::routing::catalog::RoutePath;
use crate::routing::policy::Policy;
use crate::telemetry::instruments::DeploymentInstruments;

/// Attempt orders in a path's schedule.
pub const SLOTS: usize = 100;

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
    /// Its GenAI metrics.
    pub instruments: DeploymentInstruments,
}

/// Deployments per path, and the policy in force.
pub struct RouteTable {
    paths: [Vec<Arc<Deployment>>; 3],
    embeddings: Arc<[Arc<Deployment>]>,
    active: ArcSwap<Routing>,
    turns: [AtomicUsize; 3],
}

/// A policy installed on the route table: the policy and each path's schedule.
pub struct Routing {
    /// The policy.
    pub policy: Arc<Policy>,
    schedules: [Schedule; 3],
}

/// A path's attempt orders: `orders[slots[turn % slots.len()]]`.
struct Schedule {
    orders: Vec<Arc<[Arc<Deployment>]>>,
    slots: Vec<u8>,
}

impl Schedule {
    fn fixed(order: Vec<Arc<Deployment>>) -> Schedule {
        Schedule {
            orders: vec![order.into()],
            slots: vec![0],
        }
    }

    /// The schedule for `weighted` (in the policy's order), with `rest` as the last fallbacks.
    fn weighted(weighted: &[(Arc<Deployment>, f64)], rest: &[Arc<Deployment>]) -> Schedule {
        let total: f64 = weighted.iter().map(|(_, w)| w).sum();
        // The others after the first: by weight, heaviest first, ties in the policy's order.
        let mut by_weight: Vec<usize> = (0..weighted.len()).collect();
        by_weight.sort_by(|&a, &b| weighted[b].1.total_cmp(&weighted[a].1));
        let order_led_by = |first: usize| -> Arc<[Arc<Deployment>]> {
            std::iter::once(first)
                .chain(by_weight.iter().copied().filter(|&i| i != first))
                .map(|i| weighted[i].0.clone())
                .chain(rest.iter().cloned())
                .collect()
        };
        if total <= 0.0 {
            return Schedule {
                orders: vec![order_led_by(by_weight.first().copied().unwrap_or(0))],
                slots: vec![0],
            };
        }
        let mut current = vec![0.0f64; weighted.len()];
        let mut leaders: Vec<usize> = Vec::new();
        let mut slots = Vec::with_capacity(SLOTS);
        for _ in 0..SLOTS {
            for (c, (_, w)) in current.iter_mut().zip(weighted) {
                *c += w;
            }
            let mut pick = 0;
            for i in 1..current.len() {
                if current[i] > current[pick] {
                    pick = i;
                }
            }
            current[pick] -= total;
            let index = match leaders.iter().position(|&l| l == pick) {
                Some(i) => i,
                None => {
                    leaders.push(pick);
                    leaders.len() - 1
                }
            };
            slots.push(u8::try_from(index).unwrap_or(0));
        }
        Schedule {
            orders: leaders.into_iter().map(order_led_by).collect(),
            slots,
        }
    }

    fn order(&self, turn: usize) -> &Arc<[Arc<Deployment>]> {
        let slot = self.slots[turn % self.slots.len()];
        &self.orders[usize::from(slot)]
    }
}

impl Routing {
    /// The version of its policy.
    pub fn version(&self) -> i64 {
        self.policy.version
    }
}

fn index(path: RoutePath) -> usize {
    match path {
        RoutePath::Fast => 0,
        RoutePath::Balanced => 1,
        RoutePath::Reasoning | RoutePath::Fusion => 2,
        // Never scheduled: `deployments` and `configured` answer for it first.
        RoutePath::Embeddings => 0,
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
        let mut embeddings = Vec::new();
        for (slot, path) in PATHS
            .iter()
            .map(|p| p.as_str())
            .chain([EMBEDDINGS])
            .enumerate()
        {
            let Some(route) = config.routes.get(path) else {
                if path == EMBEDDINGS {
                    continue;
                }
                return Err(format!("routes.{path}: missing"));
            };
            for name in &route.providers {
                let Some(i) = config.providers.iter().position(|p| &p.name == name) else {
                    return Err(format!(
                        "routes.{path}.providers: no provider named '{name}'"
                    ));
                };
                let p = &config.providers[i];
                let Some(model) = p.models.get(path) else {
                    return Err(format!(
                        "routes.{path}.providers: provider '{name}' has no models.{path}"
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
                            instruments: DeploymentInstruments::default(),
                        });
                        deployments.push(d.clone());
                        d
                    }
                };
                match paths.get_mut(slot) {
                    Some(list) => list.push(deployment),
                    None => embeddings.push(deployment),
                }
            }
        }
        // Loads the default policy's weights now, at start, rather than on the first request.
        let policy = Arc::new(crate::routing::policy::default_policy().clone());
        let routing = routing_for(&paths, policy)?;
        Ok(RouteTable {
            paths,
            embeddings: embeddings.into(),
            active: ArcSwap::from_pointee(routing),
            turns: Default::default(),
        })
    }

    /// The routing in force (its policy and schedules), for one request.
    pub fn routing(&self) -> Arc<Routing> {
        self.active.load_full()
    }

    /// The version of the policy in force.
    pub fn policy_version(&self) -> i64 {
        self.active.load().policy.version
    }

    /// Puts `policy` in force, or says why it cannot be (a deployment it names is not one of
    /// the path's on this gateway); the one in force stays then.
    pub fn install(&self, policy: Arc<Policy>) -> Result<(), String> {
        let routing = routing_for(&self.paths, policy)?;
        metrics::gauge!("lumina_policy_version").set(routing.version() as f64);
        self.active.store(Arc::new(routing));
        Ok(())
    }

    /// Checks that `policy` could be put in force here, without doing so.
    pub fn check(&self, policy: Arc<Policy>) -> Result<(), String> {
        routing_for(&self.paths, policy).map(drop)
    }

    /// The deployments of `path` for the next request, in attempt order.
    pub fn deployments(&self, routing: &Routing, path: RoutePath) -> Arc<[Arc<Deployment>]> {
        if path == RoutePath::Embeddings {
            return self.embeddings.clone();
        }
        let i = index(path);
        let turn = self.turns[i].fetch_add(1, Ordering::Relaxed);
        routing.schedules[i].order(turn).clone()
    }

    /// The configured deployments of `path`, in configured order.
    pub fn configured(&self, path: RoutePath) -> &[Arc<Deployment>] {
        if path == RoutePath::Embeddings {
            return &self.embeddings;
        }
        &self.paths[index(path)]
    }

    /// The deployment `id` (`provider/model`) and the first path it serves, among the
    /// classifier's paths.
    pub fn find(&self, id: &str) -> Option<(RoutePath, Arc<Deployment>)> {
        PATHS
            .iter()
            .zip(&self.paths)
            .find_map(|(path, list)| list.iter().find(|d| d.id == id).map(|d| (*path, d.clone())))
    }

    /// Every deployment once, whatever paths it serves.
    pub fn every_deployment(&self) -> Vec<&Arc<Deployment>> {
        let mut all: Vec<&Arc<Deployment>> = Vec::new();
        for d in self.paths.iter().flatten().chain(self.embeddings.iter()) {
            if !all.iter().any(|seen| seen.id == d.id) {
                all.push(d);
            }
        }
        all
    }

    /// Whether any deployment serves embeddings.
    pub fn serves_embeddings(&self) -> bool {
        !self.embeddings.is_empty()
    }
}

fn routing_for(paths: &[Vec<Arc<Deployment>>; 3], policy: Arc<Policy>) -> Result<Routing, String> {
    let [fast, balanced, reasoning] =
        [0, 1, 2].map(|i| schedule_for(PATHS[i], &paths[i], policy.routes[i].as_deref()));
    Ok(Routing {
        schedules: [fast?, balanced?, reasoning?],
        policy,
    })
}

/// The schedule of `path`: its configured deployments, ordered and weighted by `named`.
fn schedule_for(
    path: RoutePath,
    configured: &[Arc<Deployment>],
    named: Option<&[(String, f64)]>,
) -> Result<Schedule, String> {
    let Some(named) = named else {
        return Ok(Schedule::fixed(configured.to_vec()));
    };
    let mut weighted = Vec::with_capacity(named.len());
    for (id, weight) in named {
        let Some(d) = configured.iter().find(|d| &d.id == id) else {
            let known: Vec<&str> = configured.iter().map(|d| d.id.as_str()).collect();
            return Err(format!(
                "routes.{}: '{id}' is not a deployment of the path on this gateway (it has {})",
                path.as_str(),
                known.join(", ")
            ));
        };
        weighted.push((d.clone(), *weight));
    }
    let rest: Vec<Arc<Deployment>> = configured
        .iter()
        .filter(|d| !named.iter().any(|(id, _)| id == &d.id))
        .cloned()
        .collect();
    Ok(Schedule::weighted(&weighted, &rest))
}
