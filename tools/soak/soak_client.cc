// kvwire-soak-client: the checking client of scripts/soak.sh. It asks a
// running kvwire-receiver questions (Answer RPC) and writes one JSON line per
// request with everything a checker needs to judge it afterwards: when it was
// sent and when it ended (wall-clock seconds), what was asked (question
// index, transfer spec, answer mode, fallback policy), and what came back
// (the gRPC status code and message, or the answer's mode, fell_back,
// fallback_reason, token ids and transfer report). No Torch: it starts in
// milliseconds and costs the soak's two cores nothing worth counting.
//
//   --baseline: each question x (receiver-only + each spec) once, in order,
//     with fallback FAIL (a fault-free run's answers: the reference).
//   otherwise: --threads closed-loop probe threads until --stop_file appears
//     or --duration_seconds pass; each request picks a question, an answer
//     mode (receiver-only with --receiver_only_fraction, else C2C with one of
//     --specs) and a fallback policy (receiver-only or fail, alternating).
//
// Specs: SCHEME or SCHEME@PROPORTION (knorm_topk selection), e.g.
// bf16,int8,int4,int4@0.5.
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvwire/v1/kvwire.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace {

namespace v1 = kvwire::v1;
using json = nlohmann::json;

struct Options {
  std::string target = "127.0.0.1:50052";
  std::string questions;
  std::vector<std::string> specs = {"bf16", "int8", "int4", "int4@0.5"};
  int max_new_tokens = 16;
  double deadline_seconds = 30;
  bool baseline = false;
  int threads = 2;
  std::string stop_file;
  double duration_seconds = 0;
  double receiver_only_fraction = 0.15;
  uint64_t seed = 1;
  double error_pause_seconds = 0.2;
  std::string id_prefix = "soak";
};

double Now() {
  return std::chrono::duration<double>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

bool ParseFlags(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--baseline") {
      o->baseline = true;
      continue;
    }
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) {
      std::cerr << "kvwire-soak-client: bad argument '" << a << "'\n";
      return false;
    }
    const std::string k = a.substr(2, eq - 2), v = a.substr(eq + 1);
    if (k == "target") o->target = v;
    else if (k == "questions") o->questions = v;
    else if (k == "specs") o->specs = Split(v, ',');
    else if (k == "max_new_tokens") o->max_new_tokens = std::atoi(v.c_str());
    else if (k == "deadline_seconds") o->deadline_seconds = std::atof(v.c_str());
    else if (k == "threads") o->threads = std::atoi(v.c_str());
    else if (k == "stop_file") o->stop_file = v;
    else if (k == "duration_seconds") o->duration_seconds = std::atof(v.c_str());
    else if (k == "receiver_only_fraction") o->receiver_only_fraction = std::atof(v.c_str());
    else if (k == "seed") o->seed = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "error_pause_seconds") o->error_pause_seconds = std::atof(v.c_str());
    else if (k == "id_prefix") o->id_prefix = v;
    else {
      std::cerr << "kvwire-soak-client: unknown flag --" << k << "\n";
      return false;
    }
  }
  if (o->questions.empty() || o->specs.empty() || o->max_new_tokens <= 0) {
    std::cerr << "kvwire-soak-client: --questions and --specs are required\n";
    return false;
  }
  return true;
}

bool ApplySpec(const std::string& label, v1::AnswerRequest* r) {
  static const std::map<std::string, v1::Scheme> kSchemes = {
      {"bf16", v1::SCHEME_BF16},   {"fp16", v1::SCHEME_FP16},
      {"int8", v1::SCHEME_INT8},   {"int4", v1::SCHEME_INT4},
      {"int2", v1::SCHEME_INT2},   {"nf4", v1::SCHEME_NF4},
      {"fp8_e4m3", v1::SCHEME_FP8_E4M3}, {"fp8_e5m2", v1::SCHEME_FP8_E5M2}};
  if (label == "receiver-only") {
    r->set_mode(v1::ANSWER_MODE_RECEIVER_ONLY);
    return true;
  }
  r->set_mode(v1::ANSWER_MODE_C2C);
  const size_t at = label.find('@');
  auto it = kSchemes.find(label.substr(0, at));
  if (it == kSchemes.end()) return false;
  r->mutable_spec()->set_scheme(it->second);
  if (at != std::string::npos) {
    const double p = std::atof(label.substr(at + 1).c_str());
    if (p <= 0) return false;
    r->mutable_spec()->mutable_selection()->set_mode(v1::SELECTION_KNORM_TOPK);
    r->mutable_spec()->mutable_selection()->set_proportion(p);
  }
  return true;
}

const char* ModeName(v1::AnswerMode m) {
  switch (m) {
    case v1::ANSWER_MODE_RECEIVER_ONLY: return "receiver-only";
    case v1::ANSWER_MODE_TEXT_TO_TEXT: return "text-to-text";
    default: return "c2c";
  }
}

