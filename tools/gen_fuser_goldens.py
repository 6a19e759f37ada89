#!/usr/bin/env python3
"""Reference outputs for kvwire's C2C fuser (common/fuser/).

An independent PyTorch implementation of C2C's C2CProjector, written from the
formula in c2c-spec §2 (not from the rosetta code), saved with torch.save in
the released checkpoint layout (c2c-spec §3).

Modes (combine freely):

  --tiny OUT_DIR      small goldens for the C++ tests (tests/data/fuser/):
                      two checkpoints (fp32 and bf16), their inputs and fused
                      K/V outputs (dense, sparse, batched), a legacy-format
                      file and a shared-storage / strided file.
  --real WORK_DIR     the released fuser's shapes on the GPU (28 projectors,
                      2x64 -> 8x128, hidden 1024, 3 layers, bf16): writes a
                      random checkpoint and io.pt (inputs + reference fused
                      K/V for a --tokens-token prompt) for kvwire-fuser-bench,
                      and times the Python reference fusing all 28 layers.
  --check-cpp DIR IO  loads a checkpoint and io file written by the C++ tools
                      (kvwire-make-fuser, kvwire-fuser-bench --write_io) with
                      torch.load(weights_only=True) and compares the C++
                      outputs with this reference.

Prints one JSON object (also written to --json if given).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn


# --------------------------------------------------------------------------
# The reference projector, from the spec's formula.

class _RMSNorm(nn.Module):
    """nn.RMSNorm for torch < 2.4 (torch's composite formula)."""

    def __init__(self, hidden, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


RMSNorm = getattr(nn, "RMSNorm", _RMSNorm)


class FFNBlock(nn.Module):
    """y = x + W2(GELU(W1(RMSNorm(x)))), bias-free linears, exact GELU."""

    def __init__(self, hidden, inter):
        super().__init__()
        self.norm = RMSNorm(hidden, eps=1e-6)
        self.w1 = nn.Linear(hidden, inter, bias=False)
        self.w2 = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return x + self.w2(nn.functional.gelu(self.w1(self.norm(x))))


class Blocks(nn.Module):
    def __init__(self, hidden, inter, n):
        super().__init__()
        self.blocks = nn.ModuleList([FFNBlock(hidden, inter) for _ in range(n)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class RefC2CProjector(nn.Module):
    def __init__(self, source_dim, target_dim, source_num_heads, target_num_heads,
                 hidden_dim, intermediate_dim, num_layers, **unused):
        super().__init__()
        assert num_layers >= 3
        self.hs, self.ds = source_num_heads, source_dim
        self.ht, self.dt = target_num_heads, target_dim
        in_dim, out_dim, h = self.hs * self.ds, self.ht * self.dt, hidden_dim
        # Registration order = the released state_dict's order.
        self.key_gate_logit = nn.Parameter(torch.tensor(0.0))
        self.value_gate_logit = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("gate_temperature", torch.tensor(0.001))
        self.key_in = nn.Linear(in_dim + out_dim, h)
        self.value_in = nn.Linear(in_dim + out_dim, h)
        self.key_mlp1 = Blocks(h, intermediate_dim, 1)
        self.value_mlp1 = Blocks(h, intermediate_dim, 1)
        self.key_scalar_mlp2 = Blocks(h, h, 1)
        self.value_scalar_mlp2 = Blocks(h, h, 1)
        self.key_scalar_head = nn.Linear(h, self.ht)
        self.value_scalar_head = nn.Linear(h, self.ht)
        self.key_proj_mlp2 = Blocks(h, intermediate_dim, num_layers - 2)
        self.value_proj_mlp2 = Blocks(h, intermediate_dim, num_layers - 2)
        self.key_proj_out = nn.Linear(h, out_dim)
        self.value_proj_out = nn.Linear(h, out_dim)

    def path(self, x, src, tgt):
        """src (B, Hs, N, Ds), tgt (B, Ht, N, Dt) -> fp32 (B, Ht, N, Dt)."""
        b, _, n, _ = src.shape
        s = src.transpose(1, 2).reshape(b, n, self.hs * self.ds)
        r = tgt.transpose(1, 2).reshape(b, n, self.ht * self.dt)
        h = getattr(self, x + "_in")(torch.cat([s, r], dim=-1))
        h = getattr(self, x + "_mlp1")(h)
        p = getattr(self, x + "_proj_out")(getattr(self, x + "_proj_mlp2")(h))
        p = p.view(b, n, self.ht, self.dt).transpose(1, 2)
        w = getattr(self, x + "_scalar_head")(getattr(self, x + "_scalar_mlp2")(h))
        w = torch.sigmoid(w.permute(0, 2, 1).unsqueeze(-1))
        g = (getattr(self, x + "_gate_logit").view(1, 1, 1, 1) > 0).float()
        return tgt + g * w * p  # fp32: g is fp32

    def forward(self, sk, sv, rk, rv):
        """Fused K, V rounded once into the receiver's dtype."""
        return (self.path("key", sk, rk).to(rk.dtype),
                self.path("value", sv, rv).to(rv.dtype))


def init_projector(p, gen, key_logit, value_logit, norm_jitter=0.1):
    """torch's default Linear init (drawn from `gen`), RMSNorm 1 +- jitter."""
    with torch.no_grad():
        for name, t in p.named_parameters():
            if name.endswith("gate_logit"):
                continue
            if name.endswith("norm.weight"):
                t.copy_(1 + (torch.rand(t.shape, generator=gen) * 2 - 1) * norm_jitter)
            elif name.endswith(".weight"):
                bound = 1 / t.shape[1] ** 0.5
                t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) * bound)
            else:  # bias
                fan_in = dict(p.named_parameters())[name[:-4] + "weight"].shape[1]
                t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) / fan_in ** 0.5)
        p.key_gate_logit.fill_(key_logit)
        p.value_gate_logit.fill_(value_logit)
    return p


