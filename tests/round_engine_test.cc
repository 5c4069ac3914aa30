// The round engine without a socket: an in-memory store, a client registry
// filled by hand, and the test's own clock.
#include "aggregator/round_engine.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <memory>
#include <thread>

#include "aggregator/store.h"
#include "privacy/keys.h"
#include "privacy/rdp_accountant.h"
#include "proto/codec.h"
#include "storage/kv_store.h"
#include "testing/test_storage.h"

using namespace flotilla;
using namespace flotilla::aggregator;
using namespace std::chrono_literals;

namespace {

std::shared_ptr<const Layout> TinyLayout() {
  return std::make_shared<const Layout>(*Layout::Create({{"fc.weight", {2, 3}}, {"fc.bias", {2}}}));
}

struct Fixture {
  std::shared_ptr<storage::KvStore> memory{storage::NewMemoryStore(Store::Families())};
  std::unique_ptr<Store> store;
  ClientRegistry clients{ClientRegistry::PausePolicy{}};
  AggregatorConfig config;
  std::vector<RoundSummary> seen;  // from the round callback
  EvalFn eval;                     // the aggregator's evaluation (none by default)
  std::unique_ptr<RoundEngine> engine;

  explicit Fixture(int devices) {
    config.model_arch = "tiny";
    config.store_path = "memory";
    config.rounds = 3;
    config.min_clients = devices;
    config.round_deadline_seconds = 30;
    config.failed_round_backoff_seconds = 2;
    config.max_failed_round_backoff_seconds = 2;
    auto signing = privacy::GenerateSigningKeyPair();
    REQUIRE(signing.ok());
    config.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(signing).value());
    for (int i = 0; i < devices; ++i) {
      wire::Hello hello;
      hello.set_client_name("dev" + std::to_string(i));
      clients.Register("dev" + std::to_string(i), "peer" + std::to_string(i), hello, 0);
    }
  }

  // A new engine on the same store (as after a restart).
  void Start() {
    engine.reset();
    auto s = Store::OnKvStore(std::make_unique<testing::SharedKvStore>(memory));
    REQUIRE(s.ok());
    store = std::move(s).value();
    auto e = RoundEngine::Recover(config, store.get(), &clients, Weights::Zeros(TinyLayout()), eval,
                                  [this](const RoundSummary& r) { seen.push_back(r); });
    INFO(e.status().ToString());
    REQUIRE(e.ok());
    engine = std::move(e).value();
  }

  wire::Update UpdateOf(float value, int64_t examples = 10) const {
    wire::Update u;
    u.set_round(engine->round());
    u.set_model_version(engine->registry().version());
    u.set_num_examples(examples);
    Weights d = Weights::Zeros(TinyLayout());
    for (float& x : d.data) x = value;
    proto::WeightsToProto(d, u.mutable_delta());
    return u;
  }

  // Records an update; the refusal's code, or ERROR_UNSPECIFIED when taken.
  wire::ErrorCode Send(const std::string& id, const wire::Update& u) {
    auto r = engine->RecordUpdate(id, u, RoundEngine::Clock::now());
    REQUIRE(r.ok());
    return r->has_value() ? (*r)->code : wire::ERROR_UNSPECIFIED;
  }

  bool Finish(RoundEngine::Clock::time_point now = RoundEngine::Clock::now()) {
    std::vector<SecureRound::Reply> out;
    auto f = engine->MaybeFinish(now, &out);
    REQUIRE(f.ok());
    return *f;
  }
};

const auto kEveryone = [](const std::string&) { return true; };

}  // namespace

