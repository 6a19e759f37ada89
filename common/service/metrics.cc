// Prometheus registry, families and exposer of the kvwire services.
#include "common/service/metrics.h"

#include <CivetServer.h>
#include <civetweb.h>
#include <prometheus/exposer.h>
#include <prometheus/text_serializer.h>

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/codec/scheme_table.h"
#include "common/service/grpc_status.h"
#include "common/service/process_metrics.h"
#include "common/service/security.h"
#include "common/service/tls_front.h"
#include "common/status_macros.h"
#include "glog/logging.h"

namespace kvwire {
namespace {

// ------------------------------------------------------------ HTTP paths

// What each metrics port serves beside /metrics and who may read it, by
// listening port. civetweb's begin_request callback carries no user data of
// ours (CivetServer keeps the context's user data for itself), so the
// callback finds its port's settings by the port the request came in on.
struct MetricsPort {
  const LiveStats* live = nullptr;       // Null: no live page.
  const Readiness* readiness = nullptr;  // Null: always ready.
  BearerTokenAuth auth{""};
};
std::mutex& MetricsPortsMutex() {
  static auto* const mu = new std::mutex();
  return *mu;
}
std::map<int, std::shared_ptr<const MetricsPort>>& MetricsPorts() {
  static auto* const ports =
      new std::map<int, std::shared_ptr<const MetricsPort>>();
  return *ports;
}

// Writes a complete small response (HEAD: the headers only).
int SendResponse(mg_connection* conn, bool head, int code,
                 absl::string_view reason, absl::string_view content_type,
                 absl::string_view body, absl::string_view extra_headers = "") {
  const std::string headers = absl::StrCat(
      "HTTP/1.1 ", code, " ", reason, "\r\nContent-Type: ", content_type,
      "\r\nContent-Length: ", body.size(), "\r\nCache-Control: no-store\r\n",
      extra_headers, "Connection: close\r\n\r\n");
  mg_write(conn, headers.data(), headers.size());
  if (!head) mg_write(conn, body.data(), body.size());
  return code;
}

// The new home of an old live-page path, or "" for any other path.
absl::string_view MovedLivePath(absl::string_view uri) {
  if (uri == "/live" || uri == "/live/") return kLivePagePath;
  if (uri == "/live/data.json") return kLiveDataPath;
  return "";
}

// civetweb's begin_request, before any handler: serves the probes
// (/healthz, /readyz) without a token, checks the bearer token, serves the
// live page and redirects its old paths, and leaves every other path
// (/metrics) to the Exposer's handlers (returns 0).
int HandleMetricsRequest(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  if (info == nullptr || info->local_uri == nullptr) return 0;
  std::shared_ptr<const MetricsPort> port;
  {
    std::lock_guard<std::mutex> lock(MetricsPortsMutex());
    auto it = MetricsPorts().find(info->server_port);
    if (it != MetricsPorts().end()) port = it->second;
  }
  // A request racing the start-up, before the port's settings (its token)
  // are known: refuse rather than serve unchecked.
  if (port == nullptr) {
    mg_send_http_error(conn, 503, "%s", "starting\n");
    return 503;
  }
  const absl::string_view uri(info->local_uri);
  const absl::string_view method(
      info->request_method != nullptr ? info->request_method : "");
  const bool head = method == "HEAD";
  const bool probe = uri == kHealthzPath || uri == kReadyzPath;
  const bool live_path = uri == kLivePagePath || uri == "/ui/live/" ||
                         uri == kLiveDataPath || !MovedLivePath(uri).empty();
  if ((probe || (live_path && port->live != nullptr)) && method != "GET" &&
      !head) {
    return SendResponse(conn, false, 405, "Method Not Allowed", "text/plain",
                        "GET or HEAD only\n", "Allow: GET, HEAD\r\n");
  }
  // The probes say only whether the process is up and ready: no token, so
  // that kubelet's httpGet (which cannot read a Secret) can ask.
  if (uri == kHealthzPath) {
    return SendResponse(conn, head, 200, "OK", "text/plain", "ok\n");
  }
  if (uri == kReadyzPath) {
    const absl::Status ready = port->readiness != nullptr
                                   ? port->readiness->Check()
                                   : absl::OkStatus();
    if (ready.ok()) {
      return SendResponse(conn, head, 200, "OK", "text/plain", "ready\n");
    }
    return SendResponse(conn, head, 503, "Service Unavailable", "text/plain",
                        absl::StrCat(ready.message(), "\n"));
  }
  if (port->auth.enabled()) {
    const char* header = mg_get_header(conn, "Authorization");
    const absl::string_view value(header != nullptr ? header : "");
    if (!port->auth.CheckHeader(header != nullptr ? &value : nullptr).ok()) {
      return SendResponse(
          conn, head, 401, "Unauthorized", "text/plain", "unauthorized\n",
          "WWW-Authenticate: Bearer realm=\"kvwire metrics\"\r\n");
    }
  }
  if (port->live == nullptr || !live_path) return 0;
  // Old bookmarks and scripts: a permanent redirect, query string kept.
  if (const absl::string_view moved = MovedLivePath(uri); !moved.empty()) {
    const std::string location =
        info->query_string != nullptr && info->query_string[0] != '\0'
            ? absl::StrCat(moved, "?", info->query_string)
            : std::string(moved);
    return SendResponse(conn, head, 301, "Moved Permanently", "text/plain",
                        absl::StrCat("moved to ", location, "\n"),
                        absl::StrCat("Location: ", location, "\r\n"));
  }
  // The Exposer (and its threads) stop before the port is unregistered, so
  // `live` outlives this request.
  if (uri == kLiveDataPath) {
    return SendResponse(conn, head, 200, "OK", "application/json",
                        port->live->ToJson());
  }
  return SendResponse(conn, head, 200, "OK", "text/html; charset=utf-8",
                      LivePageHtml());
}

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// Latencies from sub-millisecond encodes to minute-long generations.
const Histogram::BucketBoundaries& SecondsBuckets() {
  static const auto* const b = new Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
      0.5,    1,     2.5,    5,     10,   30,    60,   120};
  return *b;
}

const Histogram::BucketBoundaries& RatioBuckets() {
  static const auto* const b = new Histogram::BucketBoundaries{
      1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 16, 32};
  return *b;
}

const Histogram::BucketBoundaries& FractionBuckets() {
  static const auto* const b = new Histogram::BucketBoundaries{
      0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0};
  return *b;
}

// Seconds per output token: from batched small models on a GPU (well
// under a millisecond) to large ones on a CPU.
const Histogram::BucketBoundaries& TimePerTokenBuckets() {
  static const auto* const b = new Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03,
      0.04,   0.05,  0.075,  0.1,   0.15,   0.2,  0.3,   0.5,  1,     2.5};
  return *b;
}

