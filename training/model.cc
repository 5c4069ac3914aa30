#include "training/model.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>
#include <utility>

#include "core/rng.h"
#include "training/model_impl.h"

namespace flotilla::training {
namespace {

namespace F = torch::nn::functional;

using internal::CheckData;
using internal::CheckTrainConfig;
using internal::Cnn;
using internal::DataTensors;
using internal::IndexTensor;
using internal::kChannels;
using internal::kClasses;
using internal::kHeight;
using internal::kWidth;
using internal::LogReg;
using internal::Mlp2nn;
using internal::Net;
using internal::WrapDataset;

std::shared_ptr<Net> MakeNet(const std::string& arch) {
  if (arch == "2nn") return std::make_shared<Mlp2nn>();
  if (arch == "cnn") return std::make_shared<Cnn>();
  if (arch == "logreg") return std::make_shared<LogReg>();
  return nullptr;
}

// Overwrites every parameter like Torch's default Linear/Conv2d init
// (kaiming_uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))
// for weights and biases alike), but drawn from flotilla::Rng seeded per
// tensor, so the result depends on nothing but `seed` and the tensor names.
void InitParameters(Net& net, uint64_t seed) {
  torch::NoGradGuard no_grad;
  int64_t fan_in = 1;
  for (auto& item : net.named_parameters()) {
    torch::Tensor& p = item.value();
    if (p.dim() >= 2) fan_in = p.numel() / p.size(0);  // weights precede their bias
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    Rng rng(DeriveSeed(seed, "init:" + item.key()));
    std::vector<float> values(static_cast<size_t>(p.numel()));
    for (float& v : values) v = static_cast<float>((2.0 * rng.UniformDouble() - 1.0) * bound);
    p.copy_(torch::from_blob(values.data(), p.sizes(), torch::kFloat));
  }
}

std::string ShapeText(const Dataset& d) {
  std::ostringstream out;
  out << "[" << d.channels << "," << d.height << "," << d.width << "]";
  return out.str();
}

}  // namespace

namespace internal {

Status CheckData(const DataView& data, const char* what, bool builtin) {
  if (!data.base) return InvalidArgument(std::string(what) + ": the data view has no dataset");
  if (data.indices.empty()) return InvalidArgument(std::string(what) + ": the data view is empty");
  const Dataset& d = *data.base;
  const int64_t classes = builtin ? kClasses : d.num_classes;
  if (builtin && (d.channels != kChannels || d.height != kHeight || d.width != kWidth)) {
    return InvalidArgument(std::string(what) + ": examples have shape " + ShapeText(d) +
                           ", the model needs [1,28,28]");
  }
  if (static_cast<int64_t>(d.features.size()) != d.size() * d.example_numel()) {
    return InvalidArgument(std::string(what) + ": dataset has " + std::to_string(d.features.size()) +
                           " feature values for " + std::to_string(d.size()) + " examples of " +
                           std::to_string(d.example_numel()));
  }
  for (int64_t i : data.indices) {
    if (i < 0 || i >= d.size()) {
      return InvalidArgument(std::string(what) + ": index " + std::to_string(i) +
                             " is outside the dataset of " + std::to_string(d.size()) + " examples");
    }
    const int64_t y = d.labels[static_cast<size_t>(i)];
    if (y < 0 || y >= classes) {
      return InvalidArgument(std::string(what) + ": example " + std::to_string(i) + " has label " +
                             std::to_string(y) + ", the model has " + std::to_string(classes) + " classes");
    }
  }
  return Status::Ok();
}

Status CheckTrainConfig(const TrainConfig& config, const char* what) {
  const std::string prefix = std::string(what) + ": ";
  if (config.epochs < 1)
    return InvalidArgument(prefix + "epochs must be >= 1, got " + std::to_string(config.epochs));
  if (config.batch_size < 1) {
    return InvalidArgument(prefix + "batch_size must be >= 1, got " + std::to_string(config.batch_size));
  }
  if (!(config.learning_rate > 0.0) || !std::isfinite(config.learning_rate)) {
    return InvalidArgument(prefix + "learning_rate must be a positive number, got " +
                           std::to_string(config.learning_rate));
  }
  if (!(config.momentum >= 0.0 && config.momentum < 1.0)) {
    return InvalidArgument(prefix + "momentum must be in [0, 1), got " + std::to_string(config.momentum));
  }
  if (!(config.weight_decay >= 0.0) || !std::isfinite(config.weight_decay)) {
    return InvalidArgument(prefix + "weight_decay must be >= 0, got " + std::to_string(config.weight_decay));
  }
  if (!(config.proximal_mu >= 0.0) || !std::isfinite(config.proximal_mu)) {
    return InvalidArgument(prefix + "proximal_mu must be >= 0, got " + std::to_string(config.proximal_mu));
  }
  return Status::Ok();
}

DataTensors WrapDataset(const Dataset& d, Loss loss) {
  DataTensors t;
  t.features = torch::from_blob(const_cast<float*>(d.features.data()),
                                {d.size(), d.channels, d.height, d.width}, torch::kFloat);
  t.labels = torch::from_blob(const_cast<int64_t*>(d.labels.data()), {d.size()}, torch::kLong);
  if (loss != Loss::kCrossEntropy) {
    t.targets = d.targets.empty()
                    ? t.labels.to(torch::kFloat)
                    : torch::from_blob(const_cast<float*>(d.targets.data()), {d.size()}, torch::kFloat);
  }
  return t;
}

torch::Tensor BatchLoss(Loss loss, const torch::Tensor& output, const torch::Tensor& labels,
                        const torch::Tensor& targets, bool sum) {
  const auto reduction = sum ? torch::Reduction::Sum : torch::Reduction::Mean;
  if (loss == Loss::kCrossEntropy) {
    if (sum) return F::cross_entropy(output, labels, F::CrossEntropyFuncOptions().reduction(torch::kSum));
    return F::cross_entropy(output, labels);
  }
  torch::Tensor out = output;
  if (out.dim() == 2 && out.size(1) == 1) out = out.squeeze(1);
  if (out.dim() != 1 || out.size(0) != targets.size(0)) {
    std::ostringstream shape;
    shape << output.sizes();
    throw std::invalid_argument(std::string("the loss ") + LossName(loss) +
                                " needs one output per example ([N] or [N, 1]); the model gives " +
                                shape.str());
  }
  if (loss == Loss::kBinaryCrossEntropy) {
    return torch::binary_cross_entropy_with_logits(out, targets, {}, {}, reduction);
  }
  return torch::mse_loss(out, targets, reduction);
}

std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const TrainConfig& config,
                                                       const std::vector<torch::Tensor>& params) {
  if (config.optimizer == Optimizer::kAdam) {
    return std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(config.learning_rate).weight_decay(config.weight_decay));
  }
  return std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(config.learning_rate)
                                                         .momentum(config.momentum)
                                                         .weight_decay(config.weight_decay));
}

