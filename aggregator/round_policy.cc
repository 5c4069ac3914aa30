#include "aggregator/round_policy.h"

#include <algorithm>
#include <cmath>

#include "core/clock.h"
#include "core/rng.h"

namespace flotilla::aggregator {

Sample SampleDevices(std::vector<std::string> eligible, double fraction, uint64_t seed, uint32_t round) {
  const size_t n = eligible.size();
  const size_t k = std::min(n, std::max<size_t>(1, static_cast<size_t>(std::ceil(fraction * n - 1e-9))));
  return SampleCount(std::move(eligible), k, seed, round);
}

Sample SampleCount(std::vector<std::string> candidates, size_t k, uint64_t seed, uint32_t round) {
  std::sort(candidates.begin(), candidates.end());
  const size_t n = candidates.size();
  k = std::min(k, n);
  Sample s;
  s.sampling_rate = n == 0 ? 0.0 : static_cast<double>(k) / static_cast<double>(n);
  Rng rng(DeriveSeed(seed, "sample", round));
  rng.Shuffle(&candidates);
  candidates.resize(k);
  std::sort(candidates.begin(), candidates.end());
  s.selected = std::move(candidates);
  return s;
}

size_t UpdatesPerRound(int clients_per_round, double fraction, size_t fleet) {
  if (clients_per_round > 0) return static_cast<size_t>(clients_per_round);
  return std::max<size_t>(1, static_cast<size_t>(std::ceil(fraction * static_cast<double>(fleet) - 1e-9)));
}

size_t SelectionTarget(size_t updates_per_round, double over_selection) {
  return static_cast<size_t>(std::ceil(static_cast<double>(updates_per_round) * over_selection - 1e-9));
}

ComeBackPlan PlanComeBack(const std::string& device, uint32_t next_round, size_t fleet,
                          double wanted_per_round, double round_seconds, double current_left_seconds,
                          uint64_t seed) {
  // The fleet cycles through in `period` rounds; each device lands on one
  // of them uniformly.
  const double period =
      std::max(1.0, std::floor(static_cast<double>(fleet) / std::max(1.0, wanted_per_round)));
  Rng rng(DeriveSeed(seed, "come-back", next_round, DeriveSeed(0, device)));
  const uint32_t offset = static_cast<uint32_t>(rng.UniformInt(static_cast<uint64_t>(period)));
  ComeBackPlan plan;
  plan.round = next_round + offset;
  plan.seconds = std::max(0.0, current_left_seconds) + offset * std::max(0.0, round_seconds);
  return plan;
}

double Backoff::Failed(Clock::time_point now) {
  ++failed_in_a_row_;
  const double wait =
      std::min(max_, base_ * std::ldexp(1.0, std::min<int>(30, static_cast<int>(failed_in_a_row_) - 1)));
  until_ = now + SecondsOf(wait);
  return wait;
}

void Backoff::Succeeded() {
  failed_in_a_row_ = 0;
  until_ = Clock::time_point{};
}

double Backoff::SecondsLeft(Clock::time_point now) const {
  return now < until_ ? std::chrono::duration<double>(until_ - now).count() : 0.0;
}

}  // namespace flotilla::aggregator