const Histogram::BucketBoundaries& BatchBuckets() {
  static const auto* const b =
      new Histogram::BucketBoundaries{1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64};
  return *b;
}

constexpr int kNumCodes = 17;

}  // namespace

absl::string_view RoleName(ServiceRole role) {
  switch (role) {
    case ServiceRole::kSharer:
      return "sharer";
    case ServiceRole::kReceiver:
      return "receiver";
  }
  return "unknown";
}

const std::vector<std::string>& TransferSchemeLabels() {
  static const auto* const labels = [] {
    // One label per scheme table row, so a new scheme is counted under its
    // own name rather than "other".
    auto* out = new std::vector<std::string>;
    for (const SchemeInfo& row : kSchemeTable) out->push_back(row.name);
    out->push_back("mixed");
    out->push_back("other");
    return out;
  }();
  return *labels;
}

// ------------------------------------------------------------ handles

void RpcMetrics::Started() { in_flight_->Increment(); }

void RpcMetrics::Finished(absl::StatusCode code, double seconds) {
  in_flight_->Decrement();
  int index = static_cast<int>(code);
  if (index < 0 || index >= kNumCodes) index = 2;  // UNKNOWN.
  by_code_[index]->Increment();
  duration_->Observe(seconds);
}

void QueueMetrics::SetCapacity(int workers, int queue_capacity) {
  workers_->Set(workers);
  capacity_->Set(queue_capacity);
}
void QueueMetrics::SetDepth(int64_t depth) {
  depth_->Set(static_cast<double>(depth));
}
void QueueMetrics::SetBusyWorkers(int64_t busy) {
  busy_->Set(static_cast<double>(busy));
}
void QueueMetrics::ObserveWait(double seconds) { wait_->Observe(seconds); }
void QueueMetrics::CountRejected() { rejected_->Increment(); }
void QueueMetrics::ObserveBatch(int64_t size) {
  batch_->Observe(static_cast<double>(size));
}

