// The device runtime as a library (client/device.h) and its data sources
// (client/data_source.h), against a real aggregator over CURVE on loopback.
#include "client/device.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "aggregator/server.h"
#include "aggregator/store.h"
#include "client/data_source.h"
#include "client/device_store.h"
#include "proto/codec.h"
#include "sim/fleet_data.h"
#include "sim/simulation.h"
#include "storage/kv_store.h"
#include "testing/test_aggregator.h"
#include "testing/test_keys.h"
#include "testing/test_sim.h"
#include "training/dataset.h"
#include "training/model.h"

using namespace flotilla;

namespace {

using testing::TempPath;

// A logreg federation of `rounds` that needs `min_clients` devices and
// closes a round on the first update when others decline.
struct Federation {
  std::shared_ptr<testing::TestKeys> owned_keys;
  const testing::TestKeys& keys;
  std::filesystem::path store;
  net::Context context;
  std::unique_ptr<aggregator::Aggregator> agg;
  Status run;
  std::thread server;

  // `script`: a TorchScript model file from build/models whose "head.*"
  // parameters are personal (empty: the built-in logreg).
  Federation(const std::string& name, int rounds, int devices, const std::string& script = "",
             double lr = 0.05, const testing::TestKeys* same_keys = nullptr,
             const std::filesystem::path& reuse_store = {})
      : owned_keys(same_keys != nullptr ? nullptr : std::make_shared<testing::TestKeys>(devices)),
        keys(same_keys != nullptr ? *same_keys : *owned_keys),
        store(reuse_store.empty() ? TempPath(name) : reuse_store) {
    aggregator::AggregatorConfig config;
    config.endpoint = "tcp://127.0.0.1:*";
    config.store_path = store.string();
    config.model_arch = script.empty() ? "logreg" : "torchscript";
    config.learning_rate = lr;
    training::ModelSpec spec;
    spec.arch = config.model_arch;
    if (!script.empty()) {
      spec.path = std::string(FLOTILLA_MODELS) + "/" + script + ".pt";
      spec.personal = {"head.*"};
      config.model_personal = spec.personal;
    }
    config.rounds = rounds;
    config.min_clients = devices;
    config.min_updates = 1;
    config.round_deadline_seconds = 60.0;
    config.finish_grace_seconds = 1.0;
    keys.Apply(&config);
    auto runner = training::ModelRunner::Create(spec, 1);
    REQUIRE(runner.ok());
    auto created =
        aggregator::Aggregator::Create(config, &context, (*runner)->GetWeights(), nullptr, nullptr);
    REQUIRE(created.ok());
    agg = std::move(created).value();
    server = std::thread([this] { run = agg->Run(); });
  }
  ~Federation() {
    if (server.joinable()) server.join();
    std::filesystem::remove_all(store);
  }

  client::DeviceOptions Options(int i) const {
    client::DeviceOptions o;
    o.session.endpoint = agg->endpoint();
    o.session.name = "device-" + std::to_string(i);
    o.session.socket = keys.ClientSocket(i);
    o.model_public_key = keys.signing->public_key;
    return o;
  }
};

}  // namespace

TEST_CASE("The application's callback feeds each round and progress is reported", "[integration][device]") {
  Federation fed("device-callback", 3, 2);
  // Device 0: the application's own examples, fetched fresh every round.
  std::atomic<int> fetches{0};
  auto fetch = [&]() -> StatusOr<training::Dataset> {
    ++fetches;
    return training::MakeSynthetic(120, 10 + static_cast<uint64_t>(fetches.load()));
  };
  std::mutex mu;
  std::vector<client::Progress> events;
  client::DeviceCallbacks callbacks;
  callbacks.on_progress = [&](const client::Progress& p) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(p);
  };
  auto app = client::Device::Create(fed.Options(0), client::CallbackSource(fetch, 0.25, 7), callbacks);
  REQUIRE(app.ok());
  // Device 1: its data source fails every time (a camera that is off):
  // it declines, and the rounds do not wait for it.
  auto broken =
      client::Device::Create(fed.Options(1), client::CallbackSource([]() -> StatusOr<training::Dataset> {
                               return Unavailable("the camera is off");
                             }));
  REQUIRE(broken.ok());
  StatusOr<client::ClientStats> broken_stats = Internal("not run");
  std::thread other([&] { broken_stats = (*broken)->Run(); });
  auto stats = (*app)->Run();
  other.join();
  fed.server.join();
  REQUIRE(fed.run.ok());
  REQUIRE(stats.ok());
  CHECK(stats->rounds_trained == 3);
  CHECK(stats->recorded_rounds == std::vector<uint32_t>{1, 2, 3});
  CHECK(fetches == 4);  // once for Hello, then once per round
  REQUIRE(broken_stats.ok());
  CHECK(broken_stats->rounds_trained == 0);
  CHECK(broken_stats->rounds_without_data == 3);
  for (const auto& r : fed.agg->history()) {
    CHECK(r.completed);
    CHECK(r.received == 1);
    CHECK(r.seconds < 30);
  }
  // Per round: the task, every step (90 training examples: 3 steps of 32),
  // the update sent and recorded; then the end.
  std::map<client::Progress::Event, int> count;
  for (const auto& e : events) ++count[e.event];
  CHECK(count[client::Progress::Event::kTask] == 3);
  CHECK(count[client::Progress::Event::kStep] == 9);
  CHECK(count[client::Progress::Event::kUpdateSent] == 3);
  CHECK(count[client::Progress::Event::kUpdateSettled] == 3);
  CHECK(count[client::Progress::Event::kFinished] == 1);
  for (const auto& e : events) {
    if (e.event == client::Progress::Event::kStep) CHECK(e.steps == 3);
    if (e.event == client::Progress::Event::kUpdateSettled) CHECK(e.recorded);
  }
}

