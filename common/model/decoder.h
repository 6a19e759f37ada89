// Decoder-only transformer runtime (Qwen2, Qwen3, Llama, Mistral, Gemma3)
// over LibTorch, numerically following Hugging Face transformers: RMSNorm
// computed in fp32 and cast back before the weight multiply (Gemma3: times
// 1 + weight in fp32, then cast), RoPE with HF's rotate-half convention
// (cos/sin computed in fp32, then cast to the model dtype; one table per
// layer type), grouped-query attention with a causal mask (and per-layer
// sliding windows) and an fp32 softmax, SwiGLU or GeLU-tanh gated MLP,
// optional tied / scaled embeddings and logit soft-capping. Logits are
// computed in the model dtype and returned as fp32, as HF's generate() does.
//
// Attention uses at::scaled_dot_product_attention when LibTorch has it
// (>= 2.0) and a plain matmul/softmax implementation otherwise (or when
// DecoderOptions::attention asks for it).
//
// KV cache: one KvCache per batch of sequences, preallocated to a capacity.
// Storage is [layer][K|V][row][kv_heads, capacity, head_dim]; the first
// length(row) positions of a row hold exactly what HF keeps in its cache
// (post-RoPE keys, values), in the model dtype, on the model's device.
//
// Threading: a Decoder is immutable after Load and may be shared by threads;
// a KvCache must be used by one thread at a time.
//
// Autograd: the forward runs under c10::InferenceMode, so returned logits are
// inference tensors (read them freely; .clone() outside InferenceMode before
// modifying in place). KvCache storage is an ordinary tensor: callers may
// modify Keys()/Values() views in place anywhere (e.g. to fuse into them).
//
// Errors: absl::Status; c10::Error never escapes a public function.
#ifndef KVWIRE_COMMON_MODEL_DECODER_H_
#define KVWIRE_COMMON_MODEL_DECODER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/model/model_config.h"

namespace kvwire {

// "bf16"/"bfloat16", "fp16"/"float16"/"half", "fp32"/"float32"/"float".
absl::StatusOr<at::ScalarType> ParseModelDtype(absl::string_view name);
// "cpu", "cuda", "cuda:N".
absl::StatusOr<c10::Device> ParseModelDevice(absl::string_view name);

enum class AttentionImpl {
  kAuto,   // SDPA when LibTorch >= 2.0, else plain.
  kPlain,  // matmul + fp32 softmax + matmul (HF "eager").
  kSdpa,   // at::scaled_dot_product_attention (error if unavailable).
};

struct DecoderOptions {
  at::ScalarType dtype = at::kFloat;  // bf16, fp16 or fp32.
  c10::Device device = c10::Device(c10::kCPU);
  AttentionImpl attention = AttentionImpl::kAuto;
  // > 0: replaces the sliding window of every sliding-window layer, as
  // C2C does when it loads Gemma-3 with sliding_window=4096 (its released
  // fusers were trained that way); Decoder::config() reports the override.
  // 0: config.json's windows. Negative: INVALID_ARGUMENT from Load.
  int64_t sliding_window_override = 0;
};

class KvSlotPool;
struct KvSlotLease;

// Where Decoder::NewCache takes a cache's storage from.
enum class CacheSource {
  kAny,         // The slot pool when one is installed and the cache fits.
  kOwnStorage,  // Always an allocation of its own (e.g. staging buffers).
};

// Per-batch KV cache. Create with Decoder::NewCache. Copies are shallow:
// they share the storage tensor (but not the lengths or RoPE offsets, which
// each copy owns). A batch-1 cache may live in a slot of a KvSlotPool
// (batched_decode.h); the slot returns to the pool when the last copy is
// destroyed.
//
// RoPE offsets: a token appended at cache index i of row b gets the RoPE
// position i + rope_offset(b) (0 unless set). Decoder::PrefillAt sets it so
// that a row whose tokens were placed at explicit, gapped positions (C2C's
// aligned inputs with the padding dropped) continues at the right position
// in every later forward (DecodeStep, Generate, the batched and static
// steps, the accelerators).
class KvCache {
 public:
  KvCache() = default;

