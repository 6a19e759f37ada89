// C2C's per-layer projector ("Fuser" in the paper), exactly as
// rosetta/model/projector.py::C2CProjector computes it at inference
// (c2c-spec §2). For X in {key, value}, with separate weights:
//
//   s = X_sharer  (.., Hs, N, Ds) -> (.., N, Hs*Ds)
//   r = X_receiver(.., Ht, N, Dt) -> (.., N, Ht*Dt)
//   h = X_in([s ; r])                           Linear(in+out -> H, bias)
//   h = X_mlp1(h)                               1 FFN block
//   P = X_proj_out(X_proj_mlp2(h))              num_layers-2 blocks, Linear
//   w = sigmoid(X_scalar_head(X_scalar_mlp2(h)))  1 block, Linear(H -> Ht)
//   g = 1[X_gate_logit > 0]                     hard gate (eval mode)
//   X_out = r + g * w * P                       w broadcast over head_dim
//
// with FFN block y = x + W2(GELU(W1(RMSNorm(x)))) (RMSNorm eps 1e-6 with a
// weight, exact GELU, bias-free W1/W2; dropout is inactive at inference).
//
// Numerics follow the reference's dtype behaviour: every layer runs in the
// projector's dtype (bf16 for the release); g is fp32, so g*w*P and the sum
// with the receiver are computed in fp32 and rounded once into the
// receiver's dtype. A closed gate (logit <= 0) leaves the receiver's values
// untouched and skips that path's computation (the reference adds 0*w*P,
// which is the same for finite P).
//
// Inputs are in cache layout: [H, N, D] (one sequence) or [B, H, N, D]. Any
// float dtype and device; inputs are converted to the projector's dtype and
// device for the computation, and the output has the receiver tensor's dtype
// and device.
//
// C2CProjectorStack (below) runs several projectors of one shape as one
// batched computation (the same formula over a leading member dimension).
//
// Threading: const methods may run concurrently. Errors: absl::Status;
// c10::Error never escapes.
#ifndef KVWIRE_COMMON_FUSER_C2C_PROJECTOR_H_
#define KVWIRE_COMMON_FUSER_C2C_PROJECTOR_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/fuser/fuser_config.h"
#include "common/fuser/torch_pickle.h"

namespace kvwire {

// One tensor of a projector's state dict.
struct ProjectorTensorSpec {
  std::string name;  // e.g. "key_mlp1.blocks.0.w1.weight".
  std::vector<int64_t> shape;
  bool required = true;  // gate_temperature (a buffer unused at eval): no.
};

// Every state-dict entry of a C2CProjector with `args`, in the order the
// reference's state_dict() lists them (key/value gate logits,
// gate_temperature, then the key_* / value_* sub-modules).
std::vector<ProjectorTensorSpec> ProjectorStateDictSpec(
    const C2CProjectorArgs& args);

struct ProjectorOptions {
  // Compute dtype of the weights: bf16, fp16 or fp32. at::ScalarType::Undefined
  // keeps the stored dtype (each tensor's own; they must agree).
  at::ScalarType dtype = at::kBFloat16;
  c10::Device device = c10::Device(c10::kCPU);
};

class C2CProjector {
 public:
  // Builds a projector from its state dict. Checks every tensor of
  // ProjectorStateDictSpec(args): a missing one is NOT_FOUND and a
  // mis-shaped one INVALID_ARGUMENT, naming the tensor and the expected and
  // actual shapes; a non-float tensor is INVALID_ARGUMENT. Entries the spec
  // does not know are ignored (the reference loads with strict=False) unless
  // `strict`, which rejects them by name. `name` prefixes messages
  // (e.g. "projector_3.pt").
  static absl::StatusOr<C2CProjector> Create(const C2CProjectorArgs& args,
                                             const TensorList& state_dict,
                                             const ProjectorOptions& options,
                                             bool strict = false,
                                             const std::string& name = "");

  // A projector with random weights (for tests and demos), in the way
  // `torch.nn` initialises them (Linear: kaiming-uniform weight and uniform
  // bias in +-1/sqrt(fan_in); RMSNorm: ones), except that the RMSNorm
  // weights are 1 + U(-norm_jitter, norm_jitter) and the gate logits are
  // key_gate_logit / value_gate_logit (the reference's init is 0, a closed
  // gate). `weight_scale` multiplies every Linear weight and bias.
  struct RandomOptions {
    uint64_t seed = 0;
    double key_gate_logit = 1.0;
    double value_gate_logit = 1.0;
    double norm_jitter = 0.1;
    double weight_scale = 1.0;
  };
  static absl::StatusOr<C2CProjector> Random(const C2CProjectorArgs& args,
                                             const RandomOptions& random,
                                             const ProjectorOptions& options);

