// End-to-end federations over real TCP on loopback, on real Fashion-MNIST.
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <thread>

#include "aggregator/server.h"
#include "client/local_trainer.h"
#include "client/runner.h"
#include "core/rng.h"
#include "net/transport.h"
#include "proto/codec.h"
#include "sim/report.h"
#include "sim/simulation.h"
#include "testing/test_aggregator.h"
#include "testing/test_keys.h"
#include "testing/test_sim.h"
#include "training/dataset.h"
#include "training/model.h"

using namespace flotilla;

namespace {

using testing::TempPath;

sim::SimConfig SmallSim(const std::string& out) { return testing::SmallSimConfig(out, 3, 3000, 1000, 7); }

// Reads one reply on a raw socket or fails the test.
wire::Envelope ReadReply(net::ClientSocket* socket) {
  auto bytes = socket->Receive(std::chrono::seconds(30));
  REQUIRE(bytes.ok());
  REQUIRE(bytes->has_value());
  auto env = proto::ParseEnvelope(bytes->value().data(), bytes->value().size());
  REQUIRE(env.ok());
  return *env;
}

void SendEnvelope(net::ClientSocket* socket, wire::Envelope env) {
  REQUIRE(socket->Send(proto::SerializeEnvelope(&env)).ok());
}

}  // namespace

TEST_CASE("A 3-client federation over loopback finishes 3 rounds with improving accuracy", "[integration]") {
  const auto out = TempPath("three");
  auto result = sim::RunSimulation(SmallSim(out.string()));
  REQUIRE(result.ok());
  REQUIRE(result->rounds.size() == 3);
  for (const auto& r : result->rounds) {
    CHECK(r.completed);
    CHECK(r.received == 3);
    REQUIRE(r.test_accuracy.has_value());
  }
  CHECK(*result->rounds[2].test_accuracy > *result->rounds[0].test_accuracy);
  CHECK(result->final_accuracy > 0.6);  // chance is 0.1
  CHECK(std::filesystem::exists(out / "metrics.csv"));
  CHECK(std::filesystem::exists(out / "summary.json"));
  // The run at a glance: every figure from the rounds themselves.
  const std::string table = sim::FormatSummaryTable(*result, 3);
  INFO(table);
  CHECK(table.find("3 completed, 0 failed (of 3 planned)") != std::string::npos);
  CHECK(table.find("9 of 9 selected updates arrived (100.0%)") != std::string::npos);
  char best[64];
  std::snprintf(best, sizeof(best), "%.4f final", result->final_accuracy);
  CHECK(table.find(best) != std::string::npos);
  CHECK(table.find("MB in") != std::string::npos);
  CHECK(table.find("held-out") == std::string::npos);  // no federated evaluation in this run
  std::filesystem::remove_all(out);
}

TEST_CASE("Two runs with the same seed give the same accuracies", "[integration]") {
  const auto out1 = TempPath("det1"), out2 = TempPath("det2");
  auto c1 = SmallSim(out1.string());
  auto c2 = SmallSim(out2.string());
  c1.aggregator.rounds = c2.aggregator.rounds = 2;
  auto r1 = sim::RunSimulation(c1);
  auto r2 = sim::RunSimulation(c2);
  REQUIRE(r1.ok());
  REQUIRE(r2.ok());
  REQUIRE(r1->rounds.size() == r2->rounds.size());
  for (size_t i = 0; i < r1->rounds.size(); ++i) {
    CHECK(*r1->rounds[i].test_accuracy == *r2->rounds[i].test_accuracy);
    CHECK(r1->rounds[i].mean_train_loss == r2->rounds[i].mean_train_loss);
  }
  std::filesystem::remove_all(out1);
  std::filesystem::remove_all(out2);
}

TEST_CASE("Compressed updates (int8, top-k with error feedback) federate and learn", "[integration]") {
  for (const char* compression : {"int8", "topk:0.05"}) {
    INFO(compression);
    const auto out = TempPath("compressed");
    auto c = SmallSim(out.string());
    c.aggregator.rounds = 3;
    c.aggregator.compression = compression;
    auto r = sim::RunSimulation(c);
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    REQUIRE(r->rounds.size() == 3);
    for (const auto& round : r->rounds) CHECK(round.completed);
    CHECK(r->final_accuracy > 0.6);
    std::filesystem::remove_all(out);
  }
}

