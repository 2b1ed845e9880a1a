//! Attention weights in prompts, with AUTOMATIC1111's syntax and semantics (its
//! `parse_prompt_attention`): `(text)` multiplies the weight by 1.1, `[text]` divides it by 1.1,
//! `(text:1.3)` multiplies it by 1.3, brackets nest, `\(` `\)` `\[` `\]` `\\` are literal, an
//! unclosed bracket applies to the rest of the prompt, and `BREAK` ends a 75-token chunk.

/// Weight change of one `( )` pair.
pub const ROUND_BRACKET_MULTIPLIER: f64 = 1.1;

/// One run of prompt text at one weight, or a forced chunk break.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptPiece {
    Text {
        text: String,
        weight: f64,
    },
    /// `BREAK`: pad the current 75-token chunk and start a new one.
    Break,
}

enum Token<'a> {
    Literal(char),
    OpenRound,
    OpenSquare,
    /// `:1.3)`
    WeightClose(f64),
    CloseRound,
    CloseSquare,
    Text(&'a str),
}

/// Splits a prompt into the syntax's tokens.
fn tokens(prompt: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = prompt;
    while let Some(first) = rest.chars().next() {
        let (token, length) = match first {
            '\\' => match rest[1..].chars().next() {
                Some(escaped @ ('(' | ')' | '[' | ']' | '\\')) => (Token::Literal(escaped), 2),
                _ => (Token::Literal('\\'), 1),
            },
            '(' => (Token::OpenRound, 1),
            '[' => (Token::OpenSquare, 1),
            ')' => (Token::CloseRound, 1),
            ']' => (Token::CloseSquare, 1),
            ':' => match weight_close(rest) {
                Some((weight, length)) => (Token::WeightClose(weight), length),
                None => (Token::Text(":"), 1),
            },
            _ => {
                let end = rest.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(rest.len());
                (Token::Text(&rest[..end]), end)
            }
        };
        tokens.push(token);
        rest = &rest[length..];
    }
    tokens
}

