// Over 700 lines on purpose: C2CProjector and C2CProjectorStack compute the
// same formula (FusePath and Run must stay numerically in lockstep) over the
// same RMSNorm and weight-walking helpers, which this file keeps private;
// splitting the stack out would need those in a shared header and add a
// Torch translation unit, which kvwire_fuser keeps few for build time.
#include "common/fuser/c2c_projector.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/stack.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

#if TORCH_VERSION_MAJOR > 2 || \
    (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define KVWIRE_HAVE_RMS_NORM 1
#include <ATen/ops/rms_norm.h>
#endif

namespace kvwire {
namespace {

constexpr double kRmsNormEps = 1e-6;

std::string ShapeString(at::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool IsFloat(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf ||
         t == at::kDouble;
}

absl::Status CheckComputeDtype(at::ScalarType t) {
  if (t == at::kFloat || t == at::kBFloat16 || t == at::kHalf) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "projector dtype must be bf16, fp16 or fp32, got ", c10::toString(t)));
}

// nn.RMSNorm(h, eps=1e-6) without its weight, as torch computes it.
at::Tensor RmsNormUnweighted(const at::Tensor& x) {
#ifdef KVWIRE_HAVE_RMS_NORM
  return at::rms_norm(x, {x.size(-1)}, {}, kRmsNormEps);
#else
  // torch's composite rms_norm: upcast, normalize, round to the input dtype
  // (the weight multiply follows); eps is held in the input's scalar type.
  double eps = kRmsNormEps;
  if (x.scalar_type() == at::kBFloat16) {
    eps = static_cast<float>(c10::BFloat16(static_cast<float>(eps)));
  } else if (x.scalar_type() == at::kHalf) {
    eps = static_cast<float>(c10::Half(static_cast<float>(eps)));
  }
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor r = at::rsqrt(xf.pow(2).mean({-1}, /*keepdim=*/true).add_(eps));
  return xf.mul(r).to(x.scalar_type());
#endif
}

// nn.RMSNorm(h, eps=1e-6) as torch computes it.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight) {
#ifdef KVWIRE_HAVE_RMS_NORM
  return at::rms_norm(x, {x.size(-1)}, weight, kRmsNormEps);
#else
  return RmsNormUnweighted(x).mul(weight);
#endif
}

// RMSNorm of stacked activations [P, n, H] with per-member weights
// [P, 1, H]: at::rms_norm takes one [H] weight, so the weight multiply is
// separate (as torch's composite rms_norm does it).
at::Tensor RmsNormStacked(const at::Tensor& x, const at::Tensor& weight) {
  return RmsNormUnweighted(x).mul(weight);
}

// Every weight tensor of a projector path (C2CProjector's or
// C2CProjectorStack's), in one fixed order.
template <typename Path>
std::vector<at::Tensor*> PathWeights(Path& p) {
  std::vector<at::Tensor*> out = {&p.in_w,          &p.in_b,
                                  &p.scalar_head_w, &p.scalar_head_b,
                                  &p.proj_out_w,    &p.proj_out_b};
  for (auto* blocks : {&p.mlp1, &p.scalar_mlp2, &p.proj_mlp2}) {
    for (auto& b : *blocks) {
      out.push_back(&b.norm);
      out.push_back(&b.w1);
      out.push_back(&b.w2);
    }
  }
  return out;
}

std::string Prefixed(const std::string& name, absl::string_view message) {
  return name.empty() ? std::string(message)
                      : absl::StrCat(name, ": ", message);
}

}  // namespace

