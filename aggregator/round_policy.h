// The round engine's policies, as pure pieces: which devices a round
// samples, and how long the aggregator waits after failed rounds.
//
// Thread-safety: the functions are pure; Backoff is not thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
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
// Samples exactly min(k, |candidates|) of `candidates` the same way (check-in
// selection: k of the devices held; sampling_rate is k / |candidates|).
Sample SampleCount(std::vector<std::string> candidates, size_t k, uint64_t seed, uint32_t round);

// Pace steering for check-in selection (Bonawitz et al. 2019): a device
// that is not needed now is told which round to come back for, spread
// uniformly over the rounds it takes the fleet to cycle through, so that
// about `wanted_per_round` devices check in for each round. Reproducible
// from the seed, the device and the round it checked in for.
// Check-in selection's sizes: N, the updates a round keeps
// (`clients_per_round`, or ceil(fraction x fleet) when that is 0), and the
// check-ins selection waits for, ceil(N x over_selection).
size_t UpdatesPerRound(int clients_per_round, double fraction, size_t fleet);
size_t SelectionTarget(size_t updates_per_round, double over_selection);

struct ComeBackPlan {
  uint32_t round = 0;    // the round to come back for
  double seconds = 0.0;  // how long from now, at the current pace
};
ComeBackPlan PlanComeBack(const std::string& device, uint32_t next_round, size_t fleet,
                          double wanted_per_round, double round_seconds, double current_left_seconds,
                          uint64_t seed);

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