TEST_CASE("A round starts with enough devices, takes each update once and commits the mean",
          "[round_engine]") {
  Fixture f(3);
  f.config.min_clients = 4;
  f.Start();
  const auto now = RoundEngine::Clock::now();
  CHECK_FALSE(*f.engine->MaybeStart(now, kEveryone));  // 3 of 4 devices
  f.config.min_clients = 3;
  f.Start();
  REQUIRE(*f.engine->MaybeStart(now, kEveryone));
  CHECK(f.engine->round() == 1);
  CHECK(f.engine->selected_count() == 3);
  CHECK_FALSE(*f.engine->MaybeStart(now, kEveryone));  // one at a time
  CHECK(f.engine->AwaitsTask("dev0"));
  const wire::Envelope task = f.engine->MakeTask("dev0", now);
  CHECK(task.train_task().round() == 1);
  CHECK(task.train_task().model_version() == 1);
  CHECK(task.train_task().deadline_seconds() == Approx(30).margin(0.01));

  CHECK(f.Send("dev0", f.UpdateOf(0.1f)) == wire::ERROR_UNSPECIFIED);
  CHECK(f.Send("dev0", f.UpdateOf(0.1f)) == wire::ERROR_DUPLICATE);
  CHECK_FALSE(f.engine->AwaitsTask("dev0"));
  CHECK(f.Send("nobody", f.UpdateOf(0.1f)) == wire::ERROR_WRONG_ROUND);  // not selected
  wire::Update stale = f.UpdateOf(0.1f);
  stale.set_model_version(7);
  CHECK(f.Send("dev1", stale) == wire::ERROR_WRONG_ROUND);
  CHECK(f.Send("dev1", f.UpdateOf(1e6f)) == wire::ERROR_BAD_UPDATE);  // over the norm bound: out of the round
  CHECK(f.engine->rejected_updates() == 1);
  CHECK(f.Send("dev1", f.UpdateOf(0.1f)) == wire::ERROR_WRONG_ROUND);
  CHECK_FALSE(f.Finish());  // dev2 still owes its update
  CHECK(f.Send("dev2", f.UpdateOf(0.3f)) == wire::ERROR_UNSPECIFIED);
  REQUIRE(f.Finish());

  CHECK_FALSE(f.engine->active());
  CHECK(f.engine->registry().version() == 2);
  for (float v : f.engine->global().data) CHECK(v == Approx(0.2f));  // equal counts: the plain mean
  REQUIRE(f.seen.size() == 1);
  CHECK(f.seen[0].completed);
  CHECK(f.seen[0].received == 2);
  auto rounds = f.store->ListRounds(nullptr);
  REQUIRE(rounds.ok());
  REQUIRE(rounds->size() == 1);
  CHECK(rounds->at(0).outcome() == records::RoundRecord::OUTCOME_COMPLETED);
  CHECK(rounds->at(0).received_size() == 2);
  CHECK(rounds->at(0).update_norms_size() == 2);
  CHECK(f.clients.at("dev1").rejected.at("norm") == 1);
  CHECK(f.clients.at("dev0").updates_accepted == 1);
}

TEST_CASE("Tasks carry the local learning rate decayed per round", "[round_engine]") {
  Fixture f(2);
  f.config.learning_rate = 0.08;
  f.config.lr_decay = 0.5;
  f.config.min_updates = 1;
  f.Start();
  const auto now = RoundEngine::Clock::now();
  for (uint32_t round = 1; round <= 3; ++round) {
    REQUIRE(*f.engine->MaybeStart(now, kEveryone));
    const wire::Envelope task = f.engine->MakeTask("dev0", now);
    CHECK(task.train_task().round() == round);
    CHECK(task.train_task().config().learning_rate() == Approx(0.08 * std::pow(0.5, round - 1)));
    CHECK(f.Send("dev0", f.UpdateOf(0.1f)) == wire::ERROR_UNSPECIFIED);
    CHECK(f.Send("dev1", f.UpdateOf(0.1f)) == wire::ERROR_UNSPECIFIED);
    REQUIRE(f.Finish());
  }
  AggregatorConfig bad = f.config;
  const std::string before(bad.Validate().message());  // (the fixture's test model need not validate)
  CHECK(before.find("lr_decay") == std::string::npos);
  bad.lr_decay = 0;
  CHECK(std::string(bad.Validate().message()).find("lr_decay") != std::string::npos);
  bad.lr_decay = 1.5;
  CHECK(std::string(bad.Validate().message()).find("lr_decay") != std::string::npos);
}

TEST_CASE("The global model is evaluated every eval_every rounds and after the last", "[round_engine]") {
  Fixture f(2);
  f.config.rounds = 5;
  f.config.eval_every = 2;
  f.config.min_updates = 1;
  std::vector<float> evaluated;  // the first weight of each model evaluated
  f.eval = [&evaluated](const Weights& w) -> StatusOr<EvalMetrics> {
    evaluated.push_back(w.data.at(0));
    EvalMetrics m;
    m.loss = 1.0 / static_cast<double>(evaluated.size());
    m.accuracy = 0.1 * static_cast<double>(evaluated.size());
    return m;
  };
  f.Start();
  const auto now = RoundEngine::Clock::now();
  for (uint32_t round = 1; round <= 5; ++round) {
    REQUIRE(*f.engine->MaybeStart(now, kEveryone));
    CHECK(f.Send("dev0", f.UpdateOf(0.5f)) == wire::ERROR_UNSPECIFIED);
    CHECK(f.Send("dev1", f.UpdateOf(0.5f)) == wire::ERROR_UNSPECIFIED);
    REQUIRE(f.Finish());
  }
  REQUIRE(f.seen.size() == 5);
  // Rounds 2 and 4, and round 5 (the last), each on that round's model.
  CHECK(evaluated == std::vector<float>{1.0f, 2.0f, 2.5f});
  CHECK_FALSE(f.seen[0].test_accuracy);
  CHECK(f.seen[1].test_accuracy == Approx(0.1));
  CHECK_FALSE(f.seen[2].test_accuracy);
  CHECK(f.seen[3].test_accuracy == Approx(0.2));
  CHECK(f.seen[4].test_accuracy == Approx(0.3));
  CHECK(f.seen[4].test_loss == Approx(1.0 / 3));
  auto rounds = f.store->ListRounds();
  REQUIRE(rounds.ok());
  REQUIRE(rounds->size() == 5);
  CHECK(rounds->at(0).test_accuracy() == 0);  // not evaluated (proto3: absent reads 0)
  CHECK(rounds->at(1).test_accuracy() == Approx(0.1));

  AggregatorConfig bad = f.config;
  bad.eval_every = 0;
  CHECK(std::string(bad.Validate().message()).find("eval_every") != std::string::npos);
}

