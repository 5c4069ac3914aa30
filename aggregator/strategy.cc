#include "aggregator/strategy.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

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

std::string Strategy::Name() const {
  switch (kind) {
    case Kind::kFedAvg:
      return "fedavg";
    case Kind::kMedian:
      return "median";
    case Kind::kTrimmedMean:
      return "trimmed-mean:" + std::to_string(trim_fraction);
  }
  return "unknown";
}

StatusOr<Strategy> ParseStrategy(const std::string& text) {
  Strategy s;
  if (text == "fedavg") return s;
  if (text == "median") {
    s.kind = Strategy::Kind::kMedian;
    return s;
  }
  const std::string prefix = "trimmed-mean:";
  if (text.rfind(prefix, 0) == 0) {
    const std::string number = text.substr(prefix.size());
    char* end = nullptr;
    const double b = std::strtod(number.c_str(), &end);
    if (number.empty() || end != number.c_str() + number.size() || !(b >= 0.0 && b < 0.5)) {
      return InvalidArgument("trimmed-mean needs a fraction in [0, 0.5), e.g. trimmed-mean:0.1; got '" +
                             number + "'");
    }
    s.kind = Strategy::Kind::kTrimmedMean;
    s.trim_fraction = b;
    return s;
  }
  return InvalidArgument("unknown strategy '" + text + "' (use fedavg, median or trimmed-mean:B)");
}

CoordinateWise::CoordinateWise(std::shared_ptr<const Layout> layout, Strategy strategy)
    : layout_(std::move(layout)), strategy_(strategy) {}

Status CoordinateWise::Add(const Weights& delta) {
  if (!delta.layout) return InvalidArgument("delta has no layout");
  RETURN_IF_ERROR(layout_->CheckSame(*delta.layout));
  RETURN_IF_ERROR(delta.Validate());
  deltas_.push_back(delta.data);
  return Status::Ok();
}

StatusOr<Weights> CoordinateWise::Result() const {
  const size_t n = deltas_.size();
  if (n == 0) return FailedPrecondition("no updates to aggregate");
  size_t drop = 0;
  if (strategy_.kind == Strategy::Kind::kTrimmedMean) {
    drop = static_cast<size_t>(std::floor(strategy_.trim_fraction * static_cast<double>(n)));
  }
  if (2 * drop >= n) return FailedPrecondition("trimming would leave no update");
  Weights out = Weights::Zeros(layout_);
  std::vector<float> column(n);
  for (size_t i = 0; i < out.data.size(); ++i) {
    for (size_t c = 0; c < n; ++c) column[c] = deltas_[c][i];
    if (strategy_.kind == Strategy::Kind::kMedian) {
      const size_t mid = n / 2;
      std::nth_element(column.begin(), column.begin() + mid, column.end());
      double v = column[mid];
      if (n % 2 == 0) v = 0.5 * (v + *std::max_element(column.begin(), column.begin() + mid));
      out.data[i] = static_cast<float>(v);
    } else {
      std::sort(column.begin(), column.end());
      double sum = 0;
      for (size_t c = drop; c < n - drop; ++c) sum += column[c];
      out.data[i] = static_cast<float>(sum / static_cast<double>(n - 2 * drop));
    }
  }
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
