// ModelRunner: a Torch model behind a Torch-free interface. It converts
// between the module's parameters and flat Weights, trains locally and
// evaluates. Every file outside training/ uses this header, never Torch.
//
// Thread-safety: not thread-safe. Give each trainer thread its own runner.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/weights.h"
#include "training/dataset.h"

namespace flotilla::training {

// Known architectures:
//   "2nn"    FedAvg paper MLP 784-200-200-10, ReLU (199,210 parameters)
//   "cnn"    FedAvg paper CNN: conv5x5(32,same)-pool2-conv5x5(64,same)-pool2-fc512-fc10
//            (1,663,370 parameters)
//   "logreg" multinomial logistic regression 784-10 (7,850 parameters)
std::vector<std::string> KnownArchitectures();

struct TrainConfig {
  int epochs = 1;
  int batch_size = 32;
  double learning_rate = 0.01;
  double momentum = 0.0;
  double weight_decay = 0.0;
  uint64_t seed = 0;  // batch order
};

struct TrainResult {
  double mean_loss = 0.0;  // mean training loss over all steps of the last epoch
  int64_t examples = 0;    // size of the local dataset
  int64_t steps = 0;
  double seconds = 0.0;
};

struct EvalResult {
  double loss = 0.0;      // mean cross-entropy
  double accuracy = 0.0;  // in [0, 1]
  int64_t examples = 0;
};

class ModelRunner {
 public:
  // Builds `arch` with parameters initialized deterministically from
  // `init_seed`. Unknown arch: InvalidArgument listing the known ones.
  static StatusOr<std::unique_ptr<ModelRunner>> Create(const std::string& arch, uint64_t init_seed);
  ~ModelRunner();
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  const std::string& arch() const;
  // Parameter names and shapes, in named_parameters() order.
  std::shared_ptr<const Layout> layout() const;
  Weights GetWeights() const;
  // Copies `w` into the module. Fails without changing the module when the
  // layout's names or shapes differ or a value is not finite.
  Status SetWeights(const Weights& w);

  // Local SGD (with momentum) over `data` for config.epochs. Fails on an
  // empty view, bad config, data whose example shape does not fit the model,
  // or a non-finite loss (the module is then left as it was before Train).
  StatusOr<TrainResult> Train(const DataView& data, const TrainConfig& config);
  StatusOr<EvalResult> Evaluate(const DataView& data, int batch_size = 1000);

 private:
  struct Impl;
  explicit ModelRunner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Sets Torch's intra-op thread count for the calling thread (OpenMP) and
// the inter-op pool. Trainer pools call SetTorchThreads(1) in each worker.
void SetTorchThreads(int n);

}  // namespace flotilla::training
