// Secure aggregation end to end: real aggregator, real sessions over CURVE
// on loopback, real training on Fashion-MNIST.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <thread>

#include "aggregator/server.h"
#include "aggregator/store.h"
#include "client/pull.h"
#include "client/runner.h"
#include "client/secure_update.h"
#include "net/transport.h"
#include "proto/codec.h"
#include "sim/simulation.h"
#include "testing/test_aggregator.h"
#include "testing/test_keys.h"
#include "testing/test_sim.h"
#include "training/dataset.h"

using namespace flotilla;

namespace {

using testing::TempPath;

sim::SimConfig SecureSim(const std::string& out) { return testing::SmallSimConfig(out, 6, 6000, 2000, 11); }

std::shared_ptr<const training::Dataset> TrainData(int64_t limit) {
  auto d = training::LoadFashionMnist("/usr/share/datasets/fashion-mnist", training::Split::kTrain, limit);
  REQUIRE(d.ok());
  return std::make_shared<const training::Dataset>(std::move(d).value());
}

// Client i of a secure federation: identity from its CURVE key, optional
// dropout at `drop_stage` in rounds up to `fault_rounds`.
client::SessionConfig SecureClient(const testing::TestKeys& keys, const std::string& endpoint, int i,
                                   int drop_stage = -1, uint32_t fault_rounds = 0) {
  client::SessionConfig sc;
  sc.endpoint = endpoint;
  sc.name = "secure-" + std::to_string(i);
  sc.num_examples = 200;
  sc.socket = keys.ClientSocket(i);
  sc.request_timeout = std::chrono::seconds(5);
  auto identity = privacy::DeriveSecAggIdentity(keys.clients[i]);
  REQUIRE(identity.ok());
  sc.secagg_identity = std::make_shared<const privacy::SigningKeyPair>(std::move(identity).value());
  sc.secagg_drop_stage = drop_stage;
  sc.secagg_fault_last_round = fault_rounds;
  return sc;
}

struct Fleet {
  std::vector<std::thread> threads;
  std::vector<client::ClientStats> stats;
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<int> ended{0};

  Fleet(std::vector<client::SessionConfig> configs, std::shared_ptr<const training::Dataset> data,
        std::vector<unsigned char> model_key)
      : stats(configs.size()) {
    for (size_t i = 0; i < configs.size(); ++i) {
      threads.emplace_back([this, i, sc = configs[i], data, model_key] {
        training::DataView view{data, {}};
        for (int k = 0; k < 200; ++k) view.indices.push_back(static_cast<int64_t>(i) * 200 + k);
        auto s = client::RunClient(sc, view, model_key, &stop);
        if (s.ok()) {
          stats[i] = *s;
        } else {
          ++failures;
        }
        ++ended;
      });
    }
  }
  void Join() {
    for (auto& t : threads) {
      if (t.joinable()) t.join();
    }
  }
  // Waits for the aggregator to end its federation by itself, then gives
  // the devices a few seconds to hear so: a device whose retry fell after
  // the aggregator's finish grace would otherwise wait for it forever.
  void JoinAfter(testing::RunningAggregator& agg) {
    if (agg.thread.joinable()) agg.thread.join();
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < until && ended.load() < static_cast<int>(threads.size()))
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    stop = true;
    Join();
  }
  ~Fleet() {
    stop = true;
    Join();
  }
};

aggregator::AggregatorConfig SecureConfig(const testing::TestKeys& keys, uint32_t rounds, int clients) {
  aggregator::AggregatorConfig c;
  keys.Apply(&c);
  c.rounds = rounds;
  c.min_clients = clients;
  c.epochs = 1;
  c.learning_rate = 0.05;
  c.round_deadline_seconds = 60;
  c.secagg.enabled = true;
  c.secagg.graph = privacy::SecAggGraph::kComplete;
  c.secagg.stage_timeout_seconds = 2;
  return c;
}

}  // namespace

