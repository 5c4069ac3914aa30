#include "core/weights.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <sstream>

namespace flotilla {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? "," : "") << shape[i];
  out << "]";
  return out.str();
}

}  // namespace

StatusOr<Layout> Layout::Create(const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors) {
  constexpr int64_t kMaxElements = int64_t{1} << 31;
  Layout layout;
  std::set<std::string> seen;
  for (const auto& [name, shape] : tensors) {
    if (name.empty()) return InvalidArgument("layout: tensor with an empty name");
    if (!seen.insert(name).second) return InvalidArgument("layout: duplicate tensor name '" + name + "'");
    if (shape.size() > 8) return InvalidArgument("layout: tensor '" + name + "' has more than 8 dimensions");
    int64_t numel = 1;
    for (int64_t d : shape) {
      if (d < 0 || d > kMaxElements) {
        return InvalidArgument("layout: tensor '" + name + "' has bad dimension " + std::to_string(d));
      }
      numel *= d;
      if (numel > kMaxElements) return InvalidArgument("layout: tensor '" + name + "' is too large");
    }
    TensorSpec spec{name, shape, layout.total_, numel};
    layout.total_ += numel;
    if (layout.total_ > kMaxElements) return InvalidArgument("layout: model larger than 2^31 elements");
    layout.tensors_.push_back(std::move(spec));
  }
  return layout;
}

std::string Layout::Describe() const {
  return std::to_string(tensors_.size()) + " tensors, " + std::to_string(total_) + " parameters";
}

Status Layout::CheckSame(const Layout& other) const {
  // The first differing tensor is named, so a wrong model file says where
  // it differs, not only that it does.
  const size_t common = std::min(tensors_.size(), other.tensors_.size());
  for (size_t i = 0; i < common; ++i) {
    const TensorSpec& a = tensors_[i];
    const TensorSpec& b = other.tensors_[i];
    if (a.name != b.name) {
      return InvalidArgument("tensor " + std::to_string(i) + " is named '" + b.name + "', expected '" +
                             a.name + "'");
    }
    if (a.shape != b.shape) {
      return InvalidArgument("tensor " + std::to_string(i) + " '" + a.name + "': shape " +
                             ShapeString(b.shape) + ", expected " + ShapeString(a.shape));
    }
  }
  if (tensors_.size() != other.tensors_.size()) {
    const bool extra = other.tensors_.size() > tensors_.size();
    const TensorSpec& first = extra ? other.tensors_[common] : tensors_[common];
    return InvalidArgument("layout has " + std::to_string(other.tensors_.size()) + " tensors, expected " +
                           std::to_string(tensors_.size()) +
                           (extra ? "; first extra: '" : "; first missing: '") + first.name + "'");
  }
  return Status::Ok();
}

Weights Weights::Zeros(std::shared_ptr<const Layout> layout) {
  Weights w;
  w.data.assign(static_cast<size_t>(layout->total_numel()), 0.0f);
  w.layout = std::move(layout);
  return w;
}

Status Weights::Validate() const {
  if (!layout) return InvalidArgument("weights have no layout");
  if (static_cast<int64_t>(data.size()) != layout->total_numel()) {
    return InvalidArgument("weights have " + std::to_string(data.size()) + " values, layout needs " +
                           std::to_string(layout->total_numel()));
  }
  const size_t bad = FirstNonFinite(data.data(), data.size());
  if (bad < data.size()) {
    return InvalidArgument("weights contain a non-finite value at index " + std::to_string(bad));
  }
  return Status::Ok();
}

size_t FirstNonFinite(const float* values, size_t n) {
  // A float is NaN or infinite exactly when its exponent bits are all ones.
  constexpr uint32_t kExponent = 0x7f800000u;
  constexpr size_t kBlock = 1024;
  for (size_t start = 0; start < n; start += kBlock) {
    const size_t end = std::min(n, start + kBlock);
    uint32_t any = 0;
    for (size_t i = start; i < end; ++i) {
      uint32_t bits;
      std::memcpy(&bits, values + i, sizeof(bits));
      any |= static_cast<uint32_t>((bits & kExponent) == kExponent);
    }
    if (any != 0) {
      for (size_t i = start; i < end; ++i) {
        if (!std::isfinite(values[i])) return i;
      }
    }
  }
  return n;
}

double Weights::L2Norm() const {
  double sum = 0.0;
  for (float v : data) sum += static_cast<double>(v) * v;
  return std::sqrt(sum);
}

}  // namespace flotilla
