// kill -9 the aggregator process at random moments while real client
// processes train; after every restart nothing acknowledged is lost or
// counted twice, every round completes, and the final model is bit for bit
// the one an uninterrupted run reaches. Kills: FLOTILLA_CRASH_KILLS (default 5).
// The federation runs SCAFFOLD with the Adam server optimizer, so the
// server's control variate and Adam's moments (committed with each round)
// must survive every kill as well, and each device's c_i must advance once
// per round it reports in, however often the aggregator dies.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "aggregator/store.h"
#include "client/pull.h"
#include "core/rng.h"
#include "core/subprocess.h"
#include "privacy/keys.h"
#include "proto/codec.h"
#include "testing/process_fleet.h"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

constexpr int kClients = 3;
// Enough rounds that every planned kill lands before the federation ends:
// max(20, 2 * kills).
int kRounds = 20;

using testing::Spawn;

// The aggregator's and the devices' settings of every run.
std::vector<std::string> AggregatorArgs(const testing::ProcessFleet& fleet) {
  return fleet.AggregatorArgs({"--arch", "2nn", "--rounds", std::to_string(kRounds), "--epochs", "1",
                               "--batch", "32", "--lr", "0.05", "--seed", "3", "--no-eval", "--finish-grace",
                               "3", "--strategy", "scaffold", "--server-optimizer", "adam"});
}
std::vector<std::string> ClientArgs(const testing::ProcessFleet& fleet, int i) {
  return fleet.ClientArgs(i, {"--train-limit", "3000", "--seed", "3", "--threads", "1"});
}

// Rounds each client saw recorded, parsed from its "recorded rounds:" line.
std::vector<uint32_t> RecordedRounds(const fs::path& log) {
  std::ifstream in(log);
  std::string line;
  std::vector<uint32_t> rounds;
  while (std::getline(in, line)) {
    if (line.rfind("recorded rounds:", 0) != 0) continue;
    std::istringstream words(line.substr(16));
    uint32_t r;
    while (words >> r) rounds.push_back(r);
  }
  return rounds;
}

struct RunResult {
  std::string final_weights;
  uint64_t final_version = 0;
  int kills = 0;
};

RunResult RunFleet(testing::ProcessFleet& fleet, int kills_wanted, uint64_t seed) {
  std::vector<pid_t> clients;
  pid_t agg = Spawn(AggregatorArgs(fleet), fleet.dir / "aggregator.log");
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(Spawn(ClientArgs(fleet, i), fleet.dir / ("dev" + std::to_string(i) + ".log")));
  }
  RunResult result;
  Rng rng(seed);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (true) {
    REQUIRE(std::chrono::steady_clock::now() < give_up);
    if (result.kills < kills_wanted) {
      // Kill at a random moment after the aggregator is serving again, so
      // that every planned kill lands while the federation runs.
      for (int tries = 0;
           tries < 100 && !client::QueryStatus(fleet.Probe(), std::chrono::milliseconds(200)).ok(); ++tries) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(rng.UniformInt(400)));
      int status = 0;
      if (::waitpid(agg, &status, WNOHANG) == agg) {
        REQUIRE(WIFEXITED(status));
        REQUIRE(WEXITSTATUS(status) == 0);
        break;  // finished before we could kill it again
      }
      // Every fourth stop is a graceful SIGTERM, which must exit cleanly and
      // leave the round just as resumable.
      const bool graceful = result.kills % 4 == 3;
      ::kill(agg, graceful ? SIGTERM : SIGKILL);
      const int code = WaitProcess(agg);
      if (graceful) CHECK(code == 0);
      ++result.kills;
      agg = Spawn(AggregatorArgs(fleet), fleet.dir / "aggregator.log");
    } else {
      INFO("aggregator log: " << (fleet.dir / "aggregator.log").string());
      REQUIRE(WaitProcess(agg) == 0);
      break;
    }
  }
  for (pid_t c : clients) REQUIRE(WaitProcess(c) == 0);

  auto store = aggregator::Store::OpenReadOnly((fleet.dir / "store").string());
  REQUIRE(store.ok());
  auto rounds = (*store)->ListRounds();
  REQUIRE(rounds.ok());
  REQUIRE(rounds->size() == static_cast<size_t>(kRounds));
  std::map<uint32_t, std::multiset<std::string>> received;
  for (const auto& r : *rounds) {
    CHECK(r.outcome() == records::RoundRecord::OUTCOME_COMPLETED);
    CHECK(r.received_size() == kClients);
    received[r.round()].insert(r.received().begin(), r.received().end());
  }
  // Every update a client saw acknowledged is in its round exactly once.
  for (int i = 0; i < kClients; ++i) {
    const std::string key = *privacy::ReadCurvePublicFile(
        (fleet.dir / "keys" / ("dev" + std::to_string(i) + ".curve.pub")).string());
    const auto recorded = RecordedRounds(fleet.dir / ("dev" + std::to_string(i) + ".log"));
    CHECK(recorded.size() == static_cast<size_t>(kRounds));
    for (uint32_t r : recorded) CHECK(received[r].count(key) == 1);
  }
  auto latest = (*store)->LatestModelVersion();
  REQUIRE(latest.ok());
  auto model = (*store)->GetModel(latest->value());
  REQUIRE(model.ok());
  result.final_weights = model->weights().data();
  result.final_version = latest->value();
  return result;
}

}  // namespace

TEST_CASE("kill -9 of the aggregator loses nothing acknowledged and changes nothing",
          "[crash][integration]") {
  const char* env = std::getenv("FLOTILLA_CRASH_KILLS");
  const int kills = env ? std::atoi(env) : 5;
  kRounds = std::max(20, 2 * kills);
  testing::ProcessFleet reference_fleet("reference", kClients);
  const RunResult reference = RunFleet(reference_fleet, 0, 1);
  testing::ProcessFleet crash_fleet("crash", kClients);
  const RunResult crashed = RunFleet(crash_fleet, kills, 42);
  INFO("aggregator killed " << crashed.kills << " times");
  std::printf(
      "crash test: aggregator stopped %d times (3 in 4 by SIGKILL, the rest by SIGTERM) over %d rounds\n",
      crashed.kills, kRounds);
  CHECK(crashed.kills == kills);  // every planned stop landed mid-federation
  CHECK(crashed.final_version == reference.final_version);
  CHECK(crashed.final_weights == reference.final_weights);
}
