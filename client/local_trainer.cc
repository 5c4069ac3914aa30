#include "client/local_trainer.h"

#include <algorithm>
#include <optional>

#include "core/rng.h"
#include "privacy/clipping.h"
#include "privacy/noise.h"
#include "privacy/signing.h"
#include "proto/codec.h"
#include "proto/compression.h"

namespace flotilla::client {

StatusOr<training::ModelSpec> ModelSpecFor(const wire::TrainTask& task, const std::string& model_path) {
  if (task.model_arch() != training::kTorchScript)
    return training::MakeModelSpec(task.model_arch(), "", "", {}, {});
  const wire::ModelOptions& o = task.model_options();
  return training::MakeModelSpec(task.model_arch(), model_path, o.buffers(),
                                 {o.freeze().begin(), o.freeze().end()},
                                 {o.personal().begin(), o.personal().end()}, o.loss());
}

StatusOr<training::ModelRunner*> RunnerCache::For(const wire::TrainTask& task) {
  const std::string key = task.model_arch() + '\0' + task.model_options().SerializeAsString();
  if (runner_ && key == built_for_) return runner_.get();
  ASSIGN_OR_RETURN(training::ModelSpec spec, ModelSpecFor(task, model_path_));
  ASSIGN_OR_RETURN(runner_, training::ModelRunner::Create(spec, 0));
  built_for_ = key;
  return runner_.get();
}

StatusOr<wire::Update> RunTrainTask(training::ModelRunner* runner, const training::DataView& data,
                                    const wire::TrainTask& task,
                                    const std::vector<unsigned char>& model_public_key,
                                    const std::string& federation, DeviceMemory* memory,
                                    const LocalTraining& device) {
  if (task.model_arch() != runner->arch()) {
    return FailedPrecondition("task is for a '" + task.model_arch() + "' model; this client runs '" +
                              runner->arch() + "'");
  }
  // A model file that is not the federation's: its first differing
  // parameter is named (the layouts are compared before any value is read).
  StatusOr<Weights> decoded = proto::WeightsFromProto(task.weights(), runner->layout());
  if (!decoded.ok()) {
    return FailedPrecondition(
        "the global model does not fit this device's " + runner->arch() +
        " model (the device's is 'expected'): " + std::string(decoded.status().message()));
  }
  Weights global = std::move(decoded).value();
  RETURN_IF_ERROR(privacy::VerifyModel(model_public_key, federation, task.model_version(), task.model_round(),
                                       privacy::ModelDigest(global), task.model_signature()));
  RETURN_IF_ERROR(runner->SetWeights(global));
  std::optional<training::EvalResult> evaluated;
  // Never beside DP or secure aggregation: the metrics carry no noise and
  // travel in the clear (the aggregator refuses the combination too).
  const bool private_round =
      task.config().clip_norm() > 0 || task.config().dpsgd_noise_multiplier() > 0 || task.has_secagg();
  if (task.config().evaluate() && !private_round && device.held_out != nullptr &&
      device.held_out->size() > 0) {
    ASSIGN_OR_RETURN(evaluated, runner->Evaluate(*device.held_out, 256));
  }
  training::TrainConfig config;
  config.epochs = static_cast<int>(task.config().epochs());
  config.batch_size = static_cast<int>(task.config().batch_size());
  config.learning_rate = task.config().learning_rate();
  config.momentum = task.config().momentum();
  config.weight_decay = task.config().weight_decay();
  config.seed = task.config().seed();
  config.max_pass_examples = device.max_pass_examples;
  config.proximal_mu = task.config().proximal_mu();
  ASSIGN_OR_RETURN(config.optimizer, training::ParseOptimizer(task.config().optimizer()));
  config.on_step = device.on_step;
  const wire::TrainConfig& tc = task.config();
  const bool dpsgd = tc.dpsgd_noise_multiplier() > 0;
  DeviceMemory scratch;  // when the caller keeps nothing
  DeviceMemory& kept = memory != nullptr ? *memory : scratch;
  // SCAFFOLD: steps are corrected by c - c_i (the server's control variate
  // from the task, this device's own).
  std::optional<Weights> server_control;
  Weights correction;
  if (tc.scaffold()) {
    if (dpsgd || tc.clip_norm() > 0 || task.has_secagg())
      return FailedPrecondition(
          "the task asks for SCAFFOLD together with DP or secure aggregation, which "
          "it does not support");
    if (config.optimizer != training::Optimizer::kSgd)
      return FailedPrecondition("the task asks for SCAFFOLD with a local optimizer other than SGD");
    StatusOr<Weights> c = proto::WeightsFromProto(task.control(), runner->layout());
    if (!c.ok()) {
      return InvalidArgument("the task's SCAFFOLD control variate does not fit the model: " +
                             std::string(c.status().message()));
    }
    server_control = std::move(c).value();
    if (kept.control.size() != server_control->data.size())
      kept.control.assign(server_control->data.size(), 0.f);
    correction = *server_control;
    for (size_t i = 0; i < correction.data.size(); ++i) correction.data[i] -= kept.control[i];
    config.control_correction = &correction;
  }
  training::TrainResult result;
  if (dpsgd) {
    training::DpSgdConfig dp;
    dp.noise_multiplier = tc.dpsgd_noise_multiplier();
    dp.l2_clip = tc.dpsgd_clip();
    dp.sampling_rate = tc.dpsgd_sampling_rate();
    ASSIGN_OR_RETURN(result, runner->TrainDpSgd(data, config, dp));
  } else {
    ASSIGN_OR_RETURN(result, runner->Train(data, config));
  }
  Weights local = runner->GetWeights();
  for (size_t i = 0; i < local.data.size(); ++i) local.data[i] -= global.data[i];

  std::optional<Weights> control_delta;
  if (server_control) {
    // Option II of Karimireddy et al.: c_i+ = c_i - c + (x - y) / (K lr),
    // so c_i's change is -c - delta / (K lr) on the trained entries. With
    // momentum beta, a step moves lr / (1 - beta) per unit of gradient.
    const double unit = static_cast<double>(std::max<int64_t>(1, result.steps)) * config.learning_rate /
                        (1.0 - config.momentum);
    control_delta = Weights::Zeros(runner->layout());
    const std::vector<bool> trained = runner->TrainedEntries();
    const auto& tensors = runner->layout()->tensors();
    for (size_t t = 0; t < tensors.size(); ++t) {
      if (!trained[t]) continue;
      for (int64_t j = tensors[t].offset; j < tensors[t].offset + tensors[t].numel; ++j) {
        const size_t i = static_cast<size_t>(j);
        const float dc = static_cast<float>(-double{server_control->data[i]} - double{local.data[i]} / unit);
        control_delta->data[i] = dc;
        kept.control[i] += dc;
      }
    }
  }

  double below_clip = -1;
  if (tc.clip_norm() > 0) {
    // Client-level DP: bound this device's influence, then (distributed
    // mode) add this device's share of the noise.
    const double norm = privacy::ClipL2(local.data.data(), local.data.size(), tc.clip_norm());
    below_clip = norm <= tc.clip_norm() ? 1 : 0;
    if (tc.noise_stddev() > 0) {
      ASSIGN_OR_RETURN(privacy::GaussianNoise noise, privacy::GaussianNoise::Create());
      noise.AddNoise(local.data.data(), local.data.size(), tc.noise_stddev());
    }
  }

  wire::Update update;
  update.set_round(task.round());
  update.set_model_version(task.model_version());
  update.set_num_examples(result.examples);
  // Compression comes last: it only re-encodes what DP already clipped and
  // noised (post-processing), and top-k's residual stays on the device.
  ASSIGN_OR_RETURN(proto::Compression compression, proto::ParseCompression(tc.compression()));
  Rng rounding(DeriveSeed(tc.seed(), "compression"));
  RETURN_IF_ERROR(proto::EncodeUpdate(local, compression, &rounding, &kept.residual, update.mutable_delta()));
  if (control_delta) proto::WeightsToProto(*control_delta, update.mutable_control_delta());
  // Under DP-SGD the training loss is computed on private records without
  // noise, so it stays on the device.
  if (!dpsgd) (*update.mutable_metrics())["train_loss"] = result.mean_loss;
  (*update.mutable_metrics())["train_seconds"] = result.seconds;
  if (evaluated) {
    (*update.mutable_metrics())["eval_loss"] = evaluated->loss;
    (*update.mutable_metrics())["eval_accuracy"] = evaluated->accuracy;
    (*update.mutable_metrics())["eval_examples"] = static_cast<double>(evaluated->examples);
  }
  if (dpsgd) (*update.mutable_metrics())["dpsgd_steps"] = static_cast<double>(result.steps);
  // The adaptive-clipping bit (Andrew et al. 2021); the aggregator only uses
  // the noised sum of these.
  if (below_clip >= 0) (*update.mutable_metrics())["below_clip"] = below_clip;
  return update;
}

}  // namespace flotilla::client
