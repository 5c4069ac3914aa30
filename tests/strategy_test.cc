// Strategies against values computed by hand on small vectors (the
// arithmetic is in the comments), and the server optimizers' state across
// rounds and across a restart of the round engine on its store.
#include "aggregator/strategy.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <functional>

#include "aggregator/round_engine.h"
#include "aggregator/server_optimizer.h"
#include "aggregator/store.h"
#include "client/device_store.h"
#include "client/local_trainer.h"
#include "privacy/keys.h"
#include "privacy/signing.h"
#include "proto/codec.h"
#include "storage/kv_store.h"
#include "testing/test_storage.h"
#include "training/dataset.h"
#include "training/model.h"

using namespace flotilla;
using namespace flotilla::aggregator;

namespace {

std::shared_ptr<const Layout> LayoutOf(int64_t n) {
  return std::make_shared<const Layout>(*Layout::Create({{"w", {n}}}));
}

Weights Make(const std::shared_ptr<const Layout>& layout, std::vector<float> values) {
  Weights w;
  w.layout = layout;
  w.data = std::move(values);
  return w;
}

StatusOr<Weights> Combine(const std::string& strategy, const std::vector<std::vector<float>>& rows,
                          std::vector<size_t>* picked = nullptr) {
  auto s = ParseStrategy(strategy);
  REQUIRE(s.ok());
  auto layout = LayoutOf(static_cast<int64_t>(rows[0].size()));
  RobustCombiner c(layout, *s);
  for (const auto& r : rows) REQUIRE(c.Add(Make(layout, r)).ok());
  StatusOr<Weights> out = c.Result();
  if (picked != nullptr) *picked = c.picked();
  return out;
}

}  // namespace

TEST_CASE("Krum picks the update closest to its n - f - 2 neighbours, ties to the first in client-id order",
          "[aggregator][strategy]") {
  // n = 5, f = 1: each score sums the 2 smallest squared distances.
  // Squared distances: d01 = 1, d02 = 4, d03 = 18, d04 = 100, d12 = 5,
  // d13 = 13, d14 = 121, d23 = 10, d24 = 104, d34 = 178.
  // Scores: u0 1+4 = 5, u1 1+5 = 6, u2 4+5 = 9, u3 10+13 = 23, u4 100+104 = 204.
  const std::vector<std::vector<float>> rows = {{0, 0}, {1, 0}, {0, 2}, {3, 3}, {-10, 0}};
  std::vector<size_t> picked;
  auto krum = Combine("krum:1", rows, &picked);
  REQUIRE(krum.ok());
  CHECK(krum->data == std::vector<float>{0, 0});
  CHECK(picked == std::vector<size_t>{0});
  // Multi-Krum averages the M best, unweighted: (u0 + u1) / 2, then
  // (u0 + u1 + u2) / 3.
  auto mk2 = Combine("multi-krum:1:2", rows, &picked);
  REQUIRE(mk2.ok());
  CHECK(mk2->data == std::vector<float>{0.5f, 0});
  CHECK(picked == std::vector<size_t>{0, 1});
  auto mk3 = Combine("multi-krum:1:3", rows, &picked);
  REQUIRE(mk3.ok());
  CHECK(mk3->data[0] == Approx(1.0 / 3));
  CHECK(mk3->data[1] == Approx(2.0 / 3));

  // The unit square and an outlier: u0..u3 all score 1 + 1 = 2 (two
  // neighbours at distance 1). The tie goes to u0, the first in the
  // store's client-id order; Multi-Krum with M = 3 takes u0, u1, u2.
  const std::vector<std::vector<float>> square = {{0, 0}, {1, 0}, {0, 1}, {1, 1}, {10, 10}};
  auto tie = Combine("krum:1", square, &picked);
  REQUIRE(tie.ok());
  CHECK(tie->data == std::vector<float>{0, 0});
  auto mk = Combine("multi-krum:1:3", square, &picked);
  REQUIRE(mk.ok());
  CHECK(picked == std::vector<size_t>{0, 1, 2});
  CHECK(mk->data[0] == Approx(1.0 / 3));
  CHECK(mk->data[1] == Approx(1.0 / 3));

  // Too few updates for f (Krum needs n >= 2f + 3): f is lowered to what
  // n allows, here 1, and the result is krum:1's.
  auto s2 = ParseStrategy("krum:2");
  CHECK(s2->ByzantineFor(5) == 1);
  CHECK(s2->ByzantineFor(7) == 2);
  CHECK(s2->ByzantineFor(100) == 2);
  auto few = Combine("krum:2", rows, &picked);
  REQUIRE(few.ok());
  CHECK(few->data == std::vector<float>{0, 0});
  // Below three updates there is no neighbour to score against.
  auto two = Combine("krum:0", {{0, 0}, {1, 1}});
  REQUIRE_FALSE(two.ok());
  CHECK(std::string(two.status().message()).find("at least 3 updates") != std::string::npos);
}

