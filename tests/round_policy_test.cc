// The round engine's policies: sampling and the back-off after failed rounds.
#include "aggregator/round_policy.h"

#include <catch2/catch.hpp>
#include <set>

using namespace flotilla::aggregator;
using namespace std::chrono_literals;

TEST_CASE("Sampling takes ceil(fraction x n) devices reproducibly from the seed", "[round_policy]") {
  std::vector<std::string> ids;
  for (int i = 0; i < 100; ++i) ids.push_back("dev" + std::to_string(1000 + i));
  const Sample a = SampleDevices(ids, 0.1, 7, 3);
  CHECK(a.selected.size() == 10);
  CHECK(a.sampling_rate == Approx(0.1));
  CHECK(std::is_sorted(a.selected.begin(), a.selected.end()));
  CHECK(std::set<std::string>(a.selected.begin(), a.selected.end()).size() == 10);
  CHECK(SampleDevices(ids, 0.1, 7, 3).selected == a.selected);   // same seed and round
  CHECK(SampleDevices(ids, 0.1, 7, 4).selected != a.selected);   // another round
  CHECK(SampleDevices(ids, 0.1, 8, 3).selected != a.selected);   // another run
  CHECK(SampleDevices(ids, 0.101, 7, 3).selected.size() == 11);  // rounded up
  CHECK(SampleDevices(ids, 1e-9, 7, 3).selected.size() == 1);    // at least one
  const Sample all = SampleDevices(ids, 1.0, 7, 3);
  CHECK(all.selected.size() == 100);
  CHECK(all.sampling_rate == 1.0);
}

TEST_CASE("The back-off after failed rounds doubles up to its maximum and resets", "[round_policy]") {
  Backoff b(1.0, 5.0);
  const auto t0 = Backoff::Clock::now();
  CHECK_FALSE(b.Waiting(t0));
  CHECK(b.Failed(t0) == 1.0);
  CHECK(b.Waiting(t0 + 900ms));
  CHECK_FALSE(b.Waiting(t0 + 1100ms));
  CHECK(b.Failed(t0) == 2.0);
  CHECK(b.Failed(t0) == 4.0);
  CHECK(b.Failed(t0) == 5.0);  // capped
  CHECK(b.failed_in_a_row() == 4);
  CHECK(b.SecondsLeft(t0) == Approx(5.0));
  b.Succeeded();
  CHECK(b.failed_in_a_row() == 0);
  CHECK_FALSE(b.Waiting(t0));
  CHECK(b.SecondsLeft(t0) == 0.0);
}
