// kvwire-eval: OpenBookQA / ARC-Challenge accuracy against measured bytes.
// Flags only; the work is RunEvalCli (tools/eval/cli.h). See --help and
// docs/EVALUATION.md.
#include <atomic>
#include <csignal>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "glog/logging.h"
#include "tools/eval/cli.h"

// What to run.
ABSL_FLAG(std::string, grid, "",
          "YAML grid of runs (tools/eval/grids/*.yaml). Without it, one block "
          "is built from the single-run lists below.");
ABSL_FLAG(std::string, grid_var, "",
          "Grid variables, NAME=VALUE,NAME=VALUE: the ${NAME}s in the grid's "
          "`sharers:` paths (looked up before the environment), e.g. "
          "LLAMA_SHARER_DIR=/models/Llama-3.2-1B-Instruct.");
ABSL_FLAG(std::string, method, "",
          "Single run: methods, comma-separated: receiver-only, sharer-only, "
          "text-to-text, c2c (default c2c).");
ABSL_FLAG(std::string, scheme, "",
          "Single run: schemes (bf16, fp16, fp8_e4m3, fp8_e5m2, int8, int4, "
          "int2, nf4).");
ABSL_FLAG(std::string, granularity, "",
          "Single run: granularities (layer, head, token, channel, group, "
          "kivi).");
ABSL_FLAG(std::string, selection, "",
          "Single run: token selections (all, front, back, random, "
          "knorm_topk, vnorm_topk; in-process only: proj_vnorm_topk, "
          "delta_proj_vnorm_topk, receiver_attention, receiver_vnorm).");
ABSL_FLAG(std::string, proportion, "",
          "Single run: fractions of prompt tokens sent, e.g. 0.5,0.25.");
ABSL_FLAG(std::string, min_tokens, "",
          "Single run: minimum tokens a selection keeps.");
ABSL_FLAG(std::string, schedule, "",
          "Single run: mixed-precision schedule YAML files (the prototype's "
          "layer_schedule format, receiver layers), or none.");
ABSL_FLAG(std::string, zstd, "",
          "Single run: zstd stage per run: false, true (level 3) or a level.");
ABSL_FLAG(int, max_new_tokens, 64,
          "Single run: greedy new tokens (the reference: 64).");
// Datasets.
ABSL_FLAG(std::string, openbookqa, "",
          "OpenBookQA test JSONL (AI2 or Hugging Face form).");
ABSL_FLAG(std::string, arc_challenge, "",
          "ARC-Challenge test JSONL (AI2 or Hugging Face form).");
ABSL_FLAG(std::string, datasets, "",
          "Run only these datasets (openbookqa, arc_challenge).");
ABSL_FLAG(int, limit, 0, "Only the first N scored questions (0: all).");
// Output.
ABSL_FLAG(std::string, out, "", "Output directory (resumable).");
ABSL_FLAG(bool, overwrite, false,
          "Start runs over instead of resuming (also allows a changed "
          "configuration in an existing run directory).");
ABSL_FLAG(bool, progress, true, "Progress bar with ETA on stderr.");
ABSL_FLAG(bool, plots, true, "Draw the PNG plots with gnuplot.");
ABSL_FLAG(std::string, gnuplot, "gnuplot", "gnuplot executable.");
ABSL_FLAG(bool, dump_prompts, false,
          "Write <out>/<dataset>/prompts.jsonl (prompt, rendered template, "
          "token count).");
ABSL_FLAG(bool, plots_only, false,
          "Only rewrite the CSVs and plots from the summaries under --out.");
ABSL_FLAG(bool, list, false, "Print the expanded runs of the grid and exit.");
// Backend.
ABSL_FLAG(std::string, backend, "inprocess", "inprocess or grpc.");
ABSL_FLAG(std::string, receiver_dir, "",
          "In-process: receiver model directory (Hugging Face layout). This "
          "flag and the other *_dir flags take a directory, or a Hugging "
          "Face id OWNER/NAME[/SUBFOLDER][@REVISION] resolved offline from "
          "the hub cache (HF_HUB_CACHE, else HF_HOME/hub; fetch it with `hf "
          "download OWNER/NAME`), e.g. Qwen/Qwen3-0.6B.");
