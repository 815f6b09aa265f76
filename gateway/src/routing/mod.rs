//! Routing: the model catalog, the `lumina-auto` classifier (features, the learned linear model,
//! the hand-written cues), the routing policy document that carries its weights, training and
//! evaluation on labelled routing sets, and the route table (paths → deployments in fallback
//! order). Pure decisions; the table holds the providers to call.

pub mod catalog;
pub mod classifier;
pub mod cues;
pub mod dataset;
pub mod eval;
pub mod features;
pub mod linear;
pub mod policy;
pub mod table;
pub mod train;
