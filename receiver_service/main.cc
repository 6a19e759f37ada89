// kvwire-receiver: answers questions with a receiver model that fuses a
// sharer's KV cache streamed over gRPC (kvwire.v1.Receiver). Flags only;
// the logic lives in kvwire_receiver_lib.
#include <cstdint>
#include <filesystem>
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
#include "common/protocol/answer_validation.h"
#include "common/service/process.h"
#include "common/service/security.h"
#include "common/service/server_flags.h"
#include "glog/logging.h"
#include "receiver_service/openai_mapping.h"
#include "receiver_service/receiver_server.h"

ABSL_FLAG(std::string, model_dir, "",
          "Receiver model directory in the Hugging Face layout (config.json, "
          "model.safetensors or shards, tokenizer.json and "
          "tokenizer_config.json with the chat template). Required. This "
          "flag and every *_dir below take a directory, or a Hugging Face id "
          "OWNER/NAME[/SUBFOLDER][@REVISION] resolved offline from the hub "
          "cache (HF_HUB_CACHE, else HF_HOME/hub; fetch it with `hf "
          "download OWNER/NAME`), e.g. Qwen/Qwen3-0.6B.");
ABSL_FLAG(std::string, tokenizer_dir, "",
          "Directory (or Hugging Face id) with tokenizer.json and "
          "tokenizer_config.json when --model_dir has none.");
ABSL_FLAG(std::string, sharer_tokenizer_dir, "",
          "The sharer's tokenizer.json and tokenizer_config.json (or "
          "tokenizer_config.json alone, for the sharer's chat template over "
          "the receiver's vocabulary): text-to-text mode writes the sharer's "
          "background prompt and reads its answer with them, and C2C token "
          "alignment (--token_alignment) needs them. A directory or a "
          "Hugging Face id (e.g. the sharer's, Qwen/Qwen2.5-0.5B-Instruct). "
          "Empty: the receiver's.");
ABSL_FLAG(std::string, token_alignment, "auto",
          "C2C token alignment for pairs whose tokenizers differ (C2C's "
          "TokenAligner; docs/PROTOCOL.md): auto (when the fuser's "
          "config.json says is_do_alignment: true), on, off (a fuser that "
          "needs it is then refused at start). Needs --sharer_tokenizer_dir.");
ABSL_FLAG(std::string, chat_template_date, "",
          "The date chat templates that print one render (Llama-3.1/3.2's "
          "\"Today Date: 26 Jul 2024\"), for reproducible prompts; empty: "
          "the template's default (today for Llama-3.2).");
ABSL_FLAG(std::string, alignment_strategy, "longest",
          "Token alignment: which sharer token stands for a receiver token "
          "the sharer's tokenizer splits: first or longest (C2C's "
          "evaluator).");
ABSL_FLAG(uint32_t, text_to_text_max_new_tokens, 256,
          "Text-to-text mode: greedy tokens the sharer writes as background "
          "(the C2C paper: 256).");
ABSL_FLAG(std::string, fuser_dir, "",
          "C2C fuser checkpoint (the released layout: config.json, "
          "final/projector_*.pt or .safetensors, projector_config.json): a "
          "directory or a Hugging Face id with the pair's subfolder, e.g. "
          "nics-efc/C2C_Fuser/qwen3_0.6b+qwen2.5_0.5b_Fuser. "
          "Without it C2C requests fall back to receiver-only answers (or "
          "fail, per --fallback).");
ABSL_FLAG(int, sharer_layers, 0,
          "The sharer's layer count, only for a fuser checkpoint without "
          "projector_config.json (last-aligned map).");
ABSL_FLAG(std::string, dtype, "auto",
          "Model dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32.");
ABSL_FLAG(std::string, device, "cpu", "Model device: cpu, cuda, cuda:N.");
ABSL_FLAG(int, intra_op_threads, 0,
          "LibTorch intra-op threads (0: LibTorch's default).");
ABSL_FLAG(int64_t, decode_batch_slots, -1,
          "KV cache slots whose decode steps run batched across concurrent "
          "requests (as CUDA graphs on CUDA; 0: each request decodes alone; "
          "-1: 16 on CUDA, 0 on CPU). At least --workers: each running "
          "request holds one slot.");
