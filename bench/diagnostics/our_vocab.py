"""The shapes dataset's shape and colour words (src/datasets/shapes.rs), and caption tokens with
every one of a word list swapped for the next: the diagnostics' measure of whether a model reads
a word."""

SHAPES = ["circle", "square", "triangle", "star", "heart", "ring", "diamond", "cross"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black", "brown"]


def swapped(tokenizer, ids, words):
    """`ids` (captions × tokens) with each of `words` replaced by the next one in the list."""
    token = lambda word: tokenizer(word, add_special_tokens=False).input_ids[0]
    out = ids.clone()
    for i, word in enumerate(words):
        out[ids == token(word)] = token(words[(i + 1) % len(words)])
    return out