  bool defined() const { return storage_.defined(); }
  int64_t num_layers() const { return defined() ? storage_.size(0) : 0; }
  int64_t batch_size() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_kv_heads() const { return defined() ? storage_.size(3) : 0; }
  int64_t capacity() const { return defined() ? storage_.size(4) : 0; }
  int64_t head_dim() const { return defined() ? storage_.size(5) : 0; }
  int64_t length(int64_t row = 0) const;
  const std::vector<int64_t>& lengths() const { return lengths_; }
  // The RoPE offset of a row (0 for a row it lacks); the next token of the
  // row goes to RoPE position length(row) + rope_offset(row).
  int64_t rope_offset(int64_t row = 0) const;
  const std::vector<int64_t>& rope_offsets() const { return rope_offsets_; }
  // Sets a row's RoPE offset (>= 0). OUT_OF_RANGE for a row the cache lacks,
  // INVALID_ARGUMENT for a negative offset. It applies to tokens appended
  // afterwards; K/V already in the cache keep the positions they were
  // computed at.
  absl::Status SetRopeOffset(int64_t row, int64_t offset);

  // Views [kv_heads, length(row), head_dim] of layer `layer` (writes go into
  // the cache). Undefined tensor if layer/row are out of range.
  at::Tensor Keys(int64_t layer, int64_t row = 0) const;
  at::Tensor Values(int64_t layer, int64_t row = 0) const;

  // Views of positions [start, start + count), which must lie within
  // length(row).
  absl::StatusOr<std::pair<at::Tensor, at::Tensor>> Read(int64_t layer,
                                                         int64_t start,
                                                         int64_t count,
                                                         int64_t row = 0) const;
  // Copies keys/values [kv_heads, n, head_dim] (any dtype/device; converted)
  // into positions [start, start + n). start <= length(row) and
  // start + n <= capacity(); the row's length grows to start + n if shorter.
  // Note that a forward pass over new tokens extends every layer, so a
  // length grown by Write applies to all layers of the row.
  absl::Status Write(int64_t layer, int64_t start, const at::Tensor& keys,
                     const at::Tensor& values, int64_t row = 0);

  // Truncates (or, up to capacity, extends) a row's valid length; positions
  // beyond the old length keep whatever they hold. The RoPE offset is kept:
  // after truncating back across a gap of PrefillAt, set it again.
  absl::Status SetLength(int64_t row, int64_t length);
  // All rows back to length 0 and RoPE offset 0.
  void Clear();

  // [layers, 2, batch, kv_heads, capacity, head_dim].
  const at::Tensor& storage() const { return storage_; }

  // The pool slot holding this cache, or null when it has its own storage.
  const KvSlotLease* slot_lease() const { return lease_.get(); }

 private:
  friend class Decoder;
  friend class KvSlotPool;
  at::Tensor storage_;
  std::vector<int64_t> lengths_;
  std::vector<int64_t> rope_offsets_;  // One per row, like lengths_.
  std::shared_ptr<const KvSlotLease> lease_;
};

// What a layer callback sees: the K/V that this forward call added to one
// row of the cache for one layer, as views [kv_heads, count, head_dim] into
// the cache (positions [start, start + count)). On CUDA the data is ready
// in stream order (consume on the current stream or synchronize first).
struct LayerKv {
  int64_t layer = 0;
  int64_t row = 0;
  int64_t start = 0;
  at::Tensor keys;
  at::Tensor values;
  // The same tokens' queries [heads, count, head_dim] (after q_norm and
  // RoPE, before scaling), a view into this forward's activations: e.g. for
  // the attention of a prompt token over the cache (receiver-guided token
  // selection). Valid only during the callback.
  at::Tensor queries;
};
// Called as soon as a layer's K/V are written, in layer order (for batches,
// row by row within a layer). A non-OK status aborts the forward and is
// returned; the cache lengths are then left unchanged.
using LayerCallback = std::function<absl::Status(const LayerKv&)>;

enum class LogitsMode {
  kNone,  // Skip the LM head (undefined tensor returned).
  kLast,  // Logits of each row's last new token.
  kAll,   // Logits of every new token.
};

struct SamplingOptions {
  // <= 0: greedy (argmax; ties to the lowest id, like torch.argmax).
  double temperature = 0.0;
  int64_t top_k = 0;   // 0: off.
  double top_p = 1.0;  // 1: off.
  uint64_t seed = 0;   // Per row: row b of a batch uses seed + b.
};

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  // Stop tokens; nullopt: the config's eos_token_ids (generation_config.json).
  // An empty list never stops early.
  std::optional<std::vector<int64_t>> eos_token_ids;
};

