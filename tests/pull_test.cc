// Pulling models outside rounds, end to end against a real aggregator.
#include "client/pull.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <thread>

#include "client/device_store.h"
#include "client/runner.h"
#include "net/zap.h"
#include "privacy/signing.h"
#include "proto/codec.h"
#include "testing/test_aggregator.h"
#include "testing/test_keys.h"
#include "training/dataset.h"

using namespace flotilla;
using namespace std::chrono_literals;

TEST_CASE("Devices pull signed models only what changed and refuse tampered ones", "[pull][integration]") {
  testing::TestKeys keys(2);  // 0 trains, 1 only pulls
  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.rounds = 2;
  config.min_clients = 1;
  config.keep_serving = true;
  testing::RunningAggregator running(config);

  // Train two rounds so that versions 1, 2 and 3 exist.
  {
    auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(100, 4));
    client::SessionConfig sc;
    sc.endpoint = running.endpoint();
    sc.name = "trainer";
    sc.socket = keys.ClientSocket(0);
    auto stats = client::RunClient(sc, training::DataView::All(data), keys.signing->public_key, nullptr);
    REQUIRE(stats.ok());
    REQUIRE(stats->updates_acked == 2);
  }
  const auto dir = testing::TempPath("device");
  auto store = client::DeviceStore::Open(dir.string());
  REQUIRE(store.ok());
  client::SessionConfig viewer;
  viewer.endpoint = running.endpoint();
  viewer.name = "viewer";
  viewer.socket = keys.ClientSocket(1);

  auto status = client::QueryStatus(viewer);
  REQUIRE(status.ok());
  CHECK(status->model_version() == 3);
  CHECK(status->rounds_completed() == 2);

  auto v2 = client::PullModel(viewer, store->get(), 2, keys.signing->public_key);
  REQUIRE(v2.ok());
  CHECK_FALSE(v2->up_to_date);
  CHECK(v2->model.version == 2);
  CHECK(v2->tensors_received == v2->tensors_total);

  auto latest = client::PullModel(viewer, store->get(), 0, keys.signing->public_key);
  REQUIRE(latest.ok());
  CHECK(latest->model.version == 3);
  CHECK(latest->tensors_received <= latest->tensors_total);
  // The reassembled model is exactly the aggregator's.
  running.Stop();
  wire::WeightsProto expected;
  proto::WeightsToProto(running.agg->global_model(), &expected);
  CHECK(latest->model.weights.data() == expected.data());
}

TEST_CASE("An up-to-date device downloads nothing - unknown versions are NotFound", "[pull][integration]") {
  testing::TestKeys keys(1);
  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.min_clients = 5;  // no rounds: only version 1 exists
  testing::RunningAggregator running(config);
  const auto dir = testing::TempPath("device");
  auto store = client::DeviceStore::Open(dir.string());
  REQUIRE(store.ok());
  client::SessionConfig sc;
  sc.endpoint = running.endpoint();
  sc.name = "d";
  sc.socket = keys.ClientSocket(0);
  auto first = client::PullModel(sc, store->get(), 0, keys.signing->public_key);
  REQUIRE(first.ok());
  CHECK(first->model.version == 1);
  auto again = client::PullModel(sc, store->get(), 0, keys.signing->public_key);
  REQUIRE(again.ok());
  CHECK(again->up_to_date);
  CHECK(again->payload_bytes == 0);
  auto missing = client::PullModel(sc, store->get(), 99, keys.signing->public_key);
  CHECK(missing.status().code() == StatusCode::kNotFound);
  std::filesystem::remove_all(dir);
}

TEST_CASE("A tampered pulled model is refused and the device keeps its model", "[pull][integration]") {
  testing::TestKeys keys(1);
  // A server holding the real transport keys but serving altered weights.
  net::Context context;
  auto zap = net::ZapHandler::Start(&context, "flotilla", {keys.clients[0].public_z85});
  REQUIRE(zap.ok());
  net::SocketOptions server_opts;
  server_opts.curve.public_key = keys.server.public_z85;
  server_opts.curve.secret_key = keys.server.SecretZ85();
  auto server = net::ServerSocket::Bind(&context, "tcp://127.0.0.1:*", server_opts);
  REQUIRE(server.ok());

  auto layout = std::make_shared<const Layout>(*Layout::Create({{"w", {4}}}));
  Weights genuine = Weights::Zeros(layout);
  genuine.data = {1, 2, 3, 4};
  const std::string sig_v1 =
      *privacy::SignModel(*keys.signing, "flotilla", 1, 0, privacy::ModelDigest(genuine));
  genuine.data = {1, 2, 3, 5};
  const std::string sig_v2 =
      *privacy::SignModel(*keys.signing, "flotilla", 2, 1, privacy::ModelDigest(genuine));

  int mode = 0;  // 0: honest v1, 1: v2 with a flipped byte, 2: v2 signed by another key
  std::atomic<bool> stop{false};
  std::thread fake([&] {
    auto other = privacy::GenerateSigningKeyPair();
    while (!stop.load()) {
      auto in = (*server)->Receive(50ms);
      if (!in.ok() || !in->has_value()) continue;
      auto req = proto::ParseEnvelope(in->value().payload.data(), in->value().payload.size());
      wire::Envelope reply;
      reply.set_request_id(req->request_id());
      auto* r = reply.mutable_pull_reply();
      Weights w = Weights::Zeros(layout);
      if (mode == 0) {
        w.data = {1, 2, 3, 4};
        r->set_version(1);
        r->set_signature(sig_v1);
      } else {
        w.data = {1, 2, 3, 5};
        r->set_version(2);
        r->set_round(1);
        r->set_signature(mode == 1 ? sig_v2
                                   : *privacy::SignModel(*other, "flotilla", 2, 1, privacy::ModelDigest(w)));
      }
      r->set_model_arch("tiny");
      proto::WeightsToProto(w, r->mutable_weights());
      if (mode == 1) (*r->mutable_weights()->mutable_data())[1] ^= 0x40;
      (void)(*server)->Send(in->value().peer, proto::SerializeEnvelope(&reply));
    }
  });
  const auto dir = testing::TempPath("device");
  auto store = client::DeviceStore::Open(dir.string());
  REQUIRE(store.ok());
  client::SessionConfig sc;
  sc.endpoint = (*server)->endpoint();
  sc.name = "d";
  sc.socket = keys.ClientSocket(0);
  REQUIRE(client::PullModel(sc, store->get(), 0, keys.signing->public_key).ok());
  for (int m : {1, 2}) {
    mode = m;
    auto r = client::PullModel(sc, store->get(), 0, keys.signing->public_key);
    CHECK(r.status().code() == StatusCode::kPermissionDenied);
    auto held = (*store)->GetModel();
    REQUIRE(held.ok());
    REQUIRE(held->has_value());
    CHECK(held->value().version == 1);  // kept the verified model
  }
  stop.store(true);
  fake.join();
  server->reset();
  zap->reset();
  std::filesystem::remove_all(dir);
}

