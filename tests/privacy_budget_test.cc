// The privacy budget as a part: accounting a round returns the ledger
// entries (it writes nothing), replaying them restores the same epsilon,
// and the budget refuses what would exceed it. Checked against the RDP
// accountant used directly.
#include "aggregator/privacy_budget.h"

#include <catch2/catch.hpp>
#include <cmath>

using namespace flotilla;
using namespace flotilla::aggregator;

namespace {

DpConfig ClientDp(DpConfig::Mode mode) {
  DpConfig dp;
  dp.mode = mode;
  dp.noise_multiplier = 1.2;
  dp.clip_norm = 0.5;
  dp.delta = 1e-5;
  dp.epsilon_budget = 5;
  return dp;
}

double Epsilon(double q, double z, int64_t steps, int rounds, double delta) {
  privacy::RdpAccountant a;
  for (int i = 0; i < rounds; ++i) REQUIRE(a.Compose(q, z, steps).ok());
  return a.GetPrivacySpent(delta)->epsilon;
}

}  // namespace

TEST_CASE("The privacy budget charges client-level rounds and replays its ledger", "[privacy_budget]") {
  const DpConfig dp = ClientDp(DpConfig::Mode::kClientCentral);
  auto budget = PrivacyBudget::Recover(dp, 1, 10, {}, {});
  REQUIRE(budget.ok());
  std::vector<records::LedgerEntry> all;
  for (uint32_t r = 1; r <= 3; ++r) {
    records::RoundRecord record;
    auto entries = budget->Account(r, 0.1, 10, {"a", "b"}, {}, &record);
    REQUIRE(entries.ok());
    REQUIRE(entries->size() == 1);
    CHECK(entries->at(0).round() == r);
    CHECK(entries->at(0).noise_multiplier() == 1.2);
    CHECK(record.epsilon() == Approx(Epsilon(0.1, 1.2, 1, r, 1e-5)).epsilon(1e-9));
    all.push_back(entries->at(0));
  }
  // A restart replays the ledger to the same epsilon.
  auto replayed = PrivacyBudget::Recover(dp, 1, 10, all, {});
  REQUIRE(replayed.ok());
  CHECK(replayed->epsilon() == Approx(budget->epsilon()).epsilon(1e-9));
  // A round that would pass the budget is refused, and the budget is spent.
  DpConfig tight = dp;
  tight.epsilon_budget = budget->epsilon() + 1e-9;
  auto strict = PrivacyBudget::Recover(tight, 1, 10, all, {});
  REQUIRE(strict.ok());
  CHECK_FALSE(*strict->AllowsRound(4, 0.1));
  CHECK(strict->exhausted());
}

TEST_CASE("Distributed noise with dropouts is charged as added, z sqrt(r/m)", "[privacy_budget]") {
  const DpConfig dp = ClientDp(DpConfig::Mode::kClientDistributed);
  auto budget = PrivacyBudget::Recover(dp, 1, 4, {}, {});
  REQUIRE(budget.ok());
  CHECK(budget->DistributedNoiseStddev(4) == Approx(1.2 * 0.5 / 2));
  records::RoundRecord record;
  auto entries = budget->Account(1, 0.5, 4, {"a", "b", "c"}, {}, &record);  // 3 of 4 reported
  REQUIRE(entries.ok());
  CHECK(entries->at(0).noise_multiplier() == Approx(1.2 * std::sqrt(3.0 / 4.0)));
}

TEST_CASE("Record-level DP charges each participant and stops devices at their budget", "[privacy_budget]") {
  DpConfig dp;
  dp.mode = DpConfig::Mode::kRecord;
  dp.noise_multiplier = 1.0;
  dp.clip_norm = 1.0;
  dp.delta = 1e-5;
  dp.dpsgd_sampling_rate = 0.1;
  dp.epsilon_budget = 6;
  auto budget = PrivacyBudget::Recover(dp, 2, 2, {}, {});
  REQUIRE(budget.ok());
  CHECK(budget->DpSgdStepsPerRound() == 20);  // 2 epochs at q = 0.1
  records::RoundRecord record;
  // Device "b" reports more steps than planned: the larger is charged.
  auto entries = budget->Account(1, 1.0, 2, {"a", "b"}, {{"b", 30}}, &record);
  REQUIRE(entries.ok());
  REQUIRE(entries->size() == 2);
  CHECK(entries->at(0).steps() == 20);
  CHECK(entries->at(1).steps() == 30);
  CHECK(entries->at(1).epsilon_after() == Approx(Epsilon(0.1, 1.0, 30, 1, 1e-5)).epsilon(1e-9));
  CHECK(budget->epsilon() == Approx(entries->at(1).epsilon_after()));
  // Keep charging "b" until its next round would pass the budget; "c" is fresh.
  for (uint32_t r = 2; r < 200; ++r) {
    auto eligible = budget->EligibleDevices({"b", "c"});
    REQUIRE(eligible.ok());
    if (eligible->size() == 1) {
      CHECK(eligible->at(0) == "c");
      return;
    }
    REQUIRE(budget->Account(r, 1.0, 1, {"b"}, {}, &record).ok());
  }
  FAIL("device b never reached its budget");
}