def projector_json(args, dtype_name):
    init = dict(args)
    init["dropout"] = 0.1
    init["initial_temperature"] = 1.0
    init["final_temperature"] = 0.001
    init["anneal_steps"] = 1929
    init["dtype"] = {"__type__": "torch.dtype", "value": dtype_name}
    return {"class": "C2CProjector", "init_args": init}


def last_aligned(t_layers, s_layers):
    return [min(max(s_layers - t_layers + t, 0), s_layers - 1) for t in range(t_layers)]


def save_checkpoint(root, projectors, args, dtype_name, layer_map, mapping):
    """The released layout; layer_map: {t: (s, projector)}."""
    final = os.path.join(root, "final")
    os.makedirs(final, exist_ok=True)
    recipe = {"model": {
        "base_model": "Qwen/Qwen3-0.6B",
        "teacher_model": "Qwen/Qwen2.5-0.5B-Instruct",
        "include_response": False, "is_do_alignment": False,
        "projector": {"type": "C2CProjector", "params": {
            "hidden_dim": args["hidden_dim"], "intermediate_dim": args["intermediate_dim"],
            "num_layers": args["num_layers"], "dropout": 0.1,
            "initial_temperature": 1.0, "final_temperature": 0.001,
            "anneal_steps": 1929}},
        "mapping": mapping},
        "training": {"seed": 42}}
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(recipe, f, indent=4)
    for i, p in enumerate(projectors):
        torch.save(p.state_dict(), os.path.join(final, f"projector_{i}.pt"))
        with open(os.path.join(final, f"projector_{i}.json"), "w") as f:
            json.dump(projector_json(args, dtype_name), f, indent=4)
    cfg = {"0": {"1": {str(t): [[s, i]] for t, (s, i) in sorted(layer_map.items())}}}
    with open(os.path.join(final, "projector_config.json"), "w") as f:
        json.dump(cfg, f)


