// ModelRunner::TrainDpSgd: DP-SGD with per-example gradients from one
// batched forward and backward pass.
//
// The forward pass is written out per architecture over the runner's
// parameters (the same arithmetic as the modules' Forward) and records, for
// every parametrized layer, its input and its output. One autograd call
// gives g = d(sum_i loss_i)/d(output) for all layers at once; since example
// i's loss depends only on row i of every output (no batch norm), row i of
// g is example i's own output gradient. Then, per example i:
//
//   Linear  y = W a + b:  dW_i = g_i a_i^T, db_i = g_i, and
//           ||dW_i||^2 + ||db_i||^2 = ||g_i||^2 (||a_i||^2 + 1)
//           (exact for 2-D inputs; Goodfellow 2015, "Efficient per-example
//           gradient computations"), so Linear per-example gradients are
//           never materialized: the clipped sum is (f * g)^T a, one matmul,
//           with f_i = min(1, C / ||grad_i||).
//   Conv2d  with U = unfold(input) [B, in*kh*kw, L] (im2col) and g viewed as
//           [B, out, L]: dW_i = g_i U_i^T (one bmm), db_i = sum_l g_i[:, l];
//           these are small and are materialized.
//
// Per-example norms are taken over all parameters together and accumulated
// in double; the clip factor is rounded toward zero to float.
//
// Floating-point caveat: the bound ||f_i grad_i|| <= C holds for the
// computed per-example gradients up to float32 rounding (relative ~1e-7);
// the float32 sums over the batch and the float/double noise arithmetic
// (see privacy/noise.h) are not covered by the DP proof.

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "privacy/noise.h"
#include "training/dp_sgd_testing.h"
#include "training/model.h"
#include "training/model_impl.h"

namespace flotilla::training {
namespace {

namespace F = torch::nn::functional;

using internal::CheckData;
using internal::CheckTrainConfig;
using internal::DataTensors;
using internal::IndexTensor;
using internal::WrapDataset;

// Largest step count TrainDpSgd accepts (a guard against q ~ 0 typos).
constexpr int64_t kMaxSteps = 100'000'000;

// One parametrized layer's share of a batch's forward and backward pass.
struct LayerPass {
  bool conv = false;
  size_t weight_index = 0;     // into the parameter list; the bias follows it
  torch::Tensor input;         // Linear: the layer input a [B, in]
  torch::Tensor output_grad;   // Linear: g = d loss_i / d y_i [B, out]
  torch::Tensor weight_grads;  // Conv2d: per-example dW [B, out, in*kh*kw]
  torch::Tensor bias_grads;    // Conv2d: per-example db [B, out]
};

struct BatchPass {
  double loss_sum = 0.0;  // sum over the batch of the cross-entropy
  int64_t size = 0;
  std::vector<LayerPass> layers;
};

// Runs the parametrized layers of the DP forward pass and remembers their
// inputs and outputs for RunBatch.
class Tape {
 public:
  explicit Tape(const std::vector<torch::Tensor>& params) : params_(params) {}

  torch::Tensor Linear(const torch::Tensor& x, size_t weight_index) {
    torch::Tensor y = F::linear(x, params_[weight_index], params_[weight_index + 1]);
    entries_.push_back({false, weight_index, 0, x.detach(), y});
    return y;
  }

  // A stride-1 "same" convolution (odd square kernel, padding k / 2).
  torch::Tensor Conv2d(const torch::Tensor& x, size_t weight_index) {
    const int64_t padding = params_[weight_index].size(2) / 2;
    torch::Tensor y = F::conv2d(x, params_[weight_index],
                                F::Conv2dFuncOptions().bias(params_[weight_index + 1]).padding(padding));
    entries_.push_back({true, weight_index, padding, x.detach(), y});
    return y;
  }

