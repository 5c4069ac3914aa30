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

// Partition "windows:N" (fleets larger than the data set): device i holds
// the N examples from position start_i of one seeded permutation of the
// training set, wrapping around, with start_i = i x N; a device is then two
// numbers until it trains, and devices share examples once i x N passes the
// set's size (100,000 devices of 60 examples read Fashion-MNIST's 60,000
// a hundred times over, each window different).
struct FleetData {
  std::shared_ptr<const training::Dataset> train;  // the union of the devices' data
  std::shared_ptr<const training::Dataset> test;
  std::vector<training::DataView> devices;   // one per simulated device: what it trains on
  std::vector<training::DataView> held_out;  // per device: held out for federated evaluation (may be empty)
  // Windows (devices and held_out are then empty).
  std::vector<int64_t> order;  // the permutation
  int64_t window = 0;          // examples per device
  size_t window_devices = 0;
  double window_held_out = 0.0;  // fraction of each window kept out of training
  // Heterogeneous windows: sizes drawn per device (0 = fixed), label skew
  // (0 = none) over the examples of each class (by_class, in permutation order).
  double size_alpha = 0.0, skew_alpha = 0.0;
  uint64_t seed = 0;
  std::vector<std::vector<int64_t>> by_class;

  size_t size() const { return window > 0 ? window_devices : devices.size(); }
  // What device i trains on, and what it holds out.
  training::DataView View(size_t i) const;
  training::DataView HeldOut(size_t i) const;
  int64_t Examples(size_t i) const;

 private:
  int64_t WindowSize(size_t i) const;
  std::vector<int64_t> WindowIndices(size_t i) const;  // training examples first, held-out last
  int64_t HeldOutCount(int64_t size) const;
};

// `device_data` false: what a server needs only (the test set; the devices'
// example counts where they are known without loading their data).
StatusOr<FleetData> LoadFleetData(const SimConfig& config, bool device_data = true);

}  // namespace flotilla::sim
