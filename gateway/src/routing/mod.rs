//! Routing: the model catalog, the classifier of `lumina-auto`, and the route table (paths →
//! deployments in fallback order). Pure decisions; the table holds the providers to call.

pub mod catalog;
pub mod classifier;
pub mod table;