  struct Entry {
    bool conv;
    size_t weight_index;
    int64_t padding;
    torch::Tensor input;   // detached
    torch::Tensor output;  // in the autograd graph
  };
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  const std::vector<torch::Tensor>& params_;
  std::vector<Entry> entries_;
};

// The modules' Forward (training/model_impl.h) over `params`, layer by
// layer through `tape`. Parameter indices follow named_parameters() order.
torch::Tensor DpForward(const std::string& arch, Tape& tape, torch::Tensor x) {
  if (arch == "2nn") {
    x = x.flatten(1);
    x = torch::relu(tape.Linear(x, 0));
    x = torch::relu(tape.Linear(x, 2));
    return tape.Linear(x, 4);
  }
  if (arch == "cnn") {
    x = torch::max_pool2d(torch::relu(tape.Conv2d(x, 0)), 2);
    x = torch::max_pool2d(torch::relu(tape.Conv2d(x, 2)), 2);
    x = torch::relu(tape.Linear(x.flatten(1), 4));
    return tape.Linear(x, 6);
  }
  if (arch == "logreg") return tape.Linear(x.flatten(1), 0);
  throw std::invalid_argument("DP-SGD has no forward pass for architecture '" + arch + "'");
}

// Checks that `params` has the layer structure DpForward assumes: for each
// layer a weight (2-D Linear, 4-D Conv2d with an odd square kernel) followed
// by its 1-D bias.
Status CheckDpArchitecture(const std::string& arch, const std::vector<torch::Tensor>& params) {
  std::vector<int64_t> weight_dims;
  if (arch == "2nn") {
    weight_dims = {2, 2, 2};
  } else if (arch == "cnn") {
    weight_dims = {4, 4, 2, 2};
  } else if (arch == "logreg") {
    weight_dims = {2};
  } else {
    return InvalidArgument(
        "TrainDpSgd: architecture '" + arch +
        "' is not supported yet (2nn, cnn, logreg are; record-level DP on TorchScript models "
        "is not built yet)");
  }
  if (params.size() != 2 * weight_dims.size()) {
    return Internal("TrainDpSgd: '" + arch + "' has " + std::to_string(params.size()) +
                    " parameter tensors, expected " + std::to_string(2 * weight_dims.size()));
  }
  for (size_t layer = 0; layer < weight_dims.size(); ++layer) {
    const torch::Tensor& w = params[2 * layer];
    const torch::Tensor& b = params[2 * layer + 1];
    bool ok = w.dim() == weight_dims[layer] && b.dim() == 1 && b.size(0) == w.size(0);
    if (ok && w.dim() == 4) ok = w.size(2) == w.size(3) && w.size(2) % 2 == 1;
    if (!ok)
      return Internal("TrainDpSgd: unexpected parameter shapes in layer " + std::to_string(layer) + " of '" +
                      arch + "'");
  }
  return Status::Ok();
}

Status CheckDpConfig(const DpSgdConfig& dp) {
  if (!(dp.noise_multiplier >= 0.0) || !std::isfinite(dp.noise_multiplier)) {
    return InvalidArgument("TrainDpSgd: noise_multiplier must be >= 0 and finite, got " +
                           std::to_string(dp.noise_multiplier));
  }
  if (!(dp.l2_clip > 0.0) || !std::isfinite(dp.l2_clip)) {
    return InvalidArgument("TrainDpSgd: l2_clip must be positive and finite, got " +
                           std::to_string(dp.l2_clip));
  }
  if (!(dp.sampling_rate >= 0.0 && dp.sampling_rate <= 1.0)) {
    return InvalidArgument("TrainDpSgd: sampling_rate must be in (0, 1] (or 0 for batch_size / N), got " +
                           std::to_string(dp.sampling_rate));
  }
  if (dp.steps < 0 || dp.steps > kMaxSteps) {
    return InvalidArgument("TrainDpSgd: steps must be in [0, " + std::to_string(kMaxSteps) + "], got " +
                           std::to_string(dp.steps));
  }
  return Status::Ok();
}

// One forward and backward pass over a batch (x, y) through DpForward.
// REQUIRES: grad mode enabled; x has at least one example.
BatchPass RunBatch(const std::string& arch, const std::vector<torch::Tensor>& params, const torch::Tensor& x,
                   const torch::Tensor& y) {
  Tape tape(params);
  const torch::Tensor logits = DpForward(arch, tape, x);
  const torch::Tensor loss = F::cross_entropy(logits, y, F::CrossEntropyFuncOptions().reduction(torch::kSum));
  std::vector<torch::Tensor> outputs;
  for (const auto& entry : tape.entries()) outputs.push_back(entry.output);
  const std::vector<torch::Tensor> grads = torch::autograd::grad({loss}, outputs);

  BatchPass pass;
  pass.loss_sum = loss.item<double>();
  pass.size = x.size(0);
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tape::Entry& entry = tape.entries()[i];
    LayerPass layer;
    layer.conv = entry.conv;
    layer.weight_index = entry.weight_index;
    if (!entry.conv) {
      layer.input = entry.input;
      layer.output_grad = grads[i];
    } else {
      const torch::Tensor& w = params[entry.weight_index];
      const torch::Tensor columns =
          F::unfold(entry.input, F::UnfoldFuncOptions({w.size(2), w.size(3)}).padding(entry.padding));
      const torch::Tensor g = grads[i].reshape({pass.size, w.size(0), -1});  // [B, out, L]
      layer.weight_grads = torch::bmm(g, columns.transpose(1, 2));           // [B, out, in*kh*kw]
      layer.bias_grads = g.sum(2);                                           // [B, out]
    }
    pass.layers.push_back(std::move(layer));
  }
  return pass;
}

// Squared L2 norm of each example's gradient over all parameters, [B] double.
torch::Tensor SquaredNorms(const BatchPass& pass) {
  torch::Tensor total = torch::zeros({pass.size}, torch::kDouble);
  for (const LayerPass& layer : pass.layers) {
    if (layer.conv) {
      total += layer.weight_grads.to(torch::kDouble).square().sum({1, 2});
      total += layer.bias_grads.to(torch::kDouble).square().sum(1);
    } else {
      const torch::Tensor g2 = layer.output_grad.to(torch::kDouble).square().sum(1);
      const torch::Tensor a2 = layer.input.to(torch::kDouble).square().sum(1);
      total += g2 * (a2 + 1.0);
    }
  }
  return total;
}

// f_i = min(1, clip / ||grad_i||) as float, rounded toward zero so that
// f_i * ||grad_i|| <= clip. REQUIRES: finite norms.
torch::Tensor ClipFactors(const torch::Tensor& squared_norms, double clip) {
  const torch::Tensor norms = squared_norms.sqrt().contiguous();
  const double* norm = norms.data_ptr<double>();
  torch::Tensor factors = torch::empty({norms.size(0)}, torch::kFloat);
  float* out = factors.data_ptr<float>();
  for (int64_t i = 0; i < norms.size(0); ++i) {
    const double exact = norm[i] > clip ? clip / norm[i] : 1.0;
    float f = static_cast<float>(exact);
    if (static_cast<double>(f) > exact) f = std::nextafter(f, 0.0f);
    out[i] = f;
  }
  return factors;
}

// sum_i factors_i * grad_i for every parameter, contiguous and shaped like
// `params`.
std::vector<torch::Tensor> WeightedGradientSum(const BatchPass& pass, const torch::Tensor& factors,
                                               const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> sums(params.size());
  const torch::Tensor row = factors.unsqueeze(0);  // [1, B]
  for (const LayerPass& layer : pass.layers) {
    const size_t w = layer.weight_index;
    if (layer.conv) {
      sums[w] = row.mm(layer.weight_grads.reshape({pass.size, -1})).reshape(params[w].sizes()).contiguous();
      sums[w + 1] = row.mm(layer.bias_grads).reshape(params[w + 1].sizes()).contiguous();
    } else {
      const torch::Tensor scaled = layer.output_grad * factors.unsqueeze(1);  // [B, out]
      sums[w] = scaled.t().mm(layer.input).contiguous();
      sums[w + 1] = scaled.sum(0).contiguous();
    }
  }
  return sums;
}

// Per-example gradients for every parameter, each [B, parameter shape...].
std::vector<torch::Tensor> MaterializePerExample(const BatchPass& pass,
                                                 const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> per_example(params.size());
  for (const LayerPass& layer : pass.layers) {
    const size_t w = layer.weight_index;
    std::vector<int64_t> weight_shape = params[w].sizes().vec();
    weight_shape.insert(weight_shape.begin(), pass.size);
    if (layer.conv) {
      per_example[w] = layer.weight_grads.reshape(weight_shape);
      per_example[w + 1] = layer.bias_grads;
    } else {
      per_example[w] = layer.output_grad.unsqueeze(2) * layer.input.unsqueeze(1);
      per_example[w + 1] = layer.output_grad;
    }
  }
  return per_example;
}

// The batch `indices` of `data` as tensors.
std::pair<torch::Tensor, torch::Tensor> SelectBatch(const DataTensors& all,
                                                    const std::vector<int64_t>& indices) {
  const torch::Tensor idx = IndexTensor(indices, 0, indices.size());
  return {all.features.index_select(0, idx), all.labels.index_select(0, idx)};
}

// Copies per-parameter tensors (row `example` of each when example >= 0)
// into flat Weights.
Weights ToWeights(const std::shared_ptr<const Layout>& layout, const std::vector<torch::Tensor>& tensors,
                  int64_t example) {
  Weights w = Weights::Zeros(layout);
  const auto& specs = layout->tensors();
  for (size_t i = 0; i < specs.size(); ++i) {
    const torch::Tensor t = (example >= 0 ? tensors[i][example] : tensors[i]).to(torch::kFloat).contiguous();
    std::memcpy(w.data.data() + specs[i].offset, t.data_ptr<float>(),
                static_cast<size_t>(specs[i].numel) * sizeof(float));
  }
  return w;
}

// Any module (TorchScript): per-example gradients one example at a time
// (microbatches of one), each clipped to `l2_clip` over all trainable
// parameters, summed. Slower than the batched pass of the built-in
// architectures, exact for any module. *loss_sum gets the summed loss;
// false when a loss or a gradient is not finite.
bool ClippedSumOneByOne(ModelRunner::Impl& impl, const torch::Tensor& x, const torch::Tensor& y,
                        const torch::Tensor& t, double l2_clip, std::vector<torch::Tensor>* sums,
                        double* loss_sum) {
  sums->clear();
  for (const auto& p : impl.trainable) sums->push_back(torch::zeros_like(p));
  *loss_sum = 0.0;
  for (int64_t i = 0; i < x.size(0); ++i) {
    // (No targets for cross-entropy: it reads the labels.)
    const torch::Tensor target = t.defined() ? t.slice(0, i, i + 1) : torch::Tensor();
    const torch::Tensor loss = internal::BatchLoss(impl.loss, impl.Forward(x.slice(0, i, i + 1)),
                                                   y.slice(0, i, i + 1), target, /*sum=*/true);
    const double value = loss.item<double>();
    if (!std::isfinite(value)) return false;
    *loss_sum += value;
    const std::vector<torch::Tensor> grads = torch::autograd::grad({loss}, impl.trainable);
    double squared = 0.0;
    for (const auto& g : grads) squared += g.pow(2).sum().item<double>();
    if (!std::isfinite(squared)) return false;
    const double norm = std::sqrt(squared);
    const double factor = norm > l2_clip ? l2_clip / norm : 1.0;
    for (size_t j = 0; j < grads.size(); ++j) (*sums)[j].add_(grads[j], factor);
  }
  return true;
}

// DP-SGD needs each example's gradient on its own: BatchNorm mixes the
// examples of a batch (and its running statistics are not noised).
Status CheckDpScript(const ModelRunner::Impl& impl) {
  for (const auto& b : impl.script->named_buffers(/*recurse=*/true)) {
    if (b.name.find("running_mean") != std::string::npos) {
      return InvalidArgument("TrainDpSgd: the TorchScript model has BatchNorm ('" + b.name +
                             "'), which mixes examples and cannot be trained with DP-SGD; use GroupNorm or "
                             "LayerNorm");
    }
  }
  if (impl.trainable.empty()) return InvalidArgument("TrainDpSgd: the model has no trainable parameters");
  return Status::Ok();
}

}  // namespace

