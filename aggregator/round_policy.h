// The round engine's policies, as pure pieces: which devices a round
// samples, and how long the aggregator waits after failed rounds.
//
// Thread-safety: the functions are pure; Backoff is not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace flotilla::aggregator {

struct Sample {
  std::vector<std::string> selected;  // sorted
  double sampling_rate = 0.0;         // q: selected / eligible
};

// Samples ceil(fraction x |eligible|) (at least one) of `eligible`
// uniformly, reproducibly from the run seed and the round number.
// REQUIRES: !eligible.empty().
Sample SampleDevices(std::vector<std::string> eligible, double fraction, uint64_t seed, uint32_t round);

// After a failed round the next waits `base` seconds, doubling with every
// failure in a row up to `max`; a completed round resets it.
class Backoff {
 public:
  using Clock = std::chrono::steady_clock;
  Backoff(double base_seconds, double max_seconds) : base_(base_seconds), max_(max_seconds) {}

  // Records a failure at `now`; returns the wait in seconds.
  double Failed(Clock::time_point now);
  void Succeeded();
  bool Waiting(Clock::time_point now) const { return now < until_; }
  double SecondsLeft(Clock::time_point now) const;
  uint32_t failed_in_a_row() const { return failed_in_a_row_; }

 private:
  double base_, max_;
  uint32_t failed_in_a_row_ = 0;
  Clock::time_point until_{};
};

}  // namespace flotilla::aggregator
