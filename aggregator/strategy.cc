#include "aggregator/strategy.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sstream>
#include <tuple>

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

Status WeightedMean::AddFloat32(std::string_view bytes, double weight) {
  if (!(weight > 0.0) || !std::isfinite(weight)) {
    return InvalidArgument("aggregation weight must be positive and finite, got " + std::to_string(weight));
  }
  if (bytes.size() != sum_.size() * sizeof(float)) {
    return InvalidArgument("update has " + std::to_string(bytes.size()) + " bytes, the model needs " +
                           std::to_string(sum_.size() * sizeof(float)));
  }
  constexpr size_t kBlock = 2048;
  float block[kBlock];
  for (size_t start = 0; start < sum_.size(); start += kBlock) {
    const size_t len = std::min(kBlock, sum_.size() - start);
    std::memcpy(block, bytes.data() + start * sizeof(float), len * sizeof(float));
    const size_t bad = FirstNonFinite(block, len);
    if (bad < len) {
      poisoned_ = true;
      return InvalidArgument("update value " + std::to_string(start + bad) + " is not finite");
    }
    double* sum = sum_.data() + start;
    for (size_t i = 0; i < len; ++i) sum[i] += weight * static_cast<double>(block[i]);
  }
  total_weight_ += weight;
  ++count_;
  return Status::Ok();
}

StatusOr<Weights> WeightedMean::Mean() const {
  if (poisoned_) return FailedPrecondition("an update with a non-finite value was partly added");
  if (count_ == 0) return FailedPrecondition("no updates to average");
  Weights out = Weights::Zeros(layout_);
  for (size_t i = 0; i < sum_.size(); ++i) out.data[i] = static_cast<float>(sum_[i] / total_weight_);
  return out;
}

std::string Strategy::CombinerName() const {
  switch (kind) {
    case Kind::kFedAvg:
      return "fedavg";
    case Kind::kMedian:
      return "median";
    case Kind::kTrimmedMean: {
      std::ostringstream b;
      b << trim_fraction;
      return "trimmed-mean:" + b.str();
    }
    case Kind::kKrum:
      return "krum:" + std::to_string(byzantine);
    case Kind::kMultiKrum:
      return "multi-krum:" + std::to_string(byzantine) + ":" + std::to_string(keep);
    case Kind::kBulyan:
      return "bulyan:" + std::to_string(byzantine);
  }
  return "unknown";
}

std::string Strategy::Name() const {
  if (scaffold) return optimizer.stateful() ? "scaffold+" + optimizer.Name() : "scaffold";
  if (prox_from_name && !optimizer.stateful()) {
    std::ostringstream mu;
    mu << proximal_mu;
    return "fedprox:" + mu.str();
  }
  if (optimizer_from_name)
    return "fed" +
           std::string(optimizer.kind == ServerOptimizer::Kind::kMomentum ? "avgm" : optimizer.Name());
  if (!optimizer.stateful()) return CombinerName();
  return CombinerName() + "+" + optimizer.Name();
}

int Strategy::MinUpdates() const {
  switch (kind) {
    case Kind::kKrum:
    case Kind::kMultiKrum:
    case Kind::kBulyan:
      return 3;  // with F lowered to 0: one neighbour each
    default:
      return 1;
  }
}

int Strategy::ByzantineFor(int n) const {
  int most = 0;
  switch (kind) {
    case Kind::kKrum:
    case Kind::kMultiKrum:
      most = (n - 3) / 2;  // n >= 2F + 3
      break;
    case Kind::kBulyan:
      most = (n - 3) / 4;  // n >= 4F + 3
      break;
    default:
      return 0;
  }
  return std::max(0, std::min(byzantine, most));
}

namespace {

// "A:B:..." after `prefix`, as non-negative integers; nullopt when malformed.
std::optional<std::vector<int>> ParseInts(const std::string& rest) {
  std::vector<int> out;
  size_t start = 0;
  while (true) {
    const size_t colon = rest.find(':', start);
    const std::string part =
        rest.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    if (part.empty() || part.size() > 6 || part.find_first_not_of("0123456789") != std::string::npos)
      return std::nullopt;
    out.push_back(std::stoi(part));
    if (colon == std::string::npos) return out;
    start = colon + 1;
  }
}

}  // namespace

