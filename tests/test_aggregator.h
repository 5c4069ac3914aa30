// A real aggregator running Run() on its own thread, for integration tests.
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <thread>

#include "aggregator/server.h"
#include "training/model.h"

namespace flotilla::testing {

inline std::filesystem::path TempPath(const std::string& name) {
  static int counter = 0;
  auto p = std::filesystem::temp_directory_path() /
           ("flotilla-it-" + std::to_string(::getpid()) + "-" + name + std::to_string(counter++));
  std::filesystem::remove_all(p);
  return p;
}

struct RunningAggregator {
  net::Context context;
  std::unique_ptr<aggregator::Aggregator> agg;
  std::thread thread;
  Status status;
  std::filesystem::path store;

  explicit RunningAggregator(aggregator::AggregatorConfig config, const std::string& arch = "logreg") {
    store = TempPath("store");
    config.endpoint = "tcp://127.0.0.1:*";
    config.store_path = store.string();
    config.model_arch = arch;
    auto runner = training::ModelRunner::Create(arch, 1);
    REQUIRE(runner.ok());
    auto created = aggregator::Aggregator::Create(config, &context, (*runner)->GetWeights(), nullptr, nullptr);
    INFO(created.status().ToString());
    REQUIRE(created.ok());
    agg = std::move(created).value();
    thread = std::thread([this] { status = agg->Run(); });
  }
  void Stop() {
    agg->RequestStop();
    if (thread.joinable()) thread.join();
  }
  ~RunningAggregator() {
    Stop();
    agg.reset();
    std::filesystem::remove_all(store);
  }
  std::string endpoint() const { return agg->endpoint(); }
};

}  // namespace flotilla::testing
