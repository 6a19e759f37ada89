// SharerEngine: Decoder prefill with a per-layer callback that hands each
// computed layer to an encoder thread, which runs the codec and queues the
// layer's KvChunks on the sink. Compute (this worker thread), encoding (the
// encoder thread) and sending (the sink's side: gRPC's threads, or the
// in-process receiver) therefore overlap.
#include "common/engine/sharer_engine.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/codec/kv_codec.h"
#include "common/codec/scheme.h"
#include "common/engine/model_loading.h"
#include "common/engine/receiver_session.h"
#include "common/model/decoder.h"
#include "common/protocol/request_validation.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {
namespace {

// Computed layers waiting for the encoder thread. The tensors are views
// into the request's KV cache, which outlives the thread.
class LayerPipe {
 public:
  using Item = LayerTensors;

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
  // Every item queued so far (waiting for one); empty once closed and
  // drained. Layers that queued up while the encoder was busy (or that a
  // CUDA-graph prefill hands over all at once) are then encoded together.
  std::vector<Item> PopAll() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return closed_ || !items_.empty(); });
    std::vector<Item> items(std::make_move_iterator(items_.begin()),
                            std::make_move_iterator(items_.end()));
    items_.clear();
    return items;
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

}  // namespace

absl::Status CallbackChunkSink::Send(std::vector<v1::KvChunk> chunks) {
  // In order, one call at a time; Alive() does not wait for a send in
  // progress (the prefill polls it between layers).
  std::lock_guard<std::mutex> send_lock(send_mu_);
  for (v1::KvChunk& chunk : chunks) {
    RETURN_IF_ERROR(Alive());
    absl::Status status = send_(std::move(chunk));
    if (!status.ok()) {
      std::lock_guard<std::mutex> lock(error_mu_);
      error_ = status;
      return status;
    }
  }
  return absl::OkStatus();
}

absl::Status CallbackChunkSink::Alive() const {
  std::lock_guard<std::mutex> lock(error_mu_);
  return error_;
}

// One request of a batch: its encoder, its encoder thread and counters.
struct SharerEngine::Row {
  const ShareTask* task = nullptr;
  size_t index = 0;  // In `tasks`.
  std::unique_ptr<KvStreamEncoder> encoder;
  std::vector<int64_t> ids;
  LayerPipe pipe;
  std::thread thread;
  bool dead = false;  // Stopped: sink gone or encoder failed.
  v1::KvHeader header;
  int64_t serialized = 0;
  int64_t messages = 0;
  double first_layer_seconds = -1;

  absl::Status Send(std::vector<v1::KvChunk> chunks) {
    for (const v1::KvChunk& c : chunks) {
      serialized += static_cast<int64_t>(c.ByteSizeLong());
      if (c.has_header()) header = c.header();
    }
    messages += static_cast<int64_t>(chunks.size());
    return task->sink->Send(std::move(chunks));
  }

  // Encodes computed layers and sends their chunks (`to_cpu`: CUDA layers
  // are copied to the host first).
  absl::Status EncodeLayers(std::vector<LayerTensors> layers, bool to_cpu,
                            std::chrono::steady_clock::time_point start) {
    std::vector<v1::KvChunk> out;
    RETURN_IF_ERROR(Guarded("encoding", [&]() -> absl::Status {
      for (LayerTensors& l : layers) {
        if (to_cpu && l.keys.is_cuda()) {
          // One device-to-host copy per tensor (ordered after the layer's
          // compute on the stream), then the fused CPU quantizer.
          l.keys = l.keys.to(at::kCPU);
          l.values = l.values.to(at::kCPU);
        }
      }
      return encoder->AddLayers(layers, &out);
    }));
    if (out.empty()) return absl::OkStatus();
    RETURN_IF_ERROR(Send(std::move(out)));
    if (first_layer_seconds < 0) first_layer_seconds = SecondsSince(start);
    return absl::OkStatus();
  }

  // Encodes the layers as the prefill hands them over (the encoder thread).
  void EncoderLoop(bool to_cpu, std::chrono::steady_clock::time_point start) {
    // The cache views come from an inference-mode forward.
    c10::InferenceMode inference_mode;
    for (std::vector<LayerTensors> layers = pipe.PopAll(); !layers.empty();
         layers = pipe.PopAll()) {
      if (!pipe.error().ok()) continue;  // Drain without work.
      absl::Status status = EncodeLayers(std::move(layers), to_cpu, start);
      if (!status.ok()) pipe.Fail(std::move(status));
    }
  }
};

