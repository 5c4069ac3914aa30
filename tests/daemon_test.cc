// The device daemon (`flotilla client run --config device.toml`) as
// separate processes against a real aggregator process: started before its
// aggregator, losing it for a minute, killed with SIGKILL between sending
// an update and reading its acknowledgement.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "aggregator/store.h"
#include "client/pull.h"
#include "core/subprocess.h"
#include "privacy/keys.h"
#include "testing/process_fleet.h"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

using testing::Spawn;

std::vector<std::string> AggregatorArgs(const testing::ProcessFleet& fleet, int rounds,
                                        const std::string& arch = "logreg", int epochs = 1) {
  return fleet.AggregatorArgs({"--arch", arch, "--rounds", std::to_string(rounds), "--epochs",
                               std::to_string(epochs), "--batch", "32", "--lr", "0.05", "--seed", "3",
                               "--no-eval", "--finish-grace", "3", "--deadline", "300"});
}

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Waits until `log` contains `text` (or the time is up).
bool WaitForLog(const fs::path& log, const std::string& text, std::chrono::seconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (ReadAll(log).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// The end of a log, for failure messages.
std::string Tail(const fs::path& log) {
  const std::string all = ReadAll(log);
  return all.size() > 3000 ? all.substr(all.size() - 3000) : all;
}

// Every round completed, and in each the devices' updates each counted once.
void CheckRounds(const testing::ProcessFleet& fleet, int rounds) {
  auto store = aggregator::Store::OpenReadOnly(fleet.store().string());
  REQUIRE(store.ok());
  auto records = (*store)->ListRounds();
  REQUIRE(records.ok());
  REQUIRE(records->size() == static_cast<size_t>(rounds));
  for (const auto& r : *records) {
    INFO("round " << r.round());
    CHECK(r.outcome() == records::RoundRecord::OUTCOME_COMPLETED);
    const std::multiset<std::string> received(r.received().begin(), r.received().end());
    CHECK(received.size() == static_cast<size_t>(fleet.clients));
    for (const auto& key : received) CHECK(received.count(key) == 1);
  }
}

}  // namespace

TEST_CASE("A daemon started before its aggregator finishes and writes the final model", "[crash][daemon]") {
  testing::ProcessFleet fleet("daemon-first", 2);
  std::vector<pid_t> devices;
  for (int i = 0; i < 2; ++i) {
    fleet.WriteDeviceConfig(i,
                            "model_out = \"" + (fleet.dir / ("final" + std::to_string(i))).string() + "\"\n");
    devices.push_back(Spawn(fleet.DaemonArgs(i), fleet.log("dev" + std::to_string(i))));
  }
  // Nobody is listening yet: the daemons keep trying.
  std::this_thread::sleep_for(std::chrono::seconds(4));
  for (pid_t d : devices) REQUIRE(::waitpid(d, nullptr, WNOHANG) == 0);
  const pid_t agg = Spawn(AggregatorArgs(fleet, 2), fleet.log("aggregator"));
  INFO("logs in " << fleet.dir.string());
  REQUIRE(WaitProcess(agg) == 0);
  for (int i = 0; i < 2; ++i) {
    INFO(Tail(fleet.log("dev" + std::to_string(i))));
    CHECK(WaitProcess(devices[static_cast<size_t>(i)]) == 0);
  }
  CheckRounds(fleet, 2);
  for (int i = 0; i < 2; ++i) {
    const std::string log = ReadAll(fleet.log("dev" + std::to_string(i)));
    CHECK(log.find("recorded rounds: 1 2") != std::string::npos);
    CHECK(log.find("wrote the final model (version 3, signature verified)") != std::string::npos);
    // The file the device's own code reads: the federation's last model.
    const std::string weights = ReadAll(fleet.dir / ("final" + std::to_string(i)));
    CHECK(fs::exists(fleet.dir / ("final" + std::to_string(i) + ".json")));
    auto store = aggregator::Store::OpenReadOnly(fleet.store().string());
    REQUIRE(store.ok());
    auto model = (*store)->GetModel(3);  // version 1 is the initial model
    REQUIRE(model.ok());
    CHECK((weights == model->weights().data()));
  }
}

TEST_CASE("Daemons whose aggregator disappears for a minute finish the federation", "[crash][daemon]") {
  const char* env = std::getenv("FLOTILLA_OUTAGE_SECONDS");
  const int outage = env != nullptr ? std::atoi(env) : 60;
  testing::ProcessFleet fleet("daemon-outage", 2);
  std::vector<pid_t> devices;
  for (int i = 0; i < 2; ++i) {
    fleet.WriteDeviceConfig(i);
    devices.push_back(Spawn(fleet.DaemonArgs(i), fleet.log("dev" + std::to_string(i))));
  }
  // Rounds of about a second (2nn, 5 epochs): the kill lands mid-federation.
  pid_t agg = Spawn(AggregatorArgs(fleet, 5, "2nn", 5), fleet.log("aggregator"));
  INFO("logs in " << fleet.dir.string());
  // Once the first round is in, the aggregator vanishes without a word.
  bool first_done = false;
  for (int tries = 0; tries < 600 && !first_done; ++tries) {
    auto status = client::QueryStatus(fleet.Probe(), std::chrono::milliseconds(200));
    first_done = status.ok() && status->rounds_completed() >= 1;
    if (!first_done) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  INFO(Tail(fleet.log("aggregator")));
  INFO(Tail(fleet.log("dev0")));
  REQUIRE(first_done);
  ::kill(agg, SIGKILL);
  WaitProcess(agg);
  std::this_thread::sleep_for(std::chrono::seconds(outage));
  for (pid_t d : devices) REQUIRE(::waitpid(d, nullptr, WNOHANG) == 0);  // still trying
  agg = Spawn(AggregatorArgs(fleet, 5, "2nn", 5), fleet.log("aggregator"));
  REQUIRE(WaitProcess(agg) == 0);
  for (int i = 0; i < 2; ++i) {
    INFO(Tail(fleet.log("dev" + std::to_string(i))));
    CHECK(WaitProcess(devices[static_cast<size_t>(i)]) == 0);
  }
  CheckRounds(fleet, 5);
  for (int i = 0; i < 2; ++i) {
    const std::string log = ReadAll(fleet.log("dev" + std::to_string(i)));
    CHECK(log.find("recorded rounds: 1 2 3 4 5") != std::string::npos);
    CHECK(log.find("reconnecting") != std::string::npos);
  }
}

TEST_CASE("A daemon killed between sending its update and the acknowledgement delivers it once",
          "[crash][daemon]") {
  testing::ProcessFleet fleet("daemon-kill", 2);
  for (int i = 0; i < 2; ++i) fleet.WriteDeviceConfig(i);
  const pid_t agg = Spawn(AggregatorArgs(fleet, 2), fleet.log("aggregator"));
  const pid_t dev0 = Spawn(fleet.DaemonArgs(0), fleet.log("dev0"));
  // dev1 holds still for 30 s once its round-1 update is on the wire: the
  // aggregator stores and acknowledges it meanwhile; dev1 never reads that.
  std::vector<std::string> held = {"/usr/bin/env", "FLOTILLA_FAULT_HOLD_AFTER_SEND_MS=30000"};
  for (const auto& a : fleet.DaemonArgs(1)) held.push_back(a);
  pid_t dev1 = Spawn(held, fleet.log("dev1-first"));
  INFO("logs in " << fleet.dir.string());
  REQUIRE(WaitForLog(fleet.log("dev1-first"), "update for round 1 sent; holding", std::chrono::seconds(120)));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the update reaches the aggregator
  ::kill(dev1, SIGKILL);
  CHECK(WaitProcess(dev1) == -SIGKILL);
  dev1 = Spawn(fleet.DaemonArgs(1), fleet.log("dev1"));
  REQUIRE(WaitProcess(agg) == 0);
  CHECK(WaitProcess(dev0) == 0);
  CHECK(WaitProcess(dev1) == 0);
  // The restarted daemon found the update in its outbox, sent it again, and
  // the aggregator counted it once (it said so: already recorded).
  const std::string log = ReadAll(fleet.log("dev1"));
  CHECK(log.find("re-sending the update for round 1 from the outbox") != std::string::npos);
  CHECK(log.find("recorded rounds: 1 2") != std::string::npos);
  CHECK(log.find("trained 1 rounds") != std::string::npos);  // round 1 was not trained again
  CheckRounds(fleet, 2);
}

TEST_CASE("SIGUSR1 pauses a daemon (it declines its rounds) and SIGTERM stops one cleanly",
          "[crash][daemon]") {
  testing::ProcessFleet fleet("daemon-signals", 2);
  for (int i = 0; i < 2; ++i) fleet.WriteDeviceConfig(i);
  const pid_t dev0 = Spawn(fleet.DaemonArgs(0), fleet.log("dev0"));
  const pid_t dev1 = Spawn(fleet.DaemonArgs(1), fleet.log("dev1"));
  INFO("logs in " << fleet.dir.string());
  // The device is up (its data loaded, its handlers installed) before the
  // aggregator starts: pause it.
  REQUIRE(WaitForLog(fleet.log("dev1"), "training examples", std::chrono::seconds(60)));
  ::kill(dev1, SIGUSR1);
  const pid_t agg = Spawn(fleet.AggregatorArgs({"--arch", "logreg", "--rounds", "2", "--min-updates", "1",
                                                "--no-eval", "--finish-grace", "3", "--seed", "3"}),
                          fleet.log("aggregator"));
  REQUIRE(WaitProcess(agg) == 0);
  CHECK(WaitProcess(dev0) == 0);
  CHECK(WaitProcess(dev1) == 0);
  const std::string paused = ReadAll(fleet.log("dev1"));
  CHECK(paused.find("trained 0 rounds") != std::string::npos);
  CHECK(paused.find("2 rounds paused") != std::string::npos);
  CHECK(ReadAll(fleet.log("dev0")).find("recorded rounds: 1 2") != std::string::npos);

  // No aggregator at all: the daemon keeps trying until it is told to stop.
  const pid_t lonely = Spawn(fleet.DaemonArgs(0), fleet.log("lonely"));
  REQUIRE(WaitForLog(fleet.log("lonely"), "reconnecting", std::chrono::seconds(60)));
  ::kill(lonely, SIGTERM);
  CHECK(WaitProcess(lonely) == 0);
}

TEST_CASE("Daemons in check-in mode take turns: connect, train or come back later, disconnect",
          "[crash][daemon][checkin]") {
  testing::ProcessFleet fleet("daemon-checkin", 3);
  std::vector<pid_t> devices;
  for (int i = 0; i < 3; ++i) {
    fleet.WriteDeviceConfig(i, "checkin = true\n");
    devices.push_back(Spawn(fleet.DaemonArgs(i), fleet.log("dev" + std::to_string(i))));
  }
  const pid_t agg = Spawn(fleet.AggregatorArgs({"--arch",
                                                "logreg",
                                                "--rounds",
                                                "3",
                                                "--min-clients",
                                                "2",
                                                "--checkin",
                                                "--clients-per-round",
                                                "2",
                                                "--over-selection",
                                                "1",
                                                "--selection-quiet",
                                                "0.2",
                                                "--min-come-back",
                                                "0.2",
                                                "--max-come-back",
                                                "2",
                                                "--no-eval",
                                                "--finish-grace",
                                                "3",
                                                "--seed",
                                                "3",
                                                "--deadline",
                                                "120"}),
                          fleet.log("aggregator"));
  INFO("logs in " << fleet.dir.string());
  REQUIRE(WaitProcess(agg) == 0);
  // Away devices learn of the end only if they check in within the grace;
  // the rest are stopped as an operator would.
  for (pid_t d : devices) ::kill(d, SIGTERM);
  for (pid_t d : devices) CHECK(WaitProcess(d) == 0);
  auto store = aggregator::Store::OpenReadOnly(fleet.store().string());
  REQUIRE(store.ok());
  auto records = (*store)->ListRounds();
  REQUIRE(records.ok());
  REQUIRE(records->size() == 3);
  std::map<std::string, int> rounds_per_device;
  for (const auto& r : *records) {
    INFO("round " << r.round());
    CHECK(r.outcome() == records::RoundRecord::OUTCOME_COMPLETED);
    CHECK(r.received().size() == 2);
    for (const auto& key : r.received()) ++rounds_per_device[key];
  }
  // Two of three are selected per round, so a device that trained was
  // either in round 1 or came back after being turned away: all three
  // training means at least one came back and was selected.
  CHECK(rounds_per_device.size() == 3);
}

TEST_CASE("The embedding example takes part in a federation with the application's own examples",
          "[crash][daemon]") {
  testing::ProcessFleet fleet("embed", 1);
  const pid_t agg =
      Spawn(fleet.AggregatorArgs({"--arch", "logreg", "--rounds", "2", "--no-eval", "--finish-grace", "3"}),
            fleet.log("aggregator"));
  const std::string state = (fleet.dir / "embed-state").string();
  const pid_t app = Spawn({EMBED_DEVICE_BIN, "--endpoint", fleet.endpoint(), "--name", "dev0", "--keys",
                           (fleet.dir / "keys").string(), "--state", state},
                          fleet.log("embed"));
  INFO(Tail(fleet.log("embed")));
  REQUIRE(WaitProcess(agg) == 0);
  REQUIRE(WaitProcess(app) == 0);
  const std::string log = ReadAll(fleet.log("embed"));
  CHECK(log.find("round 1: trained 6 steps") != std::string::npos);  // 180 of 200 examples, batch 32
  CHECK(log.find("trained 2 rounds; final model version 3") != std::string::npos);
  CHECK(fs::file_size(state + "/final-model.f32") == 7850 * 4);
}