def make_io(projectors, layer_map, s_layers, n, dtype, device, gen, positions=None,
            key_scale=2.0):
    """Inputs [1, H, N, D] and reference outputs in kvwire-fuser-bench's format."""
    p0 = projectors[0]
    io = {}
    for s in range(s_layers):
        io[f"sharer_k.{s}"] = (torch.randn(1, p0.hs, n, p0.ds, generator=gen) * key_scale).to(dtype)
        io[f"sharer_v.{s}"] = torch.randn(1, p0.hs, n, p0.ds, generator=gen).to(dtype)
    for t in sorted(layer_map):
        io[f"receiver_k.{t}"] = (torch.randn(1, p0.ht, n, p0.dt, generator=gen) * key_scale).to(dtype)
        io[f"receiver_v.{t}"] = torch.randn(1, p0.ht, n, p0.dt, generator=gen).to(dtype)
    with torch.inference_mode():
        for t, (s, i) in sorted(layer_map.items()):
            args = [io[k].to(device) for k in
                    (f"sharer_k.{s}", f"sharer_v.{s}", f"receiver_k.{t}", f"receiver_v.{t}")]
            k, v = projectors[i](*args)
            io[f"fused_k.{t}"], io[f"fused_v.{t}"] = k.cpu(), v.cpu()
            if positions is not None:
                idx = positions.to(device)
                sel = [a.index_select(2, idx) for a in args]
                k2, v2 = projectors[i](*sel)
                full_k, full_v = args[2].clone(), args[3].clone()
                full_k[:, :, idx] = k2
                full_v[:, :, idx] = v2
                io[f"sparse_k.{t}"], io[f"sparse_v.{t}"] = full_k.cpu(), full_v.cpu()
    if positions is not None:
        io["positions"] = positions.clone()
    # Plain (non-inference) CPU tensors for torch.save.
    return {k: v.detach().cpu().clone() for k, v in io.items()}


# --------------------------------------------------------------------------

def tiny(out_dir):
    report = {}
    torch.manual_seed(0)
    # fp32: 4 receiver layers <- 3 sharer layers, last_aligned; two closed gates.
    args = dict(source_dim=8, target_dim=16, source_num_heads=2, target_num_heads=4,
                hidden_dim=16, intermediate_dim=24, num_layers=3)
    gen = torch.Generator().manual_seed(1234)
    logits = [(0.7, 1.2), (0.3, 0.5), (1.0, -0.5), (-1.0, 0.8)]
    projs = [init_projector(RefC2CProjector(**args), gen, *logits[i]).eval() for i in range(4)]
    lmap = {t: (s, t) for t, s in enumerate(last_aligned(4, 3))}
    save_checkpoint(os.path.join(out_dir, "tiny_fp32"), projs, args, "float32", lmap,
                    "last_aligned")
    positions = torch.tensor([0, 2, 3, 6], dtype=torch.long)
    io = make_io(projs, lmap, 3, 7, torch.float32, "cpu", gen, positions)
    # A batch of two sequences through projector 1.
    with torch.inference_mode():
        b = [torch.randn(2, 2, 5, 8, generator=gen), torch.randn(2, 2, 5, 8, generator=gen),
             torch.randn(2, 4, 5, 16, generator=gen), torch.randn(2, 4, 5, 16, generator=gen)]
        for name, t in zip(("sk", "sv", "rk", "rv"), b):
            io[f"batch_{name}"] = t
        io["batch_fused_k"], io["batch_fused_v"] = projs[1](*b)
        # Raw branches of projector 0 (keys), for the analysis API.
        s, r = io["sharer_k.0"], io["receiver_k.0"]
        n = s.shape[2]
        p = projs[0]
        h = p.key_mlp1(p.key_in(torch.cat([s.transpose(1, 2).reshape(1, n, -1),
                                            r.transpose(1, 2).reshape(1, n, -1)], -1)))
        io["proj_k.0"] = p.key_proj_out(p.key_proj_mlp2(h)).view(1, n, 4, 16).transpose(1, 2).contiguous()
        io["weight_k.0"] = torch.sigmoid(
            p.key_scalar_head(p.key_scalar_mlp2(h)).permute(0, 2, 1).unsqueeze(-1)).contiguous()
    io = {k: v.detach().clone() for k, v in io.items()}
    torch.save(io, os.path.join(out_dir, "tiny_fp32_io.pt"))
    report["tiny_fp32"] = {"projectors": 4, "tokens": 7}

    # bf16: 2 projectors with 4 MLP layers, a hand-written map with an
    # unfused receiver layer (1) and projectors used out of order.
    args16 = dict(source_dim=16, target_dim=8, source_num_heads=1, target_num_heads=2,
                  hidden_dim=24, intermediate_dim=40, num_layers=4)
    projs16 = [init_projector(RefC2CProjector(**args16), gen, 0.9, 0.4).to(torch.bfloat16).eval()
               for _ in range(2)]
    lmap16 = {0: (1, 1), 2: (0, 0)}
    save_checkpoint(os.path.join(out_dir, "tiny_bf16"), projs16, args16, "bfloat16", lmap16,
                    "custom")
    io16 = make_io(projs16, lmap16, 2, 6, torch.bfloat16, "cpu", gen,
                   torch.tensor([5, 1, 3], dtype=torch.long))
    torch.save(io16, os.path.join(out_dir, "tiny_bf16_io.pt"))
    report["tiny_bf16"] = {"projectors": 2, "tokens": 6}

    # Storage sharing and strides; 0-d; a plain dict.
    base = torch.arange(24, dtype=torch.float32).view(4, 6)
    torch.save({"base": base, "transposed": base.t(), "column": base[:, 2],
                "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
                "ints": torch.tensor([1, -2, 3], dtype=torch.int64),
                "half": torch.tensor([0.5, -1.0], dtype=torch.float16)},
               os.path.join(out_dir, "strided.pt"))
    # The legacy (pre-1.6) format, which the reader rejects.
    try:
        torch.save({"x": torch.zeros(2)}, os.path.join(out_dir, "legacy.pt"),
                   _use_new_zipfile_serialization=False)
    except Exception as e:  # Keep the rest.
        report["legacy_error"] = repr(e)
    sizes = {}
    for root, _, files in os.walk(out_dir):
        for f in files:
            sizes[os.path.relpath(os.path.join(root, f), out_dir)] = os.path.getsize(
                os.path.join(root, f))
    report["bytes_total"] = sum(sizes.values())
    return report


