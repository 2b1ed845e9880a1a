//! Procedural datasets for the bundled models: pure data, seeded and deterministic, no files.

pub mod music;
pub mod shapes;