void TransferMetrics::Record(const TransferRecord& r) {
  auto it = schemes_.find(r.scheme);
  if (it == schemes_.end()) it = schemes_.find("other");
  BySchemes& s = it->second;
  s.transfers->Increment();
  s.raw->Increment(static_cast<double>(r.raw_bytes));
  s.payload->Increment(static_cast<double>(r.payload_bytes));
  s.serialized->Increment(static_cast<double>(r.serialized_bytes));
  s.wire->Increment(static_cast<double>(r.wire_bytes));
  if (r.serialized_bytes > 0) {
    s.ratio->Observe(static_cast<double>(r.raw_bytes) /
                     static_cast<double>(r.serialized_bytes));
  }
  prompt_tokens_->Increment(static_cast<double>(r.prompt_tokens));
  selected_tokens_->Increment(static_cast<double>(r.selected_tokens));
  if (r.prompt_tokens > 0) {
    selected_ratio_->Observe(static_cast<double>(r.selected_tokens) /
                             static_cast<double>(r.prompt_tokens));
  }
}

// ------------------------------------------------------------ Metrics

Metrics& Metrics::Global() {
  static Metrics* const metrics = new Metrics();
  return *metrics;
}

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  build_info_ = &BuildGauge()
                     .Name("kvwire_build_info")
                     .Help("Always 1; labels carry the role and version.")
                     .Register(r);
  model_info_ =
      &BuildGauge()
           .Name("kvwire_model_info")
           .Help(
               "Always 1; labels carry the served model, its fingerprint, "
               "KV dtype and device.")
           .Register(r);
  requests_ = &BuildCounter()
                   .Name("kvwire_requests_total")
                   .Help("RPCs finished, by role, method and gRPC status code.")
                   .Register(r);
  in_flight_ = &BuildGauge()
                    .Name("kvwire_requests_in_flight")
                    .Help("RPCs started and not yet finished.")
                    .Register(r);
  request_duration_ =
      &BuildHistogram()
           .Name("kvwire_request_duration_seconds")
           .Help("Wall time of an RPC, from the handler to the final status.")
           .Register(r);
  queue_depth_ = &BuildGauge()
                      .Name("kvwire_queue_depth")
                      .Help("Requests admitted and waiting for a worker.")
                      .Register(r);
  queue_capacity_ = &BuildGauge()
                         .Name("kvwire_queue_capacity")
                         .Help("Most requests that may wait for a worker.")
                         .Register(r);
  workers_ = &BuildGauge()
                  .Name("kvwire_workers")
                  .Help("Model workers (requests computed concurrently).")
                  .Register(r);
  workers_busy_ = &BuildGauge()
                       .Name("kvwire_workers_busy")
                       .Help("Model workers currently running a request.")
                       .Register(r);
  queue_wait_ = &BuildHistogram()
                     .Name("kvwire_queue_wait_seconds")
                     .Help("Time a request waited in the queue for a worker.")
                     .Register(r);
  queue_rejected_ =
      &BuildCounter()
           .Name("kvwire_queue_rejected_total")
           .Help("Requests refused with RESOURCE_EXHAUSTED: queue full.")
           .Register(r);
  batch_size_ = &BuildHistogram()
                     .Name("kvwire_batch_size")
                     .Help(
                         "Requests a worker ran together in one batch "
                         "(1 without batching).")
                     .Register(r);
  transfers_ = &BuildCounter()
                    .Name("kvwire_transfers_total")
                    .Help("KV transfers completed (sent or received).")
                    .Register(r);
  raw_bytes_ = &BuildCounter()
                    .Name("kvwire_kv_raw_bytes_total")
                    .Help(
                        "KV bytes before encoding: sent layers x prompt "
                        "tokens x K,V at 16 bits.")
                    .Register(r);
  payload_bytes_ = &BuildCounter()
                        .Name("kvwire_kv_payload_bytes_total")
                        .Help("Encoded KV value bytes (KvBlock.values).")
                        .Register(r);
  serialized_bytes_ = &BuildCounter()
                           .Name("kvwire_kv_serialized_bytes_total")
                           .Help("Serialized KvChunk bytes, header to trailer.")
                           .Register(r);
  wire_bytes_ = &BuildCounter()
                     .Name("kvwire_kv_wire_bytes_total")
                     .Help(
                         "Serialized KvChunk bytes plus the 5-byte gRPC "
                         "message prefix of each (HTTP/2 framing and TLS "
                         "not included).")
                     .Register(r);
  compression_ratio_ =
      &BuildHistogram()
           .Name("kvwire_kv_compression_ratio")
           .Help("Per transfer: raw KV bytes / serialized stream bytes.")
           .Register(r);
  prompt_tokens_ = &BuildCounter()
                        .Name("kvwire_prompt_tokens_total")
                        .Help("Prompt tokens of completed transfers.")
                        .Register(r);
  selected_tokens_ =
      &BuildCounter()
           .Name("kvwire_kv_tokens_selected_total")
           .Help(
               "Tokens sent per layer (after token selection), summed "
               "over completed transfers.")
           .Register(r);
  selected_ratio_ = &BuildHistogram()
                         .Name("kvwire_kv_tokens_selected_ratio")
                         .Help("Per transfer: selected tokens / prompt tokens.")
                         .Register(r);
  stage_duration_ = &BuildHistogram()
                         .Name("kvwire_stage_duration_seconds")
                         .Help("Time spent in one pipeline stage of a request.")
                         .Register(r);
  model_batch_size_ =
      &BuildHistogram()
           .Name("kvwire_model_batch_size")
           .Help(
               "Requests' steps the model ran as one batch (stage: prefill "
               "or decode).")
           .Register(r);
  model_batch_wait_ =
      &BuildHistogram()
           .Name("kvwire_model_batch_wait_seconds")
           .Help(
               "Longest wait of a batch's steps for the model (stage: "
               "prefill or decode).")
           .Register(r);
  kv_slots_ = &BuildGauge()
                   .Name("kvwire_kv_slots")
                   .Help("KV cache slots of the batched decode's pool.")
                   .Register(r);
  kv_slots_in_use_ = &BuildGauge()
                          .Name("kvwire_kv_slots_in_use")
                          .Help("KV cache slots held by requests.")
                          .Register(r);
  ttft_ = &BuildHistogram()
               .Name("kvwire_time_to_first_token_seconds")
               .Help("From request arrival to the first generated token.")
               .Register(r);
  time_per_output_token_ =
      &BuildHistogram()
           .Name("kvwire_time_per_output_token_seconds")
           .Help(
               "Per generation of 2+ tokens: seconds per output token after "
               "the first (generation seconds / (tokens - 1)).")
           .Register(r);
  generated_tokens_ = &BuildCounter()
                           .Name("kvwire_generated_tokens_total")
                           .Help("Tokens generated.")
                           .Register(r);
  fallbacks_ = &BuildCounter()
                    .Name("kvwire_fallbacks_total")
                    .Help(
                        "Requests answered receiver-only (or failed) "
                        "because the sharer path failed, by reason.")
                    .Register(r);
}

