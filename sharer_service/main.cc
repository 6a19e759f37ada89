// kvwire-sharer: serves a sharer model's KV cache over gRPC
// (kvwire.v1.Sharer). Flags only; the logic lives in kvwire_sharer_lib.
#include <cstdint>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/engine/model_loading.h"
#include "common/hub_cache.h"
#include "common/service/process.h"
#include "common/service/server_flags.h"
#include "glog/logging.h"
#include "sharer_service/sharer_server.h"

ABSL_FLAG(std::string, model_dir, "",
          "Sharer model: a directory in the Hugging Face layout "
          "(config.json, model.safetensors or shards), or a Hugging Face id "
          "OWNER/NAME[/SUBFOLDER][@REVISION] resolved offline from the hub "
          "cache (HF_HUB_CACHE, else HF_HOME/hub; fetch it with `hf "
          "download OWNER/NAME`). Required.");
ABSL_FLAG(std::string, dtype, "auto",
          "Model dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32.");
ABSL_FLAG(std::string, device, "cpu", "Model device: cpu, cuda, cuda:N.");
ABSL_FLAG(std::string, listen_address, "0.0.0.0:50051",
          "gRPC listen address host:port (port 0: any free port).");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1:9464",
          "Address host:port of Prometheus /metrics, apart from the "
          "gRPC port; loopback by default (0.0.0.0:9464 where Prometheus "
          "scrapes from elsewhere; see docs/DEPLOY.md). Empty disables it.");
ABSL_FLAG(int, workers, 1,
          "Model workers: prefills computed concurrently (each with its own "
          "KV cache; they share the weights).");
ABSL_FLAG(int, queue_size, 16,
          "Requests that may wait for a worker (until their deadline); "
          "beyond that Share fails with RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, prefill_batch_rows, -1,
          "Prompts of concurrent Share calls (one per worker) prefilled "
          "together in one forward, as CUDA graphs on CUDA (0: each alone; "
          "-1: 8 on CUDA, 0 on CPU). Unlike --max_batch_size it needs no "
          "queueing: it batches whatever the workers run at the same time.");
ABSL_FLAG(int, max_batch_size, 1,
          "Dynamic batching: a free worker prefills up to this many queued "
          "requests together (right-padded; 1 disables). Large gains on GPU "
          "under load (docs/perf/sharer.md); results then match a batched "
          "prefill, within float rounding of a single one.");
ABSL_FLAG(double, batch_max_padding, 0.5,
          "Largest padding overhead a batch may have: padded tokens <= "
          "(1 + this) x real tokens.");
ABSL_FLAG(int64_t, max_prompt_tokens, 8192,
          "Longest prompt accepted (capped by max_position_embeddings).");
ABSL_FLAG(uint32_t, max_new_tokens, 1024,
          "Most tokens one Generate call (the text-to-text baseline) may ask "
          "for.");
ABSL_FLAG(bool, encode_on_cpu, true,
          "With --device=cuda: copy each computed layer to the host and "
          "encode it with the CPU quantizer (false: quantize on the GPU). "
          "See docs/perf/sharer.md.");
ABSL_FLAG(int64_t, sliding_window_override, 0,
          "Replaces the sliding window of the model's windowed layers "
          "(Gemma-3, Mistral); 0: config.json's. C2C runs Gemma-3 sharers "
          "with 4096.");
ABSL_FLAG(int, intra_op_threads, 0,
          "LibTorch intra-op threads per worker (0: LibTorch's default).");
ABSL_FLAG(int64_t, max_buffered_bytes_per_stream, int64_t{64} << 20,
          "Encoded bytes of one stream queued ahead of a slow client before "
          "its worker waits.");
ABSL_FLAG(double, stream_stall_timeout_seconds, 20,
          "Cancel a Share stream whose client has read nothing for this "
          "long, freeing its worker and buffers (0: never).");
ABSL_FLAG(double, testing_corrupt_chunk_probability, 0,
          "TESTS ONLY: flip a byte in each data chunk with this probability "
          "(the receiver's checksums must catch it).");
ABSL_FLAG(int, testing_layer_delay_ms, 0,
          "TESTS ONLY: sleep this long after each computed layer.");

