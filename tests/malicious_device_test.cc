// An enrolled device that lies: poisoned updates, values that overflow the
// merge, a store holding what an earlier version accepted, a device that
// always declines, floods. Each runs against a real aggregator over CURVE
// on loopback; each fails on the code before update validation existed.
#include <catch2/catch.hpp>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "aggregator/server.h"
#include "aggregator/store.h"
#include "client/pull.h"
#include "client/runner.h"
#include "proto/codec.h"
#include "testing/test_aggregator.h"
#include "testing/test_keys.h"
#include "training/dataset.h"
#include "training/model.h"

using namespace flotilla;
using namespace std::chrono_literals;

namespace {

constexpr int kHonest = 3;
constexpr int kPerClient = 500;

struct Data {
  std::shared_ptr<const training::Dataset> train, test;
};

const Data& FashionMnist() {
  static const Data data = [] {
    auto train = training::LoadFashionMnist(training::kDefaultFashionMnistDir, training::Split::kTrain,
                                            kHonest * kPerClient);
    auto test = training::LoadFashionMnist(training::kDefaultFashionMnistDir, training::Split::kTest, 500);
    REQUIRE(train.ok());
    REQUIRE(test.ok());
    return Data{std::make_shared<const training::Dataset>(std::move(train).value()),
                std::make_shared<const training::Dataset>(std::move(test).value())};
  }();
  return data;
}

// Deterministic keys: honest 0..2, the attacker 3 (training seeds and merge
// order follow the keys, so two runs are comparable).
testing::TestKeys DeterministicKeys() {
  testing::TestKeys keys(0);
  for (int i = 0; i <= kHonest; ++i) {
    keys.clients.push_back(std::move(privacy::DeriveCurveKeyPairForSimulation(2000 + i)).value());
  }
  return keys;
}

client::SessionConfig DeviceConfig(const testing::TestKeys& keys, int i, const std::string& endpoint) {
  client::SessionConfig sc;
  sc.endpoint = endpoint;
  sc.name = i < kHonest ? "honest-" + std::to_string(i) : "stolen-device";
  sc.num_examples = kPerClient;
  sc.socket = keys.ClientSocket(i);
  sc.request_timeout = 10s;
  return sc;
}

// An update of the task's layout with every value `fill`.
wire::Update FilledUpdate(const wire::TrainTask& task, float fill, int64_t examples) {
  wire::Update u;
  u.set_round(task.round());
  u.set_model_version(task.model_version());
  u.set_num_examples(examples);
  // Runs on the attacker's thread: no Catch2 assertion here (a bad task
  // aborts through value()).
  Weights w = proto::WeightsFromProto(task.weights(), nullptr).value();
  std::fill(w.data.begin(), w.data.end(), fill);
  proto::WeightsToProto(w, u.mutable_delta());
  return u;
}

struct RunResult {
  double final_accuracy = 0;
  int completed = 0;
  uint64_t rejected_updates = 0;
  std::vector<aggregator::RoundSummary> history;
};

// Three honest devices on Fashion-MNIST (logistic regression) and, when
// `attack` is set, an enrolled attacker that answers every task with it.
RunResult RunFederation(const std::function<std::optional<wire::Update>(const wire::TrainTask&)>& attack,
                        uint32_t rounds = 4) {
  const Data& data = FashionMnist();
  testing::TestKeys keys = DeterministicKeys();
  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.rounds = rounds;
  config.min_clients = attack ? kHonest + 1 : kHonest;
  config.round_deadline_seconds = 20;
  config.learning_rate = 0.05;
  config.finish_grace_seconds = 0.5;
  auto eval_runner = training::ModelRunner::Create("logreg", 1);
  REQUIRE(eval_runner.ok());
  training::ModelRunner* eval_ptr = eval_runner->get();
  std::mutex eval_mu;
  config.endpoint = "tcp://127.0.0.1:*";
  const auto store = testing::TempPath("poison-store");
  config.store_path = store.string();
  config.model_arch = "logreg";
  net::Context context;
  auto agg = aggregator::Aggregator::Create(
      config, &context, (*eval_runner)->GetWeights(),
      [&](const Weights& w) -> StatusOr<aggregator::EvalMetrics> {
        std::lock_guard<std::mutex> lock(eval_mu);
        RETURN_IF_ERROR(eval_ptr->SetWeights(w));
        ASSIGN_OR_RETURN(training::EvalResult r, eval_ptr->Evaluate(training::DataView::All(data.test)));
        return aggregator::EvalMetrics{r.loss, r.accuracy};
      },
      nullptr);
  REQUIRE(agg.ok());
  Status agg_status;
  std::thread server([&] { agg_status = (*agg)->Run(); });
  const std::string endpoint = (*agg)->endpoint();

  testing::Workers devices;
  if (attack) {
    devices.threads.emplace_back([&] {
      auto acked = testing::RunScriptedDevice(DeviceConfig(keys, kHonest, endpoint), attack,
                                              std::chrono::steady_clock::now() + 120s);
      devices.failures.Expect(acked.ok(), "attacker: " + acked.status().ToString());
    });
  }
  for (int i = 0; i < kHonest; ++i) {
    devices.threads.emplace_back([&, i] {
      training::SetTorchThreads(1);
      training::DataView view{data.train, {}};
      for (int k = 0; k < kPerClient; ++k) view.indices.push_back(i * kPerClient + k);
      auto stats =
          client::RunClient(DeviceConfig(keys, i, endpoint), view, keys.signing->public_key, nullptr);
      devices.failures.Expect(stats.ok(), "honest-" + std::to_string(i) + ": " + stats.status().ToString());
    });
  }
  devices.Join();
  server.join();
  REQUIRE(agg_status.ok());
  RunResult out;
  out.history = (*agg)->history();
  for (const auto& r : out.history) {
    if (r.completed) ++out.completed;
    if (r.test_accuracy) out.final_accuracy = *r.test_accuracy;
  }
  out.rejected_updates = (*agg)->rejected_updates();
  agg->reset();
  std::filesystem::remove_all(store);
  return out;
}

}  // namespace