Metrics::~Metrics() = default;

std::string Metrics::SerializeText() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

RpcMetrics& Metrics::Rpc(ServiceRole role, absl::string_view method) {
  std::lock_guard<std::mutex> lock(mu_);
  auto key = std::make_pair(role, std::string(method));
  auto it = rpcs_.find(key);
  if (it != rpcs_.end()) return *it->second;
  auto m = std::unique_ptr<RpcMetrics>(new RpcMetrics());
  const std::string role_name(RoleName(role));
  m->in_flight_ =
      &in_flight_->Add({{"role", role_name}, {"method", key.second}});
  m->duration_ = &request_duration_->Add(
      {{"role", role_name}, {"method", key.second}}, SecondsBuckets());
  for (int c = 0; c < kNumCodes; ++c) {
    m->by_code_[c] = &requests_->Add(
        {{"role", role_name},
         {"method", key.second},
         {"code",
          std::string(StatusCodeName(static_cast<absl::StatusCode>(c)))}});
  }
  RpcMetrics& ref = *m;
  rpcs_.emplace(std::move(key), std::move(m));
  return ref;
}

QueueMetrics& Metrics::Queue(ServiceRole role) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = queues_[role];
  if (slot) return *slot;
  slot.reset(new QueueMetrics());
  const prometheus::Labels labels{{"role", std::string(RoleName(role))}};
  slot->depth_ = &queue_depth_->Add(labels);
  slot->capacity_ = &queue_capacity_->Add(labels);
  slot->workers_ = &workers_->Add(labels);
  slot->busy_ = &workers_busy_->Add(labels);
  slot->wait_ = &queue_wait_->Add(labels, SecondsBuckets());
  slot->rejected_ = &queue_rejected_->Add(labels);
  slot->batch_ = &batch_size_->Add(labels, BatchBuckets());
  return *slot;
}