TEST_CASE("Secure aggregation gives the same model as plaintext FedAvg up to quantization",
          "[integration][secagg]") {
  // Equal-sized IID shards: FedAvg's example weights are equal, so the
  // secure (unweighted) mean must match the plaintext mean. A wrong mask,
  // share or decoding would give noise, not a model within 1e-3 in loss.
  const auto dir = TempPath("secure-vs-plain");
  sim::SimConfig plain = SecureSim((dir / "plain").string());
  sim::SimConfig secure = SecureSim((dir / "secure").string());
  secure.aggregator.secagg.enabled = true;
  secure.aggregator.secagg.clip_norm = 1000;  // no clipping: only quantization differs
  auto a = sim::RunSimulation(plain);
  REQUIRE(a.ok());
  auto b = sim::RunSimulation(secure);
  INFO(b.status().ToString());
  REQUIRE(b.ok());
  REQUIRE(a->rounds.size() == 3);
  REQUIRE(b->rounds.size() == 3);
  for (size_t r = 0; r < 3; ++r) {
    INFO("round " << r + 1);
    CHECK(b->rounds[r].completed);
    CHECK(b->rounds[r].received == 6);
    CHECK(std::isnan(b->rounds[r].mean_train_loss));  // no per-device loss leaves a device
    CHECK(std::fabs(*a->rounds[r].test_loss - *b->rounds[r].test_loss) < 1e-3);
    CHECK(std::fabs(*a->rounds[r].test_accuracy - *b->rounds[r].test_accuracy) < 2e-3);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("Secure aggregation survives a dropout at every stage", "[integration][secagg]") {
  // 8 clients, complete graph, t = 5. Client 0 vanishes before sharing keys,
  // client 1 before its masked input, client 2 before unmasking: U1 = 8,
  // U2 = 7, U3 = 6, U4 = 5 >= t. The sum holds exactly the 6 in U3.
  testing::TestKeys keys(8);
  testing::RunningAggregator agg(SecureConfig(keys, 2, 8));
  std::vector<client::SessionConfig> configs;
  for (int i = 0; i < 8; ++i) configs.push_back(SecureClient(keys, agg.endpoint(), i, i < 3 ? i + 1 : -1));
  Fleet fleet(configs, TrainData(1600), keys.signing->public_key);
  fleet.JoinAfter(agg);
  agg.Stop();
  REQUIRE(agg.status.ok());
  CHECK(fleet.failures == 0);
  const auto& history = agg.agg->history();
  REQUIRE(history.size() == 2);
  for (const auto& r : history) {
    CHECK(r.completed);
    CHECK(r.selected == 8);
    CHECK(r.received == 6);
  }
  CHECK(agg.agg->model_version() == 3);
  // The dropped-at-stage-1 and -2 clients never completed a round.
  CHECK(fleet.stats[0].updates_acked == 0);
  CHECK(fleet.stats[1].updates_acked == 0);
  CHECK(fleet.stats[3].updates_acked == 2);
}

TEST_CASE("Too many dropouts abort the secure round cleanly and the next round starts fresh",
          "[integration][secagg]") {
  // 5 clients, t = 3 (complete graph). In round 1, three clients vanish
  // before their masked input: only 2 < t remain, the round fails without
  // a model, and round 2 (new keys, everyone present) completes.
  testing::TestKeys keys(5);
  testing::RunningAggregator agg(SecureConfig(keys, 1, 5));
  std::vector<client::SessionConfig> configs;
  for (int i = 0; i < 5; ++i) configs.push_back(SecureClient(keys, agg.endpoint(), i, i < 3 ? 2 : -1, 1));
  Fleet fleet(configs, TrainData(1000), keys.signing->public_key);
  fleet.JoinAfter(agg);
  agg.Stop();
  REQUIRE(agg.status.ok());
  const auto& history = agg.agg->history();
  REQUIRE(history.size() == 2);
  CHECK_FALSE(history[0].completed);
  CHECK(history[0].received == 0);
  CHECK(history[1].completed);
  CHECK(history[1].received == 5);
  CHECK(agg.agg->model_version() == 2);  // only round 2 produced a model
  auto store = aggregator::Store::OpenReadOnly(agg.store.string());
  REQUIRE(store.ok());
  auto r1 = (*store)->GetRound(1);
  REQUIRE(r1.ok());
  REQUIRE(r1->has_value());
  CHECK(r1->value().outcome() == records::RoundRecord::OUTCOME_FAILED);
  CHECK(r1->value().secure_aggregation());
  CHECK(r1->value().note().find("secure aggregation aborted") != std::string::npos);
}

TEST_CASE("A secure round interrupted by an aggregator restart is not resumed - a fresh round runs",
          "[integration][secagg]") {
  testing::TestKeys keys(4);
  const auto store_path = TempPath("secure-restart");
  aggregator::AggregatorConfig config = SecureConfig(keys, 1, 4);
  config.store_path = store_path.string();
  config.endpoint = "tcp://127.0.0.1:*";
  config.model_arch = "logreg";
  // A long stage timeout: client 3 vanishes before its masked input, so the
  // round sits in the masked-input stage until we stop the aggregator.
  config.secagg.stage_timeout_seconds = 600;
  auto runner = training::ModelRunner::Create("logreg", 1);
  REQUIRE(runner.ok());
  const Weights initial = (*runner)->GetWeights();
  std::vector<client::SessionConfig> configs;
  net::Context context;
  {
    auto created = aggregator::Aggregator::Create(config, &context, initial, nullptr, nullptr);
    REQUIRE(created.ok());
    auto agg = std::move(created).value();
    const std::string endpoint = agg->endpoint();
    Status status;
    std::thread thread([&] { status = agg->Run(); });
    for (int i = 0; i < 4; ++i) configs.push_back(SecureClient(keys, endpoint, i, i == 3 ? 2 : -1, 1));
    {
      Fleet fleet(configs, TrainData(800), keys.signing->public_key);
      // Wait until the round sits in the masked-input stage (client 3 never
      // sends its input), as the status query reports it.
      client::SessionConfig probe = SecureClient(keys, endpoint, 0);
      std::string stage;
      uint32_t remaining = 0;
      for (int i = 0; i < 100 && stage != "masked-input"; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        auto reply = client::QueryStatus(probe);
        REQUIRE(reply.ok());
        stage = reply->secagg_stage();
        remaining = reply->secagg_remaining();
      }
      CHECK(stage == "masked-input");
      CHECK(remaining == 4);  // U2: all four shared keys; client 3 then went silent
      agg->RequestStop();
      thread.join();
      REQUIRE(status.ok());
      CHECK(agg->history().empty());
      fleet.stop = true;
    }
    agg.reset();
  }
  {
    auto store = aggregator::Store::OpenReadOnly(config.store_path);
    REQUIRE(store.ok());
    auto r1 = (*store)->GetRound(1);
    REQUIRE(r1.ok());
    REQUIRE(r1->has_value());
    CHECK(r1->value().outcome() == records::RoundRecord::OUTCOME_RUNNING);
  }
  // Restart on the same store (a new port; the clients get it fresh).
  auto created = aggregator::Aggregator::Create(config, &context, initial, nullptr, nullptr);
  REQUIRE(created.ok());
  auto agg = std::move(created).value();
  for (auto& c : configs) c.endpoint = agg->endpoint();
  Status status;
  std::thread thread([&] { status = agg->Run(); });
  {
    Fleet fleet(configs, TrainData(800), keys.signing->public_key);
    fleet.Join();
  }
  thread.join();
  REQUIRE(status.ok());
  REQUIRE(agg->history().size() == 1);
  CHECK(agg->history()[0].round == 2);  // round 1 was not resumed
  CHECK(agg->history()[0].completed);
  CHECK(agg->history()[0].received == 4);
  agg.reset();
  auto store = aggregator::Store::OpenReadOnly(config.store_path);
  REQUIRE(store.ok());
  auto r1 = (*store)->GetRound(1);
  REQUIRE(r1.ok());
  CHECK(r1->value().outcome() == records::RoundRecord::OUTCOME_FAILED);
  CHECK(r1->value().note().find("restart") != std::string::npos);
  std::filesystem::remove_all(store_path);
}

TEST_CASE("Under secure aggregation plaintext updates and another index's messages are refused",
          "[integration][secagg]") {
  testing::TestKeys keys(4);
  aggregator::AggregatorConfig config = SecureConfig(keys, 1, 4);
  testing::RunningAggregator agg(config);
  // Three honest clients; client 3 is the attacker, enrolled but hostile.
  std::vector<client::SessionConfig> configs;
  for (int i = 0; i < 3; ++i) configs.push_back(SecureClient(keys, agg.endpoint(), i));
  net::Context ctx;
  auto raw = net::ClientSocket::Connect(&ctx, agg.endpoint(), keys.ClientSocket(3));
  REQUIRE(raw.ok());
  auto identity = privacy::DeriveSecAggIdentity(keys.clients[3]);
  REQUIRE(identity.ok());
  auto send = [&](wire::Envelope env) { REQUIRE((*raw)->Send(proto::SerializeEnvelope(&env)).ok()); };
  auto read = [&]() {
    auto bytes = (*raw)->Receive(std::chrono::seconds(30));
    REQUIRE(bytes.ok());
    REQUIRE(bytes->has_value());
    auto env = proto::ParseEnvelope(bytes->value().data(), bytes->value().size());
    REQUIRE(env.ok());
    return *env;
  };
  wire::Envelope hello;
  hello.mutable_hello()->set_client_name("attacker");
  hello.mutable_hello()->set_num_examples(10);
  hello.mutable_hello()->set_secagg_identity_key(identity->public_key.data(), identity->public_key.size());
  send(hello);
  CHECK(read().has_welcome());
  wire::Envelope ask;
  ask.set_request_id(2);
  ask.mutable_task_request();
  send(ask);
  Fleet fleet(configs, TrainData(600), keys.signing->public_key);
  wire::Envelope task = read();
  REQUIRE(task.has_train_task());
  REQUIRE(task.train_task().has_secagg());
  const uint32_t round = task.train_task().round();
  const uint32_t mine = task.train_task().secagg().index();

  // A plaintext update is refused outright.
  wire::Envelope update;
  update.set_request_id(3);
  update.mutable_update()->set_round(round);
  update.mutable_update()->set_model_version(task.train_task().model_version());
  update.mutable_update()->set_num_examples(10);
  *update.mutable_update()->mutable_delta() = task.train_task().weights();
  send(update);
  wire::Envelope refused = read();
  REQUIRE(refused.has_error());
  CHECK(refused.error().code() == wire::ERROR_UNEXPECTED);

  // An advertisement claiming another client's index is refused.
  privacy::AdvertiseKeysMessage fake;
  fake.sender = (mine + 1) % 4;
  wire::Envelope adv;
  adv.set_request_id(4);
  adv.mutable_secagg()->set_round(round);
  adv.mutable_secagg()->set_stage(0);
  adv.mutable_secagg()->set_payload(fake.Serialize());
  send(adv);
  wire::Envelope denied = read();
  REQUIRE(denied.has_error());
  CHECK(denied.error().code() == wire::ERROR_PERMISSION_DENIED);
  // Garbage in a stage payload is a clear error, not a crash.
  adv.set_request_id(5);
  adv.mutable_secagg()->set_payload("\x41\x01garbage");
  send(adv);
  wire::Envelope bad = read();
  REQUIRE(bad.has_error());
  CHECK(bad.error().code() == wire::ERROR_BAD_UPDATE);
  // The attacker leaves (declines); the others finish the round without it.
  wire::Envelope decline;
  decline.set_request_id(6);
  decline.mutable_decline()->set_round(round);
  decline.mutable_decline()->set_reason("leaving");
  send(decline);
  CHECK(read().has_ack());
  fleet.JoinAfter(agg);
  agg.Stop();
  REQUIRE(agg.status.ok());
  REQUIRE(agg.agg->history().size() == 1);
  CHECK(agg.agg->history()[0].completed);
  CHECK(agg.agg->history()[0].received == 3);
}

TEST_CASE("Secure aggregation with distributed DP trains and charges the noise the survivors added",
          "[integration][secagg][dp]") {
  const auto dir = TempPath("secure-dp");
  sim::SimConfig c = SecureSim(dir.string());
  c.clients = 8;
  c.train_limit = 8000;
  c.aggregator.rounds = 4;
  c.aggregator.secagg.enabled = true;
  c.aggregator.secagg.graph = privacy::SecAggGraph::kComplete;  // t = 5 of 8
  c.aggregator.secagg.stage_timeout_seconds = 1;
  c.aggregator.dp.mode = aggregator::DpConfig::Mode::kClientDistributed;
  c.aggregator.model_arch = "logreg";  // 7,850 parameters: the noise norm stays near the clip norm
  c.aggregator.learning_rate = 0.1;
  c.aggregator.dp.noise_multiplier = 0.1;
  c.aggregator.dp.clip_norm = 1.0;
  c.aggregator.dp.epsilon_budget = 1000;
  c.secagg_dropout = 0.2;  // deterministic in the seed: some rounds lose devices mid-protocol
  auto result = sim::RunSimulation(c);
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  int completed = 0, with_dropouts = 0;
  for (const auto& r : result->rounds) {
    if (!r.completed) continue;
    ++completed;
    if (r.received < r.selected) ++with_dropouts;
    REQUIRE(r.epsilon.has_value());
  }
  CHECK(completed == 4);
  CHECK(with_dropouts >= 1);
  CHECK(result->final_accuracy > 0.6);  // a wrong unmasking or decoding gives ~0.1
  auto store = aggregator::Store::OpenReadOnly((dir / "store").string());
  REQUIRE(store.ok());
  auto ledger = (*store)->ListLedger();
  auto rounds = (*store)->ListRounds();
  REQUIRE(ledger.ok());
  REQUIRE(rounds.ok());
  REQUIRE(ledger->size() == 4);
  for (const auto& e : *ledger) {
    for (const auto& r : *rounds) {
      if (r.round() != e.round()) continue;
      INFO("round " << r.round() << ": " << r.received_size() << " of " << r.selected_size());
      CHECK(r.secure_aggregation());
      CHECK(r.secagg_survivors() == static_cast<uint32_t>(r.received_size()));
      const double expected = 0.1 * std::sqrt(static_cast<double>(r.received_size()) / r.selected_size());
      CHECK(e.noise_multiplier() == Approx(expected).epsilon(1e-9));
    }
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("A device refuses identity keys its enrolment authority did not certify", "[integration][secagg]") {
  // What a malicious aggregator would do: hand the device a key it holds
  // itself in place of a peer's. With the authority's key the device refuses.
  auto authority = privacy::GenerateSigningKeyPair();
  REQUIRE(authority.ok());
  std::vector<privacy::SigningKeyPair> identities;
  privacy::SecAggParams p;
  p.num_clients = 3;
  p.threshold = 2;
  p.vector_length = 16;
  p.round = 5;
  wire::SecAggSetup setup;
  setup.set_params(p.Serialize());
  setup.set_index(0);
  setup.set_clip_norm(1.0);
  setup.set_scale(privacy::MaxSafeScale(1.0, 32, 3));
  for (int i = 0; i < 3; ++i) {
    auto curve = privacy::GenerateCurveKeyPair();
    REQUIRE(curve.ok());
    auto identity = privacy::DeriveSecAggIdentity(*curve);
    REQUIRE(identity.ok());
    setup.add_identity_keys(identity->public_key.data(), identity->public_key.size());
    setup.add_identity_certs(*privacy::CertifySecAggIdentity(*authority, identity->public_key));
    identities.push_back(std::move(identity).value());
  }
  const std::vector<float> delta(16, 0.01f);
  CHECK(client::SecureUpdate::Create(setup, 5, identities[0], delta, authority->public_key).ok());
  // Without the authority's key the same setup is taken on the aggregator's word.
  CHECK(client::SecureUpdate::Create(setup, 5, identities[0], delta).ok());

  wire::SecAggSetup substituted = setup;
  auto impostor = privacy::GenerateSigningKeyPair();
  REQUIRE(impostor.ok());
  substituted.set_identity_keys(2, std::string(impostor->public_key.begin(), impostor->public_key.end()));
  auto refused = client::SecureUpdate::Create(substituted, 5, identities[0], delta, authority->public_key);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().code() == StatusCode::kPermissionDenied);
  CHECK(refused.status().message().find("substituting") != std::string::npos);

  wire::SecAggSetup uncertified = setup;
  uncertified.clear_identity_certs();
  CHECK(client::SecureUpdate::Create(uncertified, 5, identities[0], delta, authority->public_key)
            .status()
            .code() == StatusCode::kPermissionDenied);
}
