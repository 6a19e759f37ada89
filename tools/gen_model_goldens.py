#!/usr/bin/env python3
"""Hugging Face reference data for kvwire's C++ decoder (common/model/).

Runs on the GPU host (transformers 5.x, torch 2.x; no network). Subcommands:

  tiny OUT_DIR [--only ARCH...]
      Builds tiny random Qwen2, Qwen3, Llama (llama3 rope scaling), Gemma3
      (2 sliding layers with a window smaller than the prompt + 1 full
      layer), Mistral (sliding window smaller than the prompt) and Llama 3.2
      style (tied, Llama 3.2's llama3 scaling) models
      with transformers, saves each with save_pretrained (safetensors, bf16
      weights) under OUT_DIR/<arch>/ and records, in fp32 on CPU, into
      OUT_DIR/<arch>/goldens.safetensors:
        input_ids [T] (I64), logits [T, V] (F32), keys.<l> / values.<l>
        [kv_heads, T, head_dim] (F32, every layer), greedy_tokens [20] (I64,
        HF generate, do_sample=False, no EOS stop), greedy_margin [20] (F32,
        top-1 minus top-2 logit at each greedy step).
      For gemma3 also OUT_DIR/gemma3/gapped.safetensors: C2C's aligned mode
      (padding at GAPPED_PADS masked out, position_ids = arange over the
      padded sequence): input_ids / positions of the real tokens, their
      logits and K/V, 20 greedy tokens continuing at the next positions.
      tests/common/model/ loads these in C++.

  real32 WORK_DIR
      Random-weight Gemma-3-1B and Llama-3.2-1B shapes on CUDA in fp32: a
      640-token prompt (longer than Gemma-3's 512 window) and 64 HF greedy
      tokens (parity.safetensors), the checkpoints saved in bf16 (exact).

  gpucheck OUT
      The model-family GPU job (one device run): new tiny goldens, real32,
      kvwire-model-bench parity (eager, CUDA-graph, batched decode) and the
      model tests on CUDA; OUT/results.json.

  real WORK_DIR
      Random-weight models with the real Qwen3-0.6B and Qwen2.5-0.5B shapes
      on CUDA: saves each in bf16 under WORK_DIR/<name>/ with parity.safetensors
      (input_ids, HF bf16 logits, HF fp32 logits of the same bf16-rounded
      weights, 32 HF bf16 greedy tokens).

  bench WORK_DIR --name NAME [--device cuda|cpu] ...
      Times HF transformers (prefill tokens/s, decode ms/token measured as
      (generate time - prefill time) / (new tokens - 1), batch decode
      tokens/s) on a checkpoint written by `real`. Prints JSON.

  all OUT
      The whole GPU-host job, made for one device run: builds kvwire's C++
      targets in the background, writes the tiny goldens (OUT/goldens.tar),
      the real-shape checkpoints, then runs the HF and C++ (kvwire-model-bench)
      parity checks and timings one after the other, and writes
      OUT/results.json.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time

import torch

TINY_T = 16          # Prompt tokens of the tiny goldens.
TINY_NEW = 20        # Greedy tokens of the tiny goldens.
TINY_VOCAB = 512
MIN_MARGIN = 2e-3    # Smallest top-1/top-2 gap accepted along the greedy path.


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def transformers_module():
    import transformers  # noqa: deferred so `--help` works without it
    return transformers


def make_config(cls, rope, **kwargs):
    """Builds a config with transformers 5 `rope_parameters`, falling back to
    the 4.x rope_theta/rope_scaling keywords."""
    try:
        return cls(rope_parameters=dict(rope), **kwargs)
    except TypeError:
        theta = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") == "default":
            scaling = None
        return cls(rope_theta=theta, rope_scaling=scaling, **kwargs)


TINY_WINDOW = 6      # Sliding window of the tiny gemma3 / mistral (< TINY_T).
# Padded indices of the gapped golden (gemma3): C2C's aligned mode masks
# them out while position_ids stay arange over the padded sequence. Early
# enough that no gap lies inside a decode step's window (decoder.h: decode
# steps compare cache indices).
GAPPED_PADS = (2, 3, 9)


def tiny_specs():
    t = transformers_module()
    common = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
                  num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=4096, bos_token_id=1)
    gemma_rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0,
                           "rope_theta": 1000000.0}}
    try:
        gemma_config = t.Gemma3TextConfig(rope_parameters=gemma_rope, **GEMMA_TINY)
    except TypeError:
        gemma_config = t.Gemma3TextConfig(
            rope_theta=1000000.0, rope_local_base_freq=10000.0,
            rope_scaling={"rope_type": "linear", "factor": 8.0}, **GEMMA_TINY)
    return {
        # Gemma 3 text: 2 sliding layers (window 6 < the 16-token prompt) and
        # 1 full layer with its own (linearly scaled) RoPE; head_dim 32 and
        # query_pre_attn_scalar 24 (both != 64 / 4), tied, final soft-capping
        # on (null in the released Gemma 3, so the real-shape check covers
        # the uncapped path).
        "gemma3": (t.Gemma3ForCausalLM, gemma_config),
        # Mistral: every layer slides (window 6); explicit head_dim 32.
        "mistral": (t.MistralForCausalLM, make_config(
            t.MistralConfig, {"rope_type": "default", "rope_theta": 1000000.0},
            num_hidden_layers=2, head_dim=32, rms_norm_eps=1e-5,
            tie_word_embeddings=False, sliding_window=TINY_WINDOW,
            eos_token_id=2, **common)),
        # Llama 3.2 style: tied embeddings and Llama 3.2's llama3 scaling
        # (factor 32, original context 8192, theta 500000).
        "llama32": (t.LlamaForCausalLM, make_config(
            t.LlamaConfig,
            {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192},
            num_hidden_layers=2, rms_norm_eps=1e-5, tie_word_embeddings=True,
            attention_bias=False, mlp_bias=False, eos_token_id=[509, 511],
            **common)),
        # Sharer-like: q/k/v bias, tied embeddings, single EOS id.
        "qwen2": (t.Qwen2ForCausalLM, make_config(
            t.Qwen2Config, {"rope_type": "default", "rope_theta": 1000000.0},
            num_hidden_layers=2, rms_norm_eps=1e-6, tie_word_embeddings=True,
            use_sliding_window=False, eos_token_id=511, **common)),
        # Receiver-like: q/k norm, head_dim 32 != 64 / 4, tied, EOS list.
        "qwen3": (t.Qwen3ForCausalLM, make_config(
            t.Qwen3Config, {"rope_type": "default", "rope_theta": 1000000.0},
            num_hidden_layers=3, head_dim=32, rms_norm_eps=1e-6,
            tie_word_embeddings=True, attention_bias=False,
            use_sliding_window=False, eos_token_id=[510, 511], **common)),
        # llama3 scaling with a small original context so it bends real
        # frequencies at head_dim 16; untied LM head.
        "llama": (t.LlamaForCausalLM, make_config(
            t.LlamaConfig,
            {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 256},
            num_hidden_layers=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
            attention_bias=False, mlp_bias=False, eos_token_id=[509, 511],
            **common)),
    }


GEMMA_TINY = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24,
                  layer_types=["sliding_attention", "sliding_attention",
                               "full_attention"],
                  sliding_window=TINY_WINDOW, final_logit_softcapping=30.0,
                  attn_logit_softcapping=None, rms_norm_eps=1e-6,
                  hidden_activation="gelu_pytorch_tanh",
                  max_position_embeddings=4096, tie_word_embeddings=True,
                  bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0)


def randomize_(model, seed, std):
    """Random weights, including norms and biases (HF's init sets those to
    1 and 0, which would hide loading mistakes), rounded to bf16 so a bf16
    checkpoint holds them exactly."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                value = 1.0 + 0.1 * noise
            elif name.endswith(".bias"):
                value = 0.1 * noise
            else:
                value = std * noise
            p.copy_(value.to(torch.bfloat16).to(p.dtype).to(p.device))


