// The simulator as its users run it: whole `flotilla sim` processes, a
// server with shards started by mpirun, and what they write.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/subprocess.h"
#include "testing/kill_on_exit.h"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

const std::string kBin = FLOTILLA_BIN;

fs::path TempDir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("flotilla-sim-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A small check-in federation: 2,000 devices of 30 examples, 40 kept per
// round, 4 rounds of logistic regression.
std::vector<std::string> Scenario(const fs::path& out, uint64_t seed) {
  return {"--clients", "2000", "--partition", "windows:30", "--arch", "logreg", "--rounds", "4", "--checkin",
          "--clients-per-round", "40", "--over-selection", "1", "--deadline", "60", "--selection-window", "2",
          // The window never closes below a full round, however late the
          // devices (or shards) start on a loaded machine.
          "--min-clients", "40", "--seed", std::to_string(seed), "--out", out.string(), "--quiet", "--log",
          "warning"};
}

int Run(std::vector<std::string> args, const fs::path& log) {
  args.insert(args.begin(), kBin);
  pid_t pid = SpawnProcess(args, log.string());
  REQUIRE(pid > 0);
  return WaitProcess(pid);
}

// The endpoint a `sim serve` writes to its --endpoint-file, once it is there.
std::string WaitForEndpoint(const fs::path& file) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(file) && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE(fs::exists(file));
  std::string endpoint = ReadFile(file);
  endpoint.erase(endpoint.find_last_not_of("\n") + 1);
  return endpoint;
}

int RunSim(const std::vector<std::string>& scenario, const fs::path& log, const std::string& sub = "") {
  std::vector<std::string> args = {"sim"};
  if (!sub.empty()) args.push_back(sub);
  args.insert(args.end(), scenario.begin(), scenario.end());
  return Run(args, log);
}

}  // namespace

