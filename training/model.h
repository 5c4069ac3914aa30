// ModelRunner: a Torch model behind a Torch-free interface. It converts
// between the module's parameters and flat Weights, trains locally and
// evaluates. Every file outside training/ uses this header, never Torch.
//
// Thread-safety: not thread-safe. Give each trainer thread its own runner.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
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

// What a federation trains: a built-in architecture, or a TorchScript module
// (torch.jit.script or trace, saved with torch.jit.save) from a file.
// What training minimizes and evaluation reports:
//   kCrossEntropy        K logits per example, integer labels (accuracy)
//   kBinaryCrossEntropy  one logit per example, labels 0/1 (accuracy at 0.5, ROC AUC)
//   kMse                 one output per example, real targets (Dataset::targets; MSE, MAE)
enum class Loss { kCrossEntropy, kBinaryCrossEntropy, kMse };
// "cross_entropy" | "bce" | "mse"; InvalidArgument naming the allowed values.
StatusOr<Loss> ParseLoss(const std::string& name);
const char* LossName(Loss loss);

enum class Optimizer { kSgd, kAdam };
// "sgd" | "adam".
StatusOr<Optimizer> ParseOptimizer(const std::string& name);

struct ModelSpec {
  std::string arch = "2nn";  // a known architecture, or kTorchScript with `path`
  // The built-in architectures are 10-class classifiers: cross-entropy only.
  Loss loss = Loss::kCrossEntropy;
  std::string path;  // the TorchScript file
  // BatchNorm running statistics and other float buffers: averaged with the
  // weights (kFederated), or kept on each device (kLocal, as in FedBN).
  // Integer buffers (num_batches_tracked) always stay on the device.
  enum class Buffers { kFederated, kLocal } buffers = Buffers::kFederated;
  // Globs over parameter names (fnmatch: "backbone.*"). Frozen parameters
  // travel with the model but are never trained; personal ones are trained
  // but never leave the device (they are not in the layout on the wire).
  std::vector<std::string> freeze;
  std::vector<std::string> personal;
};
inline constexpr const char* kTorchScript = "torchscript";
// "federated" | "local"; InvalidArgument naming the allowed values.
StatusOr<ModelSpec::Buffers> ParseBufferPolicy(const std::string& name);
// A spec from settings as configs and tasks carry them (an empty `buffers`
// is "federated"). A TorchScript arch without a path is an error that
// says how to give one.
// An empty `loss` is cross_entropy.
StatusOr<ModelSpec> MakeModelSpec(const std::string& arch, const std::string& path,
                                  const std::string& buffers, std::vector<std::string> freeze,
                                  std::vector<std::string> personal, const std::string& loss = "");

struct TrainConfig {
  int epochs = 1;
  int batch_size = 32;
  double learning_rate = 0.01;
  double momentum = 0.0;
  double weight_decay = 0.0;
  // SGD (with `momentum`) or Adam (betas 0.9, 0.999; `momentum` unused).
  Optimizer optimizer = Optimizer::kSgd;
  uint64_t seed = 0;  // batch order
  // Examples per forward/backward pass (0 = the whole batch). A larger batch
  // is accumulated over several passes: the same step with less peak memory
  // (BatchNorm, which normalizes per pass, then sees the smaller passes).
  // Ordinary training only; DP-SGD ignores it.
  int max_pass_examples = 0;
  // FedProx's proximal term: (mu / 2) ||w - w_start||^2 is added to the
  // objective, so every step's gradient gains mu (w - w_start) for the
  // trainable parameters (0 = off). Ordinary training only.
  double proximal_mu = 0.0;
  // SCAFFOLD's correction c - c_i, in the layout of what travels
  // (ModelRunner::layout()): every step's gradient gains it for the trained
  // entries (ModelRunner::TrainedEntries). nullptr = off. Ordinary training only.
  const Weights* control_correction = nullptr;
  // Called after every optimizer step with (steps done, steps in the run).
  // Returning false stops training: Train and TrainDpSgd then fail with
  // Aborted and leave the module as it was before.
  std::function<bool(int64_t, int64_t)> on_step;
};

struct TrainResult {
  double mean_loss = 0.0;  // mean training loss over all steps of the last epoch
  int64_t examples = 0;    // size of the local dataset
  int64_t steps = 0;
  double seconds = 0.0;
};

// DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy"):
// each step samples a batch, clips every example's gradient (over all
// parameters together) to L2 norm `l2_clip`, sums, adds N(0, (sigma C)^2)
// to each coordinate and divides by the expected batch size. The (q, sigma,
// steps) of a run are what privacy::RdpAccountant::Compose takes.
struct DpSgdConfig {
  double noise_multiplier = 1.0;  // sigma: noise stddev / l2_clip; >= 0 (0 is not private)
  double l2_clip = 1.0;           // C: per-example gradient norm bound; > 0
  // true: each step includes every example independently with probability
  // q, from a CSPRNG (the sampling the RDP accountant analyses). false:
  // shuffle with TrainConfig.seed and take consecutive batches of
  // round(q * N) examples, dividing by the actual batch size; this mode is
  // deterministic given the seed (with zero noise) but the Poisson
  // accountant does NOT cover it; for experiments and tests only.
  bool poisson_sampling = true;
  // q in (0, 1]; 0 means TrainConfig.batch_size / N (capped at 1).
  double sampling_rate = 0.0;
  // Number of steps; 0 means ceil(TrainConfig.epochs / q).
  int64_t steps = 0;
};

