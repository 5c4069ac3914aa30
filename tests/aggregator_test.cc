#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>

#include "aggregator/server.h"
#include "aggregator/store.h"
#include "aggregator/strategy.h"
#include "proto/codec.h"
#include "storage/kv_store.h"
#include "testing/test_storage.h"

using namespace flotilla;
using namespace flotilla::aggregator;

namespace {

std::shared_ptr<const Layout> SmallLayout() {
  return std::make_shared<const Layout>(*Layout::Create({{"w", {2, 2}}, {"b", {1}}}));
}

Weights Make(const std::shared_ptr<const Layout>& layout, std::vector<float> values) {
  Weights w;
  w.layout = layout;
  w.data = std::move(values);
  return w;
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("flotilla-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  static inline int counter = 0;
};

}  // namespace

TEST_CASE("FedAvg equals the hand-computed example-weighted mean", "[aggregator]") {
  auto layout = SmallLayout();
  Weights global = Make(layout, {1, 2, 3, 4, 5});
  // Three clients with 10, 30 and 60 examples.
  Weights d1 = Make(layout, {1, 0, 0, 0, -1});
  Weights d2 = Make(layout, {0, 1, 0, 2, 0});
  Weights d3 = Make(layout, {0, 0, -1, 1, 0.5f});
  WeightedMean mean(layout);
  REQUIRE(mean.Add(d1, 10).ok());
  REQUIRE(mean.Add(d2, 30).ok());
  REQUIRE(mean.Add(d3, 60).ok());
  auto m = mean.Mean();
  REQUIRE(m.ok());
  // The server's plain SGD step at rate 1 (what the round engine runs).
  ServerState state, next_state;
  auto next = ServerStep(ServerOptimizer(), 1.0, global, *m, state, &next_state);
  REQUIRE(next.ok());
  // By hand: global + (10*d1 + 30*d2 + 60*d3) / 100.
  const std::vector<double> expected = {1 + 0.1, 2 + 0.3, 3 - 0.6, 4 + (0.6 + 0.6), 5 + (-0.1 + 0.3)};
  for (size_t i = 0; i < expected.size(); ++i) CHECK(next->data[i] == Approx(expected[i]).epsilon(1e-6));
  // Equivalently, the weighted mean of the local models.
  for (size_t i = 0; i < expected.size(); ++i) {
    const double local_mean = (10.0 * (global.data[i] + d1.data[i]) + 30.0 * (global.data[i] + d2.data[i]) +
                               60.0 * (global.data[i] + d3.data[i])) /
                              100.0;
    CHECK(next->data[i] == Approx(local_mean).epsilon(1e-6));
  }
}

TEST_CASE("WeightedMean refuses bad input and keeps its sum", "[aggregator]") {
  auto layout = SmallLayout();
  WeightedMean mean(layout);
  CHECK_FALSE(mean.Mean().ok());
  auto other = std::make_shared<const Layout>(*Layout::Create({{"w", {4}}, {"b", {1}}}));
  CHECK_FALSE(mean.Add(Make(other, {1, 1, 1, 1, 1}), 1).ok());
  CHECK_FALSE(mean.Add(Make(layout, {1, NAN, 1, 1, 1}), 1).ok());
  CHECK_FALSE(mean.Add(Make(layout, {1, 1, 1, 1, 1}), 0).ok());
  CHECK(mean.count() == 0);
  REQUIRE(mean.Add(Make(layout, {2, 2, 2, 2, 2}), 3).ok());
  CHECK(mean.Mean()->data[0] == 2.0f);
}

TEST_CASE("Coordinate-wise median and trimmed mean match hand-computed values", "[aggregator][strategy]") {
  auto layout = SmallLayout();
  // Five deltas; the last is an outlier in every coordinate.
  const std::vector<std::vector<float>> rows = {{1, 10, -1, 0, 5},
                                                {2, 20, -2, 0, 5},
                                                {3, 30, -3, 0, 5},
                                                {4, 40, -4, 0, 5},
                                                {1000, -1000, 1000, 1e6f, -1e6f}};
  auto median = ParseStrategy("median");
  REQUIRE(median.ok());
  RobustCombiner med(layout, *median);
  for (const auto& r : rows) REQUIRE(med.Add(Make(layout, r)).ok());
  auto m = med.Result();
  REQUIRE(m.ok());
  CHECK(m->data == std::vector<float>{3, 20, -2, 0, 5});
  // Even count: mean of the two middle values.
  RobustCombiner even(layout, *median);
  for (size_t i = 0; i < 4; ++i) REQUIRE(even.Add(Make(layout, rows[i])).ok());
  CHECK(even.Result()->data == std::vector<float>{2.5f, 25, -2.5f, 0, 5});

  auto trimmed = ParseStrategy("trimmed-mean:0.2");  // drops 1 of 5 at each end
  REQUIRE(trimmed.ok());
  RobustCombiner tm(layout, *trimmed);
  for (const auto& r : rows) REQUIRE(tm.Add(Make(layout, r)).ok());
  auto t = tm.Result();
  REQUIRE(t.ok());
  CHECK(t->data[0] == Approx(3.0));   // (2 + 3 + 4) / 3
  CHECK(t->data[1] == Approx(20.0));  // (10 + 20 + 30) / 3
  CHECK(t->data[3] == Approx(0.0));
  // A NaN delta is refused and changes nothing.
  CHECK_FALSE(tm.Add(Make(layout, {NAN, 0, 0, 0, 0})).ok());
  CHECK(tm.count() == 5);
  CHECK_FALSE(RobustCombiner(layout, *median).Result().ok());
}

TEST_CASE("Strategy names parse and bad ones are refused", "[aggregator][strategy]") {
  CHECK(ParseStrategy("fedavg")->kind == Strategy::Kind::kFedAvg);
  CHECK(ParseStrategy("trimmed-mean:0.1")->trim_fraction == Approx(0.1));
  CHECK_FALSE(ParseStrategy("krum").ok());
  CHECK_FALSE(ParseStrategy("trimmed-mean:0.5").ok());
  CHECK_FALSE(ParseStrategy("trimmed-mean:x").ok());
  CHECK_FALSE(ParseStrategy("trimmed-mean:").ok());
}

TEST_CASE("Strategies that need individual updates are refused under secure aggregation",
          "[aggregator][strategy]") {
  AggregatorConfig c;
  auto key = privacy::GenerateSigningKeyPair();
  REQUIRE(key.ok());
  c.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(key).value());
  c.allowed_clients.insert("placeholder");
  c.secagg.enabled = true;
  REQUIRE(c.Validate().ok());
  c.strategy = *ParseStrategy("median");
  auto st = c.Validate();
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("secure aggregation shows the aggregator only their sum") != std::string::npos);
  c.strategy = *ParseStrategy("trimmed-mean:0.1");
  CHECK_FALSE(c.Validate().ok());
  c.secagg.enabled = false;
  CHECK(c.Validate().ok());
  // Client-level DP is calibrated for the mean, so a robust strategy is refused there too.
  c.dp.mode = DpConfig::Mode::kClientDistributed;
  c.dp.epsilon_budget = 8;
  CHECK_FALSE(c.Validate().ok());
  // Adaptive clipping needs per-device bits that secure aggregation hides.
  c.strategy = Strategy();
  c.secagg.enabled = true;
  c.dp.adaptive_clip = true;
  st = c.Validate();
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("adaptive clipping") != std::string::npos);
}