TEST_CASE(
    "Tail averaging: the last round publishes the mean of the models of rounds swa_from on, across a restart",
    "[round_engine]") {
  Fixture f(2);
  f.config.rounds = 4;
  f.config.swa_from = 2;
  f.config.min_updates = 1;
  std::vector<float> evaluated;
  f.eval = [&evaluated](const Weights& w) -> StatusOr<EvalMetrics> {
    evaluated.push_back(w.data.at(0));
    return EvalMetrics{};
  };
  f.Start();
  const auto now = RoundEngine::Clock::now();
  for (uint32_t round = 1; round <= 4; ++round) {
    if (round == 4) f.Start();  // a restart before the last round
    REQUIRE(*f.engine->MaybeStart(now, kEveryone));
    CHECK(f.Send("dev0", f.UpdateOf(0.5f)) == wire::ERROR_UNSPECIFIED);
    CHECK(f.Send("dev1", f.UpdateOf(0.5f)) == wire::ERROR_UNSPECIFIED);
    REQUIRE(f.Finish());
  }
  // Rounds' own models: 0.5, 1, 1.5, 2; the last publishes (1 + 1.5 + 2) / 3.
  CHECK(evaluated == std::vector<float>{0.5f, 1.0f, 1.5f, 2.0f, 1.5f});
  for (float x : f.engine->registry().global().data) REQUIRE(x == 1.5f);
  auto rounds = f.store->ListRounds();
  REQUIRE(rounds.ok());
  CHECK(rounds->back().note() == "the mean of the 3 models of rounds 2-4 (swa_from)");
  CHECK(rounds->at(2).note().empty());
  auto model = f.store->GetModel(f.engine->registry().version());
  REQUIRE(model.ok());
  CHECK(model->metrics().at("swa_models") == 3);

  AggregatorConfig bad = f.config;
  bad.swa_from = 5;
  CHECK(std::string(bad.Validate().message()).find("swa_from") != std::string::npos);
  bad.swa_from = 2;
  bad.retain_last = 2;
  CHECK(std::string(bad.Validate().message()).find("retain_last") != std::string::npos);
}

TEST_CASE("The deadline closes a round with the updates it has, or fails it below min_updates",
          "[round_engine]") {
  Fixture f(2);
  f.config.min_updates = 1;
  f.Start();
  const auto t0 = RoundEngine::Clock::now();
  REQUIRE(*f.engine->MaybeStart(t0, kEveryone));
  CHECK(f.Send("dev0", f.UpdateOf(0.5f)) == wire::ERROR_UNSPECIFIED);
  CHECK_FALSE(f.Finish(t0 + 29s));
  REQUIRE(f.Finish(t0 + 31s));
  REQUIRE(f.seen.size() == 1);
  CHECK(f.seen[0].completed);
  CHECK(f.seen[0].received == 1);
  CHECK(f.engine->registry().version() == 2);

  // Round 2: one declines, none reports; min_updates 1 fails it.
  const auto t1 = RoundEngine::Clock::now();
  REQUIRE(*f.engine->MaybeStart(t1, kEveryone));
  f.engine->Decline("dev1", 2, "battery low", t1);
  CHECK_FALSE(f.engine->AwaitsTask("dev1"));
  REQUIRE(f.Finish(t1 + 31s));
  REQUIRE(f.seen.size() == 2);
  CHECK_FALSE(f.seen[1].completed);
  CHECK(f.engine->registry().version() == 2);  // the previous model is kept
  CHECK(f.engine->backoff().failed_in_a_row() == 1);
  // The back-off holds the next round for its 2 s.
  const auto t2 = RoundEngine::Clock::now();
  CHECK_FALSE(*f.engine->MaybeStart(t2, kEveryone));
  CHECK(*f.engine->MaybeStart(t2 + 3s, kEveryone));
  CHECK(f.engine->round() == 3);
}

