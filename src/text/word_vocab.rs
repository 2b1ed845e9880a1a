//! A word-level vocabulary written in CLIP's tokenizer format (`vocab.json` + `merges.txt`), for
//! the bundled models' text encoders trained from scratch: every word of the vocabulary becomes
//! exactly one token, through byte-pair merges that CLIP's tokenizer — ours, and `transformers`'
//! `CLIPTokenizer` that diffusers loads — applies as it always does.
//!
//! The merges are found by running BPE itself: for each word in turn, while it does not come out
//! as one token, merge its first two tokens with a new lowest-priority rule. A new rule never
//! changes an earlier word: at every stage of that word's merging a higher-priority rule applied.

use std::collections::HashMap;

const END: &str = "</w>";
pub const BOS: &str = "<|startoftext|>";
pub const EOS: &str = "<|endoftext|>";

/// A word vocabulary's tokenizer files.
pub struct WordVocabulary {
    /// Tokens in id order.
    pub tokens: Vec<String>,
    /// Merge rules in priority order.
    pub merges: Vec<(String, String)>,
}

/// The symbols BPE starts a word from: its characters, the last with `</w>`.
fn symbols(word: &str) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i + 1 == chars.len() { format!("{c}{END}") } else { c.to_string() })
        .collect()
}

/// CLIP's BPE on one word: repeatedly merge every occurrence of the best-ranked adjacent pair.
fn bpe(word: &str, ranks: &HashMap<(String, String), usize>) -> Vec<String> {
    let mut parts = symbols(word);
    loop {
        let best = parts
            .windows(2)
            .filter_map(|pair| ranks.get(&(pair[0].clone(), pair[1].clone())).map(|rank| (*rank, pair)))
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, pair)| (pair[0].clone(), pair[1].clone()));
        let Some((left, right)) = best else { return parts };
        let mut merged = Vec::with_capacity(parts.len());
        let mut i = 0;
        while i < parts.len() {
            if i + 1 < parts.len() && parts[i] == left && parts[i + 1] == right {
                merged.push(format!("{left}{right}"));
                i += 2;
            } else {
                merged.push(parts[i].clone());
                i += 1;
            }
        }
        parts = merged;
    }
}

impl WordVocabulary {
    /// The vocabulary of `words` (lower-case, no spaces; punctuation such as "," is a word).
    pub fn new(words: &[&str]) -> Self {
        let mut tokens: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut add = |token: String, tokens: &mut Vec<String>| {
            if seen.insert(token.clone()) {
                tokens.push(token);
            }
        };
        // every character, alone and word-final
        let mut chars: Vec<char> = words.iter().flat_map(|w| w.chars()).collect();
        chars.sort_unstable();
        chars.dedup();
        for c in &chars {
            add(c.to_string(), &mut tokens);
        }
        for c in &chars {
            add(format!("{c}{END}"), &mut tokens);
        }
        let mut merges = Vec::new();
        let mut ranks = HashMap::new();
        for word in words {
            loop {
                let parts = bpe(word, &ranks);
                if parts.len() == 1 {
                    break;
                }
                let rule = (parts[0].clone(), parts[1].clone());
                ranks.insert(rule.clone(), merges.len());
                add(format!("{}{}", rule.0, rule.1), &mut tokens);
                merges.push(rule);
            }
        }
        add(BOS.into(), &mut tokens);
        add(EOS.into(), &mut tokens);
        Self { tokens, merges }
    }

    /// `vocab.json`: token → id.
    pub fn vocab_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> =
            self.tokens.iter().enumerate().map(|(id, token)| (token.clone(), id.into())).collect();
        serde_json::Value::Object(map).to_string()
    }

    /// `merges.txt`, CLIP's header first.
    pub fn merges_txt(&self) -> String {
        let mut text = String::from("#version: 0.2\n");
        for (left, right) in &self.merges {
            text.push_str(&format!("{left} {right}\n"));
        }
        text
    }

    /// Writes `vocab.json`, `merges.txt` and a `tokenizer_config.json` (77 tokens, padding
    /// with `<|endoftext|>`, as SD 1.x) into `folder`.
    pub fn write(&self, folder: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(folder)?;
        std::fs::write(folder.join("vocab.json"), self.vocab_json())?;
        std::fs::write(folder.join("merges.txt"), self.merges_txt())?;
        let config = serde_json::json!({
            "tokenizer_class": "CLIPTokenizer",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": EOS,
            "unk_token": EOS,
            "model_max_length": 77,
            "do_lower_case": true
        });
        std::fs::write(folder.join("tokenizer_config.json"), format!("{config:#}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::shapes::{self, Split};
    use crate::text::tokenizer::ClipTokenizer;

    #[test]
    fn every_word_is_one_token_through_clips_tokenizer() {
        let words = shapes::vocabulary();
        let vocabulary = WordVocabulary::new(&words);
        let folder = std::env::temp_dir().join(format!("ds-word-vocab-{}", std::process::id()));
        vocabulary.write(&folder).expect("writes");
        let tokenizer = ClipTokenizer::from_folder(&folder).expect("loads as a CLIP tokenizer");
        assert_eq!(tokenizer.vocab_size(), vocabulary.tokens.len());
        for word in &words {
            let ids = tokenizer.encode(word).expect("encodes");
            assert_eq!(ids.len(), 1, "{word} → {ids:?}");
            assert_eq!(vocabulary.tokens[ids[0] as usize], format!("{word}</w>"));
        }
        // captions: one token per word and comma, case-insensitive
        for i in 0..100 {
            let caption = shapes::sample(5, i, Split::Train, 32, 32).caption;
            let words = caption.replace(',', " ,").split_whitespace().count();
            let ids = tokenizer.encode(&caption.to_uppercase()).expect("encodes");
            assert_eq!(ids.len(), words, "{caption}");
        }
        std::fs::remove_dir_all(&folder).ok();
    }

    #[test]
    fn merges_found_for_overlapping_words() {
        // "re" starts "red" and sits inside "green": BPE still ends with whole words
        let vocabulary = WordVocabulary::new(&["red", "green", "reed", "ee", "e"]);
        let ranks: HashMap<(String, String), usize> =
            vocabulary.merges.iter().cloned().enumerate().map(|(rank, rule)| (rule, rank)).collect();
        for word in ["red", "green", "reed", "ee", "e"] {
            assert_eq!(bpe(word, &ranks), vec![format!("{word}</w>")]);
        }
    }
}
