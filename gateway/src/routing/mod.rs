//! Routing: the model catalog now; the classifier and policy join it. Pure code, no I/O.

pub mod catalog;