TEST_CASE("Bulyan picks n - 2f by repeated Krum, then averages the n - 4f values nearest each median",
          "[aggregator][strategy]") {
  // n = 7, f = 1: theta = 5 picks, beta = 3 values per coordinate.
  // Pick 1 (r = 7, 4 neighbours): scores 0:30 1:15 2:10 3:15 4:30 100:38030
  //   -50:10614 -> 2. Pick 2 (r = 6, 3 neighbours): 0:26 1:14 3:14 4:26 -> 1
  //   (tie with 3, first in order). Pick 3 (r = 5, 2): 0:25 3:10 4:17 -> 3.
  // Pick 4 (r = 4, 1): 0:16 4:16 -> 0 (tie). Pick 5 (r = 3, 1): 4:2916
  //   100:9216 -50:2916 -> 4 (tie with -50).
  // Picked {0, 1, 2, 3, 4}: median 2, the 3 nearest 1, 2, 3 -> 2.
  std::vector<size_t> picked;
  auto one = Combine("bulyan:1", {{0}, {1}, {2}, {3}, {4}, {100}, {-50}}, &picked);
  REQUIRE(one.ok());
  CHECK(picked == std::vector<size_t>{2, 1, 3, 0, 4});
  CHECK(one->data == std::vector<float>{2});
  // Two coordinates, the same picks: first coordinate {0, 1, 2, 3, 6}
  // (median 2, nearest 1, 2, 3 -> 2); second {5, -1, 0, 2, 1} sorted
  // -1 0 1 2 5 (median 1, nearest 0, 1, 2 -> 1).
  auto two = Combine("bulyan:1", {{0, 5}, {1, -1}, {2, 0}, {3, 2}, {6, 1}, {100, 100}, {-50, 3}}, &picked);
  REQUIRE(two.ok());
  CHECK(two->data == std::vector<float>{2, 1});
  // n >= 4f + 3: with 7 updates bulyan:2 runs as bulyan:1.
  auto lowered = Combine("bulyan:2", {{0}, {1}, {2}, {3}, {4}, {100}, {-50}}, &picked);
  REQUIRE(lowered.ok());
  CHECK(picked == std::vector<size_t>{2, 1, 3, 0, 4});
  CHECK(lowered->data == std::vector<float>{2});
}

TEST_CASE("Strategy and server optimizer names parse, and bad ones say what is accepted",
          "[aggregator][strategy]") {
  for (const char* ok : {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox:0.01", "median",
                         "trimmed-mean:0.1", "krum:2", "multi-krum:2:5", "bulyan:1"}) {
    INFO(ok);
    auto s = ParseStrategy(ok);
    REQUIRE(s.ok());
    CHECK(s->Name() == ok);
  }
  CHECK(ParseStrategy("fedadam")->optimizer.kind == ServerOptimizer::Kind::kAdam);
  CHECK(ParseStrategy("fedavgm")->optimizer.kind == ServerOptimizer::Kind::kMomentum);
  CHECK(ParseStrategy("multi-krum:2:5")->MinUpdates() == 3);
  CHECK(ParseStrategy("bulyan:2")->ByzantineFor(11) == 2);
  CHECK(ParseStrategy("bulyan:2")->ByzantineFor(10) == 1);
  for (const char* bad : {"krum", "krum:", "krum:-1", "krum:x", "multi-krum:1", "multi-krum:1:0",
                          "bulyan:1:2", "fedadamw", "krum:1.5", "fedprox", "fedprox:0", "fedprox:-1"}) {
    INFO(bad);
    auto s = ParseStrategy(bad);
    REQUIRE_FALSE(s.ok());
    CHECK(s.status().code() == StatusCode::kInvalidArgument);
  }
  CHECK(ParseServerOptimizer("yogi").ok());
  CHECK_FALSE(ParseServerOptimizer("rmsprop").ok());
  ServerOptimizer bad;
  bad.beta2 = 1.0;
  CHECK_FALSE(bad.Validate().ok());
}

