#include "aggregator/update_validation.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "proto/codec.h"

namespace flotilla::aggregator {
namespace {

// Parses the number after "name:" in `text`; false when absent or malformed.
bool ParseSuffix(const std::string& text, const std::string& prefix, double* value) {
  if (text.rfind(prefix, 0) != 0) return false;
  const std::string number = text.substr(prefix.size());
  char* end = nullptr;
  *value = std::strtod(number.c_str(), &end);
  return !number.empty() && end == number.c_str() + number.size();
}

bool AnyNonFinite(const std::string& bytes) {
  const size_t n = bytes.size() / sizeof(float);
  for (size_t i = 0; i < n; ++i) {
    float v;
    std::memcpy(&v, bytes.data() + i * sizeof(float), sizeof(float));
    if (!std::isfinite(v)) return true;
  }
  return false;
}

}  // namespace

double Median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  const size_t mid = values.size() / 2;
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(mid), values.end());
  double m = values[mid];
  if (values.size() % 2 == 0)
    m = 0.5 * (m + *std::max_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(mid)));
  return m;
}

std::string NormBound::Describe() const {
  std::ostringstream os;
  switch (mode) {
    case Mode::kOff:
      return "off";
    case Mode::kAbsolute:
      os << "absolute:" << absolute;
      break;
    case Mode::kMedian:
      os << "median:" << median_multiple;
      break;
  }
  return os.str();
}

StatusOr<NormBound> ParseNormBound(const std::string& text) {
  NormBound b;
  double v = 0;
  if (text == "off") {
    b.mode = NormBound::Mode::kOff;
    return b;
  }
  if (ParseSuffix(text, "absolute:", &v)) {
    if (!(v > 0) || !std::isfinite(v))
      return InvalidArgument("absolute norm bound must be positive, got '" + text + "'");
    b.mode = NormBound::Mode::kAbsolute;
    b.absolute = v;
    return b;
  }
  if (ParseSuffix(text, "median:", &v)) {
    if (!(v >= 1) || !std::isfinite(v))
      return InvalidArgument("median norm multiple must be at least 1, got '" + text + "'");
    b.mode = NormBound::Mode::kMedian;
    b.median_multiple = v;
    return b;
  }
  return InvalidArgument("unknown update norm bound '" + text + "' (use median:K, absolute:X or off)");
}

std::string ExampleWeighting::Describe() const {
  switch (mode) {
    case Mode::kClaimed:
      return "claimed";
    case Mode::kUniform:
      return "uniform";
    case Mode::kCapped: {
      std::ostringstream os;
      os << "capped:" << cap_multiple;
      return os.str();
    }
  }
  return "unknown";
}

StatusOr<ExampleWeighting> ParseExampleWeighting(const std::string& text) {
  ExampleWeighting w;
  double v = 0;
  if (text == "claimed") {
    w.mode = ExampleWeighting::Mode::kClaimed;
  } else if (text == "uniform") {
    w.mode = ExampleWeighting::Mode::kUniform;
  } else if (ParseSuffix(text, "capped:", &v)) {
    if (!(v >= 1) || !std::isfinite(v))
      return InvalidArgument("example cap multiple must be at least 1, got '" + text + "'");
    w.mode = ExampleWeighting::Mode::kCapped;
    w.cap_multiple = v;
  } else {
    return InvalidArgument("unknown example weighting '" + text + "' (use capped:K, claimed or uniform)");
  }
  return w;
}

Status ValidationConfig::Validate() const {
  if (max_examples_per_update < 1) return InvalidArgument("max examples per update must be at least 1");
  if (norm.mode == NormBound::Mode::kAbsolute && !(norm.absolute > 0)) {
    return InvalidArgument("an absolute update norm bound must be positive");
  }
  if (norm.mode == NormBound::Mode::kMedian) {
    if (!(norm.median_multiple >= 1)) return InvalidArgument("the median norm multiple must be at least 1");
    if (!(norm.model_multiple > 0)) return InvalidArgument("the model norm multiple must be positive");
    if (norm.min_history < 1 || norm.window < norm.min_history) {
      return InvalidArgument(
          "the norm history window must be at least its minimum history (and that at least 1)");
    }
  }
  if (weighting.mode == ExampleWeighting::Mode::kCapped && !(weighting.cap_multiple >= 1)) {
    return InvalidArgument("the example cap multiple must be at least 1");
  }
  return Status::Ok();
}

