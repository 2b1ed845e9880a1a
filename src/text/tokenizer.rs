//! The CLIP BPE tokenizer (through the `tokenizers` crate) from a model's `tokenizer/` folder —
//! `tokenizer.json`, or `vocab.json` + `merges.txt` with CLIP's normalisation and
//! pre-tokenisation as transformers builds them — and weighted prompts encoded into 77-token
//! chunks. Prompts longer than 75 tokens are chunked, as AUTOMATIC1111 does, never cut.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::prompt::{PromptPiece, parse_prompt_weights};

/// CLIP's pre-tokenisation pattern (openai/CLIP `simple_tokenizer.py`, as transformers uses it).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// Tokens of one chunk between its BOS and EOS (CLIP's 77-token context).
pub const CHUNK_TOKENS: usize = 75;
/// Length of one encoded chunk, with BOS and EOS.
pub const CHUNK_LENGTH: usize = CHUNK_TOKENS + 2;
/// When a chunk fills up, end it at its last comma if that comma is this close to the end
/// (AUTOMATIC1111's `comma_padding_backtrack` default).
const COMMA_BACKTRACK: usize = 20;

/// Why a tokenizer could not be loaded or used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "{folder}: no tokenizer found — expected tokenizer.json, or vocab.json and merges.txt \
         (a diffusers model's tokenizer/ folder)"
    )]
    Missing { folder: PathBuf },
    #[error("{path}: could not load the tokenizer: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("{path}: the vocabulary has no {token} token, so it is not a CLIP tokenizer")]
    NotClip { path: PathBuf, token: &'static str },
    #[error("could not tokenize the prompt: {0}")]
    Encode(String),
}

/// One 77-token chunk of a prompt: `[BOS] tokens [EOS] [PAD…]`, with a weight per position.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunk {
    pub ids: Vec<u32>,
    /// 1.0 for BOS, EOS and padding.
    pub weights: Vec<f32>,
    /// How many prompt tokens the chunk holds (≤ 75).
    pub token_count: usize,
}

/// A CLIP tokenizer with its special tokens.
pub struct ClipTokenizer {
    inner: Tokenizer,
    pub bos_id: u32,
    pub eos_id: u32,
    /// SD 1.x pads with EOS, SD 2.x with "!" (its `tokenizer_config.json` says which).
    pub pad_id: u32,
    comma_id: Option<u32>,
}

/// Where the bundled vocabulary comes from (for messages); its files are built into the binary.
const BUNDLED_FOLDER: &str = "assets/tokenizers/clip";
const BUNDLED_VOCAB: &str = include_str!("../../assets/tokenizers/clip/vocab.json");
const BUNDLED_MERGES: &str = include_str!("../../assets/tokenizers/clip/merges.txt");

impl ClipTokenizer {
    /// OpenAI CLIP's tokenizer (49408 tokens), which every SD 1.x/2.x model uses, for
    /// checkpoints that carry none (single files). `pad` is the padding token: SD 1.x pads with
    /// `<|endoftext|>`, SD 2.x with `!`.
    pub fn bundled(pad: &str) -> Result<Self, TokenizerError> {
        let inner = clip_tokenizer_around(bundled_bpe()?, Path::new(BUNDLED_FOLDER))?;
        Self::around(inner, Path::new(BUNDLED_FOLDER), Some(pad.to_string()))
    }

    /// Loads `folder/tokenizer.json`, or `folder/vocab.json` + `folder/merges.txt`; the pad token
    /// comes from `tokenizer_config.json` or `special_tokens_map.json` when present.
    pub fn from_folder(folder: &Path) -> Result<Self, TokenizerError> {
        let json = folder.join("tokenizer.json");
        let (vocab, merges) = (folder.join("vocab.json"), folder.join("merges.txt"));
        let inner = if json.is_file() {
            Tokenizer::from_file(&json)
                .map_err(|error| TokenizerError::Load { path: json.clone(), reason: error.to_string() })?
        } else if vocab.is_file() && merges.is_file() {
            clip_pipeline(&vocab, &merges)?
        } else {
            return Err(TokenizerError::Missing { folder: folder.into() });
        };
        let source = if json.is_file() { json } else { vocab };
        Self::around(inner, &source, pad_token(folder))
    }