TEST_CASE("Devices the server does not allow are never sampled", "[round_engine]") {
  Fixture f(3);
  f.config.min_clients = 2;
  f.Start();
  REQUIRE(
      *f.engine->MaybeStart(RoundEngine::Clock::now(), [](const std::string& id) { return id != "dev1"; }));
  CHECK(f.engine->selected_count() == 2);
  CHECK_FALSE(f.engine->AwaitsTask("dev1"));
}

TEST_CASE("A restart resumes the running round with its recorded updates", "[round_engine]") {
  Fixture f(2);
  f.Start();
  REQUIRE(*f.engine->MaybeStart(RoundEngine::Clock::now(), kEveryone));
  CHECK(f.Send("dev0", f.UpdateOf(0.2f)) == wire::ERROR_UNSPECIFIED);
  f.Start();  // the process died here; a new engine on the same store
  CHECK(f.engine->active());
  CHECK(f.engine->round() == 1);
  CHECK(f.engine->received_count() == 1);
  CHECK(f.Send("dev0", f.UpdateOf(0.2f)) == wire::ERROR_DUPLICATE);
  CHECK(f.Send("dev1", f.UpdateOf(0.4f)) == wire::ERROR_UNSPECIFIED);
  REQUIRE(f.Finish());
  for (float v : f.engine->global().data) CHECK(v == Approx(0.3f));
  // And a resend of the acknowledged update after the round closed counts.
  wire::Update late = f.UpdateOf(0.2f);
  late.set_round(1);
  auto r = f.engine->RecordUpdate("dev0", late, RoundEngine::Clock::now());
  REQUIRE(r.ok());
  REQUIRE(r->has_value());
  CHECK((*r)->code == wire::ERROR_DUPLICATE);
  CHECK_FALSE((*r)->counted);
}

TEST_CASE("A resumed round gives the devices a fresh deadline under extend, the original one under close",
          "[round_engine]") {
  for (const auto policy :
       {AggregatorConfig::DeadlinePolicy::kExtend, AggregatorConfig::DeadlinePolicy::kClose}) {
    Fixture f(2);
    f.config.round_deadline_seconds = 1;
    f.config.deadline_policy = policy;
    f.Start();
    const auto t0 = RoundEngine::Clock::now();
    REQUIRE(*f.engine->MaybeStart(t0, kEveryone));
    CHECK(f.Send("dev0", f.UpdateOf(0.2f)) == wire::ERROR_UNSPECIFIED);
    // The aggregator is down for most of the deadline.
    std::this_thread::sleep_for(600ms);
    f.Start();
    const auto restarted = RoundEngine::Clock::now();
    REQUIRE(f.engine->active());
    if (policy == AggregatorConfig::DeadlinePolicy::kExtend) {
      // dev1 has a whole second from the restart to reconnect and report.
      CHECK(f.engine->deadline() >= restarted + 900ms);
      CHECK_FALSE(f.Finish(restarted + 900ms));
    } else {
      CHECK(f.engine->deadline() <= restarted + 500ms);
      REQUIRE(f.Finish(restarted + 500ms));
      CHECK(f.seen.back().received == 1);
    }
  }
}

TEST_CASE("The federation is done after its rounds - no round starts then", "[round_engine]") {
  Fixture f(1);
  f.config.rounds = 1;
  f.Start();
  REQUIRE(*f.engine->MaybeStart(RoundEngine::Clock::now(), kEveryone));
  CHECK(f.Send("dev0", f.UpdateOf(0.1f)) == wire::ERROR_UNSPECIFIED);
  REQUIRE(f.Finish());
  CHECK(f.engine->federation_done());
  CHECK_FALSE(*f.engine->MaybeStart(RoundEngine::Clock::now(), kEveryone));
  f.Start();
  CHECK(f.engine->federation_done());
  CHECK(f.engine->rounds_done() == 1);
}

// Check-in selection: a fleet of 20 registered devices, 4 updates kept per
// round, over-selection 1.5 (6 selected).
struct CheckInFixture : Fixture {
  CheckInFixture() : Fixture(20) {
    config.min_clients = 2;
    config.checkin.enabled = true;
    config.checkin.clients_per_round = 4;
    config.checkin.over_selection = 1.5;
    config.checkin.quiet_seconds = 0.5;
    config.checkin.window_seconds = 5;
    Start();
    engine->SetFleetSize(20);
  }
  // Devices dev<from>..dev<to-1> check in at `now`; how many were held.
  int CheckIns(int from, int to, RoundEngine::Clock::time_point now) {
    int held = 0;
    for (int i = from; i < to; ++i) held += engine->CheckIn("dev" + std::to_string(i), now, kEveryone).hold;
    return held;
  }
};