def full_cache():
    """A cache that keeps every position of every layer. transformers 5.x
    builds sliding-window layers from the config (Gemma3, Mistral), which
    keep only the last window - 1 positions after a prefill; a DynamicCache
    made without a config keeps them all (attention is masked the same)."""
    try:
        from transformers import DynamicCache
        return DynamicCache()
    except Exception:  # noqa: BLE001
        return None


def cache_kv(cache, layer):
    if hasattr(cache, "layers"):
        entry = cache.layers[layer]
        return entry.keys, entry.values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[layer], cache.value_cache[layer]
    return cache[layer][0], cache[layer][1]


def disable_eos(model):
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = 0


def hf_generate(model, ids, new_tokens):
    """Greedy HF generate without EOS stopping; returns the new tokens."""
    out = model.generate(ids, attention_mask=torch.ones_like(ids),
                         max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)
    return out[0, ids.shape[1]:]


def greedy_margins(model, ids, tokens):
    """Top-1 minus top-2 logit at each step of the greedy path (full
    forwards), and whether argmax agrees with `tokens`."""
    seq = ids[0].tolist()
    margins, agree = [], True
    with torch.no_grad():
        for tok in tokens.tolist():
            logits = model(torch.tensor([seq], device=ids.device)).logits[0, -1]
            top = torch.topk(logits.float(), 2).values
            margins.append(float(top[0] - top[1]))
            agree = agree and int(logits.argmax()) == tok
            seq.append(tok)
    return margins, agree