  C2CProjector() = default;

  const C2CProjectorArgs& args() const { return args_; }
  at::ScalarType dtype() const { return dtype_; }
  c10::Device device() const { return device_; }
  bool key_gate_open() const { return key_.gate_open; }
  bool value_gate_open() const { return value_.gate_open; }

  // Fused receiver K/V (new tensors, receiver dtype and device). Sharer
  // [.., Hs, N, Ds], receiver [.., Ht, N, Dt], same leading dims and N.
  absl::StatusOr<std::pair<at::Tensor, at::Tensor>> Forward(
      const at::Tensor& sharer_keys, const at::Tensor& sharer_values,
      const at::Tensor& receiver_keys, const at::Tensor& receiver_values) const;

  // Forward into preallocated `out_keys` / `out_values` (the receivers'
  // shapes, any float dtype; rounded once into them). Allocates no output,
  // so it can be captured in a CUDA graph (cuda_graph_fuser.h). The outputs
  // must not alias the inputs.
  absl::Status ForwardInto(const at::Tensor& sharer_keys,
                           const at::Tensor& sharer_values,
                           const at::Tensor& receiver_keys,
                           const at::Tensor& receiver_values,
                           const at::Tensor& out_keys,
                           const at::Tensor& out_values) const;

  // The projector's raw outputs for analysis: P ([.., Ht, N, Dt]) and the
  // normalized weight w = sigmoid(..) ([.., Ht, N, 1]), in the projector's
  // dtype, for keys (`value` false) or values.
  absl::StatusOr<std::pair<at::Tensor, at::Tensor>> ProjectAndWeight(
      const at::Tensor& sharer, const at::Tensor& receiver, bool value) const;

  // Fuses in place into `receiver_keys` / `receiver_values` (typically views
  // of a KV cache, [.., Ht, T, Dt]): positions [start, start + N) get the
  // fused values, where the sharer tensors hold N tokens.
  absl::Status FuseRange(const at::Tensor& sharer_keys,
                         const at::Tensor& sharer_values, int64_t start,
                         const at::Tensor& receiver_keys,
                         const at::Tensor& receiver_values) const;

  // Sparse fuse: the sharer tensors hold the N tokens at receiver positions
  // `positions` (distinct, each in [0, T); any order). Gathers those
  // positions of the receiver, projects them, and writes back only them. A
  // contiguous run of positions takes the FuseRange path (no gather).
  absl::Status FuseTokens(const at::Tensor& sharer_keys,
                          const at::Tensor& sharer_values,
                          absl::Span<const uint32_t> positions,
                          const at::Tensor& receiver_keys,
                          const at::Tensor& receiver_values) const;

  // The checks FuseRange (no `positions`: rows [start, start + n)) or
  // FuseTokens (`positions`) make before touching anything: INVALID_ARGUMENT
  // for mis-shaped or non-float tensors, rows outside the receiver, or
  // positions that repeat or do not match the n sharer tokens.
  absl::Status CheckFuse(
      const at::Tensor& sharer_keys, const at::Tensor& sharer_values,
      const at::Tensor& receiver_keys, const at::Tensor& receiver_values,
      int64_t start, std::optional<absl::Span<const uint32_t>> positions) const;

  // The weights as a state dict (names as ProjectorStateDictSpec, including
  // gate_temperature), in the projector's dtype on its device.
  TensorList StateDict() const;

  // Moves / converts the weights.
  absl::StatusOr<C2CProjector> To(const ProjectorOptions& options) const;

 private:
  friend class C2CProjectorStack;  // Stacks (and rebinds) the weights.

  struct Block {
    at::Tensor norm, w1, w2;
  };
  struct Path {
    at::Tensor in_w, in_b;
    std::vector<Block> mlp1, scalar_mlp2, proj_mlp2;
    at::Tensor scalar_head_w, scalar_head_b, proj_out_w, proj_out_b;
    at::Tensor gate_logit;
    bool gate_open = false;
  };

  static absl::StatusOr<C2CProjector> FromTensors(
      const C2CProjectorArgs& args, const TensorList& tensors,
      const ProjectorOptions& options, bool strict, const std::string& name);
  absl::Status CheckInputs(const at::Tensor& sk, const at::Tensor& sv,
                           const at::Tensor& rk, const at::Tensor& rv,
                           bool same_tokens) const;
  // P and w for one path; inputs already checked.
  std::pair<at::Tensor, at::Tensor> RunPath(const Path& p,
                                            const at::Tensor& sharer,
                                            const at::Tensor& receiver) const;
  // receiver + g * w * P in fp32 (open gate only), on the projector's
  // device; the caller rounds it once into the receiver's dtype.
  at::Tensor FusePath(const Path& p, const at::Tensor& sharer,
                      const at::Tensor& receiver) const;

