// Runs one TrainTask on a device's local data and builds the Update:
// load the global weights, train, delta = local - global.
#pragma once

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
// or training fails.
StatusOr<wire::Update> RunTrainTask(training::ModelRunner* runner, const training::DataView& data,
                                    const wire::TrainTask& task,
                                    const std::vector<unsigned char>& model_public_key,
                                    const std::string& federation);

}  // namespace flotilla::client
