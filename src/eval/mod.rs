//! Evaluation of the bundled models: analytic detectors (no learning) and the metrics built on
//! them.

pub mod card;
pub mod detect;
pub mod music_features;
pub mod music_metrics;
pub mod shapes_metrics;