TEST_CASE("SCAFFOLD is refused with secure aggregation, DP and local Adam, each saying why",
          "[aggregator][strategy]") {
  AggregatorConfig c;
  auto key = privacy::GenerateSigningKeyPair();
  REQUIRE(key.ok());
  c.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(key).value());
  c.allowed_clients.insert("placeholder");
  c.strategy = *ParseStrategy("scaffold");
  CHECK(c.strategy.Name() == "scaffold");
  CHECK(c.strategy.stateful());
  REQUIRE(c.Validate().ok());
  c.secagg.enabled = true;
  auto st = c.Validate();
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("SCAFFOLD needs each device's control-variate change") != std::string::npos);
  c.secagg.enabled = false;
  c.dp.mode = DpConfig::Mode::kClientDistributed;
  c.dp.epsilon_budget = 8;
  st = c.Validate();
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("not covered by the privacy accounting") != std::string::npos);
  c.dp = DpConfig();
  c.optimizer = "adam";
  st = c.Validate();
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("--optimizer sgd") != std::string::npos);
}

TEST_CASE("Store keeps updates durable sorted by client and commits rounds atomically",
          "[aggregator][store]") {
  TempDir dir;
  auto layout = SmallLayout();
  {
    auto store = Store::Open(dir.path.string());
    REQUIRE(store.ok());
    for (const char* id : {"zeta", "alpha", "mid"}) {
      records::UpdateRecord u;
      u.set_round(3);
      u.set_client_id(id);
      u.set_num_examples(7);
      proto::WeightsToProto(Make(layout, {1, 2, 3, 4, 5}), u.mutable_delta());
      REQUIRE((*store)->PutUpdate(u).ok());
    }
    records::UpdateRecord dup;
    dup.set_round(3);
    dup.set_client_id("mid");
    CHECK((*store)->PutUpdate(dup).code() == StatusCode::kAlreadyExists);
    records::UpdateRecord other_round;
    other_round.set_round(4);
    other_round.set_client_id("aaa");
    REQUIRE((*store)->PutUpdate(other_round).ok());
  }
  // Reopen: everything acknowledged is still there.
  auto store = Store::Open(dir.path.string());
  REQUIRE(store.ok());
  std::vector<std::string> order;
  REQUIRE((*store)
              ->ForEachUpdate(3,
                              [&](const records::UpdateRecord& u) {
                                order.push_back(u.client_id());
                                return Status::Ok();
                              })
              .ok());
  CHECK(order == std::vector<std::string>{"alpha", "mid", "zeta"});

  SECTION("a second process cannot open a locked store") {
    auto second = Store::Open(dir.path.string());
    CHECK_FALSE(second.ok());
  }
  SECTION("committing a round stores the model and drops its updates") {
    records::RoundRecord round;
    round.set_round(3);
    round.set_outcome(records::RoundRecord::OUTCOME_COMPLETED);
    records::ModelRecord model;
    model.set_version(2);
    model.set_arch("test");
    RoundCommit commit;
    commit.round = round;
    commit.model = &model;
    REQUIRE((*store)->CommitRound(commit).ok());
    int left = 0;
    REQUIRE((*store)
                ->ForEachUpdate(3,
                                [&](const records::UpdateRecord&) {
                                  ++left;
                                  return Status::Ok();
                                })
                .ok());
    CHECK(left == 0);
    CHECK((*store)->HasUpdate(4, "aaa"));
    auto latest = (*store)->LatestModelVersion();
    REQUIRE(latest.ok());
    CHECK(latest->value() == 2);
    CHECK((*store)->GetModel(2)->arch() == "test");
    CHECK((*store)->GetModel(9).status().code() == StatusCode::kNotFound);
    auto r = (*store)->GetRound(3);
    REQUIRE(r.ok());
    CHECK(r->value().outcome() == records::RoundRecord::OUTCOME_COMPLETED);
  }
}