ABSL_FLAG(std::string, sharer_dir, "",
          "In-process: sharer model directory or Hugging Face id.");
ABSL_FLAG(std::string, fuser_dir, "",
          "In-process: C2C fuser checkpoint directory, or Hugging Face id "
          "with the pair's subfolder (e.g. "
          "nics-efc/C2C_Fuser/qwen3_0.6b+qwen2.5_0.5b_Fuser).");
ABSL_FLAG(std::string, tokenizer_dir, "",
          "Receiver tokenizer.json + tokenizer_config.json, a directory or "
          "Hugging Face id (default: the receiver's directory). With "
          "--backend=grpc: only used to count prompt tokens.");
ABSL_FLAG(std::string, sharer_tokenizer_dir, "",
          "In-process: the sharer's own tokenizer/template, a directory or "
          "Hugging Face id (sharer-only, text-to-text, token alignment; "
          "default: the sharer's directory).");
ABSL_FLAG(std::string, token_alignment, "auto",
          "In-process: C2C token alignment for the command line's pair: auto "
          "(when the fuser's config.json says is_do_alignment), on, off. Grid "
          "runs may override it (`token_alignment:`).");
ABSL_FLAG(std::string, alignment_strategy, "",
          "In-process: first or longest (default: longest, what C2C's "
          "evaluator uses).");
ABSL_FLAG(std::string, device, "cpu", "In-process: cpu, cuda, cuda:N.");
ABSL_FLAG(std::string, dtype, "auto",
          "In-process: bf16, fp16, fp32, or auto (bf16 on CUDA, fp32 on "
          "CPU).");
ABSL_FLAG(int, threads, 0, "In-process: intra-op CPU threads (0: default).");
ABSL_FLAG(int64_t, t2t_max_new_tokens, 256,
          "In-process text-to-text: the sharer's background tokens (paper: "
          "256).");
ABSL_FLAG(std::string, target, "",
          "gRPC: receiver address (host:port, dns:///host:port).");
ABSL_FLAG(bool, use_tls, false, "gRPC: TLS with the system roots.");
ABSL_FLAG(std::string, tls_ca, "", "gRPC: PEM roots for the server.");
ABSL_FLAG(std::string, tls_cert, "", "gRPC: client certificate (mTLS).");
ABSL_FLAG(std::string, tls_key, "", "gRPC: client key (mTLS).");
ABSL_FLAG(std::string, tls_server_name, "",
          "gRPC: name to check the server certificate against.");
ABSL_FLAG(bool, allow_insecure, false, "gRPC: allow plaintext.");
ABSL_FLAG(std::string, auth_token_file, "",
          "gRPC: file with the bearer token.");
ABSL_FLAG(double, rpc_timeout_s, 300, "gRPC: deadline per question.");
ABSL_FLAG(std::string, fallback, "fail",
          "gRPC C2C fallback policy: fail, receiver-only, server.");
ABSL_FLAG(int, receiver_layers, 0,
          "gRPC: receiver layer count (for receiver-indexed schedules).");
ABSL_FLAG(int, sharer_layers, 0,
          "gRPC: sharer layer count (for receiver-indexed schedules).");

namespace {

std::atomic<bool> g_stop{false};

extern "C" void OnSignal(int signal) {
  g_stop.store(true);
  // A second Ctrl-C kills the process the usual way.
  std::signal(signal, SIG_DFL);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kvwire::eval::kEvalUsage);
  // --help lists this file's flags (absl's default matches "<program>.cc").
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "eval/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);

