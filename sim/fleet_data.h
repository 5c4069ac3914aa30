// The simulated fleet's data: each virtual device's share, the union of
// the shares (for the central baseline) and the test set the aggregator
// evaluates on.
//
// Fashion-MNIST: the training split partitioned across devices (views onto
// one shared copy), the test split for evaluation. CSV (csv:PATH): the
// records shuffled with the run seed, test_fraction of them held out for
// evaluation, the rest partitioned; each device standardizes its features
// with statistics of its own records only, as a real device would, and the
// evaluation set and the central baseline use the statistics of the union.
#pragma once

#include <memory>
#include <vector>

#include "core/status.h"
#include "sim/simulation.h"
#include "training/dataset.h"

namespace flotilla::sim {

struct FleetData {
  std::shared_ptr<const training::Dataset> train;  // the union of the devices' data
  std::shared_ptr<const training::Dataset> test;
  std::vector<training::DataView> devices;   // one per simulated device: what it trains on
  std::vector<training::DataView> held_out;  // per device: held out for federated evaluation (may be empty)
};

StatusOr<FleetData> LoadFleetData(const SimConfig& config);

}  // namespace flotilla::sim
