#!/usr/bin/env python3
"""Reference run of C2C's inference flow for kvwire's in-process pipeline
(common/engine/), written on the GPU host (torch 2.x, transformers 5.x; no
network needed; runs on the CPU in fp32):

    python3 tools/gen_pipeline_goldens.py --out tests/data/pipeline --json report.json

(the committed goldens were written by this script, with torch 2.11.0+cu130 and
transformers 5.17.0 on the GPU host; the run takes ~20 s).

Builds, with transformers and random weights:
  receiver/  a tiny Qwen3ForCausalLM (4 layers, 2 KV heads x 16), save_pretrained
  sharer/    a tiny Qwen2ForCausalLM (3 layers, 2 KV heads x 8), same vocabulary
  fuser/     4 C2C projectors in the released layout (config.json,
             final/projector_{i}.pt + .json, projector_config.json with the
             last_aligned map 0,0,1,2), from tools/gen_fuser_goldens.py's
             independent reference projector (RefC2CProjector), fp32
and runs C2C's flow (c2c-spec §1.4, §8) in fp32:
  1. both models prefill the first L-1 prompt ids (same ids, same positions);
  2. every receiver layer t is fused in place from sharer layer map(t):
     K_t, V_t <- projector_t((K_s, V_s), (K_t, V_t)) over those positions;
  3. the receiver alone runs the last prompt token over the fused cache and
     decodes greedily (no fusion of decoded tokens, no EOS stop).

Variants, each with its greedy tokens, top-1/top-2 margins, first-token
logits and every fused receiver layer:
  exact       the sharer's fp32 KV as is (kvwire's codec-free direct path);
  bf16        the sharer's KV rounded to bf16 first (what a SCHEME_BF16
              passthrough transfer delivers: fp32 -> bf16 round-to-nearest-
              even -> fp32);
  sparse_bf16 as bf16, but only the positions in `sparse_positions` are fused
              (gather, project, scatter); the others keep the receiver's own KV;
  skip_bf16   as bf16, but sharer layer 1 never arrives: receiver layer 2
              (which reads it) keeps its own KV.
Plus the receiver alone and the sharer alone on the whole prompt (greedy).

Output: OUT/{receiver,sharer,fuser}/ and OUT/goldens.safetensors (fp32 /
int64 tensors, names listed in the C++ test tests/common/engine/
golden_test.cc), and a JSON report (stdout and --json).

Seeds are searched until every greedy path has a top-1/top-2 logit margin of
at least MIN_MARGIN at every step (so fp32 rounding differences between
implementations cannot flip a token) and fusion changes the receiver's answer.
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fuser_goldens as gfg  # noqa: E402  (reference projector)
import gen_model_goldens as gmg  # noqa: E402  (configs, randomize_, cache_kv)

VOCAB = 256
PROMPT_LEN = 16          # L: the first L-1 = 15 positions are fused.
NEW_TOKENS = 10
MIN_MARGIN = 2e-3
SPARSE_POSITIONS = [0, 2, 3, 7, 8, 12, 14]
SKIPPED_SHARER_LAYER = 1  # skip_bf16: receiver layer 2 stays unfused.
VARIANTS = ("exact", "bf16", "sparse_bf16", "skip_bf16")
PROJ_ARGS = dict(source_dim=8, target_dim=16, source_num_heads=2, target_num_heads=2,
                 hidden_dim=16, intermediate_dim=16, num_layers=3)
RECEIVER_LAYERS, SHARER_LAYERS = 4, 3
# (key, value) gate logits per projector; projector 2's key gate is closed.
GATES = [(0.9, 1.1), (0.6, 0.8), (-1.0, 1.3), (1.2, 0.7)]


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def build_models(seed):
    t = gmg.transformers_module()
    rope = {"rope_type": "default", "rope_theta": 1000000.0}
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                  num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, use_sliding_window=False,
                  bos_token_id=1)
    rcfg = gmg.make_config(t.Qwen3Config, rope, num_hidden_layers=RECEIVER_LAYERS,
                           head_dim=16, attention_bias=False,
                           eos_token_id=[254, 255], **common)
    scfg = gmg.make_config(t.Qwen2Config, rope, num_hidden_layers=SHARER_LAYERS,
                           eos_token_id=255, **common)
    torch.manual_seed(seed)
    receiver = t.Qwen3ForCausalLM(rcfg).float().eval()
    sharer = t.Qwen2ForCausalLM(scfg).float().eval()
    gmg.randomize_(receiver, 2 * seed, std=0.2)
    gmg.randomize_(sharer, 2 * seed + 1, std=0.2)
    return receiver, sharer


def build_projectors(seed):
    gen = torch.Generator().manual_seed(seed)
    projs = [gfg.init_projector(gfg.RefC2CProjector(**PROJ_ARGS), gen, *GATES[i]).float().eval()
             for i in range(RECEIVER_LAYERS)]
    lmap = {t: (s, t) for t, s in enumerate(gfg.last_aligned(RECEIVER_LAYERS, SHARER_LAYERS))}
    return projs, lmap


def prefill(model, ids):
    out = model(input_ids=ids, use_cache=True)
    return out.past_key_values, out.logits[0, -1]


def greedy_from(model, cache, logits, n):
    """Greedy continuation: `logits` are those of the last fed token."""
    tokens, margins = [], []
    for step in range(n):
        top = torch.topk(logits.float(), 2)
        tok = int(top.indices[0])
        tokens.append(tok)
        margins.append(float(top.values[0] - top.values[1]))
        if step + 1 == n:
            break
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[0, -1]
    return tokens, margins


def c2c_variant(receiver, sharer, projs, lmap, ids, round_bf16, positions, skip=()):
    """C2C's flow; returns tokens, margins, first logits, fused K/V per layer.
    Receiver layers reading a sharer layer in `skip` are not fused (the layer
    never arrived)."""
    prefix = ids[:, :-1]
    rcache, _ = prefill(receiver, prefix)
    scache, _ = prefill(sharer, prefix)
    fused = {}
    for t in range(RECEIVER_LAYERS):
        s, i = lmap[t]
        rk, rv = gmg.cache_kv(rcache, t)
        if s in skip:
            fused[t] = (rk[0].clone(), rv[0].clone())
            continue
        sk, sv = gmg.cache_kv(scache, s)
        if round_bf16:
            sk = sk.to(torch.bfloat16).float()
            sv = sv.to(torch.bfloat16).float()
        if positions is None:
            fk, fv = projs[i](sk, sv, rk, rv)
        else:
            idx = torch.tensor(positions, dtype=torch.long)
            pk, pv = projs[i](sk.index_select(2, idx), sv.index_select(2, idx),
                              rk.index_select(2, idx), rv.index_select(2, idx))
            fk, fv = rk.clone(), rv.clone()
            fk[:, :, idx] = pk
            fv[:, :, idx] = pv
        # In place, as RosettaModel writes into the DynamicCache.
        rk.copy_(fk)
        rv.copy_(fv)
        ck, cv = gmg.cache_kv(rcache, t)
        assert torch.equal(ck, fk) and torch.equal(cv, fv), "in-place fusion did not stick"
        fused[t] = (fk[0].clone(), fv[0].clone())
    out = receiver(input_ids=ids[:, -1:], past_key_values=rcache, use_cache=True)
    first_logits = out.logits[0, -1].float().clone()
    tokens, margins = greedy_from(receiver, out.past_key_values, out.logits[0, -1], NEW_TOKENS)
    return tokens, margins, first_logits, fused


def alone(model, ids):
    cache, logits = prefill(model, ids)
    return greedy_from(model, cache, logits, NEW_TOKENS)


def attempt(seed):
    receiver, sharer = build_models(seed)
    projs, lmap = build_projectors(1000 + seed)
    ids = torch.tensor([[(i * 37 + 11 + 5 * seed) % (VOCAB - 8) + 2 for i in range(PROMPT_LEN)]])
    res = {"seed": seed, "ids": ids}
    with torch.no_grad():
        res["receiver_only"] = alone(receiver, ids)
        res["sharer_only"] = alone(sharer, ids)
        # The receiver's own (unfused) prefix KV and the sharer's.
        rcache, _ = prefill(receiver, ids[:, :-1])
        scache, _ = prefill(sharer, ids[:, :-1])
        res["own"] = {t: tuple(x[0].clone() for x in gmg.cache_kv(rcache, t))
                      for t in range(RECEIVER_LAYERS)}
        res["sharer_kv"] = {s: tuple(x[0].clone() for x in gmg.cache_kv(scache, s))
                            for s in range(SHARER_LAYERS)}
        res["exact"] = c2c_variant(receiver, sharer, projs, lmap, ids, False, None)
        res["bf16"] = c2c_variant(receiver, sharer, projs, lmap, ids, True, None)
        res["sparse_bf16"] = c2c_variant(receiver, sharer, projs, lmap, ids, True,
                                         SPARSE_POSITIONS)
        res["skip_bf16"] = c2c_variant(receiver, sharer, projs, lmap, ids, True, None,
                                       skip=(SKIPPED_SHARER_LAYER,))
    margins = (res["receiver_only"][1] + res["sharer_only"][1] + res["exact"][1] +
               res["bf16"][1] + res["sparse_bf16"][1] + res["skip_bf16"][1])
    res["min_margin"] = min(margins)
    res["fusion_changes_answer"] = res["bf16"][0] != res["receiver_only"][0]
    res["sparse_differs"] = res["sparse_bf16"][0] != res["bf16"][0]
    res["models"] = (receiver, sharer, projs, lmap)
    return res


def save(res, out_dir):
    from safetensors.torch import save_file
    receiver, sharer, projs, lmap = res["models"]
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    for name, model in (("receiver", receiver), ("sharer", sharer)):
        d = os.path.join(out_dir, name)
        model.float().save_pretrained(d)
        if not os.path.exists(os.path.join(d, "generation_config.json")):
            model.generation_config.save_pretrained(d)
    gfg.save_checkpoint(os.path.join(out_dir, "fuser"), projs, PROJ_ARGS, "float32", lmap,
                        "last_aligned")

    def ids_tensor(x):
        return torch.tensor(x, dtype=torch.int64)

    tensors = {
        "input_ids": res["ids"][0].to(torch.int64).clone(),
        "receiver_only_tokens": ids_tensor(res["receiver_only"][0]),
        "sharer_only_tokens": ids_tensor(res["sharer_only"][0]),
        "sparse_positions": ids_tensor(SPARSE_POSITIONS),
    }
    for t, (k, v) in res["own"].items():
        tensors[f"own_k.{t}"], tensors[f"own_v.{t}"] = k, v
    for s, (k, v) in res["sharer_kv"].items():
        tensors[f"sharer_k.{s}"], tensors[f"sharer_v.{s}"] = k, v
    for variant in VARIANTS:
        tokens, margins, first_logits, fused = res[variant]
        tensors[f"tokens.{variant}"] = ids_tensor(tokens)
        tensors[f"margins.{variant}"] = torch.tensor(margins, dtype=torch.float32)
        tensors[f"first_logits.{variant}"] = first_logits
        for t, (k, v) in fused.items():
            tensors[f"fused_k.{variant}.{t}"] = k
            tensors[f"fused_v.{variant}.{t}"] = v
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    t = gmg.transformers_module()
    meta = {"seed": str(res["seed"]), "transformers": t.__version__,
            "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "min_greedy_margin": f"{res['min_margin']:.6g}",
            "attn_implementation": str(getattr(receiver.config, "_attn_implementation", ""))}
    save_file(tensors, os.path.join(out_dir, "goldens.safetensors"), metadata=meta)


def reload_check(out_dir, res):
    """The saved models reproduce the in-memory ones (receiver-only path)."""
    t = gmg.transformers_module()
    d = os.path.join(out_dir, "receiver")
    try:
        m = t.Qwen3ForCausalLM.from_pretrained(d, dtype=torch.float32)
    except TypeError:
        m = t.Qwen3ForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    with torch.no_grad():
        tokens, _ = alone(m.eval(), res["ids"])
    return tokens == res["receiver_only"][0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--json")
    ap.add_argument("--tries", type=int, default=40)
    a = ap.parse_args()
    torch.set_num_threads(4)
    report = {"torch": torch.__version__}
    try:
        report["transformers"] = gmg.transformers_module().__version__
        best, tried = None, []
        for seed in range(a.tries):
            res = attempt(seed)
            ok = res["min_margin"] >= MIN_MARGIN
            tried.append({"seed": seed, "min_margin": res["min_margin"],
                          "fusion_changes_answer": res["fusion_changes_answer"],
                          "sparse_differs": res["sparse_differs"]})
            log(tried[-1])
            score = (ok, res["fusion_changes_answer"], res["sparse_differs"], res["min_margin"])
            if best is None or score > best[0]:
                best = (score, res)
            if ok and res["fusion_changes_answer"] and res["sparse_differs"]:
                break
        res = best[1]
        save(res, a.out)
        report.update({
            "seed": res["seed"], "min_margin": res["min_margin"],
            "margin_ok": res["min_margin"] >= MIN_MARGIN,
            "fusion_changes_answer": res["fusion_changes_answer"],
            "sparse_differs": res["sparse_differs"],
            "input_ids": res["ids"][0].tolist(),
            "receiver_only": res["receiver_only"][0], "sharer_only": res["sharer_only"][0],
            "exact": res["exact"][0], "bf16": res["bf16"][0],
            "sparse_bf16": res["sparse_bf16"][0], "skip_bf16": res["skip_bf16"][0],
            "max_abs_fused_bf16_vs_exact": max(
                float((res["bf16"][3][t][j] - res["exact"][3][t][j]).abs().max())
                for t in range(RECEIVER_LAYERS) for j in (0, 1)),
            "tries": tried,
        })
        try:
            report["reload_matches"] = reload_check(a.out, res)
        except Exception:
            report["reload_error"] = traceback.format_exc()
        sizes = {}
        for root, _, files in os.walk(a.out):
            for f in files:
                p = os.path.join(root, f)
                sizes[os.path.relpath(p, a.out)] = os.path.getsize(p)
        report["files"] = sizes
        report["bytes_total"] = sum(sizes.values())
    except Exception:
        report["error"] = traceback.format_exc()
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
