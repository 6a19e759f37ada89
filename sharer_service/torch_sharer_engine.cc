// The LibTorch SharerEngine: Decoder prefill with a per-layer callback that
// hands each computed layer to an encoder thread, which runs the codec and
// queues the layer's KvChunks on the sink. Compute (this worker thread),
// encoding (the encoder thread) and sending (gRPC's threads, fed by the
// sink) therefore overlap.
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/codec/kv_codec.h"
#include "common/codec/scheme.h"
#include "common/file_util.h"
#include "common/model/decoder.h"
#include "common/model/model_fingerprint.h"
#include "common/model/safetensors.h"
#include "common/pipeline/receiver_session.h"
#include "common/status_macros.h"

#ifdef KVWIRE_WITH_CUDA
#include "common/model/cuda_graph_decoder.h"
#endif
#include "sharer_service/sharer_engine.h"

namespace kvwire {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

// Computed layers waiting for the encoder thread. The tensors are views
// into the request's KV cache, which outlives the thread.
class LayerPipe {
 public:
  struct Item {
    uint32_t layer;
    at::Tensor keys;
    at::Tensor values;
  };

  void Push(Item item) {
    std::lock_guard<std::mutex> lock(mu_);
    items_.push_back(std::move(item));
    cv_.notify_one();
  }
  // No more items will come.
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    cv_.notify_one();
  }
  std::optional<Item> Pop() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return closed_ || !items_.empty(); });
    if (items_.empty()) return std::nullopt;
    Item item = std::move(items_.front());
    items_.pop_front();
    return item;
  }
  // First error of the encoder side; OK while none.
  void Fail(absl::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok()) error_ = std::move(status);
  }
  absl::Status error() const {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> items_;
  bool closed_ = false;
  absl::Status error_;
};

v1::DType ToWireDType(at::ScalarType type) {
  switch (type) {
    case at::kBFloat16:
      return v1::DTYPE_BF16;
    case at::kHalf:
      return v1::DTYPE_FP16;
    case at::kFloat:
      return v1::DTYPE_FP32;
    default:
      return v1::DTYPE_UNSPECIFIED;
  }
}

std::string SchemeLabelOf(const TransferPlan& plan) {
  if (plan.layers.empty()) return "none";
  for (const LayerTransfer& lt : plan.layers) {
    if (lt.scheme != plan.layers.front().scheme) return "mixed";
  }
  return SchemeName(plan.layers.front().scheme);
}

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

class TorchSharerEngine final : public SharerEngine {
 public:
  TorchSharerEngine(std::unique_ptr<Decoder> decoder, v1::SharerInfo info,
                    const SharerEngineOptions& options)
      : decoder_(std::move(decoder)),
        info_(std::move(info)),
        options_(options) {}

  const v1::SharerInfo& info() const override { return info_; }