SharerEngine::SharerEngine(std::unique_ptr<Decoder> decoder,
                           v1::SharerInfo info,
                           const SharerEngineOptions& options)
    : decoder_(std::move(decoder)), info_(std::move(info)), options_(options) {}

SharerEngine::~SharerEngine() = default;

absl::StatusOr<std::unique_ptr<SharerEngine>> SharerEngine::Load(
    const SharerEngineOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<Decoder> decoder, LoadModel(options.model));
  v1::SharerInfo info;
  *info.mutable_model() = DescribeModel(*decoder, options.model.dir);
  for (v1::Scheme scheme : SupportedSchemes()) info.add_schemes(scheme);
  for (int g = v1::GRANULARITY_PER_LAYER; g <= v1::GRANULARITY_KIVI; ++g) {
    info.add_granularities(static_cast<v1::Granularity>(g));
  }
  for (int s = v1::SELECTION_ALL; s <= v1::SELECTION_EXPLICIT; ++s) {
    info.add_selection_modes(static_cast<v1::SelectionMode>(s));
  }
  const ModelConfig& c = decoder->config();
  int64_t max_tokens = options.max_prompt_tokens;
  if (c.max_position_embeddings > 0) {
    max_tokens = std::min<int64_t>(max_tokens, c.max_position_embeddings);
  }
  info.set_max_prompt_tokens(
      static_cast<uint32_t>(std::max<int64_t>(max_tokens, 1)));
  info.set_version(KVWIRE_VERSION);  // CMake defines it.
  info.set_max_new_tokens(options.max_new_tokens);
  info.set_accepts_positions(true);
  return std::unique_ptr<SharerEngine>(
      new SharerEngine(std::move(decoder), std::move(info), options));
}

absl::StatusOr<v1::GenerateResponse> SharerEngine::Generate(
    const v1::GenerateRequest& request,
    const std::function<absl::Status()>& alive) const {
  return Guarded("sharer", [&]() -> absl::StatusOr<v1::GenerateResponse> {
    ConfigureThread();
    RETURN_IF_ERROR(alive());
    ASSIGN_OR_RETURN(
        auto session,
        ReceiverSession::Create(
            decoder_.get(), /*fuser=*/nullptr,
            std::vector<int64_t>(request.token_ids().begin(),
                                 request.token_ids().end()),
            ToGenerationOptions(request.generation()).max_new_tokens));
    // Asked after every prefill layer: a long prompt stops within a layer of
    // its call ending.
    RETURN_IF_ERROR(session->Prefill([&] {
      TestingLayerDelay(alive);
      return alive();
    }));
    ASSIGN_OR_RETURN(
        GenerationResult result,
        session->Generate(ToGenerationOptions(request.generation()), nullptr,
                          alive));
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
  });
}

void SharerEngine::TestingLayerDelay(
    const std::function<absl::Status()>& alive) const {
  // Interruptible, so that cancelled calls stop promptly.
  for (absl::Duration left = options_.testing_layer_delay;
       left > absl::ZeroDuration() && alive().ok();
       left -= absl::Milliseconds(5)) {
    absl::SleepFor(std::min(left, absl::Milliseconds(5)));
  }
}

void SharerEngine::ConfigureThread() const {
  // OpenMP's thread count is per calling thread: set it on each worker.
  thread_local bool configured = false;
  if (!configured && options_.model.intra_op_threads > 0) {
    at::set_num_threads(options_.model.intra_op_threads);
  }
  configured = true;
}