def real(work, tokens, runs, warmup, dev="cuda", small=False):
    args = dict(source_dim=64, target_dim=128, source_num_heads=2, target_num_heads=8,
                hidden_dim=1024, intermediate_dim=1024, num_layers=3)
    t_layers, s_layers = 28, 24
    if small:  # A quick check of this code path on any machine.
        args.update(hidden_dim=64, intermediate_dim=64)
        t_layers, s_layers = 6, 4

    def sync():
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
    torch.manual_seed(0)
    gen = torch.Generator(device=dev).manual_seed(7)
    projs = []
    for i in range(t_layers):
        p = RefC2CProjector(**args).to(dev)
        with torch.no_grad():
            for name, t in p.named_parameters():
                if name.endswith("norm.weight"):
                    t.copy_(1 + (torch.rand(t.shape, generator=gen, device=dev) * 2 - 1) * 0.1)
                elif name.endswith(".weight"):
                    t.copy_((torch.rand(t.shape, generator=gen, device=dev) * 2 - 1)
                            / t.shape[1] ** 0.5)
                elif name.endswith(".bias"):
                    t.copy_((torch.rand(t.shape, generator=gen, device=dev) * 2 - 1) / 32.0)
            p.key_gate_logit.fill_(0.5 + 1.5 * torch.rand(1, generator=gen, device=dev).item())
            # One closed gate, as ~2% are in the released fuser.
            p.value_gate_logit.fill_(-1.0 if i == t_layers - 1 else
                                     0.5 + 1.5 * torch.rand(1, generator=gen, device=dev).item())
        projs.append(p.to(torch.bfloat16).eval())
    lmap = {t: (s, t) for t, s in enumerate(last_aligned(t_layers, s_layers))}
    t0 = time.perf_counter()
    ckpt = os.path.join(work, "ckpt")
    save_checkpoint(ckpt, projs, args, "bfloat16", lmap, "last_aligned")
    save_s = time.perf_counter() - t0

    cpu_gen = torch.Generator().manual_seed(11)
    positions = torch.arange(0, tokens, 3, dtype=torch.long)
    io = make_io(projs, lmap, s_layers, tokens, torch.bfloat16, dev, cpu_gen, positions)
    torch.save(io, os.path.join(work, "io.pt"))

    # Timing: fuse all 28 layers in place into a bf16 "cache", as C2C does.
    sk = [io[f"sharer_k.{s}"].to(dev) for s in range(s_layers)]
    sv = [io[f"sharer_v.{s}"].to(dev) for s in range(s_layers)]
    rk = [io[f"receiver_k.{t}"].to(dev) for t in range(t_layers)]
    rv = [io[f"receiver_v.{t}"].to(dev) for t in range(t_layers)]
    ck = [x.clone() for x in rk]
    cv = [x.clone() for x in rv]
    times = []
    with torch.inference_mode():
        for r in range(warmup + runs):
            for t in range(t_layers):
                ck[t].copy_(rk[t])
                cv[t].copy_(rv[t])
            sync()
            a = time.perf_counter()
            for t in range(t_layers):
                s, i = lmap[t]
                k, v = projs[i].path("key", sk[s], ck[t]), projs[i].path("value", sv[s], cv[t])
                ck[t][:, :, 0:tokens, :] = k
                cv[t][:, :, 0:tokens, :] = v
            sync()
            if r >= warmup:
                times.append((time.perf_counter() - a) * 1e3)
        # Same check as a bench: the in-place result equals fused_k.
        exact = all(torch.equal(ck[t].cpu(), io[f"fused_k.{t}"]) and
                    torch.equal(cv[t].cpu(), io[f"fused_v.{t}"]) for t in range(t_layers))
    return {
        "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else dev,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tokens": tokens,
        "projectors": t_layers,
        "params_per_projector": sum(x.numel() for x in projs[0].parameters()),
        "save_seconds": save_s,
        "python_fuse_28_median_ms": statistics.median(times),
        "python_fuse_28_min_ms": min(times),
        "python_fuse_28_max_ms": max(times),
        "runs": runs, "warmup": warmup,
        "inplace_equals_reference": exact,
    }