std::vector<ProjectorTensorSpec> ProjectorStateDictSpec(
    const C2CProjectorArgs& a) {
  const int64_t h = a.hidden_dim, inter = a.intermediate_dim;
  // state_dict() order: the module's own parameters and buffers first, then
  // the sub-modules in registration order.
  std::vector<ProjectorTensorSpec> spec = {
      {"key_gate_logit", {}},
      {"value_gate_logit", {}},
      {"gate_temperature", {}, /*required=*/false},
  };
  auto block = [&](const std::string& prefix, int64_t n, int64_t mid) {
    for (int64_t j = 0; j < n; ++j) {
      const std::string b = absl::StrCat(prefix, ".blocks.", j, ".");
      spec.push_back({b + "norm.weight", {h}});
      spec.push_back({b + "w1.weight", {mid, h}});
      spec.push_back({b + "w2.weight", {h, mid}});
    }
  };
  for (const char* x : {"key", "value"}) {
    const std::string p = x;
    spec.push_back({p + "_in.weight", {h, a.in_dim() + a.out_dim()}});
    spec.push_back({p + "_in.bias", {h}});
  }
  block("key_mlp1", 1, inter);
  block("value_mlp1", 1, inter);
  block("key_scalar_mlp2", 1, h);
  block("value_scalar_mlp2", 1, h);
  for (const char* x : {"key", "value"}) {
    const std::string p = x;
    spec.push_back({p + "_scalar_head.weight", {a.target_num_heads, h}});
    spec.push_back({p + "_scalar_head.bias", {a.target_num_heads}});
  }
  block("key_proj_mlp2", a.num_layers - 2, inter);
  block("value_proj_mlp2", a.num_layers - 2, inter);
  for (const char* x : {"key", "value"}) {
    const std::string p = x;
    spec.push_back({p + "_proj_out.weight", {a.out_dim(), h}});
    spec.push_back({p + "_proj_out.bias", {a.out_dim()}});
  }
  return spec;
}

absl::StatusOr<C2CProjector> C2CProjector::Create(
    const C2CProjectorArgs& args, const TensorList& state_dict,
    const ProjectorOptions& options, bool strict, const std::string& name) {
  return FromTensors(args, state_dict, options, strict, name);
}

absl::StatusOr<C2CProjector> C2CProjector::FromTensors(
    const C2CProjectorArgs& args, const TensorList& tensors,
    const ProjectorOptions& options, bool strict, const std::string& name) {
  if (absl::Status s = ValidateProjectorArgs(args); !s.ok()) {
    return absl::InvalidArgumentError(Prefixed(name, s.message()));
  }
  std::map<std::string, at::Tensor> by_name;
  for (const auto& [n, t] : tensors) by_name[n] = t;
  const std::vector<ProjectorTensorSpec> spec = ProjectorStateDictSpec(args);

  if (strict) {
    std::map<std::string, bool> known;
    for (const auto& s : spec) known[s.name] = true;
    for (const auto& [n, t] : tensors) {
      if (!known.count(n)) {
        return absl::InvalidArgumentError(
            Prefixed(name, absl::StrCat("unexpected tensor \"", n, "\"")));
      }
    }
  }

  at::ScalarType dtype = options.dtype;
  // Validate names, shapes and dtypes first.
  for (const auto& s : spec) {
    auto it = by_name.find(s.name);
    if (it == by_name.end() || !it->second.defined()) {
      if (!s.required) continue;
      return absl::NotFoundError(Prefixed(
          name, absl::StrCat("missing tensor \"", s.name, "\" (expected shape ",
                             ShapeString(s.shape), ")")));
    }
    const at::Tensor& t = it->second;
    if (t.sizes() != at::IntArrayRef(s.shape)) {
      return absl::InvalidArgumentError(
          Prefixed(name, absl::StrCat("tensor \"", s.name, "\" has shape ",
                                      ShapeString(t.sizes()), ", expected ",
                                      ShapeString(s.shape))));
    }
    if (!IsFloat(t.scalar_type())) {
      return absl::InvalidArgumentError(
          Prefixed(name, absl::StrCat("tensor \"", s.name, "\" has dtype ",
                                      c10::toString(t.scalar_type()),
                                      ", expected a floating type")));
    }
    if (dtype == at::ScalarType::Undefined && s.required)
      dtype = t.scalar_type();
  }
  if (absl::Status st = CheckComputeDtype(dtype); !st.ok()) {
    return absl::InvalidArgumentError(Prefixed(name, st.message()));
  }

  C2CProjector p;
  p.args_ = args;
  p.dtype_ = dtype;
  p.device_ = options.device;
  RETURN_IF_ERROR(
      Guarded(Prefixed(name, "loading weights"), [&]() -> absl::Status {
        c10::InferenceMode guard;
        auto get = [&](const std::string& n) {
          return by_name.at(n)
              .detach()
              .to(options.device, dtype, /*non_blocking=*/false, /*copy=*/false)
              .contiguous();
        };
        auto blocks = [&](const std::string& prefix, int64_t n) {
          std::vector<Block> out;
          for (int64_t j = 0; j < n; ++j) {
            const std::string b = absl::StrCat(prefix, ".blocks.", j, ".");
            out.push_back({get(b + "norm.weight"), get(b + "w1.weight"),
                           get(b + "w2.weight")});
          }
          return out;
        };
        for (Path* path : {&p.key_, &p.value_}) {
          const std::string x = path == &p.key_ ? "key" : "value";
          path->in_w = get(x + "_in.weight");
          path->in_b = get(x + "_in.bias");
          path->mlp1 = blocks(x + "_mlp1", 1);
          path->scalar_mlp2 = blocks(x + "_scalar_mlp2", 1);
          path->proj_mlp2 = blocks(x + "_proj_mlp2", args.num_layers - 2);
          path->scalar_head_w = get(x + "_scalar_head.weight");
          path->scalar_head_b = get(x + "_scalar_head.bias");
          path->proj_out_w = get(x + "_proj_out.weight");
          path->proj_out_b = get(x + "_proj_out.bias");
          path->gate_logit = get(x + "_gate_logit");
          // The reference compares the logit in the projector's dtype.
          const float logit =
              path->gate_logit.to(at::kCPU).to(at::kFloat).item<float>();
          if (std::isnan(logit)) {
            return absl::InvalidArgumentError(Prefixed(
                name, absl::StrCat("tensor \"", x, "_gate_logit\" is NaN")));
          }
          path->gate_open = logit > 0;
        }
        // The concrete device ("cuda" -> "cuda:0"), so device checks compare
        // like with like.
        p.device_ = p.key_.in_w.device();
        auto temp = by_name.find("gate_temperature");
        if (temp != by_name.end() && temp->second.defined()) {
          p.gate_temperature_ = get("gate_temperature");
        } else {
          p.gate_temperature_ = at::scalar_tensor(
              args.final_temperature,
              at::TensorOptions().dtype(dtype).device(options.device));
        }
        return absl::OkStatus();
      }));
  return p;
}

