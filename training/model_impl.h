// Private to training/: the Torch modules behind ModelRunner and the state
// of ModelRunner::Impl, shared by model.cc (ordinary training) and dp_sgd.cc
// (DP-SGD, which runs its own forward pass over these modules' parameters).
// Includes Torch; never include it from outside training/.
#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/weights.h"
#include "training/dataset.h"
#include "training/model.h"

namespace flotilla::training {
namespace internal {

inline constexpr int64_t kChannels = 1, kHeight = 28, kWidth = 28, kClasses = 10;

// A classifier over [N, 1, 28, 28] float images returning [N, 10] logits.
struct Net : torch::nn::Module {
  virtual torch::Tensor Forward(torch::Tensor x) = 0;
};

struct Mlp2nn : Net {
  Mlp2nn()
      : fc1(register_module("fc1", torch::nn::Linear(784, 200))),
        fc2(register_module("fc2", torch::nn::Linear(200, 200))),
        fc3(register_module("fc3", torch::nn::Linear(200, 10))) {}
  torch::Tensor Forward(torch::Tensor x) override {
    x = x.flatten(1);
    x = torch::relu(fc1->forward(x));
    x = torch::relu(fc2->forward(x));
    return fc3->forward(x);
  }
  torch::nn::Linear fc1, fc2, fc3;
};

struct Cnn : Net {
  Cnn()
      : conv1(register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 5).padding(2)))),
        conv2(register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 5).padding(2)))),
        fc1(register_module("fc1", torch::nn::Linear(3136, 512))),
        fc2(register_module("fc2", torch::nn::Linear(512, 10))) {}
  torch::Tensor Forward(torch::Tensor x) override {
    x = torch::max_pool2d(torch::relu(conv1->forward(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2->forward(x)), 2);
    x = torch::relu(fc1->forward(x.flatten(1)));
    return fc2->forward(x);
  }
  torch::nn::Conv2d conv1, conv2;
  torch::nn::Linear fc1, fc2;
};

struct LogReg : Net {
  LogReg() : fc(register_module("fc", torch::nn::Linear(784, 10))) {}
  torch::Tensor Forward(torch::Tensor x) override { return fc->forward(x.flatten(1)); }
  torch::nn::Linear fc;
};

// Checks that `data` is non-empty and consistent and, for the built-in
// architectures (`builtin`), fits a 1x28x28, 10-class model. `what`
// prefixes error messages (the calling method's name).
Status CheckData(const DataView& data, const char* what, bool builtin = true);

// Checks the fields of `config` (epochs, batch size, learning rate,
// momentum, weight decay); `what` prefixes error messages.
Status CheckTrainConfig(const TrainConfig& config, const char* what);

// Checks that `data` has what `loss` needs: real targets for mse, class
// labels (0/1 for bce) otherwise.
Status CheckTargets(Loss loss, const DataView& data, const char* what);

// `tensors` (in `layout` order) as flat weights, and back: CopyIn fails,
// changing nothing, when `w` is not finite or its layout differs (`what`
// prefixes the error).
Weights CopyOut(const std::shared_ptr<const Layout>& layout, const std::vector<torch::Tensor>& tensors);
Status CopyIn(const Layout& layout, const Weights& w, std::vector<torch::Tensor>* tensors,
              const std::string& what);

// SGD with momentum, or Adam, over `params`, as `config` says.
std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const TrainConfig& config,
                                                       const std::vector<torch::Tensor>& params);

// Tensors over the shared dataset's memory. They are only ever read
// (index_select copies), so the const_cast in WrapDataset never leads to a
// write. Valid while the dataset lives.
struct DataTensors {
  torch::Tensor features;  // [N, C, H, W]
  torch::Tensor labels;    // [N] int64
  // [N] float for bce and mse: Dataset::targets, or the labels as floats.
  // Undefined for cross-entropy, which needs only the labels.
  torch::Tensor targets;

  // The targets of the examples `idx` (undefined for cross-entropy).
  torch::Tensor Targets(const torch::Tensor& idx) const {
    return targets.defined() ? targets.index_select(0, idx) : torch::Tensor();
  }
};

// The batch's loss for `loss`: `output` against `labels` (cross-entropy) or
// `targets` (bce, mse: one output per example, [B] or [B, 1]), the mean or
// (sum) the sum over the batch. Throws std::invalid_argument naming the
// shape when the output does not fit the loss.
torch::Tensor BatchLoss(Loss loss, const torch::Tensor& output, const torch::Tensor& labels,
                        const torch::Tensor& targets, bool sum = false);
// The dataset as tensors, with the targets `loss` needs.
DataTensors WrapDataset(const Dataset& d, Loss loss = Loss::kCrossEntropy);

// A [end - begin] int64 tensor over indices[begin, end) (no copy; valid while
// `indices` is unchanged).
torch::Tensor IndexTensor(const std::vector<int64_t>& indices, size_t begin, size_t end);

}  // namespace internal

struct ModelRunner::Impl {
  std::string arch;
  Loss loss = Loss::kCrossEntropy;
  std::shared_ptr<internal::Net> net;        // a built-in architecture, or
  std::optional<torch::jit::Module> script;  // a TorchScript module
  // What travels, in layout order; share storage with the module.
  std::vector<torch::Tensor> params;
  // What the optimizer updates (not frozen; personal ones included).
  std::vector<torch::Tensor> trainable;
  // Every parameter and buffer: what a failed training restores.
  std::vector<torch::Tensor> state;
  std::shared_ptr<const Layout> layout;
  // What stays on the device and is not restored by SetWeights: personal
  // parameters and local float buffers (TorchScript models only).
  std::vector<torch::Tensor> local;
  std::shared_ptr<const Layout> local_layout;  // null when nothing is local

  torch::Tensor Forward(const torch::Tensor& x) {
    if (script) return script->forward({x}).toTensor();
    return net->Forward(x);
  }
  // train() (dropout on, BatchNorm updating its statistics) or eval().
  void SetTraining(bool on) {
    if (script) {
      script->train(on);
    } else {
      net->train(on);
    }
  }
  std::vector<torch::Tensor> Snapshot() const {
    std::vector<torch::Tensor> copy;
    copy.reserve(state.size());
    for (const auto& p : state) copy.push_back(p.detach().clone());
    return copy;
  }
  void Restore(const std::vector<torch::Tensor>& snapshot) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < state.size(); ++i) state[i].copy_(snapshot[i]);
  }
};

}  // namespace flotilla::training
