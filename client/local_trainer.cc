#include "client/local_trainer.h"

#include "privacy/signing.h"
#include "proto/codec.h"

namespace flotilla::client {

StatusOr<wire::Update> RunTrainTask(training::ModelRunner* runner, const training::DataView& data,
                                    const wire::TrainTask& task,
                                    const std::vector<unsigned char>& model_public_key) {
  if (task.model_arch() != runner->arch()) {
    return FailedPrecondition("task is for a '" + task.model_arch() + "' model; this client runs '" +
                              runner->arch() + "'");
  }
  ASSIGN_OR_RETURN(Weights global, proto::WeightsFromProto(task.weights(), runner->layout()));
  RETURN_IF_ERROR(privacy::VerifyModel(model_public_key, task.model_version(), task.model_round(),
                                       privacy::ModelDigest(global), task.model_signature()));
  RETURN_IF_ERROR(runner->SetWeights(global));
  training::TrainConfig config;
  config.epochs = static_cast<int>(task.config().epochs());
  config.batch_size = static_cast<int>(task.config().batch_size());
  config.learning_rate = task.config().learning_rate();
  config.momentum = task.config().momentum();
  config.weight_decay = task.config().weight_decay();
  config.seed = task.config().seed();
  ASSIGN_OR_RETURN(training::TrainResult result, runner->Train(data, config));
  Weights local = runner->GetWeights();
  for (size_t i = 0; i < local.data.size(); ++i) local.data[i] -= global.data[i];

  wire::Update update;
  update.set_round(task.round());
  update.set_model_version(task.model_version());
  update.set_num_examples(result.examples);
  proto::WeightsToProto(local, update.mutable_delta());
  (*update.mutable_metrics())["train_loss"] = result.mean_loss;
  (*update.mutable_metrics())["train_seconds"] = result.seconds;
  return update;
}

}  // namespace flotilla::client
