// Zero-trust transport: each test runs a real aggregator (or its socket) on
// loopback with CURVE, the ZAP allowlist and model signatures.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "aggregator/server.h"
#include "client/local_trainer.h"
#include "client/runner.h"
#include "core/rng.h"
#include "net/transport.h"
#include "net/zap.h"
#include "privacy/signing.h"
#include "proto/codec.h"
#include "testing/test_aggregator.h"
#include "testing/test_keys.h"
#include "training/dataset.h"
#include "training/model.h"

using namespace flotilla;
using namespace std::chrono_literals;

using testing::RunningAggregator;
using testing::TempPath;

namespace {

std::string Serialize(wire::Envelope env) { return proto::SerializeEnvelope(&env); }

wire::Envelope HelloMsg(const std::string& name) {
  wire::Envelope env;
  env.mutable_hello()->set_client_name(name);
  env.mutable_hello()->set_num_examples(100);
  return env;
}

// Returns the parsed reply, or nullopt if none arrives in `timeout`.
std::optional<wire::Envelope> TryReply(net::ClientSocket* s, std::chrono::milliseconds timeout) {
  auto bytes = s->Receive(timeout);
  REQUIRE(bytes.ok());
  if (!bytes->has_value()) return std::nullopt;
  auto env = proto::ParseEnvelope(bytes->value().data(), bytes->value().size());
  REQUIRE(env.ok());
  return *env;
}

aggregator::AggregatorConfig BaseConfig(const testing::TestKeys& keys) {
  aggregator::AggregatorConfig c;
  keys.Apply(&c);
  c.rounds = 1;
  c.min_clients = 1;
  c.finish_grace_seconds = 0.5;
  return c;
}

}  // namespace

TEST_CASE("Clients that fail authentication reach nothing", "[security][integration]") {
  testing::TestKeys keys(1);
  auto config = BaseConfig(keys);
  config.min_clients = 5;  // no round starts; we only watch the handshake
  RunningAggregator running(config);

  auto stranger = privacy::GenerateCurveKeyPair();
  REQUIRE(stranger.ok());
  auto wrong_server = privacy::GenerateCurveKeyPair();
  REQUIRE(wrong_server.ok());

  SECTION("a key not on the allowlist") {
    auto s =
        net::ClientSocket::Connect(&running.context, running.endpoint(),
                                   testing::TestKeys::ClientSocketWith(*stranger, keys.server.public_z85));
    REQUIRE(s.ok());
    REQUIRE((*s)->Send(Serialize(HelloMsg("stranger"))).ok());
    CHECK_FALSE(TryReply(s->get(), 1500ms).has_value());
  }
  SECTION("an allowed key with the wrong server key") {
    auto s = net::ClientSocket::Connect(
        &running.context, running.endpoint(),
        testing::TestKeys::ClientSocketWith(keys.clients[0], wrong_server->public_z85));
    REQUIRE(s.ok());
    REQUIRE((*s)->Send(Serialize(HelloMsg("confused"))).ok());
    CHECK_FALSE(TryReply(s->get(), 1500ms).has_value());
  }
  SECTION("a plaintext (NULL mechanism) client") {
    net::SocketOptions plain;
    plain.security = net::TransportSecurity::kNone;
    auto s = net::ClientSocket::Connect(&running.context, running.endpoint(), plain);
    REQUIRE(s.ok());
    REQUIRE((*s)->Send(Serialize(HelloMsg("plain"))).ok());
    CHECK_FALSE(TryReply(s->get(), 1500ms).has_value());
  }
  // Positive control: the allowed client with the right keys is answered.
  auto good = net::ClientSocket::Connect(&running.context, running.endpoint(), keys.ClientSocket(0));
  REQUIRE(good.ok());
  REQUIRE((*good)->Send(Serialize(HelloMsg("good"))).ok());
  auto reply = TryReply(good->get(), 5000ms);
  REQUIRE(reply.has_value());
  CHECK(reply->has_welcome());
  running.Stop();
  // Exactly one message (the good Hello) reached the round engine.
  CHECK(running.agg->messages_handled() == 1);
  CHECK(running.agg->client_ids() == std::vector<std::string>{keys.clients[0].public_z85});
}