def gapped_golden(model, ids, new_tokens):
    """C2C's aligned mode on `ids`: padding inserted at GAPPED_PADS, masked
    out of attention, position_ids = arange over the padded sequence; then
    greedy steps continuing at the next positions (full forwards: HF's
    generate() would derive positions from the mask). Returns the tensors of
    gapped.safetensors and the greedy margins."""
    real = ids[0].tolist()
    padded, mask, positions = [], [], []
    for tok in real:
        while len(padded) in GAPPED_PADS:
            padded.append(0)
            mask.append(0)
        positions.append(len(padded))
        padded.append(tok)
        mask.append(1)
    seq, msk = list(padded), list(mask)
    tokens, margins = [], []
    with torch.no_grad():
        first = None
        for step in range(new_tokens):
            n = len(seq)
            out = model(input_ids=torch.tensor([seq]),
                        attention_mask=torch.tensor([msk]),
                        position_ids=torch.arange(n).unsqueeze(0),
                        use_cache=True, past_key_values=full_cache())
            if first is None:
                first = out
            logits = out.logits[0, -1].float()
            top = torch.topk(logits, 2).values
            margins.append(float(top[0] - top[1]))
            tok = int(logits.argmax())
            tokens.append(tok)
            seq.append(tok)
            msk.append(1)
    index = torch.tensor(positions)
    tensors = {
        "input_ids": ids[0].clone(),
        "positions": index.clone(),
        "logits": first.logits[0].float().index_select(0, index).contiguous(),
        "greedy_tokens": torch.tensor(tokens, dtype=torch.int64),
        "greedy_margin": torch.tensor(margins, dtype=torch.float32),
    }
    for layer in range(model.config.num_hidden_layers):
        k, v = cache_kv(first.past_key_values, layer)
        if k.shape[2] != len(padded):  # A truncated sliding layer.
            continue
        tensors[f"keys.{layer}"] = k[0].float().index_select(1, index).contiguous()
        tensors[f"values.{layer}"] = v[0].float().index_select(1, index).contiguous()
    return tensors, margins