TEST_CASE("A huge-norm update claiming 2^20 examples leaves the accuracy of the clean run",
          "[malicious][integration]") {
  const RunResult clean = RunFederation(nullptr);
  // Norm about 4e6 (the logistic regression has 7,850 parameters), and a
  // claim of 2^20 examples, inside the count limit: the norm bound stops it.
  const RunResult attacked = RunFederation([](const wire::TrainTask& task) {
    return std::optional<wire::Update>(FilledUpdate(task, 45000.0f, int64_t{1} << 20));
  });
  REQUIRE(clean.completed == 4);
  REQUIRE(attacked.completed == 4);
  std::printf(
      "final test accuracy: clean run %.4f, with the huge-norm attacker %.4f (%llu updates refused)\n",
      clean.final_accuracy, attacked.final_accuracy,
      static_cast<unsigned long long>(attacked.rejected_updates));
  CHECK(clean.final_accuracy > 0.6);
  CHECK(std::abs(attacked.final_accuracy - clean.final_accuracy) <= 0.01);
  CHECK(attacked.rejected_updates >= 1);
}

TEST_CASE("A claim of 2^30 examples is refused", "[malicious][integration]") {
  const RunResult attacked = RunFederation(
      [](const wire::TrainTask& task) {
        // A small, plausible delta: only the count is a lie.
        return std::optional<wire::Update>(FilledUpdate(task, 1e-4f, int64_t{1} << 30));
      },
      2);
  CHECK(attacked.completed == 2);
  CHECK(attacked.rejected_updates >= 1);
  CHECK(attacked.final_accuracy > 0.6);
}

TEST_CASE("Near-float-max values are refused and the federation completes", "[malicious][integration]") {
  const RunResult attacked = RunFederation(
      [](const wire::TrainTask& task) {
        return std::optional<wire::Update>(FilledUpdate(task, 0.9f * FLT_MAX, 500));
      },
      3);
  CHECK(attacked.completed == 3);
  CHECK(attacked.rejected_updates >= 1);
  CHECK(attacked.final_accuracy > 0.6);
}

namespace {

// An aggregator driven through Step() (no device sockets): messages from
// enrolled keys arrive as if received.
struct SteppedAggregator {
  net::Context context;
  testing::TestKeys keys{3};
  std::unique_ptr<aggregator::Aggregator> agg;
  std::filesystem::path store = testing::TempPath("stepped");

