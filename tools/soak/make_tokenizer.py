#!/usr/bin/env python3
"""Writes a byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json
with Qwen3's chat template) into a model directory, so that the soak runs
offline: the same tokenizer the service end-to-end tests generate
(tests/common/engine/test_assets.cc): ids 0..255 are the bytes, 256.. the
special tokens <|endoftext|>, <|im_start|>, <|im_end|>, <think>, </think>.

Usage: make_tokenizer.py MODEL_DIR CHAT_TEMPLATE_GOLDENS_JSON [--template qwen3]
"""
import json
import sys

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| "
                r"?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def byte_char(b):
    """GPT-2's bytes_to_unicode."""
    def printable(k):
        return 33 <= k <= 126 or 161 <= k <= 172 or k >= 174
    if printable(b):
        return chr(b)
    return chr(256 + sum(1 for k in range(b) if not printable(k)))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, goldens = sys.argv[1], sys.argv[2]
    template = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--template" else "qwen3"
    vocab = {byte_char(b): b for b in range(256)}
    added = []
    for i, s in enumerate(SPECIAL):
        vocab[s] = 256 + i
        added.append({"id": 256 + i, "content": s, "single_word": False,
                      "lstrip": False, "rstrip": False, "normalized": False,
                      "special": s.startswith("<|")})
    tok = {
        "version": "1.0", "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_PATTERN},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False,
             "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel"},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }
    g = json.load(open(goldens))
    config = {"chat_template": g["templates"][template]["chat_template"],
              "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "clean_up_tokenization_spaces": False}
    with open(f"{out}/tokenizer.json", "w") as f:
        json.dump(tok, f)
    with open(f"{out}/tokenizer_config.json", "w") as f:
        json.dump(config, f)


if __name__ == "__main__":
    main()