ABSL_FLAG(int64_t, prefill_batch_rows, -1,
          "Prompts of concurrent requests prefilled together in one forward "
          "(as CUDA graphs on CUDA; 0: each alone; -1: 8 on CUDA, 0 on "
          "CPU).");
ABSL_FLAG(int64_t, decode_slot_capacity, 1024,
          "Positions (prompt + generated tokens) of one batched-decode slot; "
          "longer requests decode alone.");
ABSL_FLAG(uint32_t, sharer_max_blocks_per_message, 64,
          "Whole KV blocks the sharer may send in one message when several "
          "wait behind a write (ShareRequest.max_blocks_per_message); 0 or "
          "1: one block per message.");
ABSL_FLAG(std::string, fusion_schedule, "when_complete",
          "When received sharer layers are fused: when_complete (all of them "
          "in one layer-batched projector call once the stream has arrived) "
          "or on_arrival (each as it lands, one call per layer).");
ABSL_FLAG(int64_t, fusion_batch_requests, 0,
          "With --fusion_schedule=when_complete: concurrent requests' "
          "whole-stream fusions run as one projector computation, up to this "
          "many (0 or 1: each alone). Off by default until measured on a "
          "GPU (docs/PERFORMANCE.md 5.9).");
ABSL_FLAG(int64_t, max_prompt_tokens, 8192,
          "Longest templated prompt accepted (capped by "
          "max_position_embeddings).");
ABSL_FLAG(int64_t, max_question_bytes, 64 << 10,
          "Most bytes of question / message text in one request.");
ABSL_FLAG(uint32_t, max_new_tokens_limit, 1024,
          "Largest generation.max_new_tokens a request may ask for.");
ABSL_FLAG(std::string, listen_address, "0.0.0.0:50052",
          "gRPC listen address host:port (port 0: any free port).");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1:9465",
          "Address host:port of Prometheus /metrics, the live page /ui/live "
          "and the probes /healthz and /readyz, "
          "apart from the "
          "gRPC port; loopback by default (0.0.0.0:9465 where Prometheus "
          "scrapes from elsewhere; see docs/DEPLOY.md). Empty disables it.");
ABSL_FLAG(int, workers, 1,
          "Requests answered concurrently (each with its own KV cache; they "
          "share the weights).");
ABSL_FLAG(int, queue_size, 16,
          "Requests that may wait for a worker (until their deadline); "
          "beyond that Answer fails with RESOURCE_EXHAUSTED.");
ABSL_FLAG(std::string, http_address, "",
          "Address host:port of the OpenAI-compatible HTTP API "
          "(GET /v1/models, POST /v1/chat/completions; docs/OPENAI_API.md), "
          "with the gRPC port's TLS files and bearer token; port 0: any free "
          "port. Empty (the default) disables it; e.g. 0.0.0.0:8000.");
ABSL_FLAG(std::string, served_model_name, "",
          "The model name the HTTP API lists and accepts; empty: the Hugging "
          "Face id given to --model_dir, or the directory's base name.");
ABSL_FLAG(double, http_request_timeout_seconds, 600,
          "Deadline of each HTTP API request (queue wait included).");
ABSL_FLAG(std::string, sharer_target, "",
          "The sharer(s): host:port, ipv4:10.0.0.1:50051,10.0.0.2:50051 or "
          "dns:///sharers:50051 (every resolved address is used). Empty: no "
          "sharer (C2C requests fall back or fail).");
ABSL_FLAG(std::string, sharer_lb_policy, "round_robin",
          "Load balancing over the sharer target's addresses: round_robin "
          "or pick_first.");
ABSL_FLAG(double, sharer_timeout_seconds, 60,
          "A Share call still running after this long is abandoned (a "
          "sharer-path failure: fallback or error per policy).");
ABSL_FLAG(double, sharer_reconnect_backoff_max_seconds, 1,
          "Longest wait between reconnection attempts to a sharer that went "
          "away (the first comes after 0.25 s).");
