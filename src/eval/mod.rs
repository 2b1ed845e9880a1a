//! Evaluation of the bundled models: analytic detectors (no learning) and the metrics built on
//! them.

pub mod card;
pub mod detect;
pub mod shapes_metrics;