enum class FinishReason { kLength, kEos };

struct GenerationResult {
  std::vector<int64_t> tokens;  // New tokens (including a final EOS).
  FinishReason finish_reason = FinishReason::kLength;
};

// Optional implementations of single steps of the decoder layer that
// Decoder::StaticDecodeStep runs (layers.h: the norm, RoPE, QKV-to-cache and
// MLP-activation steps), e.g. fused CUDA kernels in kvwire_model_cuda. Each
// must compute what the ATen reference computes, rounding included, up to
// the order of fp32 reductions. An empty function: the ATen ops.
struct DecodeStepKernels {
  // HF RMSNorm over the last dim: fp32 statistics, cast back, weight * x.
  std::function<at::Tensor(const at::Tensor& x, const at::Tensor& weight,
                           double eps)>
      rms_norm;
  // HF rotate-half RoPE: x * cos + rotate_half(x) * sin, each product and
  // the sum rounded to x's dtype. x [..., D]; cos/sin broadcast to x.
  std::function<at::Tensor(const at::Tensor& x, const at::Tensor& cos,
                           const at::Tensor& sin)>
      rope;
  // silu(x[..., :n]) * x[..., n:] for x [..., 2n] (each op rounded).
  std::function<at::Tensor(const at::Tensor& gate_up)> silu_mul;
  // A layer's QKV projection output qkv [B, T, (H + 2 Hkv) * D] to the
  // cache: q_norm / k_norm (HF RMSNorm; undefined weights: none) and RoPE
  // (cos/sin [B or 1, 1, T, D]) on queries and keys, keys and values written
  // into kc / vc ([B, Hkv, C, D] cache views) at positions [B, T]. Returns
  // the queries [B, H, T, D], or an undefined tensor when it does not
  // handle the inputs (the step then runs the ATen ops).
  std::function<at::Tensor(
      const at::Tensor& qkv, const at::Tensor& q_norm, const at::Tensor& k_norm,
      double eps, const at::Tensor& cos, const at::Tensor& sin,
      const at::Tensor& positions, const at::Tensor& kc, const at::Tensor& vc)>
      qkv_to_cache;
};

// Inputs and outputs of Decoder::StaticDecodeStep: tensors on the model
// device whose contents change between steps but whose shapes and addresses
// do not (so the step can be captured once as a CUDA graph and replayed).
// With a storage of batch B, every row runs T tokens.
struct StaticDecodeIo {
  at::Tensor token;     // [B * T] int64: the tokens fed (T >= 1), row-major.
  at::Tensor position;  // [B] int64: each row's first cache index (the row
                        // holds [0, position); token t goes to position + t).
  // [B] int64 (optional): each row's RoPE offset (KvCache::rope_offset):
  // token t gets RoPE position position + t + rope_offset. Undefined: 0.
  // Read on the device like `position`, so one captured graph serves any
  // offset. Sliding windows compare cache indices (the offset cancels).
  at::Tensor rope_offset;
  // [B * vocab] fp32, written by the step: each row's logits of its token
  // `logits_row`. Undefined: the LM head is skipped.
  at::Tensor logits;
  // [B] int64 (optional): which of its T tokens each row's logits are of
  // (a right-padded row's last real token). Undefined: the last.
  at::Tensor logits_row;
};

// The key span a static decode step at `position` attends: the smallest
// power of two >= max(position + 1, min_span), at most `capacity`. Spans are
// bucketed so that one captured graph serves many positions while short
// contexts do not pay for the whole capacity.
int64_t StaticDecodeSpan(int64_t position, int64_t capacity,
                         int64_t min_span = 64);

class Decoder;