StatusOr<Strategy> ParseStrategy(const std::string& text) {
  Strategy s;
  const std::string forms =
      " (use fedavg, fedavgm, fedadam, fedyogi, fedadagrad, fedprox:MU, scaffold, median, trimmed-mean:B, "
      "krum:F, "
      "multi-krum:F:M "
      "or "
      "bulyan:F)";
  if (text == "fedavg") return s;
  if (text == "scaffold") {
    s.scaffold = true;
    return s;
  }
  using K = ServerOptimizer::Kind;
  for (const auto& [name, kind] : std::vector<std::pair<std::string, K>>{{"fedavgm", K::kMomentum},
                                                                         {"fedadam", K::kAdam},
                                                                         {"fedyogi", K::kYogi},
                                                                         {"fedadagrad", K::kAdagrad}}) {
    if (text == name) {
      s.optimizer.kind = kind;
      s.optimizer_from_name = true;
      return s;
    }
  }
  if (text == "median") {
    s.kind = Strategy::Kind::kMedian;
    return s;
  }
  if (text.rfind("fedprox:", 0) == 0) {
    const std::string number = text.substr(8);
    char* end = nullptr;
    const double mu = std::strtod(number.c_str(), &end);
    if (number.empty() || end != number.c_str() + number.size() || !(mu > 0) || !std::isfinite(mu)) {
      return InvalidArgument("fedprox needs mu > 0, the proximal term's weight, e.g. fedprox:0.01; got '" +
                             number + "'");
    }
    s.proximal_mu = mu;
    s.prox_from_name = true;
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
  for (const auto& [name, kind, parts] : std::vector<std::tuple<std::string, Strategy::Kind, size_t>>{
           {"krum:", Strategy::Kind::kKrum, 1},
           {"multi-krum:", Strategy::Kind::kMultiKrum, 2},
           {"bulyan:", Strategy::Kind::kBulyan, 1}}) {
    if (text.rfind(name, 0) != 0) continue;
    std::optional<std::vector<int>> n = ParseInts(text.substr(name.size()));
    if (!n || n->size() != parts || (parts == 2 && (*n)[1] < 1)) {
      return InvalidArgument(
          "'" + text + "': " + name +
          (parts == 2 ? "F:M needs F (the malicious devices to tolerate, >= 0) and M (the "
                        "updates averaged, >= 1), e.g. multi-krum:2:5"
                      : "F needs F, the malicious devices to tolerate (>= 0), e.g. " + name + "2"));
    }
    s.kind = kind;
    s.byzantine = (*n)[0];
    if (parts == 2) s.keep = (*n)[1];
    return s;
  }
  return InvalidArgument("unknown strategy '" + text + "'" + forms);
}

RobustCombiner::RobustCombiner(std::shared_ptr<const Layout> layout, Strategy strategy)
    : layout_(std::move(layout)), strategy_(std::move(strategy)) {}

Status RobustCombiner::Add(const Weights& delta) {
  if (!delta.layout) return InvalidArgument("delta has no layout");
  RETURN_IF_ERROR(layout_->CheckSame(*delta.layout));
  RETURN_IF_ERROR(delta.Validate());
  deltas_.push_back(delta.data);
  return Status::Ok();
}

std::vector<double> PairwiseSquaredDistances(const std::vector<std::vector<float>>& updates) {
  const size_t n = updates.size();
  std::vector<double> d2(n * n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j) {
      const float* a = updates[i].data();
      const float* b = updates[j].data();
      const size_t len = updates[i].size();
      double sum = 0.0;
      for (size_t k = 0; k < len; ++k) {
        const double d = static_cast<double>(a[k]) - static_cast<double>(b[k]);
        sum += d * d;
      }
      d2[i * n + j] = sum;
      d2[j * n + i] = sum;
    }
  }
  return d2;
}

std::vector<double> KrumScores(const std::vector<double>& d2, size_t n, const std::vector<size_t>& among,
                               int f) {
  const long r = static_cast<long>(among.size());
  const size_t neighbours = static_cast<size_t>(std::max(1L, r - f - 2));
  std::vector<double> scores;
  scores.reserve(among.size());
  std::vector<double> row;
  for (size_t i : among) {
    row.clear();
    for (size_t j : among) {
      if (j != i) row.push_back(d2[i * n + j]);
    }
    const size_t k = std::min(neighbours, row.size());
    std::partial_sort(row.begin(), row.begin() + static_cast<long>(k), row.end());
    double score = 0.0;
    for (size_t c = 0; c < k; ++c) score += row[c];
    scores.push_back(score);
  }
  return scores;
}

