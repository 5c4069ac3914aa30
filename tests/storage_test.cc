// The storage layer: one contract, checked on the RocksDB and the in-memory
// implementation alike; and what the aggregator's store builds on it.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>

#include "aggregator/server.h"
#include "aggregator/store.h"
#include "client/device_store.h"
#include "privacy/keys.h"
#include "privacy/rdp_accountant.h"
#include "proto/codec.h"
#include "storage/kv_store.h"
#include "testing/test_storage.h"

using namespace flotilla;

namespace {

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& name) {
    path = std::filesystem::temp_directory_path() /
           ("flotilla-storage-" + std::to_string(::getpid()) + "-" + name + std::to_string(counter++));
    std::filesystem::remove_all(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  static inline int counter = 0;
};

storage::StoreOptions TwoFamilies() {
  storage::StoreOptions o;
  o.families = {"a", "b"};
  o.blob_families = {"b"};
  return o;
}

void CheckContract(storage::KvStore* kv) {
  storage::WriteBatch batch;
  batch.Put("a", "k1", "v1");
  batch.Put("a", "k2", "v2");
  batch.Put("a", "x1", "other prefix");
  batch.Put("b", std::string(1, '\0') + "z", std::string(10000, 'b'));  // a blob-sized value
  REQUIRE(kv->Write(batch, "first").ok());
  CHECK(*kv->Get("a", "k1") == "v1");
  CHECK(kv->Get("a", "nope").status().code() == StatusCode::kNotFound);
  CHECK(kv->Get("b", std::string(1, '\0') + "z")->size() == 10000);
  std::vector<std::string> keys;
  REQUIRE(kv->Scan("a", "k", [&](std::string_view k, std::string_view) {
              keys.emplace_back(k);
              return Status::Ok();
            }).ok());
  CHECK(keys == std::vector<std::string>{"k1", "k2"});
  CHECK(*kv->LastKey("a") == "x1");
  CHECK(kv->LastKey("b")->size() == 2);
  // A failing visitor stops the scan with its status.
  int visited = 0;
  Status st = kv->Scan("a", "", [&](std::string_view, std::string_view) {
    ++visited;
    return Aborted("stop");
  });
  CHECK(st.code() == StatusCode::kAborted);
  CHECK(visited == 1);
  // Deletes and ranges, atomically with puts.
  storage::WriteBatch second;
  second.DeleteRange("a", "k", "l");
  second.Delete("b", std::string(1, '\0') + "z");
  second.Put("a", "k9", "after");
  REQUIRE(kv->Write(second, "second").ok());
  CHECK(kv->Get("a", "k1").status().code() == StatusCode::kNotFound);
  CHECK(*kv->Get("a", "k9") == "after");
  CHECK(*kv->LastKey("b") == "");
  // A batch naming an unknown family writes nothing.
  storage::WriteBatch bad;
  bad.Put("a", "k1", "must not appear");
  bad.Put("missing", "k", "v");
  CHECK_FALSE(kv->Write(bad, "bad").ok());
  CHECK(kv->Get("a", "k1").status().code() == StatusCode::kNotFound);
}

}  // namespace

TEST_CASE("The in-memory store keeps the storage contract", "[storage]") {
  auto kv = storage::NewMemoryStore(TwoFamilies());
  CheckContract(kv.get());
}

TEST_CASE("The RocksDB store keeps the storage contract and survives a reopen", "[storage]") {
  TempDir dir("rocks");
  {
    auto kv = storage::OpenRocksDb(dir.path.string(), TwoFamilies());
    REQUIRE(kv.ok());
    CheckContract(kv->get());
    // One process at a time.
    auto second = storage::OpenRocksDb(dir.path.string(), TwoFamilies());
    CHECK(second.status().code() == StatusCode::kFailedPrecondition);
    CHECK(second.status().message().find("locked") != std::string::npos);
  }
  auto reopened = storage::OpenRocksDb(dir.path.string(), TwoFamilies());
  REQUIRE(reopened.ok());
  CHECK(*(*reopened)->Get("a", "k9") == "after");
  reopened->reset();
  // Read-only: reads work, writes are refused.
  storage::StoreOptions ro = TwoFamilies();
  ro.read_only = true;
  auto view = storage::OpenRocksDb(dir.path.string(), ro);
  REQUIRE(view.ok());
  CHECK(*(*view)->Get("a", "x1") == "other prefix");
  storage::WriteBatch w;
  w.Put("a", "k", "v");
  CHECK((*view)->Write(w, "w").code() == StatusCode::kFailedPrecondition);
}