TEST_CASE("Without a running ZAP handler every connection is refused", "[security][integration]") {
  testing::TestKeys keys(1);
  net::Context context;
  net::SocketOptions server;
  server.security = net::TransportSecurity::kCurve;
  server.curve.public_key = keys.server.public_z85;
  server.curve.secret_key = keys.server.SecretZ85();
  auto bound = net::ServerSocket::Bind(&context, "tcp://127.0.0.1:*", server);
  REQUIRE(bound.ok());
  auto client = net::ClientSocket::Connect(&context, (*bound)->endpoint(), keys.ClientSocket(0));
  REQUIRE(client.ok());
  REQUIRE((*client)->Send("hello").ok());
  auto got = (*bound)->Receive(1500ms);
  REQUIRE(got.ok());
  CHECK_FALSE(got->has_value());

  // Control: the same keys get through once a handler approves them.
  auto zap = net::ZapHandler::Start(&context, server.zap_domain, {keys.clients[0].public_z85});
  REQUIRE(zap.ok());
  auto client2 = net::ClientSocket::Connect(&context, (*bound)->endpoint(), keys.ClientSocket(0));
  REQUIRE(client2.ok());
  REQUIRE((*client2)->Send("hello again").ok());
  std::optional<net::Incoming> in;
  for (int i = 0; i < 50 && !in; ++i) {
    auto r = (*bound)->Receive(100ms);
    REQUIRE(r.ok());
    if (r->has_value() && r->value().payload == "hello again") in = r->value();
  }
  REQUIRE(in.has_value());
  CHECK(in->user_id == keys.clients[0].public_z85);
  client->reset();
  client2->reset();
  bound->reset();
}

TEST_CASE("A client reusing another's routing id cannot act as that client", "[security][integration]") {
  testing::TestKeys keys(2);  // 0 = honest, 1 = impostor (also enrolled)
  auto config = BaseConfig(keys);
  config.round_deadline_seconds = 5;
  RunningAggregator running(config);

  auto honest_opts = keys.ClientSocket(0);
  honest_opts.routing_id = "device-A";
  auto honest = net::ClientSocket::Connect(&running.context, running.endpoint(), honest_opts);
  REQUIRE(honest.ok());
  REQUIRE((*honest)->Send(Serialize(HelloMsg("A"))).ok());
  REQUIRE(TryReply(honest->get(), 5000ms)->has_welcome());
  wire::Envelope req;
  req.mutable_task_request();
  REQUIRE((*honest)->Send(Serialize(req)).ok());
  auto task = TryReply(honest->get(), 5000ms);
  REQUIRE(task.has_value());
  REQUIRE(task->has_train_task());

  // A well-formed update of the right shape, as the impostor would forge it.
  auto runner = training::ModelRunner::Create("logreg", 1);
  REQUIRE(runner.ok());
  wire::Envelope update;
  update.mutable_update()->set_round(task->train_task().round());
  update.mutable_update()->set_model_version(task->train_task().model_version());
  update.mutable_update()->set_num_examples(50);
  Weights forged = Weights::Zeros((*runner)->layout());
  for (auto& v : forged.data) v = 0.25f;
  proto::WeightsToProto(forged, update.mutable_update()->mutable_delta());

  auto impostor_opts = keys.ClientSocket(1);
  impostor_opts.routing_id = "device-A";
  auto impostor = net::ClientSocket::Connect(&running.context, running.endpoint(), impostor_opts);
  REQUIRE(impostor.ok());
  REQUIRE((*impostor)->Send(Serialize(update)).ok());
  auto impostor_reply = TryReply(impostor->get(), 1500ms);
  if (impostor_reply) {
    // If its connection was accepted at all, it speaks as its own key.
    REQUIRE(impostor_reply->has_error());
    CHECK(impostor_reply->error().code() == wire::ERROR_NOT_REGISTERED);
  }
  // The honest client's own update is still accepted: nothing was recorded in its name.
  Weights honest_delta = Weights::Zeros((*runner)->layout());
  proto::WeightsToProto(honest_delta, update.mutable_update()->mutable_delta());
  REQUIRE((*honest)->Send(Serialize(update)).ok());
  auto ack = TryReply(honest->get(), 5000ms);
  REQUIRE(ack.has_value());
  CHECK(ack->has_ack());
  running.Stop();
  REQUIRE(running.agg->history().size() == 1);
  CHECK(running.agg->history()[0].received == 1);
  // The new model is global + honest delta (zeros): the forged 0.25s never landed.
  auto initial = (*runner)->GetWeights();
  CHECK(running.agg->global_model().data == initial.data);
}