TEST_CASE("Server optimizers take the steps of their papers", "[aggregator][strategy]") {
  auto layout = LayoutOf(2);
  const Weights global = Make(layout, {1.0f, 1.0f});
  const Weights delta = Make(layout, {0.5f, -1.0f});
  ServerState none, next;

  ServerOptimizer opt;  // sgd: x + eta d
  auto sgd = ServerStep(opt, 0.1, global, delta, none, &next);
  REQUIRE(sgd.ok());
  CHECK(sgd->data[0] == Approx(1.05));
  CHECK(sgd->data[1] == Approx(0.9));
  CHECK(next.first.empty());

  // FedAvgM, beta 0.9: v1 = d; x1 = 1 + 0.1 * 0.5 = 1.05. Again with the
  // same delta: v2 = 0.9 * 0.5 + 0.5 = 0.95; x2 = 1.05 + 0.095 = 1.145.
  opt.kind = ServerOptimizer::Kind::kMomentum;
  auto m1 = ServerStep(opt, 0.1, global, delta, none, &next);
  REQUIRE(m1.ok());
  CHECK(m1->data[0] == Approx(1.05));
  ServerState after2;
  auto m2 = ServerStep(opt, 0.1, *m1, delta, next, &after2);
  REQUIRE(m2.ok());
  CHECK(m2->data[0] == Approx(1.145));
  CHECK(m2->data[1] == Approx(1.0 - 0.1 - 0.19));  // v2 = -0.9 - 1 = -1.9
  CHECK(after2.steps == 2);

  // FedAdam, beta1 0.9, beta2 0.99, tau 1e-3, v0 = tau^2 = 1e-6:
  // m1 = 0.1 * 0.5 = 0.05; v1 = 0.99e-6 + 0.01 * 0.25 = 0.00250099;
  // x1 = 1 + 0.1 * 0.05 / (sqrt(0.00250099) + 0.001) = 1 + 0.1 * 0.980201.
  opt.kind = ServerOptimizer::Kind::kAdam;
  auto adam = ServerStep(opt, 0.1, global, delta, none, &next);
  REQUIRE(adam.ok());
  CHECK(next.first[0] == Approx(0.05));
  CHECK(next.second[0] == Approx(0.00250099).epsilon(1e-6));
  CHECK(adam->data[0] == Approx(1.0980201).epsilon(1e-6));
  // The second coordinate: m = -0.1, v = 0.99e-6 + 0.01 = 0.01000099;
  // step = -0.1 / (0.10000495 + 0.001) = -0.990050.
  CHECK(adam->data[1] == Approx(1.0 - 0.0990050).epsilon(1e-6));

  // FedYogi: v1 = v0 - 0.01 * d^2 * sign(v0 - d^2) = 1e-6 + 0.0025.
  opt.kind = ServerOptimizer::Kind::kYogi;
  auto yogi = ServerStep(opt, 0.1, global, delta, none, &next);
  REQUIRE(yogi.ok());
  CHECK(next.second[0] == Approx(0.002501).epsilon(1e-6));
  CHECK(yogi->data[0] == Approx(1.0 + 0.1 * 0.05 / (std::sqrt(0.002501) + 0.001)).epsilon(1e-6));
  // Yogi's v shrinks when it exceeds d^2 (Adam's would decay by beta2):
  // from v = 1, d = 0.5: v = 1 - 0.01 * 0.25 = 0.9975.
  ServerState big;
  big.first = {0.0f, 0.0f};
  big.second = {1.0f, 1.0f};
  REQUIRE(ServerStep(opt, 0.1, global, delta, big, &next).ok());
  CHECK(next.second[0] == Approx(0.9975));

  // FedAdagrad: v1 = v0 + d^2 = 0.250001; x1 = 1 + 0.1 * 0.05 / (0.500001 + 0.001).
  opt.kind = ServerOptimizer::Kind::kAdagrad;
  auto adagrad = ServerStep(opt, 0.1, global, delta, none, &next);
  REQUIRE(adagrad.ok());
  CHECK(next.second[0] == Approx(0.250001));
  CHECK(adagrad->data[0] == Approx(1.0 + 0.1 * 0.05 / 0.501001).epsilon(1e-6));

  // State of the wrong size is refused, and nothing is written.
  ServerState wrong;
  wrong.first = {1.0f};
  ServerState untouched;
  CHECK_FALSE(ServerStep(opt, 0.1, global, delta, wrong, &untouched).ok());
  CHECK(untouched.steps == 0);
}