TEST_CASE("A nearly full disk refuses writes cleanly and recovers when space returns",
          "[aggregator][store]") {
  TempDir dir;
  auto store = Store::Open(dir.path.string());
  REQUIRE(store.ok());
  records::UpdateRecord u;
  u.set_round(1);
  u.set_client_id("dev");
  u.set_num_examples(3);
  // Pretend the disk is full: demand more free space than any disk has.
  (*store)->set_min_free_bytes(uint64_t{1} << 62);
  Status st = (*store)->PutUpdate(u);
  CHECK(st.code() == StatusCode::kResourceExhausted);
  CHECK(st.message().find("disk nearly full") != std::string::npos);
  CHECK_FALSE((*store)->HasUpdate(1, "dev"));  // nothing half-written
  records::RoundRecord r;
  r.set_round(1);
  RoundCommit commit;
  commit.round = r;
  CHECK((*store)->CommitRound(commit).code() == StatusCode::kResourceExhausted);
  CHECK_FALSE((*store)->GetRound(1)->has_value());
  // Space is back: the same write succeeds.
  (*store)->set_min_free_bytes(0);
  REQUIRE((*store)->PutUpdate(u).ok());
  CHECK((*store)->HasUpdate(1, "dev"));
}

TEST_CASE("Asynchronous rounds: staleness weights, and the combinations refused with why",
          "[aggregator][async]") {
  AsyncConfig a;
  a.buffer = 10;
  CHECK(a.Concurrency() == 20);
  CHECK(a.Weight(0) == 1.0);
  CHECK(a.Weight(3) == Approx(0.5));  // 1/sqrt(4)
  a.staleness_weight = "constant";
  CHECK(a.Weight(7) == 1.0);
  a.staleness_weight = "poly:1";
  CHECK(a.Weight(3) == Approx(0.25));
  CHECK(a.Validate().ok());
  for (const char* bad : {"poly:", "poly:x", "poly:-1", "linear", ""}) {
    a.staleness_weight = bad;
    CHECK_FALSE(a.Validate().ok());
  }
  a.staleness_weight = "sqrt";
  a.concurrency = 5;  // fewer than the buffer could never fill it
  CHECK_FALSE(a.Validate().ok());

  AggregatorConfig c;
  auto key = privacy::GenerateSigningKeyPair();
  REQUIRE(key.ok());
  c.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(key).value());
  c.allowed_clients.insert("placeholder");
  c.async.buffer = 4;
  REQUIRE(c.Validate().ok());
  c.secagg.enabled = true;
  auto st = c.Validate();
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("fixed cohort") != std::string::npos);
  c.secagg.enabled = false;
  c.dp.epsilon_budget = 8;
  c.dp.mode = DpConfig::Mode::kClientCentral;  // accounted per version
  CHECK(c.Validate().ok());
  c.dp.mode = DpConfig::Mode::kRecord;
  st = c.Validate();
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("record-level DP") != std::string::npos);
  c.dp = DpConfig();
  c.strategy = *ParseStrategy("scaffold");
  CHECK_FALSE(c.Validate().ok());
  c.strategy = *ParseStrategy("fedadam");
  CHECK(c.Validate().ok());
  c.min_updates = 5;  // more than the buffer
  CHECK_FALSE(c.Validate().ok());
}

