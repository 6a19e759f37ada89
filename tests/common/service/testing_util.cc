// Test helpers for the kvwire services.
#include "tests/common/service/testing_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/client_context.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"

namespace kvwire {
namespace test_util {

// ------------------------------------------------------------ processes

struct ChildProcess::Lines {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> lines;
  bool closed = false;
};

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::vector<std::string>& argv, const std::string& stderr_path) {
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  // Everything the child needs is prepared before fork: after it only
  // async-signal-safe calls are allowed.
  std::vector<char*> args;
  for (const std::string& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(out[0]);
    close(out[1]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // The parent already died.
    dup2(out[1], 1);
    const int err =
        open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (err >= 0) dup2(err, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  auto child = std::unique_ptr<ChildProcess>(new ChildProcess());
  child->pid_ = pid;
  child->stdout_fd_ = out[0];
  child->stderr_path_ = stderr_path;
  child->lines_ = std::make_shared<Lines>();
  child->reader_ = std::thread([c = child.get()] { c->ReadLoop(); });
  return child;
}

void ChildProcess::ReadLoop() {
  std::string buffer;
  char data[4096];
  while (true) {
    const ssize_t n = read(stdout_fd_, data, sizeof(data));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buffer.append(data, static_cast<size_t>(n));
    size_t newline;
    while ((newline = buffer.find('\n')) != std::string::npos) {
      std::lock_guard<std::mutex> lock(lines_->mu);
      lines_->lines.push_back(buffer.substr(0, newline));
      buffer.erase(0, newline + 1);
      lines_->cv.notify_all();
    }
  }
  std::lock_guard<std::mutex> lock(lines_->mu);
  lines_->closed = true;
  lines_->cv.notify_all();
}

ChildProcess::~ChildProcess() {
  if (!reaped_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  if (reader_.joinable()) reader_.join();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

absl::StatusOr<std::map<std::string, std::string>> ChildProcess::WaitForLine(
    const std::string& prefix, absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(lines_->mu);
  std::string found;
  const bool ok = lines_->cv.wait_until(
      lock, absl::ToChronoTime(absl::Now() + timeout), [&] {
        for (const std::string& line : lines_->lines) {
          if (absl::StartsWith(line, prefix)) {
            found = line;
            return true;
          }
        }
        return lines_->closed;
      });
  if (!ok) {
    return absl::DeadlineExceededError(absl::StrCat(
        "no '", prefix, "' line within ", absl::FormatDuration(timeout)));
  }
  if (found.empty()) {
    return absl::AbortedError(absl::StrCat("process exited before '", prefix,
                                           "'; stderr:\n", Stderr()));
  }
  std::map<std::string, std::string> fields;
  for (absl::string_view part :
       absl::StrSplit(absl::string_view(found).substr(prefix.size()), ' ',
                      absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv =
        absl::StrSplit(part, absl::MaxSplits('=', 1));
    fields[kv.first] = kv.second;
  }
  return fields;
}

absl::Status ChildProcess::Signal(int signo) {
  if (reaped_) return absl::FailedPreconditionError("process already exited");
  if (kill(pid_, signo) != 0) {
    return absl::InternalError(absl::StrCat("kill: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ChildProcess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      return status;
    }
    if (r < 0 && errno != EINTR) {
      return absl::InternalError(
          absl::StrCat("waitpid: ", std::strerror(errno)));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("process ", pid_, " still running after ",
                       absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

std::string ChildProcess::Stderr() const {
  std::ifstream in(stderr_path_);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ------------------------------------------------------------ HTTP

absl::StatusOr<HttpResponse> HttpRequest(const std::string& host, int port,
                                         const std::string& method,
                                         const std::string& path,
                                         absl::Duration timeout,
                                         const std::string& extra_headers) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  struct timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("not an IPv4 address: ", host));
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("connect ", host, ":", port, ": ", std::strerror(err)));
  }
  const std::string request =
      absl::StrCat(method, " ", path, " HTTP/1.0\r\nHost: ", host, "\r\n",
                   extra_headers, "\r\n");
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("send failed");
  }
  std::string response;
  char data[8192];
  while (true) {
    const ssize_t n = recv(fd, data, sizeof(data), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      close(fd);
      return err == EAGAIN ? absl::DeadlineExceededError("recv timed out")
                           : absl::UnavailableError(std::strerror(err));
    }
    if (n == 0) break;
    response.append(data, static_cast<size_t>(n));
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (body == std::string::npos) {
    return absl::InternalError("malformed HTTP response");
  }
  HttpResponse out;
  std::vector<std::string> lines =
      absl::StrSplit(response.substr(0, body), "\r\n");
  out.status_line = lines.front();
  const std::vector<std::string> parts =
      absl::StrSplit(out.status_line, absl::MaxSplits(' ', 2));
  if (parts.size() < 2 || !absl::SimpleAtoi(parts[1], &out.status)) {
    return absl::InternalError(
        absl::StrCat("malformed status line: ", out.status_line));
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    out.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  out.body = response.substr(body + 4);
  return out;
}

absl::StatusOr<std::string> HttpGet(const std::string& host, int port,
                                    const std::string& path,
                                    absl::Duration timeout,
                                    const std::string& extra_headers) {
  auto response = HttpRequest(host, port, "GET", path, timeout, extra_headers);
  if (!response.ok()) return response.status();
  if (response->status != 200) {
    return absl::InternalError(absl::StrCat("HTTP: ", response->status_line));
  }
  return std::move(response->body);
}

namespace {

// Parses `{a="x",b="y"}` starting at text[pos] == '{'; returns the index
// after '}' or npos.
size_t ParseLabels(absl::string_view text, size_t pos,
                   std::map<std::string, std::string>* labels) {
  ++pos;
  while (pos < text.size() && text[pos] != '}') {
    const size_t eq = text.find('=', pos);
    if (eq == absl::string_view::npos || eq + 1 >= text.size() ||
        text[eq + 1] != '"') {
      return absl::string_view::npos;
    }
    std::string key(text.substr(pos, eq - pos));
    std::string value;
    size_t i = eq + 2;
    for (; i < text.size() && text[i] != '"'; ++i) {
      if (text[i] == '\\' && i + 1 < text.size()) {
        ++i;
        value.push_back(text[i] == 'n' ? '\n' : text[i]);
      } else {
        value.push_back(text[i]);
      }
    }
    if (i >= text.size()) return absl::string_view::npos;
    (*labels)[key] = value;
    pos = i + 1;
    if (pos < text.size() && text[pos] == ',') ++pos;
  }
  return pos < text.size() ? pos + 1 : absl::string_view::npos;
}

}  // namespace

std::optional<double> MetricValue(
    const std::string& text, const std::string& name,
    const std::map<std::string, std::string>& labels) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    if (!absl::StartsWith(line, name)) continue;
    absl::string_view rest = line.substr(name.size());
    std::map<std::string, std::string> got;
    size_t pos = 0;
    if (!rest.empty() && rest[0] == '{') {
      pos = ParseLabels(rest, 0, &got);
      if (pos == absl::string_view::npos) continue;
    }
    if (pos >= rest.size() || rest[pos] != ' ') continue;  // Longer name.
    if (got != labels) continue;
    double value = 0;
    absl::string_view number = absl::StripAsciiWhitespace(rest.substr(pos));
    number = number.substr(0, number.find(' '));  // Drop a timestamp.
    if (absl::SimpleAtod(number, &value)) return value;
  }
  return std::nullopt;
}

absl::StatusOr<StartedService> StartService(
    const std::vector<std::string>& argv, const std::string& ready_prefix,
    absl::Duration timeout) {
  StartedService service;
  ASSIGN_OR_RETURN(
      service.process,
      ChildProcess::Start(argv, MakeTempDir("svc") + "/stderr.log"));
  auto ready = service.process->WaitForLine(ready_prefix, timeout);
  if (!ready.ok()) {
    return absl::Status(ready.status().code(),
                        absl::StrCat(ready.status().message(), "\n",
                                     service.process->Stderr()));
  }
  if (!absl::SimpleAtoi((*ready)["grpc_port"], &service.port) ||
      !absl::SimpleAtoi((*ready)["metrics_port"], &service.metrics_port)) {
    return absl::InternalError(
        absl::StrCat("no ports in the ready line of ", argv[0]));
  }
  if (ready->count("http_port") != 0 &&
      !absl::SimpleAtoi((*ready)["http_port"], &service.http_port)) {
    return absl::InternalError(
        absl::StrCat("a bad http_port in the ready line of ", argv[0]));
  }
  return service;
}

std::string ScrapeMetrics(int metrics_port) {
  auto body = HttpGet("127.0.0.1", metrics_port, "/metrics");
  EXPECT_TRUE(body.ok()) << body.status();
  return body.value_or("");
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (condition()) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

// ------------------------------------------------------------ PKI

namespace {

absl::Status Run(const std::string& command) {
  const int rc = std::system(command.c_str());
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("command failed (", rc, "): ", command));
  }
  return absl::OkStatus();
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  return out ? absl::OkStatus() : absl::InternalError("write " + path);
}

absl::Status MakeCa(const std::string& dir, const std::string& name) {
  return Run(absl::StrCat(
      "cd '", dir,
      "' && openssl req -x509 -newkey ec -pkeyopt "
      "ec_paramgen_curve:prime256v1 -nodes -keyout ",
      name, ".key -out ", name, ".pem -days 2 -subj /CN=", name,
      " -addext basicConstraints=critical,CA:TRUE"
      " -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null"));
}

absl::Status MakeLeaf(const std::string& dir, const std::string& ca,
                      const std::string& name, const std::string& cn,
                      const std::string& extensions) {
  const std::string ext = absl::StrCat(name, ".ext");
  if (auto st = WriteText(absl::StrCat(dir, "/", ext), extensions); !st.ok()) {
    return st;
  }
  return Run(absl::StrCat("cd '", dir,
                          "' && openssl req -newkey ec -pkeyopt "
                          "ec_paramgen_curve:prime256v1 -nodes -keyout ",
                          name, ".key -out ", name, ".csr -subj /CN=", cn,
                          " 2>/dev/null && openssl x509 -req -in ", name,
                          ".csr -CA ", ca, ".pem -CAkey ", ca,
                          ".key -CAcreateserial -out ", name,
                          ".pem -days 2 -extfile ", ext, " 2>/dev/null"));
}

}  // namespace

absl::StatusOr<TestPki> MakeTestPki(const std::string& dir) {
  mkdir(dir.c_str(), 0755);
  TestPki p;
  p.dir = dir;
  const std::string leaf =
      "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n";
  if (auto st = MakeCa(dir, "ca"); !st.ok()) return st;
  if (auto st = MakeCa(dir, "otherca"); !st.ok()) return st;
  if (auto st = MakeLeaf(dir, "ca", "server", "localhost",
                         leaf + "extendedKeyUsage=serverAuth\n"
                                "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
      !st.ok()) {
    return st;
  }
  if (auto st = MakeLeaf(dir, "ca", "client", "kvwire-test-client",
                         leaf + "extendedKeyUsage=clientAuth\n");
      !st.ok()) {
    return st;
  }
  if (auto st = MakeLeaf(dir, "otherca", "otherclient", "kvwire-rogue-client",
                         leaf + "extendedKeyUsage=clientAuth\n");
      !st.ok()) {
    return st;
  }
  p.ca_cert = dir + "/ca.pem";
  p.server_cert = dir + "/server.pem";
  p.server_key = dir + "/server.key";
  p.client_cert = dir + "/client.pem";
  p.client_key = dir + "/client.key";
  p.other_ca_cert = dir + "/otherca.pem";
  p.other_client_cert = dir + "/otherclient.pem";
  p.other_client_key = dir + "/otherclient.key";
  return p;
}

// ------------------------------------------------------------ health

absl::StatusOr<int> HealthCheck(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& service,
                                absl::Duration timeout) {
  // grpc.health.v1.HealthCheckRequest{service = 1} by hand: no generated
  // code for health.proto is needed.
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0A);
    request.push_back(static_cast<char>(service.size()));  // < 128 bytes.
    request += service;
  }
  auto response =
      RawUnaryCall(channel, "/grpc.health.v1.Health/Check", request, timeout);
  if (!response.ok()) return response.status();
  // HealthCheckResponse{status = 1 (varint)}; absent means UNKNOWN (0).
  if (response->size() >= 2 && (*response)[0] == 0x08) return (*response)[1];
  return 0;
}

std::string MakeTempDir(const std::string& name) {
  static int counter = 0;
  std::string dir = absl::StrCat(::testing::TempDir(), "/kvwire_", getpid(),
                                 "_", name, "_", counter++);
  mkdir(dir.c_str(), 0755);
  return dir;
}

}  // namespace test_util
}  // namespace kvwire
