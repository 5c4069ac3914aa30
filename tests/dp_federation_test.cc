// Differential privacy in a running federation: the accountant, the
// budget refusal, the ledger across restarts and the simulator's output.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <thread>

#include "aggregator/store.h"
#include "client/runner.h"
#include "privacy/rdp_accountant.h"
#include "sim/simulation.h"
#include "testing/test_aggregator.h"
#include "testing/test_keys.h"
#include "training/dataset.h"

using namespace flotilla;

namespace {

// Runs `n` honest clients to the end of the federation.
void RunClients(const testing::TestKeys& keys, const std::string& endpoint, int n) {
  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(60 * n, 11));
  testing::StartHonestClients(keys, endpoint, data, n, 60)->Join();
}

aggregator::AggregatorConfig DpConfig(const testing::TestKeys& keys, const std::filesystem::path& store) {
  aggregator::AggregatorConfig c;
  keys.Apply(&c);
  c.min_clients = 4;
  c.fraction = 0.5;
  c.rounds = 50;
  c.learning_rate = 0.05;
  c.store_path = store.string();
  c.endpoint = "tcp://127.0.0.1:*";
  c.model_arch = "logreg";
  c.finish_grace_seconds = 1;
  c.dp.mode = aggregator::DpConfig::Mode::kClientCentral;
  c.dp.noise_multiplier = 1.5;
  c.dp.clip_norm = 0.5;
  c.dp.delta = 1e-5;
  c.dp.epsilon_budget = 6;
  return c;
}

std::unique_ptr<aggregator::Aggregator> Make(net::Context* ctx, const aggregator::AggregatorConfig& c) {
  auto runner = training::ModelRunner::Create("logreg", 1);
  REQUIRE(runner.ok());
  auto agg = aggregator::Aggregator::Create(c, ctx, (*runner)->GetWeights(), nullptr, nullptr);
  INFO(agg.status().ToString());
  REQUIRE(agg.ok());
  return std::move(agg).value();
}

}  // namespace

TEST_CASE("The aggregator refuses the round that would exceed the privacy budget", "[dp][integration]") {
  testing::TestKeys keys(4);
  const auto store = testing::TempPath("dp-budget");
  auto config = DpConfig(keys, store);
  net::Context ctx;
  auto agg = Make(&ctx, config);
  Status run;
  std::thread server([&] { run = agg->Run(); });
  RunClients(keys, agg->endpoint(), 4);
  server.join();
  REQUIRE(run.ok());
  const auto& history = agg->history();
  REQUIRE_FALSE(history.empty());
  CHECK(history.size() < config.rounds);  // stopped by the budget, not the round count
  // The last round stayed within the budget and one more would not have.
  REQUIRE(history.back().epsilon.has_value());
  CHECK(*history.back().epsilon <= config.dp.epsilon_budget);
  privacy::RdpAccountant acct;
  REQUIRE(acct.Compose(0.5, 1.5, static_cast<int64_t>(history.size()) + 1).ok());
  CHECK(acct.GetPrivacySpent(1e-5)->epsilon > config.dp.epsilon_budget);
  // Epsilon matches an independent accountant over the same rounds.
  privacy::RdpAccountant same;
  REQUIRE(same.Compose(0.5, 1.5, static_cast<int64_t>(history.size())).ok());
  CHECK(*history.back().epsilon == Approx(same.GetPrivacySpent(1e-5)->epsilon).epsilon(1e-9));
  agg.reset();
  std::filesystem::remove_all(store);
}

TEST_CASE("The privacy ledger survives an aggregator restart", "[dp][integration]") {
  testing::TestKeys keys(4);
  const auto store = testing::TempPath("dp-ledger");
  auto config = DpConfig(keys, store);
  config.dp.epsilon_budget = 100;
  config.rounds = 2;
  double eps_before = 0;
  {
    net::Context ctx;
    auto agg = Make(&ctx, config);
    Status run;
    std::thread server([&] { run = agg->Run(); });
    RunClients(keys, agg->endpoint(), 4);
    server.join();
    REQUIRE(run.ok());
    REQUIRE(agg->history().size() == 2);
    eps_before = *agg->history().back().epsilon;
  }
  config.rounds = 4;  // two more rounds on the same store
  {
    net::Context ctx;
    auto agg = Make(&ctx, config);
    Status run;
    std::thread server([&] { run = agg->Run(); });
    RunClients(keys, agg->endpoint(), 4);
    server.join();
    REQUIRE(run.ok());
    REQUIRE(agg->history().size() == 2);
    privacy::RdpAccountant four;
    REQUIRE(four.Compose(0.5, 1.5, 4).ok());
    CHECK(*agg->history().back().epsilon == Approx(four.GetPrivacySpent(1e-5)->epsilon).epsilon(1e-9));
    CHECK(*agg->history().back().epsilon > eps_before);
  }
  auto ro = aggregator::Store::OpenReadOnly(store.string());
  REQUIRE(ro.ok());
  auto ledger = (*ro)->ListLedger();
  REQUIRE(ledger.ok());
  REQUIRE(ledger->size() == 4);
  for (size_t i = 0; i < ledger->size(); ++i) {
    CHECK((*ledger)[i].round() == i + 1);
    CHECK((*ledger)[i].mechanism() == "dp-fedavg-central");
    if (i > 0) CHECK((*ledger)[i].epsilon_after() > (*ledger)[i - 1].epsilon_after());
  }
  ro->reset();
  std::filesystem::remove_all(store);
}

TEST_CASE("DP settings and epsilon appear in the simulator's output", "[dp][integration]") {
  const auto out = testing::TempPath("dp-sim");
  sim::SimConfig c;
  c.clients = 4;
  c.train_limit = 800;
  c.test_limit = 200;
  c.out_dir = out.string();
  c.quiet = true;
  c.aggregator.endpoint = "tcp://127.0.0.1:*";
  c.aggregator.model_arch = "logreg";
  c.aggregator.rounds = 3;
  c.aggregator.dp.mode = aggregator::DpConfig::Mode::kRecord;
  c.aggregator.dp.noise_multiplier = 1.0;
  c.aggregator.dp.clip_norm = 1.0;
  c.aggregator.dp.delta = 1e-5;
  c.aggregator.dp.epsilon_budget = 50;
  c.aggregator.dp.dpsgd_sampling_rate = 0.1;
  auto result = sim::RunSimulation(c);
  REQUIRE(result.ok());
  REQUIRE(result->rounds.size() == 3);
  for (const auto& r : result->rounds) REQUIRE(r.epsilon.has_value());
  CHECK(*result->rounds[2].epsilon > *result->rounds[0].epsilon);
  std::ifstream csv(out / "metrics.csv");
  std::string header;
  std::getline(csv, header);
  CHECK(header.find("epsilon") != std::string::npos);
  std::ifstream js(out / "summary.json");
  std::string summary((std::istreambuf_iterator<char>(js)), std::istreambuf_iterator<char>());
  CHECK(summary.find("\"dp\": \"dp-sgd\"") != std::string::npos);
  CHECK(summary.find("epsilon_spent") != std::string::npos);
  std::filesystem::remove_all(out);
}
