//! Prompt text, shared by the UI and the engine (no tch, no egui): the attention-weight syntax of
//! AUTOMATIC1111 (`(word:1.3)`, `(word)`, `[word]`, `BREAK`).

pub mod prompt;

pub use prompt::{PromptPiece, parse_prompt_weights};