def cmd_tiny(out_dir, only=None):
    t = transformers_module()
    from safetensors.torch import save_file
    torch.set_num_threads(4)
    summary = {}
    for arch, (cls, config) in tiny_specs().items():
        if only and arch not in only:
            continue
        for seed in range(12):
            torch.manual_seed(seed)
            model = cls(config).eval()
            randomize_(model, seed, std=0.15)
            ids = torch.tensor([[(i * 37 + 11) % TINY_VOCAB for i in range(TINY_T)]])
            with torch.no_grad():
                out = model(input_ids=ids, use_cache=True,
                            past_key_values=full_cache())
            gen_model = model
            saved_eos = (model.generation_config.eos_token_id,
                         model.config.eos_token_id)
            disable_eos(gen_model)
            with torch.no_grad():
                greedy = hf_generate(gen_model, ids, TINY_NEW)
            margins, agree = greedy_margins(model, ids, greedy)
            model.generation_config.eos_token_id, model.config.eos_token_id = saved_eos
            gapped = None
            if arch == "gemma3":
                gapped, gapped_margins = gapped_golden(model, ids, TINY_NEW)
                margins_ok = min(gapped_margins) >= MIN_MARGIN
            else:
                margins_ok = True
            if (len(greedy) == TINY_NEW and agree and min(margins) >= MIN_MARGIN
                    and margins_ok):
                break
            log(f"{arch}: seed {seed} rejected (len {len(greedy)}, agree {agree},"
                f" min margin {min(margins) if margins else None})")
        d = os.path.join(out_dir, arch)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        model.to(torch.bfloat16).save_pretrained(d)
        model.to(torch.float32)
        if not os.path.exists(os.path.join(d, "generation_config.json")):
            model.generation_config.save_pretrained(d)
        tensors = {
            "input_ids": ids[0].clone(),
            "logits": out.logits[0].float().contiguous().clone(),
            "greedy_tokens": greedy.clone().to(torch.int64),
            "greedy_margin": torch.tensor(margins, dtype=torch.float32),
        }
        for layer in range(config.num_hidden_layers):
            k, v = cache_kv(out.past_key_values, layer)
            if k.shape[2] != ids.shape[1]:  # A truncated sliding layer.
                log(f"{arch}: layer {layer} cache holds {k.shape[2]} positions; no K/V golden")
                continue
            tensors[f"keys.{layer}"] = k[0].float().contiguous().clone()
            tensors[f"values.{layer}"] = v[0].float().contiguous().clone()
        meta = {
            "arch": arch, "seed": str(seed),
            "transformers": t.__version__, "torch": torch.__version__,
            "attn_implementation": str(getattr(model.config, "_attn_implementation", "")),
            "date": datetime.date.today().isoformat(),
            "min_greedy_margin": f"{min(margins):.6g}",
        }
        save_file(tensors, os.path.join(d, "goldens.safetensors"), metadata=meta)
        if gapped is not None:
            gmeta = dict(meta, pads=",".join(map(str, GAPPED_PADS)),
                         min_greedy_margin=f"{min(gapped_margins):.6g}")
            save_file(gapped, os.path.join(d, "gapped.safetensors"), metadata=gmeta)
            summary[arch + "_gapped"] = {"positions": gapped["positions"].tolist(),
                                         "greedy": gapped["greedy_tokens"].tolist(),
                                         "min_margin": min(gapped_margins)}
        summary[arch] = {"seed": seed, "min_margin": min(margins),
                         "greedy": greedy.tolist(),
                         "files": sorted(os.listdir(d))}
        log(f"{arch}: seed {seed}, greedy {greedy.tolist()}, min margin {min(margins):.4g}")
    return summary


REAL = {
    "qwen3-0.6b": ("Qwen3ForCausalLM", "Qwen3Config", dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
        tie_word_embeddings=True, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=[151645, 151643]), 1000000.0),
    "qwen2.5-0.5b": ("Qwen2ForCausalLM", "Qwen2Config", dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        max_position_embeddings=32768, rms_norm_eps=1e-6,
        tie_word_embeddings=True, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=[151645, 151643]), 1000000.0),
}
PARITY_T = 64
PARITY_NEW = 32

# Real Gemma-3-1B and Llama-3.2-1B shapes (c2c-spec §7), random weights,
# checked in fp32: a prompt longer than Gemma-3's 512-token window, then 64
# greedy tokens.
GEMMA3_1B = dict(
    vocab_size=262144, hidden_size=1152, intermediate_size=6912,
    num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1,
    head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
    max_position_embeddings=32768, rms_norm_eps=1e-6,
    hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
    final_logit_softcapping=None, attn_logit_softcapping=None,
    bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0)
LLAMA32_1B = dict(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192,
    num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
    tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
    bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
# Mistral-7B-v0.3's shapes with v0.1's sliding attention at a 512-token
# window, so the 640-token prompt exceeds it at the 7B shape too.
MISTRAL_7B_W512 = dict(
    vocab_size=32768, hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    head_dim=128, max_position_embeddings=32768, rms_norm_eps=1e-5,
    sliding_window=512, tie_word_embeddings=False, bos_token_id=1,
    eos_token_id=2)
REAL32_T = 640
REAL32_NEW = 64
REAL32_NAMES = ("gemma-3-1b", "llama-3.2-1b", "mistral-7b-w512")


def real32_config(name):
    t = transformers_module()
    if name == "gemma-3-1b":
        try:
            return t.Gemma3ForCausalLM, t.Gemma3TextConfig(
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
                **GEMMA3_1B)
        except TypeError:
            return t.Gemma3ForCausalLM, t.Gemma3TextConfig(
                rope_theta=1000000.0, rope_local_base_freq=10000.0, **GEMMA3_1B)
    if name == "mistral-7b-w512":
        return t.MistralForCausalLM, make_config(
            t.MistralConfig, {"rope_type": "default", "rope_theta": 1000000.0},
            **MISTRAL_7B_W512)
    return t.LlamaForCausalLM, make_config(
        t.LlamaConfig,
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 8192}, **LLAMA32_1B)