absl::StatusOr<C2CProjector> C2CProjector::Random(
    const C2CProjectorArgs& args, const RandomOptions& random,
    const ProjectorOptions& options) {
  RETURN_IF_ERROR(ValidateProjectorArgs(args));
  at::ScalarType dtype =
      options.dtype == at::ScalarType::Undefined ? at::kFloat : options.dtype;
  RETURN_IF_ERROR(CheckComputeDtype(dtype));
  TensorList tensors;
  RETURN_IF_ERROR(Guarded("random projector", [&]() -> absl::Status {
    c10::InferenceMode guard;
    at::Generator gen = at::detail::createCPUGenerator(random.seed);
    auto uniform = [&](at::IntArrayRef shape, double bound) {
      return (at::rand(shape, gen, at::TensorOptions().dtype(at::kFloat)) *
                  2.0 -
              1.0) *
             bound;
    };
    for (const auto& s : ProjectorStateDictSpec(args)) {
      at::Tensor t;
      const std::string& n = s.name;
      auto ends_with = [&](absl::string_view suffix) {
        return n.size() >= suffix.size() &&
               n.compare(n.size() - suffix.size(), suffix.size(), suffix.data(),
                         suffix.size()) == 0;
      };
      if (n == "key_gate_logit") {
        t = at::scalar_tensor(random.key_gate_logit, at::kFloat);
      } else if (n == "value_gate_logit") {
        t = at::scalar_tensor(random.value_gate_logit, at::kFloat);
      } else if (n == "gate_temperature") {
        t = at::scalar_tensor(args.final_temperature, at::kFloat);
      } else if (ends_with("norm.weight")) {
        t = 1.0 + uniform(s.shape, random.norm_jitter);
      } else if (ends_with(".weight")) {
        t = uniform(s.shape, random.weight_scale /
                                 std::sqrt(static_cast<double>(s.shape[1])));
      } else {  // Bias: fan_in is the matching weight's second dim.
        const std::string w = n.substr(0, n.size() - 4) + "weight";
        int64_t fan_in = 1;
        for (const auto& o : ProjectorStateDictSpec(args)) {
          if (o.name == w) fan_in = o.shape[1];
        }
        t = uniform(s.shape, random.weight_scale /
                                 std::sqrt(static_cast<double>(fan_in)));
      }
      tensors.emplace_back(n, t);
    }
    return absl::OkStatus();
  }));
  ProjectorOptions o = options;
  o.dtype = dtype;
  return FromTensors(args, tensors, o, /*strict=*/true, "");
}