TEST_CASE("A key removed from the allowlist is refused without restarting", "[security][integration]") {
  testing::TestKeys keys(2);
  const auto list = TempPath("allowlist");
  auto write_list = [&](std::vector<int> who) {
    std::ofstream out(list);
    out << "# test allowlist\n";
    for (int i : who) out << keys.clients[i].public_z85 << "  # client " << i << "\n";
  };
  write_list({0, 1});
  auto config = BaseConfig(keys);
  config.allowed_clients.clear();
  config.allowlist_path = list.string();
  config.min_clients = 5;
  RunningAggregator running(config);

  auto first = net::ClientSocket::Connect(&running.context, running.endpoint(), keys.ClientSocket(0));
  REQUIRE(first.ok());
  REQUIRE((*first)->Send(Serialize(HelloMsg("c0"))).ok());
  REQUIRE(TryReply(first->get(), 5000ms)->has_welcome());

  write_list({1});
  running.agg->RequestReload();
  std::this_thread::sleep_for(300ms);
  // On its existing connection: refused at once.
  REQUIRE((*first)->Send(Serialize(HelloMsg("c0"))).ok());
  auto denied = TryReply(first->get(), 5000ms);
  REQUIRE(denied.has_value());
  REQUIRE(denied->has_error());
  CHECK(denied->error().code() == wire::ERROR_PERMISSION_DENIED);
  // On a new connection: no handshake.
  auto again = net::ClientSocket::Connect(&running.context, running.endpoint(), keys.ClientSocket(0));
  REQUIRE(again.ok());
  REQUIRE((*again)->Send(Serialize(HelloMsg("c0"))).ok());
  CHECK_FALSE(TryReply(again->get(), 1500ms).has_value());
  // Client 1 is unaffected.
  auto other = net::ClientSocket::Connect(&running.context, running.endpoint(), keys.ClientSocket(1));
  REQUIRE(other.ok());
  REQUIRE((*other)->Send(Serialize(HelloMsg("c1"))).ok());
  REQUIRE(TryReply(other->get(), 5000ms)->has_welcome());
  // Re-enrolled by editing the file: picked up by the file watcher alone.
  std::this_thread::sleep_for(1100ms);
  write_list({0, 1});
  std::this_thread::sleep_for(2500ms);
  auto back = net::ClientSocket::Connect(&running.context, running.endpoint(), keys.ClientSocket(0));
  REQUIRE(back.ok());
  REQUIRE((*back)->Send(Serialize(HelloMsg("c0"))).ok());
  auto welcome = TryReply(back->get(), 5000ms);
  REQUIRE(welcome.has_value());
  CHECK(welcome->has_welcome());
  std::filesystem::remove(list);
}