struct EvalResult {
  double loss = 0.0;      // the mean of the model's loss (ModelSpec::loss)
  double accuracy = 0.0;  // in [0, 1]; classification losses (0 for mse)
  double auc = NAN;       // bce: ROC AUC of the logits
  double mae = NAN;       // mse: mean absolute error
  int64_t examples = 0;
};

// ROC AUC of `scores` for binary `labels` (0/1): the probability that a
// random positive scores above a random negative, ties counting half. NaN
// when only one class is present.
double RocAuc(const std::vector<float>& scores, const std::vector<int64_t>& labels);

class ModelRunner {
 public:
  // Builds `arch` with parameters initialized deterministically from
  // `init_seed`. Unknown arch: InvalidArgument listing the known ones.
  static StatusOr<std::unique_ptr<ModelRunner>> Create(const std::string& arch, uint64_t init_seed);
  // A built-in architecture (as above) or a TorchScript module, whose
  // parameters come from the file (`init_seed` is not used). Errors name
  // the file and what is wrong with it (not TorchScript, no float
  // parameters, a freeze or personal pattern that matches nothing).
  static StatusOr<std::unique_ptr<ModelRunner>> Create(const ModelSpec& spec, uint64_t init_seed);
  ~ModelRunner();
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  const std::string& arch() const;
  // What travels: parameter names and shapes in named_parameters() order
  // (less personal ones), then the federated buffers.
  std::shared_ptr<const Layout> layout() const;
  Weights GetWeights() const;
  // For each tensor of layout(): true when Train changes it through its
  // gradient (a parameter neither frozen nor a buffer).
  std::vector<bool> TrainedEntries() const;
  // Copies `w` into the module. Fails without changing the module when the
  // layout's names or shapes differ or a value is not finite.
  Status SetWeights(const Weights& w);

  // Local SGD (with momentum) over `data` for config.epochs. Fails on an
  // empty view, bad config, data whose example shape does not fit the model,
  // or a non-finite loss (the module is then left as it was before Train).
  StatusOr<TrainResult> Train(const DataView& data, const TrainConfig& config);
  StatusOr<EvalResult> Evaluate(const DataView& data, int batch_size = 1000);

  // DP-SGD over `data` (see DpSgdConfig) with config's learning rate,
  // momentum and weight decay (applied to the noised gradient, like SGD).
  // Each entry of data.indices is one example for privacy purposes: a
  // record listed k times has sensitivity k * l2_clip, which the
  // accountant does not know about.
  // Per-example gradients are computed in one batched pass (no loop of
  // single-example backward passes); noise and Poisson sampling come from
  // libsodium's CSPRNG, so runs are not bit-reproducible.
  // The result's steps is the number of noised steps taken (an empty
  // Poisson batch still takes a pure-noise step, as the accountant assumes).
  // Its mean_loss (mean over the last ceil(1/q) steps) is computed from the
  // private data WITHOUT noise: it is not covered by the DP guarantee and
  // must not leave the device in a DP deployment.
  // Fails like Train (the module is then left as before), and with
  // InvalidArgument on a bad DpSgdConfig.
  StatusOr<TrainResult> TrainDpSgd(const DataView& data, const TrainConfig& config, const DpSgdConfig& dp);

  // A TorchScript model as a file the device's own code loads with
  // torch::jit::load, in eval() mode: `global` (what travels) set into this
  // runner's module, whose personal parameters and local buffers are this
  // device's trained ones. FailedPrecondition for a built-in architecture.
  Status SaveScript(const Weights& global, const std::string& path);

  // This device's own part of a TorchScript model: its personal parameters
  // and local float buffers (nullopt when the model has none), to keep
  // across restarts. SetLocalState puts it back; a layout that differs (the
  // model file or its options changed) fails naming the difference and
  // changes nothing.
  std::optional<Weights> GetLocalState() const;
  Status SetLocalState(const Weights& state);

  // The Torch state (training/model_impl.h): opaque outside training/.
  struct Impl;

 private:
  friend class DpSgdTestPeer;  // training/dp_sgd_testing.h
  explicit ModelRunner(std::unique_ptr<Impl> impl);
  // A TorchScript module from spec.path, its parameters and buffers sorted
  // into what travels, what trains and what stays (script_model.cc).
  static StatusOr<std::unique_ptr<Impl>> LoadScript(const ModelSpec& spec);
  std::unique_ptr<Impl> impl_;
};

// Sets Torch's intra-op thread count for the calling thread (OpenMP) and
// the inter-op pool. Trainer pools call SetTorchThreads(1) in each worker.
void SetTorchThreads(int n);

}  // namespace flotilla::training