namespace {

constexpr char kUsage[] =
    "runs a sharer model over each request's prompt and "
    "streams its (quantized, selected) KV cache layer by layer over gRPC "
    "(kvwire.v1.Sharer: Share, GetInfo; Generate for the text-to-text "
    "baseline), with health, reflection, TLS / "
    "mutual TLS, bearer tokens and Prometheus metrics.\n\n"
    "Example:\n"
    "  kvwire-sharer --model_dir=Qwen/Qwen2.5-0.5B-Instruct --device=cuda "
    "\\\n      --tls_cert=server.pem --tls_key=server.key "
    "--auth_token_file=token.txt\n"
    "(a Hugging Face id, from the hub cache: `hf download "
    "Qwen/Qwen2.5-0.5B-Instruct` first; or a directory)\n"
    "Local plaintext (development only):\n"
    "  kvwire-sharer --model_dir=/tmp/tiny --allow_insecure "
    "--listen_address=127.0.0.1:50051";

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  absl::FlagsUsageConfig usage_config;
  // --help lists this file's flags (absl's default matches the file name
  // against the program name).
  usage_config.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "sharer_service/main.cc") ||
           kvwire::IsServerFlagsFile(path);
  };
  usage_config.version_string = [] {
    return std::string("kvwire-sharer " KVWIRE_VERSION "\n");
  };
  absl::SetFlagsUsageConfig(usage_config);
  absl::ParseCommandLine(argc, argv);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;

  kvwire::SharerConfig config;
  config.engine.model.dir = absl::GetFlag(FLAGS_model_dir);
  config.engine.model.dtype = absl::GetFlag(FLAGS_dtype);
  config.engine.model.device = absl::GetFlag(FLAGS_device);
  config.engine.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  config.engine.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  config.engine.model.intra_op_threads = absl::GetFlag(FLAGS_intra_op_threads);
  config.engine.model.prefill_batch_rows = kvwire::AutoBatchingSize(
      absl::GetFlag(FLAGS_prefill_batch_rows), config.engine.model.device, 8);
  config.engine.model.sliding_window_override =
      absl::GetFlag(FLAGS_sliding_window_override);
  config.engine.encode_on_cpu = absl::GetFlag(FLAGS_encode_on_cpu);
  config.engine.testing_layer_delay =
      absl::Milliseconds(absl::GetFlag(FLAGS_testing_layer_delay_ms));
  config.server.listen_address = absl::GetFlag(FLAGS_listen_address);
  if (absl::Status st = kvwire::ServerOptionsFromFlags(&config.server);
      !st.ok()) {
    LOG(ERROR) << st;
    return 1;
  }
  config.service.max_buffered_bytes_per_stream =
      absl::GetFlag(FLAGS_max_buffered_bytes_per_stream);
  config.service.testing_corrupt_chunk_probability =
      absl::GetFlag(FLAGS_testing_corrupt_chunk_probability);
  config.service.stream_stall_timeout =
      absl::Seconds(absl::GetFlag(FLAGS_stream_stall_timeout_seconds));
  config.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  if (absl::Status st =
          kvwire::MetricsSecurityFromFlags(&config.metrics_security);
      !st.ok()) {
    LOG(ERROR) << st;
    return 1;
  }
  config.workers = absl::GetFlag(FLAGS_workers);
  config.queue_size = absl::GetFlag(FLAGS_queue_size);
  config.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  config.batch_max_padding = absl::GetFlag(FLAGS_batch_max_padding);

  if (config.engine.model.dir.empty()) {
    LOG(ERROR) << "--model_dir is required (see --help)";
    return 1;
  }
  if (config.workers < 1 || config.queue_size < 0 ||
      config.max_batch_size < 1) {
    LOG(ERROR) << "--workers and --max_batch_size must be >= 1 and "
                  "--queue_size >= 0";
    return 1;
  }
  kvwire::LogEffectiveFlags("kvwire-sharer");
  if (absl::Status st = kvwire::ResolveModelDirFlags(
          {{"--model_dir", &config.engine.model.dir}});
      !st.ok()) {
    LOG(ERROR) << st;
    return 1;
  }
  return kvwire::RunSharerProcess(config);
}