TEST_CASE("Pausing a device stops its training mid-round and declines, and resuming trains again",
          "[integration][device]") {
  Federation fed("device-pause", 3, 2);
  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(400, 3));
  training::DataView first{data, {}}, second{data, {}};
  for (int64_t k = 0; k < 200; ++k) first.indices.push_back(k);
  for (int64_t k = 200; k < 400; ++k) second.indices.push_back(k);
  client::Device* paused_device = nullptr;
  std::vector<uint32_t> declined;
  client::DeviceCallbacks callbacks;
  callbacks.on_progress = [&](const client::Progress& p) {
    // The owner needs the machine during round 1's third step.
    if (p.event == client::Progress::Event::kStep && p.round == 1 && p.step == 3) paused_device->Pause();
    if (p.event == client::Progress::Event::kDeclined) {
      declined.push_back(p.round);
      CHECK(p.detail == "paused on the device");
      paused_device->Resume();
    }
  };
  auto device = client::Device::Create(fed.Options(0), client::FixedSource(first), callbacks);
  REQUIRE(device.ok());
  paused_device = device->get();
  auto steady = client::Device::Create(fed.Options(1), client::FixedSource(second));
  REQUIRE(steady.ok());
  StatusOr<client::ClientStats> steady_stats = Internal("not run");
  std::thread other([&] { steady_stats = (*steady)->Run(); });
  auto stats = (*device)->Run();
  other.join();
  fed.server.join();
  REQUIRE(fed.run.ok());
  REQUIRE(stats.ok());
  CHECK(declined == std::vector<uint32_t>{1});
  CHECK(stats->rounds_paused == 1);
  CHECK(stats->rounds_trained == 2);
  CHECK(stats->recorded_rounds == std::vector<uint32_t>{2, 3});
  REQUIRE(steady_stats.ok());
  CHECK(steady_stats->rounds_trained == 3);
}

TEST_CASE("A held-out split is disjoint, seeded and never empty on the training side",
          "[integration][device]") {
  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(100, 1));
  auto split = client::SplitHeldOut(training::DataView::All(data), 0.2, 5);
  REQUIRE(split.ok());
  CHECK(split->first.size() == 80);
  CHECK(split->second.size() == 20);
  std::set<int64_t> all(split->first.indices.begin(), split->first.indices.end());
  all.insert(split->second.indices.begin(), split->second.indices.end());
  CHECK(all.size() == 100);
  auto again = client::SplitHeldOut(training::DataView::All(data), 0.2, 5);
  CHECK(again->second.indices == split->second.indices);
  auto other = client::SplitHeldOut(training::DataView::All(data), 0.2, 6);
  CHECK(other->second.indices != split->second.indices);
  auto none = client::SplitHeldOut(training::DataView::All(data), 0.0, 5);
  CHECK(none->second.size() == 0);
  CHECK(none->first.indices == training::DataView::All(data).indices);  // order kept
  auto tiny = std::make_shared<const training::Dataset>(training::MakeSynthetic(1, 1));
  auto bad = client::SplitHeldOut(training::DataView::All(tiny), 0.6, 5);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(std::string(bad.status().message()), Catch::Contains("leaves none to train on"));
  CHECK_FALSE(client::SplitHeldOut(training::DataView::All(data), 1.0, 5).ok());
}