def cmd_real32(work, names=("gemma-3-1b", "llama-3.2-1b")):
    """fp32 HF references at real shapes: saves each model (bf16-exact
    weights, written in bf16) under WORK/<name>/ with parity.safetensors
    (input_ids [REAL32_T], last_logits [V], greedy_tokens [REAL32_NEW],
    greedy_margin)."""
    from safetensors.torch import save_file
    summary = {}
    for name in names:
        t0 = time.time()
        cls, config = real32_config(name)
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = cls(config).eval()
        randomize_(model, 1, std=0.02)
        g = torch.Generator(device="cpu").manual_seed(3)
        ids = torch.randint(0, config.vocab_size, (1, REAL32_T), generator=g).cuda()
        disable_eos(model)
        with torch.no_grad():
            last = model(ids).logits[0, -1].float().cpu()
            greedy = hf_generate(model, ids, REAL32_NEW)
            margins, agree = greedy_margins(model, ids, greedy)
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        model.to(torch.bfloat16).save_pretrained(d)
        save_file({"input_ids": ids[0].cpu().contiguous(),
                   "last_logits": last.contiguous(),
                   "greedy_tokens": greedy.cpu().to(torch.int64).contiguous(),
                   "greedy_margin": torch.tensor(margins, dtype=torch.float32)},
                  os.path.join(d, "parity.safetensors"))
        summary[name] = {
            "seconds": round(time.time() - t0, 1),
            "prompt_tokens": REAL32_T, "new_tokens": REAL32_NEW,
            "attn_implementation": str(getattr(model.config, "_attn_implementation", "")),
            "layer_types": list(getattr(config, "layer_types", []) or [])[:7],
            "sliding_window": getattr(config, "sliding_window", None),
            "hf_cached_vs_full_forward_agree": agree,
            "min_greedy_margin": min(margins),
            "distinct_greedy_tokens": len(set(greedy.tolist())),
            "greedy": greedy.tolist()}
        log(f"real32 {name}: {summary[name]}")
        del model
        torch.cuda.empty_cache()
    return summary


def load_real(work, name, device, dtype):
    t = transformers_module()
    cls = getattr(t, REAL[name][0])
    d = os.path.join(work, name)
    try:
        model = cls.from_pretrained(d, dtype=dtype)
    except TypeError:
        model = cls.from_pretrained(d, torch_dtype=dtype)
    return model.to(device).eval()