absl::Status C2CProjector::CheckInputs(const at::Tensor& sk,
                                       const at::Tensor& sv,
                                       const at::Tensor& rk,
                                       const at::Tensor& rv,
                                       bool same_tokens) const {
  if (!sk.defined() || !sv.defined() || !rk.defined() || !rv.defined()) {
    return absl::InvalidArgumentError("projector input is undefined");
  }
  const int64_t rank = sk.dim();
  if (rank != 3 && rank != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("projector inputs must be [H, N, D] or [B, H, N, D], got ",
                     ShapeString(sk.sizes())));
  }
  if (sv.sizes() != sk.sizes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("sharer keys ", ShapeString(sk.sizes()), " and values ",
                     ShapeString(sv.sizes()), " differ"));
  }
  if (rv.sizes() != rk.sizes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("receiver keys ", ShapeString(rk.sizes()), " and values ",
                     ShapeString(rv.sizes()), " differ"));
  }
  if (rk.dim() != rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("sharer ", ShapeString(sk.sizes()), " and receiver ",
                     ShapeString(rk.sizes()), " ranks differ"));
  }
  if (sk.size(-3) != args_.source_num_heads ||
      sk.size(-1) != args_.source_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("sharer KV ", ShapeString(sk.sizes()), " does not have ",
                     args_.source_num_heads, " heads of ", args_.source_dim));
  }
  if (rk.size(-3) != args_.target_num_heads ||
      rk.size(-1) != args_.target_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("receiver KV ", ShapeString(rk.sizes()), " does not have ",
                     args_.target_num_heads, " heads of ", args_.target_dim));
  }
  if (rank == 4 && sk.size(0) != rk.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sharer batch ", sk.size(0), " != receiver batch ", rk.size(0)));
  }
  if (same_tokens && sk.size(-2) != rk.size(-2)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sharer has ", sk.size(-2), " tokens, receiver ", rk.size(-2)));
  }
  for (const at::Tensor* t : {&sk, &sv, &rk, &rv}) {
    if (!IsFloat(t->scalar_type())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "projector input has dtype ", c10::toString(t->scalar_type())));
    }
  }
  return absl::OkStatus();
}

std::pair<at::Tensor, at::Tensor> C2CProjector::RunPath(
    const Path& p, const at::Tensor& sharer, const at::Tensor& receiver) const {
  // [.., H, N, D] -> [.., N, H*D]
  auto flatten = [&](const at::Tensor& x) {
    at::Tensor t = x.to(device_, dtype_).transpose(-3, -2);
    std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end() - 2);
    shape.push_back(t.size(-2) * t.size(-1));
    return t.reshape(shape);
  };
  auto run_blocks = [&](at::Tensor x, const std::vector<Block>& blocks) {
    for (const Block& b : blocks) {
      at::Tensor y = RmsNorm(x, b.norm);
      y = at::gelu(at::linear(y, b.w1));
      y = at::linear(y, b.w2);
      x = x + y;
    }
    return x;
  };
  at::Tensor h = at::linear(at::cat({flatten(sharer), flatten(receiver)}, -1),
                            p.in_w, p.in_b);
  h = run_blocks(h, p.mlp1);
  // Projection: [.., N, Ht*Dt] -> [.., Ht, N, Dt].
  at::Tensor proj =
      at::linear(run_blocks(h, p.proj_mlp2), p.proj_out_w, p.proj_out_b);
  std::vector<int64_t> shape(proj.sizes().begin(), proj.sizes().end() - 1);
  shape.push_back(args_.target_num_heads);
  shape.push_back(args_.target_dim);
  proj = proj.view(shape).transpose(-3, -2);
  // Weight: [.., N, Ht] -> [.., Ht, N, 1], sigmoid in the projector dtype.
  at::Tensor w = at::linear(run_blocks(h, p.scalar_mlp2), p.scalar_head_w,
                            p.scalar_head_b);
  w = at::sigmoid(w.transpose(-1, -2).unsqueeze(-1));
  return {proj, w};
}