TEST_CASE("Obsolete column families are dropped and unknown ones kept", "[storage]") {
  TempDir dir("families");
  {
    storage::StoreOptions old = TwoFamilies();
    old.families.push_back("metrics");
    old.families.push_back("someone_elses");
    auto kv = storage::OpenRocksDb(dir.path.string(), old);
    REQUIRE(kv.ok());
    storage::WriteBatch w;
    w.Put("someone_elses", "k", "v");
    REQUIRE((*kv)->Write(w, "w").ok());
  }
  storage::StoreOptions now = TwoFamilies();
  now.obsolete_families = {"metrics"};
  auto kv = storage::OpenRocksDb(dir.path.string(), now);
  REQUIRE(kv.ok());
  CHECK((*kv)->Get("metrics", "k").status().code() == StatusCode::kInternal);  // gone
  CHECK(*(*kv)->Get("someone_elses", "k") == "v");                             // kept
}

TEST_CASE("The device store runs on the in-memory store", "[storage]") {
  auto store = client::DeviceStore::OnKvStore(storage::NewMemoryStore(client::DeviceStore::Families()));
  wire::Update u;
  u.set_round(4);
  REQUIRE(store->PutOutbox(u).ok());
  CHECK(store->ListOutbox()->size() == 1);
  REQUIRE(store->RemoveOutbox(4).ok());
  CHECK(store->ListOutbox()->empty());
  REQUIRE(store->NoteVerified("f", 7).ok());
  REQUIRE(store->NoteVerified("f", 3).ok());  // never lowers
  CHECK(*store->NewestVerified("f") == 7);
  CHECK(*store->NewestVerified("g") == 0);
}

TEST_CASE("Listing model versions reads the index - stores without one are indexed once", "[storage]") {
  auto memory = std::shared_ptr<storage::KvStore>(storage::NewMemoryStore(aggregator::Store::Families()));
  {
    // As an earlier version wrote it: models, no index.
    storage::WriteBatch w;
    for (uint64_t v : {1, 2, 5}) {
      records::ModelRecord m;
      m.set_version(v);
      m.set_arch("2nn");
      m.mutable_weights()->set_data(std::string(1000, 'w'));
      std::string key(8, '\0');
      key[7] = static_cast<char>(v);
      w.Put("models", key, m.SerializeAsString());
    }
    REQUIRE(memory->Write(w, "old").ok());
  }
  auto store = aggregator::Store::OnKvStore(std::make_unique<testing::SharedKvStore>(memory));
  REQUIRE(store.ok());
  CHECK(*(*store)->ListModelVersions() == std::vector<uint64_t>{1, 2, 5});
  CHECK((*store)->LatestModelVersion()->value() == 5);
  auto summaries = (*store)->ListModelSummaries();
  REQUIRE(summaries.ok());
  REQUIRE(summaries->size() == 3);
  CHECK(summaries->at(2).arch() == "2nn");
  CHECK(summaries->at(2).weights().data().empty());  // the index holds no weights
  CHECK((*store)->GetModel(5)->weights().data().size() == 1000);
}

TEST_CASE("A tool opens a store written before the model index read-only", "[storage]") {
  TempDir dir("pre-index");
  {
    storage::StoreOptions old;
    old.families = {"models", "rounds", "updates", "clients", "privacy_ledger", "metrics", "strategy_state"};
    auto kv = storage::OpenRocksDb(dir.path.string(), old);
    REQUIRE(kv.ok());
    storage::WriteBatch w;
    for (uint64_t v : {1, 2}) {
      records::ModelRecord m;
      m.set_version(v);
      m.set_arch("2nn");
      m.mutable_weights()->set_data(std::string(5000, 'w'));
      std::string key(8, '\0');
      key[7] = static_cast<char>(v);
      w.Put("models", key, m.SerializeAsString());
    }
    REQUIRE((*kv)->Write(w, "old").ok());
  }
  auto store = aggregator::Store::OpenReadOnly(dir.path.string());
  REQUIRE(store.ok());
  CHECK(*(*store)->ListModelVersions() == std::vector<uint64_t>{1, 2});
  CHECK((*store)->LatestModelVersion()->value() == 2);
  auto summaries = (*store)->ListModelSummaries();
  REQUIRE(summaries.ok());
  REQUIRE(summaries->size() == 2);
  CHECK(summaries->at(1).weights().data().empty());
  auto quarantine = (*store)->ListQuarantine();  // a family it never had
  REQUIRE(quarantine.ok());
  CHECK(quarantine->empty());
}