TEST_CASE("A device paused by its owner declines its rounds and the others finish them", "[integration]") {
  const auto store = TempPath("paused");
  aggregator::AggregatorConfig config;
  config.endpoint = "tcp://127.0.0.1:*";
  config.store_path = store.string();
  config.model_arch = "logreg";
  config.rounds = 2;
  config.min_clients = 3;
  config.min_updates = 2;
  config.round_deadline_seconds = 30.0;
  config.finish_grace_seconds = 1.0;
  testing::TestKeys keys(3);
  keys.Apply(&config);
  auto runner = training::ModelRunner::Create("logreg", 1);
  REQUIRE(runner.ok());
  net::Context context;
  auto agg = aggregator::Aggregator::Create(config, &context, (*runner)->GetWeights(), nullptr, nullptr);
  REQUIRE(agg.ok());
  Status run;
  std::thread server([&] { run = (*agg)->Run(); });
  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(300, 3));
  auto honest = testing::StartHonestClients(keys, (*agg)->endpoint(), data, 2, 100, 2);
  // The third device is busy: its owner's hook says no to every round.
  client::SessionConfig sc;
  sc.endpoint = (*agg)->endpoint();
  sc.name = "busy";
  sc.num_examples = 100;
  sc.socket = keys.ClientSocket(2);
  training::DataView view{data, {}};
  for (int k = 200; k < 300; ++k) view.indices.push_back(k);
  std::atomic<int> asked{0};
  auto busy = client::RunClient(sc, view, keys.signing->public_key, nullptr, nullptr, "", [&] {
    ++asked;
    return false;
  });
  honest->Join();
  server.join();
  REQUIRE(run.ok());
  REQUIRE(busy.ok());
  CHECK(busy->rounds_trained == 0);
  CHECK(busy->rounds_paused == 2);
  CHECK(asked == 2);
  const auto& history = (*agg)->history();
  REQUIRE(history.size() == 2);
  for (const auto& r : history) {
    CHECK(r.completed);
    CHECK(r.received == 2);
    CHECK(r.seconds < 20);  // the round did not wait for its deadline
  }
  std::filesystem::remove_all(store);
}

TEST_CASE("A wrong-shaped update gets an error reply and the round completes with the others",
          "[integration]") {
  const auto store = TempPath("badshape");
  aggregator::AggregatorConfig config;
  config.endpoint = "tcp://127.0.0.1:*";
  config.store_path = store.string();
  config.model_arch = "logreg";
  config.rounds = 1;
  config.min_clients = 3;
  config.min_updates = 2;
  config.round_deadline_seconds = 4.0;
  config.finish_grace_seconds = 1.0;
  testing::TestKeys keys(3);
  keys.Apply(&config);
  auto runner = training::ModelRunner::Create("logreg", 1);
  REQUIRE(runner.ok());
  net::Context context;
  auto agg = aggregator::Aggregator::Create(config, &context, (*runner)->GetWeights(), nullptr, nullptr);
  REQUIRE(agg.ok());
  Status run;
  std::thread server([&] { run = (*agg)->Run(); });

  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(200, 3));
  auto honest = testing::StartHonestClients(keys, (*agg)->endpoint(), data, 2, 100, 1);

  // The hostile client: follows the protocol, then sends a delta of the wrong shape.
  auto socket = net::ClientSocket::Connect(&context, (*agg)->endpoint(), keys.ClientSocket(2));
  REQUIRE(socket.ok());
  wire::Envelope hello;
  hello.mutable_hello()->set_client_name("mallory");
  hello.mutable_hello()->set_num_examples(100);
  SendEnvelope(socket->get(), hello);
  CHECK(ReadReply(socket->get()).has_welcome());
  wire::Envelope request;
  request.mutable_task_request();
  SendEnvelope(socket->get(), request);
  wire::Envelope task = ReadReply(socket->get());
  REQUIRE(task.has_train_task());
  wire::Envelope update;
  update.mutable_update()->set_round(task.train_task().round());
  update.mutable_update()->set_model_version(task.train_task().model_version());
  update.mutable_update()->set_num_examples(100);
  // The model's own layout with the first tensor's shape changed.
  std::vector<std::pair<std::string, std::vector<int64_t>>> specs;
  for (const auto& t : (*runner)->layout()->tensors()) specs.emplace_back(t.name, t.shape);
  specs[0].second[0] += 1;
  auto wrong = std::make_shared<const Layout>(*Layout::Create(specs));
  proto::WeightsToProto(Weights::Zeros(wrong), update.mutable_update()->mutable_delta());
  SendEnvelope(socket->get(), update);
  wire::Envelope reply = ReadReply(socket->get());
  REQUIRE(reply.has_error());
  CHECK(reply.error().code() == wire::ERROR_BAD_UPDATE);

  honest->Join();
  server.join();
  REQUIRE(run.ok());
  const auto& history = (*agg)->history();
  REQUIRE(history.size() == 1);
  CHECK(history[0].completed);
  CHECK(history[0].received == 2);
  CHECK(history[0].selected == 3);
  CHECK((*agg)->model_version() == 2);
  CHECK((*agg)->rejected_messages() >= 1);
  socket->reset();
  agg->reset();
  std::filesystem::remove_all(store);
}

