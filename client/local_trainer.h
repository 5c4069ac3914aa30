// Runs one TrainTask on a device's local data and builds the Update:
// load the global weights, train, delta = local - global.
#pragma once

#include "core/status.h"
#include "proto/flotilla.pb.h"
#include "training/dataset.h"
#include "training/model.h"

namespace flotilla::client {

// Fails (without touching the network) when the task's architecture or
// weights do not fit `runner`, or training fails.
StatusOr<wire::Update> RunTrainTask(training::ModelRunner* runner, const training::DataView& data,
                                    const wire::TrainTask& task);

}  // namespace flotilla::client
