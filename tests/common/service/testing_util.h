// Test helpers for the kvwire services: child processes that cannot leak, a
// tiny HTTP client for /metrics, throwaway PKI made with openssl, gRPC
// health checks, and bounded waiting for a condition.
#ifndef KVWIRE_TESTS_COMMON_SERVICE_TESTING_UTIL_H_
#define KVWIRE_TESTS_COMMON_SERVICE_TESTING_UTIL_H_

#include <grpcpp/channel.h>
#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/service/health.h"

namespace kvwire {
namespace test_util {

// A child process (fork + exec) whose stdout is read line by line and whose
// stderr goes to a file. It gets SIGKILL when the test process dies
// (PR_SET_PDEATHSIG) and in the destructor unless it already exited, so
// tests never leak processes.
class ChildProcess {
 public:
  // `argv[0]` is the executable path. INTERNAL if fork/exec setup fails.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      const std::vector<std::string>& argv, const std::string& stderr_path);
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  // Waits up to `timeout` for a stdout line starting with `prefix` and
  // returns its key=value fields. DEADLINE_EXCEEDED on timeout, ABORTED if
  // stdout closed first (the process died; see stderr).
  absl::StatusOr<std::map<std::string, std::string>> WaitForLine(
      const std::string& prefix, absl::Duration timeout);
  absl::Status Signal(int signo);
  // Waits up to `timeout` for the process to exit; returns its wait status
  // (use WIFEXITED/WEXITSTATUS). DEADLINE_EXCEEDED on timeout.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // Everything written to stderr so far.
  std::string Stderr() const;

 private:
  ChildProcess() = default;
  void ReadLoop();

  pid_t pid_ = -1;
  bool reaped_ = false;
  int stdout_fd_ = -1;
  std::string stderr_path_;
  std::thread reader_;
  struct Lines;
  std::shared_ptr<Lines> lines_;
};

// One HTTP/1.0 exchange: the status code, the headers (names lower-cased)
// and the body, whatever the status.
struct HttpResponse {
  std::string status_line;  // "HTTP/1.1 503 Service Unavailable".
  int status = 0;
  std::map<std::string, std::string> headers;
  std::string body;
};
// `method` `path` to http://host:port over a plain socket, with
// `extra_headers` ("Name: value\r\n" lines). UNAVAILABLE /
// DEADLINE_EXCEEDED when no response arrives, INTERNAL for a malformed one.
absl::StatusOr<HttpResponse> HttpRequest(
    const std::string& host, int port, const std::string& method,
    const std::string& path, absl::Duration timeout = absl::Seconds(5),
    const std::string& extra_headers = "");

// GET http://host:port/path over a plain socket (HTTP/1.0), with
// `extra_headers` ("Name: value\r\n" lines). Returns the body of a 200
// response; UNAVAILABLE / DEADLINE_EXCEEDED / INTERNAL (with the status
// line) otherwise.
absl::StatusOr<std::string> HttpGet(const std::string& host, int port,
                                    const std::string& path,
                                    absl::Duration timeout = absl::Seconds(5),
                                    const std::string& extra_headers = "");

// The value of the sample `name{labels}` in a Prometheus text exposition,
// where `labels` lists label="value" pairs in any order (a subset must
// match exactly the sample's full label set). nullopt if absent.
std::optional<double> MetricValue(
    const std::string& text, const std::string& name,
    const std::map<std::string, std::string>& labels);

// A kvwire service binary started as a ChildProcess, with the ports its
// ready line announced.
struct StartedService {
  std::unique_ptr<ChildProcess> process;
  int port = 0;
  int metrics_port = 0;
  int http_port = 0;  // When the ready line has http_port=.
};
// Starts `argv` (stderr into a fresh temporary directory) and waits up to
// `timeout` for its stdout line starting with `ready_prefix` (e.g.
// "kvwire-receiver ready") with grpc_port= and metrics_port= (and maybe
// http_port=). The
// WaitForLine errors, with the process's stderr appended.
absl::StatusOr<StartedService> StartService(
    const std::vector<std::string>& argv, const std::string& ready_prefix,
    absl::Duration timeout);

// The /metrics text of the service on 127.0.0.1:`metrics_port` ("" when it
// cannot be read; the test fails).
std::string ScrapeMetrics(int metrics_port);

// Polls `condition` (every 10 ms) until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout);

// Throwaway PKI in a directory, made with the openssl command line: a CA,
// a server certificate for "localhost" and 127.0.0.1 signed by it, a client
// certificate signed by it, and an unrelated CA with its own client
// certificate.
struct TestPki {
  std::string dir;
  std::string ca_cert;
  std::string server_cert, server_key;
  std::string client_cert, client_key;
  std::string other_ca_cert;
  std::string other_client_cert, other_client_key;
};
absl::StatusOr<TestPki> MakeTestPki(const std::string& dir);

using ::kvwire::RawUnaryCall;  // common/service/health.h

// grpc.health.v1.Health/Check for `service` ("" = overall): the status
// enum (1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN) or the call's error.
absl::StatusOr<int> HealthCheck(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& service,
                                absl::Duration timeout = absl::Seconds(5));

// A fresh directory under the test temp dir.
std::string MakeTempDir(const std::string& name);

}  // namespace test_util
}  // namespace kvwire

#endif  // KVWIRE_TESTS_COMMON_SERVICE_TESTING_UTIL_H_
