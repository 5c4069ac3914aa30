// Runs one TrainTask on a device's local data and builds the Update:
// load the global weights, train, delta = local - global.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "proto/flotilla.pb.h"
#include "training/dataset.h"
#include "training/model.h"

namespace flotilla::client {

// Verifies the task's model signature with `model_public_key` (the
// aggregator's Ed25519 key) for `federation` before loading anything: a
// tampered or unsigned model, or one signed for another federation, gives
// PermissionDenied and leaves `runner` holding the model it had.
// Also fails when the task's architecture or weights do not fit `runner`,
// or training fails. The update is encoded as the task's compression says;
// `memory` is what this device keeps across its tasks (top-k's residual,
// SCAFFOLD's c_i; kept by the caller; nullptr: nothing is kept).
// The model a task needs on this device: a built-in architecture by name,
// or (model_arch "torchscript") the device's own TorchScript file
// `model_path`, split as the task's ModelOptions say. FailedPrecondition
// when the task needs a file and the device has none.
StatusOr<training::ModelSpec> ModelSpecFor(const wire::TrainTask& task, const std::string& model_path);

// Keeps a runner built for what the tasks ask: rebuilt when a task names
// another architecture or other options (a personal layer's training is
// kept while they stay the same).
class RunnerCache {
 public:
  explicit RunnerCache(std::string model_path) : model_path_(std::move(model_path)) {}
  StatusOr<training::ModelRunner*> For(const wire::TrainTask& task);
  // The runner last built (nullptr before the first task).
  training::ModelRunner* current() const { return runner_.get(); }

 private:
  std::string model_path_;
  std::string built_for_;
  std::unique_ptr<training::ModelRunner> runner_;
};

// What a device keeps from one task to the next (the caller holds it, and a
// daemon stores it with DeviceStore::LocalState): top-k's error-feedback
// residual and SCAFFOLD's control variate c_i (empty: zero; reset when the
// model's size changes).
struct DeviceMemory {
  std::vector<float> residual;
  std::vector<float> control;
};

// How this device trains, beyond what the task says: its memory limit per
// pass and a hook after every step (training::TrainConfig's fields).
struct LocalTraining {
  int max_pass_examples = 0;
  std::function<bool(int64_t, int64_t)> on_step;
  // Held-out examples: when the task asks for federated evaluation, the
  // model received is evaluated on them before training (nullptr or empty:
  // nothing is reported).
  const training::DataView* held_out = nullptr;
};

StatusOr<wire::Update> RunTrainTask(training::ModelRunner* runner, const training::DataView& data,
                                    const wire::TrainTask& task,
                                    const std::vector<unsigned char>& model_public_key,
                                    const std::string& federation, DeviceMemory* memory = nullptr,
                                    const LocalTraining& device = LocalTraining());

}  // namespace flotilla::client
