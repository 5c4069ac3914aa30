// Aggregation strategies: pure functions over flat Weights.
//
// FedAvg (McMahan et al. 2017) is computed as a streaming weighted mean of
// client deltas in double precision: memory is O(model), not
// O(clients x model). The caller feeds deltas in a fixed order (client-id
// order from the store) so that the result does not depend on arrival order.
#pragma once

#include <memory>
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

// new_global = global + server_learning_rate * mean_delta. With rate 1 this
// is FedAvg: the example-weighted mean of the clients' local models.
StatusOr<Weights> ApplyDelta(const Weights& global, const Weights& mean_delta, double server_learning_rate);

}  // namespace flotilla::aggregator