def check_cpp(ckpt, io_path):
    final = os.path.join(ckpt, "final")
    cfg = json.load(open(os.path.join(final, "projector_config.json")))
    lmap = {int(t): tuple(v[0]) for t, v in cfg["0"]["1"].items()}
    n = len([f for f in os.listdir(final) if f.endswith(".pt")])
    projs = []
    for i in range(n):
        spec = json.load(open(os.path.join(final, f"projector_{i}.json")))
        init = spec["init_args"]
        sd = torch.load(os.path.join(final, f"projector_{i}.pt"), weights_only=True)
        p = RefC2CProjector(**init)
        dtype = next(iter(sd.values())).dtype
        p = p.to(dtype)
        p.load_state_dict(sd, strict=True)
        projs.append(p.eval())
    io = torch.load(io_path, weights_only=True)
    worst, exact = 0.0, True
    with torch.inference_mode():
        for t, (s, i) in sorted(lmap.items()):
            k, v = projs[i](io[f"sharer_k.{s}"], io[f"sharer_v.{s}"],
                            io[f"receiver_k.{t}"], io[f"receiver_v.{t}"])
            for ours, key in ((k, f"fused_k.{t}"), (v, f"fused_v.{t}")):
                ref = io[key]
                worst = max(worst, (ours.float() - ref.float()).abs().max().item())
                exact = exact and torch.equal(ours, ref)
    return {"checkpoint": ckpt, "projectors": n, "dtype": str(dtype),
            "loaded_weights_only": True, "max_abs_diff_vs_cpp": worst,
            "bit_exact": exact}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", metavar="OUT_DIR")
    ap.add_argument("--real", metavar="WORK_DIR")
    ap.add_argument("--tokens", type=int, default=117)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check-cpp", nargs=2, action="append", metavar=("CKPT", "IO"),
                    default=[])
    ap.add_argument("--device", default="cuda", help="--real: device")
    ap.add_argument("--small", action="store_true",
                    help="--real: small shapes (to test this script)")
    ap.add_argument("--json")
    a = ap.parse_args()
    out = {"torch": torch.__version__}
    if a.tiny:
        os.makedirs(a.tiny, exist_ok=True)
        try:
            out["tiny"] = tiny(a.tiny)
        except Exception as e:
            import traceback
            out["tiny"] = {"error": traceback.format_exc()}
    if a.real:
        os.makedirs(a.real, exist_ok=True)
        try:
            out["real"] = real(a.real, a.tokens, a.runs, a.warmup, a.device, a.small)
        except Exception as e:
            import traceback
            out["real"] = {"error": traceback.format_exc()}
    out["check_cpp"] = []
    for ckpt, io in a.check_cpp:
        try:
            out["check_cpp"].append(check_cpp(ckpt, io))
        except Exception as e:  # Report and go on.
            out["check_cpp"].append({"checkpoint": ckpt, "error": repr(e)})
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
