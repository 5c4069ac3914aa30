// What the aggregator shows Prometheus (docs/operations.md, "Metrics"): the
// event loop records rounds, rejections and bytes as they happen and
// publishes its gauges a few times a second; an HTTP thread renders the
// text format from what was published, never touching the loop's state.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "aggregator/round_engine.h"
#include "monitoring/exposition.h"

namespace flotilla::aggregator {

// The loop's current state, published as gauges.
struct AggregatorGauges {
  uint32_t round = 0;
  bool round_active = false;
  uint32_t rounds_planned = 0;
  uint64_t model_version = 0;
  uint64_t known_devices = 0;
  uint64_t connected_devices = 0;
  uint64_t paused_devices = 0;
  uint64_t checked_in_devices = 0;  // held for the open check-in selection
  uint64_t selected_devices = 0;    // in the running round
  uint64_t reporting_devices = 0;   // updates recorded in the running round
  uint64_t updates_rejected = 0;    // by validation since the start (the engine's count)
  uint64_t store_bytes = 0;
  uint64_t open_fds = 0, fd_limit = 0;  // 0: unknown (no /proc)
  std::string secagg_stage;             // empty: no secure round running
  uint64_t secagg_remaining = 0;
  bool finished = false;
  double epsilon_budget = 0.0;  // 0: no DP
};

// What does not change while the aggregator runs.
struct AggregatorInfo {
  std::string federation;
  std::string model_arch;
  std::string strategy;
  std::string signing_key_fingerprint;  // privacy::KeyFingerprint of the model-signing key
};

class AggregatorMetrics {
 public:
  explicit AggregatorMetrics(AggregatorInfo info);

  void Publish(const AggregatorGauges& gauges);
  void RoundFinished(const RoundSummary& summary);
  void Rejected(const std::string& reason);
  void Bytes(uint64_t in, uint64_t out);
  // The Prometheus text of everything recorded so far.
  std::string Render() const;
  // The dashboard's state (GET /api/state; docs/operations.md): the gauges,
  // the rounds of this process (at most the latest 1,000) and the rejections.
  std::string RenderJson() const;

 private:
  mutable std::mutex mu_;
  const AggregatorInfo info_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::deque<RoundSummary> rounds_;
  AggregatorGauges gauges_;
  uint64_t rounds_completed_ = 0, rounds_failed_ = 0;
  uint64_t updates_accepted_ = 0, declined_ = 0, unreported_ = 0;
  uint64_t secure_rounds_ = 0, secure_dropouts_ = 0;
  uint64_t bytes_in_ = 0, bytes_out_ = 0;
  std::map<std::string, uint64_t> rejected_;  // messages, by reason
  monitoring::Histogram selection_, training_, merging_, round_;
  std::optional<double> test_accuracy_, test_loss_, epsilon_;
  uint64_t examples_ = 0;
};

}  // namespace flotilla::aggregator
