#include "aggregator/round_policy.h"

#include <algorithm>
#include <cmath>

#include "core/rng.h"

namespace flotilla::aggregator {

Sample SampleDevices(std::vector<std::string> eligible, double fraction, uint64_t seed, uint32_t round) {
  const size_t n = eligible.size();
  const size_t k = std::min(n, std::max<size_t>(1, static_cast<size_t>(std::ceil(fraction * n - 1e-9))));
  Sample s;
  s.sampling_rate = n == 0 ? 0.0 : static_cast<double>(k) / static_cast<double>(n);
  Rng rng(DeriveSeed(seed, "sample", round));
  rng.Shuffle(&eligible);
  eligible.resize(k);
  std::sort(eligible.begin(), eligible.end());
  s.selected = std::move(eligible);
  return s;
}

double Backoff::Failed(Clock::time_point now) {
  ++failed_in_a_row_;
  const double wait =
      std::min(max_, base_ * std::ldexp(1.0, std::min<int>(30, static_cast<int>(failed_in_a_row_) - 1)));
  until_ = now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait));
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