const char* CodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN_CODE";
  }
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // A restarted receiver is retried every 250 ms to 1 s (gRPC's default
  // backoff grows to 120 s), as the services' own channels do.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 250);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 250);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Every thread its own connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                   args);
}

struct Ask {
  int question = 0;
  std::string spec;    // "receiver-only" or a C2C spec label.
  std::string policy;  // "fail" or "receiver-only".
};

std::mutex out_mu;

void RunOne(v1::Receiver::Stub* stub, const Options& o,
            const std::vector<std::string>& questions, const Ask& ask,
            const std::string& id, int thread) {
  v1::AnswerRequest request;
  request.set_request_id(id);
  request.set_question(questions[ask.question]);
  ApplySpec(ask.spec, &request);
  request.set_fallback(ask.policy == "fail" ? v1::FALLBACK_POLICY_FAIL
                                            : v1::FALLBACK_POLICY_RECEIVER_ONLY);
  request.mutable_generation()->set_max_new_tokens(o.max_new_tokens);
  grpc::ClientContext context;
  const double t0 = Now();
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(
                           static_cast<int64_t>(o.deadline_seconds * 1e3)));
  v1::AnswerResponse response;
  const grpc::Status st = stub->Answer(&context, request, &response);
  const double t1 = Now();
  json j = {{"id", id},
            {"thread", thread},
            {"t0", t0},
            {"t1", t1},
            {"q", ask.question},
            {"spec", ask.spec},
            {"policy", ask.policy},
            {"code", CodeName(st.error_code())}};
  if (st.ok()) {
    std::vector<uint32_t> ids(response.token_ids().begin(),
                              response.token_ids().end());
    j["mode"] = ModeName(response.mode());
    j["fell_back"] = response.fell_back();
    j["reason"] = response.fallback_reason();
    j["ids"] = ids;
    j["layers_sent"] = response.transfer().layers_sent();
    j["tokens_sent"] = response.transfer().tokens_sent();
    j["prompt_tokens"] = response.transfer().prompt_tokens();
    j["total_s"] = response.timings().total_seconds();
  } else {
    j["message"] = st.error_message();
  }
  std::lock_guard<std::mutex> lock(out_mu);
  std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n"
            << std::flush;
}

bool StopRequested(const Options& o, double start) {
  if (o.duration_seconds > 0 && Now() - start >= o.duration_seconds) return true;
  struct stat sb;
  return !o.stop_file.empty() && ::stat(o.stop_file.c_str(), &sb) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!ParseFlags(argc, argv, &o)) return 2;
  std::vector<std::string> questions;
  {
    std::ifstream in(o.questions);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line[0] != '#') questions.push_back(line);
    }
  }
  if (questions.empty()) {
    std::cerr << "kvwire-soak-client: no questions in " << o.questions << "\n";
    return 2;
  }
  for (const std::string& s : o.specs) {
    v1::AnswerRequest r;
    if (!ApplySpec(s, &r)) {
      std::cerr << "kvwire-soak-client: bad spec '" << s << "'\n";
      return 2;
    }
  }
  if (o.baseline) {
    auto stub = v1::Receiver::NewStub(MakeChannel(o.target));
    int n = 0;
    for (int q = 0; q < static_cast<int>(questions.size()); ++q) {
      std::vector<std::string> labels = {"receiver-only"};
      labels.insert(labels.end(), o.specs.begin(), o.specs.end());
      for (const std::string& label : labels) {
        RunOne(stub.get(), o, questions, Ask{q, label, "fail"},
               o.id_prefix + "-baseline-" + std::to_string(n++), 0);
      }
    }
    return 0;
  }
  const double start = Now();
  std::vector<std::thread> threads;
  for (int t = 0; t < o.threads; ++t) {
    threads.emplace_back([&, t] {
      auto stub = v1::Receiver::NewStub(MakeChannel(o.target));
      std::mt19937_64 rng(o.seed * 1000003 + t);
      std::uniform_real_distribution<double> unit(0, 1);
      int64_t n = 0;
      while (!StopRequested(o, start)) {
        Ask ask;
        ask.question = static_cast<int>(rng() % questions.size());
        ask.spec = unit(rng) < o.receiver_only_fraction
                       ? "receiver-only"
                       : o.specs[rng() % o.specs.size()];
        ask.policy = (n % 2 == 0) ? "receiver-only" : "fail";
        const double before = Now();
        RunOne(stub.get(), o, questions, ask,
               o.id_prefix + "-t" + std::to_string(t) + "-" + std::to_string(n),
               t);
        ++n;
        // Do not spin against a receiver that is down.
        if (Now() - before < 0.05 && o.error_pause_seconds > 0) {
          std::this_thread::sleep_for(std::chrono::milliseconds(
              static_cast<int64_t>(o.error_pause_seconds * 1e3)));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  return 0;
}
