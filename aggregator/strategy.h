// Aggregation strategies: pure functions over flat Weights.
//
// FedAvg (McMahan et al. 2017) is computed as a streaming weighted mean of
// client deltas in double precision: memory is O(model), not
// O(clients x model). The caller feeds deltas in a fixed order (client-id
// order from the store) so that the result does not depend on arrival order.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "aggregator/server_optimizer.h"
#include "aggregator/update_validation.h"
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
  // Adds `n` little-endian float32 values straight from their bytes (a
  // stored update's payload, see proto::Float32Payload) with `weight`,
  // checking each block for finiteness as it goes: one read of the update.
  // A non-finite value fails the call and poisons the sum (Mean() fails
  // from then on): the merge that uses it fails its round anyway.
  Status AddFloat32(std::string_view bytes, double weight);
  int count() const { return count_; }
  double total_weight() const { return total_weight_; }
  // The mean of the deltas added so far. FailedPrecondition when empty.
  StatusOr<Weights> Mean() const;

 private:
  std::shared_ptr<const Layout> layout_;
  std::vector<double> sum_;
  double total_weight_ = 0.0;
  int count_ = 0;
  bool poisoned_ = false;
};

// How the round's deltas are combined, and how the result moves the model.
//
// Combiners (the delta of the round):
//   fedavg            the example-weighted mean (McMahan et al. 2017); uniform
//                     with [validation] example_weighting = "uniform"
//   median            the coordinate-wise median (Yin et al. 2018)
//   trimmed-mean:B    per coordinate, drop the floor(B n) largest and
//                     smallest values and average the rest (Yin et al. 2018)
//   krum:F            the update whose n - F - 2 nearest neighbours are
//                     closest (sum of squared L2 distances; Blanchard et
//                     al. 2017). Needs n >= 2F + 3; with fewer updates
//                     (devices refused or paused by validation) F is
//                     lowered to fit, and the round's log says so.
//   multi-krum:F:M    the unweighted mean of the M updates with the best
//                     Krum scores, scored once over all n (Flower weights the
//                     M by example counts; we do not: a device can lie about
//                     its count). F as Krum's; M at most n.
//   bulyan:F          Krum applied n - 2F times, each time on the updates
//                     not yet picked (with max(1, r - F - 2) neighbours
//                     among r left); then per coordinate the mean of the
//                     n - 4F picked values closest to their median (El
//                     Mhamdi et al. 2018). Needs n >= 4F + 3 (F lowered to fit).
// Krum's ties go to the update first in client-id order (the store's
// order), so the result never depends on arrival order.
//
// fedprox:MU is fedavg whose devices add the proximal term (mu / 2)
// ||w - w_global||^2 to their local objective (Li et al. 2020).
//
// scaffold is fedavg with SCAFFOLD's control variates (Karimireddy et al.
// 2020, option II): each task carries the server's c, each device keeps
// its own c_i and corrects every local step's gradient by c - c_i, then
// sends c_i's change beside its delta; the server moves c by |S| / N times
// the changes' unweighted mean (N: the fleet). c is server state, written
// with the round. Fedavg combiner only; not with DP or secure aggregation.
//
// Named strategies that also choose the server's step (server_optimizer.h):
//   fedavgm = fedavg + momentum, fedadam = fedavg + adam,
//   fedyogi = fedavg + yogi, fedadagrad = fedavg + adagrad.
//
// The robust combiners are unweighted (a device could lie about its example
// count) and need every update in memory at once; they cannot run under
// secure aggregation, which shows the aggregator only the sum.
struct Strategy {
  enum class Kind { kFedAvg, kMedian, kTrimmedMean, kKrum, kMultiKrum, kBulyan };
  Kind kind = Kind::kFedAvg;
  double trim_fraction = 0.0;  // kTrimmedMean: B in [0, 0.5)
  int byzantine = 0;           // Krum, Multi-Krum, Bulyan: F, the devices assumed malicious
  int keep = 1;                // Multi-Krum: M
  // FedProx (Li et al. 2020): the devices add (mu / 2) ||w - w_global||^2
  // to their local objective; "fedprox:MU" is fedavg with it, and
  // --proximal-mu adds it to any strategy. 0 = off.
  double proximal_mu = 0.0;
  ServerOptimizer optimizer;
  bool optimizer_from_name = false;  // fedavgm, fedadam, ...: --server-optimizer may not contradict it
  bool prox_from_name = false;       // fedprox:MU
  bool scaffold = false;             // SCAFFOLD's control variates ("scaffold")
  // Server-side norm bounding: every update is clipped (not refused) to
  // this bound before combining; kMedian is a multiple of the round's own
  // median update norm. Off by default ([validation] refuses the absurd).
  NormBound clip = [] {
    NormBound b;
    b.mode = NormBound::Mode::kOff;
    return b;
  }();