def cmd_real(work):
    t = transformers_module()
    from safetensors.torch import save_file
    summary = {}
    for name, (cls_name, cfg_name, kwargs, theta) in REAL.items():
        t0 = time.time()
        config = make_config(getattr(t, cfg_name),
                             {"rope_type": "default", "rope_theta": theta}, **kwargs)
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = getattr(t, cls_name)(config).eval()
        # HF-like init std, plus perturbed norms/biases; bf16-representable.
        randomize_(model, 1, std=0.02)
        g = torch.Generator(device="cpu").manual_seed(2)
        ids = torch.randint(0, config.vocab_size, (1, PARITY_T), generator=g).cuda()
        with torch.no_grad():
            ref32 = model(ids).logits[0].float().cpu()
        model.to(torch.bfloat16)
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d)
        disable_eos(model)
        with torch.no_grad():
            logits = model(ids).logits[0].float().cpu()
            greedy = hf_generate(model, ids, PARITY_NEW).cpu()
        save_file({"input_ids": ids[0].cpu().contiguous(),
                   "logits": logits.contiguous(),
                   "ref_fp32_logits": ref32.contiguous(),
                   "greedy_tokens": greedy.to(torch.int64).contiguous()},
                  os.path.join(d, "parity.safetensors"))
        summary[name] = {"seconds": round(time.time() - t0, 1),
                         "hf_bf16_vs_fp32_max_abs": float((logits - ref32).abs().max()),
                         "hf_bf16_vs_fp32_mean_abs": float((logits - ref32).abs().mean()),
                         "max_abs_logit": float(ref32.abs().max()),
                         "greedy": greedy.tolist()}
        log(f"real {name}: {summary[name]}")
        del model
        torch.cuda.empty_cache()
    return summary


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cmd_bench(work, name, device, dtype_name, prompt_len, new_tokens, iters,
              batch, batch_prompt_len):
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    model = load_real(work, name, device, dtype)
    disable_eos(model)
    vocab = model.config.vocab_size
    ids = torch.tensor([[(i * 7919 + 13) % vocab for i in range(prompt_len)]],
                       device=device)
    res = {"name": name, "device": device, "dtype": dtype_name,
           "prompt_len": prompt_len, "decode_tokens": new_tokens,
           "attn_implementation": str(getattr(model.config, "_attn_implementation", ""))}

    def prefill():
        try:
            return model(ids, use_cache=True, logits_to_keep=1)
        except TypeError:
            return model(ids, use_cache=True)

    pre, gen = [], []
    with torch.no_grad():
        for i in range(iters + 1):
            sync(device)
            t0 = time.perf_counter()
            prefill()
            sync(device)
            t1 = time.perf_counter()
            hf_generate(model, ids, new_tokens)
            sync(device)
            t2 = time.perf_counter()
            if i > 0:
                pre.append(t1 - t0)
                gen.append(t2 - t1)
        pre.sort()
        gen.sort()
        tp, tg = pre[len(pre) // 2], gen[len(gen) // 2]
        res.update(prefill_s=tp, prefill_tokens_per_s=prompt_len / tp,
                   generate_s=tg,
                   decode_ms_per_token=1e3 * (tg - tp) / (new_tokens - 1))
        if batch > 0:
            bids = torch.tensor(
                [[(i * 7919 + b * 104729 + 13) % vocab for i in range(batch_prompt_len)]
                 for b in range(batch)], device=device)
            times = []
            for i in range(iters + 1):
                sync(device)
                t0 = time.perf_counter()
                model.generate(bids, attention_mask=torch.ones_like(bids),
                               max_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=0)
                sync(device)
                if i > 0:
                    times.append(time.perf_counter() - t0)
            times.sort()
            tb = times[len(times) // 2]
            res.update(batch=batch, batch_prompt_len=batch_prompt_len,
                       batch_generate_s=tb,
                       batch_tokens_per_s=batch * new_tokens / tb)
    return res


def run_json(cmd, timeout):
    log("$", " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        return {"error": f"rc={p.returncode}", "stderr": p.stderr[-2000:],
                "stdout": p.stdout[-2000:]}
    line = [l for l in p.stdout.splitlines() if l.startswith("{")]
    return json.loads(line[-1]) if line else {"error": "no JSON", "stdout": p.stdout[-2000:]}


def cmd_all(out, budget):
    start = time.time()
    left = lambda: budget - (time.time() - start)  # noqa: E731
    os.makedirs(out, exist_ok=True)
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "host": platform.node(), "torch": torch.__version__}
    try:
        results["transformers"] = transformers_module().__version__
        results["gpu"] = torch.cuda.get_device_name(0)
    except Exception as e:  # noqa: BLE001
        results["env_error"] = repr(e)

    def save():
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)

    # 1. Build the C++ targets in the background.
    build_log = open(os.path.join(out, "build.log"), "w")
    targets = "kvwire-model-bench kvwire-make-checkpoint"
    build = subprocess.Popen(
        ["bash", "-c",
         "cmake -S . -B build-gpu $GPU_CMAKE_ARGS -DCMAKE_BUILD_TYPE=Release "
         "-DKVWIRE_WITH_CUDA=ON -DKVWIRE_BUILD_TESTS=OFF "
         "-DKVWIRE_BUILD_BENCHMARKS=OFF && "
         f"cmake --build build-gpu -j14 --target {targets}"],
        stdout=build_log, stderr=subprocess.STDOUT)

    # 2. Tiny goldens (CPU).
    try:
        results["tiny"] = cmd_tiny("tests/data/models")
        with tarfile.open(os.path.join(out, "goldens.tar"), "w") as tar:
            tar.add("tests/data/models", arcname="models")
    except Exception as e:  # noqa: BLE001
        import traceback
        results["tiny_error"] = traceback.format_exc()
        log("tiny failed:", e)
    save()

    # 3. Real-shape checkpoints and HF parity data (GPU).
    work = "/tmp/kvwire-real"
    try:
        results["real"] = cmd_real(work)
    except Exception as e:  # noqa: BLE001
        import traceback
        results["real_error"] = traceback.format_exc()
        log("real failed:", e)
    save()

    # 4. Wait for the build.
    try:
        rc = build.wait(timeout=max(10, left() - 120))
    except subprocess.TimeoutExpired:
        build.kill()
        rc = "timeout"
    build_log.close()
    results["build_rc"] = rc
    log("build rc", rc)
    save()
    bench = "build-gpu/tools/model_bench/kvwire-model-bench"
    have_bench = rc == 0 and os.path.exists(bench)

    # 5. C++ on CUDA in fp32 against the tiny goldens (SDPA path).
    if have_bench:
        results["ours_tiny_cuda_fp32"] = {}
        for arch in ("qwen2", "qwen3", "llama"):
            d = f"tests/data/models/{arch}"
            if os.path.exists(f"{d}/goldens.safetensors"):
                results["ours_tiny_cuda_fp32"][arch] = run_json(
                    [bench, f"--model_dir={d}", "--device=cuda", "--dtype=fp32",
                     f"--parity={d}/goldens.safetensors", "--perf=false"], 60)
        save()

    # 6. Timings and bf16 parity at real shapes, one process at a time.
    results["bench"] = {}
    for name in REAL:
        if not os.path.exists(os.path.join(work, name, "config.json")):
            continue
        r = results["bench"].setdefault(name, {})
        if left() > 60:
            try:
                r["hf_cuda_bf16"] = cmd_bench(work, name, "cuda", "bf16", 512, 64, 3, 8, 128)
                torch.cuda.empty_cache()
            except Exception as e:  # noqa: BLE001
                r["hf_cuda_bf16"] = {"error": repr(e)}
            log(name, "hf", r["hf_cuda_bf16"])
            save()
        if have_bench and left() > 40:
            r["ours_cuda_bf16"] = run_json(
                [bench, f"--model_dir={work}/{name}", "--device=cuda", "--dtype=bf16",
                 f"--parity={work}/{name}/parity.safetensors", "--prompt_len=512",
                 "--decode_tokens=64", "--iters=3", "--batch=8",
                 "--batch_prompt_len=128"], 150)
            log(name, "ours", r["ours_cuda_bf16"])
            save()
    for name in REAL:  # CPU figures, if time remains.
        r = results["bench"].get(name)
        if r is None:
            continue
        if left() > 70:
            try:
                torch.set_num_threads(16)
                r["hf_cpu_fp32"] = cmd_bench(work, name, "cpu", "fp32", 128, 16, 2, 0, 0)
            except Exception as e:  # noqa: BLE001
                r["hf_cpu_fp32"] = {"error": repr(e)}
            save()
        if have_bench and left() > 50:
            r["ours_cpu_fp32"] = run_json(
                [bench, f"--model_dir={work}/{name}", "--device=cpu", "--dtype=fp32",
                 "--prompt_len=128", "--decode_tokens=16", "--iters=2"], 120)
            save()
    results["elapsed_s"] = round(time.time() - start, 1)
    save()
    log("done in", results["elapsed_s"], "s")
    print(json.dumps(results, indent=1)[-6000:])