ABSL_FLAG(double, sharer_probe_timeout_seconds, 5,
          "Deadline of the GetInfo call made to the sharer at start.");
ABSL_FLAG(std::string, ready_requires_sharer, "auto",
          "Whether /readyz and the gRPC health of kvwire.v1.Receiver wait for "
          "the sharer's own health to be SERVING: auto (when answers fail "
          "without it: a --sharer_target, a fuser and --fallback=fail), true "
          "(whenever --sharer_target is set) or false.");
ABSL_FLAG(std::string, fallback, "receiver-only",
          "When the sharer is down, slow, refuses or sends corrupt data: "
          "receiver-only (answer without it and say so in the response and "
          "in kvwire_fallbacks_total) or fail. Requests may override it.");
ABSL_FLAG(std::string, guided_selection_signal, "attention",
          "Signal of receiver-guided token selection (requests whose "
          "selection is EXPLICIT without indices): attention (the last "
          "prompt token's attention) or vnorm (the receiver's V norms).");
ABSL_FLAG(std::string, expected_sharer_fingerprint, "",
          "If set, sent with every Share call: the sharer refuses unless "
          "its model fingerprint matches.");
ABSL_FLAG(std::string, sharer_tls_ca, "",
          "PEM roots that verify the sharer (enables TLS to the sharer).");
ABSL_FLAG(std::string, sharer_tls_cert, "",
          "PEM client certificate for mutual TLS with the sharer.");
ABSL_FLAG(std::string, sharer_tls_key, "", "PEM key of --sharer_tls_cert.");
ABSL_FLAG(std::string, sharer_tls_server_name, "",
          "Name the sharer's certificate is checked against (e.g. localhost "
          "when dialling an IP address).");
ABSL_FLAG(bool, sharer_use_tls, false,
          "TLS to the sharer with the system roots (implied by any "
          "--sharer_tls_* path).");
ABSL_FLAG(bool, sharer_allow_insecure, false,
          "Talk plaintext to the sharer when no TLS is configured.");
ABSL_FLAG(std::string, sharer_auth_token_file, "",
          "File holding the bearer token sent to the sharer.");
ABSL_FLAG(std::string, sharer_auth_token, "",
          "The sharer's bearer token itself (prefer "
          "--sharer_auth_token_file).");

