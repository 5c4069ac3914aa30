// A real aggregator running Run() on its own thread, for integration tests.
#pragma once

#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "aggregator/server.h"
#include "client/runner.h"
#include "testing/test_keys.h"
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
    auto created =
        aggregator::Aggregator::Create(config, &context, (*runner)->GetWeights(), nullptr, nullptr);
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

// Failures seen by worker threads, asserted on the main thread (Catch2's
// assertions are not thread-safe). Thread-safe.
class ThreadFailures {
 public:
  // Records `what` when `ok` is false.
  void Expect(bool ok, const std::string& what) {
    if (ok) return;
    std::lock_guard<std::mutex> lock(mu_);
    failures_.push_back(what);
  }
  // On the main thread: every recorded failure fails the test.
  void Check() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& f : failures_) FAIL_CHECK(f);
    failures_.clear();
  }

 private:
  std::mutex mu_;
  std::vector<std::string> failures_;
};

// Worker threads and the failures they saw. Join() (on the main thread)
// joins them and turns their failures into test failures.
struct Workers {
  std::vector<std::thread> threads;
  ThreadFailures failures;

  void Join() {
    for (auto& t : threads) {
      if (t.joinable()) t.join();
    }
    failures.Check();
  }
  ~Workers() {
    for (auto& t : threads) {
      if (t.joinable()) t.join();
    }
  }
};

// Starts `n` honest clients (keys 0..n-1), one thread each, until the
// federation ends; client i trains on examples [i * per_client, (i + 1) *
// per_client) of `data`. Each expects RunClient to succeed and, when
// `expect_acked` >= 0, that many updates acknowledged; Join() checks.
inline std::unique_ptr<Workers> StartHonestClients(const TestKeys& keys, const std::string& endpoint,
                                                   std::shared_ptr<const training::Dataset> data, int n,
                                                   int per_client, int expect_acked = -1) {
  auto workers = std::make_unique<Workers>();
  for (int i = 0; i < n; ++i) {
    workers->threads.emplace_back([&keys, endpoint, data, i, per_client, expect_acked, w = workers.get()] {
      client::SessionConfig sc;
      sc.endpoint = endpoint;
      sc.name = "honest-" + std::to_string(i);
      sc.num_examples = per_client;
      sc.socket = keys.ClientSocket(i);
      training::DataView view{data, {}};
      for (int k = 0; k < per_client; ++k) view.indices.push_back(i * per_client + k);
      auto stats = client::RunClient(sc, view, keys.signing->public_key, nullptr);
      w->failures.Expect(stats.ok(), sc.name + ": " + stats.status().ToString());
      if (stats.ok() && expect_acked >= 0) {
        w->failures.Expect(stats->updates_acked == expect_acked,
                           sc.name + ": " + std::to_string(stats->updates_acked) +
                               " updates acknowledged, expected " + std::to_string(expect_acked));
      }
    });
  }
  return workers;
}

// Drives one enrolled device whose "training" is `make_update` (an
// attacker, or a broken device): nullopt declines the round. Runs until the
// federation ends, `deadline` passes, or the session fails; returns how
// many updates were acknowledged, or the session's error.
inline StatusOr<int> RunScriptedDevice(
    const client::SessionConfig& sc,
    const std::function<std::optional<wire::Update>(const wire::TrainTask&)>& make_update,
    std::chrono::steady_clock::time_point deadline,
    const std::function<void(const client::Session&)>& at_end = nullptr,
    const std::atomic<bool>* stop = nullptr) {
  net::Context context;
  ASSIGN_OR_RETURN(std::unique_ptr<client::Session> session, client::Session::Create(&context, sc));
  while (!session->finished() && std::chrono::steady_clock::now() < deadline && !(stop && stop->load())) {
    if (session->socket() == nullptr) {  // away between check-ins
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    } else {
      ASSIGN_OR_RETURN(std::vector<size_t> ready,
                       net::PollReadable({session->socket()}, std::chrono::milliseconds(20)));
      if (!ready.empty()) RETURN_IF_ERROR(session->OnReadable());
    }
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
  if (at_end) at_end(*session);
  return session->updates_acked();
}

}  // namespace flotilla::testing