std::vector<absl::Status> SharerEngine::ShareBatch(
    const std::vector<ShareTask>& tasks) {
  std::vector<absl::Status> statuses;
  absl::Status failed = Guarded("sharer model", [&]() -> absl::Status {
    // A request at explicit positions (C2C token alignment) runs alone: the
    // batched prefill right-pads rows that all start at position 0.
    std::vector<ShareTask> contiguous;
    std::vector<size_t> contiguous_index;
    statuses.resize(tasks.size());
    for (size_t i = 0; i < tasks.size(); ++i) {
      if (tasks[i].request->positions_size() > 0) {
        statuses[i] = ShareBatchImpl({tasks[i]}).front();
      } else {
        contiguous.push_back(tasks[i]);
        contiguous_index.push_back(i);
      }
    }
    if (contiguous.empty()) return absl::OkStatus();
    std::vector<absl::Status> batch = ShareBatchImpl(contiguous);
    for (size_t j = 0; j < batch.size(); ++j) {
      statuses[contiguous_index[j]] = std::move(batch[j]);
    }
    return absl::OkStatus();
  });
  if (!failed.ok()) statuses.assign(tasks.size(), failed);
  return statuses;
}

std::unique_ptr<SharerEngine::Row> SharerEngine::StartRow(
    const ShareTask& task, size_t index, absl::Status* status) const {
  const v1::ShareRequest& request = *task.request;
  auto row = std::make_unique<Row>();
  row->task = &task;
  row->index = index;
  row->ids.assign(request.token_ids().begin(), request.token_ids().end());
  *status = task.sink->Alive();
  if (status->ok()) {
    auto encoder = KvStreamEncoder::Create(
        info_.model(), static_cast<uint32_t>(row->ids.size()), request.spec(),
        request.request_id());
    *status = encoder.status();
    if (encoder.ok()) row->encoder = *std::move(encoder);
  }
  if (status->ok()) {
    std::vector<v1::KvChunk> out;
    *status = row->encoder->Start(&out);
    if (status->ok() && !out.empty()) *status = row->Send(std::move(out));
  }
  if (!status->ok()) return nullptr;
  return row;
}

std::vector<absl::Status> SharerEngine::ShareBatchImpl(
    const std::vector<ShareTask>& tasks) {
  const auto start = std::chrono::steady_clock::now();
  ConfigureThread();
  std::vector<absl::Status> statuses(tasks.size());
  std::vector<std::unique_ptr<Row>> rows;
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (auto row = StartRow(tasks[i], i, &statuses[i])) {
      rows.push_back(std::move(row));
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
      r->EncoderLoop(options_.encode_on_cpu, start);
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
      TestingLayerDelay([&] {
        for (const auto& row : rows) {
          if (row->task->sink->Alive().ok()) return absl::OkStatus();
        }
        return absl::CancelledError("every request of the batch ended");
      });
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
  const auto& positions = rows[0]->task->request->positions();
  if (rows.size() == 1 && !positions.empty()) {
    const std::vector<int64_t> at(positions.begin(), positions.end());
    prefill =
        decoder_
            ->PrefillAt(rows[0]->ids, at, *cache, on_layer, LogitsMode::kNone)
            .status();
  } else if (rows.size() == 1) {
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
    statuses[row->index] = FinishRow(*row, prefill, compute_seconds,
                                     static_cast<int64_t>(rows.size()), start);
  }
  return statuses;
}

absl::Status SharerEngine::ShareFromCache(const KvCache& cache,
                                          const v1::ShareRequest& request,
                                          ChunkSink& sink,
                                          ShareReport* report) const {
  return Guarded("sharer", [&]() -> absl::Status {
    const auto start = std::chrono::steady_clock::now();
    const ShareTask task{&request, &sink, report};
    absl::Status status;
    std::unique_ptr<Row> row = StartRow(task, 0, &status);
    RETURN_IF_ERROR(status);
    const uint32_t total = static_cast<uint32_t>(row->ids.size());
    std::vector<LayerTensors> layers;
    for (int64_t l = 0; l < cache.num_layers(); ++l) {
      ASSIGN_OR_RETURN(auto kv, cache.Read(l, 0, total));
      layers.push_back({static_cast<uint32_t>(l), kv.first, kv.second});
    }
    RETURN_IF_ERROR(
        row->EncodeLayers(std::move(layers), options_.encode_on_cpu, start));
    return FinishRow(*row, absl::OkStatus(), 0.0, 1, start);
  });
}

absl::Status SharerEngine::FinishRow(
    Row& row, const absl::Status& prefill, double compute_seconds,
    int64_t batch_size, std::chrono::steady_clock::time_point start) const {
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
    report->scheme_label = SchemeLabel(row.header);
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

}  // namespace kvwire