  explicit SteppedAggregator(aggregator::AggregatorConfig config) {
    keys.Apply(&config);
    config.endpoint = "tcp://127.0.0.1:*";
    config.store_path = store.string();
    config.model_arch = "tiny";
    auto layout = std::make_shared<const Layout>(*Layout::Create({{"fc.weight", {2, 3}}, {"fc.bias", {2}}}));
    Weights initial = Weights::Zeros(layout);
    for (size_t i = 0; i < initial.data.size(); ++i) initial.data[i] = 0.1f * static_cast<float>(i + 1);
    auto created = aggregator::Aggregator::Create(config, &context, initial, nullptr, nullptr);
    INFO(created.status().ToString());
    REQUIRE(created.ok());
    agg = std::move(created).value();
  }
  ~SteppedAggregator() {
    agg.reset();
    std::filesystem::remove_all(store);
  }
  Status Send(int client, wire::Envelope env) {
    return agg->Step(
        {"peer" + std::to_string(client), keys.clients[client].public_z85, proto::SerializeEnvelope(&env)});
  }
  void Hello(int client) {
    wire::Envelope env;
    env.mutable_hello()->set_client_name("c" + std::to_string(client));
    REQUIRE(Send(client, env).ok());
  }
  // Any message lets the aggregator start the next round.
  void Tick() {
    wire::Envelope env;
    env.mutable_status_request();
    REQUIRE(Send(0, env).ok());
  }
  Status Update(int client, float fill) {
    Tick();
    wire::Envelope env;
    wire::Update* u = env.mutable_update();
    u->set_round(agg->history().size() + 1);
    u->set_model_version(agg->model_version());
    u->set_num_examples(10);
    Weights w = agg->global_model();
    std::fill(w.data.begin(), w.data.end(), fill);
    proto::WeightsToProto(w, u->mutable_delta());
    return Send(client, env);
  }
};

}  // namespace

TEST_CASE("A merge that overflows fails its round and keeps the previous model", "[malicious]") {
  aggregator::AggregatorConfig config;
  config.rounds = 3;
  config.min_clients = 2;
  config.validation.norm.mode = aggregator::NormBound::Mode::kOff;  // let the overflow reach the merge
  config.failed_round_backoff_seconds = 0;
  config.max_failed_round_backoff_seconds = 0;
  SteppedAggregator s(config);
  s.Hello(0);
  s.Hello(1);
  // Round 1: both send 0.9 FLT_MAX; the model becomes huge but finite.
  REQUIRE(s.Update(0, 0.9f * FLT_MAX).ok());
  REQUIRE(s.Update(1, 0.9f * FLT_MAX).ok());
  REQUIRE(s.agg->history().size() == 1);
  CHECK(s.agg->history()[0].completed);
  const uint64_t version = s.agg->model_version();
  const std::vector<float> before = s.agg->global_model().data;
  // Round 2: the same again overflows float. The round fails; nothing exits.
  REQUIRE(s.Update(0, 0.9f * FLT_MAX).ok());
  REQUIRE(s.Update(1, 0.9f * FLT_MAX).ok());
  REQUIRE(s.agg->history().size() == 2);
  CHECK_FALSE(s.agg->history()[1].completed);
  CHECK(s.agg->model_version() == version);
  CHECK(s.agg->global_model().data == before);
  CHECK(s.agg->failed_rounds_in_a_row() == 1);
  // Round 3 completes with sane updates.
  REQUIRE(s.Update(0, -0.9f * FLT_MAX).ok());
  REQUIRE(s.Update(1, -0.9f * FLT_MAX).ok());
  REQUIRE(s.agg->history().size() == 3);
  CHECK(s.agg->history()[2].completed);
  CHECK(s.agg->model_version() == version + 1);
  for (float v : s.agg->global_model().data) CHECK(std::isfinite(v));
}

