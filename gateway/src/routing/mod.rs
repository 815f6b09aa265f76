//! Routing: the model catalog, the `lumina-auto` classifier (features, the learned linear model,
//! the hand-written cues), the routing policy document that carries its weights, training and
//! evaluation on labelled routing sets, building a policy from traffic, and the route table
//! (paths → deployments, ordered and weighted by the policy in force, which `follow` keeps
//! current). Pure decisions; the table holds the providers to call.

pub mod build;
pub mod catalog;
pub mod classifier;
pub mod cues;
pub mod dataset;
pub mod eval;
pub mod features;
pub mod follow;
pub mod linear;
pub mod policy;
pub mod table;
pub mod train;