Status CheckTargets(Loss loss, const DataView& data, const char* what) {
  const Dataset& d = *data.base;
  if (loss == Loss::kMse && d.targets.size() != d.labels.size()) {
    return InvalidArgument(std::string(what) +
                           ": the loss mse needs a real-valued target per example (a CSV read with "
                           "--csv-target real); these examples have class labels");
  }
  if (loss != Loss::kMse && !d.targets.empty()) {
    return InvalidArgument(std::string(what) + ": these examples have real-valued targets; the loss " +
                           LossName(loss) + " needs class labels (use the loss mse)");
  }
  if (loss == Loss::kBinaryCrossEntropy) {
    for (int64_t i : data.indices) {
      if (d.labels[static_cast<size_t>(i)] > 1) {
        return InvalidArgument(std::string(what) + ": example " + std::to_string(i) + " has label " +
                               std::to_string(d.labels[static_cast<size_t>(i)]) +
                               "; the loss bce needs labels 0 and 1");
      }
    }
  }
  return Status::Ok();
}

torch::Tensor IndexTensor(const std::vector<int64_t>& indices, size_t begin, size_t end) {
  return torch::from_blob(const_cast<int64_t*>(indices.data() + begin), {static_cast<int64_t>(end - begin)},
                          torch::kLong);
}

}  // namespace internal

std::vector<std::string> KnownArchitectures() { return {"2nn", "cnn", "logreg"}; }