TEST_CASE("A store holding poisoned updates from an earlier version restarts and finishes",
          "[malicious][integration]") {
  const Data& data = FashionMnist();
  testing::TestKeys keys = DeterministicKeys();
  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.rounds = 2;
  config.min_clients = 99;  // first start: only writes model version 1
  config.round_deadline_seconds = 4;
  config.finish_grace_seconds = 0.5;
  const auto store = testing::TempPath("poisoned-store");
  config.store_path = store.string();
  config.endpoint = "tcp://127.0.0.1:*";
  config.model_arch = "logreg";
  auto runner = training::ModelRunner::Create("logreg", 1);
  REQUIRE(runner.ok());
  {
    net::Context context;
    auto first = aggregator::Aggregator::Create(config, &context, (*runner)->GetWeights(), nullptr, nullptr);
    REQUIRE(first.ok());
  }
  // What an earlier version left behind: round 1 running, with the stolen
  // device's update recorded twice over (a huge-norm one claiming 2^30
  // examples, which the old count limit allowed, and a NaN one that the old
  // replay fed straight into the merge).
  {
    auto st = aggregator::Store::Open(store.string());
    REQUIRE(st.ok());
    records::RoundRecord round;
    round.set_round(1);
    round.set_outcome(records::RoundRecord::OUTCOME_RUNNING);
    std::vector<std::string> ids;
    for (int i = 0; i <= kHonest; ++i) ids.push_back(keys.clients[i].public_z85);
    std::sort(ids.begin(), ids.end());
    for (const auto& id : ids) round.add_selected(id);
    round.set_base_model_version(1);
    round.set_started_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count());
    round.set_sampling_rate(1.0);
    REQUIRE((*st)->PutRound(round).ok());
    Weights poison = (*runner)->GetWeights();
    std::fill(poison.data.begin(), poison.data.end(), 45000.0f);
    records::UpdateRecord huge;
    huge.set_round(1);
    huge.set_client_id(keys.clients[kHonest].public_z85);
    huge.set_num_examples(int64_t{1} << 30);
    proto::WeightsToProto(poison, huge.mutable_delta());
    REQUIRE((*st)->PutUpdate(huge).ok());
    std::fill(poison.data.begin(), poison.data.end(), NAN);
    records::UpdateRecord nan = huge;
    nan.set_client_id(keys.clients[0].public_z85);  // as if from a device whose key was stolen earlier
    nan.set_num_examples(100);
    proto::WeightsToProto(poison, nan.mutable_delta());
    REQUIRE((*st)->PutUpdate(nan).ok());
  }
  config.min_clients = kHonest;
  net::Context context;
  auto agg = aggregator::Aggregator::Create(config, &context, (*runner)->GetWeights(), nullptr, nullptr);
  INFO(agg.status().ToString());
  REQUIRE(agg.ok());
  Status agg_status;
  std::thread server([&] { agg_status = (*agg)->Run(); });
  testing::StartHonestClients(keys, (*agg)->endpoint(), data.train, kHonest, kPerClient)->Join();
  server.join();
  REQUIRE(agg_status.ok());
  const auto& history = (*agg)->history();
  REQUIRE(history.size() == 2);
  CHECK(history[0].completed);
  CHECK(history[1].completed);
  for (float v : (*agg)->global_model().data) REQUIRE(std::isfinite(v));
  agg->reset();
  auto st = aggregator::Store::OpenReadOnly(store.string());
  REQUIRE(st.ok());
  auto quarantined = (*st)->ListQuarantine();
  REQUIRE(quarantined.ok());
  REQUIRE(quarantined->size() == 2);
  for (const auto& q : *quarantined) {
    CHECK(q.family() == "updates");
    CHECK(q.reason().find("failed validation on replay") != std::string::npos);
    records::UpdateRecord u;
    CHECK(u.ParseFromString(q.value()));  // kept whole, for an operator to look at
  }
  st->reset();
  std::filesystem::remove_all(store);
}

TEST_CASE("A device that always declines causes a few failed rounds, not a storm",
          "[malicious][integration]") {
  testing::TestKeys keys = DeterministicKeys();
  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.rounds = 100;
  config.min_clients = 1;
  testing::RunningAggregator running(config);
  const auto start = std::chrono::steady_clock::now();
  auto declined = testing::RunScriptedDevice(
      DeviceConfig(keys, kHonest, running.endpoint()),
      [](const wire::TrainTask&) { return std::optional<wire::Update>(); }, start + 8s);
  CHECK(declined.ok());
  // Status shows the back-off and the paused device.
  client::SessionConfig viewer = DeviceConfig(keys, 0, running.endpoint());
  auto status = client::QueryStatus(viewer);
  REQUIRE(status.ok());
  running.Stop();
  const auto& history = running.agg->history();
  int failed = 0;
  for (const auto& r : history) failed += r.completed ? 0 : 1;
  INFO("failed rounds in 8 s: " << failed);
  // Back-off 1, 2, 4 s and a 30 s pause after the third decline: 3 failed
  // rounds in 8 s (the code before made about 1,500).
  CHECK(failed >= 2);
  CHECK(failed <= 4);
  CHECK(status->failed_rounds_in_a_row() == static_cast<uint32_t>(failed));
  CHECK(status->paused_clients() == 1);
}