// Runs single-token batch-1 decode steps faster than Decoder::Forward (e.g.
// kvwire_model_cuda's CudaGraphDecoder). Installed with
// Decoder::SetDecodeAccelerator; the decoder then hands it every batch-1,
// one-token, kLast forward without a layer callback (DecodeStep, Generate's
// steps, a one-token Prefill). Must be thread-safe: it may decline (return
// an undefined tensor) whenever it cannot serve a call, e.g. while another
// thread uses it.
class DecodeAccelerator {
 public:
  virtual ~DecodeAccelerator() = default;
  // Runs `token_id` at cache index cache.length(0) (RoPE position
  // length + cache.rope_offset(0)) of a batch-1 `cache` of the decoder's
  // model, writing its K/V into the cache storage at that index (the
  // decoder then advances the length), and returns its logits
  // [vocab] (fp32, model device; the caller's to keep). An undefined tensor
  // with an OK status declines the call: the decoder runs it eagerly.
  virtual absl::StatusOr<at::Tensor> DecodeStep(const Decoder& decoder,
                                                int64_t token_id,
                                                const KvCache& cache) = 0;
};

// Reference accelerator: Decoder::StaticDecodeStep run eagerly over spans of
// StaticDecodeSpan. Slower than the plain path; it exists to test the static
// step (the CUDA-graph accelerator replays exactly this computation).
class StaticDecodeAccelerator : public DecodeAccelerator {
 public:
  explicit StaticDecodeAccelerator(int64_t min_span = 64)
      : min_span_(min_span) {}
  absl::StatusOr<at::Tensor> DecodeStep(const Decoder& decoder,
                                        int64_t token_id,
                                        const KvCache& cache) override;
  int64_t steps() const { return steps_; }

 private:
  int64_t min_span_;
  int64_t steps_ = 0;  // Not synchronized: for single-threaded tests.
};

// What a PrefillAccelerator returns: whether it ran the call and, if asked,
// the last token's logits [vocab] (fp32, model device; the caller's).
struct AcceleratedPrefill {
  bool served = false;
  at::Tensor logits;
};

// Runs prompt prefills (several tokens into an empty batch-1 cache) faster
// than Decoder::Forward (e.g. kvwire_model_cuda's CudaGraphPrefill).
// Installed with Decoder::SetPrefillAccelerator; the decoder hands it every
// batch-1 forward of two or more tokens into an empty cache whose logits are
// kNone or kLast, then runs the layer callback (if any) over the written
// K/V, without queries (LayerKv::queries undefined). Must be thread-safe and
// may decline (served = false) any call it cannot serve.
class PrefillAccelerator {
 public:
  virtual ~PrefillAccelerator() = default;
  // Runs `token_ids` at positions [0, n) of the empty row 0 of the batch-1
  // `cache` of the decoder's model, writing their K/V into the cache storage
  // at those positions (the decoder then sets the length). Only called
  // with rope_offset(0) == 0 (the decoder runs other prefills eagerly).
  virtual absl::StatusOr<AcceleratedPrefill> Prefill(
      const Decoder& decoder, absl::Span<const int64_t> token_ids,
      const KvCache& cache, bool want_logits) = 0;
};

// Reference prefill accelerator: Decoder::StaticDecodeStep run eagerly over
// all tokens into a private staging cache of `capacity` positions, then
// copied into the caller's cache: the computation the CUDA-graph prefill
// replays, for tests.
class StaticPrefillAccelerator : public PrefillAccelerator {
 public:
  explicit StaticPrefillAccelerator(int64_t capacity) : capacity_(capacity) {}
  absl::StatusOr<AcceleratedPrefill> Prefill(
      const Decoder& decoder, absl::Span<const int64_t> token_ids,
      const KvCache& cache, bool want_logits) override;
  int64_t prefills() const { return prefills_; }

 private:
  int64_t capacity_;
  int64_t prefills_ = 0;  // Not synchronized: for single-threaded tests.
};

// Copies positions [0, n) of every layer's K and V from the storage of one
// batch-1 KV cache to another's of the same model (capacities may differ):
// one kernel. For prefill accelerators that compute into a staging cache.
absl::Status CopyCachePrefix(const at::Tensor& from_storage,
                             const at::Tensor& to_storage, int64_t n);

class Decoder {
 public:
  // Loads config.json, generation_config.json (optional) and the weights
  // (model.safetensors or sharded) from `model_dir`, converting them to
  // options.dtype on options.device. Missing or mis-shaped tensors: an error
  // naming them.
  static absl::StatusOr<std::unique_ptr<Decoder>> Load(
      const std::string& model_dir, const DecoderOptions& options = {});

  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  const ModelConfig& config() const { return config_; }
  const DecoderOptions& options() const { return options_; }
  at::ScalarType dtype() const { return options_.dtype; }
  c10::Device device() const { return options_.device; }
  // Whether the SDPA path is in use.
  bool uses_sdpa() const;

