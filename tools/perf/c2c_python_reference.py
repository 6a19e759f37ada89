#!/usr/bin/env python3
"""The Python reference flow of one C2C answer, timed per stage.

What ../shared/reference/performance-anchors.md measures ("Python reference:
Hugging Face transformers + the C2C projector, in one process"), as one
script, so that scripts/gpu_e2e_bench.sh can run it beside kvwire's C++
services in the same run on the same card:

  * HF transformers Qwen3ForCausalLM with Qwen3-0.6B's shapes (receiver) and
    Qwen2ForCausalLM with Qwen2.5-0.5B's shapes (sharer), random weights,
    bf16, attn_implementation="eager", batch 1 (the shapes are those of
    kvwire-make-checkpoint's presets qwen3-0.6b / qwen2.5-0.5b);
  * 28 C2C projectors with the released fuser's dimensions (2x64 -> 8x128,
    hidden 1024, intermediate 1024, 3 layers, bf16; kvwire-make-fuser
    --preset=qwen3-0.6b+qwen2.5-0.5b), the PyTorch implementation of
    tools/gen_fuser_goldens.py (written from c2c-spec §2), random weights;
  * a prompt of --prompt-tokens (118) random token ids.

The flow (c2c-spec §1.4-1.5, the default include_response=False mode):
  1. receiver prefill of the first L-1 prompt tokens (HF DynamicCache);
  2. sharer prefill of the same L-1 tokens;
  3. fusion: each receiver layer t is replaced in place by
     projector_t(sharer layer G(t), receiver layer t), G = last_aligned
     (t -> clamp(S - T + t, 0, S-1) = max(0, t-4) for 28 <- 24 layers);
  4. first token: the receiver runs the last prompt token over the fused
     cache; greedy argmax of its logits is generated token 1;
  5. decode: greedy, tokens 2..N (N = --new-tokens, 10) in N-1 receiver
     steps; no EOS stop.
Stage 5 is what kvwire's StageTimings.generation_seconds covers (first token
sampled -> last token sampled), so "ms per decode token" = stage 5 / (N-1)
on both sides.

Timings: torch.cuda.synchronize() before and after every stage (the
per-stage breakdown) and, separately, the whole answer with a synchronize
only before and after it ("answer, no stage syncs"; the number the ratio
uses, since it is the smaller of the two). --warmup runs (3) then --runs
timed runs (15) of each; median / min / max are reported. Also timed:
"receiver alone, HF generate N tokens" on the whole L-token prompt, as in
the anchor.

Prefill forwards ask HF for the last position's logits only (logits_to_keep
= 1, as HF generate does), which favours Python over C2C's own wrapper
(full logits); --full-prefill-logits turns that off.

Prints a table and one JSON object (also written to --json). --tiny with
--device=cpu runs the same code on small shapes (any machine with torch and
transformers), to test this script.

Needs torch, transformers (>= 4.51, for Qwen3; run with 5.17.0 and torch 2.11 on
an H200; the 4.x fallbacks are untested) and
tools/gen_fuser_goldens.py beside tools/perf/.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tools/, for gen_fuser_goldens
from gen_fuser_goldens import RefC2CProjector, last_aligned  # noqa: E402

# --------------------------------------------------------------------------
# Shapes. These equal common/model/model_config.cc's PresetModelConfig
# ("qwen3-0.6b", "qwen2.5-0.5b": MakeModelConfig defaults give Qwen2 q/k/v
# bias, Qwen3 q/k norm, rope theta 1e6, rms eps 1e-6) and
# common/fuser/fuser_config.cc's ReleasedQwen3Qwen25Args().

RECEIVER = dict(  # Qwen3-0.6B
    cls="Qwen3ForCausalLM", config_cls="Qwen3Config", rope_theta=1000000.0,
    kwargs=dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                num_hidden_layers=28, num_attention_heads=16,
                num_key_value_heads=8, head_dim=128,
                max_position_embeddings=40960, rms_norm_eps=1e-6,
                tie_word_embeddings=True, attention_bias=False,
                use_sliding_window=False, bos_token_id=151643,
                eos_token_id=[151645, 151643]))
SHARER = dict(  # Qwen2.5-0.5B
    cls="Qwen2ForCausalLM", config_cls="Qwen2Config", rope_theta=1000000.0,
    kwargs=dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, max_position_embeddings=32768,
                rms_norm_eps=1e-6, tie_word_embeddings=True,
                use_sliding_window=False, bos_token_id=151643,
                eos_token_id=[151645, 151643]))
FUSER = dict(source_dim=64, target_dim=128, source_num_heads=2,
             target_num_heads=8, hidden_dim=1024, intermediate_dim=1024,
             num_layers=3)

# --tiny: the same structure at toy sizes (any device).
TINY_RECEIVER = dict(RECEIVER, kwargs=dict(
    RECEIVER["kwargs"], vocab_size=512, hidden_size=64, intermediate_size=128,
    num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, max_position_embeddings=4096, bos_token_id=1,
    eos_token_id=[510, 511]))
TINY_SHARER = dict(SHARER, kwargs=dict(
    SHARER["kwargs"], vocab_size=512, hidden_size=48, intermediate_size=96,
    num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=1,
    max_position_embeddings=4096, bos_token_id=1, eos_token_id=[510, 511]))
TINY_FUSER = dict(source_dim=16, target_dim=32, source_num_heads=1,
                  target_num_heads=2, hidden_dim=32, intermediate_dim=48,
                  num_layers=3)


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# transformers 4.x / 5.x differences.

def make_config(t, spec):
    """transformers 5 `rope_parameters`, else the 4.x rope_theta keyword."""
    cls = getattr(t, spec["config_cls"])
    kwargs = dict(spec["kwargs"])
    try:
        config = cls(rope_parameters={"rope_type": "default",
                                      "rope_theta": spec["rope_theta"]}, **kwargs)
    except TypeError:
        config = None
    if config is None or getattr(config, "rope_theta", None) not in (
            None, spec["rope_theta"]):
        config = cls(rope_theta=spec["rope_theta"], **kwargs)
    return config


def build_model(t, spec, device, seed):
    """Random-init model (HF's own init, std = initializer_range), bf16,
    eager attention, eval mode, on `device`."""
    config = make_config(t, spec)
    cls = getattr(t, spec["cls"])
    torch.manual_seed(seed)
    with torch.device(device):
        try:
            model = cls._from_config(config, attn_implementation="eager")
        except TypeError:
            config._attn_implementation = "eager"
            model = cls(config)
    model = model.to(torch.bfloat16).eval()
    attn = str(getattr(model.config, "_attn_implementation", ""))
    if attn != "eager":  # Older releases: set it on the config afterwards.
        try:
            model.config._attn_implementation = "eager"
            for m in model.modules():
                if hasattr(m, "config") and m.config is not model.config:
                    m.config._attn_implementation = "eager"
        except Exception:  # noqa: BLE001
            pass
        attn = str(getattr(model.config, "_attn_implementation", ""))
    # No EOS stop anywhere (HF generate reads generation_config).
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = 0
    return model, attn


def cache_kv(cache, layer):
    """The K and V tensors of one layer of an HF cache (5.x: .layers[i].keys;
    4.4x: .key_cache[i]; legacy tuples), as the tensors the cache holds, so
    that writing into them changes the cache."""
    if hasattr(cache, "layers"):
        entry = cache.layers[layer]
        return entry.keys, entry.values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[layer], cache.value_cache[layer]
    return cache[layer][0], cache[layer][1]


def forward(model, ids, cache=None, full_logits=False):
    """model(ids) with use_cache, asking for the last position's logits only
    unless full_logits (logits_to_keep in 5.x / >= 4.50, num_logits_to_keep
    before)."""
    kwargs = dict(input_ids=ids, use_cache=True)
    if cache is not None:
        kwargs["past_key_values"] = cache
    if not full_logits:
        for name in ("logits_to_keep", "num_logits_to_keep"):
            try:
                return model(**kwargs, **{name: 1})
            except TypeError:
                continue
    return model(**kwargs)


# --------------------------------------------------------------------------

def make_projectors(args, n, device, seed):
    """n projectors, random like gen_fuser_goldens.py --real (torch Linear
    init bounds, RMSNorm 1 +- 0.1, open key gates, one closed value gate)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    projs = []
    for i in range(n):
        with torch.device(device):
            p = RefC2CProjector(**args)
        with torch.no_grad():
            for name, t in p.named_parameters():
                if name.endswith("norm.weight"):
                    t.copy_(1 + (torch.rand(t.shape, generator=gen, device=device) * 2 - 1) * 0.1)
                elif name.endswith(".weight"):
                    t.copy_((torch.rand(t.shape, generator=gen, device=device) * 2 - 1)
                            / t.shape[1] ** 0.5)
                elif name.endswith(".bias"):
                    t.copy_((torch.rand(t.shape, generator=gen, device=device) * 2 - 1) / 32.0)
            p.key_gate_logit.fill_(1.0)
            p.value_gate_logit.fill_(-1.0 if i == n - 1 else 1.0)
        projs.append(p.to(torch.bfloat16).eval())
    return projs


class Flow:
    def __init__(self, receiver, sharer, projs, layer_map, prompt, new_tokens,
                 device, full_logits):
        self.receiver, self.sharer, self.projs = receiver, sharer, projs
        self.layer_map = layer_map  # receiver layer t -> sharer layer
        self.prompt = prompt        # [1, L] on device
        self.new_tokens = new_tokens
        self.device = device
        self.full_logits = full_logits

    def sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    # The stages; each returns what the next needs.
    def receiver_prefill(self):
        return forward(self.receiver, self.prompt[:, :-1],
                       full_logits=self.full_logits).past_key_values

    def sharer_prefill(self):
        return forward(self.sharer, self.prompt[:, :-1],
                       full_logits=self.full_logits).past_key_values

    def fuse(self, rcache, scache):
        """c2c-spec §1.4 2b, sequential mode: every receiver layer in place."""
        n = self.prompt.shape[1] - 1
        for t, s in enumerate(self.layer_map):
            rk, rv = cache_kv(rcache, t)
            sk, sv = cache_kv(scache, s)
            k, v = self.projs[t](sk[:, :, 0:n, :], sv[:, :, 0:n, :],
                                 rk[:, :, 0:n, :], rv[:, :, 0:n, :])
            rk[:, :, 0:n, :] = k
            rv[:, :, 0:n, :] = v

    def first_token(self, rcache):
        out = self.receiver(input_ids=self.prompt[:, -1:], past_key_values=rcache,
                            use_cache=True)
        return out.logits[:, -1, :].argmax(-1, keepdim=True), out.past_key_values

    def decode(self, token, rcache):
        tokens = [token]
        for _ in range(self.new_tokens - 1):
            out = self.receiver(input_ids=tokens[-1], past_key_values=rcache,
                                use_cache=True)
            rcache = out.past_key_values
            tokens.append(out.logits[:, -1, :].argmax(-1, keepdim=True))
        return torch.cat(tokens, dim=1)

    def answer_staged(self):
        """One answer with a synchronize around every stage: (ms per stage,
        generated ids)."""
        marks = []

        def mark():
            self.sync()
            marks.append(time.perf_counter())

        mark()
        rcache = self.receiver_prefill()
        mark()
        scache = self.sharer_prefill()
        mark()
        self.fuse(rcache, scache)
        mark()
        token, rcache = self.first_token(rcache)
        mark()
        ids = self.decode(token, rcache)
        mark()
        d = [(b - a) * 1e3 for a, b in zip(marks, marks[1:])]
        stages = {"receiver_prefill": d[0], "sharer_prefill": d[1], "fuse": d[2],
                  "first_token": d[3], "decode": d[4]}
        stages["prefill_both_plus_fuse"] = d[0] + d[1] + d[2]
        stages["time_to_first_token"] = d[0] + d[1] + d[2] + d[3]
        stages["decode_ms_per_token"] = (d[4] / (self.new_tokens - 1)
                                         if self.new_tokens > 1 else 0.0)
        stages["answer_staged"] = (marks[-1] - marks[0]) * 1e3
        return stages, ids

    def answer(self):
        """One answer, synchronized only around the whole of it."""
        self.sync()
        a = time.perf_counter()
        rcache = self.receiver_prefill()
        scache = self.sharer_prefill()
        self.fuse(rcache, scache)
        token, rcache = self.first_token(rcache)
        ids = self.decode(token, rcache)
        self.sync()
        return (time.perf_counter() - a) * 1e3, ids

    def hf_generate_receiver_alone(self):
        self.sync()
        a = time.perf_counter()
        out = self.receiver.generate(
            self.prompt, attention_mask=torch.ones_like(self.prompt),
            max_new_tokens=self.new_tokens, do_sample=False, pad_token_id=0)
        self.sync()
        return (time.perf_counter() - a) * 1e3, out[:, self.prompt.shape[1]:]


def summary(values):
    return {"median": statistics.median(values), "min": min(values),
            "max": max(values), "runs": [round(v, 3) for v in values]}


def run(a):
    import transformers as t
    device = a.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available (use --device=cpu --tiny to test)")
    rspec, sspec, fargs = ((TINY_RECEIVER, TINY_SHARER, TINY_FUSER) if a.tiny
                           else (RECEIVER, SHARER, FUSER))
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    receiver, r_attn = build_model(t, rspec, device, seed=1)
    sharer, s_attn = build_model(t, sspec, device, seed=2)
    t_layers = rspec["kwargs"]["num_hidden_layers"]
    s_layers = sspec["kwargs"]["num_hidden_layers"]
    layer_map = last_aligned(t_layers, s_layers)
    projs = make_projectors(fargs, t_layers, device, seed=3)
    log(f"models and {t_layers} projectors built in {time.time() - t0:.1f} s; "
        f"attention: receiver {r_attn}, sharer {s_attn}; layer map {layer_map}")
    # Shape checks: the projectors must match the two caches.
    rk = rspec["kwargs"]
    sk = sspec["kwargs"]
    s_head_dim = sk.get("head_dim") or sk["hidden_size"] // sk["num_attention_heads"]
    assert (fargs["target_num_heads"], fargs["target_dim"]) == (
        rk["num_key_value_heads"], rk["head_dim"]), "receiver KV shape != fuser"
    assert (fargs["source_num_heads"], fargs["source_dim"]) == (
        sk["num_key_value_heads"], s_head_dim), "sharer KV shape != fuser"

    vocab = min(rk["vocab_size"], sk["vocab_size"])
    # Random ids below the special tokens (151643+ for Qwen).
    hi = min(vocab, 151643)
    g = torch.Generator().manual_seed(a.seed)
    prompt = torch.randint(0, hi, (1, a.prompt_tokens), generator=g).to(device)
    flow = Flow(receiver, sharer, projs, layer_map, prompt, a.new_tokens, device,
                a.full_prefill_logits)

    res = {
        "what": "Python reference C2C flow (HF transformers + PyTorch projectors, eager)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "host": platform.node(),
        "device": (torch.cuda.get_device_name(torch.device(device))
                   if device.startswith("cuda") else device),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": t.__version__, "tiny": a.tiny,
        "dtype": "bfloat16",
        "attn_implementation": {"receiver": r_attn, "sharer": s_attn},
        "receiver": rspec["cls"], "sharer": sspec["cls"],
        "receiver_layers": t_layers, "sharer_layers": s_layers,
        "projectors": len(projs), "fuser_args": fargs,
        "params": {"receiver": sum(p.numel() for p in receiver.parameters()),
                   "sharer": sum(p.numel() for p in sharer.parameters()),
                   "projectors": sum(p.numel() for pr in projs for p in pr.parameters())},
        "layer_map": layer_map,
        "prompt_tokens": a.prompt_tokens, "prefill_tokens": a.prompt_tokens - 1,
        "new_tokens": a.new_tokens, "decode_steps": a.new_tokens - 1,
        "prefill_logits": "all" if a.full_prefill_logits else "last",
        "warmup": a.warmup, "runs": a.runs, "seed": a.seed,
        "units": "ms",
    }

    with torch.inference_mode():
        # Check once that fusion changes the cache (open gates) and that the
        # answer is exactly new_tokens long; also the answer's ids.
        rcache = flow.receiver_prefill()
        scache = flow.sharer_prefill()
        before = cache_kv(rcache, 0)[0].clone()
        flow.fuse(rcache, scache)
        res["fusion_changed_layer0_keys"] = not torch.equal(before, cache_kv(rcache, 0)[0])
        del rcache, scache, before

        staged, totals, gen = [], [], []
        ids = None
        for r in range(a.warmup + a.runs):
            st, ids = flow.answer_staged()
            if r >= a.warmup:
                staged.append(st)
        for r in range(a.warmup + a.runs):
            ms, ids2 = flow.answer()
            if r >= a.warmup:
                totals.append(ms)
        for r in range(a.warmup + a.runs):
            ms, gen_ids = flow.hf_generate_receiver_alone()
            if r >= a.warmup:
                gen.append(ms)
    # Both must be exactly new_tokens long (EOS is off).
    res["generated_tokens"] = int(ids.shape[1])
    res["hf_generate_tokens"] = int(gen_ids.shape[1])
    if ids.shape[1] != a.new_tokens or gen_ids.shape[1] != a.new_tokens:
        log(f"WARNING: generated {ids.shape[1]} / {gen_ids.shape[1]} tokens, "
            f"not {a.new_tokens}")
    res["generated_ids"] = ids[0].tolist()
    res["generated_ids_deterministic"] = torch.equal(ids, ids2)
    res["hf_generate_ids"] = gen_ids[0].tolist()
    res["stages"] = {k: summary([s[k] for s in staged]) for k in staged[0]}
    res["answer"] = summary(totals)
    res["hf_generate_receiver_alone"] = summary(gen)
    if device.startswith("cuda"):
        res["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return res


ROWS = [  # (label, key in stages, or a top-level key)
    ("C2C answer (no stage syncs)", "answer"),
    ("C2C answer (synced per stage)", "answer_staged"),
    ("  receiver prefill (L-1)", "receiver_prefill"),
    ("  sharer prefill (L-1)", "sharer_prefill"),
    ("  fusion, all layers", "fuse"),
    ("  first token (last prompt token)", "first_token"),
    ("  decode (tokens 2..N)", "decode"),
    ("  ms per decode token", "decode_ms_per_token"),
    ("prefill both + fusion", "prefill_both_plus_fuse"),
    ("time to first token", "time_to_first_token"),
    ("receiver alone, HF generate", "hf_generate_receiver_alone"),
]


def table(res):
    lines = [f"Python reference on {res['device']} (torch {res['torch']}, "
             f"transformers {res['transformers']}, bf16, eager, "
             f"{res['prompt_tokens']}-token prompt, {res['new_tokens']} tokens, "
             f"{res['runs']} runs after {res['warmup']} warm-up), ms:",
             f"{'stage':<36} {'median':>9} {'min':>9} {'max':>9}"]
    for label, key in ROWS:
        s = res.get(key) or res["stages"].get(key)
        lines.append(f"{label:<36} {s['median']:9.2f} {s['min']:9.2f} {s['max']:9.2f}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true",
                    help="toy shapes (to test the script, e.g. with --device=cpu)")
    ap.add_argument("--prompt-tokens", type=int, default=118)
    ap.add_argument("--new-tokens", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0, help="prompt ids")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--full-prefill-logits", action="store_true",
                    help="prefills compute logits at every position (as C2C's wrapper)")
    ap.add_argument("--json", help="also write the JSON here")
    a = ap.parse_args()
    if a.prompt_tokens < 2 or a.new_tokens < 1 or a.runs < 1 or a.warmup < 0:
        ap.error("need --prompt-tokens >= 2, --new-tokens >= 1, --runs >= 1")
    res = run(a)
    print(table(res))
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
