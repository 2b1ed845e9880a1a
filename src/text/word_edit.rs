//! The word editor's model of a prompt: words with the weights their syntax gives them (`(red:1.3)`
//! → "red" at 1.3), the prompt written back from such words, and the word-level difference of a
//! source and a target prompt (swapped, inserted and deleted words) that prompt-to-prompt edits
//! follow. Shared by the studio's word chips and the CLI; no egui, no tch.

use super::alignment::{WordOp, diff_words};
use super::prompt::{PromptPiece, parse_prompt_weights};

/// Re-weights the studio offers (prompt-to-prompt attention re-weighting; Hertz et al. 2022 use
/// −2 … 2 and more for emphasis).
pub const MIN_WEIGHT: f64 = -2.0;
pub const MAX_WEIGHT: f64 = 3.0;

/// A word of a prompt and the weight its brackets give it.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedWord {
    pub word: String,
    pub weight: f64,
}

/// The prompt's words with their weights. A word split by brackets mid-word (`(re)d`) is one
/// word, with its first part's weight; `BREAK` is left out.
pub fn weighted_words(prompt: &str) -> Vec<WeightedWord> {
    let mut words: Vec<WeightedWord> = Vec::new();
    let mut joined = false; // whether the last word may continue into the next piece
    for piece in parse_prompt_weights(prompt) {
        let PromptPiece::Text { text, weight } = piece else {
            joined = false;
            continue;
        };
        let starts_mid_word = !text.starts_with(char::is_whitespace);
        for (k, word) in text.split_whitespace().enumerate() {
            match words.last_mut() {
                Some(last) if k == 0 && joined && starts_mid_word => last.word.push_str(word),
                _ => words.push(WeightedWord { word: word.to_string(), weight }),
            }
        }
        joined = !text.is_empty() && !text.ends_with(char::is_whitespace);
    }
    words
}

/// The words without their weights, space-separated (what the model reads).
pub fn plain_prompt(words: &[WeightedWord]) -> String {
    words.iter().map(|w| w.word.as_str()).collect::<Vec<_>>().join(" ")
}

/// The prompt written from words: `(word:1.3)` where the weight is not 1.
pub fn prompt_from_words(words: &[WeightedWord]) -> String {
    words
        .iter()
        .map(|w| {
            if (w.weight - 1.0).abs() < 1e-6 {
                escape(&w.word)
            } else {
                format!("({}:{})", escape(&w.word), format_weight(w.weight))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Brackets, colons and backslashes in a word are written escaped so they stay literal.
fn escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if matches!(c, '(' | ')' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A weight with at most two decimals and no trailing zeros ("1.3", "-0.5", "2").
pub fn format_weight(weight: f64) -> String {
    let text = format!("{weight:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `prompt` with word `index`'s weight set to `weight` (clamped to the editor's range); the
/// prompt is rewritten in the editor's form.
pub fn set_word_weight(prompt: &str, index: usize, weight: f64) -> String {
    let mut words = weighted_words(prompt);
    if let Some(word) = words.get_mut(index) {
        word.weight = if weight.is_finite() { weight.clamp(MIN_WEIGHT, MAX_WEIGHT) } else { 1.0 };
    }
    prompt_from_words(&words)
}

/// How the target prompt's words relate to the source's, in the target's order (deleted source
/// words where they were).
#[derive(Debug, Clone, PartialEq)]
pub enum WordChange {
    Same {
        source: usize,
        target: usize,
    },
    /// Source words replaced by target words (a swap when one for one).
    Swapped {
        source: std::ops::Range<usize>,
        target: std::ops::Range<usize>,
    },
    Inserted {
        target: std::ops::Range<usize>,
    },
    Deleted {
        source: std::ops::Range<usize>,
    },
}

/// The word edits that turn `source` into `target` (both prompts, syntax allowed).
pub fn word_changes(source: &str, target: &str) -> Vec<WordChange> {
    let source: Vec<String> = weighted_words(source).into_iter().map(|w| w.word).collect();
    let target: Vec<String> = weighted_words(target).into_iter().map(|w| w.word).collect();
    diff_words(&source, &target)
        .into_iter()
        .map(|op| match op {
            WordOp::Equal(source, target) => WordChange::Same { source, target },
            WordOp::Replace(source, target) => WordChange::Swapped { source, target },
            WordOp::Insert(target) => WordChange::Inserted { target },
            WordOp::Delete(source) => WordChange::Deleted { source },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(prompt: &str) -> Vec<(String, f64)> {
        weighted_words(prompt).into_iter().map(|w| (w.word, (w.weight * 1000.0).round() / 1000.0)).collect()
    }

    #[test]
    fn words_carry_the_weights_of_their_brackets() {
        assert_eq!(
            pairs("a (big:1.3) [red] ((circle))"),
            vec![("a".into(), 1.0), ("big".into(), 1.3), ("red".into(), 0.909), ("circle".into(), 1.21)]
        );
        assert_eq!(pairs("(re)d star"), vec![("red".into(), 1.1), ("star".into(), 1.0)]);
        assert_eq!(pairs("one BREAK two"), vec![("one".into(), 1.0), ("two".into(), 1.0)]);
        assert!(weighted_words("").is_empty());
    }

    #[test]
    fn a_weight_set_on_a_word_is_written_as_syntax_and_reads_back() {
        let prompt = set_word_weight("a red circle on a blue background", 1, 1.5);
        assert_eq!(prompt, "a (red:1.5) circle on a blue background");
        let prompt = set_word_weight(&prompt, 2, -0.75);
        assert_eq!(prompt, "a (red:1.5) (circle:-0.75) on a blue background");
        assert_eq!(pairs(&prompt)[2], ("circle".into(), -0.75));
        assert_eq!(set_word_weight(&prompt, 1, 1.0), "a red (circle:-0.75) on a blue background");
        assert_eq!(set_word_weight("a red circle", 1, 99.0), "a (red:3) circle", "clamped");
        assert_eq!(set_word_weight("a red circle", 7, 2.0), "a red circle", "no such word");
        assert_eq!(plain_prompt(&weighted_words("a (red:1.5) circle")), "a red circle");
        // brackets inside a word stay literal
        assert_eq!(prompt_from_words(&[WeightedWord { word: "f(x)".into(), weight: 2.0 }]), "(f\\(x\\):2)");
        assert_eq!(pairs("(f\\(x\\):2)"), vec![("f(x)".into(), 2.0)]);
    }

    #[test]
    fn the_word_changes_of_a_swap_an_insertion_and_a_deletion() {
        use WordChange::*;
        assert_eq!(
            word_changes("a red circle on a blue background", "a (green:1.2) circle on a blue background"),
            vec![
                Same { source: 0, target: 0 },
                Swapped { source: 1..2, target: 1..2 },
                Same { source: 2, target: 2 },
                Same { source: 3, target: 3 },
                Same { source: 4, target: 4 },
                Same { source: 5, target: 5 },
                Same { source: 6, target: 6 },
            ]
        );
        assert_eq!(
            word_changes("a red circle", "a big red circle"),
            vec![
                Same { source: 0, target: 0 },
                Inserted { target: 1..2 },
                Same { source: 1, target: 2 },
                Same { source: 2, target: 3 }
            ]
        );
        assert_eq!(
            word_changes("a big red circle", "a red circle"),
            vec![
                Same { source: 0, target: 0 },
                Deleted { source: 1..2 },
                Same { source: 2, target: 1 },
                Same { source: 3, target: 2 }
            ]
        );
    }
}