  kvwire::eval::CliConfig c;
  c.grid = absl::GetFlag(FLAGS_grid);
  c.grid_vars = absl::GetFlag(FLAGS_grid_var);
  c.methods = absl::GetFlag(FLAGS_method);
  c.schemes = absl::GetFlag(FLAGS_scheme);
  c.granularities = absl::GetFlag(FLAGS_granularity);
  c.selections = absl::GetFlag(FLAGS_selection);
  c.proportions = absl::GetFlag(FLAGS_proportion);
  c.min_tokens = absl::GetFlag(FLAGS_min_tokens);
  c.schedules = absl::GetFlag(FLAGS_schedule);
  c.zstd = absl::GetFlag(FLAGS_zstd);
  c.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  c.openbookqa = absl::GetFlag(FLAGS_openbookqa);
  c.arc_challenge = absl::GetFlag(FLAGS_arc_challenge);
  c.datasets = absl::GetFlag(FLAGS_datasets);
  c.limit = absl::GetFlag(FLAGS_limit);
  c.out = absl::GetFlag(FLAGS_out);
  c.overwrite = absl::GetFlag(FLAGS_overwrite);
  c.progress = absl::GetFlag(FLAGS_progress);
  c.plots = absl::GetFlag(FLAGS_plots);
  c.gnuplot = absl::GetFlag(FLAGS_gnuplot);
  c.dump_prompts = absl::GetFlag(FLAGS_dump_prompts);
  c.plots_only = absl::GetFlag(FLAGS_plots_only);
  c.list = absl::GetFlag(FLAGS_list);
  c.backend = absl::GetFlag(FLAGS_backend);
  c.inprocess.receiver_dir = absl::GetFlag(FLAGS_receiver_dir);
  c.inprocess.sharer_dir = absl::GetFlag(FLAGS_sharer_dir);
  c.inprocess.fuser_dir = absl::GetFlag(FLAGS_fuser_dir);
  c.inprocess.tokenizer_dir = absl::GetFlag(FLAGS_tokenizer_dir);
  c.inprocess.sharer_tokenizer_dir = absl::GetFlag(FLAGS_sharer_tokenizer_dir);
  c.inprocess.token_alignment = absl::GetFlag(FLAGS_token_alignment);
  c.inprocess.alignment_strategy = absl::GetFlag(FLAGS_alignment_strategy);
  c.inprocess.device = absl::GetFlag(FLAGS_device);
  c.inprocess.dtype = absl::GetFlag(FLAGS_dtype);
  c.inprocess.threads = absl::GetFlag(FLAGS_threads);
  c.inprocess.text_to_text_max_new_tokens =
      absl::GetFlag(FLAGS_t2t_max_new_tokens);
  c.grpc.target = absl::GetFlag(FLAGS_target);
  c.grpc.channel.security.use_tls = absl::GetFlag(FLAGS_use_tls);
  c.grpc.channel.security.tls_ca_path = absl::GetFlag(FLAGS_tls_ca);
  c.grpc.channel.security.tls_cert_path = absl::GetFlag(FLAGS_tls_cert);
  c.grpc.channel.security.tls_key_path = absl::GetFlag(FLAGS_tls_key);
  c.grpc.channel.security.tls_server_name =
      absl::GetFlag(FLAGS_tls_server_name);
  c.grpc.channel.security.allow_insecure = absl::GetFlag(FLAGS_allow_insecure);
  c.grpc.timeout_seconds = absl::GetFlag(FLAGS_rpc_timeout_s);
  c.grpc.fallback = absl::GetFlag(FLAGS_fallback);
  c.grpc.receiver_layers = absl::GetFlag(FLAGS_receiver_layers);
  c.grpc.sharer_layers = absl::GetFlag(FLAGS_sharer_layers);
  c.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  if (c.backend == "grpc") c.prompt_tokenizer_dir = c.inprocess.tokenizer_dir;
  c.stop_requested = [] { return g_stop.load(); };
  return kvwire::eval::RunEvalCli(c, std::cout, std::cerr);
}