/// Matches `:\s*[+-]?[.\d]+\s*\)` at the start of `text`: the weight and the bytes matched.
fn weight_close(text: &str) -> Option<(f64, usize)> {
    let after_colon = &text[1..];
    let number_start = after_colon.len() - after_colon.trim_start().len();
    let number_part = &after_colon[number_start..];
    let sign = usize::from(number_part.starts_with(['+', '-']));
    let digits = number_part[sign..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(number_part.len() - sign);
    if digits == 0 {
        return None;
    }
    let number = &number_part[..sign + digits];
    let after_number = &number_part[sign + digits..];
    let spaces = after_number.len() - after_number.trim_start().len();
    if !after_number[spaces..].starts_with(')') {
        return None;
    }
    let weight = number.parse().ok()?;
    Some((weight, 1 + number_start + sign + digits + spaces + 1))
}

/// Parses `prompt` into runs of text with their weights; neighbouring runs of equal weight are
/// merged, and an empty prompt is one empty run at weight 1.
pub fn parse_prompt_weights(prompt: &str) -> Vec<PromptPiece> {
    let mut pieces: Vec<(String, f64, bool)> = Vec::new(); // (text, weight, is_break)
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |pieces: &mut Vec<(String, f64, bool)>, from: usize, factor: f64| {
        for piece in &mut pieces[from..] {
            piece.1 *= factor;
        }
    };
    for token in tokens(prompt) {
        match token {
            Token::Literal(c) => pieces.push((c.to_string(), 1.0, false)),
            Token::OpenRound => round.push(pieces.len()),
            Token::OpenSquare => square.push(pieces.len()),
            Token::WeightClose(weight) => match round.pop() {
                Some(start) => multiply(&mut pieces, start, weight),
                None => pieces.push((format!(":{weight})"), 1.0, false)),
            },
            Token::CloseRound => match round.pop() {
                Some(start) => multiply(&mut pieces, start, ROUND_BRACKET_MULTIPLIER),
                None => pieces.push((")".into(), 1.0, false)),
            },
            Token::CloseSquare => match square.pop() {
                Some(start) => multiply(&mut pieces, start, 1.0 / ROUND_BRACKET_MULTIPLIER),
                None => pieces.push(("]".into(), 1.0, false)),
            },
            Token::Text(text) => push_splitting_breaks(&mut pieces, text),
        }
    }
    for start in round.drain(..) {
        multiply(&mut pieces, start, ROUND_BRACKET_MULTIPLIER);
    }
    for start in square.drain(..) {
        multiply(&mut pieces, start, 1.0 / ROUND_BRACKET_MULTIPLIER);
    }
    // merge neighbours of equal weight
    let mut merged: Vec<PromptPiece> = Vec::new();
    for (text, weight, is_break) in pieces {
        if is_break {
            merged.push(PromptPiece::Break);
            continue;
        }
        match merged.last_mut() {
            Some(PromptPiece::Text { text: previous, weight: w }) if *w == weight => previous.push_str(&text),
            _ => merged.push(PromptPiece::Text { text, weight }),
        }
    }
    if merged.is_empty() {
        merged.push(PromptPiece::Text { text: String::new(), weight: 1.0 });
    }
    merged
}

/// Appends `text`, turning each stand-alone word `BREAK` (and the spaces around it) into a break.
fn push_splitting_breaks(pieces: &mut Vec<(String, f64, bool)>, text: &str) {
    let mut rest = text;
    loop {
        let found = rest.match_indices("BREAK").find(|(at, _)| {
            let before = rest[..*at].chars().next_back();
            let after = rest[at + 5..].chars().next();
            !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
        });
        let Some((at, _)) = found else { break };
        let before = rest[..at].trim_end();
        if !before.is_empty() {
            pieces.push((before.to_string(), 1.0, false));
        }
        pieces.push((String::new(), -1.0, true));
        rest = rest[at + 5..].trim_start();
    }
    if !rest.is_empty() {
        pieces.push((rest.to_string(), 1.0, false));
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str, weight: f64) -> PromptPiece {
        PromptPiece::Text { text: text.into(), weight }
    }

    fn assert_parses(prompt: &str, expected: &[PromptPiece]) {
        let parsed = parse_prompt_weights(prompt);
        assert_eq!(parsed.len(), expected.len(), "{prompt}: {parsed:?}");
        for (got, want) in parsed.iter().zip(expected) {
            match (got, want) {
                (PromptPiece::Text { text: a, weight: w }, PromptPiece::Text { text: b, weight: v }) => {
                    assert_eq!(a, b, "{prompt}: {parsed:?}");
                    assert!((w - v).abs() < 1e-9, "{prompt}: weight of {a:?} is {w}, expected {v}");
                }
                (PromptPiece::Break, PromptPiece::Break) => {}
                _ => panic!("{prompt}: {parsed:?}"),
            }
        }
    }

    /// The examples of AUTOMATIC1111's `parse_prompt_attention` docstring.
    #[test]
    fn matches_the_reference_examples() {
        assert_parses("normal text", &[text("normal text", 1.0)]);
        assert_parses("an (important) word", &[text("an ", 1.0), text("important", 1.1), text(" word", 1.0)]);
        assert_parses("(unbalanced", &[text("unbalanced", 1.1)]);
        assert_parses("\\(literal\\]", &[text("(literal]", 1.0)]);
        assert_parses("(unnecessary)(parens)", &[text("unnecessaryparens", 1.1)]);
        assert_parses(
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            &[
                text("a ", 1.0),
                text("house", 1.3 * 1.1 * 1.1),
                text(" ", 1.1),
                text("on", 1.0),
                text(" a ", 1.1),
                text("hill", 0.55),
                text(", sun, ", 1.1),
                text("sky", 1.1f64.powi(4)),
                text(".", 1.1),
            ],
        );
    }

    #[test]
    fn weights_squares_breaks_and_edge_cases() {
        assert_parses("", &[text("", 1.0)]);
        assert_parses("[faint]", &[text("faint", 1.0 / 1.1)]);
        assert_parses("(red : 0.5 ) ball", &[text("red ", 0.5), text(" ball", 1.0)]);
        assert_parses("ratio 16:9 image", &[text("ratio 16:9 image", 1.0)]);
        assert_parses("a cat BREAK a dog", &[text("a cat", 1.0), PromptPiece::Break, text("a dog", 1.0)]);
        assert_parses("BREAKFAST", &[text("BREAKFAST", 1.0)]);
        assert_parses("stray) and ]", &[text("stray) and ]", 1.0)]);
        assert_parses("(neg:-1)", &[text("neg", -1.0)]);
        assert_parses("日本 (語:1.2)", &[text("日本 ", 1.0), text("語", 1.2)]);
    }
}
