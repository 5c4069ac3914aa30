// Update validation: whether an update a device sent may enter the merge.
//
// ValidateUpdate is a pure function of the update's content and of what the
// round expects (the layout, a norm bound, a largest example count); it
// runs before anything is stored or acknowledged, and again on every update
// read back from the store after a restart. The round-state checks (is the
// round open, was the device selected, is it a duplicate) belong to the
// round engine, not here.
//
// The bounds come from ValidationConfig: the norm bound is absolute, or a
// multiple of the median of recently accepted norms (NormHistory); the
// example count a device claims is capped, and FedAvg's weights are capped
// again at merge time (ExampleWeights). See docs/security.md, "A
// compromised enrolled device".
//
// Thread-safety: the functions are pure; NormHistory is not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/weights.h"
#include "proto/flotilla.pb.h"

namespace flotilla::aggregator {

// How an update's L2 norm is bounded.
struct NormBound {
  enum class Mode {
    kOff,       // no bound (not recommended: one device can move the model anywhere)
    kAbsolute,  // norm <= absolute
    kMedian,    // norm <= median_multiple x the median of recently accepted norms
  };
  Mode mode = Mode::kMedian;
  double absolute = 0.0;          // kAbsolute: the bound; kMedian: an extra cap when > 0
  double median_multiple = 10.0;  // kMedian
  // kMedian, until min_history norms were accepted: norm <= model_multiple x
  // max(1, ||global model||). A delta ten times larger than the model it
  // changes is not training.
  double model_multiple = 10.0;
  int min_history = 5;
  int window = 100;  // the median is over the last `window` accepted norms

  std::string Describe() const;
};

// "off", "absolute:X" or "median:K"; InvalidArgument otherwise.
StatusOr<NormBound> ParseNormBound(const std::string& text);

// How FedAvg weighs devices by the example counts they claim.
struct ExampleWeighting {
  enum class Mode {
    kClaimed,  // as claimed (up to max_examples_per_update): the textbook FedAvg
    kCapped,   // min(claimed, cap_multiple x the round's median claim): the default
    kUniform,  // every device counts once
  };
  Mode mode = Mode::kCapped;
  double cap_multiple = 4.0;

  std::string Describe() const;
};

// "claimed", "capped:K" or "uniform"; InvalidArgument otherwise.
StatusOr<ExampleWeighting> ParseExampleWeighting(const std::string& text);

struct ValidationConfig {
  NormBound norm;
  // Larger claims are refused outright.
  int64_t max_examples_per_update = int64_t{1} << 24;
  ExampleWeighting weighting;

  // InvalidArgument naming the first bad field.
  Status Validate() const;
};

// What the round expects of one update's content.
struct UpdateExpectation {
  std::shared_ptr<const Layout> layout;
  double max_norm = 0.0;  // 0 = unbounded
  int64_t max_examples = int64_t{1} << 24;
  // SCAFFOLD rounds: the update must carry its control-variate change (in
  // the layout, finite); other rounds refuse one.
  bool control = false;
};

// The outcome: accepted (reason empty; the decoded delta and its norm) or
// refused with a short stable reason ("layout", "non_finite", "norm",
// "examples", "control") for counters, and a message that tells the device
// why.
struct UpdateVerdict {
  std::string reason;
  std::string message;
  Weights delta;
  double norm = 0.0;

  bool accepted() const { return reason.empty(); }
};

// `control`: the update's SCAFFOLD control-variate change, nullptr when it
// has none.
UpdateVerdict ValidateUpdate(const wire::WeightsProto& delta, int64_t num_examples,
                             const UpdateExpectation& expect, const wire::WeightsProto* control = nullptr);

// The median; for an even count the mean of the two middle values (0 when empty).
double Median(std::vector<double> values);

// L2 norm accumulated in double: no overflow for any finite float input.
double L2Norm(const std::vector<float>& values);

// The recently accepted update norms the median bound is computed from.
class NormHistory {
 public:
  explicit NormHistory(int window = 100) : window_(window) {}

  void Add(double norm);
  size_t size() const { return norms_.size(); }
  // The bound for the next update under `bound` (0 = unbounded), given the
  // norm of the model the update is against.
  double Bound(const NormBound& bound, double global_norm) const;

 private:
  int window_;
  std::deque<double> norms_;
};

// FedAvg weights for the claimed example counts of one round's updates, in
// the same order. Uniform gives 1 each; capped limits each to cap_multiple
// times the median claim (so a device that lies cannot outweigh the round).
std::vector<double> ExampleWeights(const std::vector<int64_t>& claimed, const ExampleWeighting& weighting);

}  // namespace flotilla::aggregator
