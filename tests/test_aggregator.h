// A real aggregator running Run() on its own thread, for integration tests.
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "aggregator/server.h"
#include "client/runner.h"
#include "tests/test_keys.h"
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

// Starts `n` honest clients (keys 0..n-1), one thread each, until the
// federation ends; client i trains on examples [i * per_client, (i + 1) *
// per_client) of `data`. Each checks that RunClient succeeded and, when
// `expect_acked` >= 0, how many updates were acknowledged. Join the threads.
inline std::vector<std::thread> StartHonestClients(const TestKeys& keys, const std::string& endpoint,
                                                   std::shared_ptr<const training::Dataset> data, int n,
                                                   int per_client, int expect_acked = -1) {
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&keys, endpoint, data, i, per_client, expect_acked] {
      client::SessionConfig sc;
      sc.endpoint = endpoint;
      sc.name = "honest-" + std::to_string(i);
      sc.num_examples = per_client;
      sc.socket = keys.ClientSocket(i);
      training::DataView view{data, {}};
      for (int k = 0; k < per_client; ++k) view.indices.push_back(i * per_client + k);
      auto stats = client::RunClient(sc, view, keys.signing->public_key, nullptr);
      REQUIRE(stats.ok());
      if (expect_acked >= 0) CHECK(stats->updates_acked == expect_acked);
    });
  }
  return threads;
}

// Drives one enrolled device whose "training" is `make_update` (an
// attacker, or a broken device): nullopt declines the round. Runs until the
// federation ends, `deadline` passes, or the session fails; returns how
// many updates were acknowledged, or the session's error.
inline StatusOr<int> RunScriptedDevice(const client::SessionConfig& sc,
                                       const std::function<std::optional<wire::Update>(const wire::TrainTask&)>& make_update,
                                       std::chrono::steady_clock::time_point deadline) {
  net::Context context;
  ASSIGN_OR_RETURN(std::unique_ptr<client::Session> session, client::Session::Create(&context, sc));
  while (!session->finished() && std::chrono::steady_clock::now() < deadline) {
    ASSIGN_OR_RETURN(std::vector<size_t> ready,
                     net::PollReadable({session->socket()}, std::chrono::milliseconds(20)));
    if (!ready.empty()) RETURN_IF_ERROR(session->OnReadable());
    RETURN_IF_ERROR(session->OnTick());
    (void)session->TakeSettled();
    if (std::optional<wire::TrainTask> task = session->TakeTask()) {
      std::optional<wire::Update> update = make_update(*task);
      if (update) {
        RETURN_IF_ERROR(session->SubmitUpdate(std::move(*update)));
      } else {
        RETURN_IF_ERROR(session->AbandonTask(Aborted("this device always declines")));
      }
    }
  }
  return session->updates_acked();
}

}  // namespace flotilla::testing