TEST_CASE("A device refuses an older model as the latest but takes it by number", "[pull][integration]") {
  testing::TestKeys keys(2);  // 0 trains, 1 pulls
  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.rounds = 2;
  config.min_clients = 1;
  config.keep_serving = true;
  const auto dir = testing::TempPath("rollback-device");
  auto store = client::DeviceStore::Open(dir.string());
  REQUIRE(store.ok());
  client::SessionConfig viewer;
  viewer.name = "viewer";
  viewer.socket = keys.ClientSocket(1);
  {
    testing::RunningAggregator running(config);
    auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(100, 4));
    client::SessionConfig sc;
    sc.endpoint = running.endpoint();
    sc.name = "trainer";
    sc.socket = keys.ClientSocket(0);
    auto stats = client::RunClient(sc, training::DataView::All(data), keys.signing->public_key, nullptr);
    REQUIRE(stats.ok());
    REQUIRE(stats->updates_acked == 2);
    viewer.endpoint = running.endpoint();
    auto latest = client::PullModel(viewer, store->get(), 0, keys.signing->public_key);
    REQUIRE(latest.ok());
    REQUIRE(latest->model.version == 3);
  }
  // The same signing key serving an older store: only the genuine version 1.
  testing::RunningAggregator rolled_back(config);
  viewer.endpoint = rolled_back.endpoint();
  auto refused = client::PullModel(viewer, store->get(), 0, keys.signing->public_key);
  REQUIRE(refused.status().code() == StatusCode::kPermissionDenied);
  CHECK(std::string(refused.status().message()).find("rollback") != std::string::npos);
  auto held = (*store)->GetModel();
  REQUIRE(held.ok());
  CHECK(held->value().version == 3);  // kept
  auto asked = client::PullModel(viewer, store->get(), 1, keys.signing->public_key);
  REQUIRE(asked.ok());
  CHECK(asked->model.version == 1);
  auto newest = (*store)->NewestVerified("flotilla");
  REQUIRE(newest.ok());
  CHECK(*newest == 3);  // taking an old version deliberately does not lower the mark

  // Training: a task on version 1 is declined by a device that verified 3.
  std::atomic<bool> stop{false};
  std::thread stopper([&] {
    std::this_thread::sleep_for(3s);
    stop.store(true);
  });
  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(50, 4));
  auto stats =
      client::RunClient(viewer, training::DataView::All(data), keys.signing->public_key, &stop, store->get());
  stopper.join();
  REQUIRE(stats.ok());
  CHECK(stats->models_refused >= 1);
  CHECK(stats->updates_acked == 0);
  store->reset();
  std::filesystem::remove_all(dir);
}

TEST_CASE("A model signed for another federation is refused", "[pull][integration]") {
  testing::TestKeys keys(1);
  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.federation = "factory-b";  // same signing key, another federation
  config.min_clients = 5;
  testing::RunningAggregator other(config);
  const auto dir = testing::TempPath("federation-device");
  auto store = client::DeviceStore::Open(dir.string());
  REQUIRE(store.ok());
  client::SessionConfig sc;
  sc.endpoint = other.endpoint();
  sc.name = "d";
  sc.federation = "factory-a";
  sc.socket = keys.ClientSocket(0);
  auto pulled = client::PullModel(sc, store->get(), 0, keys.signing->public_key);
  CHECK(pulled.status().code() == StatusCode::kPermissionDenied);
  // Training against it stops at the Welcome, naming both federations.
  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(20, 4));
  auto stats = client::RunClient(sc, training::DataView::All(data), keys.signing->public_key, nullptr);
  REQUIRE_FALSE(stats.ok());
  CHECK(std::string(stats.status().message()).find("factory-b") != std::string::npos);
  CHECK(std::string(stats.status().message()).find("factory-a") != std::string::npos);
  sc.federation = "factory-b";
  CHECK(client::PullModel(sc, store->get(), 0, keys.signing->public_key).ok());
  store->reset();
  std::filesystem::remove_all(dir);
}