TransferMetrics& Metrics::Transfer(ServiceRole role) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = transfers_by_role_[role];
  if (slot) return *slot;
  slot.reset(new TransferMetrics());
  const std::string role_name(RoleName(role));
  for (const std::string& scheme : TransferSchemeLabels()) {
    const prometheus::Labels labels{{"role", role_name}, {"scheme", scheme}};
    TransferMetrics::BySchemes s;
    s.transfers = &transfers_->Add(labels);
    s.raw = &raw_bytes_->Add(labels);
    s.payload = &payload_bytes_->Add(labels);
    s.serialized = &serialized_bytes_->Add(labels);
    s.wire = &wire_bytes_->Add(labels);
    s.ratio = &compression_ratio_->Add(labels, RatioBuckets());
    slot->schemes_.emplace(scheme, s);
  }
  const prometheus::Labels labels{{"role", role_name}};
  slot->prompt_tokens_ = &prompt_tokens_->Add(labels);
  slot->selected_tokens_ = &selected_tokens_->Add(labels);
  slot->selected_ratio_ = &selected_ratio_->Add(labels, FractionBuckets());
  return *slot;
}

prometheus::Histogram& Metrics::Stage(ServiceRole role,
                                      absl::string_view stage) {
  return stage_duration_->Add(
      {{"role", std::string(RoleName(role))}, {"stage", std::string(stage)}},
      SecondsBuckets());
}

prometheus::Histogram& Metrics::TimeToFirstToken(ServiceRole role) {
  return ttft_->Add({{"role", std::string(RoleName(role))}}, SecondsBuckets());
}

prometheus::Histogram& Metrics::ModelBatchSize(ServiceRole role,
                                               absl::string_view stage) {
  return model_batch_size_->Add(
      {{"role", std::string(RoleName(role))}, {"stage", std::string(stage)}},
      BatchBuckets());
}

prometheus::Histogram& Metrics::ModelBatchWait(ServiceRole role,
                                               absl::string_view stage) {
  return model_batch_wait_->Add(
      {{"role", std::string(RoleName(role))}, {"stage", std::string(stage)}},
      SecondsBuckets());
}

StepBatchObserver Metrics::ModelBatchObserver(ServiceRole role,
                                              absl::string_view stage) {
  prometheus::Histogram* size = &ModelBatchSize(role, stage);
  prometheus::Histogram* wait = &ModelBatchWait(role, stage);
  return [size, wait](const StepBatchStats& stats) {
    size->Observe(static_cast<double>(stats.items));
    wait->Observe(stats.max_wait_seconds);
  };
}

prometheus::Gauge& Metrics::KvSlots(ServiceRole role) {
  return kv_slots_->Add({{"role", std::string(RoleName(role))}});
}

prometheus::Gauge& Metrics::KvSlotsInUse(ServiceRole role) {
  return kv_slots_in_use_->Add({{"role", std::string(RoleName(role))}});
}

prometheus::Histogram& Metrics::TimePerOutputToken(ServiceRole role) {
  return time_per_output_token_->Add({{"role", std::string(RoleName(role))}},
                                     TimePerTokenBuckets());
}

prometheus::Counter& Metrics::GeneratedTokens(ServiceRole role) {
  return generated_tokens_->Add({{"role", std::string(RoleName(role))}});
}

prometheus::Counter& Metrics::Fallbacks(ServiceRole role,
                                        absl::string_view reason) {
  return fallbacks_->Add(
      {{"role", std::string(RoleName(role))}, {"reason", std::string(reason)}});
}

void Metrics::SetBuildInfo(ServiceRole role, absl::string_view version) {
  build_info_
      ->Add({{"role", std::string(RoleName(role))},
             {"version", std::string(version)}})
      .Set(1);
}

