"""Writes assets/tokenizers/clip/ (vocab.json, merges.txt, tokenizer_config.json): CLIP's BPE
tokenizer, which every Stable Diffusion 1.x/2.x model uses, in the files transformers'
CLIPTokenizer reads. Single-file checkpoints carry no tokenizer, so the studio ships this one.

Source: bpe_simple_vocab_16e6.txt.gz of OpenAI's CLIP (MIT License, Copyright (c) 2021 OpenAI),
as packaged in open_clip_torch on PyPI:
    python -m pip download --no-deps -d /tmp/oc open_clip_torch==3.3.0
    unzip /tmp/oc/*.whl 'open_clip/bpe_simple_vocab_16e6.txt.gz' -d /tmp/oc
    python scripts/make_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz

The vocabulary is built as CLIP's tokenizer builds it: the 256 byte symbols, the same with the
"</w>" word end, one token per merge (the first 49152 − 256 − 2 merge lines), then the start and
end tokens: 49408 tokens.
"""

import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "assets" / "tokenizers" / "clip"


def byte_symbols():
    """GPT-2/CLIP's reversible map from bytes to printable characters, in CLIP's order: the
    printable bytes first, then the others mapped past U+0100."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def main(source):
    lines = gzip.open(source, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == len(vocab)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False) + "\n",
                                    encoding="utf-8")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (OUT / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 77, "do_lower_case": True,
    }, indent=2) + "\n")
    print(f"wrote {OUT}: {len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main(sys.argv[1])