TEST_CASE("A held task request gets its keepalive even when rounds finish faster than the keepalive",
          "[integration]") {
  // Rounds take well under the 5 s keepalive. A request held across many
  // round ends must still be answered (Wait) within the keepalive, or the
  // device times out and reconnects although the aggregator is alive. (The
  // patient client has no secure-aggregation key, so secure rounds never
  // sample it.)
  aggregator::AggregatorConfig config;
  config.rounds = 100000;
  config.min_clients = 2;
  config.secagg.enabled = true;
  testing::TestKeys keys(3);
  keys.Apply(&config);
  testing::RunningAggregator agg(config);
  net::Context context;
  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(200, 3));
  std::atomic<bool> stop{false};
  testing::Workers honest;
  for (int i = 0; i < 2; ++i) {
    honest.threads.emplace_back([&, i] {
      client::SessionConfig sc;
      sc.endpoint = agg.endpoint();
      sc.name = "fast-" + std::to_string(i);
      sc.num_examples = 100;
      sc.socket = keys.ClientSocket(i);
      auto identity = privacy::DeriveSecAggIdentity(keys.clients[i]);
      honest.failures.Expect(identity.ok(), "secagg identity: " + identity.status().ToString());
      if (!identity.ok()) return;
      sc.secagg_identity = std::make_shared<const privacy::SigningKeyPair>(std::move(identity).value());
      training::DataView view{data, {}};
      for (int k = 0; k < 100; ++k) view.indices.push_back(i * 100 + k);
      auto stats = client::RunClient(sc, view, keys.signing->public_key, &stop);
      honest.failures.Expect(stats.ok(), sc.name + ": " + stats.status().ToString());
    });
  }
  auto socket = net::ClientSocket::Connect(&context, agg.endpoint(), keys.ClientSocket(2));
  REQUIRE(socket.ok());
  wire::Envelope hello;
  hello.mutable_hello()->set_client_name("patient");
  hello.mutable_hello()->set_num_examples(100);
  SendEnvelope(socket->get(), hello);
  CHECK(ReadReply(socket->get()).has_welcome());
  int waits = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(12);
  uint64_t id = 10;
  while (std::chrono::steady_clock::now() < until) {
    wire::Envelope request;
    request.set_request_id(++id);
    request.mutable_task_request();
    SendEnvelope(socket->get(), request);
    auto bytes = (*socket)->Receive(std::chrono::seconds(9));
    REQUIRE(bytes.ok());
    REQUIRE(bytes->has_value());  // answered within keepalive + slack
    auto reply = proto::ParseEnvelope(bytes->value().data(), bytes->value().size());
    REQUIRE(reply.ok());
    if (reply->has_wait()) {
      ++waits;
    } else {
      FAIL("unexpected " << proto::BodyName(*reply));
    }
  }
  CHECK(waits >= 2);
  agg.Stop();
  CHECK(agg.agg->history().size() > 5);  // rounds really were faster than the keepalive
  stop = true;
  honest.Join();
  CHECK(agg.status.ok());
  socket->reset();
}

