//! Word ↔ token alignment of two prompts, for prompt-to-prompt: which token of the source
//! prompt each token of the target prompt takes its cross-attention from. Words are aligned by a
//! longest-common-subsequence diff: equal words map token for token, a replaced run maps onto
//! the run it replaces (a word swap), inserted words map nowhere (they keep their own attention).

use super::{ClipTokenizer, TokenizerError};

/// A prompt's word with its CLIP tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordTokens {
    pub word: String,
    pub tokens: Vec<u32>,
}

/// Splits `prompt` at whitespace and tokenizes each word (CLIP's pre-tokenizer never joins
/// across whitespace, so the concatenation is the prompt's tokenization).
pub fn words(tokenizer: &ClipTokenizer, prompt: &str) -> Result<Vec<WordTokens>, TokenizerError> {
    prompt
        .split_whitespace()
        .map(|word| Ok(WordTokens { word: word.to_string(), tokens: tokenizer.encode(word)? }))
        .collect()
}

/// The chunk positions (BOS at 0) of word `index`'s tokens.
pub fn word_positions(words: &[WordTokens], index: usize) -> std::ops::Range<usize> {
    let start = 1 + words[..index].iter().map(|w| w.tokens.len()).sum::<usize>();
    start..start + words[index].tokens.len()
}

/// Indices of the words equal (ignoring case and surrounding punctuation) to `word`.
pub fn find_word(words: &[WordTokens], word: &str) -> Vec<usize> {
    let clean = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
    let wanted = clean(word);
    words.iter().enumerate().filter(|(_, w)| clean(&w.word) == wanted).map(|(i, _)| i).collect()
}

/// One step of the word-level difference of two prompts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WordOp {
    /// Source word i is target word j.
    Equal(usize, usize),
    /// These source words became these target words (a swap).
    Replace(std::ops::Range<usize>, std::ops::Range<usize>),
    /// These target words are new.
    Insert(std::ops::Range<usize>),
    /// These source words are gone.
    Delete(std::ops::Range<usize>),
}

/// The word-level diff of `source` → `target` (words compared ignoring case), by longest
/// common subsequence; a deleted run next to an inserted one is a replacement.
pub fn diff_words<S: AsRef<str>, T: AsRef<str>>(source: &[S], target: &[T]) -> Vec<WordOp> {
    let (n, m) = (source.len(), target.len());
    let same = |i: usize, j: usize| source[i].as_ref().to_lowercase() == target[j].as_ref().to_lowercase();
    // lcs[i][j]: LCS length of source[i..] and target[j..]
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if same(i, j) { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut ops) = (0, 0, Vec::new());
    let (mut deleted, mut inserted) = (i..i, j..j);
    let flush = |ops: &mut Vec<WordOp>,
                 deleted: &std::ops::Range<usize>,
                 inserted: &std::ops::Range<usize>| {
        match (deleted.is_empty(), inserted.is_empty()) {
            (false, false) => ops.push(WordOp::Replace(deleted.clone(), inserted.clone())),
            (true, false) => ops.push(WordOp::Insert(inserted.clone())),
            (false, true) => ops.push(WordOp::Delete(deleted.clone())),
            (true, true) => {}
        }
    };
    while i < n || j < m {
        if i < n && j < m && same(i, j) {
            flush(&mut ops, &deleted, &inserted);
            ops.push(WordOp::Equal(i, j));
            i += 1;
            j += 1;
            deleted = i..i;
            inserted = j..j;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            inserted.end = j + 1;
            j += 1;
        } else {
            deleted.end = i + 1;
            i += 1;
        }
    }
    flush(&mut ops, &deleted, &inserted);
    ops
}