TEST_CASE("Server norm bounding clips an update to the bound and leaves smaller ones alone",
          "[aggregator][strategy]") {
  auto layout = LayoutOf(2);
  Weights big = Make(layout, {3, 4});  // norm 5
  ClipToNorm(&big, 5.0, 2.5);
  CHECK(big.data[0] == Approx(1.5));
  CHECK(big.data[1] == Approx(2.0));
  Weights small = Make(layout, {0.3f, 0.4f});
  ClipToNorm(&small, 0.5, 2.5);
  CHECK(small.data == std::vector<float>{0.3f, 0.4f});
}

namespace {

std::shared_ptr<const Layout> TinyLayout() {
  return std::make_shared<const Layout>(*Layout::Create({{"fc.weight", {2, 3}}, {"fc.bias", {2}}}));
}

// A round engine on an in-memory store that outlives it, three devices that
// always report, and a restart whenever the test asks.
struct Federation {
  std::shared_ptr<storage::KvStore> memory{storage::NewMemoryStore(Store::Families())};
  std::unique_ptr<Store> store;
  ClientRegistry clients{ClientRegistry::PausePolicy{}};
  AggregatorConfig config;
  std::unique_ptr<RoundEngine> engine;
  // The devices a round may select (dev0..dev2 report; others never do).
  std::function<bool(const std::string&)> eligible = [](const std::string& id) {
    return id == "dev0" || id == "dev1" || id == "dev2";
  };

  explicit Federation(const std::string& strategy) {
    config.model_arch = "tiny";
    config.store_path = "memory";
    config.rounds = 6;
    config.min_clients = 3;
    config.round_deadline_seconds = 30;
    config.strategy = *ParseStrategy(strategy);
    config.server_learning_rate = 0.1;
    auto signing = privacy::GenerateSigningKeyPair();
    REQUIRE(signing.ok());
    config.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(signing).value());
    for (int i = 0; i < 3; ++i) {
      wire::Hello hello;
      hello.set_client_name("dev" + std::to_string(i));
      clients.Register("dev" + std::to_string(i), "peer" + std::to_string(i), hello, 0);
    }
  }

  void Start() {
    engine.reset();
    auto s = Store::OnKvStore(std::make_unique<testing::SharedKvStore>(memory));
    REQUIRE(s.ok());
    store = std::move(s).value();
    auto e =
        RoundEngine::Recover(config, store.get(), &clients, Weights::Zeros(TinyLayout()), nullptr, nullptr);
    INFO(e.status().ToString());
    REQUIRE(e.ok());
    engine = std::move(e).value();
  }

  // One round in which device i sends a delta that depends on the round
  // and the coordinate, so the moments differ from step to step.
  void Round() {
    const auto now = RoundEngine::Clock::now();
    if (!engine->active()) REQUIRE(*engine->MaybeStart(now, eligible));  // else resumed after a restart
    const uint32_t round = engine->round();
    for (int i = 0; i < 3; ++i) {
      wire::Update u;
      u.set_round(round);
      u.set_model_version(engine->registry().version());
      u.set_num_examples(10 + i);
      Weights d = Weights::Zeros(TinyLayout());
      for (size_t k = 0; k < d.data.size(); ++k)
        d.data[k] =
            0.01f * static_cast<float>((static_cast<int>(k) + i + static_cast<int>(round)) % 5) - 0.02f;
      proto::WeightsToProto(d, u.mutable_delta());
      if (config.strategy.scaffold) proto::WeightsToProto(ControlDelta(i), u.mutable_control_delta());
      auto r = engine->RecordUpdate("dev" + std::to_string(i), u, now);
      REQUIRE(r.ok());
      REQUIRE_FALSE(r->has_value());
    }
    std::vector<SecureRound::Reply> out;
    auto f = engine->MaybeFinish(now, &out);
    REQUIRE(f.ok());
    REQUIRE(*f);
    REQUIRE(engine->history().back().completed);
  }