namespace {

// Positions in `among` ordered by score; ties by position (client-id order).
std::vector<size_t> ByScore(const std::vector<double>& scores) {
  std::vector<size_t> order(scores.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  return order;
}

}  // namespace

StatusOr<Weights> RobustCombiner::Result() const {
  const size_t n = deltas_.size();
  picked_.clear();
  if (n == 0) return FailedPrecondition("no updates to aggregate");
  if (static_cast<int>(n) < strategy_.MinUpdates()) {
    return FailedPrecondition(strategy_.CombinerName() + " needs at least " +
                              std::to_string(strategy_.MinUpdates()) + " updates, the round has " +
                              std::to_string(n));
  }
  const int f = strategy_.ByzantineFor(static_cast<int>(n));
  byzantine_used_ = f;
  Weights out = Weights::Zeros(layout_);
  const Strategy::Kind kind = strategy_.kind;
  if (kind == Strategy::Kind::kKrum || kind == Strategy::Kind::kMultiKrum ||
      kind == Strategy::Kind::kBulyan) {
    const std::vector<double> d2 = PairwiseSquaredDistances(deltas_);
    std::vector<size_t> all(n);
    for (size_t i = 0; i < n; ++i) all[i] = i;
    if (kind != Strategy::Kind::kBulyan) {
      const std::vector<size_t> order = ByScore(KrumScores(d2, n, all, f));
      const size_t m = kind == Strategy::Kind::kKrum ? 1 : std::min(n, static_cast<size_t>(strategy_.keep));
      picked_.assign(order.begin(), order.begin() + static_cast<long>(m));
      std::vector<double> sum(out.data.size(), 0.0);
      for (size_t p : picked_) {
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += deltas_[p][i];
      }
      for (size_t i = 0; i < sum.size(); ++i)
        out.data[i] = static_cast<float>(sum[i] / static_cast<double>(m));
      return out;
    }
    // Bulyan: theta = n - 2f picks by Krum on what is left, then per
    // coordinate the beta = theta - 2f values closest to their median.
    const size_t theta = n - 2 * static_cast<size_t>(f);
    const size_t beta = theta - 2 * static_cast<size_t>(f);
    std::vector<size_t> left = all;
    while (picked_.size() < theta) {
      const std::vector<size_t> order = ByScore(KrumScores(d2, n, left, f));
      picked_.push_back(left[order[0]]);
      left.erase(left.begin() + static_cast<long>(order[0]));
    }
    std::vector<size_t> sorted_picks = picked_;
    std::sort(sorted_picks.begin(), sorted_picks.end());
    std::vector<float> column(theta);
    for (size_t i = 0; i < out.data.size(); ++i) {
      for (size_t c = 0; c < theta; ++c) column[c] = deltas_[sorted_picks[c]][i];
      std::sort(column.begin(), column.end());
      const double median = theta % 2 == 1
                                ? column[theta / 2]
                                : 0.5 * (double{column[theta / 2 - 1]} + double{column[theta / 2]});
      // The beta closest to the median form a contiguous run of the sorted
      // column: grow it from the middle, taking the nearer end (the lower on
      // a tie).
      size_t lo = theta / 2, hi = theta / 2;  // [lo, hi)
      while (hi - lo < beta) {
        if (lo == 0) {
          ++hi;
        } else if (hi == theta) {
          --lo;
        } else if (median - column[lo - 1] <= column[hi] - median) {
          --lo;
        } else {
          ++hi;
        }
      }
      double sum = 0.0;
      for (size_t c = lo; c < hi; ++c) sum += column[c];
      out.data[i] = static_cast<float>(sum / static_cast<double>(beta));
    }
    return out;
  }
  size_t drop = 0;
  if (kind == Strategy::Kind::kTrimmedMean) {
    drop = static_cast<size_t>(std::floor(strategy_.trim_fraction * static_cast<double>(n)));
  }
  if (2 * drop >= n) return FailedPrecondition("trimming would leave no update");
  std::vector<float> column(n);
  for (size_t i = 0; i < out.data.size(); ++i) {
    for (size_t c = 0; c < n; ++c) column[c] = deltas_[c][i];
    if (kind == Strategy::Kind::kMedian) {
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

void ClipToNorm(Weights* delta, double norm, double bound) {
  if (!(bound > 0.0) || !(norm > bound)) return;
  const double scale = bound / norm;
  for (float& v : delta->data) v = static_cast<float>(static_cast<double>(v) * scale);
}

}  // namespace flotilla::aggregator
