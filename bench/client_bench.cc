// The device runtime's cost, against bare LibTorch measured in the same run.
//
// overhead: one round's work on the device (RunTrainTask: decode the
//   global model, verify its signature, load it, train one epoch, take the
//   delta, encode and serialize the Update) against a bare LibTorch loop
//   training the same TorchScript module on the same examples with the
//   same optimizer and batches. Alternating repetitions; medians. Goal:
//   overhead under 5%.
// memory: peak resident memory of a child process fine-tuning the FedAvg
//   CNN for one epoch on 600 Fashion-MNIST examples through Flotilla
//   (RunTrainTask), against a child running a bare LibTorch loop over the
//   same network and examples, and a child that only loads LibTorch and
//   the data; with and without passes of 8 examples (--max-pass-examples).
//
// Usage: client_bench [overhead|memory|all] [MODEL.pt] [REPS=5]
// (MODEL.pt defaults to build/models/bn_cnn.pt, made by scripts/make_models.py)
#include <sys/resource.h>
#include <sys/wait.h>
#include <torch/script.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "client/local_trainer.h"
#include "core/rng.h"
#include "privacy/keys.h"
#include "privacy/signing.h"
#include "proto/codec.h"
#include "training/dataset.h"
#include "training/model.h"

using namespace flotilla;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kBatch = 32;
constexpr double kLr = 0.05;
constexpr int64_t kExamples = 600;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

training::Dataset LoadExamples() {
  auto data =
      training::LoadFashionMnist(training::kDefaultFashionMnistDir, training::Split::kTrain, kExamples);
  if (!data.ok()) {
    std::fprintf(stderr, "client_bench: %s\n", data.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(data).value();
}

// The task an aggregator would send: the signed global model.
wire::TrainTask MakeTask(const training::ModelSpec& spec, const privacy::SigningKeyPair& key) {
  auto global = training::ModelRunner::Create(spec, 1);
  if (!global.ok()) {
    std::fprintf(stderr, "client_bench: %s\n", global.status().ToString().c_str());
    std::exit(1);
  }
  const Weights w = (*global)->GetWeights();
  wire::TrainTask task;
  task.set_round(1);
  task.set_model_version(1);
  task.set_model_round(0);
  task.set_model_arch(spec.arch);
  task.mutable_config()->set_epochs(1);
  task.mutable_config()->set_batch_size(kBatch);
  task.mutable_config()->set_learning_rate(kLr);
  task.mutable_config()->set_seed(7);
  proto::WeightsToProto(w, task.mutable_weights());
  task.set_model_signature(*privacy::SignModel(key, "flotilla", 1, 0, privacy::ModelDigest(w)));
  return task;
}

// One Flotilla round on the device; returns seconds.
double FlotillaRound(training::ModelRunner* runner, const training::DataView& view,
                     const wire::TrainTask& task, const privacy::SigningKeyPair& key, int max_pass) {
  const auto start = Clock::now();
  client::LocalTraining local;
  local.max_pass_examples = max_pass;
  auto update = client::RunTrainTask(runner, view, task, key.public_key, "flotilla", nullptr, local);
  if (!update.ok()) {
    std::fprintf(stderr, "client_bench: %s\n", update.status().ToString().c_str());
    std::exit(1);
  }
  wire::Envelope env;
  *env.mutable_update() = std::move(update).value();
  const std::string bytes = proto::SerializeEnvelope(&env);
  if (bytes.empty()) std::exit(1);
  return Seconds(start);
}

// The same epoch as bare LibTorch would write it: the module's parameters,
// SGD, cross-entropy, batches of a shuffled order. Returns seconds.
double BareRound(torch::jit::Module* module, const std::vector<torch::Tensor>& start_params,
                 const torch::Tensor& x_all, const torch::Tensor& y_all, uint64_t seed) {
  const auto start = Clock::now();
  std::vector<torch::Tensor> params;
  {
    torch::NoGradGuard no_grad;
    size_t i = 0;
    for (const auto& p : module->parameters()) {
      p.copy_(start_params[i++]);
      params.push_back(p);
    }
  }
  module->train(true);
  torch::optim::SGD optimizer(params, torch::optim::SGDOptions(kLr));
  torch::manual_seed(seed);
  const torch::Tensor order = torch::randperm(x_all.size(0), torch::kLong);
  for (int64_t begin = 0; begin < x_all.size(0); begin += kBatch) {
    const torch::Tensor idx = order.slice(0, begin, std::min<int64_t>(begin + kBatch, x_all.size(0)));
    optimizer.zero_grad();
    const torch::Tensor out = module->forward({x_all.index_select(0, idx)}).toTensor();
    torch::nn::functional::cross_entropy(out, y_all.index_select(0, idx)).backward();
    optimizer.step();
  }
  return Seconds(start);
}

void Overhead(const std::string& model_path, int reps) {
  training::SetTorchThreads(1);
  auto key = privacy::GenerateSigningKeyPair();
  const training::Dataset data = LoadExamples();
  auto shared = std::make_shared<const training::Dataset>(data);
  const training::DataView view = training::DataView::All(shared);
  training::ModelSpec spec;
  spec.arch = training::kTorchScript;
  spec.path = model_path;
  const wire::TrainTask task = MakeTask(spec, *key);
  auto runner = training::ModelRunner::Create(spec, 0);
  if (!runner.ok()) {
    std::fprintf(stderr, "client_bench: %s\n", runner.status().ToString().c_str());
    std::exit(1);
  }
  torch::jit::Module module = torch::jit::load(model_path);
  std::vector<torch::Tensor> start_params;
  for (const auto& p : module.parameters()) start_params.push_back(p.detach().clone());
  const torch::Tensor x =
      torch::from_blob(const_cast<float*>(data.features.data()),
                       {data.size(), data.channels, data.height, data.width}, torch::kFloat);
  const torch::Tensor y =
      torch::from_blob(const_cast<int64_t*>(data.labels.data()), {data.size()}, torch::kLong);
  // Warm-up of both (first-call allocations, TorchScript profiling runs).
  FlotillaRound(runner->get(), view, task, *key, 0);
  BareRound(&module, start_params, x, y, 0);
  std::vector<double> flotilla, bare;
  for (int r = 0; r < reps; ++r) {
    bare.push_back(BareRound(&module, start_params, x, y, static_cast<uint64_t>(r)));
    flotilla.push_back(FlotillaRound(runner->get(), view, task, *key, 0));
  }
  const double f = Median(flotilla), b = Median(bare);
  std::printf("overhead: %s, one epoch of %lld examples, batch %d, %d repetitions (medians)\n",
              model_path.c_str(), static_cast<long long>(kExamples), kBatch, reps);
  std::printf("  bare LibTorch loop          %8.3f s  (baseline)\n", b);
  std::printf("  Flotilla round on device    %8.3f s  %.3fx  overhead %+.1f%% (goal < 5%%)\n", f, f / b,
              100.0 * (f / b - 1.0));
}

// Child processes for the memory figures: each does one thing and exits;
// the parent reads its peak RSS from wait4.
int Child(const std::string& what, int max_pass) {
  training::SetTorchThreads(1);
  const training::Dataset data = LoadExamples();
  if (what == "idle") return data.size() == kExamples ? 0 : 1;
  if (what == "bare") {
    // The FedAvg CNN as a plain LibTorch module: the same layers.
    torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 5).padding(2)),
                              torch::nn::ReLU(), torch::nn::MaxPool2d(2),
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 5).padding(2)),
                              torch::nn::ReLU(), torch::nn::MaxPool2d(2), torch::nn::Flatten(),
                              torch::nn::Linear(3136, 512), torch::nn::ReLU(), torch::nn::Linear(512, 10));
    torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(kLr));
    const torch::Tensor x =
        torch::from_blob(const_cast<float*>(data.features.data()), {data.size(), 1, 28, 28}, torch::kFloat);
    const torch::Tensor y =
        torch::from_blob(const_cast<int64_t*>(data.labels.data()), {data.size()}, torch::kLong);
    for (int64_t begin = 0; begin < data.size(); begin += kBatch) {
      const int64_t end = std::min<int64_t>(begin + kBatch, data.size());
      optimizer.zero_grad();
      torch::nn::functional::cross_entropy(net->forward(x.slice(0, begin, end)), y.slice(0, begin, end))
          .backward();
      optimizer.step();
    }
    return 0;
  }
  auto key = privacy::GenerateSigningKeyPair();
  training::ModelSpec spec;
  spec.arch = "cnn";
  const wire::TrainTask task = MakeTask(spec, *key);
  auto runner = training::ModelRunner::Create(spec, 0);
  if (!runner.ok()) return 1;
  const training::DataView view = training::DataView::All(std::make_shared<const training::Dataset>(data));
  FlotillaRound(runner->get(), view, task, *key, max_pass);
  return 0;
}