  // The name as parsed ("fedadam", "krum:2"); with a server optimizer set
  // on its own, "fedavg+momentum".
  std::string Name() const;
  // The combiner alone ("fedavg", "krum:2", ...).
  std::string CombinerName() const;
  bool NeedsIndividualUpdates() const { return kind != Kind::kFedAvg; }
  // Keeps state between rounds (a stateful server optimizer, or SCAFFOLD's c).
  bool stateful() const { return optimizer.stateful() || scaffold; }
  // The name the state is stored under: the optimizer's, "+scaffold" with SCAFFOLD.
  std::string StateName() const { return optimizer.Name() + (scaffold ? "+scaffold" : ""); }
  // The fewest updates the combiner can work with (1 for the means, 3 for
  // the Krum family).
  int MinUpdates() const;
  // The F the combiner uses on n updates: `byzantine`, lowered to the most
  // n allows (n >= 2F + 3 for Krum and Multi-Krum, n >= 4F + 3 for Bulyan).
  int ByzantineFor(int n) const;
};

// Parses a combiner or a named strategy (see above); InvalidArgument with
// the accepted forms otherwise.
StatusOr<Strategy> ParseStrategy(const std::string& text);

// A robust combiner over the deltas added. Keeps them all: memory is
// O(clients x model). Not thread-safe.
class RobustCombiner {
 public:
  RobustCombiner(std::shared_ptr<const Layout> layout, Strategy strategy);

  // Fails without changing anything on a layout mismatch or non-finite values.
  Status Add(const Weights& delta);
  int count() const { return static_cast<int>(deltas_.size()); }
  // FailedPrecondition when empty, when trimming would leave nothing, or
  // when there are too few updates for F.
  StatusOr<Weights> Result() const;
  // Krum, Multi-Krum, Bulyan: the indices (in the order added) of the
  // updates the last Result() picked.
  const std::vector<size_t>& picked() const { return picked_; }
  // The F the last Result() used (ByzantineFor its updates).
  int byzantine_used() const { return byzantine_used_; }

 private:
  std::shared_ptr<const Layout> layout_;
  Strategy strategy_;
  std::vector<std::vector<float>> deltas_;
  mutable std::vector<size_t> picked_;
  mutable int byzantine_used_ = 0;
};

// Krum's scores of `updates`: for each, the sum of squared L2 distances
// to its max(1, n - f - 2) nearest others, from the pairwise squared
// distances `d2` (n x n, row-major). Only the rows and columns in
// `among` take part.
std::vector<double> KrumScores(const std::vector<double>& d2, size_t n, const std::vector<size_t>& among,
                               int f);
// Pairwise squared L2 distances (n x n, row-major), in double.
std::vector<double> PairwiseSquaredDistances(const std::vector<std::vector<float>>& updates);

// Scales `delta`, whose L2 norm is `norm`, down to `bound` when larger.
void ClipToNorm(Weights* delta, double norm, double bound);

}  // namespace flotilla::aggregator