  // SCAFFOLD: device i's control-variate change, 0.1 (i + 1) + 0.01 k at
  // coordinate k; their mean is 0.2 + 0.01 k.
  static Weights ControlDelta(int i) {
    Weights c = Weights::Zeros(TinyLayout());
    for (size_t k = 0; k < c.data.size(); ++k)
      c.data[k] = 0.1f * static_cast<float>(i + 1) + 0.01f * static_cast<float>(k);
    return c;
  }

  std::string StoredState() const {
    auto s = store->GetServerState();
    REQUIRE(s.ok());
    return s->has_value() ? (*s)->SerializeAsString() : std::string();
  }
};

}  // namespace

TEST_CASE("Server optimizer state is committed with its round and a restarted engine continues bit for bit",
          "[aggregator][strategy]") {
  const std::string strategy = GENERATE(as<std::string>{}, "fedavgm", "fedadam", "fedyogi", "fedadagrad");
  INFO(strategy);
  Federation straight(strategy);
  straight.Start();
  for (int r = 0; r < 4; ++r) straight.Round();

  Federation restarted(strategy);
  restarted.Start();
  restarted.Round();
  restarted.Round();
  const std::string before = restarted.StoredState();
  REQUIRE_FALSE(before.empty());
  records::ServerStateRecord record;
  REQUIRE(record.ParseFromString(before));
  CHECK(record.model_version() == restarted.engine->registry().version());
  CHECK(record.steps() == 2);
  restarted.Start();  // the process died here; a new engine on the same store
  restarted.Round();
  restarted.Round();

  const Weights& a = straight.engine->global();
  const Weights& b = restarted.engine->global();
  REQUIRE(a.data.size() == b.data.size());
  CHECK(std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(float)) == 0);
  CHECK(straight.StoredState() == restarted.StoredState());
  // The state moved the model differently from plain FedAvg.
  Federation plain("fedavg");
  plain.Start();
  for (int r = 0; r < 4; ++r) plain.Round();
  CHECK(std::memcmp(a.data.data(), plain.engine->global().data.data(), a.data.size() * sizeof(float)) != 0);
  CHECK(plain.StoredState().empty());
}

TEST_CASE("FedAvg's streamed merge from float32 bytes equals the decoded one and refuses non-finite values",
          "[aggregator][strategy]") {
  auto layout = LayoutOf(5000);  // several of AddFloat32's blocks
  std::vector<Weights> deltas;
  for (int c = 0; c < 3; ++c) {
    Weights d = Weights::Zeros(layout);
    for (size_t i = 0; i < d.data.size(); ++i)
      d.data[i] = 0.001f * static_cast<float>((i * (c + 3)) % 17) - 0.008f;
    deltas.push_back(std::move(d));
  }
  WeightedMean decoded(layout), streamed(layout);
  for (int c = 0; c < 3; ++c) {
    REQUIRE(decoded.Add(deltas[static_cast<size_t>(c)], 10.0 + c).ok());
    wire::WeightsProto proto;
    proto::WeightsToProto(deltas[static_cast<size_t>(c)], &proto);
    auto payload = proto::Float32Payload(proto, *layout);
    REQUIRE(payload.ok());
    REQUIRE(streamed.AddFloat32(*payload, 10.0 + c).ok());
  }
  CHECK(decoded.Mean()->data == streamed.Mean()->data);

  // A payload of another layout is refused before anything is added.
  wire::WeightsProto other;
  proto::WeightsToProto(Make(LayoutOf(4), {1, 2, 3, 4}), &other);
  CHECK_FALSE(proto::Float32Payload(other, *layout).ok());
  // A NaN in the third block fails the call and poisons the sum.
  Weights bad = deltas[0];
  bad.data[4500] = NAN;
  CHECK(FirstNonFinite(bad.data.data(), bad.data.size()) == 4500);
  CHECK(FirstNonFinite(deltas[0].data.data(), deltas[0].data.size()) == deltas[0].data.size());
  auto st = streamed.AddFloat32(
      std::string_view(reinterpret_cast<const char*>(bad.data.data()), bad.data.size() * sizeof(float)), 1.0);
  REQUIRE_FALSE(st.ok());
  CHECK(std::string(st.message()).find("4500") != std::string::npos);
  CHECK_FALSE(streamed.Mean().ok());
}