at::Tensor C2CProjector::FusePath(const Path& p, const at::Tensor& sharer,
                                  const at::Tensor& receiver) const {
  auto [proj, w] = RunPath(p, sharer, receiver);
  // g (fp32) * w * P in fp32, + receiver in fp32; the caller rounds once.
  at::Tensor delta = w.to(at::kFloat).mul(proj);
  return receiver.to(device_).add(delta);
}

absl::StatusOr<std::pair<at::Tensor, at::Tensor>> C2CProjector::Forward(
    const at::Tensor& sk, const at::Tensor& sv, const at::Tensor& rk,
    const at::Tensor& rv) const {
  RETURN_IF_ERROR(CheckInputs(sk, sv, rk, rv, /*same_tokens=*/true));
  return Guarded("projector forward",
                 [&]() -> absl::StatusOr<std::pair<at::Tensor, at::Tensor>> {
                   c10::InferenceMode guard;
                   auto fuse = [&](const Path& p, const at::Tensor& s,
                                   const at::Tensor& r) {
                     if (!p.gate_open) return r.clone();
                     return FusePath(p, s, r).to(r.device(), r.scalar_type());
                   };
                   return std::make_pair(fuse(key_, sk, rk),
                                         fuse(value_, sv, rv));
                 });
}

absl::Status C2CProjector::ForwardInto(const at::Tensor& sk,
                                       const at::Tensor& sv,
                                       const at::Tensor& rk,
                                       const at::Tensor& rv,
                                       const at::Tensor& out_keys,
                                       const at::Tensor& out_values) const {
  RETURN_IF_ERROR(CheckInputs(sk, sv, rk, rv, /*same_tokens=*/true));
  if (!out_keys.defined() || !out_values.defined() ||
      out_keys.sizes() != rk.sizes() || out_values.sizes() != rv.sizes()) {
    return absl::InvalidArgumentError(
        "ForwardInto: outputs must have the receiver's shape");
  }
  return Guarded("projector forward", [&]() -> absl::Status {
    c10::InferenceMode guard;
    out_keys.copy_(key_.gate_open ? FusePath(key_, sk, rk) : rk);
    out_values.copy_(value_.gate_open ? FusePath(value_, sv, rv) : rv);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::pair<at::Tensor, at::Tensor>>
C2CProjector::ProjectAndWeight(const at::Tensor& sharer,
                               const at::Tensor& receiver, bool value) const {
  RETURN_IF_ERROR(
      CheckInputs(sharer, sharer, receiver, receiver, /*same_tokens=*/true));
  return Guarded("projector forward",
                 [&]() -> absl::StatusOr<std::pair<at::Tensor, at::Tensor>> {
                   c10::InferenceMode guard;
                   return RunPath(value ? value_ : key_, sharer, receiver);
                 });
}

absl::Status C2CProjector::CheckFuse(
    const at::Tensor& sk, const at::Tensor& sv, const at::Tensor& rk,
    const at::Tensor& rv, int64_t start,
    std::optional<absl::Span<const uint32_t>> positions) const {
  RETURN_IF_ERROR(CheckInputs(sk, sv, rk, rv, /*same_tokens=*/false));
  const int64_t n = sk.size(-2);
  const int64_t total = rk.size(-2);
  if (!positions.has_value()) {
    if (start < 0 || start + n > total) {
      return absl::InvalidArgumentError(
          absl::StrCat("positions [", start, ", ", start + n,
                       ") outside the receiver's ", total, " tokens"));
    }
    return absl::OkStatus();
  }
  if (static_cast<int64_t>(positions->size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        positions->size(), " positions for ", n, " sharer tokens"));
  }
  if (n == 0) return absl::OkStatus();
  std::vector<uint32_t> sorted(positions->begin(), positions->end());
  std::sort(sorted.begin(), sorted.end());
  if (static_cast<int64_t>(sorted.back()) >= total) {
    return absl::InvalidArgumentError(absl::StrCat("position ", sorted.back(),
                                                   " outside the receiver's ",
                                                   total, " tokens"));
  }
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return absl::InvalidArgumentError("positions repeat a token");
  }
  return absl::OkStatus();
}

absl::Status C2CProjector::FuseRange(const at::Tensor& sk, const at::Tensor& sv,
                                     int64_t start, const at::Tensor& rk,
                                     const at::Tensor& rv) const {
  RETURN_IF_ERROR(CheckFuse(sk, sv, rk, rv, start, std::nullopt));
  const int64_t n = sk.size(-2);
  if (n == 0) return absl::OkStatus();
  return Guarded("projector fuse", [&]() -> absl::Status {
    c10::InferenceMode guard;
    at::Tensor k = rk.narrow(-2, start, n);
    at::Tensor v = rv.narrow(-2, start, n);
    if (key_.gate_open) k.copy_(FusePath(key_, sk, k));
    if (value_.gate_open) v.copy_(FusePath(value_, sv, v));
    return absl::OkStatus();
  });
}

absl::Status C2CProjector::FuseTokens(const at::Tensor& sk,
                                      const at::Tensor& sv,
                                      absl::Span<const uint32_t> positions,
                                      const at::Tensor& rk,
                                      const at::Tensor& rv) const {
  RETURN_IF_ERROR(CheckFuse(sk, sv, rk, rv, 0, positions));
  const int64_t n = sk.size(-2);
  if (n == 0) return absl::OkStatus();
  std::vector<int64_t> idx(positions.begin(), positions.end());
  bool contiguous = true;
  for (int64_t i = 1; i < n && contiguous; ++i) {
    contiguous = idx[i] == idx[i - 1] + 1;
  }
  if (contiguous) return FuseRange(sk, sv, idx[0], rk, rv);
  return Guarded("projector sparse fuse", [&]() -> absl::Status {
    c10::InferenceMode guard;
    at::Tensor index =
        at::from_blob(idx.data(), {n}, at::TensorOptions().dtype(at::kLong))
            .to(rk.device());
    const int64_t dim = rk.dim() - 2;
    if (key_.gate_open) {
      at::Tensor k = rk.index_select(dim, index);
      rk.index_copy_(dim, index,
                     FusePath(key_, sk, k).to(rk.device(), rk.scalar_type()));
    }
    if (value_.gate_open) {
      at::Tensor v = rv.index_select(dim, index);
      rv.index_copy_(dim, index,
                     FusePath(value_, sv, v).to(rv.device(), rv.scalar_type()));
    }
    return absl::OkStatus();
  });
}

TensorList C2CProjector::StateDict() const {
  TensorList out;
  std::map<std::string, at::Tensor> by_name;
  auto add_blocks = [&](const std::string& prefix,
                        const std::vector<Block>& blocks) {
    for (size_t j = 0; j < blocks.size(); ++j) {
      const std::string b = absl::StrCat(prefix, ".blocks.", j, ".");
      by_name[b + "norm.weight"] = blocks[j].norm;
      by_name[b + "w1.weight"] = blocks[j].w1;
      by_name[b + "w2.weight"] = blocks[j].w2;
    }
  };
  for (const Path* path : {&key_, &value_}) {
    const std::string x = path == &key_ ? "key" : "value";
    by_name[x + "_in.weight"] = path->in_w;
    by_name[x + "_in.bias"] = path->in_b;
    add_blocks(x + "_mlp1", path->mlp1);
    add_blocks(x + "_scalar_mlp2", path->scalar_mlp2);
    add_blocks(x + "_proj_mlp2", path->proj_mlp2);
    by_name[x + "_scalar_head.weight"] = path->scalar_head_w;
    by_name[x + "_scalar_head.bias"] = path->scalar_head_b;
    by_name[x + "_proj_out.weight"] = path->proj_out_w;
    by_name[x + "_proj_out.bias"] = path->proj_out_b;
    by_name[x + "_gate_logit"] = path->gate_logit;
  }
  by_name["gate_temperature"] = gate_temperature_;
  for (const auto& s : ProjectorStateDictSpec(args_)) {
    out.emplace_back(s.name, by_name[s.name]);
  }
  return out;
}

absl::StatusOr<C2CProjector> C2CProjector::To(
    const ProjectorOptions& options) const {
  ProjectorOptions o = options;
  if (o.dtype == at::ScalarType::Undefined) o.dtype = dtype_;
  return FromTensors(args_, StateDict(), o, /*strict=*/true, "");
}

bool C2CProjectorStack::Compatible(const C2CProjector& a,
                                   const C2CProjector& b) {
  const C2CProjectorArgs& x = a.args_;
  const C2CProjectorArgs& y = b.args_;
  return x.source_dim == y.source_dim && x.target_dim == y.target_dim &&
         x.source_num_heads == y.source_num_heads &&
         x.target_num_heads == y.target_num_heads &&
         x.intermediate_dim == y.intermediate_dim &&
         x.hidden_dim == y.hidden_dim && x.num_layers == y.num_layers &&
         a.dtype_ == b.dtype_ && a.device_ == b.device_ &&
         a.key_.in_w.defined() && b.key_.in_w.defined();
}

absl::StatusOr<C2CProjectorStack> C2CProjectorStack::Build(
    absl::Span<C2CProjector* const> members) {
  if (members.empty()) {
    return absl::InvalidArgumentError("a projector stack needs a member");
  }
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i] == nullptr || !Compatible(*members[0], *members[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("projector ", i,
                       " differs in shape, dtype or device from projector 0 "
                       "of the stack"));
    }
  }
  C2CProjectorStack s;
  s.size_ = static_cast<int64_t>(members.size());
  s.args_ = members[0]->args_;
  s.dtype_ = members[0]->dtype_;
  s.device_ = members[0]->device_;
  RETURN_IF_ERROR(Guarded("stacking projectors", [&]() -> absl::Status {
    c10::InferenceMode guard;
    for (bool value : {false, true}) {
      Path& sp = value ? s.value_ : s.key_;
      const C2CProjector::Path& first =
          value ? members[0]->value_ : members[0]->key_;
      sp.mlp1.resize(first.mlp1.size());
      sp.scalar_mlp2.resize(first.scalar_mlp2.size());
      sp.proj_mlp2.resize(first.proj_mlp2.size());
      const std::vector<at::Tensor*> stacked = PathWeights(sp);
      for (size_t k = 0; k < stacked.size(); ++k) {
        std::vector<at::Tensor> parts;
        parts.reserve(members.size());
        for (C2CProjector* m : members) {
          parts.push_back(*PathWeights(value ? m->value_ : m->key_)[k]);
        }
        *stacked[k] = at::stack(parts);
      }
      for (C2CProjector* m : members) {
        sp.gate_open.push_back((value ? m->value_ : m->key_).gate_open);
      }
    }
    // All stacked: the members' weights become views of the stack (same
    // values, same contiguous layout), freeing their own copies.
    for (bool value : {false, true}) {
      const std::vector<at::Tensor*> stacked =
          PathWeights(value ? s.value_ : s.key_);
      for (size_t i = 0; i < members.size(); ++i) {
        const std::vector<at::Tensor*> own =
            PathWeights(value ? members[i]->value_ : members[i]->key_);
        for (size_t k = 0; k < stacked.size(); ++k) {
          *own[k] = stacked[k]->select(0, static_cast<int64_t>(i));
        }
      }
    }
    return absl::OkStatus();
  }));
  return s;
}

