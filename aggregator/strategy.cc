#include "aggregator/strategy.h"

#include <cmath>

namespace flotilla::aggregator {

WeightedMean::WeightedMean(std::shared_ptr<const Layout> layout)
    : layout_(std::move(layout)), sum_(static_cast<size_t>(layout_->total_numel()), 0.0) {}

Status WeightedMean::Add(const Weights& delta, double weight) {
  if (!(weight > 0.0) || !std::isfinite(weight)) {
    return InvalidArgument("aggregation weight must be positive and finite, got " + std::to_string(weight));
  }
  if (!delta.layout) return InvalidArgument("delta has no layout");
  RETURN_IF_ERROR(layout_->CheckSame(*delta.layout));
  RETURN_IF_ERROR(delta.Validate());
  for (size_t i = 0; i < sum_.size(); ++i) sum_[i] += weight * static_cast<double>(delta.data[i]);
  total_weight_ += weight;
  ++count_;
  return Status::Ok();
}

StatusOr<Weights> WeightedMean::Mean() const {
  if (count_ == 0) return FailedPrecondition("no updates to average");
  Weights out = Weights::Zeros(layout_);
  for (size_t i = 0; i < sum_.size(); ++i) out.data[i] = static_cast<float>(sum_[i] / total_weight_);
  return out;
}

StatusOr<Weights> ApplyDelta(const Weights& global, const Weights& mean_delta, double server_learning_rate) {
  RETURN_IF_ERROR(global.layout->CheckSame(*mean_delta.layout));
  Weights out = global;
  for (size_t i = 0; i < out.data.size(); ++i) {
    out.data[i] = static_cast<float>(static_cast<double>(global.data[i]) +
                                     server_learning_rate * static_cast<double>(mean_delta.data[i]));
  }
  RETURN_IF_ERROR(out.Validate());
  return out;
}

}  // namespace flotilla::aggregator