TEST_CASE(
    "SCAFFOLD moves c by |S| / N times the mean change, tasks carry it, and it survives a restart bit for "
    "bit",
    "[aggregator][strategy]") {
  Federation straight("scaffold");
  // A fourth registered device that is never selected: N = 4, |S| = 3.
  wire::Hello hello;
  hello.set_client_name("dev3");
  straight.clients.Register("dev3", "peer3", hello, 0);
  straight.Start();
  straight.Round();
  // c = 0.75 * (0.2 + 0.01 k), and the next round's tasks carry it.
  REQUIRE(*straight.engine->MaybeStart(RoundEngine::Clock::now(), straight.eligible));
  const wire::Envelope env = straight.engine->MakeTask("dev0", RoundEngine::Clock::now());
  CHECK(env.train_task().config().scaffold());
  auto c = proto::WeightsFromProto(env.train_task().control(), TinyLayout());
  REQUIRE(c.ok());
  for (size_t k = 0; k < c->data.size(); ++k) CHECK(c->data[k] == Approx(0.75 * (0.2 + 0.01 * k)));

  SECTION("an update without its control change, or with a non-finite one, is refused") {
    wire::Update u;
    u.set_round(straight.engine->round());
    u.set_model_version(straight.engine->registry().version());
    u.set_num_examples(10);
    proto::WeightsToProto(Weights::Zeros(TinyLayout()), u.mutable_delta());
    auto r = straight.engine->RecordUpdate("dev0", u, RoundEngine::Clock::now());
    REQUIRE(r.ok());
    REQUIRE(r->has_value());
    CHECK((*r)->code == wire::ERROR_BAD_UPDATE);
    CHECK((*r)->reason == "control");
    Weights bad = Federation::ControlDelta(1);
    bad.data[2] = std::nanf("");
    proto::WeightsToProto(bad, u.mutable_control_delta());
    r = straight.engine->RecordUpdate("dev1", u, RoundEngine::Clock::now());
    REQUIRE(r.ok());
    REQUIRE(r->has_value());
    CHECK((*r)->reason == "control");
  }
  SECTION("and continues bit for bit after a restart") {
    straight.Start();  // the process died here: round 2 resumes with no updates yet
    straight.Round();
    straight.Round();
    Federation calm("scaffold");
    calm.clients.Register("dev3", "peer3", hello, 0);
    calm.Start();
    for (int r = 0; r < 3; ++r) calm.Round();
    CHECK(straight.StoredState() == calm.StoredState());
    auto stored = straight.store->GetServerState();
    REQUIRE(stored.ok());
    REQUIRE(stored->has_value());
    CHECK((*stored)->optimizer() == "sgd+scaffold");
    CHECK((*stored)->steps() == 3);
    auto state = ServerStateFromRecord(**stored, "sgd+scaffold", TinyLayout()->total_numel());
    REQUIRE(state.ok());
    // Three rounds: c = 3 * 0.75 * (0.2 + 0.01 k).
    REQUIRE(state->control.size() == 8);
    for (size_t k = 0; k < state->control.size(); ++k)
      CHECK(state->control[k] == Approx(2.25 * (0.2 + 0.01 * k)).epsilon(1e-6));
  }
}

TEST_CASE("A FedAvg round refuses an update that carries a SCAFFOLD control change",
          "[aggregator][strategy]") {
  Federation f("fedavg");
  f.Start();
  REQUIRE(*f.engine->MaybeStart(RoundEngine::Clock::now(), f.eligible));
  CHECK_FALSE(f.engine->MakeTask("dev0", RoundEngine::Clock::now()).train_task().config().scaffold());
  wire::Update u;
  u.set_round(f.engine->round());
  u.set_model_version(f.engine->registry().version());
  u.set_num_examples(10);
  proto::WeightsToProto(Weights::Zeros(TinyLayout()), u.mutable_delta());
  proto::WeightsToProto(Federation::ControlDelta(0), u.mutable_control_delta());
  auto r = f.engine->RecordUpdate("dev0", u, RoundEngine::Clock::now());
  REQUIRE(r.ok());
  REQUIRE(r->has_value());
  CHECK((*r)->reason == "control");
}