TEST_CASE("Two simulations with the same seed write identical metrics files, and another seed does not",
          "[sim][process]") {
  const fs::path dir = TempDir("repro");
  REQUIRE(RunSim(Scenario(dir / "a", 5), dir / "a.log") == 0);
  REQUIRE(RunSim(Scenario(dir / "b", 5), dir / "b.log") == 0);
  REQUIRE(RunSim(Scenario(dir / "c", 6), dir / "c.log") == 0);
  const std::string a = ReadFile(dir / "a" / "metrics.csv"), b = ReadFile(dir / "b" / "metrics.csv"),
                    c = ReadFile(dir / "c" / "metrics.csv");
  INFO(a);
  REQUIRE(std::count(a.begin(), a.end(), '\n') == 5);  // the header and 4 rounds
  CHECK(a == b);
  CHECK(a != c);
  // The measured figures are kept apart.
  CHECK(ReadFile(dir / "a" / "timing.csv").find("selection_seconds") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("Three shards started by mpirun write the same metrics as one process", "[sim][process][mpi]") {
  const std::string mpirun = "/usr/bin/mpirun";
  if (!fs::exists(mpirun)) FAIL("mpirun is missing: install openmpi-bin (scripts/deps.txt)");
  const fs::path dir = TempDir("mpi");
  REQUIRE(RunSim(Scenario(dir / "one", 9), dir / "one.log") == 0);
  // The server, then three shards that take their index from mpirun.
  std::vector<std::string> serve = {kBin, "sim", "serve"};
  for (const auto& a : Scenario(dir / "many", 9)) serve.push_back(a);
  serve.insert(serve.end(), {"--endpoint-file", (dir / "endpoint").string()});
  pid_t server = SpawnProcess(serve, (dir / "serve.log").string());
  REQUIRE(server > 0);
  testing::KillOnExit guard{server};
  const std::string endpoint = WaitForEndpoint(dir / "endpoint");
  std::vector<std::string> shards = {
      mpirun, "--allow-run-as-root", "--oversubscribe", "-n", "3", kBin, "sim", "shard", "--join", endpoint};
  for (const auto& a : Scenario(dir / "shard-out", 9)) shards.push_back(a);
  pid_t launcher = SpawnProcess(shards, (dir / "shards.log").string());
  REQUIRE(launcher > 0);
  const int shards_rc = WaitProcess(launcher);
  INFO(ReadFile(dir / "shards.log"));
  REQUIRE(shards_rc == 0);
  const int server_rc = WaitProcess(server);
  guard.done = true;
  INFO(ReadFile(dir / "shards.log") << ReadFile(dir / "serve.log"));
  REQUIRE(shards_rc == 0);
  REQUIRE(server_rc == 0);
  const std::string log = ReadFile(dir / "shards.log");
  for (int i = 0; i < 3; ++i)
    CHECK(log.find("shard " + std::to_string(i) + " of 3 done") != std::string::npos);
  const std::string one = ReadFile(dir / "one" / "metrics.csv");
  REQUIRE(std::count(one.begin(), one.end(), '\n') == 5);
  CHECK(ReadFile(dir / "many" / "metrics.csv") == one);
  fs::remove_all(dir);
}

TEST_CASE(
    "With 30% dropouts and the aggregator killed and restarted, every round completes as without the kill",
    "[sim][process][faults]") {
  const fs::path dir = TempDir("faults");
  std::vector<std::string> scenario = Scenario(dir / "calm", 3);
  // Faults: 30% of the selected devices vanish (before, during or after
  // training); a round's deadline closes it without them.
  scenario.insert(scenario.end(), {"--dropout", "0.3", "--deadline", "4", "--request-timeout", "3"});
  REQUIRE(RunSim(scenario, dir / "calm.log") == 0);
  std::vector<std::string> killed = scenario;
  for (auto& a : killed) {
    if (a == (dir / "calm").string()) a = (dir / "killed").string();
  }
  killed.insert(killed.end(), {"--aggregator-restarts", "1", "--aggregator-down-seconds", "1"});
  const int rc = RunSim(killed, dir / "killed.log");
  const std::string log = ReadFile(dir / "killed.log");
  INFO(log << ReadFile(dir / "killed" / "serve.log"));
  REQUIRE(rc == 0);
  CHECK(log.find("aggregator killed (SIGKILL) in round") != std::string::npos);
  CHECK(log.find("aggregator started again on its store") != std::string::npos);
  const std::string calm = ReadFile(dir / "calm" / "metrics.csv");
  const std::string after_kill = ReadFile(dir / "killed" / "metrics.csv");
  REQUIRE(std::count(after_kill.begin(), after_kill.end(), '\n') == 5);
  // Every round completed (the second column), with the dropouts missing.
  std::istringstream rows(after_kill);
  std::string row;
  std::getline(rows, row);
  int unreported = 0;
  while (std::getline(rows, row)) {
    std::vector<std::string> cells;
    std::stringstream cs(row);
    for (std::string c; std::getline(cs, c, ',');) cells.push_back(c);
    REQUIRE(cells.size() > 6);
    CHECK(cells[1] == "1");
    unreported += std::stoi(cells[6]);
  }
  CHECK(unreported > 0);
  // The restart resumed the round with its recorded updates: the same run.
  CHECK(after_kill == calm);
  if (after_kill == calm) fs::remove_all(dir);  // else kept for a look
}

TEST_CASE("An aggregator at its file-descriptor limit starts rounds with the devices it can hold",
          "[sim][process][faults]") {
  const std::string prlimit = "/usr/bin/prlimit";
  if (!fs::exists(prlimit)) FAIL("prlimit is missing (util-linux)");
  const fs::path dir = TempDir("fdlimit");
  // 300 devices wanted per round from an aggregator allowed 200 open files
  // (a tenth kept for its store): selection holds what fits, tells the rest
  // to come back, and starts each round with what it holds long before its
  // 60 s window would close.
  auto scenario = [&](const fs::path& out) {
    return std::vector<std::string>{"--clients",   "1200",
                                    "--partition", "windows:20",
                                    "--arch",      "logreg",
                                    "--rounds",    "3",
                                    "--checkin",   "--clients-per-round",
                                    "300",         "--over-selection",
                                    "1",           "--selection-window",
                                    "60",          "--deadline",
                                    "60",          "--seed",
                                    "5",           "--out",
                                    out.string(),  "--quiet",
                                    "--log",       "info"};
  };
  std::vector<std::string> serve = {prlimit, "--nofile=200:200", kBin, "sim", "serve"};
  for (const auto& a : scenario(dir / "run")) serve.push_back(a);
  serve.insert(serve.end(), {"--endpoint-file", (dir / "endpoint").string()});
  const pid_t server = SpawnProcess(serve, (dir / "serve.log").string());
  REQUIRE(server > 0);
  testing::KillOnExit guard{server};
  std::vector<std::string> shard = {
      kBin, "sim", "shard", "--index", "0", "--of", "1", "--join", WaitForEndpoint(dir / "endpoint")};
  for (const auto& a : scenario(dir / "shard")) shard.push_back(a);
  const auto start = std::chrono::steady_clock::now();
  const pid_t devices = SpawnProcess(shard, (dir / "shard.log").string());
  REQUIRE(devices > 0);
  const int devices_rc = WaitProcess(devices);
  const int server_rc = WaitProcess(server);
  guard.done = true;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string log = ReadFile(dir / "serve.log");
  INFO(log.substr(log.size() > 6000 ? log.size() - 6000 : 0) << ReadFile(dir / "shard.log"));
  REQUIRE(server_rc == 0);
  REQUIRE(devices_rc == 0);
  CHECK(log.find("at the limit of open connections") != std::string::npos);
  CHECK(log.find("check-ins it could hold") != std::string::npos);
  CHECK(log.find("Too many open files") == std::string::npos);
  CHECK(log.find("could not") == std::string::npos);
  CHECK(seconds < 150);  // three 60 s windows would be 180 s
  const std::string metrics = ReadFile(dir / "run" / "metrics.csv");
  REQUIRE(std::count(metrics.begin(), metrics.end(), '\n') == 4);
  std::istringstream rows(metrics);
  std::string row;
  std::getline(rows, row);
  INFO(metrics);
  while (std::getline(rows, row)) CHECK(row.compare(row.find(',') + 1, 2, "1,") == 0);  // completed
  fs::remove_all(dir);
}