double PeakRssMb(const char* self, const std::string& what, int max_pass) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const std::string pass = std::to_string(max_pass);
    ::execl("/proc/self/exe", self, "--child", what.c_str(), pass.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  rusage usage{};
  ::wait4(pid, &status, 0, &usage);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "client_bench: child '%s' failed\n", what.c_str());
    std::exit(1);
  }
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

void Memory(const char* self) {
  const double idle = PeakRssMb(self, "idle", 0);
  const double bare = PeakRssMb(self, "bare", 0);
  const double flotilla = PeakRssMb(self, "flotilla", 0);
  const double passes = PeakRssMb(self, "flotilla", 8);
  std::printf(
      "memory: peak RSS fine-tuning the FedAvg CNN (1,663,370 parameters), one epoch of %lld "
      "examples, batch %d\n",
      static_cast<long long>(kExamples), kBatch);
  std::printf("  LibTorch + data loaded only     %7.1f MB\n", idle);
  std::printf("  bare LibTorch loop              %7.1f MB  (baseline; +%.1f MB over loaded)\n", bare,
              bare - idle);
  std::printf("  Flotilla round                  %7.1f MB  %.2fx baseline (+%.1f MB over loaded)\n", flotilla,
              flotilla / bare, flotilla - idle);
  std::printf("  Flotilla, passes of 8 examples  %7.1f MB  %.2fx baseline (+%.1f MB over loaded)\n", passes,
              passes / bare, passes - idle);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--help") {
    std::printf("usage: client_bench [overhead|memory|all] [MODEL.pt] [REPS=5]\n");
    return 0;
  }
  if (argc > 3 && std::string(argv[1]) == "--child") return Child(argv[2], std::atoi(argv[3]));
  const std::string mode = argc > 1 ? argv[1] : "all";
  const std::string model = argc > 2 ? argv[2] : std::string(FLOTILLA_MODELS) + "/bn_cnn.pt";
  const int reps = argc > 3 ? std::max(1, std::atoi(argv[3])) : 5;
  if (mode == "overhead" || mode == "all") Overhead(model, reps);
  if (mode == "memory" || mode == "all") Memory(argv[0]);
  return 0;
}
