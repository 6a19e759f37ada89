// Decoder-only transformer runtime (Qwen2, Qwen3, Llama) over LibTorch,
// numerically following Hugging Face transformers: RMSNorm computed in fp32
// and cast back before the weight multiply, RoPE with HF's rotate-half
// convention (cos/sin computed in fp32, then cast to the model dtype),
// grouped-query attention with a causal mask and an fp32 softmax, SwiGLU MLP,
// optional tied embeddings. Logits are computed in the model dtype and
// returned as fp32, as HF's generate() does.
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
};

// Per-batch KV cache. Create with Decoder::NewCache. Copies are shallow:
// they share the storage tensor (but not the lengths).
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
  // beyond the old length keep whatever they hold.
  absl::Status SetLength(int64_t row, int64_t length);
  // All rows back to length 0.
  void Clear();

  // [layers, 2, batch, kv_heads, capacity, head_dim].
  const at::Tensor& storage() const { return storage_; }

 private:
  friend class Decoder;
  at::Tensor storage_;
  std::vector<int64_t> lengths_;
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
  absl::StatusOr<KvCache> NewCache(int64_t capacity, int64_t batch = 1) const;

  // Runs `token_ids` through the model at positions cache.length(0)...,
  // appending their K/V to row 0 of `cache` (capacity permitting).
  // Returns logits (fp32, model device): kLast -> [vocab]; kAll ->
  // [tokens, vocab].
  absl::StatusOr<at::Tensor> Prefill(
      absl::Span<const int64_t> token_ids, KvCache& cache,
      const LayerCallback& on_layer = nullptr,
      LogitsMode logits = LogitsMode::kLast) const;
  // One token at position cache.length(0); returns logits [vocab].
  absl::StatusOr<at::Tensor> DecodeStep(int64_t token_id, KvCache& cache) const;

  // Batched forward: row b of `cache` gets tokens[b] (each non-empty) at
  // positions cache.length(b)...; rows are right-padded internally, so each
  // row needs length(b) + max_b(tokens[b].size()) <= capacity. Returns
  // kLast -> [batch, vocab]; kAll -> [batch, max_tokens, vocab] (positions
  // past a row's own count are padding garbage).
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

 private:
  struct Impl;
  Decoder(ModelConfig config, DecoderOptions options);

  absl::StatusOr<at::Tensor> Forward(
      const std::vector<std::vector<int64_t>>& tokens, KvCache& cache,
      const LayerCallback* on_layer, LogitsMode logits) const;
  absl::StatusOr<std::vector<GenerationResult>> GenerateRows(
      KvCache& cache, const std::vector<std::vector<int64_t>>& pending,
      const GenerationOptions& options) const;

  ModelConfig config_;
  DecoderOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_MODEL_DECODER_H_