absl::Status C2CProjectorStack::CheckRange(int64_t first, int64_t count,
                                           const at::Tensor& sharer,
                                           const at::Tensor& receiver) const {
  if (first < 0 || count <= 0 || first + count > size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("members [", first, ", ", first + count,
                     ") outside the stack of ", size_));
  }
  if (!sharer.defined() || !receiver.defined() || sharer.dim() != 4 ||
      receiver.dim() != 4 || sharer.size(0) != count ||
      receiver.size(0) != count || sharer.size(2) != receiver.size(2) ||
      sharer.size(1) != args_.source_num_heads ||
      sharer.size(3) != args_.source_dim ||
      receiver.size(1) != args_.target_num_heads ||
      receiver.size(3) != args_.target_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stacked fusion of ", count, " members needs sharer [", count, ", ",
        args_.source_num_heads, ", n, ", args_.source_dim, "] and receiver [",
        count, ", ", args_.target_num_heads, ", n, ", args_.target_dim,
        "], got ", sharer.defined() ? ShapeString(sharer.sizes()) : "undefined",
        " and ",
        receiver.defined() ? ShapeString(receiver.sizes()) : "undefined"));
  }
  if (!IsFloat(sharer.scalar_type()) || !IsFloat(receiver.scalar_type())) {
    return absl::InvalidArgumentError("stacked fusion needs float inputs");
  }
  return absl::OkStatus();
}