TEST_CASE("Check-in: selection holds check-ins, waits for quiet, samples the target and releases the rest",
          "[round_engine][checkin]") {
  CheckInFixture f;
  const auto t0 = RoundEngine::Clock::now();
  // Before selection opens, a check-in is told to come back.
  RoundEngine::CheckInAnswer early = f.engine->CheckIn("dev0", t0, kEveryone);
  CHECK_FALSE(early.hold);
  CHECK(early.round >= 1);
  REQUIRE(f.engine->MaybeOpenSelection(t0));
  CHECK(f.CheckIns(0, 9, t0) == 9);
  std::vector<std::string> released;
  // Enough (6) are held, but check-ins are still arriving: not yet.
  auto closed = f.engine->MaybeCloseSelection(t0 + 100ms, &released);
  REQUIRE(closed.ok());
  CHECK_FALSE(*closed);
  closed = f.engine->MaybeCloseSelection(t0 + 600ms, &released);
  REQUIRE(closed.ok());
  REQUIRE(*closed);
  CHECK(f.engine->active());
  CHECK(f.engine->selected_count() == 6);
  CHECK(f.engine->target_updates() == 4);
  CHECK(released.size() == 3);
  for (const auto& id : released) CHECK_FALSE(f.engine->AwaitsTask(id));
  // While the round runs, a check-in comes back later, for a later round.
  RoundEngine::CheckInAnswer later = f.engine->CheckIn("dev15", t0 + 700ms, kEveryone);
  CHECK_FALSE(later.hold);
  CHECK(later.round >= 2);
  CHECK(later.after_ms >= 1000);
}

TEST_CASE("Check-in: over-selection keeps the first N updates and refuses a late one without a strike",
          "[round_engine][checkin]") {
  CheckInFixture f;
  const auto t0 = RoundEngine::Clock::now();
  REQUIRE(f.engine->MaybeOpenSelection(t0));
  f.CheckIns(0, 10, t0);
  std::vector<std::string> released;
  REQUIRE(*f.engine->MaybeCloseSelection(t0 + 1s, &released));
  std::vector<std::string> chosen;
  for (int i = 0; i < 10; ++i) {
    if (f.engine->AwaitsTask("dev" + std::to_string(i))) chosen.push_back("dev" + std::to_string(i));
  }
  REQUIRE(chosen.size() == 6);
  for (int i = 0; i < 4; ++i) {
    CHECK(f.Send(chosen[i], f.UpdateOf(0.1f)) == wire::ERROR_UNSPECIFIED);
    if (i < 3) CHECK_FALSE(f.Finish());
  }
  CHECK(f.Finish());
  REQUIRE(f.seen.size() == 1);
  CHECK(f.seen[0].completed);
  CHECK(f.seen[0].received == 4);
  CHECK(f.seen[0].selected == 6);
  auto late = f.engine->RecordUpdate(chosen[4], f.UpdateOf(0.1f), RoundEngine::Clock::now());
  REQUIRE(late.ok());
  REQUIRE(late->has_value());
  CHECK((*late)->reason == "round_closed");
  CHECK_FALSE((*late)->counted);
  CHECK(f.engine->rejected_updates() == 0);
}

TEST_CASE("Check-in: with too few check-ins the window starts the round with what it holds",
          "[round_engine][checkin]") {
  CheckInFixture f;
  const auto t0 = RoundEngine::Clock::now();
  REQUIRE(f.engine->MaybeOpenSelection(t0));
  f.CheckIns(0, 1, t0);
  std::vector<std::string> released;
  CHECK_FALSE(*f.engine->MaybeCloseSelection(t0 + 6s, &released));  // below min_clients (2)
  f.CheckIns(1, 3, t0 + 6s);
  CHECK(*f.engine->MaybeCloseSelection(t0 + 6s, &released));
  CHECK(f.engine->selected_count() == 3);
  CHECK(f.engine->target_updates() == 3);
}

