//! diffusion-studio: a desktop editing studio for diffusion models. The library holds the engine
//! (the only user of tch), the UI, the document and the protocol between them; `main.rs` is the
//! CLI and window entry point.

pub mod audio;
pub mod catalog;
pub mod datasets;
pub mod document;
pub mod engine;
pub mod eval;
pub mod protocol;
pub mod text;
pub mod ui;