TEST_CASE("Stored updates are sealed: a byte changed on disk is found on read, the payload read in place",
          "[aggregator][store]") {
  std::shared_ptr<storage::KvStore> memory(storage::NewMemoryStore(Store::Families()));
  auto opened = Store::OnKvStore(std::make_unique<testing::SharedKvStore>(memory));
  REQUIRE(opened.ok());
  std::unique_ptr<Store> store = std::move(opened).value();
  auto layout = SmallLayout();
  for (const char* id : {"a", "b"}) {
    records::UpdateRecord u;
    u.set_round(1);
    u.set_client_id(id);
    u.set_num_examples(9);
    (*u.mutable_metrics())["train_loss"] = 0.5;
    proto::WeightsToProto(Make(layout, {1, 2, 3, 4, 5}), u.mutable_delta());
    REQUIRE(store->PutUpdate(u).ok());
  }
  // In place: the record without its payload, and the payload's bytes.
  std::vector<std::string> seen;
  REQUIRE(store
              ->ForEachUpdatePayload(1,
                                     [&](const records::UpdateRecord& meta, std::string_view data) {
                                       CHECK(meta.delta().data().empty());
                                       CHECK(meta.delta().layout_size() == 2);
                                       CHECK(meta.metrics().at("train_loss") == 0.5);
                                       CHECK(data.size() == 5 * sizeof(float));
                                       auto payload = proto::Float32Payload(meta.delta(), data, *layout);
                                       CHECK(payload.ok());
                                       seen.push_back(meta.client_id());
                                       return Status::Ok();
                                     })
              .ok());
  CHECK(seen == std::vector<std::string>{"a", "b"});
  // One float of b's payload changes on disk (a bit flip RocksDB's own
  // checksums are not asked to catch for this family).
  std::string key;
  std::string value;
  REQUIRE(memory
              ->Scan("updates", "",
                     [&](std::string_view k, std::string_view v) {
                       if (k.substr(k.size() - 1) == "b") {
                         key = std::string(k);
                         value = std::string(v);
                       }
                       return Status::Ok();
                     })
              .ok());
  REQUIRE_FALSE(value.empty());
  value[value.size() - 2] ^= 0x10;
  storage::WriteBatch batch;
  batch.Put("updates", key, value);
  REQUIRE(memory->Write(batch, "tamper").ok());
  std::vector<std::string> corrupt;
  seen.clear();
  REQUIRE(store
              ->ForEachUpdate(
                  1,
                  [&](const records::UpdateRecord& u) {
                    seen.push_back(u.client_id());
                    CHECK(u.delta().data().size() == 5 * sizeof(float));  // whole again
                    return Status::Ok();
                  },
                  &corrupt)
              .ok());
  CHECK(seen == std::vector<std::string>{"a"});
  CHECK(corrupt == std::vector<std::string>{"b"});
  CHECK(store->ForEachUpdate(1, [](const records::UpdateRecord&) { return Status::Ok(); }).code() ==
        StatusCode::kDataLoss);
}