TEST_CASE("Asynchronous rounds: long-lived devices fill buffers of K, and the outputs carry the staleness",
          "[integration][async]") {
  const auto out = TempPath("async-long");
  auto c = SmallSim(out.string());
  c.aggregator.rounds = 6;
  c.aggregator.async.buffer = 2;
  c.aggregator.async.concurrency = 3;
  auto result = sim::RunSimulation(c);
  REQUIRE(result.ok());
  REQUIRE(result->rounds.size() == 6);
  for (const auto& r : result->rounds) {
    CHECK(r.completed);
    CHECK(r.async);
    CHECK(r.received == 2);  // one buffer of K
    CHECK(r.max_staleness <= c.aggregator.async.max_staleness);
  }
  // Three devices and buffers of two: the third device's update lands in
  // the next buffer, one version old.
  double staleness = 0;
  for (const auto& r : result->rounds) staleness += r.mean_staleness;
  CHECK(staleness > 0);
  CHECK(result->final_accuracy > 0.6);  // chance is 0.1
  std::ifstream metrics(out / "metrics.csv");
  std::string header;
  std::getline(metrics, header);
  CHECK(header.find("mean_staleness") != std::string::npos);
  std::filesystem::remove_all(out);
}

TEST_CASE("Asynchronous rounds: a check-in fleet gets tasks while slots are free and comes back for more",
          "[integration][async]") {
  const auto out = TempPath("async-checkin");
  auto c = testing::SmallSimConfig(out.string(), 8, 4000, 1000, 3);
  c.aggregator.rounds = 6;
  c.aggregator.checkin.enabled = true;
  c.aggregator.checkin.min_come_back_seconds = 0.2;
  c.aggregator.round_deadline_seconds = 30;
  c.aggregator.async.buffer = 3;
  c.aggregator.async.concurrency = 4;
  auto result = sim::RunSimulation(c);
  REQUIRE(result.ok());
  REQUIRE(result->rounds.size() == 6);
  for (const auto& r : result->rounds) {
    CHECK(r.completed);
    CHECK(r.received == 3);
  }
  CHECK(result->check_ins > 8);  // devices came back after their updates
  CHECK(result->peak_active_devices <= 8);
  CHECK(result->final_accuracy > 0.6);
  std::filesystem::remove_all(out);
}

TEST_CASE("Check-in: a round that needs the whole fleet gets it every round, without waiting out the window",
          "[integration][checkin]") {
  // Every device is needed every round: a device that learns of the next
  // round (its update's Ack, while the round runs) after that round's
  // selection opened must still check in for it at once.
  const auto out = TempPath("whole-fleet");
  auto c = testing::SmallSimConfig(out.string(), 200, 4000, 1000, 4);
  c.aggregator.model_arch = "logreg";
  c.aggregator.rounds = 6;
  c.aggregator.checkin.enabled = true;
  c.aggregator.checkin.clients_per_round = 200;
  c.aggregator.checkin.over_selection = 1;
  c.aggregator.checkin.window_seconds = 20;
  c.aggregator.round_deadline_seconds = 60;
  auto result = sim::RunSimulation(c);
  REQUIRE(result.ok());
  REQUIRE(result->rounds.size() == 6);
  for (const auto& r : result->rounds) {
    INFO("round " << r.round << ": " << r.selected << " selected after " << r.selection_seconds << " s");
    CHECK(r.completed);
    CHECK(r.selected == 200);
    CHECK(r.selection_seconds < 15);
  }
  std::filesystem::remove_all(out);
}

TEST_CASE("Check-in: pace steering plans with the devices only, not the simulator's observer keys",
          "[integration][checkin]") {
  // The simulator allowlists an observer key per possible shard beside its
  // devices. Counted as devices, they made 100 look like 356, so pace
  // steering asked each device to check in for only about one round in
  // seven and a 50-of-100 round got about 25 check-ins: with min_clients 50
  // its selection never closed.
  const auto out = TempPath("pace-devices");
  auto c = testing::SmallSimConfig(out.string(), 100, 4000, 1000, 4);
  c.aggregator.model_arch = "logreg";
  c.aggregator.rounds = 4;
  c.aggregator.min_clients = 50;
  c.aggregator.checkin.enabled = true;
  c.aggregator.checkin.clients_per_round = 50;
  c.aggregator.checkin.over_selection = 1;
  c.aggregator.checkin.window_seconds = 20;
  c.aggregator.round_deadline_seconds = 60;
  auto result = sim::RunSimulation(c);
  REQUIRE(result.ok());
  REQUIRE(result->rounds.size() == 4);
  for (const auto& r : result->rounds) {
    INFO("round " << r.round << ": " << r.selected << " selected after " << r.selection_seconds << " s");
    CHECK(r.completed);
    CHECK(r.selected == 50);
    CHECK(r.selection_seconds < 15);
  }
  std::filesystem::remove_all(out);
}