TEST_CASE("Check-in: at its connection limit selection holds no more and starts with what it holds",
          "[round_engine][checkin]") {
  CheckInFixture f;
  f.config.checkin.min_come_back_seconds = 0.2;
  f.Start();
  f.engine->SetFleetSize(20);
  const auto t0 = RoundEngine::Clock::now();
  REQUIRE(f.engine->MaybeOpenSelection(t0));
  f.engine->SetConnectionHeadroom(1);
  CHECK(f.CheckIns(0, 3, t0) == 1);  // one more fits; the others are told to come back
  RoundEngine::CheckInAnswer away = f.engine->CheckIn("dev9", t0, kEveryone);
  CHECK_FALSE(away.hold);
  CHECK(away.reason.find("limit of open connections") != std::string::npos);
  // Back for this same selection, after one to five shortest waits.
  CHECK(away.round == 1);
  CHECK(away.after_ms >= 200);
  CHECK(away.after_ms < 1000);
  std::vector<std::string> released;
  // At the limit, but below min_clients (2): selection stays open.
  CHECK_FALSE(*f.engine->MaybeCloseSelection(t0 + 1s, &released));
  // Connections freed: one more is held, then the limit again.
  f.engine->SetConnectionHeadroom(1);
  CHECK(f.CheckIns(3, 5, t0 + 1s) == 1);
  CHECK(f.engine->at_connection_limit());
  // Not yet: the devices sent away may still come back (within 5 x 0.2 s).
  CHECK_FALSE(*f.engine->MaybeCloseSelection(t0 + 1s + 600ms, &released));
  // None held for 1 s at the limit: the round starts with the 2 it holds
  // (of 6 wanted), long before the 5 s window.
  REQUIRE(*f.engine->MaybeCloseSelection(t0 + 1s + 1100ms, &released));
  CHECK(f.engine->selected_count() == 2);
  CHECK(f.engine->target_updates() == 2);
  CHECK(released.empty());
}

TEST_CASE("Check-in: a burst at the limit does not close selection while it holds under half its capacity",
          "[round_engine][checkin]") {
  // At a selection's opening every due device connects at once: the server
  // is at its limit while most of its connections are check-ins it has yet
  // to answer. Starting the round then would start it nearly empty.
  CheckInFixture f;
  f.config.checkin.min_come_back_seconds = 0.2;
  f.config.checkin.window_seconds = 30;
  f.Start();
  f.engine->SetFleetSize(20);
  const auto t0 = RoundEngine::Clock::now();
  REQUIRE(f.engine->MaybeOpenSelection(t0));
  std::vector<std::string> released;
  SECTION("it waits on until the burst clears") {
    // Room for 8 connections with none open; 3 fit now, the burst takes the rest.
    f.engine->SetConnectionHeadroom(3, 8);
    CHECK(f.CheckIns(0, 6, t0) == 3);
    CHECK(f.engine->at_connection_limit());
    // Held 3 of the 4 (half of 8) it could: past the settle time it waits on.
    CHECK_FALSE(*f.engine->MaybeCloseSelection(t0 + 2s, &released));
    CHECK_FALSE(*f.engine->MaybeCloseSelection(t0 + 10s, &released));
    // The burst's connections close: one more held, then the limit again.
    f.engine->SetConnectionHeadroom(1, 8);
    CHECK(f.CheckIns(6, 8, t0 + 10s) == 1);
    CHECK_FALSE(*f.engine->MaybeCloseSelection(t0 + 10s + 500ms, &released));  // settling
    REQUIRE(*f.engine->MaybeCloseSelection(t0 + 11s + 100ms, &released));
    CHECK(f.engine->selected_count() == 4);
  }
  SECTION("a burst that never clears starts the round at the window") {
    f.engine->SetConnectionHeadroom(2, 100);
    CHECK(f.CheckIns(0, 6, t0) == 2);
    CHECK_FALSE(*f.engine->MaybeCloseSelection(t0 + 29s, &released));
    REQUIRE(*f.engine->MaybeCloseSelection(t0 + 30s, &released));
    CHECK(f.engine->selected_count() == 2);
  }
}

TEST_CASE("Pace steering spreads a fleet over the rounds it takes to cycle, reproducibly",
          "[round_engine][checkin]") {
  // 10,000 devices, 125 wanted per round: an 80-round cycle.
  std::map<uint32_t, int> per_round;
  for (int i = 0; i < 10000; ++i) {
    const std::string id = "d" + std::to_string(i);
    ComeBackPlan p = PlanComeBack(id, 5, 10000, 125.0, 2.0, 0.5, 7);
    ComeBackPlan again = PlanComeBack(id, 5, 10000, 125.0, 2.0, 0.5, 7);
    REQUIRE(p.round == again.round);
    REQUIRE(p.round >= 5);
    REQUIRE(p.round < 85);
    CHECK(p.seconds == Approx(0.5 + 2.0 * (p.round - 5)));
    ++per_round[p.round];
  }
  CHECK(per_round.size() == 80);
  for (const auto& [round, n] : per_round) {
    INFO("round " << round);
    CHECK(n > 80);  // mean 125, sd ~11
    CHECK(n < 170);
  }
  // A small fleet: everyone is told to come to the next round.
  CHECK(PlanComeBack("x", 3, 10, 125.0, 2.0, 0.0, 7).round == 3);
}

