//! The CLIP tokenizer against transformers' `CLIPTokenizer` on a tiny vocabulary trained by
//! `tests/fixtures/make_fixtures.py` (no hub): both the vocab.json + merges.txt and the
//! tokenizer.json forms, and prompt chunking.

use std::path::{Path, PathBuf};

use diffusion_studio::text::tokenizer::{CHUNK_LENGTH, CHUNK_TOKENS};
use diffusion_studio::text::{ClipTokenizer, TokenizerError};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer.json")).expect("fixture")).expect("json")
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect()
}

#[test]
fn both_file_forms_tokenize_like_transformers() {
    let expected = expected();
    for folder in ["tokenizer", "tokenizer_json"] {
        let tokenizer = ClipTokenizer::from_folder(&fixture(folder)).expect("loads");
        assert_eq!(u64::from(tokenizer.bos_id), expected["bos_token_id"].as_u64().expect("bos"));
        assert_eq!(u64::from(tokenizer.eos_id), expected["eos_token_id"].as_u64().expect("eos"));
        assert_eq!(tokenizer.vocab_size() as u64, expected["vocab_size"].as_u64().expect("size"), "{folder}");
        for case in expected["cases"].as_array().expect("cases") {
            let prompt = case["prompt"].as_str().expect("prompt");
            assert_eq!(tokenizer.encode(prompt).expect("encodes"), ids(&case["ids"]), "{folder}: {prompt:?}");
        }
    }
}

#[test]
fn a_short_prompt_is_one_chunk_laid_out_as_diffusers_pads_it() {
    let tokenizer = ClipTokenizer::from_folder(&fixture("tokenizer")).expect("loads");
    let chunks = tokenizer.encode_prompt("a red circle on a blue background").expect("encodes");
    assert_eq!(chunks.len(), 1);
    let expected_tokens = tokenizer.encode("a red circle on a blue background").expect("encodes");
    let mut expected_ids = vec![tokenizer.bos_id];
    expected_ids.extend(&expected_tokens);
    expected_ids.push(tokenizer.eos_id);
    expected_ids.resize(CHUNK_LENGTH, tokenizer.pad_id);
    assert_eq!(chunks[0].ids, expected_ids);
    assert!(chunks[0].weights.iter().all(|w| *w == 1.0));
    assert_eq!(chunks[0].token_count, expected_tokens.len());
}

#[test]
fn a_long_prompt_is_chunked_not_cut() {
    let expected = expected();
    let tokenizer = ClipTokenizer::from_folder(&fixture("tokenizer")).expect("loads");
    let prompt = expected["long_prompt"].as_str().expect("prompt");
    let full = ids(&expected["long_prompt_full_ids"]);
    assert!(full.len() > CHUNK_TOKENS, "the fixture prompt is long");
    let chunks = tokenizer.encode_prompt(prompt).expect("encodes");
    assert!(chunks.len() >= 2);
    let mut rejoined: Vec<u32> = Vec::new();
    for chunk in &chunks {
        assert_eq!(chunk.ids.len(), CHUNK_LENGTH);
        assert_eq!(chunk.ids[0], tokenizer.bos_id);
        assert!(chunk.token_count <= CHUNK_TOKENS);
        assert_eq!(chunk.ids[chunk.token_count + 1], tokenizer.eos_id);
        rejoined.extend(&chunk.ids[1..=chunk.token_count]);
    }
    assert_eq!(rejoined, full, "every token kept, in order");
    // The first chunk ends at a comma: the prompt is a comma-separated list.
    let comma = tokenizer.encode(",").expect("comma")[0];
    assert_eq!(chunks[0].ids[chunks[0].token_count], comma);
}

#[test]
fn weights_follow_the_prompt_syntax_and_break_starts_a_chunk() {
    let tokenizer = ClipTokenizer::from_folder(&fixture("tokenizer")).expect("loads");
    let chunks = tokenizer.encode_prompt("a (red:1.5) circle BREAK a [blue] square").expect("encodes");
    assert_eq!(chunks.len(), 2);
    let red = tokenizer.encode("red").expect("red");
    let first = &chunks[0];
    let red_at = first.ids.iter().position(|id| *id == red[0]).expect("red in chunk 1");
    assert_eq!(first.weights[red_at], 1.5);
    assert_eq!(first.weights[1], 1.0, "a");
    let blue = tokenizer.encode("blue").expect("blue");
    let blue_at = chunks[1].ids.iter().position(|id| *id == blue[0]).expect("blue in chunk 2");
    assert!((chunks[1].weights[blue_at] - 1.0 / 1.1).abs() < 1e-6);
}

#[test]
fn empty_non_ascii_and_huge_prompts_do_not_fail() {
    let tokenizer = ClipTokenizer::from_folder(&fixture("tokenizer")).expect("loads");
    assert_eq!(tokenizer.encode_prompt("").expect("empty").len(), 1);
    assert!(tokenizer.encode_prompt("日本語 🐱 façade").expect("unicode")[0].token_count > 0);
    let huge = "word ".repeat(1000);
    let chunks = tokenizer.encode_prompt(&huge).expect("1000 words");
    let total: usize = chunks.iter().map(|c| c.token_count).sum();
    assert_eq!(total, tokenizer.encode(&huge).expect("encodes").len());
}

#[test]
fn a_folder_without_a_tokenizer_names_what_is_missing() {
    let error = ClipTokenizer::from_folder(Path::new("/nonexistent/tokenizer")).err().expect("fails");
    assert!(matches!(error, TokenizerError::Missing { .. }));
    assert!(error.to_string().contains("vocab.json and merges.txt"), "{error}");
}

#[test]
fn the_bundled_clip_vocabulary_tokenizes_like_openai_clip() {
    let records: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip_vocab.json")).expect("fixture"))
            .expect("json");
    let tokenizer = ClipTokenizer::bundled("<|endoftext|>").expect("bundled tokenizer");
    assert_eq!(tokenizer.vocab_size(), 49408);
    assert_eq!((tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id), (49406, 49407, 49407));
    for record in records.as_array().expect("records") {
        let prompt = record["prompt"].as_str().expect("prompt");
        assert_eq!(tokenizer.encode(prompt).expect("encodes"), ids(&record["ids"]), "{prompt:?}");
    }
    // SD 2.x pads with "!" (id 0)
    let sd2 = ClipTokenizer::bundled("!").expect("bundled tokenizer");
    assert_eq!(sd2.pad_id, 0);
    assert_eq!(sd2.encode_prompt("a cat").expect("encodes")[0].ids[4..], [0; 73]);
}