    /// Looks up the special tokens of a CLIP tokenizer; a pad token it lacks falls back to EOS.
    fn around(inner: Tokenizer, source: &Path, pad: Option<String>) -> Result<Self, TokenizerError> {
        let id = |token: &'static str| {
            inner.token_to_id(token).ok_or_else(|| TokenizerError::NotClip { path: source.into(), token })
        };
        let (bos_id, eos_id) = (id(BOS)?, id(EOS)?);
        let pad_id = pad.and_then(|token| inner.token_to_id(&token)).unwrap_or(eos_id);
        let comma_id = inner.token_to_id(",</w>");
        Ok(Self { inner, bos_id, eos_id, pad_id, comma_id })
    }

    /// Token ids of `text`, without BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding =
            self.inner.encode(text, false).map_err(|error| TokenizerError::Encode(error.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The vocabulary size including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes a prompt with attention-weight syntax into 77-token chunks (at least one).
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<PromptChunk>, TokenizerError> {
        let mut chunks = Vec::new();
        let mut current: Vec<(u32, f32)> = Vec::new();
        for piece in parse_prompt_weights(prompt) {
            match piece {
                PromptPiece::Break => {
                    chunks.push(self.finish_chunk(std::mem::take(&mut current)));
                }
                PromptPiece::Text { text, weight } => {
                    for id in self.encode(&text)? {
                        if current.len() == CHUNK_TOKENS {
                            let carried = self.split_at_last_comma(&mut current);
                            chunks.push(self.finish_chunk(std::mem::replace(&mut current, carried)));
                        }
                        current.push((id, weight as f32));
                    }
                }
            }
        }
        if !current.is_empty() || chunks.is_empty() {
            chunks.push(self.finish_chunk(current));
        }
        Ok(chunks)
    }

    /// For a full chunk: the tokens after its last comma, if that comma is near the end.
    fn split_at_last_comma(&self, chunk: &mut Vec<(u32, f32)>) -> Vec<(u32, f32)> {
        let Some(comma) = self.comma_id else { return Vec::new() };
        match chunk.iter().rposition(|(id, _)| *id == comma) {
            Some(position) if chunk.len() - (position + 1) <= COMMA_BACKTRACK => {
                chunk.split_off(position + 1)
            }
            _ => Vec::new(),
        }
    }

    fn finish_chunk(&self, tokens: Vec<(u32, f32)>) -> PromptChunk {
        let token_count = tokens.len();
        let mut ids = Vec::with_capacity(CHUNK_LENGTH);
        let mut weights = Vec::with_capacity(CHUNK_LENGTH);
        ids.push(self.bos_id);
        weights.push(1.0);
        for (id, weight) in tokens {
            ids.push(id);
            weights.push(weight);
        }
        ids.push(self.eos_id);
        weights.push(1.0);
        ids.resize(CHUNK_LENGTH, self.pad_id);
        weights.resize(CHUNK_LENGTH, 1.0);
        PromptChunk { ids, weights, token_count }
    }
}

/// CLIP's tokenizer from `vocab.json` + `merges.txt`, built as transformers' `CLIPTokenizer`
/// builds it: NFC, whitespace runs to one space, lower case; CLIP's split pattern; byte-level
/// BPE with "</w>" word ends.
fn clip_pipeline(vocab: &Path, merges: &Path) -> Result<Tokenizer, TokenizerError> {
    let load_error = |reason: String| TokenizerError::Load { path: vocab.into(), reason };
    let (Some(vocab_path), Some(merges_path)) = (vocab.to_str(), merges.to_str()) else {
        return Err(load_error("the path is not valid UTF-8".into()));
    };
    let bpe = BPE::from_file(vocab_path, merges_path)
        .unk_token(EOS.into())
        .end_of_word_suffix("</w>".into())
        .build()
        .map_err(|error| load_error(error.to_string()))?;
    clip_tokenizer_around(bpe, vocab)
}

/// The bundled CLIP vocabulary (assets/tokenizers/clip, built into the binary).
fn bundled_bpe() -> Result<BPE, TokenizerError> {
    let source = Path::new(BUNDLED_FOLDER);
    let load_error = |reason: String| TokenizerError::Load { path: source.join("vocab.json"), reason };
    let vocab: tokenizers::models::bpe::Vocab =
        serde_json::from_str(BUNDLED_VOCAB).map_err(|error| load_error(error.to_string()))?;
    let merges = BUNDLED_MERGES
        .lines()
        .filter(|line| !line.starts_with("#version") && !line.is_empty())
        .map(|line| {
            line.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| load_error(format!("merges.txt line \"{line}\" is not two symbols")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(EOS.into())
        .end_of_word_suffix("</w>".into())
        .build()
        .map_err(|error| load_error(error.to_string()))
}

/// Normalisation, pre-tokenisation, decoding and special tokens around a CLIP BPE model.
fn clip_tokenizer_around(bpe: BPE, source: &Path) -> Result<Tokenizer, TokenizerError> {
    let load_error = |reason: String| TokenizerError::Load { path: source.into(), reason };
    let mut tokenizer = Tokenizer::new(bpe);
    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|error| load_error(error.to_string()))?;
    tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
        NFC.into(),
        whitespace.into(),
        Lowercase.into(),
    ])));
    let split = Split::new(SplitPattern::Regex(CLIP_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
        .map_err(|error| load_error(error.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.add_special_tokens(&[AddedToken::from(BOS, true), AddedToken::from(EOS, true)]);
    Ok(tokenizer)
}

/// The pad token named by `tokenizer_config.json` or `special_tokens_map.json`, if any.
fn pad_token(folder: &Path) -> Option<String> {
    ["tokenizer_config.json", "special_tokens_map.json"].iter().find_map(|name| {
        let text = std::fs::read_to_string(folder.join(name)).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        match &json["pad_token"] {
            serde_json::Value::String(token) => Some(token.clone()),
            serde_json::Value::Object(token) => token.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    })
}