TEST_CASE(
    "A SCAFFOLD device corrects its steps by c - c_i, sends c_i's change and keeps c_i across tasks and "
    "restarts",
    "[aggregator][strategy]") {
  auto signing = privacy::GenerateSigningKeyPair();
  REQUIRE(signing.ok());
  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(64, 2));
  const training::DataView view = training::DataView::All(data);
  auto runner = training::ModelRunner::Create("logreg", 5);
  REQUIRE(runner.ok());
  const Weights global = (*runner)->GetWeights();
  wire::TrainTask task;
  task.set_round(1);
  task.set_model_version(1);
  task.set_model_round(0);
  task.set_model_arch("logreg");
  task.mutable_config()->set_epochs(1);
  task.mutable_config()->set_batch_size(16);  // K = 4 steps
  task.mutable_config()->set_learning_rate(0.1);
  task.mutable_config()->set_scaffold(true);
  proto::WeightsToProto(global, task.mutable_weights());
  task.set_model_signature(*privacy::SignModel(*signing, "flotilla", 1, 0, privacy::ModelDigest(global)));
  Weights c = Weights::Zeros(global.layout);
  for (size_t i = 0; i < c.data.size(); ++i) c.data[i] = 0.01f * static_cast<float>(i % 7) - 0.03f;
  proto::WeightsToProto(c, task.mutable_control());

  client::DeviceMemory memory;
  auto update = client::RunTrainTask(runner->get(), view, task, signing->public_key, "flotilla", &memory);
  REQUIRE(update.ok());
  REQUIRE(update->has_control_delta());
  auto delta = proto::WeightsFromProto(update->delta(), global.layout);
  auto dc = proto::WeightsFromProto(update->control_delta(), global.layout);
  REQUIRE(delta.ok());
  REQUIRE(dc.ok());
  // c_i's change = -c - delta / (K lr), and c_i (from 0) is that change.
  REQUIRE(memory.control.size() == c.data.size());
  double max_err = 0;
  for (size_t i = 0; i < c.data.size(); ++i) {
    const double expect = -double{c.data[i]} - double{delta->data[i]} / (4 * 0.1);
    max_err = std::max(max_err, std::fabs(expect - double{dc->data[i]}));
    CHECK(memory.control[i] == dc->data[i]);
  }
  CHECK(max_err < 1e-5);

  // The next task trains with c - c_i: the same task again gives another
  // delta than a device without memory would.
  client::DeviceMemory fresh;
  auto again = client::RunTrainTask(runner->get(), view, task, signing->public_key, "flotilla", &memory);
  auto first_time = client::RunTrainTask(runner->get(), view, task, signing->public_key, "flotilla", &fresh);
  REQUIRE(again.ok());
  REQUIRE(first_time.ok());
  CHECK(again->delta().data() != first_time->delta().data());
  CHECK(first_time->delta().data() == update->delta().data());

  // c_i survives a restart in the device store, beside the top-k residual.
  auto store = client::DeviceStore::OnKvStore(storage::NewMemoryStore(client::DeviceStore::Families()));
  client::DeviceStore::LocalState keep;
  keep.residual = {1.5f, -2.5f};
  keep.control = memory.control;
  REQUIRE(store->PutLocalState("flotilla", keep).ok());
  auto back = store->GetLocalState("flotilla");
  REQUIRE(back.ok());
  REQUIRE(back->has_value());
  CHECK((*back)->residual == keep.residual);
  CHECK((*back)->control == keep.control);
  CHECK((*back)->tensors.layout_size() == 0);

  // A task whose control variate does not fit the model is refused.
  task.mutable_control()->mutable_data()->resize(12);
  CHECK(client::RunTrainTask(runner->get(), view, task, signing->public_key, "flotilla", &memory)
            .status()
            .code() == StatusCode::kInvalidArgument);
}