  absl::StatusOr<v1::GenerateResponse> Generate(
      const v1::GenerateRequest& request,
      const std::function<absl::Status()>& alive) override {
    try {
      return GenerateImpl(request, alive);
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("sharer model: ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("sharer: ", e.what()));
    }
  }

  std::vector<absl::Status> ShareBatch(
      const std::vector<ShareTask>& tasks) override {
    try {
      return ShareBatchImpl(tasks);
    } catch (const c10::Error& e) {
      return std::vector<absl::Status>(
          tasks.size(), absl::InternalError(absl::StrCat(
                            "sharer model: ", e.what_without_backtrace())));
    } catch (const std::exception& e) {
      return std::vector<absl::Status>(
          tasks.size(),
          absl::InternalError(absl::StrCat("sharer: ", e.what())));
    }
  }

 private:
  // One request of a batch: its encoder, its encoder thread and counters.
  struct Row {
    const ShareTask* task = nullptr;
    size_t index = 0;  // In `tasks`.
    std::unique_ptr<KvStreamEncoder> encoder;
    std::vector<int64_t> ids;
    LayerPipe pipe;
    std::thread thread;
    bool dead = false;  // Stopped: sink gone or encoder failed.
    int64_t serialized = 0;
    int64_t messages = 0;
    double first_layer_seconds = -1;

    absl::Status Send(std::vector<v1::KvChunk> chunks) {
      for (const v1::KvChunk& c : chunks) {
        serialized += static_cast<int64_t>(c.ByteSizeLong());
      }
      messages += static_cast<int64_t>(chunks.size());
      return task->sink->Send(std::move(chunks));
    }
  };

  absl::StatusOr<v1::GenerateResponse> GenerateImpl(
      const v1::GenerateRequest& request,
      const std::function<absl::Status()>& alive) {
    ConfigureThread();
    RETURN_IF_ERROR(alive());
    const GenerationOptions options = ToGenerationOptions(request.generation());
    ASSIGN_OR_RETURN(auto session,
                     ReceiverSession::Create(
                         decoder_.get(), /*fuser=*/nullptr,
                         std::vector<int64_t>(request.token_ids().begin(),
                                              request.token_ids().end()),
                         options.max_new_tokens));
    RETURN_IF_ERROR(session->Prefill());
    ASSIGN_OR_RETURN(GenerationResult result,
                     session->Generate(options, nullptr, alive));
    v1::GenerateResponse response;
    response.set_request_id(request.request_id());
    for (int64_t id : result.tokens) {
      response.add_token_ids(static_cast<uint32_t>(id));
    }
    response.set_stopped_at_eos(result.finish_reason == FinishReason::kEos);
    response.set_prompt_tokens(static_cast<uint32_t>(request.token_ids_size()));
    response.set_prefill_seconds(session->timings().prefill_seconds);
    response.set_generation_seconds(session->timings().ttft_seconds +
                                    session->timings().generation_seconds);
    return response;
  }

  void ConfigureThread() const {
    // OpenMP's thread count is per calling thread: set it on each worker.
    thread_local bool configured = false;
    if (!configured && options_.intra_op_threads > 0) {
      at::set_num_threads(options_.intra_op_threads);
    }
    configured = true;
  }

  // Encodes one row's layers as the prefill hands them over.
  static void EncoderLoop(Row& row, bool to_cpu,
                          std::chrono::steady_clock::time_point start) {
    // The cache views come from an inference-mode forward.
    c10::InferenceMode inference_mode;
    while (std::optional<LayerPipe::Item> item = row.pipe.Pop()) {
      if (!row.pipe.error().ok()) continue;  // Drain without work.
      std::vector<v1::KvChunk> out;
      absl::Status status;
      try {
        at::Tensor keys = item->keys;
        at::Tensor values = item->values;
        if (to_cpu && keys.is_cuda()) {
          // One device-to-host copy per tensor (ordered after the layer's
          // compute on the stream), then the fused CPU quantizer: cheaper
          // than many small GPU kernels and syncs per block.
          keys = keys.to(at::kCPU);
          values = values.to(at::kCPU);
        }
        status = row.encoder->AddLayer(item->layer, keys, values, &out);
      } catch (const c10::Error& e) {
        status = absl::InternalError(
            absl::StrCat("encoding: ", e.what_without_backtrace()));
      }
      if (status.ok() && !out.empty()) {
        status = row.Send(std::move(out));
        if (row.first_layer_seconds < 0) {
          row.first_layer_seconds = SecondsSince(start);
        }
      }
      if (!status.ok()) row.pipe.Fail(std::move(status));
    }
  }

  std::vector<absl::Status> ShareBatchImpl(
      const std::vector<ShareTask>& tasks) {
    const auto start = std::chrono::steady_clock::now();
    ConfigureThread();
    std::vector<absl::Status> statuses(tasks.size());
    std::vector<std::unique_ptr<Row>> rows;
    for (size_t i = 0; i < tasks.size(); ++i) {
      const v1::ShareRequest& request = *tasks[i].request;
      auto row = std::make_unique<Row>();
      row->task = &tasks[i];
      row->index = i;
      row->ids.assign(request.token_ids().begin(), request.token_ids().end());
      absl::Status status = tasks[i].sink->Alive();
      if (status.ok()) {
        auto encoder = KvStreamEncoder::Create(
            info_.model(), static_cast<uint32_t>(row->ids.size()),
            request.spec(), request.request_id());
        status = encoder.status();
        if (encoder.ok()) row->encoder = *std::move(encoder);
      }
      if (status.ok()) {
        std::vector<v1::KvChunk> out;
        status = row->encoder->Start(&out);
        if (status.ok() && !out.empty()) status = row->Send(std::move(out));
      }
      if (status.ok()) {
        rows.push_back(std::move(row));
      } else {
        statuses[i] = std::move(status);
      }
    }
    if (rows.empty()) return statuses;

    int64_t width = 0;
    std::vector<std::vector<int64_t>> tokens;
    for (const auto& row : rows) {
      width = std::max<int64_t>(width, static_cast<int64_t>(row->ids.size()));
      tokens.push_back(row->ids);
    }
    auto cache = decoder_->NewCache(width, static_cast<int64_t>(rows.size()));
    if (!cache.ok()) {
      for (const auto& row : rows) statuses[row->index] = cache.status();
      return statuses;
    }
    for (auto& row : rows) {
      row->thread = std::thread([r = row.get(), start, this] {
        EncoderLoop(*r, options_.encode_on_cpu, start);
      });
    }

    auto any_alive = [&] {
      for (const auto& row : rows) {
        if (!row->dead) return true;
      }
      return false;
    };
    const LayerCallback on_layer = [&](const LayerKv& kv) -> absl::Status {
      if (kv.row == 0) {
        // Test hook; interruptible so cancelled calls stop promptly.
        for (absl::Duration left = options_.testing_layer_delay;
             left > absl::ZeroDuration(); left -= absl::Milliseconds(5)) {
          bool alive = false;
          for (const auto& row : rows) alive |= row->task->sink->Alive().ok();
          if (!alive) break;
          absl::SleepFor(std::min(left, absl::Milliseconds(5)));
        }
      }
      Row& row = *rows[kv.row];
      if (!row.dead &&
          (!row.pipe.error().ok() || !row.task->sink->Alive().ok())) {
        row.dead = true;
      }
      if (!row.dead) {
        row.pipe.Push({static_cast<uint32_t>(kv.layer), kv.keys, kv.values});
      }
      // Stop computing once nobody is listening.
      if (kv.row + 1 == static_cast<int64_t>(rows.size()) && !any_alive()) {
        return absl::CancelledError("every request of the batch ended");
      }
      return absl::OkStatus();
    };

    const auto compute_start = std::chrono::steady_clock::now();
    absl::Status prefill;
    if (rows.size() == 1) {
      prefill =
          decoder_->Prefill(rows[0]->ids, *cache, on_layer, LogitsMode::kNone)
              .status();
    } else {
      prefill =
          decoder_->PrefillBatch(tokens, *cache, on_layer, LogitsMode::kNone)
              .status();
    }
    const double compute_seconds = SecondsSince(compute_start);
    for (auto& row : rows) row->pipe.Close();
    for (auto& row : rows) row->thread.join();

    for (auto& row : rows) {
      statuses[row->index] =
          FinishRow(*row, prefill, compute_seconds,
                    static_cast<int64_t>(rows.size()), start);
    }
    return statuses;
  }

  absl::Status FinishRow(Row& row, const absl::Status& prefill,
                         double compute_seconds, int64_t batch_size,
                         std::chrono::steady_clock::time_point start) {
    // The encoder side's error (sink gone, codec failure) explains a
    // prefill aborted by it, so it takes precedence.
    RETURN_IF_ERROR(row.pipe.error());
    RETURN_IF_ERROR(row.task->sink->Alive());
    RETURN_IF_ERROR(prefill);
    ASSIGN_OR_RETURN(v1::KvChunk trailer, row.encoder->Finish(compute_seconds));
    const v1::TransferStats stats = trailer.trailer().stats();
    std::vector<v1::KvChunk> last;
    last.push_back(std::move(trailer));
    RETURN_IF_ERROR(row.Send(std::move(last)));
    if (ShareReport* report = row.task->report; report != nullptr) {
      const TransferPlan& plan = row.encoder->plan();
      report->scheme_label = SchemeLabelOf(plan);
      report->prompt_tokens = static_cast<int64_t>(row.ids.size());
      report->selected_tokens = plan.selected_tokens;
      report->layers = static_cast<int64_t>(plan.layers.size());
      report->raw_bytes = static_cast<int64_t>(stats.raw_bytes());
      report->payload_bytes = static_cast<int64_t>(stats.payload_bytes());
      report->serialized_bytes = row.serialized;
      report->messages = row.messages;
      report->compute_seconds = compute_seconds;
      report->batch_size = batch_size;
      report->encode_seconds = row.encoder->encode_seconds();
      report->first_layer_seconds = row.first_layer_seconds < 0
                                        ? SecondsSince(start)
                                        : row.first_layer_seconds;
    }
    return absl::OkStatus();
  }

  std::unique_ptr<Decoder> decoder_;
  v1::SharerInfo info_;
  SharerEngineOptions options_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SharerEngine>> LoadSharerEngine(
    const SharerEngineOptions& options) {
  if (options.model_dir.empty()) {
    return absl::InvalidArgumentError("no model directory given (--model_dir)");
  }
  ASSIGN_OR_RETURN(c10::Device device, ParseModelDevice(options.device));
  at::ScalarType dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  if (options.dtype != "auto") {
    ASSIGN_OR_RETURN(dtype, ParseModelDtype(options.dtype));
  }
  if (options.intra_op_threads > 0) {
    at::set_num_threads(options.intra_op_threads);
  }
  DecoderOptions decoder_options;
  decoder_options.dtype = dtype;
  decoder_options.device = device;
  ASSIGN_OR_RETURN(std::unique_ptr<Decoder> decoder,
                   Decoder::Load(options.model_dir, decoder_options));
#ifdef KVWIRE_WITH_CUDA
  // Batch-1 prefills and Generate's decode steps replay CUDA graphs
  // (KVWIRE_CUDA_GRAPH_PREFILL=0 / KVWIRE_CUDA_GRAPH_DECODE=0: off).
  RETURN_IF_ERROR(InstallCudaGraphAccelerators(*decoder));
#endif
  ASSIGN_OR_RETURN(std::string fingerprint,
                   CheckpointFingerprint(options.model_dir));

  const ModelConfig& c = decoder->config();
  v1::SharerInfo info;
  v1::ModelInfo* m = info.mutable_model();
  m->set_fingerprint(fingerprint);
  m->set_architecture(c.architecture);
  m->set_name(BaseName(options.model_dir));
  m->set_num_layers(static_cast<uint32_t>(c.num_hidden_layers));
  m->set_num_kv_heads(static_cast<uint32_t>(c.num_key_value_heads));
  m->set_head_dim(static_cast<uint32_t>(c.head_dim));
  m->set_dtype(ToWireDType(dtype));
  m->set_vocab_size(static_cast<uint32_t>(c.vocab_size));
  m->set_max_position_embeddings(
      static_cast<uint32_t>(c.max_position_embeddings));
  for (int s = v1::SCHEME_BF16; s <= v1::SCHEME_NF4; ++s) {
    info.add_schemes(static_cast<v1::Scheme>(s));
  }
  for (int g = v1::GRANULARITY_PER_LAYER; g <= v1::GRANULARITY_KIVI; ++g) {
    info.add_granularities(static_cast<v1::Granularity>(g));
  }
  for (int s = v1::SELECTION_ALL; s <= v1::SELECTION_EXPLICIT; ++s) {
    info.add_selection_modes(static_cast<v1::SelectionMode>(s));
  }
  int64_t max_tokens = options.max_prompt_tokens;
  if (c.max_position_embeddings > 0) {
    max_tokens = std::min<int64_t>(max_tokens, c.max_position_embeddings);
  }
  info.set_max_prompt_tokens(
      static_cast<uint32_t>(std::max<int64_t>(max_tokens, 1)));
#ifdef KVWIRE_VERSION
  info.set_version(KVWIRE_VERSION);
  info.set_max_new_tokens(options.max_new_tokens);
#endif
  return std::unique_ptr<SharerEngine>(
      new TorchSharerEngine(std::move(decoder), std::move(info), options));
}

}  // namespace kvwire
