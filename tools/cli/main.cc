// kvwire-cli: command-line entry point. Subcommands:
//   codec-report   encode a synthetic KV cache with every scheme, print a table
//   ask            ask a question through a running kvwire-receiver
#include <ATen/Parallel.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/codec/scheme.h"
#include "common/flags_help.h"
#include "glog/logging.h"
#include "tools/cli/codec_report.h"

#ifdef KVWIRE_WITH_SERVICES
#include "tools/cli/ask.h"
#endif

ABSL_FLAG(int, layers, 24, "codec-report: KV layers of the synthetic cache");
ABSL_FLAG(int, kv_heads, 2, "codec-report: KV heads");
ABSL_FLAG(int, head_dim, 64, "codec-report: head dimension");
ABSL_FLAG(int, tokens, 118, "codec-report: prompt tokens");
ABSL_FLAG(uint64_t, seed, 0,
          "codec-report: random seed of the synthetic cache");
ABSL_FLAG(int, repetitions, 5, "codec-report: timed runs per scheme (median)");
ABSL_FLAG(int, threads, 1, "intra-op threads for tensor math");
ABSL_FLAG(bool, json, false, "print JSON instead of a table");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kvwire-cli <command> [flags]\n\ncommands:\n"
      "  codec-report  encode a synthetic Qwen2.5-0.5B-shaped KV cache with\n"
      "                every scheme and print bytes, bits/value, compression,\n"
      "                error and encode/decode times\n"
#ifdef KVWIRE_WITH_SERVICES
      "  ask           ask a question (or --choices) through a running\n"
      "                kvwire-receiver with a chosen transfer spec; prints\n"
      "                the answer, bytes and stage times (--json, --compare)\n"
      "\nexample:\n"
      "  kvwire-cli ask --target=127.0.0.1:50052 --plaintext \\\n"
      "      --question='Why is the sky blue?' --scheme=int4 "
      "--selection=back --proportion=0.5\n"
#else
      "\n(built without the services: no `ask`)\n"
      "\nexample:\n"
      "  kvwire-cli codec-report --json\n"
#endif
  );
  kvwire::HelpListsFlagsOf({"tools/cli/main.cc", "tools/cli/ask_command.cc"});
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
#ifdef KVWIRE_WITH_SERVICES
  if (args.size() == 2 && std::string(args[1]) == "ask") {
    return kvwire::RunAskCommand(absl::GetFlag(FLAGS_json));
  }
#endif
  if (args.size() != 2 || std::string(args[1]) != "codec-report") {
    std::cerr << absl::ProgramUsageMessage() << "\n";
    return 2;
  }
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  kvwire::SyntheticKvOptions cache;
  cache.layers = absl::GetFlag(FLAGS_layers);
  cache.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  cache.head_dim = absl::GetFlag(FLAGS_head_dim);
  cache.tokens = absl::GetFlag(FLAGS_tokens);
  cache.seed = absl::GetFlag(FLAGS_seed);
  if (cache.layers <= 0 || cache.kv_heads <= 0 || cache.head_dim <= 0 ||
      cache.tokens <= 0 || cache.head_dim % 32 != 0) {
    std::cerr << "layers, kv_heads, tokens must be positive and head_dim a "
                 "positive multiple of 32\n";
    return 2;
  }
  auto rows = kvwire::RunCodecReport(cache, kvwire::DefaultReportSpecs(),
                                     absl::GetFlag(FLAGS_repetitions));
  if (!rows.ok()) {
    std::cerr << "codec-report failed: " << rows.status() << "\n";
    return 1;
  }
  std::cout << (absl::GetFlag(FLAGS_json)
                    ? kvwire::FormatCodecReportJson(cache, *rows)
                    : kvwire::FormatCodecReportTable(cache, *rows))
            << std::endl;
  return 0;
}