  // A zeroed cache for `batch` sequences of up to `capacity` tokens each.
  // With a slot pool installed and kAny, a batch-1 cache that fits comes
  // from a free slot of the pool (its own allocation when none is free).
  absl::StatusOr<KvCache> NewCache(
      int64_t capacity, int64_t batch = 1,
      CacheSource source = CacheSource::kAny) const;

  // Runs `token_ids` through the model at positions cache.length(0)...
  // (RoPE positions shifted by cache.rope_offset(0)), appending their K/V to
  // row 0 of `cache` (capacity permitting).
  // Returns logits (fp32, model device): kLast -> [vocab]; kAll ->
  // [tokens, vocab].
  absl::StatusOr<at::Tensor> Prefill(
      absl::Span<const int64_t> token_ids, KvCache& cache,
      const LayerCallback& on_layer = nullptr,
      LogitsMode logits = LogitsMode::kLast) const;
  // One token at cache index cache.length(0) (RoPE position length +
  // rope_offset); returns logits [vocab].
  absl::StatusOr<at::Tensor> DecodeStep(int64_t token_id, KvCache& cache) const;

  // Like Prefill, but token k gets the RoPE position positions[k] instead of
  // length + rope_offset + k: C2C's aligned mode without its padding tokens
  // (HF runs the padded sequence with position_ids = arange and the padding
  // masked out; dropping the padding and keeping each real token's position
  // is the same computation). `positions` has one entry per token, strictly
  // increasing, the first >= the row's next position (length(0) +
  // rope_offset(0)); INVALID_ARGUMENT otherwise (and for a cache of batch
  // > 1). Afterwards rope_offset(0) = positions.back() + 1 - length(0), so
  // DecodeStep / Generate continue at the next position.
  //
  // Attention stays causal over cache indices. Sliding windows compare RoPE
  // positions within this call, as HF's do with the padding in its cache;
  // keys already in the row before the call count as sitting at index +
  // the row's previous offset. Later single-token steps (every decode path,
  // accelerated or not) compare cache indices, i.e. after a gapped prefill
  // a decode step's window may reach up to the gap's size further back than
  // HF's (identical when no window is shorter than the sequence). Contiguous
  // positions run exactly Prefill (accelerators included); gapped ones run
  // the eager forward.
  absl::StatusOr<at::Tensor> PrefillAt(
      absl::Span<const int64_t> token_ids, absl::Span<const int64_t> positions,
      KvCache& cache, const LayerCallback& on_layer = nullptr,
      LogitsMode logits = LogitsMode::kLast) const;

  // Batched forward: row b of `cache` gets tokens[b] (each non-empty) at
  // positions cache.length(b)... (RoPE: + rope_offset(b)); rows are
  // right-padded internally, so each row needs length(b) +
  // max_b(tokens[b].size()) <= capacity. Returns kLast -> [batch, vocab]; kAll
  // -> [batch, max_tokens, vocab] (positions past a row's own count are padding
  // garbage).
  absl::StatusOr<at::Tensor> PrefillBatch(
      const std::vector<std::vector<int64_t>>& tokens, KvCache& cache,
      const LayerCallback& on_layer = nullptr,
      LogitsMode logits = LogitsMode::kLast) const;
  // One token per row; returns [batch, vocab].
  absl::StatusOr<at::Tensor> DecodeStepBatch(
      absl::Span<const int64_t> token_ids, KvCache& cache) const;

  // Generates after `prompt` in a fresh cache.
  absl::StatusOr<GenerationResult> Generate(
      absl::Span<const int64_t> prompt, const GenerationOptions& options) const;
  // Continues from `cache` (row 0): feeds `pending` (tokens not yet in the
  // cache, at least one: e.g. the prompt's last token after a prefill of the
  // rest), then samples. The cache ends up holding everything but the last
  // generated token. Needs length + pending + max_new_tokens - 1 <= capacity.
  absl::StatusOr<GenerationResult> Generate(
      KvCache& cache, absl::Span<const int64_t> pending,
      const GenerationOptions& options) const;
  // Independent sequences in one batch (right-padded); equal to calling
  // Generate on each (row b sampling with seed + b).
  absl::StatusOr<std::vector<GenerationResult>> GenerateBatch(
      const std::vector<std::vector<int64_t>>& prompts,
      const GenerationOptions& options) const;

