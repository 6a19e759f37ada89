// The sharer's model side behind a small Torch-free interface, so that the
// gRPC handlers never include Torch: an engine runs the prefill of one
// request and hands each layer's encoded KvChunks to a ChunkSink as soon as
// the layer is computed.
#ifndef KVWIRE_SHARER_SERVICE_SHARER_ENGINE_H_
#define KVWIRE_SHARER_SERVICE_SHARER_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

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

// One request of a (possibly batched) Share: nothing is owned.
struct ShareTask {
  const v1::ShareRequest* request = nullptr;
  ChunkSink* sink = nullptr;
  ShareReport* report = nullptr;  // May be null.
};

class SharerEngine {
 public:
  virtual ~SharerEngine() = default;

  // What GetInfo returns: model, fingerprint, limits, supported encodings.
  virtual const v1::SharerInfo& info() const = 0;

  // Runs each task's request (already validated with ValidateShareRequest)
  // and sends its header, blocks and trailer to its sink, computing all of
  // them in one batched prefill (right-padded to the longest prompt; one
  // task: exactly Decoder::Prefill). A task stops being encoded once its
  // sink.Alive() fails; the prefill stops between layers when every task
  // has. Returns one status per task: OK, the sink's CANCELLED /
  // DEADLINE_EXCEEDED, the codec's INVALID_ARGUMENT / RESOURCE_EXHAUSTED,
  // INTERNAL for model failures. Thread-safe: workers call it concurrently.
  virtual std::vector<absl::Status> ShareBatch(
      const std::vector<ShareTask>& tasks) = 0;

  // Generates after request.token_ids (already validated with
  // ValidateGenerateRequest) on the sharer model, exactly as C2cPipeline's
  // text-to-text step does (ReceiverSession without a fuser: a prefill of
  // all but the last id, then the last id and sampling). `alive` is polled
  // before the prefill and before each decode step; its error ends the
  // call. INTERNAL for model failures. Thread-safe.
  virtual absl::StatusOr<v1::GenerateResponse> Generate(
      const v1::GenerateRequest& request,
      const std::function<absl::Status()>& alive) = 0;

  // One request.
  absl::Status Share(const v1::ShareRequest& request, ChunkSink& sink,
                     ShareReport* report) {
    return ShareBatch({ShareTask{&request, &sink, report}}).front();
  }
};

struct SharerEngineOptions {
  std::string model_dir;
  // "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp16" or "fp32".
  std::string dtype = "auto";
  // "cpu", "cuda", "cuda:N".
  std::string device = "cpu";
  // Longest prompt accepted (also capped by max_position_embeddings).
  int64_t max_prompt_tokens = 8192;
  // Most tokens one Generate call may ask for (SharerInfo.max_new_tokens).
  uint32_t max_new_tokens = 1024;
  // With a CUDA model: copy each layer's K/V to the host and encode there
  // (the fused CPU quantizer) instead of quantizing on the GPU.
  bool encode_on_cpu = true;
  // Intra-op threads per worker (0: LibTorch's default).
  int intra_op_threads = 0;
  // Test hook: sleep this long after each layer is computed (makes
  // deadlines, overload and draining observable with tiny models).
  absl::Duration testing_layer_delay = absl::ZeroDuration();
};

// Loads the model (Decoder::Load) and computes its fingerprint. Errors from
// the loader (NOT_FOUND, INVALID_ARGUMENT, UNIMPLEMENTED) naming the
// directory; INVALID_ARGUMENT for bad dtype/device names.
absl::StatusOr<std::unique_ptr<SharerEngine>> LoadSharerEngine(
    const SharerEngineOptions& options);

}  // namespace kvwire

#endif  // KVWIRE_SHARER_SERVICE_SHARER_ENGINE_H_