def cmd_gpucheck(out, budget):
    """The model-family job for one device run: builds the C++ bench and the
    model tests with CUDA in the background, writes the new tiny goldens
    (gemma3 + gapped, mistral, llama32; OUT/goldens.tar), the fp32
    real-shape references (Gemma-3-1B, Llama-3.2-1B), then compares
    kvwire's greedy tokens (eager, CUDA-graph prefill + decode, batched
    decode) and runs the model tests on the GPU. OUT/results.json."""
    start = time.time()
    left = lambda: budget - (time.time() - start)  # noqa: E731
    os.makedirs(out, exist_ok=True)
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "host": platform.node(), "torch": torch.__version__}
    try:
        results["transformers"] = transformers_module().__version__
        results["gpu"] = torch.cuda.get_device_name(0)
    except Exception as e:  # noqa: BLE001
        results["env_error"] = repr(e)

    def save():
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)

    build_log = open(os.path.join(out, "build.log"), "w")
    targets = "kvwire-model-bench kvwire_model_test kvwire_model_cuda_test"
    build = subprocess.Popen(
        ["bash", "-c",
         "cmake -S . -B build-gpu $GPU_CMAKE_ARGS -DCMAKE_BUILD_TYPE=Release "
         "-DKVWIRE_WITH_CUDA=ON -DKVWIRE_BUILD_TESTS=ON "
         "-DKVWIRE_BUILD_BENCHMARKS=OFF && "
         f"cmake --build build-gpu -j15 --target {targets}"],
        stdout=build_log, stderr=subprocess.STDOUT)
    new = ("gemma3", "mistral", "llama32")
    try:
        results["tiny"] = cmd_tiny("tests/data/models", only=new)
        with tarfile.open(os.path.join(out, "goldens.tar"), "w") as tar:
            for arch in new:
                tar.add(f"tests/data/models/{arch}", arcname=f"models/{arch}")
    except Exception as e:  # noqa: BLE001
        import traceback
        results["tiny_error"] = traceback.format_exc()
        log("tiny failed:", e)
    save()
    work = "/tmp/kvwire-real32"
    try:
        results["real32"] = cmd_real32(work)
    except Exception as e:  # noqa: BLE001
        import traceback
        results["real32_error"] = traceback.format_exc()
        log("real32 failed:", e)
    save()
    try:
        rc = build.wait(timeout=max(10, left() - 150))
    except subprocess.TimeoutExpired:
        build.kill()
        rc = "timeout"
    build_log.close()
    results["build_rc"] = rc
    log("build rc", rc)
    save()
    bench = "build-gpu/tools/model_bench/kvwire-model-bench"
    if rc == 0 and os.path.exists(bench):
        results["ours_tiny_cuda_fp32"] = {}
        for arch in new:
            d = f"tests/data/models/{arch}"
            if os.path.exists(f"{d}/goldens.safetensors"):
                results["ours_tiny_cuda_fp32"][arch] = run_json(
                    [bench, f"--model_dir={d}", "--device=cuda", "--dtype=fp32",
                     f"--parity={d}/goldens.safetensors", "--perf=false"], 60)
        save()
        results["ours_real32_cuda"] = {}
        for name in ("gemma-3-1b", "llama-3.2-1b"):
            d = os.path.join(work, name)
            if left() > 60 and os.path.exists(f"{d}/parity.safetensors"):
                results["ours_real32_cuda"][name] = run_json(
                    [bench, f"--model_dir={d}", "--device=cuda", "--dtype=fp32",
                     f"--parity={d}/parity.safetensors", "--perf=false"], 150)
                log(name, results["ours_real32_cuda"][name])
                save()
        if left() > 40:
            env = dict(os.environ, KVWIRE_TEST_DEVICE="cuda")
            for test in ("kvwire_model_cuda_test", "kvwire_model_test"):
                exe = f"build-gpu/tests/common/model/{test}"
                try:
                    p = subprocess.run([exe], capture_output=True, text=True,
                                       timeout=max(20, left() - 15), env=env)
                    tail = p.stdout[-3000:]
                    fails = [l for l in p.stdout.splitlines() if "FAILED" in l]
                    results[f"gpu_{test}"] = {"rc": p.returncode, "failed": fails[:30],
                                              "summary": [l for l in p.stdout.splitlines()
                                                          if "PASSED" in l or "tests from" in l][-3:]}
                    with open(os.path.join(out, f"{test}.log"), "w") as f:
                        f.write(p.stdout[-200000:] + p.stderr[-20000:])
                except subprocess.TimeoutExpired:
                    results[f"gpu_{test}"] = {"error": "timeout"}
                save()
    results["elapsed_s"] = round(time.time() - start, 1)
    save()
    log("done in", results["elapsed_s"], "s")
    print(json.dumps(results, indent=1)[-8000:])


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("tiny")
    p.add_argument("out_dir")
    p.add_argument("--only", nargs="*", help="architectures to (re)write")
    p = sub.add_parser("real32")
    p.add_argument("work_dir")
    p.add_argument("--names", nargs="*", default=list(REAL32_NAMES[:2]),
                   choices=REAL32_NAMES)
    p = sub.add_parser("gpucheck")
    p.add_argument("out")
    p.add_argument("--budget", type=float, default=540.0)
    p = sub.add_parser("real")
    p.add_argument("work_dir")
    p = sub.add_parser("bench")
    p.add_argument("work_dir")
    p.add_argument("--name", required=True, choices=sorted(REAL))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--batch-prompt-len", type=int, default=128)
    p = sub.add_parser("all")
    p.add_argument("out")
    p.add_argument("--budget", type=float, default=360.0,
                   help="seconds; later stages are skipped when short")
    a = ap.parse_args()
    if a.cmd == "tiny":
        print(json.dumps(cmd_tiny(a.out_dir, a.only), indent=1))
    elif a.cmd == "real32":
        print(json.dumps(cmd_real32(a.work_dir, a.names), indent=1))
    elif a.cmd == "gpucheck":
        cmd_gpucheck(a.out, a.budget)
    elif a.cmd == "real":
        print(json.dumps(cmd_real(a.work_dir), indent=1))
    elif a.cmd == "bench":
        print(json.dumps(cmd_bench(a.work_dir, a.name, a.device, a.dtype,
                                   a.prompt_len, a.new_tokens, a.iters, a.batch,
                                   a.batch_prompt_len)))
    else:
        cmd_all(a.out, a.budget)


if __name__ == "__main__":
    sys.exit(main())