/// For each of the `length` chunk positions of the target, the source position whose attention
/// it takes (None: a new word's token, which keeps its own). BOS maps to BOS; the end token and
/// padding map to the source's, position for position.
pub fn token_mapper(source: &[WordTokens], target: &[WordTokens], length: usize) -> Vec<Option<usize>> {
    let mut mapper = vec![None; length];
    if length > 0 {
        mapper[0] = Some(0);
    }
    let tokens = |words: &[WordTokens], range: std::ops::Range<usize>| -> Vec<usize> {
        range.flat_map(|w| word_positions(words, w)).collect()
    };
    let mut spread = |sources: Vec<usize>, targets: Vec<usize>| {
        for (k, t) in targets.iter().enumerate() {
            if *t < length && !sources.is_empty() {
                mapper[*t] = Some(sources[k * sources.len() / targets.len()]).filter(|s| *s < length);
            }
        }
    };
    let source_words: Vec<&str> = source.iter().map(|w| w.word.as_str()).collect();
    let target_words: Vec<&str> = target.iter().map(|w| w.word.as_str()).collect();
    for op in diff_words(&source_words, &target_words) {
        match op {
            WordOp::Equal(i, j) => spread(tokens(source, i..i + 1), tokens(target, j..j + 1)),
            WordOp::Replace(s, t) if s.len() == t.len() => {
                for (i, j) in s.zip(t) {
                    spread(tokens(source, i..i + 1), tokens(target, j..j + 1));
                }
            }
            WordOp::Replace(s, t) => spread(tokens(source, s), tokens(target, t)),
            WordOp::Insert(_) | WordOp::Delete(_) => {}
        }
    }
    let end = |words: &[WordTokens]| 1 + words.iter().map(|w| w.tokens.len()).sum::<usize>();
    let (source_end, target_end) = (end(source), end(target));
    for (offset, slot) in mapper.iter_mut().enumerate().skip(target_end) {
        let position = source_end + (offset - target_end);
        *slot = (position < length).then_some(position);
    }
    mapper
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words of one token each, except those listed with more.
    fn words(text: &str) -> Vec<WordTokens> {
        text.split_whitespace()
            .enumerate()
            .map(|(i, w)| {
                let count = if w.starts_with("multi") { 2 } else { 1 };
                WordTokens { word: w.to_string(), tokens: (0..count).map(|k| (i * 10 + k) as u32).collect() }
            })
            .collect()
    }

    #[test]
    fn the_same_prompt_maps_every_position_to_itself() {
        let a = words("a red circle on a blue background");
        let mapper = token_mapper(&a, &a, 77);
        assert!(mapper.iter().enumerate().all(|(i, m)| *m == Some(i)));
    }

    #[test]
    fn a_swapped_word_takes_the_attention_of_the_word_it_replaces() {
        let (a, b) = (words("a red circle"), words("a green circle"));
        let mapper = token_mapper(&a, &b, 10);
        assert_eq!(&mapper[..5], &[Some(0), Some(1), Some(2), Some(3), Some(4)]);
        // a one-token word swapped for a two-token one: both take its attention
        let c = words("a multi circle");
        let mapper = token_mapper(&a, &c, 10);
        assert_eq!(&mapper[..6], &[Some(0), Some(1), Some(2), Some(2), Some(3), Some(4)]);
    }

    #[test]
    fn added_words_keep_their_own_attention_and_the_rest_shifts() {
        let (a, b) = (words("a circle"), words("a big red circle"));
        let mapper = token_mapper(&a, &b, 10);
        // BOS, a, big (new), red (new), circle → 2, EOS → 3, padding follows
        assert_eq!(&mapper[..8], &[Some(0), Some(1), None, None, Some(2), Some(3), Some(4), Some(5)]);
        assert_eq!(mapper[9], Some(7));
        // removed words: the target's padding runs past the source's last position
        let mapper = token_mapper(&b, &a, 10);
        assert_eq!(&mapper[..4], &[Some(0), Some(1), Some(4), Some(5)]);
        assert_eq!((mapper[8], mapper[9]), (None, None));
    }

    #[test]
    fn words_are_found_by_their_text() {
        let a = words("a red circle, a red square");
        assert_eq!(find_word(&a, "red"), vec![1, 4]);
        assert_eq!(find_word(&a, "CIRCLE"), vec![2]);
        assert!(find_word(&a, "blue").is_empty());
        assert_eq!(word_positions(&a, 2), 3..4);
    }
}
