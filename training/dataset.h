// In-memory labelled image datasets and views onto them. No Torch here: the
// rest of Flotilla (partitioners, simulator) uses these types without paying
// for Torch headers.
//
// Thread-safety: a const Dataset may be shared by many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace flotilla::training {

struct Dataset {
  int64_t channels = 1, height = 28, width = 28;
  int64_t num_classes = 10;
  std::vector<float> features;  // size() * channels * height * width, row-major NCHW
  std::vector<int64_t> labels;  // in [0, num_classes)
  // Real-valued targets, one per example, for regression (loss mse); empty
  // for classification, whose targets are the labels.
  std::vector<float> targets;

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t example_numel() const { return channels * height * width; }
};

// A subset of a shared dataset, given by indices (which may repeat).
struct DataView {
  std::shared_ptr<const Dataset> base;
  std::vector<int64_t> indices;

  int64_t size() const { return static_cast<int64_t>(indices.size()); }
  // A view of every example of `base`, in order.
  static DataView All(std::shared_ptr<const Dataset> base);
};

enum class Split { kTrain, kTest };

// The default location of Debian's dataset-fashion-mnist package.
inline constexpr const char* kDefaultFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Reads Fashion-MNIST (or MNIST: same format) from the gzipped IDX files
// `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` in `dir`. Pixels are
// scaled to [0,1] and standardized with mean 0.2860, std 0.3530. `limit` > 0
// keeps only the first `limit` examples. Errors name the offending path: a
// missing file (NotFound, says which package provides it), a truncated or
// corrupt file (DataLoss), mismatched image and label counts.
StatusOr<Dataset> LoadFashionMnist(const std::string& dir, Split split, int64_t limit = 0);

// A small synthetic 10-class dataset with learnable structure (each class a
// noisy prototype image), for tests that must not depend on the package.
Dataset MakeSynthetic(int64_t n, uint64_t seed, int64_t height = 28, int64_t width = 28);

}  // namespace flotilla::training