StatusOr<Loss> ParseLoss(const std::string& name) {
  if (name == "cross_entropy" || name.empty()) return Loss::kCrossEntropy;
  if (name == "bce") return Loss::kBinaryCrossEntropy;
  if (name == "mse") return Loss::kMse;
  return InvalidArgument(
      "loss must be cross_entropy (K classes), bce (binary: one logit) or mse (regression: "
      "one output), got '" +
      name + "'");
}

const char* LossName(Loss loss) {
  switch (loss) {
    case Loss::kBinaryCrossEntropy:
      return "bce";
    case Loss::kMse:
      return "mse";
    default:
      return "cross_entropy";
  }
}

StatusOr<Optimizer> ParseOptimizer(const std::string& name) {
  if (name == "sgd" || name.empty()) return Optimizer::kSgd;
  if (name == "adam") return Optimizer::kAdam;
  return InvalidArgument("optimizer must be sgd or adam, got '" + name + "'");
}

double RocAuc(const std::vector<float>& scores, const std::vector<int64_t>& labels) {
  std::vector<size_t> order(scores.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  // Mann-Whitney U from average ranks (ties share their mean rank).
  double positive_rank_sum = 0;
  int64_t positives = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && scores[order[j]] == scores[order[i]]) ++j;
    const double mean_rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2.0;
    for (size_t k = i; k < j; ++k) {
      if (labels[order[k]] == 1) {
        positive_rank_sum += mean_rank;
        ++positives;
      }
    }
    i = j;
  }
  const int64_t negatives = static_cast<int64_t>(scores.size()) - positives;
  if (positives == 0 || negatives == 0) return NAN;
  const double p = static_cast<double>(positives);
  return (positive_rank_sum - p * (p + 1) / 2.0) / (p * static_cast<double>(negatives));
}

StatusOr<ModelSpec::Buffers> ParseBufferPolicy(const std::string& name) {
  if (name == "federated") return ModelSpec::Buffers::kFederated;
  if (name == "local") return ModelSpec::Buffers::kLocal;
  return InvalidArgument(
      "buffers must be 'federated' (averaged with the weights) or 'local' (kept on each "
      "device, as in FedBN), got '" +
      name + "'");
}

namespace {

// The built-in architectures are 10-class classifiers: cross-entropy only.
Status CheckLossFits(const std::string& arch, Loss loss) {
  if (arch == kTorchScript || loss == Loss::kCrossEntropy) return Status::Ok();
  return InvalidArgument("the built-in '" + arch +
                         "' is a 10-class classifier: its loss is cross_entropy, not " + LossName(loss) +
                         " (bring a TorchScript model: [model] path)");
}

}  // namespace

StatusOr<ModelSpec> MakeModelSpec(const std::string& arch, const std::string& path,
                                  const std::string& buffers, std::vector<std::string> freeze,
                                  std::vector<std::string> personal, const std::string& loss) {
  ModelSpec spec;
  spec.arch = arch;
  spec.path = path;
  ASSIGN_OR_RETURN(spec.loss, ParseLoss(loss));
  RETURN_IF_ERROR(CheckLossFits(arch, spec.loss));
  if (!buffers.empty()) {
    ASSIGN_OR_RETURN(spec.buffers, ParseBufferPolicy(buffers));
  }
  spec.freeze = std::move(freeze);
  spec.personal = std::move(personal);
  if (arch == kTorchScript && path.empty()) {
    return FailedPrecondition(
        "the model is a TorchScript module: give its file ([model] path or --model-path)");
  }
  return spec;
}

StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(const std::string& arch, uint64_t init_seed) {
  ModelSpec spec;
  spec.arch = arch;
  return Create(spec, init_seed);
}

StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(const ModelSpec& spec, uint64_t init_seed) {
  if (spec.arch == kTorchScript) {
    ASSIGN_OR_RETURN(std::unique_ptr<Impl> impl, LoadScript(spec));
    impl->loss = spec.loss;
    return std::unique_ptr<ModelRunner>(new ModelRunner(std::move(impl)));
  }
  const std::string& arch = spec.arch;
  RETURN_IF_ERROR(CheckLossFits(arch, spec.loss));
  if (!spec.freeze.empty() || !spec.personal.empty()) {
    return InvalidArgument(
        "freeze and personal apply to TorchScript models ([model] path), not to the built-in '" + arch + "'");
  }
  try {
    std::shared_ptr<Net> net = MakeNet(arch);
    if (!net) {
      std::string known;
      for (const auto& name : KnownArchitectures()) known += (known.empty() ? "" : ", ") + name;
      return InvalidArgument("unknown model architecture '" + arch + "'; known: " + known +
                             " (or a TorchScript " + "file: [model] path)");
    }
    InitParameters(*net, init_seed);
    auto impl = std::make_unique<Impl>();
    std::vector<std::pair<std::string, std::vector<int64_t>>> specs;
    for (auto& item : net->named_parameters()) {
      specs.emplace_back(item.key(), item.value().sizes().vec());
      impl->params.push_back(item.value());
    }
    impl->trainable = impl->state = impl->params;
    ASSIGN_OR_RETURN(Layout layout, Layout::Create(specs));
    impl->arch = arch;
    impl->net = std::move(net);
    impl->layout = std::make_shared<const Layout>(std::move(layout));
    return std::unique_ptr<ModelRunner>(new ModelRunner(std::move(impl)));
  } catch (const std::exception& e) {  // c10::Error derives from std::exception
    return Internal("building model '" + arch + "' failed in LibTorch: " + e.what());
  }
}

ModelRunner::ModelRunner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelRunner::~ModelRunner() = default;

const std::string& ModelRunner::arch() const { return impl_->arch; }

std::shared_ptr<const Layout> ModelRunner::layout() const { return impl_->layout; }

namespace {

// For each tensor of what travels, the index of the trainable parameter it
// is (the same storage), or -1.
std::vector<int> TrainableIndex(const ModelRunner::Impl& impl) {
  std::vector<int> index(impl.params.size(), -1);
  for (size_t i = 0; i < impl.params.size(); ++i) {
    for (size_t j = 0; j < impl.trainable.size(); ++j) {
      if (impl.trainable[j].data_ptr() == impl.params[i].data_ptr() &&
          impl.trainable[j].numel() == impl.params[i].numel()) {
        index[i] = static_cast<int>(j);
      }
    }
  }
  return index;
}

}  // namespace

std::vector<bool> ModelRunner::TrainedEntries() const {
  std::vector<bool> trained;
  for (int j : TrainableIndex(*impl_)) trained.push_back(j >= 0);
  return trained;
}

Weights internal::CopyOut(const std::shared_ptr<const Layout>& layout,
                          const std::vector<torch::Tensor>& tensors) {
  Weights w = Weights::Zeros(layout);
  const auto& specs = layout->tensors();
  for (size_t i = 0; i < specs.size(); ++i) {
    const torch::Tensor t = tensors[i].detach().contiguous();
    std::memcpy(w.data.data() + specs[i].offset, t.data_ptr<float>(),
                static_cast<size_t>(specs[i].numel) * sizeof(float));
  }
  return w;
}

Status internal::CopyIn(const Layout& layout, const Weights& w, std::vector<torch::Tensor>* tensors,
                        const std::string& what) {
  RETURN_IF_ERROR(w.Validate().WithContext(what));
  RETURN_IF_ERROR(layout.CheckSame(*w.layout).WithContext(what));
  try {
    torch::NoGradGuard no_grad;
    const auto& specs = layout.tensors();
    for (size_t i = 0; i < specs.size(); ++i) {
      (*tensors)[i].copy_(torch::from_blob(const_cast<float*>(w.data.data() + specs[i].offset),
                                           specs[i].shape, torch::kFloat));
    }
  } catch (const std::exception& e) {
    return Internal(what + ": LibTorch failed to copy: " + e.what());
  }
  return Status::Ok();
}

Weights ModelRunner::GetWeights() const { return internal::CopyOut(impl_->layout, impl_->params); }

Status ModelRunner::SetWeights(const Weights& w) {
  return internal::CopyIn(*impl_->layout, w, &impl_->params, "SetWeights for '" + impl_->arch + "'");
}

