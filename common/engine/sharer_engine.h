// SharerEngine: the sharer's whole model side, used by the sharer service and
// by the in-process pipeline alike. It owns the sharer model (loaded once,
// with its CUDA-graph accelerators and its ModelInfo), runs the prefill of
// a batch of Share requests and hands each layer's encoded KvChunks to each
// request's ChunkSink as soon as the layer is computed (compute on the
// calling thread, the codec on one encoder thread per request, sending on
// the sink's side), and generates for Sharer.Generate. The header is
// Torch-free (Decoder and KvCache are only forward-declared), so the gRPC
// handlers never include Torch.
#ifndef KVWIRE_COMMON_ENGINE_SHARER_ENGINE_H_
#define KVWIRE_COMMON_ENGINE_SHARER_ENGINE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/engine/model_loading.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

class Decoder;
class KvCache;

// Where an engine delivers one stream. Implemented by the transport;
// called from the engine's threads.
class ChunkSink {
 public:
  virtual ~ChunkSink() = default;
  // Queues `chunks` for sending after everything queued before. May block
  // while too much is queued (backpressure). A non-OK result (CANCELLED,
  // DEADLINE_EXCEEDED) means the call is over: stop and return it.
  virtual absl::Status Send(std::vector<v1::KvChunk> chunks) = 0;
  // OK while the call is alive; otherwise why it ended. Cheap.
  virtual absl::Status Alive() const = 0;
};

// What one Share produced (for metrics and logs).
struct ShareReport {
  // "bf16", "int8", ... when every sent layer used that scheme; "mixed".
  std::string scheme_label;
  int64_t prompt_tokens = 0;
  int64_t selected_tokens = 0;  // Per layer.
  int64_t layers = 0;
  int64_t raw_bytes = 0;
  int64_t payload_bytes = 0;
  int64_t serialized_bytes = 0;    // Every KvChunk, trailer included.
  int64_t messages = 0;            // KvChunks, trailer included.
  double compute_seconds = 0;      // Prefill wall time (whole batch).
  int64_t batch_size = 1;          // Requests prefilled together.
  double encode_seconds = 0;       // Codec time (overlaps compute).
  double first_layer_seconds = 0;  // Share start -> first block queued.
};

// A sink over a function, for in-process consumers (the pipeline, tests):
// each chunk goes to `send` in order; its first error ends the stream.
class CallbackChunkSink final : public ChunkSink {
 public:
  explicit CallbackChunkSink(std::function<absl::Status(v1::KvChunk)> send)
      : send_(std::move(send)) {}
  absl::Status Send(std::vector<v1::KvChunk> chunks) override;
  absl::Status Alive() const override;

 private:
  std::function<absl::Status(v1::KvChunk)> send_;
  std::mutex send_mu_;
  mutable std::mutex error_mu_;
  absl::Status error_;
};

// One request of a (possibly batched) Share: nothing is owned.
struct ShareTask {
  const v1::ShareRequest* request = nullptr;
  ChunkSink* sink = nullptr;
  ShareReport* report = nullptr;  // May be null.
};

struct SharerEngineOptions {
  // The model (dir, dtype, device, intra-op threads per worker).
  ModelLoadOptions model;
  // Longest prompt accepted (also capped by max_position_embeddings).
  int64_t max_prompt_tokens = 8192;
  // Most tokens one Generate call may ask for (SharerInfo.max_new_tokens).
  uint32_t max_new_tokens = 1024;
  // With a CUDA model: copy each layer's K/V to the host and encode there
  // (the fused CPU quantizer) instead of quantizing on the GPU.
  bool encode_on_cpu = true;
  // Test hook: sleep this long after each layer is computed, in Share and
  // in Generate's prefill (makes deadlines, overload and draining
  // observable with tiny models).
  absl::Duration testing_layer_delay = absl::ZeroDuration();
};

class SharerEngine {
 public:
  // Loads the model (LoadModel: dtype, device, CUDA graphs) and describes
  // it (DescribeModel: the fingerprint of its directory). Errors from the
  // loader (NOT_FOUND, INVALID_ARGUMENT, UNIMPLEMENTED) naming the
  // directory; INVALID_ARGUMENT for bad dtype/device names.
  static absl::StatusOr<std::unique_ptr<SharerEngine>> Load(
      const SharerEngineOptions& options);
  ~SharerEngine();
  SharerEngine(const SharerEngine&) = delete;
  SharerEngine& operator=(const SharerEngine&) = delete;

  // What GetInfo returns: model, fingerprint, limits, supported encodings.
  const v1::SharerInfo& info() const { return info_; }
  const Decoder& model() const { return *decoder_; }

  // Runs each task's request (already validated with ValidateShareRequest)
  // and sends its header, blocks and trailer to its sink, computing all of
  // them in one batched prefill (right-padded to the longest prompt; one
  // task: exactly Decoder::Prefill). A task stops being encoded once its
  // sink.Alive() fails; the prefill stops between layers when every task
  // has. Returns one status per task: OK, the sink's CANCELLED /
  // DEADLINE_EXCEEDED, the codec's INVALID_ARGUMENT / RESOURCE_EXHAUSTED,
  // INTERNAL for model failures. Thread-safe: workers call it concurrently.
  std::vector<absl::Status> ShareBatch(const std::vector<ShareTask>& tasks);

  // One request.
  absl::Status Share(const v1::ShareRequest& request, ChunkSink& sink,
                     ShareReport* report = nullptr) {
    return ShareBatch({ShareTask{&request, &sink, report}}).front();
  }

  // The same stream from a cache of this model already prefilled with the
  // request's tokens (row 0), without running the model: for in-process
  // callers that needed the sharer's cache before choosing what to send.
  // The request's token_ids only count (their number is the stream's
  // token count). Same errors as Share.
  absl::Status ShareFromCache(const KvCache& cache,
                              const v1::ShareRequest& request, ChunkSink& sink,
                              ShareReport* report = nullptr) const;

  // Generates after request.token_ids (already validated with
  // ValidateGenerateRequest) on the sharer model: a ReceiverSession without
  // a fuser (a prefill of all but the last id, then the last id and
  // sampling), exactly as the in-process pipeline's text-to-text step.
  // `alive` is polled before the prefill, after each prefill layer and before
  // each decode step; its error ends the call. INTERNAL for model failures.
  // Thread-safe.
  absl::StatusOr<v1::GenerateResponse> Generate(
      const v1::GenerateRequest& request,
      const std::function<absl::Status()>& alive) const;

 private:
  struct Row;
  SharerEngine(std::unique_ptr<Decoder> decoder, v1::SharerInfo info,
               const SharerEngineOptions& options);
  void ConfigureThread() const;
  // Sleeps options_.testing_layer_delay while `alive` is OK.
  void TestingLayerDelay(const std::function<absl::Status()>& alive) const;
  // Creates a row's encoder and sends its header; nullptr with `*status`
  // set when the request cannot start.
  std::unique_ptr<Row> StartRow(const ShareTask& task, size_t index,
                                absl::Status* status) const;
  absl::Status FinishRow(Row& row, const absl::Status& prefill,
                         double compute_seconds, int64_t batch_size,
                         std::chrono::steady_clock::time_point start) const;
  std::vector<absl::Status> ShareBatchImpl(const std::vector<ShareTask>& tasks);

  std::unique_ptr<Decoder> decoder_;
  v1::SharerInfo info_;
  SharerEngineOptions options_;
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_ENGINE_SHARER_ENGINE_H_