TEST_CASE("A callback's inconsistent examples are refused with what is wrong", "[integration][device]") {
  auto source_of = [](training::Dataset d) {
    return client::CallbackSource([d]() -> StatusOr<training::Dataset> { return d; });
  };
  training::Dataset labels = training::MakeSynthetic(10, 1);
  labels.labels[4] = 12;
  auto r = source_of(labels)->TrainingData();
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("label 12 for example 4"));
  training::Dataset shape = training::MakeSynthetic(10, 1);
  shape.features.pop_back();
  r = source_of(shape)->TrainingData();
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("feature values for 10 examples"));
  training::Dataset nan = training::MakeSynthetic(10, 1);
  nan.features[784 * 3 + 5] = std::nanf("");
  r = source_of(nan)->TrainingData();
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("non-finite feature value in example 3"));
  r = source_of(training::Dataset())->TrainingData();
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("no examples"));
}

TEST_CASE("A device's CSV held-out rows are standardized with its training rows' statistics",
          "[integration][device]") {
  const auto path = TempPath("held-out.csv");
  {
    std::ofstream out(path);
    for (int i = 0; i < 40; ++i) out << i << "," << (i % 2) << "\n";
  }
  client::FileSourceOptions options;
  options.source = "csv:" + path.string();
  options.held_out_fraction = 0.25;
  auto source = client::LoadFileSource(options);
  REQUIRE(source.ok());
  auto train = (*source)->TrainingData();
  auto held = (*source)->HeldOutData();
  REQUIRE(train.ok());
  REQUIRE(held.ok());
  CHECK(train->size() == 30);
  CHECK(held->size() == 10);
  // Training rows: mean 0 by construction. Held-out rows use the same
  // statistics, so their mean is not forced to 0.
  double train_mean = 0, held_mean = 0;
  for (int64_t i : train->indices) train_mean += train->base->features[static_cast<size_t>(i)];
  for (int64_t i : held->indices) held_mean += held->base->features[static_cast<size_t>(i)];
  CHECK(std::abs(train_mean / 30) < 1e-5);
  CHECK(std::abs(held_mean / 10) > 1e-3);
  std::filesystem::remove(path);
}

TEST_CASE("Federated evaluation reports the devices' held-out accuracy of each round's starting model",
          "[integration][device]") {
  const auto out = TempPath("federated-eval");
  sim::SimConfig config = testing::SmallSimConfig(out.string(), 3, 3000, 500, 11);
  config.held_out_fraction = 0.2;
  config.aggregator.federated_eval = true;
  auto result = sim::RunSimulation(config);
  REQUIRE(result.ok());
  REQUIRE(result->rounds.size() == 3);
  // The same held-out views, recomputed: 20% of each device's 1000 examples.
  auto data = sim::LoadFleetData(config);
  REQUIRE(data.ok());
  int64_t held = 0;
  for (const auto& v : data->held_out) held += v.size();
  CHECK(held == 600);
  for (const auto& v : data->devices) CHECK(v.size() == 800);
  // Round r evaluated the model round r-1 produced: check rounds 2 and 3
  // against the stored models, evaluated here on the union of the views.
  auto store = aggregator::Store::OpenReadOnly((out / "store").string());
  REQUIRE(store.ok());
  for (const auto& r : result->rounds) {
    INFO("round " << r.round);
    REQUIRE(r.federated_accuracy.has_value());
    CHECK(r.federated_examples == 600);
    // Every device got the 2NN's 199,210 float32 weights and sent as many back.
    CHECK(r.bytes_out > 3 * 199210 * 4);
    CHECK(r.bytes_in > 3 * 199210 * 4);
    CHECK(r.bytes_in < 4 * 199210 * 4);
    auto base = (*store)->GetModel(r.model_version - 1);
    REQUIRE(base.ok());
    auto weights = proto::WeightsFromProto(base->weights(), nullptr);
    REQUIRE(weights.ok());
    auto runner = training::ModelRunner::Create("2nn", 1);
    REQUIRE((*runner)->SetWeights(*weights).ok());
    double correct = 0;
    for (const auto& v : data->held_out) {
      auto e = (*runner)->Evaluate(v);
      REQUIRE(e.ok());
      correct += e->accuracy * static_cast<double>(e->examples);
    }
    CHECK(*r.federated_accuracy == Approx(correct / 600).margin(1e-9));
  }
  CHECK(*result->rounds.back().federated_accuracy > *result->rounds.front().federated_accuracy);
  std::filesystem::remove_all(out);

  // Not beside DP: the metrics carry no noise.
  sim::SimConfig dp = config;
  dp.aggregator.dp.mode = aggregator::DpConfig::Mode::kClientCentral;
  dp.aggregator.dp.epsilon_budget = 10;
  auto refused = sim::RunSimulation(dp);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(std::string(refused.status().message()), Catch::Contains("differential privacy does not cover"));
}