  C2CProjectorArgs args_;
  at::ScalarType dtype_ = at::kFloat;
  c10::Device device_ = c10::Device(c10::kCPU);
  Path key_, value_;
  at::Tensor gate_temperature_;
};

// Several projectors with the same shapes (C2CProjectorArgs sizes; dropout
// and temperature args do not matter at inference), dtype and device, as one
// batched computation. Fusing L receiver layers one by one launches ~60
// small kernels per layer; over a stack the same formula runs once on a
// leading member dimension (at::baddbmm / at::bmm for the linears, RMSNorm,
// GELU and sigmoid over [P, n, ..]), so the kernel count no longer grows
// with L.
//
// The stack owns each weight as one [P, ..] tensor, and Build() rebinds the
// members' own weights to views of it, so stacking costs no second copy of
// the weights (only a transient one while building). Members' results
// equal C2CProjector's up to the GEMMs' accumulation order (and, on LibTorch
// builds whose rms_norm fuses the weight multiply, the rounding of that
// multiply in bf16/fp16).
//
// Gates are not applied here: FusePath returns r + w*P for every member in
// the range; callers write back only the members whose gate is open (the
// reference's closed-gate r + 0*w*P equals r for finite P; masking also
// keeps r exactly when P is not finite).
//
// Threading: const methods may run concurrently. Errors: absl::Status;
// c10::Error never escapes.
class C2CProjectorStack {
 public:
  // Whether `a` and `b` can share a stack.
  static bool Compatible(const C2CProjector& a, const C2CProjector& b);

  // Stacks `members` (at least one, pairwise Compatible: INVALID_ARGUMENT
  // otherwise) in this order and rebinds their weights to views of the
  // stack; member i is index i below. INTERNAL if torch fails (the members
  // are then unchanged).
  static absl::StatusOr<C2CProjectorStack> Build(
      absl::Span<C2CProjector* const> members);

  C2CProjectorStack() = default;

  int64_t size() const { return size_; }
  const C2CProjectorArgs& args() const { return args_; }
  at::ScalarType dtype() const { return dtype_; }
  c10::Device device() const { return device_; }
  // Member i's gate for the key (`value` false) or value path.
  bool gate_open(int64_t i, bool value) const {
    return (value ? value_ : key_).gate_open[i];
  }

  // r + w*P of the key (`value` false) or value path for members
  // [first, first + count): `sharer` [count, Hs, n, Ds] and `receiver`
  // [count, Ht, n, Dt] (any float dtype and device; converted as
  // C2CProjector::Forward converts) give fp32 [count, Ht, n, Dt] on the
  // stack's device, computed as C2CProjector computes each member. Rows
  // (tokens) are independent. INVALID_ARGUMENT for a bad range or shape.
  absl::StatusOr<at::Tensor> FusePath(bool value, int64_t first, int64_t count,
                                      const at::Tensor& sharer,
                                      const at::Tensor& receiver) const;
  // The same, rounded once into `out` (the receiver's shape, any float
  // dtype, must not alias the inputs). Allocates no output, so it can be
  // captured in a CUDA graph.
  absl::Status FusePathInto(bool value, int64_t first, int64_t count,
                            const at::Tensor& sharer,
                            const at::Tensor& receiver,
                            const at::Tensor& out) const;

 private:
  struct Block {
    at::Tensor norm, w1, w2;  // [P, H], [P, mid, H], [P, H, mid].
  };
  struct Path {
    at::Tensor in_w, in_b;
    std::vector<Block> mlp1, scalar_mlp2, proj_mlp2;
    at::Tensor scalar_head_w, scalar_head_b, proj_out_w, proj_out_b;
    std::vector<bool> gate_open;
  };

  absl::Status CheckRange(int64_t first, int64_t count,
                          const at::Tensor& sharer,
                          const at::Tensor& receiver) const;
  at::Tensor Run(const Path& p, int64_t first, int64_t count,
                 const at::Tensor& sharer, const at::Tensor& receiver) const;

  int64_t size_ = 0;
  C2CProjectorArgs args_;
  at::ScalarType dtype_ = at::kFloat;
  c10::Device device_ = c10::Device(c10::kCPU);
  Path key_, value_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_FUSER_C2C_PROJECTOR_H_