TEST_CASE("A client refuses a tampered model and keeps the one it has", "[security]") {
  testing::TestKeys keys(0);
  auto runner = training::ModelRunner::Create("logreg", 5);
  REQUIRE(runner.ok());
  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(64, 2));
  const training::DataView view = training::DataView::All(data);

  auto global_runner = training::ModelRunner::Create("logreg", 9);
  REQUIRE(global_runner.ok());
  Weights global = (*global_runner)->GetWeights();
  wire::TrainTask task;
  task.set_round(4);
  task.set_model_version(3);
  task.set_model_round(2);
  task.set_model_arch("logreg");
  task.mutable_config()->set_epochs(1);
  task.mutable_config()->set_batch_size(16);
  task.mutable_config()->set_learning_rate(0.1);
  proto::WeightsToProto(global, task.mutable_weights());
  auto sig = privacy::SignModel(*keys.signing, "flotilla", 3, 2, privacy::ModelDigest(global));
  REQUIRE(sig.ok());
  task.set_model_signature(*sig);

  const Weights before = (*runner)->GetWeights();
  SECTION("one flipped byte in the weights") {
    (*task.mutable_weights()->mutable_data())[100] ^= 0x01;
    auto r = client::RunTrainTask(runner->get(), view, task, keys.signing->public_key, "flotilla");
    CHECK(r.status().code() == StatusCode::kPermissionDenied);
    CHECK((*runner)->GetWeights().data == before.data);
  }
  SECTION("a signature from another key") {
    auto other = privacy::GenerateSigningKeyPair();
    REQUIRE(other.ok());
    task.set_model_signature(*privacy::SignModel(*other, "flotilla", 3, 2, privacy::ModelDigest(global)));
    auto r = client::RunTrainTask(runner->get(), view, task, keys.signing->public_key, "flotilla");
    CHECK(r.status().code() == StatusCode::kPermissionDenied);
    CHECK(r.status().message().find("signature") != std::string::npos);
    CHECK((*runner)->GetWeights().data == before.data);
  }
  SECTION("a replayed signature on another version") {
    task.set_model_version(4);
    auto r = client::RunTrainTask(runner->get(), view, task, keys.signing->public_key, "flotilla");
    CHECK(r.status().code() == StatusCode::kPermissionDenied);
  }
  SECTION("the genuine model is accepted") {
    auto r = client::RunTrainTask(runner->get(), view, task, keys.signing->public_key, "flotilla");
    REQUIRE(r.ok());
    CHECK(r->num_examples() == 64);
  }
}

TEST_CASE("A message one byte over the size limit drops that peer - the round completes",
          "[security][integration]") {
  testing::TestKeys keys(3);  // 0, 1 honest; 2 oversends
  auto config = BaseConfig(keys);
  config.min_clients = 3;
  config.min_updates = 2;
  config.round_deadline_seconds = 3;
  const int64_t limit = 64 * 1024;  // logreg updates are ~31 KiB
  config.socket.max_message_bytes = limit;
  RunningAggregator running(config);

  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(200, 3));
  auto honest = testing::StartHonestClients(keys, running.endpoint(), data, 2, 100, 1);
  auto big = net::ClientSocket::Connect(&running.context, running.endpoint(), keys.ClientSocket(2));
  REQUIRE(big.ok());
  REQUIRE((*big)->Send(Serialize(HelloMsg("big"))).ok());
  REQUIRE(TryReply(big->get(), 5000ms)->has_welcome());
  // Exactly at the limit is still read (and refused as malformed).
  REQUIRE((*big)->Send(std::string(limit, 'x')).ok());
  auto at_limit = TryReply(big->get(), 5000ms);
  REQUIRE(at_limit.has_value());
  CHECK(at_limit->error().code() == wire::ERROR_MALFORMED);
  // One byte over: the connection is dropped, no reply.
  REQUIRE((*big)->Send(std::string(limit + 1, 'x')).ok());
  CHECK_FALSE(TryReply(big->get(), 1000ms).has_value());
  honest->Join();
  running.Stop();
  REQUIRE(running.agg->history().size() == 1);
  CHECK(running.agg->history()[0].completed);
  CHECK(running.agg->history()[0].received == 2);
}
