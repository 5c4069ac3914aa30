// Check-in selection over real CURVE connections on loopback: devices that
// connect, check in, are selected or told to come back, and disconnect.
#include <catch2/catch.hpp>
#include <map>
#include <mutex>
#include <set>

#include "proto/codec.h"
#include "testing/test_aggregator.h"
#include "testing/test_keys.h"

using namespace flotilla;
using namespace std::chrono_literals;

namespace {

aggregator::AggregatorConfig CheckInConfig(const testing::TestKeys& keys, uint32_t rounds) {
  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.rounds = rounds;
  config.min_clients = 2;
  config.round_deadline_seconds = 20;
  config.finish_grace_seconds = 5;
  config.checkin.enabled = true;
  config.checkin.clients_per_round = 2;
  config.checkin.over_selection = 1.0;
  config.checkin.window_seconds = 2;
  config.checkin.quiet_seconds = 0.2;
  config.checkin.min_come_back_seconds = 0.2;
  return config;
}

// What one device saw: the rounds it trained, its check-ins, and the round
// each ComeBack named, in order.
struct DeviceLog {
  std::vector<uint32_t> trained;
  int check_ins = 0;
  int acked = 0;
  bool finished = false;
  std::string error;
};

DeviceLog RunCheckInDevice(const testing::TestKeys& keys, int i, const std::string& endpoint,
                           const std::atomic<bool>* stop) {
  DeviceLog log;
  client::SessionConfig sc;
  sc.endpoint = endpoint;
  sc.name = "dev-" + std::to_string(i);
  sc.num_examples = 10;
  sc.socket = keys.ClientSocket(i);
  sc.checkin = true;
  sc.request_timeout = 10s;
  StatusOr<int> acked = testing::RunScriptedDevice(
      sc,
      [&](const wire::TrainTask& task) -> std::optional<wire::Update> {
        log.trained.push_back(task.round());
        wire::Update u;
        u.set_round(task.round());
        u.set_model_version(task.model_version());
        u.set_num_examples(10);
        StatusOr<Weights> w = proto::WeightsFromProto(task.weights(), nullptr);
        if (!w.ok()) return std::nullopt;
        Weights delta = Weights::Zeros(w->layout);
        for (float& x : delta.data) x = 0.001f;
        proto::WeightsToProto(delta, u.mutable_delta());
        return u;
      },
      std::chrono::steady_clock::now() + 90s,
      [&](const client::Session& s) {
        log.check_ins = s.check_ins();
        log.finished = s.finished();
      },
      stop);
  if (acked.ok()) {
    log.acked = *acked;
  } else {
    log.error = acked.status().ToString();
  }
  return log;
}

}  // namespace

TEST_CASE("Check-in: a device told to come back later does so and is selected in a later round",
          "[integration][checkin]") {
  constexpr int kDevices = 6;
  testing::TestKeys keys(kDevices);
  testing::RunningAggregator agg(CheckInConfig(keys, 4));
  std::vector<DeviceLog> logs(kDevices);
  std::atomic<bool> stop{false};
  {
    std::vector<std::thread> threads;
    for (int i = 0; i < kDevices; ++i)
      threads.emplace_back([&, i] { logs[i] = RunCheckInDevice(keys, i, agg.endpoint(), &stop); });
    // Devices away when the federation ends learn it at their next check-in
    // if the aggregator still serves then; this one exits after its grace.
    if (agg.thread.joinable()) agg.thread.join();
    stop = true;
    for (auto& t : threads) t.join();
  }
  REQUIRE(agg.status.ok());
  REQUIRE(agg.agg->history().size() == 4);
  int trained = 0, came_back_and_trained = 0, finished = 0;
  for (int i = 0; i < kDevices; ++i) {
    INFO("dev-" << i << ": " << logs[i].error);
    CHECK(logs[i].error.empty());
    finished += logs[i].finished;
    trained += static_cast<int>(logs[i].trained.size());
    // Trained after at least one check-in that ended in ComeBack (or in an
    // Ack that said when to return): it came back and was selected again.
    if (logs[i].check_ins >= 2 && !logs[i].trained.empty() && logs[i].trained.back() > 1)
      ++came_back_and_trained;
  }
  for (const auto& r : agg.agg->history()) {
    CHECK(r.completed);
    CHECK(r.selected == 2);
    CHECK(r.received == 2);
  }
  CHECK(trained == 8);
  CHECK(came_back_and_trained >= 1);
  CHECK(finished >= 1);  // those that checked in during the grace period
  // Devices away hold no connection and no memory on the aggregator: only
  // their stored records remain.
  CHECK(agg.agg->client_ids().size() < kDevices);
}