TEST_CASE("A device's personal layers survive its restart, kept in its store", "[integration][device]") {
  const std::string file = std::string(FLOTILLA_MODELS) + "/backbone_head.pt";
  const auto state_dir = TempPath("personal-state");
  auto data = std::make_shared<const training::Dataset>(training::MakeSynthetic(160, 4));
  training::DataView mine{data, {}}, theirs{data, {}};
  for (int64_t k = 0; k < 160; ++k) (k < 80 ? mine : theirs).indices.push_back(k);
  auto head_of = [](const std::string& path) {
    training::ModelSpec spec;
    spec.arch = training::kTorchScript;
    spec.path = path;
    auto runner = training::ModelRunner::Create(spec, 0);
    REQUIRE(runner.ok());
    const Weights w = (*runner)->GetWeights();
    for (const auto& t : w.layout->tensors()) {
      if (t.name == "head.weight")
        return std::vector<float>(w.data.begin() + t.offset, w.data.begin() + t.offset + t.numel);
    }
    FAIL("no head.weight");
    return std::vector<float>();
  };
  // Run one device through a federation; returns its final model file.
  auto run = [&](Federation& fed, const std::string& out) {
    client::DeviceOptions options = fed.Options(0);
    options.model_path = file;
    options.state_dir = state_dir.string();
    options.final_model_out = (state_dir.parent_path() / out).string();
    auto device = client::Device::Create(options, client::FixedSource(mine));
    REQUIRE(device.ok());
    client::DeviceOptions other_options = fed.Options(1);
    other_options.model_path = file;
    auto other = client::Device::Create(other_options, client::FixedSource(theirs));
    REQUIRE(other.ok());
    StatusOr<client::ClientStats> other_stats = Internal("not run");
    std::thread t([&] { other_stats = (*other)->Run(); });
    auto stats = (*device)->Run();
    t.join();
    fed.server.join();
    REQUIRE(fed.run.ok());
    REQUIRE(stats.ok());
    REQUIRE(stats->rounds_trained >= 1);
    return options.final_model_out;
  };
  testing::TestKeys keys(2);
  Federation first("personal-fed", 2, 2, "backbone_head", 0.1, &keys);
  const std::vector<float> trained = head_of(run(first, "personal-first.pt"));
  CHECK(trained != head_of(file));
  first.agg.reset();  // the aggregator process "restarts" on its store
  {
    // A new device process (a new Device on the same store) in a last
    // round that barely moves anything: its head starts from the stored
    // one, not from the file.
    Federation second("personal-fed", 3, 2, "backbone_head", 1e-9, &keys, first.store);
    const std::string out = run(second, "personal-second.pt");
    const std::vector<float> restarted = head_of(out);
    REQUIRE(restarted.size() == trained.size());
    double diff = 0;
    for (size_t i = 0; i < trained.size(); ++i)
      diff = std::max(diff, double(std::fabs(restarted[i] - trained[i])));
    CHECK(diff < 1e-5);
  }
  std::filesystem::remove_all(state_dir);
  std::filesystem::remove(state_dir.parent_path() / "personal-first.pt");
  std::filesystem::remove(state_dir.parent_path() / "personal-second.pt");
}

TEST_CASE("The device store keeps local state and the residual, and refuses a corrupt record",
          "[integration][device]") {
  auto store = client::DeviceStore::OnKvStore(storage::NewMemoryStore(client::DeviceStore::Families()));
  auto none = store->GetLocalState("fed");
  REQUIRE(none.ok());
  CHECK_FALSE(none->has_value());
  auto layout =
      std::make_shared<const Layout>(*Layout::Create({{"head.weight", {2, 3}}, {"head.bias", {2}}}));
  Weights w = Weights::Zeros(layout);
  for (size_t i = 0; i < w.data.size(); ++i) w.data[i] = 0.5f * static_cast<float>(i);
  client::DeviceStore::LocalState state;
  proto::WeightsToProto(w, &state.tensors);
  state.residual = {1.5f, -2.0f, 0.25f};
  REQUIRE(store->PutLocalState("fed", state).ok());
  auto back = store->GetLocalState("fed");
  REQUIRE(back.ok());
  REQUIRE(back->has_value());
  CHECK((*back)->residual == state.residual);
  auto tensors = proto::WeightsFromProto((*back)->tensors, nullptr);
  REQUIRE(tensors.ok());
  CHECK(tensors->data == w.data);
  CHECK_FALSE(store->GetLocalState("other")->has_value());  // per federation
  // Only a residual (a built-in model with top-k): no tensors.
  client::DeviceStore::LocalState residual_only;
  residual_only.residual = {3.0f};
  REQUIRE(store->PutLocalState("fed", residual_only).ok());
  back = store->GetLocalState("fed");
  CHECK((*back)->tensors.layout_size() == 0);
  CHECK((*back)->residual == residual_only.residual);
}