TEST_CASE("A crash between accounting and committing a round charges epsilon once", "[storage][dp]") {
  auto memory = std::shared_ptr<storage::KvStore>(storage::NewMemoryStore(aggregator::Store::Families()));
  aggregator::AggregatorConfig config;
  config.endpoint = "tcp://127.0.0.1:*";
  config.model_arch = "tiny";
  config.rounds = 2;
  config.min_clients = 2;
  config.dp.mode = aggregator::DpConfig::Mode::kClientCentral;
  config.dp.noise_multiplier = 1.0;
  config.dp.clip_norm = 1.0;
  config.dp.delta = 1e-5;
  config.dp.epsilon_budget = 100;
  auto signing = privacy::GenerateSigningKeyPair();
  auto server = privacy::GenerateCurveKeyPair();
  REQUIRE(signing.ok());
  REQUIRE(server.ok());
  config.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(signing).value());
  config.socket.curve.public_key = server->public_z85;
  config.socket.curve.secret_key = server->SecretZ85();
  std::string keys[2];
  for (int i = 0; i < 2; ++i) {
    keys[i] = privacy::DeriveCurveKeyPairForSimulation(i)->public_z85;
    config.allowed_clients.insert(keys[i]);
  }
  auto layout = std::make_shared<const Layout>(*Layout::Create({{"fc.weight", {2, 3}}, {"fc.bias", {2}}}));
  auto send = [&](aggregator::Aggregator* agg, int i, wire::Envelope env) {
    return agg->Step({"p" + std::to_string(i), keys[i], proto::SerializeEnvelope(&env)});
  };
  auto update = [&](aggregator::Aggregator* agg, int i) {
    wire::Envelope env;
    env.mutable_update()->set_round(1);
    env.mutable_update()->set_model_version(1);
    env.mutable_update()->set_num_examples(10);
    Weights d = Weights::Zeros(layout);
    for (float& x : d.data) x = 0.01f;
    proto::WeightsToProto(d, env.mutable_update()->mutable_delta());
    return send(agg, i, env);
  };
  net::Context context;
  {
    // The commit of round 1 fails, as if the process died before it.
    auto store = aggregator::Store::OnKvStore(
        std::make_unique<testing::FailingKvStore>(memory, "committing round 1", 1));
    REQUIRE(store.ok());
    auto agg = aggregator::Aggregator::Create(config, &context, Weights::Zeros(layout), nullptr, nullptr,
                                              std::move(store).value());
    REQUIRE(agg.ok());
    for (int i = 0; i < 2; ++i) {
      wire::Envelope hello;
      hello.mutable_hello()->set_client_name("c" + std::to_string(i));
      REQUIRE(send(agg->get(), i, hello).ok());
    }
    REQUIRE(update(agg->get(), 0).ok());
    Status st = update(agg->get(), 1);  // closes the round: the commit fails
    CHECK(st.code() == StatusCode::kUnavailable);
  }
  // Restart on the same store: round 1 resumes with both updates and commits.
  // (A new process: a new context, so the ZAP endpoint is free.)
  net::Context restarted;
  auto store = aggregator::Store::OnKvStore(std::make_unique<testing::SharedKvStore>(memory));
  REQUIRE(store.ok());
  auto agg = aggregator::Aggregator::Create(config, &restarted, Weights::Zeros(layout), nullptr, nullptr,
                                            std::move(store).value());
  INFO(agg.status().ToString());
  REQUIRE(agg.ok());
  wire::Envelope status;
  status.mutable_status_request();
  REQUIRE(send(agg->get(), 0, status).ok());
  REQUIRE((*agg)->history().size() == 1);
  CHECK((*agg)->history()[0].completed);
  // The epsilon of exactly one round, computed independently.
  privacy::RdpAccountant one;
  REQUIRE(one.Compose(1.0, 1.0, 1).ok());
  const double expected = one.GetPrivacySpent(1e-5)->epsilon;
  CHECK(*(*agg)->history()[0].epsilon == Approx(expected).epsilon(1e-9));
  auto view = aggregator::Store::OnKvStore(std::make_unique<testing::SharedKvStore>(memory));
  auto ledger = (*view)->ListLedger();
  REQUIRE(ledger.ok());
  REQUIRE(ledger->size() == 1);
  CHECK(ledger->at(0).epsilon_after() == Approx(expected).epsilon(1e-9));
}