double L2Norm(const std::vector<float>& values) {
  double sum = 0.0;
  for (float v : values) sum += static_cast<double>(v) * static_cast<double>(v);
  return std::sqrt(sum);
}

UpdateVerdict ValidateUpdate(const wire::WeightsProto& delta, int64_t num_examples,
                             const UpdateExpectation& expect, const wire::WeightsProto* control) {
  UpdateVerdict v;
  if ((control != nullptr) != expect.control) {
    v.reason = "control";
    v.message = expect.control
                    ? "this round runs SCAFFOLD: the update must carry its control_delta"
                    : "this round does not run SCAFFOLD: the update must not carry a control_delta";
    return v;
  }
  if (control != nullptr) {
    StatusOr<Weights> c = proto::WeightsFromProto(*control, expect.layout);
    if (!c.ok()) {
      v.reason = "control";
      v.message = "control_delta: " + std::string(c.status().message());
      return v;
    }
  }
  if (num_examples < 1 || num_examples > expect.max_examples) {
    v.reason = "examples";
    v.message = "num_examples " + std::to_string(num_examples) + " is outside [1, " +
                std::to_string(expect.max_examples) + "]";
    return v;
  }
  StatusOr<Weights> decoded = proto::WeightsFromProto(delta, expect.layout);
  if (!decoded.ok()) {
    const bool sized =
        delta.data().size() == static_cast<size_t>(expect.layout->total_numel()) * sizeof(float);
    v.reason = sized && AnyNonFinite(delta.data()) ? "non_finite" : "layout";
    v.message = std::string(decoded.status().message());
    return v;
  }
  v.norm = L2Norm(decoded->data);
  if (expect.max_norm > 0 && !(v.norm <= expect.max_norm)) {
    v.reason = "norm";
    std::ostringstream os;
    os << "update L2 norm " << v.norm << " is over the bound " << expect.max_norm
       << " (see the aggregator's --update-norm-bound)";
    v.message = os.str();
    return v;
  }
  v.delta = std::move(decoded).value();
  return v;
}

void NormHistory::Add(double norm) {
  if (!std::isfinite(norm)) return;
  norms_.push_back(norm);
  while (norms_.size() > static_cast<size_t>(std::max(1, window_))) norms_.pop_front();
}

double NormHistory::Bound(const NormBound& bound, double global_norm) const {
  switch (bound.mode) {
    case NormBound::Mode::kOff:
      return 0.0;
    case NormBound::Mode::kAbsolute:
      return bound.absolute;
    case NormBound::Mode::kMedian:
      break;
  }
  double b = 0.0;
  if (norms_.size() >= static_cast<size_t>(bound.min_history)) {
    const double median = Median(std::vector<double>(norms_.begin(), norms_.end()));
    // A history of zero-norm updates (nothing learned) must not refuse everything.
    b = bound.median_multiple * std::max(median, 1e-6);
  } else {
    b = bound.model_multiple * std::max(1.0, global_norm);
  }
  if (bound.absolute > 0) b = std::min(b, bound.absolute);
  return b;
}

std::vector<double> ExampleWeights(const std::vector<int64_t>& claimed, const ExampleWeighting& weighting) {
  std::vector<double> w(claimed.size(), 1.0);
  if (weighting.mode == ExampleWeighting::Mode::kUniform || claimed.empty()) return w;
  double cap = 0.0;
  if (weighting.mode == ExampleWeighting::Mode::kCapped) {
    cap = weighting.cap_multiple * Median(std::vector<double>(claimed.begin(), claimed.end()));
  }
  for (size_t i = 0; i < claimed.size(); ++i) {
    w[i] = static_cast<double>(std::max<int64_t>(1, claimed[i]));
    if (cap > 0) w[i] = std::min(w[i], cap);
  }
  return w;
}

}  // namespace flotilla::aggregator