namespace {

// Asynchronous rounds: K = 2, C = 3, updates at most 1 version old.
void MakeAsync(Fixture* f) {
  f->config.async.buffer = 2;
  f->config.async.concurrency = 3;
  f->config.async.max_staleness = 1;
  f->config.min_clients = 1;
  f->config.rounds = 5;
}

// Hands `id` a task as the server does; the task's round and version.
std::pair<uint32_t, uint64_t> GiveTask(Fixture* f, const std::string& id) {
  const auto now = RoundEngine::Clock::now();
  REQUIRE(f->engine->AwaitsTask(id));
  const wire::Envelope task = f->engine->MakeTask(id, now);
  f->engine->TaskSent(id, now);
  return {task.train_task().round(), task.train_task().model_version()};
}

wire::Update AnswerTo(const Fixture& f, std::pair<uint32_t, uint64_t> task, float value) {
  wire::Update u = f.UpdateOf(value);
  u.set_round(task.first);
  u.set_model_version(task.second);
  return u;
}

}  // namespace

TEST_CASE("Async: at most C devices train, K updates publish a version, each weighted by its staleness",
          "[round_engine][async]") {
  Fixture f(4);
  MakeAsync(&f);
  f.Start();
  REQUIRE(*f.engine->MaybeStartBuffer(RoundEngine::Clock::now()));
  CHECK(f.engine->round() == 1);
  auto t0 = GiveTask(&f, "dev0"), t1 = GiveTask(&f, "dev1"), t2 = GiveTask(&f, "dev2");
  CHECK(f.engine->in_flight() == 3);
  CHECK_FALSE(f.engine->AwaitsTask("dev3"));  // C = 3 train already
  CHECK(f.Send("dev0", AnswerTo(f, t0, 1.0f)) == wire::ERROR_UNSPECIFIED);
  CHECK_FALSE(f.engine->AwaitsTask("dev0"));  // one update per device and buffer
  auto t3 = GiveTask(&f, "dev3");             // dev0's slot is free
  CHECK(f.Send("dev1", AnswerTo(f, t1, 1.0f)) == wire::ERROR_UNSPECIFIED);
  REQUIRE(f.Finish());
  CHECK(f.engine->registry().version() == 2);
  CHECK(f.engine->global().data[0] == Approx(1.0));  // both fresh: their mean
  REQUIRE(f.seen.back().async);
  CHECK(f.seen.back().mean_staleness == 0.0);

  REQUIRE(*f.engine->MaybeStartBuffer(RoundEngine::Clock::now()));
  CHECK(f.engine->round() == 2);
  // dev2 trained version 1: one version old, weighted 1/sqrt(2).
  CHECK(f.Send("dev2", AnswerTo(f, t2, 4.0f)) == wire::ERROR_UNSPECIFIED);
  auto t0b = GiveTask(&f, "dev0");
  CHECK(t0b.second == 2);
  CHECK(f.Send("dev0", AnswerTo(f, t0b, 2.0f)) == wire::ERROR_UNSPECIFIED);
  REQUIRE(f.Finish());
  // 1 + (0.5 x 4 / sqrt(2) + 0.5 x 2 x 1), the mean over the undiscounted weights.
  CHECK(f.engine->global().data[0] == Approx(1.0 + 4.0 / (2.0 * std::sqrt(2.0)) + 1.0));
  CHECK(f.seen.back().mean_staleness == 0.5);
  CHECK(f.seen.back().max_staleness == 1);
  auto record = f.store->GetRound(2);
  REQUIRE(record.ok());
  REQUIRE(record->has_value());
  CHECK(record->value().async_buffer());
  CHECK(record->value().received_staleness_size() == 2);

  REQUIRE(*f.engine->MaybeStartBuffer(RoundEngine::Clock::now()));
  // dev3's task was on version 1: now two versions old, past the bound.
  auto r = f.engine->RecordUpdate("dev3", AnswerTo(f, t3, 1.0f), RoundEngine::Clock::now());
  REQUIRE(r.ok());
  REQUIRE(r->has_value());
  CHECK((*r)->reason == "stale");
  CHECK_FALSE((*r)->counted);
  // dev0 resends its update of round 2 (its Ack was lost): it was merged.
  CHECK(f.Send("dev0", AnswerTo(f, t0b, 2.0f)) == wire::ERROR_DUPLICATE);
  // An update for a task nobody gave is refused.
  CHECK(f.Send("dev1", f.UpdateOf(1.0f)) == wire::ERROR_WRONG_ROUND);
  CHECK(f.engine->global().data[0] == Approx(2.0 + std::sqrt(2.0)));
}