StatusOr<TrainResult> ModelRunner::Train(const DataView& data, const TrainConfig& config) {
  RETURN_IF_ERROR(CheckTrainConfig(config, "Train"));
  RETURN_IF_ERROR(CheckData(data, "Train", impl_->net != nullptr));
  RETURN_IF_ERROR(internal::CheckTargets(impl_->loss, data, "Train"));

  const auto start_time = std::chrono::steady_clock::now();
  std::vector<torch::Tensor> before;
  try {
    before = impl_->Snapshot();
  } catch (const std::exception& e) {
    return Internal(std::string("Train: LibTorch failed to snapshot parameters: ") + e.what());
  }

  TrainResult result;
  result.examples = data.size();
  try {
    const DataTensors all = WrapDataset(*data.base, impl_->loss);
    std::unique_ptr<torch::optim::Optimizer> optimizer = internal::MakeOptimizer(config, impl_->trainable);
    // FedProx: where training started, for the proximal term's gradient.
    std::vector<torch::Tensor> anchor;
    if (config.proximal_mu > 0) {
      for (const auto& p : impl_->trainable) anchor.push_back(p.detach().clone());
    }
    // SCAFFOLD: each trained tensor's gradient correction c - c_i.
    std::vector<std::pair<torch::Tensor, torch::Tensor>> corrections;  // (parameter, correction)
    if (config.control_correction != nullptr) {
      const Weights& c = *config.control_correction;
      if (!c.layout) return InvalidArgument("Train: the SCAFFOLD correction has no layout");
      RETURN_IF_ERROR(impl_->layout->CheckSame(*c.layout));
      RETURN_IF_ERROR(c.Validate());
      const std::vector<int> index = TrainableIndex(*impl_);
      for (size_t i = 0; i < index.size(); ++i) {
        if (index[i] < 0) continue;
        const TensorSpec& spec = impl_->layout->tensors()[i];
        torch::Tensor corr =
            torch::from_blob(const_cast<float*>(c.data.data() + spec.offset), spec.shape, torch::kFloat)
                .clone();
        corrections.emplace_back(impl_->trainable[static_cast<size_t>(index[i])], corr);
      }
    }
    Rng rng(config.seed);
    std::vector<int64_t> order = data.indices;
    const size_t n = order.size();
    const size_t batch = static_cast<size_t>(config.batch_size);
    const size_t pass =
        config.max_pass_examples > 0 ? std::min(batch, static_cast<size_t>(config.max_pass_examples)) : batch;
    const int64_t total_steps = static_cast<int64_t>((n + batch - 1) / batch) * config.epochs;
    for (int epoch = 0; epoch < config.epochs; ++epoch) {
      impl_->SetTraining(true);
      rng.Shuffle(&order);
      double loss_sum = 0.0;
      int64_t epoch_steps = 0;
      for (size_t begin = 0; begin < n; begin += batch) {
        const size_t end = std::min(n, begin + batch);
        optimizer->zero_grad();
        // One step, over passes of at most `pass` examples whose gradients
        // add up to the batch mean's.
        double loss_value = 0.0;
        for (size_t from = begin; from < end; from += pass) {
          const size_t to = std::min(end, from + pass);
          const torch::Tensor idx = IndexTensor(order, from, to);
          const torch::Tensor x = all.features.index_select(0, idx);
          const torch::Tensor y = all.labels.index_select(0, idx);
          const torch::Tensor t = all.Targets(idx);
          const torch::Tensor output = impl_->Forward(x);
          torch::Tensor loss = internal::BatchLoss(impl_->loss, output, y, t);
          if (to - from != end - begin) {
            loss = loss * (static_cast<double>(to - from) / static_cast<double>(end - begin));
          }
          loss_value += loss.item<double>();
          loss.backward();
        }
        if (!std::isfinite(loss_value)) {
          impl_->Restore(before);
          return InvalidArgument("Train: the loss became " + std::to_string(loss_value) + " at epoch " +
                                 std::to_string(epoch + 1) + ", step " + std::to_string(epoch_steps + 1) +
                                 "; the model was left as before training. Lower the learning rate (was " +
                                 std::to_string(config.learning_rate) + ") or check the data");
        }
        if (!anchor.empty()) {
          torch::NoGradGuard no_grad;
          for (size_t i = 0; i < anchor.size(); ++i) {
            torch::Tensor& p = impl_->trainable[i];
            if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
            p.mutable_grad().add_(p.detach() - anchor[i], config.proximal_mu);
          }
        }
        if (!corrections.empty()) {
          torch::NoGradGuard no_grad;
          for (auto& [p, corr] : corrections) {
            if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
            p.mutable_grad().add_(corr);
          }
        }
        optimizer->step();
        loss_sum += loss_value;
        ++epoch_steps;
        ++result.steps;
        if (config.on_step && !config.on_step(result.steps, total_steps)) {
          impl_->Restore(before);
          return Aborted("Train: stopped after step " + std::to_string(result.steps) + " of " +
                         std::to_string(total_steps) + "; the model was left as before training");
        }
      }
      result.mean_loss = loss_sum / static_cast<double>(epoch_steps);
    }
  } catch (const std::exception& e) {
    try {
      impl_->Restore(before);
    } catch (const std::exception&) {
      // Restoring copies same-shaped CPU tensors; nothing sensible is left to do if it fails.
    }
    return Internal("Train: LibTorch failed while training '" + impl_->arch + "': " + e.what() +
                    "; the model was left as before training");
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return result;
}

StatusOr<EvalResult> ModelRunner::Evaluate(const DataView& data, int batch_size) {
  if (batch_size < 1)
    return InvalidArgument("Evaluate: batch_size must be >= 1, got " + std::to_string(batch_size));
  RETURN_IF_ERROR(CheckData(data, "Evaluate", impl_->net != nullptr));
  RETURN_IF_ERROR(internal::CheckTargets(impl_->loss, data, "Evaluate"));
  EvalResult result;
  result.examples = data.size();
  try {
    torch::NoGradGuard no_grad;
    impl_->SetTraining(false);
    const DataTensors all = WrapDataset(*data.base, impl_->loss);
    double loss_sum = 0.0, abs_sum = 0.0;
    int64_t correct = 0;
    std::vector<float> scores;
    std::vector<int64_t> labels;
    const size_t n = data.indices.size();
    const size_t batch = static_cast<size_t>(batch_size);
    const Loss kind = impl_->loss;
    for (size_t begin = 0; begin < n; begin += batch) {
      const size_t end = std::min(n, begin + batch);
      const torch::Tensor idx = IndexTensor(data.indices, begin, end);
      const torch::Tensor x = all.features.index_select(0, idx);
      const torch::Tensor y = all.labels.index_select(0, idx);
      const torch::Tensor t = all.Targets(idx);
      const torch::Tensor output = impl_->Forward(x);
      loss_sum += internal::BatchLoss(kind, output, y, t, /*sum=*/true).item<double>();
      if (kind == Loss::kCrossEntropy) {
        correct += output.argmax(1).eq(y).sum().item<int64_t>();
        continue;
      }
      const torch::Tensor out = output.reshape({-1}).contiguous();
      if (kind == Loss::kBinaryCrossEntropy) {
        correct += out.gt(0).to(torch::kLong).eq(y).sum().item<int64_t>();
        scores.insert(scores.end(), out.data_ptr<float>(), out.data_ptr<float>() + out.numel());
        labels.insert(labels.end(), y.data_ptr<int64_t>(), y.data_ptr<int64_t>() + y.numel());
      } else {
        abs_sum += (out - t).abs().sum().item<double>();
      }
    }
    result.loss = loss_sum / static_cast<double>(n);
    result.accuracy = kind == Loss::kMse ? 0.0 : static_cast<double>(correct) / static_cast<double>(n);
    if (kind == Loss::kBinaryCrossEntropy) result.auc = RocAuc(scores, labels);
    if (kind == Loss::kMse) result.mae = abs_sum / static_cast<double>(n);
  } catch (const std::exception& e) {
    return Internal("Evaluate: LibTorch failed while evaluating '" + impl_->arch + "': " + e.what());
  }
  return result;
}

void SetTorchThreads(int n) {
  n = std::max(n, 1);
  try {
    at::set_num_threads(n);
  } catch (const std::exception&) {
    // Torch rejects only n <= 0, which cannot happen here.
  }
  try {
    at::set_num_interop_threads(n);
  } catch (const std::exception&) {
    // The inter-op pool can be sized once per process, before first use;
    // later calls throw and the existing pool stays.
  }
}

}  // namespace flotilla::training