void Metrics::SetModelInfo(ServiceRole role, absl::string_view model,
                           absl::string_view fingerprint,
                           absl::string_view dtype, absl::string_view device) {
  model_info_
      ->Add({{"role", std::string(RoleName(role))},
             {"model", std::string(model)},
             {"fingerprint", std::string(fingerprint)},
             {"dtype", std::string(dtype)},
             {"device", std::string(device)}})
      .Set(1);
}

// ------------------------------------------------------------ exposer

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& address,
    const std::shared_ptr<prometheus::Registry>& registry,
    const LiveStats* live, const MetricsSecurityOptions& security,
    const Readiness* readiness) {
  if (address.empty()) {
    return absl::InvalidArgumentError("metrics address is empty");
  }
  auto server = std::unique_ptr<MetricsServer>(new MetricsServer());
  // civetweb copies the callbacks when it starts.
  CivetCallbacks callbacks;
  callbacks.begin_request = HandleMetricsRequest;
  callbacks.log_message = [](const mg_connection*, const char* message) {
    LOG(WARNING) << "metrics server: " << message;
    return 1;
  };
  // civetweb gives each connection a thread until its request arrives or
  // request_timeout_ms passes (default 30 s): with few threads, a couple of
  // idle TCP connections starved every scrape. More threads and a short
  // request timeout bound what idle connections can hold.
  std::vector<std::string> options = {
      "num_threads", std::to_string(kMetricsServerThreads),
      "request_timeout_ms", std::to_string(kMetricsRequestTimeoutMs)};
  const bool tls =
      !security.tls_cert_path.empty() || !security.tls_key_path.empty();
  if (tls) {
    if (security.tls_cert_path.empty() || security.tls_key_path.empty()) {
      return absl::InvalidArgumentError(
          "metrics TLS needs both a certificate and a key (--metrics_tls_cert "
          "and --metrics_tls_key)");
    }
    // The same checks as the gRPC port's (readable PEM, matching pair).
    ServerSecurityOptions check;
    check.tls_cert_path = security.tls_cert_path;
    check.tls_key_path = security.tls_key_path;
    RETURN_IF_ERROR(MakeServerCredentials(check).status());
  }
  // With TLS, civetweb serves loopback only, behind the TLS front
  // (tls_front.h says why civetweb's own TLS is not used).
  options.insert(options.end(),
                 {"listening_ports", tls ? "127.0.0.1:0" : address});
  try {
    server->exposer_ =
        std::make_unique<prometheus::Exposer>(std::move(options), &callbacks);
  } catch (const std::exception& e) {
    // civetweb reports a busy port and a failed dlopen of libssl.so /
    // libcrypto.so (unversioned names: shipped by libssl-dev) alike.
    return absl::UnavailableError(absl::StrCat(
        "cannot serve metrics on ", address, ": ", e.what(),
        " (port in use, or civetweb could not load libssl.so/libcrypto.so: "
        "install libssl-dev)"));
  }
  server->exposer_->RegisterCollectable(registry);
  server->exposer_->RegisterCollectable(GlobalProcessCollector());
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  if (ports.empty() || ports.front() <= 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics server on ", address, " has no listening port"));
  }
  server->civetweb_port_ = ports.front();
  {
    auto port = std::make_shared<MetricsPort>();
    port->live = live;
    port->readiness = readiness;
    port->auth = BearerTokenAuth(security.auth_token);
    std::lock_guard<std::mutex> lock(MetricsPortsMutex());
    MetricsPorts()[server->civetweb_port_] = std::move(port);
  }
  server->port_ = server->civetweb_port_;
  if (tls) {
    TlsFrontOptions front;
    front.listen_address = address;
    front.backend_port = server->civetweb_port_;
    front.cert_path = security.tls_cert_path;
    front.key_path = security.tls_key_path;
    front.max_connections = kMetricsServerThreads;
    front.handshake_timeout = absl::Milliseconds(kMetricsRequestTimeoutMs);
    ASSIGN_OR_RETURN(server->tls_front_, TlsFront::Start(front));
    server->port_ = server->tls_front_->port();
  }
  return server;
}

MetricsServer::~MetricsServer() {
  // Stop serving (the TLS front, then civetweb, join their threads) before
  // forgetting the port.
  tls_front_.reset();
  exposer_.reset();
  if (civetweb_port_ > 0) {
    std::lock_guard<std::mutex> lock(MetricsPortsMutex());
    MetricsPorts().erase(civetweb_port_);
  }
}

}  // namespace kvwire
