// 10,000 random and mutated messages against a real aggregator while an
// honest federation runs: the aggregator keeps serving, and the federation
// ends with exactly the model it reaches without the noise.
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <thread>

#include "aggregator/server.h"
#include "client/runner.h"
#include "core/rng.h"
#include "proto/codec.h"
#include "testing/test_aggregator.h"
#include "testing/test_keys.h"
#include "training/dataset.h"
#include "training/model.h"

using namespace flotilla;
using namespace std::chrono_literals;

namespace {

constexpr int kHonest = 3;
constexpr int kHostileMessages = 10000;

// The mutated corpus. Every message is one the aggregator must refuse:
// structurally valid updates always carry a fault (NaN/Inf everywhere, a
// wrong layout, a round that is not open).
class Mutator {
 public:
  explicit Mutator(std::shared_ptr<const Layout> layout) : layout_(std::move(layout)), rng_(12345) {}

  std::string Next(uint32_t round, uint64_t version) {
    wire::Envelope env;
    switch (rng_.UniformInt(11)) {
      case 0: {  // random bytes
        std::string s(rng_.UniformInt(2048), '\0');
        for (auto& c : s) c = static_cast<char>(rng_.NextU64());
        return s;
      }
      case 1: {  // a truncated update
        std::string full = Serialize(PoisonedUpdate(round, version, NAN));
        return full.substr(0, rng_.UniformInt(full.size()));
      }
      case 2: {  // byte flips in an all-NaN update
        std::string s = Serialize(PoisonedUpdate(round, version, NAN));
        for (int i = 0, n = 1 + static_cast<int>(rng_.UniformInt(8)); i < n; ++i) {
          s[rng_.UniformInt(s.size())] ^= static_cast<char>(1 + rng_.UniformInt(255));
        }
        return s;
      }
      case 3: {  // server-to-client messages sent the wrong way
        switch (rng_.UniformInt(5)) {
          case 0:
            env.mutable_welcome()->set_federation("x");
            break;
          case 1:
            env.mutable_train_task()->set_round(round);
            break;
          case 2:
            env.mutable_ack()->set_round(round);
            break;
          case 3:
            env.mutable_finished()->set_rounds_completed(99);
            break;
          default:
            env.mutable_wait()->set_retry_ms(1);
            break;
        }
        return Serialize(env);
      }
      case 4: {  // huge or hostile declared shapes
        env = PoisonedUpdate(round, version, 0.0f);
        auto* spec = env.mutable_update()->mutable_delta()->mutable_layout(0);
        switch (rng_.UniformInt(3)) {
          case 0:
            spec->set_shape(0, int64_t{1} << 40);
            break;
          case 1:
            spec->set_shape(0, -7);
            break;
          default:
            for (int i = 0; i < 64; ++i) spec->add_shape(1 << 20);
            break;
        }
        return Serialize(env);
      }
      case 5:  // infinities everywhere
        return Serialize(PoisonedUpdate(round, version, rng_.UniformInt(2) ? INFINITY : -INFINITY));
      case 6: {  // finite, well-shaped, but for a round that is not open
        env = PoisonedUpdate(round + 1000 + static_cast<uint32_t>(rng_.UniformInt(1000)), version, 0.5f);
        return Serialize(env);
      }
      case 7: {  // payload one float short
        env = PoisonedUpdate(round, version, 0.0f);
        env.mutable_update()->mutable_delta()->mutable_data()->resize(env.update().delta().data().size() - 4);
        return Serialize(env);
      }
      case 8: {  // metric flood / NaN metric / bad example counts
        env = PoisonedUpdate(round, version, NAN);
        auto* m = env.mutable_update()->mutable_metrics();
        for (int i = 0; i < 100; ++i) (*m)["m" + std::to_string(i)] = i;
        if (rng_.UniformInt(2)) env.mutable_update()->set_num_examples(-5);
        return Serialize(env);
      }
      case 9: {  // oversized strings and other versions
        env.mutable_hello()->set_client_name(std::string(5000 + rng_.UniformInt(5000), 'h'));
        std::string s = Serialize(env);
        if (rng_.UniformInt(2)) {
          env.set_version(static_cast<wire::ProtocolVersion>(2 + rng_.UniformInt(100)));
          s = env.SerializeAsString();
        }
        return s;
      }
      default: {  // an empty envelope or an empty frame
        return rng_.UniformInt(2) ? std::string() : Serialize(env);
      }
    }
  }

 private:
  static std::string Serialize(wire::Envelope env) { return proto::SerializeEnvelope(&env); }

  wire::Envelope PoisonedUpdate(uint32_t round, uint64_t version, float fill) {
    wire::Envelope env;
    auto* u = env.mutable_update();
    u->set_round(round);
    u->set_model_version(version);
    u->set_num_examples(1 + static_cast<int64_t>(rng_.UniformInt(1000)));
    Weights w = Weights::Zeros(layout_);
    std::fill(w.data.begin(), w.data.end(), fill);
    proto::WeightsToProto(w, u->mutable_delta());
    return env;
  }