namespace {

constexpr char kUsage[] =
    "answers questions with a receiver model that fuses a sharer's KV cache "
    "(Cache-to-Cache), streamed layer by layer over gRPC from kvwire-sharer "
    "(kvwire.v1.Receiver: Answer, AnswerStream), with health, reflection, "
    "TLS / mutual TLS, bearer tokens and Prometheus metrics.\n\n"
    "Example (models by Hugging Face id, from the hub cache; directories "
    "work too):\n"
    "  kvwire-receiver --model_dir=Qwen/Qwen3-0.6B \\\n"
    "      --fuser_dir=nics-efc/C2C_Fuser/qwen3_0.6b+qwen2.5_0.5b_Fuser "
    "\\\n"
    "      --sharer_target=dns:///sharers:50051 --sharer_tls_ca=ca.pem \\\n"
    "      --tls_cert=server.pem --tls_key=server.key "
    "--auth_token_file=token.txt\n"
    "Local plaintext (development only):\n"
    "  kvwire-receiver --model_dir=/tmp/receiver --fuser_dir=/tmp/fuser "
    "--allow_insecure \\\n"
    "      --sharer_target=127.0.0.1:50051 --sharer_allow_insecure";

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "receiver_service/main.cc") ||
           kvwire::IsServerFlagsFile(path);
  };
  usage_config.version_string = [] {
    return std::string("kvwire-receiver " KVWIRE_VERSION "\n");
  };
  absl::SetFlagsUsageConfig(usage_config);
  absl::ParseCommandLine(argc, argv);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;

  kvwire::ReceiverConfig config;
  config.engine.model.dir = absl::GetFlag(FLAGS_model_dir);
  config.engine.tokenizer_dir = absl::GetFlag(FLAGS_tokenizer_dir);
  config.engine.sharer_tokenizer_dir =
      absl::GetFlag(FLAGS_sharer_tokenizer_dir);
  config.engine.fuser_dir = absl::GetFlag(FLAGS_fuser_dir);
  config.engine.alignment_strategy = absl::GetFlag(FLAGS_alignment_strategy);
  config.engine.chat_template_date = absl::GetFlag(FLAGS_chat_template_date);
  config.engine.sharer_layers = absl::GetFlag(FLAGS_sharer_layers);
  config.engine.model.dtype = absl::GetFlag(FLAGS_dtype);
  config.engine.model.device = absl::GetFlag(FLAGS_device);
  config.engine.model.intra_op_threads = absl::GetFlag(FLAGS_intra_op_threads);
  config.engine.model.decode_batch_slots = kvwire::AutoBatchingSize(
      absl::GetFlag(FLAGS_decode_batch_slots), config.engine.model.device, 16);
  config.engine.model.prefill_batch_rows = kvwire::AutoBatchingSize(
      absl::GetFlag(FLAGS_prefill_batch_rows), config.engine.model.device, 8);
  config.engine.model.decode_slot_capacity =
      absl::GetFlag(FLAGS_decode_slot_capacity);
  config.engine.fusion_batch_requests =
      absl::GetFlag(FLAGS_fusion_batch_requests);
  config.engine.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);

  config.runner.limits.max_question_bytes =
      absl::GetFlag(FLAGS_max_question_bytes);
  config.runner.limits.max_new_tokens =
      absl::GetFlag(FLAGS_max_new_tokens_limit);
  config.runner.text_to_text_max_new_tokens =
      absl::GetFlag(FLAGS_text_to_text_max_new_tokens);
  config.runner.sharer_timeout =
      absl::Seconds(absl::GetFlag(FLAGS_sharer_timeout_seconds));
  config.runner.expected_sharer_fingerprint =
      absl::GetFlag(FLAGS_expected_sharer_fingerprint);
  if (absl::Status st = kvwire::ParseFallbackPolicy(
          absl::GetFlag(FLAGS_fallback), &config.runner.default_fallback);
      !st.ok() || config.runner.default_fallback ==
                      kvwire::v1::FALLBACK_POLICY_UNSPECIFIED) {
    LOG(ERROR) << "--fallback must be receiver-only or fail";
    return 1;
  }
  auto signal =
      kvwire::ParseReceiverSignal(absl::GetFlag(FLAGS_guided_selection_signal));
  if (!signal.ok()) {
    LOG(ERROR) << "--guided_selection_signal: " << signal.status().message();
    return 1;
  }
  config.runner.guided_signal = *signal;
  auto alignment =
      kvwire::ParseTokenAlignmentMode(absl::GetFlag(FLAGS_token_alignment));
  if (!alignment.ok()) {
    LOG(ERROR) << "--token_alignment: " << alignment.status().message();
    return 1;
  }
  config.engine.token_alignment = *alignment;
  auto schedule =
      kvwire::ParseFusionSchedule(absl::GetFlag(FLAGS_fusion_schedule));
  if (!schedule.ok()) {
    LOG(ERROR) << "--fusion_schedule: " << schedule.status().message();
    return 1;
  }
  config.engine.fusion_schedule = *schedule;

  config.sharer.target = absl::GetFlag(FLAGS_sharer_target);
  config.sharer.max_blocks_per_message =
      absl::GetFlag(FLAGS_sharer_max_blocks_per_message);
  kvwire::ChannelOptions& channel = config.sharer.channel;
  channel.load_balancing_policy = absl::GetFlag(FLAGS_sharer_lb_policy);
  channel.reconnect_max_backoff =
      absl::Seconds(absl::GetFlag(FLAGS_sharer_reconnect_backoff_max_seconds));
  channel.security.tls_ca_path = absl::GetFlag(FLAGS_sharer_tls_ca);
  channel.security.tls_cert_path = absl::GetFlag(FLAGS_sharer_tls_cert);
  channel.security.tls_key_path = absl::GetFlag(FLAGS_sharer_tls_key);
  channel.security.tls_server_name =
      absl::GetFlag(FLAGS_sharer_tls_server_name);
  channel.security.use_tls = absl::GetFlag(FLAGS_sharer_use_tls);
  channel.security.allow_insecure = absl::GetFlag(FLAGS_sharer_allow_insecure);
  channel.security.auth_token = absl::GetFlag(FLAGS_sharer_auth_token);
  if (!absl::GetFlag(FLAGS_sharer_auth_token_file).empty()) {
    auto token =
        kvwire::ReadSecretFile(absl::GetFlag(FLAGS_sharer_auth_token_file));
    if (!token.ok()) {
      LOG(ERROR) << "--sharer_auth_token_file: " << token.status();
      return 1;
    }
    channel.security.auth_token = *token;
  }
  config.sharer_probe_timeout =
      absl::Seconds(absl::GetFlag(FLAGS_sharer_probe_timeout_seconds));
  auto sharer_readiness =
      kvwire::ParseSharerReadiness(absl::GetFlag(FLAGS_ready_requires_sharer));
  if (!sharer_readiness.ok()) {
    LOG(ERROR) << "--ready_requires_sharer: "
               << sharer_readiness.status().message();
    return 1;
  }
  config.sharer_readiness = *sharer_readiness;

  config.server.listen_address = absl::GetFlag(FLAGS_listen_address);
  if (absl::Status st = kvwire::ServerOptionsFromFlags(&config.server);
      !st.ok()) {
    LOG(ERROR) << st;
    return 1;
  }
  // The sharer channel pings as the server's own connections do.
  channel.keepalive = config.server.keepalive;
  config.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  if (absl::Status st =
          kvwire::MetricsSecurityFromFlags(&config.metrics_security);
      !st.ok()) {
    LOG(ERROR) << st;
    return 1;
  }
  config.http_address = absl::GetFlag(FLAGS_http_address);
  config.served_model_name = absl::GetFlag(FLAGS_served_model_name);
  if (config.served_model_name.empty()) {
    // From the flag as given: a Hugging Face id is a better name than the
    // snapshot directory it resolves to.
    const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
    config.served_model_name = kvwire::ServedModelNameFor(
        model_dir, std::filesystem::is_directory(model_dir));
  }
  config.http_request_timeout =
      absl::Seconds(absl::GetFlag(FLAGS_http_request_timeout_seconds));
  config.workers = absl::GetFlag(FLAGS_workers);
  config.queue_size = absl::GetFlag(FLAGS_queue_size);

  if (config.engine.model.dir.empty()) {
    LOG(ERROR) << "--model_dir is required (see --help)";
    return 1;
  }
  // Every worker's cache must fit the pool: requests beyond --workers wait
  // in the queue or get RESOURCE_EXHAUSTED, never a cache outside the pool.
  if (config.engine.model.decode_batch_slots > 0 &&
      config.workers > config.engine.model.decode_batch_slots) {
    LOG(ERROR) << "--workers=" << config.workers << " exceeds "
               << "--decode_batch_slots="
               << config.engine.model.decode_batch_slots
               << ": each worker's request holds one KV cache slot; raise "
                  "the slots or lower the workers";
    return 1;
  }
  if (config.workers < 1 || config.queue_size < 0) {
    LOG(ERROR) << "--workers must be >= 1 and --queue_size >= 0";
    return 1;
  }
  if (absl::GetFlag(FLAGS_sharer_timeout_seconds) <= 0) {
    LOG(ERROR) << "--sharer_timeout_seconds must be positive";
    return 1;
  }
  kvwire::LogEffectiveFlags("kvwire-receiver");
  if (absl::Status st = kvwire::ResolveModelDirFlags(
          {{"--model_dir", &config.engine.model.dir},
           {"--tokenizer_dir", &config.engine.tokenizer_dir},
           {"--sharer_tokenizer_dir", &config.engine.sharer_tokenizer_dir},
           {"--fuser_dir", &config.engine.fuser_dir}});
      !st.ok()) {
    LOG(ERROR) << st;
    return 1;
  }
  return kvwire::RunReceiverProcess(config);
}
