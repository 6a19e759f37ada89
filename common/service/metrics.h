// The process-wide Prometheus metrics of the kvwire services: one registry
// owning every metric family, built once (Triton's metrics.cc pattern), and
// an HTTP exposer for it (`/metrics`). docs/METRICS.md documents every
// family, its labels and example queries.
//
// Hot paths never call Family::Add: they ask Metrics once (at service
// construction) for a handle such as RpcMetrics or TransferMetrics, which
// caches the child metrics it needs, and keep it. Handles stay valid as long
// as their Metrics object. Labels are low-cardinality by construction: role,
// method, code, scheme, stage, reason; never request ids or peers.
//
// Thread-safety: every method of Metrics and of the handles may be called
// from any thread.
#ifndef KVWIRE_COMMON_SERVICE_METRICS_H_
#define KVWIRE_COMMON_SERVICE_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/model/step_batch_stats.h"
#include "common/service/health.h"
#include "common/service/live_stats.h"
#include "common/service/tls_front.h"

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace kvwire {

// Which service records a metric (the `role` label).
enum class ServiceRole { kSharer, kReceiver };
absl::string_view RoleName(ServiceRole role);  // "sharer", "receiver"

// Stage names for kvwire_stage_duration_seconds (the `stage` label). The
// sharer records kStageCompute, kStageEncode, kStageFirstLayer and
// kStageStream; the receiver the others.
inline constexpr absl::string_view kStageCompute = "sharer_compute";
inline constexpr absl::string_view kStageEncode = "encode";
inline constexpr absl::string_view kStageFirstLayer = "first_layer";
inline constexpr absl::string_view kStageStream = "stream";
inline constexpr absl::string_view kStageTransfer = "transfer";
inline constexpr absl::string_view kStageDecode = "decode";
inline constexpr absl::string_view kStageFuse = "fuse";
inline constexpr absl::string_view kStageReceiverPrefill = "receiver_prefill";
inline constexpr absl::string_view kStageGeneration = "generation";

// Per-method RPC metrics: kvwire_requests_total{role,method,code},
// kvwire_requests_in_flight{role,method},
// kvwire_request_duration_seconds{role,method}.
class RpcMetrics {
 public:
  // An RPC began: in-flight + 1.
  void Started();
  // An RPC that Started() ended with `code` after `seconds`: in-flight - 1,
  // requests_total{code} + 1, duration observed.
  void Finished(absl::StatusCode code, double seconds);

 private:
  friend class Metrics;
  RpcMetrics() = default;
  prometheus::Gauge* in_flight_ = nullptr;
  prometheus::Histogram* duration_ = nullptr;
  std::array<prometheus::Counter*, 17> by_code_{};
};

// Work-queue metrics: kvwire_queue_depth, kvwire_queue_capacity,
// kvwire_workers, kvwire_workers_busy, kvwire_queue_wait_seconds,
// kvwire_queue_rejected_total, kvwire_batch_size; all labelled {role}.
class QueueMetrics {
 public:
  void SetCapacity(int workers, int queue_capacity);
  void SetDepth(int64_t depth);
  void SetBusyWorkers(int64_t busy);
  void ObserveWait(double seconds);
  void CountRejected();
  // Requests a worker ran together (1 without batching).
  void ObserveBatch(int64_t size);

 private:
  friend class Metrics;
  QueueMetrics() = default;
  prometheus::Histogram* batch_ = nullptr;
  prometheus::Gauge* depth_ = nullptr;
  prometheus::Gauge* capacity_ = nullptr;
  prometheus::Gauge* workers_ = nullptr;
  prometheus::Gauge* busy_ = nullptr;
  prometheus::Histogram* wait_ = nullptr;
  prometheus::Counter* rejected_ = nullptr;
};

// One completed KV transfer, as the sharer sent it or the receiver got it.
struct TransferRecord {
  // Scheme label: the scheme table row's name ("bf16", "int8", "int4", ...;
  // common/codec/scheme_table.h) when every sent layer used it, "mixed"
  // otherwise. Unknown names are recorded as "other".
  std::string scheme;
  int64_t raw_bytes = 0;         // Sent layers x T tokens x K,V at 16 bits.
  int64_t payload_bytes = 0;     // Sum of KvBlock.values sizes.
  int64_t serialized_bytes = 0;  // All KvChunk messages, trailer included.
  int64_t wire_bytes = 0;        // serialized + 5-byte gRPC message prefixes.
  int64_t prompt_tokens = 0;     // T.
  int64_t selected_tokens = 0;   // k: tokens sent per layer.
};

// kvwire_transfers_total, kvwire_kv_{raw,payload,serialized,wire}_bytes_total
// and kvwire_kv_compression_ratio, labelled {role,scheme};
// kvwire_prompt_tokens_total, kvwire_kv_tokens_selected_total and
// kvwire_kv_tokens_selected_ratio, labelled {role}.
class TransferMetrics {
 public:
  void Record(const TransferRecord& record);

 private:
  friend class Metrics;
  struct BySchemes {
    prometheus::Counter* transfers = nullptr;
    prometheus::Counter* raw = nullptr;
    prometheus::Counter* payload = nullptr;
    prometheus::Counter* serialized = nullptr;
    prometheus::Counter* wire = nullptr;
    prometheus::Histogram* ratio = nullptr;
  };
  TransferMetrics() = default;
  std::map<std::string, BySchemes, std::less<>> schemes_;  // Fixed at build.
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* selected_tokens_ = nullptr;
  prometheus::Histogram* selected_ratio_ = nullptr;
};

// The scheme label values TransferMetrics pre-creates: every scheme table
// row's name, in table order, then "mixed" and "other".
const std::vector<std::string>& TransferSchemeLabels();

class Metrics {
 public:
  // The process-wide instance (created on first use, never destroyed).
  static Metrics& Global();

  // A separate registry with every family (tests, tools).
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  const std::shared_ptr<prometheus::Registry>& registry() const {
    return registry_;
  }
  // The Prometheus text exposition of everything registered.
  std::string SerializeText() const;

  // Handles; each is created on first request for its labels and then
  // returned again. Keep the reference.
  RpcMetrics& Rpc(ServiceRole role, absl::string_view method);
  QueueMetrics& Queue(ServiceRole role);
  TransferMetrics& Transfer(ServiceRole role);
  // kvwire_stage_duration_seconds{role,stage}.
  prometheus::Histogram& Stage(ServiceRole role, absl::string_view stage);
  // kvwire_time_to_first_token_seconds{role}.
  prometheus::Histogram& TimeToFirstToken(ServiceRole role);
  // kvwire_time_per_output_token_seconds{role}: one observation per
  // generation of at least two tokens, generation seconds / (tokens - 1)
  // (the first token is in the time to first token).
  prometheus::Histogram& TimePerOutputToken(ServiceRole role);
  // kvwire_generated_tokens_total{role}.
  prometheus::Counter& GeneratedTokens(ServiceRole role);
  // kvwire_model_batch_size{role,stage} and
  // kvwire_model_batch_wait_seconds{role,stage} (the longest queue time of
  // a batch's steps): the model's batching across requests, `stage`
  // "prefill" or "decode" (batched_prefill.h).
  prometheus::Histogram& ModelBatchSize(ServiceRole role,
                                        absl::string_view stage);
  prometheus::Histogram& ModelBatchWait(ServiceRole role,
                                        absl::string_view stage);
  // An observer (for ModelLoadOptions) recording into the two above.
  StepBatchObserver ModelBatchObserver(ServiceRole role,
                                       absl::string_view stage);
  // kvwire_kv_slots{role} and kvwire_kv_slots_in_use{role}: the KV cache
  // slot pool of the batched decode.
  prometheus::Gauge& KvSlots(ServiceRole role);
  prometheus::Gauge& KvSlotsInUse(ServiceRole role);
  // kvwire_fallbacks_total{role,reason}; `reason` must come from a small
  // fixed set (e.g. a status code name).
  prometheus::Counter& Fallbacks(ServiceRole role, absl::string_view reason);
  // kvwire_build_info{role,version} = 1.
  void SetBuildInfo(ServiceRole role, absl::string_view version);
  // kvwire_model_info{role,model,fingerprint,dtype,device} = 1: the model a
  // process serves (`model` its name or Hugging Face id, `dtype` the KV
  // dtype such as "bf16", `device` as configured, e.g. "cuda:0").
  void SetModelInfo(ServiceRole role, absl::string_view model,
                    absl::string_view fingerprint, absl::string_view dtype,
                    absl::string_view device);

  // The recent requests and per-second aggregates of the live page
  // (/ui/live, served by MetricsServer beside /metrics); the receiver
  // records into it.
  LiveStats& Live() { return live_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  LiveStats live_;

  prometheus::Family<prometheus::Gauge>* build_info_;
  prometheus::Family<prometheus::Gauge>* model_info_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Gauge>* in_flight_;
  prometheus::Family<prometheus::Histogram>* request_duration_;
  prometheus::Family<prometheus::Gauge>* queue_depth_;
  prometheus::Family<prometheus::Gauge>* queue_capacity_;
  prometheus::Family<prometheus::Gauge>* workers_;
  prometheus::Family<prometheus::Gauge>* workers_busy_;
  prometheus::Family<prometheus::Histogram>* queue_wait_;
  prometheus::Family<prometheus::Counter>* queue_rejected_;
  prometheus::Family<prometheus::Histogram>* batch_size_;
  prometheus::Family<prometheus::Counter>* transfers_;
  prometheus::Family<prometheus::Counter>* raw_bytes_;
  prometheus::Family<prometheus::Counter>* payload_bytes_;
  prometheus::Family<prometheus::Counter>* serialized_bytes_;
  prometheus::Family<prometheus::Counter>* wire_bytes_;
  prometheus::Family<prometheus::Histogram>* compression_ratio_;
  prometheus::Family<prometheus::Counter>* prompt_tokens_;
  prometheus::Family<prometheus::Counter>* selected_tokens_;
  prometheus::Family<prometheus::Histogram>* selected_ratio_;
  prometheus::Family<prometheus::Histogram>* stage_duration_;
  prometheus::Family<prometheus::Histogram>* ttft_;
  prometheus::Family<prometheus::Histogram>* time_per_output_token_;
  prometheus::Family<prometheus::Counter>* generated_tokens_;
  prometheus::Family<prometheus::Histogram>* model_batch_size_;
  prometheus::Family<prometheus::Histogram>* model_batch_wait_;
  prometheus::Family<prometheus::Gauge>* kv_slots_;
  prometheus::Family<prometheus::Gauge>* kv_slots_in_use_;
  prometheus::Family<prometheus::Counter>* fallbacks_;

  std::mutex mu_;
  std::map<std::pair<ServiceRole, std::string>, std::unique_ptr<RpcMetrics>>
      rpcs_;
  std::map<ServiceRole, std::unique_ptr<QueueMetrics>> queues_;
  std::map<ServiceRole, std::unique_ptr<TransferMetrics>> transfers_by_role_;
};

// The metrics/live HTTP server's worker threads and how long a connection
// may hold one before sending its request.
inline constexpr int kMetricsServerThreads = 16;
inline constexpr int kMetricsRequestTimeoutMs = 2000;

// Paths of the metrics port besides /metrics.
inline constexpr absl::string_view kHealthzPath = "/healthz";
inline constexpr absl::string_view kReadyzPath = "/readyz";
inline constexpr absl::string_view kLivePagePath = "/ui/live";
inline constexpr absl::string_view kLiveDataPath = "/ui/live/data.json";

// Who may read the metrics port and how.
struct MetricsSecurityOptions {
  // PEM certificate chain and its key: HTTPS (TLS 1.2+, tls_front.h)
  // instead of HTTP. Both or neither.
  std::string tls_cert_path;
  std::string tls_key_path;
  // Non-empty: every request but the probes' (/healthz, /readyz) needs
  // "Authorization: Bearer <token>" (401 otherwise), as Prometheus sends
  // with `authorization: credentials_file`. Kubernetes probes cannot read a
  // Secret into a header, and the probes say nothing but ready or not.
  std::string auth_token;
};

// Serves on one port (prometheus-cpp's civetweb Exposer):
//   /metrics             the registry, plus the process_* metrics
//                        (process_metrics.h);
//   /healthz             200 "ok" while the process answers (liveness);
//   /readyz              200 "ready" when `readiness` (if given) holds, else
//                        503 with the failing conditions (readiness; the
//                        same verdict as the gRPC health service);
//   /ui/live             the live bandwidth page (self-contained HTML + JS,
//                        no external assets) and /ui/live/data.json
//                        (LiveStats::ToJson), when given a LiveStats; the
//                        old paths /live, /live/ and /live/data.json answer
//                        301 to them.
class MetricsServer {
 public:
  // `address` is "host:port"; port 0 picks a free port (see port()).
  // UNAVAILABLE when it cannot listen; INVALID_ARGUMENT for an empty address
  // or an incomplete / unreadable / mismatched TLS pair (naming the files).
  // `live` (not owned, may be null: no live page) and `readiness` (not
  // owned, may be null: /readyz is always 200) must outlive the server.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& address,
      const std::shared_ptr<prometheus::Registry>& registry,
      const LiveStats* live = nullptr,
      const MetricsSecurityOptions& security = {},
      const Readiness* readiness = nullptr);
  ~MetricsServer();

  // The port actually bound.
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<TlsFront> tls_front_;  // With TLS only.
  int civetweb_port_ = 0;
  int port_ = 0;  // What clients connect to (the TLS front's, with TLS).
};

}  // namespace kvwire

#endif  // KVWIRE_COMMON_SERVICE_METRICS_H_