TEST_CASE("Async: a restart keeps the open buffer with its staleness and takes updates of earlier tasks",
          "[round_engine][async]") {
  Fixture f(4);
  MakeAsync(&f);
  f.Start();
  REQUIRE(*f.engine->MaybeStartBuffer(RoundEngine::Clock::now()));
  auto t0 = GiveTask(&f, "dev0"), t1 = GiveTask(&f, "dev1"), t2 = GiveTask(&f, "dev2");
  REQUIRE(f.Send("dev0", AnswerTo(f, t0, 1.0f)) == wire::ERROR_UNSPECIFIED);
  REQUIRE(f.Send("dev1", AnswerTo(f, t1, 1.0f)) == wire::ERROR_UNSPECIFIED);
  REQUIRE(f.Finish());
  REQUIRE(*f.engine->MaybeStartBuffer(RoundEngine::Clock::now()));
  REQUIRE(f.Send("dev2", AnswerTo(f, t2, 4.0f)) == wire::ERROR_UNSPECIFIED);  // staleness 1
  auto t3 = GiveTask(&f, "dev3");

  f.Start();  // the aggregator restarts; tasks in flight are not stored
  CHECK(f.engine->active());
  CHECK(f.engine->round() == 2);
  CHECK(f.engine->received_count() == 1);
  CHECK(f.Send("dev2", AnswerTo(f, t2, 4.0f)) == wire::ERROR_DUPLICATE);
  // dev3's task was handed out before the restart: its update counts.
  CHECK(f.Send("dev3", AnswerTo(f, t3, 2.0f)) == wire::ERROR_UNSPECIFIED);
  REQUIRE(f.Finish());
  // The recovered staleness still discounts dev2's update.
  CHECK(f.engine->global().data[0] == Approx(1.0 + 4.0 / (2.0 * std::sqrt(2.0)) + 1.0));
}

TEST_CASE("Async: a declined task frees its slot, and the deadline closes a partial buffer at min_updates",
          "[round_engine][async]") {
  Fixture f(4);
  MakeAsync(&f);
  f.config.async.buffer = 3;
  f.config.min_updates = 2;
  f.Start();
  const auto now = RoundEngine::Clock::now();
  REQUIRE(*f.engine->MaybeStartBuffer(now));
  auto t0 = GiveTask(&f, "dev0");
  GiveTask(&f, "dev1");
  auto t2 = GiveTask(&f, "dev2");
  CHECK_FALSE(f.engine->AwaitsTask("dev3"));
  f.engine->Decline("dev1", 1, "battery low", now);
  CHECK(f.engine->in_flight() == 2);
  CHECK(f.engine->AwaitsTask("dev3"));
  REQUIRE(f.Send("dev0", AnswerTo(f, t0, 1.0f)) == wire::ERROR_UNSPECIFIED);
  CHECK_FALSE(f.Finish(now + 31s));  // one update: below min_updates, stays open
  REQUIRE(f.Send("dev2", AnswerTo(f, t2, 3.0f)) == wire::ERROR_UNSPECIFIED);
  CHECK_FALSE(f.Finish(now + 1s));  // 2 of 3 before the deadline
  REQUIRE(f.Finish(now + 31s));
  CHECK(f.seen.back().completed);
  CHECK(f.seen.back().received == 2);
  CHECK(f.engine->global().data[0] == Approx(2.0));
}

TEST_CASE("Async with client-level DP: each version is accounted without subsampling, noise for K",
          "[round_engine][async]") {
  Fixture f(4);
  MakeAsync(&f);
  f.config.dp.mode = DpConfig::Mode::kClientCentral;
  f.config.dp.noise_multiplier = 1.0;
  f.config.dp.clip_norm = 1.0;
  f.config.dp.epsilon_budget = 1000;
  f.Start();
  REQUIRE(*f.engine->MaybeStartBuffer(RoundEngine::Clock::now()));
  auto t0 = GiveTask(&f, "dev0"), t1 = GiveTask(&f, "dev1");
  REQUIRE(f.Send("dev0", AnswerTo(f, t0, 0.1f)) == wire::ERROR_UNSPECIFIED);
  REQUIRE(f.Send("dev1", AnswerTo(f, t1, 0.1f)) == wire::ERROR_UNSPECIFIED);
  REQUIRE(f.Finish());
  REQUIRE(f.seen.back().completed);
  REQUIRE(f.seen.back().epsilon.has_value());
  privacy::RdpAccountant expected;
  REQUIRE(expected.Compose(1.0, 1.0, 1).ok());  // q = 1: one Gaussian mechanism
  auto spent = expected.GetPrivacySpent(f.config.dp.delta);
  REQUIRE(spent.ok());
  CHECK(*f.seen.back().epsilon == Approx(spent->epsilon));
}
