// A small simulation config for integration tests: 2NN on the first
// train_limit Fashion-MNIST examples, IID, quiet, loopback.
#pragma once

#include <string>

#include "sim/simulation.h"

namespace flotilla::testing {

inline sim::SimConfig SmallSimConfig(const std::string& out, int clients, int64_t train_limit,
                                     int64_t test_limit, uint64_t seed) {
  sim::SimConfig c;
  c.clients = clients;
  c.partition = "iid";
  c.train_limit = train_limit;
  c.test_limit = test_limit;
  c.out_dir = out;
  c.quiet = true;
  c.aggregator.endpoint = "tcp://127.0.0.1:*";
  c.aggregator.model_arch = "2nn";
  c.aggregator.rounds = 3;
  c.aggregator.epochs = 1;
  c.aggregator.batch_size = 32;
  c.aggregator.learning_rate = 0.02;
  c.aggregator.seed = seed;
  return c;
}

}  // namespace flotilla::testing