TEST_CASE("Round records that contradict the store never stop the aggregator from starting", "[storage]") {
  // A round record stored under another round's key is quarantined; a
  // running round on a model that is not the latest is recorded as failed
  // (its updates are deltas against another model) and the next starts.
  auto memory = std::shared_ptr<storage::KvStore>(storage::NewMemoryStore(aggregator::Store::Families()));
  auto round_key = [](uint32_t r) {
    std::string key(4, '\0');
    key[3] = static_cast<char>(r);
    return key;
  };
  {
    storage::WriteBatch w;
    records::RoundRecord misplaced;
    misplaced.set_round(0);
    misplaced.set_outcome(records::RoundRecord::OUTCOME_RUNNING);
    w.Put("rounds", round_key(1), misplaced.SerializeAsString());
    records::RoundRecord stale;
    stale.set_round(2);
    stale.set_outcome(records::RoundRecord::OUTCOME_RUNNING);
    stale.set_base_model_version(7);
    stale.add_selected("c0");
    w.Put("rounds", round_key(2), stale.SerializeAsString());
    REQUIRE(memory->Write(w, "records").ok());
  }
  aggregator::AggregatorConfig config;
  config.endpoint = "tcp://127.0.0.1:*";
  config.model_arch = "tiny";
  config.rounds = 5;
  config.min_clients = 1;
  config.socket.security = net::TransportSecurity::kNone;
  auto signing = privacy::GenerateSigningKeyPair();
  REQUIRE(signing.ok());
  config.signing_key = std::make_shared<const privacy::SigningKeyPair>(std::move(signing).value());
  auto layout = std::make_shared<const Layout>(*Layout::Create({{"fc.weight", {2, 3}}, {"fc.bias", {2}}}));
  net::Context context;
  auto store = aggregator::Store::OnKvStore(std::make_unique<testing::SharedKvStore>(memory));
  REQUIRE(store.ok());
  auto agg = aggregator::Aggregator::Create(config, &context, Weights::Zeros(layout), nullptr, nullptr,
                                            std::move(store).value());
  INFO(agg.status().ToString());
  REQUIRE(agg.ok());
  CHECK((*agg)->model_version() == 1);
  agg->reset();
  auto view = aggregator::Store::OnKvStore(std::make_unique<testing::SharedKvStore>(memory));
  REQUIRE(view.ok());
  auto quarantined = (*view)->ListQuarantine();
  REQUIRE(quarantined.ok());
  REQUIRE(quarantined->size() == 1);
  CHECK(quarantined->at(0).family() == "rounds");
  auto rounds = (*view)->ListRounds(nullptr);
  REQUIRE(rounds.ok());
  REQUIRE(rounds->size() == 1);
  CHECK(rounds->at(0).round() == 2);
  CHECK(rounds->at(0).outcome() == records::RoundRecord::OUTCOME_FAILED);
  CHECK(rounds->at(0).note().find("latest model is 1") != std::string::npos);
}

namespace {

uint64_t DirectoryBytes(const std::filesystem::path& dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) total += e.file_size();
  }
  return total;
}

}  // namespace

TEST_CASE("With retention the store's size on disk stays flat over 300 rounds", "[storage][slow]") {
  TempDir dir("growth");
  auto store = aggregator::Store::Open(dir.path.string());
  REQUIRE(store.ok());
  const std::string model_bytes(800000, 'm');  // a 2NN's worth
  // A device record written once, early: a family written this rarely
  // used to keep every write-ahead log alive.
  records::ClientRecord client;
  client.set_client_id("dev");
  REQUIRE((*store)->PutClient(client).ok());
  std::vector<uint64_t> sizes;
  for (uint32_t r = 1; r <= 300; ++r) {
    records::RoundRecord round;
    round.set_round(r);
    round.set_outcome(records::RoundRecord::OUTCOME_RUNNING);
    REQUIRE((*store)->PutRound(round).ok());
    for (const char* id : {"a", "b"}) {
      records::UpdateRecord u;
      u.set_round(r);
      u.set_client_id(id);
      u.mutable_delta()->set_data(model_bytes);
      REQUIRE((*store)->PutUpdate(u).ok());
    }
    records::ModelRecord model;
    model.set_version(r + 1);
    model.mutable_weights()->set_data(model_bytes);
    aggregator::RoundCommit commit;
    round.set_outcome(records::RoundRecord::OUTCOME_COMPLETED);
    commit.round = round;
    commit.model = &model;
    if (r > 5) commit.expire = {r - 4};  // keep the newest five versions
    REQUIRE((*store)->CommitRound(commit).ok());
    if (r % 100 == 0) sizes.push_back(DirectoryBytes(dir.path));
  }
  std::printf(
      "store on disk after 100, 200, 300 rounds (2.4 MB written per round, 5 versions kept): "
      "%.1f, %.1f, %.1f MB\n",
      sizes[0] / 1e6, sizes[1] / 1e6, sizes[2] / 1e6);
  // Flat: bounded by the write-ahead log and memory-table limits, not by
  // the 720 MB written.
  CHECK(sizes[2] < 150e6);
  CHECK(sizes[2] < sizes[0] * 1.5);
}
