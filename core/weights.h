// Weights: a model's parameters as one contiguous float32 buffer plus a
// Layout that names each tensor, its shape and its offset in the buffer.
// Aggregation, privacy and the wire all work on this flat form; only
// training/ converts it to and from Torch modules.
//
// Thread-safety: values; a const Weights may be read from many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace flotilla {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // in elements, into Weights::data
  int64_t numel = 0;

  bool operator==(const TensorSpec& o) const {
    return name == o.name && shape == o.shape && offset == o.offset && numel == o.numel;
  }
};

// The ordered list of tensors of one model. Immutable once built.
class Layout {
 public:
  Layout() = default;

  // Builds a layout from (name, shape) pairs in order. Fails on duplicate or
  // empty names, negative dimensions, or a total over 2^31 elements.
  static StatusOr<Layout> Create(const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors);

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  int64_t total_numel() const { return total_; }
  bool operator==(const Layout& o) const { return tensors_ == o.tensors_; }
  bool operator!=(const Layout& o) const { return !(*this == o); }

  // A one-line human description, e.g. "4 tensors, 199210 parameters".
  std::string Describe() const;
  // OK when `other` has the same names and shapes; otherwise says the first
  // difference ("tensor 2 'fc2.weight': shape [10,200] != [10,100]").
  Status CheckSame(const Layout& other) const;

 private:
  std::vector<TensorSpec> tensors_;
  int64_t total_ = 0;
};

struct Weights {
  std::shared_ptr<const Layout> layout;
  std::vector<float> data;  // layout->total_numel() elements

  // A zero-filled buffer for `layout`.
  static Weights Zeros(std::shared_ptr<const Layout> layout);
  // OK when data.size() matches the layout and every value is finite.
  Status Validate() const;
  // Euclidean norm, accumulated in double.
  double L2Norm() const;
};

// The index of the first value that is NaN or infinite, or n when all are
// finite. Branch-free over blocks (the compiler vectorizes it), so checking
// a model costs about one read of it.
size_t FirstNonFinite(const float* values, size_t n);

}  // namespace flotilla
