// TorchScript models federated by real processes: an aggregator and three
// devices, each `flotilla` given the model file (made at build time by
// scripts/make_models.py), over CURVE on loopback.
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "aggregator/store.h"
#include "core/subprocess.h"
#include "proto/codec.h"
#include "testing/process_fleet.h"
#include "training/model.h"

using namespace flotilla;

namespace {

constexpr int kDevices = 3;

std::string Model(const std::string& name) { return std::string(FLOTILLA_MODELS) + "/" + name + ".pt"; }

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs the aggregator with `model_args` and every device with its own
// model file; returns the aggregator's exit code.
// With `model_out`, device i writes its final model to devI-final.pt in the
// fleet's directory.
int RunFederation(const testing::ProcessFleet& fleet, const std::vector<std::string>& model_args,
                  const std::vector<std::string>& device_models, int rounds = 2, bool model_out = false) {
  std::vector<std::string> agg_args = {"--rounds",  std::to_string(rounds),
                                       "--epochs",  "1",
                                       "--batch",   "32",
                                       "--lr",      "0.05",
                                       "--seed",    "3",
                                       "--no-eval", "--deadline",
                                       "60",        "--finish-grace",
                                       "3"};
  agg_args.insert(agg_args.end(), model_args.begin(), model_args.end());
  const pid_t agg = testing::Spawn(fleet.AggregatorArgs(agg_args), fleet.log("aggregator"));
  std::vector<pid_t> devices;
  for (int i = 0; i < kDevices; ++i) {
    std::vector<std::string> args = {
        "--train-limit", "3000", "--seed",       "3",
        "--threads",     "1",    "--model-path", device_models[static_cast<size_t>(i)]};
    if (model_out) {
      args.push_back("--model-out");
      args.push_back((fleet.dir / ("dev" + std::to_string(i) + "-final.pt")).string());
    }
    devices.push_back(testing::Spawn(fleet.ClientArgs(i, args), fleet.log("dev" + std::to_string(i))));
  }
  const int code = WaitProcess(agg);
  for (pid_t d : devices) {
    INFO("device log: " << ReadFile(fleet.log("dev0")));
    CHECK(WaitProcess(d) == 0);
  }
  return code;
}

std::vector<std::string> LayoutNames(const records::ModelRecord& m) {
  std::vector<std::string> names;
  for (const auto& t : m.weights().layout()) names.push_back(t.name());
  return names;
}

bool AnyStartsWith(const std::vector<std::string>& names, const std::string& prefix) {
  for (const auto& n : names) {
    if (n.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

// The float values of tensor `name` in a stored model.
std::vector<float> Tensor(const records::ModelRecord& m, const std::string& name) {
  auto w = proto::WeightsFromProto(m.weights(), nullptr);
  REQUIRE(w.ok());
  for (const auto& t : w->layout->tensors()) {
    if (t.name == name) return {w->data.begin() + t.offset, w->data.begin() + t.offset + t.numel};
  }
  FAIL("no tensor " << name);
  return {};
}

}  // namespace

TEST_CASE("A TorchScript model with BatchNorm and dropout federates across three device processes",
          "[script][integration]") {
  const std::string file = Model("bn_cnn");
  const std::vector<std::string> same(kDevices, file);
  SECTION("buffers federated: the running statistics are averaged into each global model") {
    testing::ProcessFleet fleet("script-bn", kDevices);
    INFO("aggregator log: " << ReadFile(fleet.log("aggregator")));
    REQUIRE(RunFederation(fleet, {"--model-path", file, "--buffers", "federated"}, same) == 0);
    auto store = aggregator::Store::OpenReadOnly(fleet.store().string());
    REQUIRE(store.ok());
    auto rounds = (*store)->ListRounds();
    REQUIRE(rounds.ok());
    REQUIRE(rounds->size() == 2);
    for (const auto& r : *rounds) {
      CHECK(r.outcome() == records::RoundRecord::OUTCOME_COMPLETED);
      CHECK(r.received_size() == kDevices);
    }
    auto first = (*store)->GetModel(1);
    auto last = (*store)->GetModel(3);
    REQUIRE(first.ok());
    REQUIRE(last.ok());
    CHECK(first->arch() == "torchscript");
    const auto names = LayoutNames(*last);
    CHECK(AnyStartsWith(names, "bn1.running_mean"));
    CHECK_FALSE(AnyStartsWith(names, "bn1.num_batches_tracked"));
    // Version 1 is the file's own (running mean 0); training moved it.
    CHECK(Tensor(*first, "bn1.running_mean") == std::vector<float>(8, 0.0f));
    CHECK(Tensor(*last, "bn1.running_mean") != std::vector<float>(8, 0.0f));
  }
  SECTION("buffers local (FedBN): the statistics never leave the devices") {
    testing::ProcessFleet fleet("script-fedbn", kDevices);
    INFO("aggregator log: " << ReadFile(fleet.log("aggregator")));
    REQUIRE(RunFederation(fleet, {"--model-path", file, "--buffers", "local"}, same) == 0);
    auto store = aggregator::Store::OpenReadOnly(fleet.store().string());
    REQUIRE(store.ok());
    auto last = (*store)->GetModel(3);
    REQUIRE(last.ok());
    const auto names = LayoutNames(*last);
    CHECK_FALSE(AnyStartsWith(names, "bn1.running"));
    CHECK(AnyStartsWith(names, "bn1.weight"));
  }
}

TEST_CASE("Personal layers never reach the aggregator, and a wrong model file names its first difference",
          "[script][integration]") {
  SECTION("personal head") {
    const std::string file = Model("backbone_head");
    testing::ProcessFleet fleet("script-personal", kDevices);
    INFO("aggregator log: " << ReadFile(fleet.log("aggregator")));
    REQUIRE(RunFederation(fleet, {"--model-path", file, "--personal", "head.*"},
                          std::vector<std::string>(kDevices, file), 2, /*model_out=*/true) == 0);
    auto store = aggregator::Store::OpenReadOnly(fleet.store().string());
    REQUIRE(store.ok());
    auto rounds = (*store)->ListRounds();
    REQUIRE(rounds.ok());
    for (const auto& r : *rounds) CHECK(r.received_size() == kDevices);
    for (uint64_t v = 1; v <= 3; ++v) {
      auto m = (*store)->GetModel(v);
      REQUIRE(m.ok());
      const auto names = LayoutNames(*m);
      CHECK_FALSE(AnyStartsWith(names, "head"));
      CHECK(AnyStartsWith(names, "backbone.0.weight"));
    }
    // The shared backbone did train.
    CHECK(Tensor(*(*store)->GetModel(1), "backbone.0.weight") !=
          Tensor(*(*store)->GetModel(3), "backbone.0.weight"));
    // Each device's final model file: the federation's final backbone and
    // the device's own trained head (unlike the file it started from, and
    // unlike the other devices').
    auto whole = [](const std::string& path) {
      training::ModelSpec spec;
      spec.arch = training::kTorchScript;
      spec.path = path;
      auto runner = training::ModelRunner::Create(spec, 0);
      REQUIRE(runner.ok());
      return (*runner)->GetWeights();
    };
    auto slice = [](const Weights& w, const std::string& name) {
      for (const auto& t : w.layout->tensors()) {
        if (t.name == name)
          return std::vector<float>(w.data.begin() + t.offset, w.data.begin() + t.offset + t.numel);
      }
      FAIL("no tensor " << name);
      return std::vector<float>();
    };
    const Weights original = whole(file);
    std::vector<std::vector<float>> heads;
    for (int i = 0; i < kDevices; ++i) {
      const Weights final_model = whole((fleet.dir / ("dev" + std::to_string(i) + "-final.pt")).string());
      CHECK(slice(final_model, "backbone.0.weight") == Tensor(*(*store)->GetModel(3), "backbone.0.weight"));
      heads.push_back(slice(final_model, "head.weight"));
      CHECK(heads.back() != slice(original, "head.weight"));
    }
    CHECK(heads[0] != heads[1]);
    // Later, dev0 pulls the model as a TorchScript file: its own trained
    // head comes from its store, the rest from the aggregator (serving
    // pulls after the federation).
    const pid_t serving = testing::Spawn(fleet.AggregatorArgs({"--rounds", "2", "--no-eval", "--keep-serving",
                                                               "--model-path", file, "--personal", "head.*"}),
                                         fleet.log("aggregator-serving"));
    std::vector<std::string> pull = fleet.ClientArgs(0, {});
    pull.resize(pull.size() - 5);  // drop "train --clients N --index 0"
    const std::string pulled = (fleet.dir / "dev0-pulled.pt").string();
    pull.insert(pull.end(), {"pull", "--script-out", pulled, "--model-path", file});
    int code = -1;
    for (int attempt = 0; attempt < 50 && code != 0; ++attempt) {
      code = WaitProcess(testing::Spawn(pull, fleet.log("dev0-pull")));
      if (code != 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ::kill(serving, SIGTERM);
    CHECK(WaitProcess(serving) == 0);
    INFO(ReadFile(fleet.log("dev0-pull")));
    REQUIRE(code == 0);
    CHECK(ReadFile(fleet.log("dev0-pull")).find("with this device's own trained layers") !=
          std::string::npos);
    const Weights pulled_model = whole(pulled);
    CHECK(slice(pulled_model, "head.weight") == heads[0]);
    CHECK(slice(pulled_model, "backbone.0.weight") == Tensor(*(*store)->GetModel(3), "backbone.0.weight"));
  }
  SECTION("one device holds another model file") {
    testing::ProcessFleet fleet("script-wrong", kDevices);
    const std::string file = Model("bn_cnn");
    // Rounds fail without the third device's update (min_updates 3); the
    // aggregator stops after its deadline-bounded rounds, every process exits.
    std::vector<std::string> models = {file, file, Model("other_cnn")};
    const pid_t agg =
        testing::Spawn(fleet.AggregatorArgs({"--rounds", "1", "--no-eval", "--min-updates", "3", "--deadline",
                                             "20", "--failed-round-backoff", "0.2",
                                             "--max-failed-round-backoff", "0.2", "--model-path", file}),
                       fleet.log("aggregator"));
    std::vector<pid_t> devices;
    for (int i = 0; i < kDevices; ++i) {
      devices.push_back(testing::Spawn(
          fleet.ClientArgs(i, {"--train-limit", "3000", "--threads", "1", "--model-path", models[i]}),
          fleet.log("dev" + std::to_string(i))));
    }
    // The wrong device declines with the reason; wait until it has said so.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (ReadFile(fleet.log("dev2")).find("conv1.weight") == std::string::npos &&
           std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    const std::string log = ReadFile(fleet.log("dev2"));
    INFO(log);
    CHECK(log.find("conv1.weight") != std::string::npos);
    CHECK(log.find("[12,1,3,3]") != std::string::npos);
    ::kill(agg, SIGTERM);
    CHECK(WaitProcess(agg) == 0);
    for (pid_t d : devices) {
      ::kill(d, SIGTERM);
      WaitProcess(d);
    }
  }
}

TEST_CASE("A pulled TorchScript model loads on the device and predict reproduces the aggregator's evaluation",
          "[script][integration]") {
  const std::string file = Model("bn_cnn");
  testing::ProcessFleet fleet("script-pull", kDevices);
  const pid_t agg =
      testing::Spawn(fleet.AggregatorArgs({"--rounds", "1", "--epochs", "1", "--lr", "0.05", "--seed", "3",
                                           "--test-limit", "500", "--keep-serving", "--model-path", file}),
                     fleet.log("aggregator"));
  std::vector<pid_t> devices;
  for (int i = 0; i < kDevices; ++i) {
    devices.push_back(testing::Spawn(
        fleet.ClientArgs(i, {"--train-limit", "3000", "--seed", "3", "--threads", "1", "--model-path", file}),
        fleet.log("dev" + std::to_string(i))));
  }
  for (pid_t d : devices) CHECK(WaitProcess(d) == 0);
  // Device 0 pulls the newest model and writes it as TorchScript.
  const std::string out = (fleet.dir / "pulled.pt").string();
  std::vector<std::string> pull = fleet.ClientArgs(0, {});
  pull.resize(pull.size() - 5);  // drop "train --clients N --index i"
  for (const std::string a : {"pull", "--script-out", out.c_str(), "--model-path", file.c_str()})
    pull.push_back(a);
  REQUIRE(WaitProcess(testing::Spawn(pull, fleet.log("pull"))) == 0);
  INFO(ReadFile(fleet.log("pull")));
  REQUIRE(std::filesystem::exists(out));
  const std::vector<std::string> predict = {FLOTILLA_BIN, "client", "predict", "--model", out,
                                            "--limit",    "500",    "--batch", "100"};
  REQUIRE(WaitProcess(testing::Spawn(predict, fleet.log("predict"))) == 0);
  ::kill(agg, SIGTERM);
  CHECK(WaitProcess(agg) == 0);

  auto store = aggregator::Store::OpenReadOnly(fleet.store().string());
  REQUIRE(store.ok());
  auto model = (*store)->GetModel(2);
  REQUIRE(model.ok());
  const double accuracy = model->metrics().at("test_accuracy");
  const std::string printed = ReadFile(fleet.log("predict"));
  INFO(printed);
  char expected[64];
  std::snprintf(expected, sizeof(expected), "accuracy %.4f", accuracy);
  CHECK(printed.find(expected) != std::string::npos);
  CHECK(printed.find("500 examples") != std::string::npos);
}