at::Tensor C2CProjectorStack::Run(const Path& p, int64_t first, int64_t count,
                                  const at::Tensor& sharer,
                                  const at::Tensor& receiver) const {
  const int64_t n = sharer.size(2);
  auto members = [&](const at::Tensor& w) { return w.narrow(0, first, count); };
  // [c, H, n, D] -> [c, n, H*D]
  auto flatten = [&](const at::Tensor& x) {
    at::Tensor t = x.to(device_, dtype_).transpose(1, 2);
    return t.reshape({count, n, t.size(2) * t.size(3)});
  };
  // x [c, n, in] times each member's Linear (weight [P, out, in]).
  auto linear = [&](const at::Tensor& x, const at::Tensor& w,
                    const at::Tensor& b) {
    const at::Tensor wt = members(w).transpose(1, 2);
    return b.defined() ? at::baddbmm(members(b).unsqueeze(1), x, wt)
                       : at::bmm(x, wt);
  };
  auto run_blocks = [&](at::Tensor x, const std::vector<Block>& blocks) {
    for (const Block& b : blocks) {
      at::Tensor y = RmsNormStacked(x, members(b.norm).unsqueeze(1));
      y = at::gelu(linear(y, b.w1, at::Tensor()));
      y = linear(y, b.w2, at::Tensor());
      x = x + y;
    }
    return x;
  };
  at::Tensor h =
      linear(at::cat({flatten(sharer), flatten(receiver)}, -1), p.in_w, p.in_b);
  h = run_blocks(h, p.mlp1);
  // Projection: [c, n, Ht*Dt] -> [c, Ht, n, Dt].
  at::Tensor proj =
      linear(run_blocks(h, p.proj_mlp2), p.proj_out_w, p.proj_out_b);
  proj = proj.view({count, n, args_.target_num_heads, args_.target_dim})
             .transpose(1, 2);
  // Weight: [c, n, Ht] -> [c, Ht, n, 1], sigmoid in the projector dtype.
  at::Tensor w =
      linear(run_blocks(h, p.scalar_mlp2), p.scalar_head_w, p.scalar_head_b);
  w = at::sigmoid(w.transpose(1, 2).unsqueeze(-1));
  // w * P and the sum with the receiver in fp32, as C2CProjector::FusePath.
  at::Tensor delta = w.to(at::kFloat).mul(proj);
  return receiver.to(device_).add(delta);
}

absl::StatusOr<at::Tensor> C2CProjectorStack::FusePath(
    bool value, int64_t first, int64_t count, const at::Tensor& sharer,
    const at::Tensor& receiver) const {
  RETURN_IF_ERROR(CheckRange(first, count, sharer, receiver));
  return Guarded(
      "stacked projector forward", [&]() -> absl::StatusOr<at::Tensor> {
        c10::InferenceMode guard;
        return Run(value ? value_ : key_, first, count, sharer, receiver);
      });
}

absl::Status C2CProjectorStack::FusePathInto(bool value, int64_t first,
                                             int64_t count,
                                             const at::Tensor& sharer,
                                             const at::Tensor& receiver,
                                             const at::Tensor& out) const {
  RETURN_IF_ERROR(CheckRange(first, count, sharer, receiver));
  if (!out.defined() || out.sizes() != receiver.sizes()) {
    return absl::InvalidArgumentError(
        "FusePathInto: the output must have the receiver's shape");
  }
  return Guarded("stacked projector forward", [&]() -> absl::Status {
    c10::InferenceMode guard;
    out.copy_(Run(value ? value_ : key_, first, count, sharer, receiver));
    return absl::OkStatus();
  });
}

}  // namespace kvwire
