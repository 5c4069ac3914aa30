#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/log.h"
#include "core/rng.h"
#include "core/status.h"
#include "core/weights.h"

using namespace flotilla;

TEST_CASE("Status carries code and message", "[core]") {
  Status ok;
  CHECK(ok.ok());
  Status st = InvalidArgument("bad shape");
  CHECK_FALSE(st.ok());
  CHECK(st.ToString() == "INVALID_ARGUMENT: bad shape");
  CHECK(st.WithContext("update").message() == "update: bad shape");
  CHECK(Unavailable("x").retryable());
  CHECK_FALSE(InvalidArgument("x").retryable());
  StatusOr<int> v = 3;
  CHECK(*v == 3);
  StatusOr<int> e = NotFound("nope");
  CHECK(e.status().code() == StatusCode::kNotFound);
}

TEST_CASE("Layout checks names shapes and sizes", "[core]") {
  auto layout = Layout::Create({{"w", {2, 3}}, {"b", {3}}});
  REQUIRE(layout.ok());
  CHECK(layout->total_numel() == 9);
  CHECK(layout->tensors()[1].offset == 6);
  CHECK_FALSE(Layout::Create({{"w", {2}}, {"w", {3}}}).ok());
  CHECK_FALSE(Layout::Create({{"w", {-1}}}).ok());
  CHECK_FALSE(Layout::Create({{"w", {1 << 20, 1 << 20}}}).ok());
  auto other = Layout::Create({{"w", {3, 2}}, {"b", {3}}});
  REQUIRE(other.ok());
  Status diff = layout->CheckSame(*other);
  CHECK_FALSE(diff.ok());
  CHECK(diff.message().find("'w'") != std::string::npos);
}

TEST_CASE("Weights validation rejects wrong sizes and non-finite values", "[core]") {
  auto layout = std::make_shared<const Layout>(*Layout::Create({{"w", {4}}}));
  Weights w = Weights::Zeros(layout);
  CHECK(w.Validate().ok());
  w.data[2] = NAN;
  CHECK_FALSE(w.Validate().ok());
  w.data[2] = INFINITY;
  CHECK_FALSE(w.Validate().ok());
  w.data.pop_back();
  CHECK_FALSE(w.Validate().ok());
}

TEST_CASE("Rng is deterministic and roughly uniform", "[core]") {
  Rng a(42), b(42), c(43);
  for (int i = 0; i < 100; ++i) {
    uint64_t x = a.NextU64();
    CHECK(x == b.NextU64());
    (void)c;
  }
  CHECK(Rng(42).NextU64() != Rng(43).NextU64());
  CHECK(DeriveSeed(1, "train", 2, 3) != DeriveSeed(1, "train", 3, 2));
  Rng r(7);
  std::vector<int> counts(10, 0);
  for (int i = 0; i < 100000; ++i) counts[r.UniformInt(10)]++;
  for (int n : counts) CHECK(std::abs(n - 10000) < 500);
  double sum = 0, sumsq = 0;
  for (int i = 0; i < 100000; ++i) {
    double g = r.Gamma(2.5);
    sum += g;
    sumsq += g * g;
  }
  const double mean = sum / 100000, var = sumsq / 100000 - mean * mean;
  CHECK(mean == Approx(2.5).epsilon(0.02));
  CHECK(var == Approx(2.5).epsilon(0.05));
}

TEST_CASE("StatusOr value() on an error aborts in every build", "[core]") {
  // A child process takes the bad access; the parent sees it abort.
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::freopen("/dev/null", "w", stderr);
    flotilla::StatusOr<int> broken = flotilla::Internal("boom");
    const int v = broken.value();
    std::_Exit(v == 0 ? 3 : 4);  // reached only if value() did not abort
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGABRT);
}

TEST_CASE("Log lines as text or JSON, with the scope's fields, to a file", "[core]") {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("flotilla-log-" + std::to_string(::getpid()) + ".log"))
          .string();
  std::filesystem::remove(path);
  std::string error;
  REQUIRE(SetLogFile(path, &error));
  const LogLevel before = GetLogLevel();
  SetLogLevel(LogLevel::kInfo);
  {
    const ScopedLogFields outer({{"round", "7"}, {"device", "ab12cd34ef56"}});
    LOG_INFO("test", "plain");
    SetLogFormat(LogFormat::kJson);
    {
      const ScopedLogFields inner({{"round", "8"}});  // overrides the outer round
      LOG_WARN("test", "quote \" backslash \\ newline \n tab \t");
    }
    LOG_DEBUG("test", "below the level: not written");
  }
  LOG_ERROR("test", "no fields");
  SetLogFormat(LogFormat::kText);
  SetLogLevel(before);
  REQUIRE(SetLogFile("", &error));  // back to stderr
  std::ifstream in(path);
  std::string text, json, last;
  std::getline(in, text);
  std::getline(in, json);
  std::getline(in, last);
  CHECK(text.find(" I test: plain [round=7 device=ab12cd34ef56]") != std::string::npos);
  CHECK(json.rfind("{\"ts\":\"", 0) == 0);
  CHECK(
      json.find(
          "\"level\":\"warning\",\"component\":\"test\",\"msg\":\"quote \\\" backslash \\\\ newline \\n tab "
          "\\u0009\",\"round\":8,\"device\":\"ab12cd34ef56\"}") != std::string::npos);
  CHECK(last.find("\"msg\":\"no fields\"}") != std::string::npos);
  std::string more;
  CHECK_FALSE(std::getline(in, more));
  CHECK_FALSE(SetLogFile("/nonexistent-dir/x.log", &error));
  CHECK(error.find("cannot open log file") != std::string::npos);
  LogFormat f;
  CHECK(ParseLogFormat("json", &f));
  CHECK_FALSE(ParseLogFormat("xml", &f));
  std::filesystem::remove(path);
}
