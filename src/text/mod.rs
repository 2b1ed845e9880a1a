//! Prompt text, shared by the UI and the engine (no tch, no egui): the attention-weight syntax of
//! AUTOMATIC1111 (`(word:1.3)`, `(word)`, `[word]`, `BREAK`) and the CLIP tokenizer.

pub mod alignment;
pub mod prompt;
pub mod tokenizer;
pub mod word_edit;
pub mod word_vocab;

pub use prompt::{PromptPiece, parse_prompt_weights};
pub use tokenizer::{ClipTokenizer, PromptChunk, TokenizerError};