  std::shared_ptr<const Layout> layout_;
  Rng rng_;
};

struct Outcome {
  std::vector<float> final_model;
  std::vector<double> accuracies;
  uint64_t handled = 0, rejected = 0;
  int hostile_sent = 0;
};

Outcome RunFederation(bool hostile) {
  const auto store = std::filesystem::temp_directory_path() /
                     ("flotilla-hostile-" + std::to_string(::getpid()) + (hostile ? "-h" : "-b"));
  std::filesystem::remove_all(store);
  testing::TestKeys keys(0);
  // Deterministic client keys: the merge order and training seeds follow them.
  for (int i = 0; i <= kHonest; ++i)
    keys.clients.push_back(std::move(privacy::DeriveCurveKeyPairForSimulation(1000 + i)).value());

  auto train = training::LoadFashionMnist(training::kDefaultFashionMnistDir, training::Split::kTrain, 1500);
  auto test = training::LoadFashionMnist(training::kDefaultFashionMnistDir, training::Split::kTest, 500);
  REQUIRE(train.ok());
  REQUIRE(test.ok());
  auto train_set = std::make_shared<const training::Dataset>(std::move(train).value());
  auto test_set = std::make_shared<const training::Dataset>(std::move(test).value());

  aggregator::AggregatorConfig config;
  keys.Apply(&config);
  config.endpoint = "tcp://127.0.0.1:*";
  config.store_path = store.string();
  config.model_arch = "logreg";
  config.rounds = 3;
  config.min_clients = kHonest + 1;  // the hostile peer is an enrolled (stolen) device
  config.min_updates = kHonest;
  config.round_deadline_seconds = 3;
  config.finish_grace_seconds = 0.5;
  config.learning_rate = 0.05;
  // The flood must reach the round engine's parsing and checks, not stop at
  // the per-device rate limits (tested on their own in malicious_device_test).
  config.limits.messages_per_second = 0;
  config.limits.bytes_per_second = 0;
  // Serve until the flood is over: rounds end as soon as the honest devices
  // report (the stolen device's refused updates take it out of the round),
  // which may be before the attacker has sent everything.
  config.keep_serving = true;
  auto eval_runner = training::ModelRunner::Create("logreg", 1);
  REQUIRE(eval_runner.ok());
  training::ModelRunner* eval_ptr = eval_runner->get();
  aggregator::EvalFn eval = [&](const Weights& w) -> StatusOr<aggregator::EvalMetrics> {
    RETURN_IF_ERROR(eval_ptr->SetWeights(w));
    ASSIGN_OR_RETURN(training::EvalResult r, eval_ptr->Evaluate(training::DataView::All(test_set)));
    return aggregator::EvalMetrics{r.loss, r.accuracy};
  };
  net::Context context;
  auto agg = aggregator::Aggregator::Create(config, &context, (*eval_runner)->GetWeights(), eval, nullptr);
  REQUIRE(agg.ok());
  Status agg_status;
  std::thread server([&] {
    training::SetTorchThreads(1);
    agg_status = (*agg)->Run();
  });
  const std::string endpoint = (*agg)->endpoint();

  Outcome out;
  // The hostile peer registers first (so that every run samples the same
  // clients), then floods while the honest fleet trains.
  // (Registration on this thread; the flood on its own, which asserts
  // nothing: Catch2's assertions are not thread-safe.)
  auto s = net::ClientSocket::Connect(&context, endpoint, keys.ClientSocket(kHonest));
  REQUIRE(s.ok());
  wire::Envelope hello;
  hello.mutable_hello()->set_client_name("stolen-device");
  REQUIRE((*s)->Send(proto::SerializeEnvelope(&hello)).ok());
  auto welcome = (*s)->Receive(10s);
  REQUIRE(welcome.ok());
  REQUIRE(welcome->has_value());
  std::thread attacker([&] {
    if (!hostile) return;
    Mutator mutator((*eval_runner)->layout());
    for (int i = 0; i < kHostileMessages; ++i) {
      const std::string msg =
          mutator.Next(1 + static_cast<uint32_t>(i % 3), 1 + static_cast<uint64_t>(i % 3));
      while (!(*s)->Send(msg).ok()) {
        (void)(*s)->Receive(1ms);  // queue full: drain replies, retry
      }
      ++out.hostile_sent;
      while (true) {  // drain replies as we go
        auto r = (*s)->Receive(0ms);
        if (!r.ok() || !r->has_value()) break;
      }
    }
  });
  testing::Workers honest;
  for (int i = 0; i < kHonest; ++i) {
    honest.threads.emplace_back([&, i] {
      training::SetTorchThreads(1);
      client::SessionConfig sc;
      sc.endpoint = endpoint;
      sc.name = "honest-" + std::to_string(i);
      sc.socket = keys.ClientSocket(i);
      training::DataView view{train_set, {}};
      for (int k = 0; k < 500; ++k) view.indices.push_back(i * 500 + k);
      auto stats = client::RunClient(sc, view, keys.signing->public_key, nullptr);
      honest.failures.Expect(stats.ok(), sc.name + ": " + stats.status().ToString());
    });
  }
  honest.Join();
  attacker.join();
  (*agg)->RequestStop();
  server.join();
  REQUIRE(agg_status.ok());
  out.final_model = (*agg)->global_model().data;
  for (const auto& r : (*agg)->history()) out.accuracies.push_back(r.test_accuracy.value_or(-1));
  out.handled = (*agg)->messages_handled();
  out.rejected = (*agg)->rejected_messages();
  agg->reset();
  std::filesystem::remove_all(store);
  return out;
}

}  // namespace

TEST_CASE("10000 hostile messages change nothing for an honest federation", "[security][integration][slow]") {
  const Outcome baseline = RunFederation(false);
  const Outcome attacked = RunFederation(true);
  REQUIRE(attacked.hostile_sent == kHostileMessages);
  REQUIRE(baseline.accuracies.size() == 3);
  REQUIRE(attacked.accuracies.size() == 3);
  CHECK(attacked.accuracies == baseline.accuracies);
  CHECK(attacked.final_model == baseline.final_model);
  CHECK(baseline.accuracies.back() > 0.5);
  // The flood reached the round engine (it was not just dropped on the wire).
  CHECK(attacked.handled > baseline.handled + kHostileMessages / 2);
  CHECK(attacked.rejected > static_cast<uint64_t>(kHostileMessages / 2));
}