StatusOr<TrainResult> ModelRunner::TrainDpSgd(const DataView& data, const TrainConfig& config,
                                              const DpSgdConfig& dp) {
  RETURN_IF_ERROR(CheckTrainConfig(config, "TrainDpSgd"));
  RETURN_IF_ERROR(CheckDpConfig(dp));
  if (config.control_correction != nullptr || config.proximal_mu > 0)
    return InvalidArgument(
        "TrainDpSgd: SCAFFOLD's correction and FedProx's term are for ordinary training only");
  const bool script = impl_->script.has_value();
  RETURN_IF_ERROR(CheckData(data, "TrainDpSgd", !script));
  RETURN_IF_ERROR(internal::CheckTargets(impl_->loss, data, "TrainDpSgd"));
  RETURN_IF_ERROR(script ? CheckDpScript(*impl_) : CheckDpArchitecture(impl_->arch, impl_->params));

  const int64_t n = data.size();
  const double q = dp.sampling_rate > 0.0
                       ? dp.sampling_rate
                       : std::min(1.0, static_cast<double>(config.batch_size) / static_cast<double>(n));
  // ceil with a little slack so that e.g. epochs = 3, q = 0.1 gives 30.
  const double planned_steps =
      dp.steps > 0 ? static_cast<double>(dp.steps) : std::ceil(config.epochs / q - 1e-9);
  if (!(planned_steps <= static_cast<double>(kMaxSteps))) {
    return InvalidArgument("TrainDpSgd: " + std::to_string(config.epochs) + " epochs at sampling rate " +
                           std::to_string(q) + " would take more than " + std::to_string(kMaxSteps) +
                           " steps");
  }
  const int64_t steps = static_cast<int64_t>(planned_steps);
  const int64_t fixed_batch = std::max<int64_t>(1, std::llround(q * static_cast<double>(n)));
  const int64_t steps_per_epoch = dp.poisson_sampling ? static_cast<int64_t>(std::ceil(1.0 / q - 1e-9))
                                                      : (n + fixed_batch - 1) / fixed_batch;
  const int64_t loss_window = std::min(steps, steps_per_epoch);
  const double noise_stddev = dp.noise_multiplier * dp.l2_clip;

  ASSIGN_OR_RETURN(privacy::GaussianNoise noise, privacy::GaussianNoise::Create());
  std::optional<privacy::SecureRng> sampler;
  if (dp.poisson_sampling) {
    ASSIGN_OR_RETURN(privacy::SecureRng rng, privacy::SecureRng::Create());
    sampler.emplace(std::move(rng));
  }

  const auto start_time = std::chrono::steady_clock::now();
  std::vector<torch::Tensor> before;
  try {
    before = impl_->Snapshot();
  } catch (const std::exception& e) {
    return Internal(std::string("TrainDpSgd: LibTorch failed to snapshot parameters: ") + e.what());
  }
  auto fail = [&](Status status) {
    try {
      impl_->Restore(before);
    } catch (const std::exception&) {
      // Restoring copies same-shaped CPU tensors; nothing sensible is left to do if it fails.
    }
    return status;
  };

  TrainResult result;
  result.examples = n;
  try {
    torch::AutoGradMode grad_mode(true);
    impl_->SetTraining(true);
    const DataTensors all = WrapDataset(*data.base, impl_->loss);
    // Adam on the noised gradient is post-processing: the same guarantee.
    std::unique_ptr<torch::optim::Optimizer> optimizer = internal::MakeOptimizer(config, impl_->trainable);
    Rng shuffle_rng(config.seed);
    std::vector<int64_t> order = data.indices;
    size_t position = order.size();  // forces a shuffle before the first fixed batch
    std::vector<int64_t> batch;
    double window_loss = 0.0;
    int64_t window_examples = 0;

    for (int64_t step = 0; step < steps; ++step) {
      batch.clear();
      if (dp.poisson_sampling) {
        for (int64_t index : data.indices) {
          if (sampler->Bernoulli(q)) batch.push_back(index);
        }
      } else {
        if (position >= order.size()) {
          shuffle_rng.Shuffle(&order);
          position = 0;
        }
        const size_t end = std::min(order.size(), position + static_cast<size_t>(fixed_batch));
        batch.assign(order.begin() + static_cast<std::ptrdiff_t>(position),
                     order.begin() + static_cast<std::ptrdiff_t>(end));
        position = end;
      }

      std::vector<torch::Tensor> sums;
      if (!batch.empty() && script) {
        const auto [x, y] = SelectBatch(all, batch);
        const torch::Tensor t = all.Targets(IndexTensor(batch, 0, batch.size()));
        double loss_sum = 0.0;
        if (!ClippedSumOneByOne(*impl_, x, y, t, dp.l2_clip, &sums, &loss_sum)) {
          return fail(
              InvalidArgument("TrainDpSgd: the loss or a per-example gradient became non-finite at step " +
                              std::to_string(step + 1) + "; the model was left as before training"));
        }
        if (step >= steps - loss_window) {
          window_loss += loss_sum;
          window_examples += static_cast<int64_t>(batch.size());
        }
      } else if (!batch.empty()) {
        const auto [x, y] = SelectBatch(all, batch);
        const BatchPass pass = RunBatch(impl_->arch, impl_->params, x, y);
        const torch::Tensor squared_norms = SquaredNorms(pass);
        if (!std::isfinite(pass.loss_sum) || !torch::isfinite(squared_norms).all().item<bool>()) {
          return fail(
              InvalidArgument("TrainDpSgd: the loss or a per-example gradient became non-finite at step " +
                              std::to_string(step + 1) +
                              "; the model was left as before training. Lower the learning rate (was " +
                              std::to_string(config.learning_rate) + ") or check the data"));
        }
        sums = WeightedGradientSum(pass, ClipFactors(squared_norms, dp.l2_clip), impl_->params);
        if (step >= steps - loss_window) {
          window_loss += pass.loss_sum;
          window_examples += pass.size;
        }
      } else {
        for (const auto& p : impl_->trainable) sums.push_back(torch::zeros_like(p));
      }

      const double denominator =
          dp.poisson_sampling ? q * static_cast<double>(n) : static_cast<double>(batch.size());
      for (size_t i = 0; i < sums.size(); ++i) {
        noise.AddNoise(sums[i].data_ptr<float>(), static_cast<size_t>(sums[i].numel()), noise_stddev);
        impl_->trainable[i].mutable_grad() = sums[i].div_(denominator);
      }
      optimizer->step();
      ++result.steps;
      if (config.on_step && !config.on_step(result.steps, steps)) {
        for (auto& p : impl_->trainable) p.mutable_grad() = torch::Tensor();
        return fail(Aborted("TrainDpSgd: stopped after step " + std::to_string(result.steps) + " of " +
                            std::to_string(steps) + "; the model was left as before training"));
      }
    }
    result.mean_loss = window_examples > 0 ? window_loss / static_cast<double>(window_examples) : 0.0;
    for (auto& p : impl_->trainable) p.mutable_grad() = torch::Tensor();
  } catch (const std::exception& e) {
    return fail(Internal("TrainDpSgd: LibTorch failed while training '" + impl_->arch + "': " + e.what() +
                         "; the model was left as before training"));
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return result;
}

StatusOr<std::vector<Weights>> DpSgdTestPeer::PerExampleGradients(ModelRunner& runner,
                                                                  const DataView& batch) {
  RETURN_IF_ERROR(CheckData(batch, "PerExampleGradients"));
  ModelRunner::Impl& impl = *runner.impl_;
  RETURN_IF_ERROR(CheckDpArchitecture(impl.arch, impl.params));
  try {
    torch::AutoGradMode grad_mode(true);
    const auto [x, y] = SelectBatch(WrapDataset(*batch.base), batch.indices);
    const BatchPass pass = RunBatch(impl.arch, impl.params, x, y);
    const std::vector<torch::Tensor> per_example = MaterializePerExample(pass, impl.params);
    std::vector<Weights> out;
    for (int64_t i = 0; i < pass.size; ++i) out.push_back(ToWeights(impl.layout, per_example, i));
    return out;
  } catch (const std::exception& e) {
    return Internal(std::string("PerExampleGradients: ") + e.what());
  }
}

StatusOr<std::vector<Weights>> DpSgdTestPeer::PerExampleGradientsReference(ModelRunner& runner,
                                                                           const DataView& batch) {
  RETURN_IF_ERROR(CheckData(batch, "PerExampleGradientsReference"));
  ModelRunner::Impl& impl = *runner.impl_;
  RETURN_IF_ERROR(CheckDpArchitecture(impl.arch, impl.params));
  try {
    torch::AutoGradMode grad_mode(true);
    const DataTensors all = WrapDataset(*batch.base);
    std::vector<Weights> out;
    for (size_t i = 0; i < batch.indices.size(); ++i) {
      const torch::Tensor idx = IndexTensor(batch.indices, i, i + 1);
      const torch::Tensor x = all.features.index_select(0, idx);
      const torch::Tensor y = all.labels.index_select(0, idx);
      impl.net->zero_grad();
      F::cross_entropy(impl.net->Forward(x), y).backward();
      std::vector<torch::Tensor> grads;
      for (const auto& p : impl.params) grads.push_back(p.grad());
      out.push_back(ToWeights(impl.layout, grads, -1));
    }
    impl.net->zero_grad();
    return out;
  } catch (const std::exception& e) {
    return Internal(std::string("PerExampleGradientsReference: ") + e.what());
  }
}

StatusOr<std::vector<double>> DpSgdTestPeer::PerExampleNorms(ModelRunner& runner, const DataView& batch) {
  RETURN_IF_ERROR(CheckData(batch, "PerExampleNorms"));
  ModelRunner::Impl& impl = *runner.impl_;
  RETURN_IF_ERROR(CheckDpArchitecture(impl.arch, impl.params));
  try {
    torch::AutoGradMode grad_mode(true);
    const auto [x, y] = SelectBatch(WrapDataset(*batch.base), batch.indices);
    const torch::Tensor norms = SquaredNorms(RunBatch(impl.arch, impl.params, x, y)).sqrt().contiguous();
    return std::vector<double>(norms.data_ptr<double>(), norms.data_ptr<double>() + norms.numel());
  } catch (const std::exception& e) {
    return Internal(std::string("PerExampleNorms: ") + e.what());
  }
}

StatusOr<Weights> DpSgdTestPeer::ClippedGradientSum(ModelRunner& runner, const DataView& batch,
                                                    double l2_clip) {
  RETURN_IF_ERROR(CheckData(batch, "ClippedGradientSum"));
  ModelRunner::Impl& impl = *runner.impl_;
  RETURN_IF_ERROR(CheckDpArchitecture(impl.arch, impl.params));
  if (!(l2_clip > 0.0)) return InvalidArgument("ClippedGradientSum: l2_clip must be positive");
  try {
    torch::AutoGradMode grad_mode(true);
    const auto [x, y] = SelectBatch(WrapDataset(*batch.base), batch.indices);
    const BatchPass pass = RunBatch(impl.arch, impl.params, x, y);
    const torch::Tensor factors = ClipFactors(SquaredNorms(pass), l2_clip);
    return ToWeights(impl.layout, WeightedGradientSum(pass, factors, impl.params), -1);
  } catch (const std::exception& e) {
    return Internal(std::string("ClippedGradientSum: ") + e.what());
  }
}

}  // namespace flotilla::training
