// Test access to the internals of ModelRunner::TrainDpSgd (training/dp_sgd.cc):
// per-example gradients from the vectorized path and from a slow reference,
// and the clipping arithmetic, all Torch-free. For tests only.
//
// Thread-safety: like ModelRunner, not thread-safe per runner.
#pragma once

#include <vector>

#include "core/status.h"
#include "core/weights.h"
#include "training/dataset.h"
#include "training/model.h"

namespace flotilla::training {

class DpSgdTestPeer {
 public:
  // Gradients of the cross-entropy loss of each example of `batch`, one
  // Weights per example in batch order, from the batched per-example path
  // of TrainDpSgd (materialized; training itself never materializes the
  // per-example gradients of Linear layers). The module is not changed.
  static StatusOr<std::vector<Weights>> PerExampleGradients(ModelRunner& runner, const DataView& batch);

  // The same from one forward and one backward pass of the ordinary module
  // per example (the slow, obviously right way).
  static StatusOr<std::vector<Weights>> PerExampleGradientsReference(ModelRunner& runner,
                                                                     const DataView& batch);

  // The per-example gradient L2 norms TrainDpSgd clips by (over all
  // parameters; computed without materializing Linear gradients).
  static StatusOr<std::vector<double>> PerExampleNorms(ModelRunner& runner, const DataView& batch);

  // The sum over `batch` of per-example gradients each clipped to
  // `l2_clip`, exactly as TrainDpSgd forms it before adding noise.
  static StatusOr<Weights> ClippedGradientSum(ModelRunner& runner, const DataView& batch, double l2_clip);
};

}  // namespace flotilla::training