  // Picks the next token of each row from logits [vocab] or [batch, vocab]
  // (HF order: temperature, top-k, top-p, then a draw). `step` varies the
  // draw across calls: row b draws with seed + b and the step index.
  absl::StatusOr<std::vector<int64_t>> Sample(const at::Tensor& logits,
                                              const SamplingOptions& sampling,
                                              int64_t step) const;

  // A forward of T tokens per row of `storage` (a KvCache::storage() of
  // batch B, lengths untouched): one decode step per row when T is 1 (B
  // rows: batched decode), a padded prompt chunk when B is 1. Its tensor
  // shapes do not depend on the positions, for CUDA-graph capture: reads
  // io.token, io.position and io.rope_offset on the device, computes RoPE
  // from the positions plus the offsets, writes row b's K/V at positions
  // [position[b], position[b] + T), attends keys [0, span) under a mask
  // computed on the device (token t of row b sees keys j <= position[b] + t,
  // within each layer's sliding window), and writes each row's logits into
  // io.logits (if defined). Needs position + T <= capacity and T <= span <=
  // capacity; keys a token may see beyond the span are ignored; positions are
  // not checked (never read on the host). No host synchronization and no
  // data-dependent shapes: capturable. Same results as Forward up to the order
  // of floating-point reductions. `kernels` (optional) replaces some op chains
  // with fused kernels.
  absl::Status StaticDecodeStep(
      const StaticDecodeIo& io, const at::Tensor& storage, int64_t span,
      const DecodeStepKernels* kernels = nullptr) const;

  // Installs (or, with nullptr, removes) a batch-1 decode accelerator (see
  // DecodeAccelerator). Not thread-safe: call before sharing the decoder.
  void SetDecodeAccelerator(std::shared_ptr<DecodeAccelerator> accelerator) {
    accelerator_ = std::move(accelerator);
  }
  DecodeAccelerator* decode_accelerator() const { return accelerator_.get(); }
  // The installed accelerators themselves (to chain one behind another).
  std::shared_ptr<DecodeAccelerator> shared_decode_accelerator() const {
    return accelerator_;
  }
  std::shared_ptr<PrefillAccelerator> shared_prefill_accelerator() const {
    return prefill_accelerator_;
  }
  // Installs (or removes) the pool that NewCache draws batch-1 caches from
  // (batched_decode.h). Not thread-safe: call before sharing the decoder.
  void SetSlotPool(std::shared_ptr<KvSlotPool> pool) {
    slot_pool_ = std::move(pool);
  }
  KvSlotPool* slot_pool() const { return slot_pool_.get(); }
  // Likewise for prompt prefills (see PrefillAccelerator).
  void SetPrefillAccelerator(std::shared_ptr<PrefillAccelerator> accelerator) {
    prefill_accelerator_ = std::move(accelerator);
  }
  PrefillAccelerator* prefill_accelerator() const {
    return prefill_accelerator_.get();
  }

 private:
  struct Impl;
  Decoder(ModelConfig config, DecoderOptions options);

  // `rope_positions` (batch 1 only; null: length + rope_offset + t) are
  // PrefillAt's explicit positions; with them no accelerator is used.
  absl::StatusOr<at::Tensor> Forward(
      const std::vector<std::vector<int64_t>>& tokens, KvCache& cache,
      const LayerCallback* on_layer, LogitsMode logits,
      const std::vector<int64_t>* rope_positions = nullptr) const;
  absl::StatusOr<std::vector<GenerationResult>> GenerateRows(
      KvCache& cache, const std::vector<std::vector<int64_t>>& pending,
      const GenerationOptions& options) const;

  ModelConfig config_;
  DecoderOptions options_;
  std::unique_ptr<Impl> impl_;
  std::shared_ptr<DecodeAccelerator> accelerator_;
  std::shared_ptr<PrefillAccelerator> prefill_accelerator_;
  std::shared_ptr<KvSlotPool> slot_pool_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_DECODER_H_
