// Aggregation strategies: pure functions over flat Weights.
//
// FedAvg (McMahan et al. 2017) is computed as a streaming weighted mean of
// client deltas in double precision: memory is O(model), not
// O(clients x model). The caller feeds deltas in a fixed order (client-id
// order from the store) so that the result does not depend on arrival order.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/weights.h"

namespace flotilla::aggregator {

// Streaming weighted mean of deltas. Not thread-safe.
class WeightedMean {
 public:
  explicit WeightedMean(std::shared_ptr<const Layout> layout);

  // Adds `delta` with weight `weight` (> 0). Fails without changing the sum
  // on a layout mismatch, non-finite values or a non-positive weight.
  Status Add(const Weights& delta, double weight);
  int count() const { return count_; }
  double total_weight() const { return total_weight_; }
  // The mean of the deltas added so far. FailedPrecondition when empty.
  StatusOr<Weights> Mean() const;

 private:
  std::shared_ptr<const Layout> layout_;
  std::vector<double> sum_;
  double total_weight_ = 0.0;
  int count_ = 0;
};

// How the round's deltas are combined.
//   fedavg            the example-weighted mean (McMahan et al. 2017)
//   median            the coordinate-wise median (Yin et al. 2018)
//   trimmed-mean:B    per coordinate, drop the floor(B n) largest and
//                     smallest values and average the rest (Yin et al. 2018)
// The robust ones are unweighted (a device could lie about its example
// count) and need every update in memory at once; they cannot run under
// secure aggregation, which shows the aggregator only the sum.
struct Strategy {
  enum class Kind { kFedAvg, kMedian, kTrimmedMean };
  Kind kind = Kind::kFedAvg;
  double trim_fraction = 0.0;  // kTrimmedMean: B in [0, 0.5)

  std::string Name() const;
  bool NeedsIndividualUpdates() const { return kind != Kind::kFedAvg; }
};

// Parses "fedavg", "median" or "trimmed-mean:B"; InvalidArgument otherwise.
StatusOr<Strategy> ParseStrategy(const std::string& text);

// Coordinate-wise median or trimmed mean of the deltas added. Keeps them
// all: memory is O(clients x model). Not thread-safe.
class CoordinateWise {
 public:
  CoordinateWise(std::shared_ptr<const Layout> layout, Strategy strategy);

  // Fails without changing anything on a layout mismatch or non-finite values.
  Status Add(const Weights& delta);
  int count() const { return static_cast<int>(deltas_.size()); }
  // FailedPrecondition when empty, or when trimming would leave nothing.
  StatusOr<Weights> Result() const;

 private:
  std::shared_ptr<const Layout> layout_;
  Strategy strategy_;
  std::vector<std::vector<float>> deltas_;
};

// new_global = global + server_learning_rate * mean_delta. With rate 1 this
// is FedAvg: the example-weighted mean of the clients' local models.
StatusOr<Weights> ApplyDelta(const Weights& global, const Weights& mean_delta, double server_learning_rate);

}  // namespace flotilla::aggregator