TEST_CASE("Error replies carry the request id - the version error is sent", "[malicious][integration]") {
  testing::TestKeys keys(1);
  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.min_clients = 5;
  testing::RunningAggregator running(config);
  net::Context context;
  auto s = net::ClientSocket::Connect(&context, running.endpoint(), keys.ClientSocket(0));
  REQUIRE(s.ok());
  auto exchange = [&](const std::string& bytes) {
    REQUIRE((*s)->Send(bytes).ok());
    auto reply = (*s)->Receive(5s);
    REQUIRE(reply.ok());
    REQUIRE(reply->has_value());
    auto env = proto::ParseEnvelope((*reply)->data(), (*reply)->size());
    REQUIRE(env.ok());
    REQUIRE(env->has_error());
    return *env;
  };
  {  // over a string bound
    wire::Envelope env;
    env.set_request_id(77);
    env.mutable_hello()->set_client_name(std::string(5000, 'x'));
    const wire::Envelope r = exchange(proto::SerializeEnvelope(&env));
    CHECK(r.request_id() == 77);
    CHECK(r.error().code() == wire::ERROR_MALFORMED);
  }
  {  // another protocol version
    wire::Envelope env;
    env.set_request_id(78);
    env.mutable_task_request();
    env.set_version(static_cast<wire::ProtocolVersion>(9));
    const wire::Envelope r = exchange(env.SerializeAsString());
    CHECK(r.request_id() == 78);
    CHECK(r.error().code() == wire::ERROR_VERSION);
  }
  {  // truncated after the request id
    wire::Envelope env;
    env.set_request_id(79);
    env.mutable_hello()->set_client_name("truncated");
    std::string bytes = proto::SerializeEnvelope(&env);
    const wire::Envelope r = exchange(bytes.substr(0, bytes.size() - 3));
    CHECK(r.request_id() == 79);
    CHECK(r.error().code() == wire::ERROR_MALFORMED);
  }
  {  // no Hello yet
    wire::Envelope env;
    env.set_request_id(80);
    env.mutable_task_request();
    const wire::Envelope r = exchange(proto::SerializeEnvelope(&env));
    CHECK(r.request_id() == 80);
    CHECK(r.error().code() == wire::ERROR_NOT_REGISTERED);
  }
}

TEST_CASE("A flooding device is rate limited while another is served", "[malicious][integration]") {
  testing::TestKeys keys(2);
  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.min_clients = 5;
  config.limits.messages_per_second = 5;
  config.limits.message_burst = 10;
  testing::RunningAggregator running(config);
  net::Context context;
  auto flood = net::ClientSocket::Connect(&context, running.endpoint(), keys.ClientSocket(0));
  REQUIRE(flood.ok());
  constexpr int kSent = 60;
  for (int i = 0; i < kSent; ++i) {
    wire::Envelope env;
    env.set_request_id(1000 + i);
    env.mutable_status_request();
    REQUIRE((*flood)->Send(proto::SerializeEnvelope(&env)).ok());
  }
  int served = 0, limited = 0;
  uint32_t retry_ms = 0;
  for (int i = 0; i < kSent; ++i) {
    auto reply = (*flood)->Receive(5s);
    REQUIRE(reply.ok());
    REQUIRE(reply->has_value());
    auto env = proto::ParseEnvelope((*reply)->data(), (*reply)->size());
    REQUIRE(env.ok());
    CHECK(env->request_id() == static_cast<uint64_t>(1000 + i));
    if (env->has_status_reply()) ++served;
    if (env->has_error() && env->error().code() == wire::ERROR_RATE_LIMITED) {
      ++limited;
      retry_ms = env->error().retry_ms();
    }
  }
  CHECK(served >= 10);
  CHECK(served <= 12);
  CHECK(limited == kSent - served);
  CHECK(retry_ms > 0);
  // Another device is not affected.
  client::SessionConfig other;
  other.endpoint = running.endpoint();
  other.name = "other";
  other.socket = keys.ClientSocket(1);
  auto status = client::QueryStatus(other);
  CHECK(status.ok());
  CHECK(running.agg->rate_limited_messages() == static_cast<uint64_t>(limited));
}
