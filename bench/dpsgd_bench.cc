// Throughput of DP-SGD (ModelRunner::TrainDpSgd) against ordinary SGD
// (ModelRunner::Train) for the same model and data in the same run, and of
// privacy::GaussianNoise.
//
//   dpsgd_bench [examples] [batch] [threads]
//
// Uses the first `examples` (default 5000) Fashion-MNIST training examples,
// or synthetic data if the dataset package is missing. One epoch each; DP
// uses Poisson sampling with q = batch / examples, sigma 1, C 1.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "privacy/clipping.h"
#include "privacy/noise.h"
#include "training/dataset.h"
#include "training/model.h"

namespace flotilla {
namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int BenchNoise() {
  auto noise = privacy::GaussianNoise::Create();
  if (!noise.ok()) {
    std::fprintf(stderr, "GaussianNoise: %s\n", noise.status().ToString().c_str());
    return 1;
  }
  constexpr size_t kN = 20'000'000;
  std::vector<double> samples(kN);
  auto start = std::chrono::steady_clock::now();
  noise->Fill(samples.data(), kN, 1.0);
  const double fill_s = Seconds(start);
  std::vector<float> values(kN, 0.5f);
  start = std::chrono::steady_clock::now();
  noise->AddNoise(values.data(), kN, 1.0);
  const double add_s = Seconds(start);
  start = std::chrono::steady_clock::now();
  privacy::ClipL2(values.data(), kN, 1.0);
  const double clip_s = Seconds(start);
  std::printf("GaussianNoise::Fill      %8.1f M samples/s\n", kN / fill_s / 1e6);
  std::printf("GaussianNoise::AddNoise  %8.1f M samples/s\n", kN / add_s / 1e6);
  std::printf("ClipL2 (clipping)        %8.1f M floats/s\n", kN / clip_s / 1e6);
  return 0;
}

int BenchModel(const std::string& arch, const training::DataView& data, int batch) {
  training::TrainConfig config;
  config.epochs = 1;
  config.batch_size = batch;
  config.learning_rate = 0.05;
  config.momentum = 0.5;
  config.seed = 1;
  training::DpSgdConfig dp;
  dp.noise_multiplier = 1.0;
  dp.l2_clip = 1.0;

  auto plain_runner = training::ModelRunner::Create(arch, 1);
  auto dp_runner = training::ModelRunner::Create(arch, 1);
  if (!plain_runner.ok() || !dp_runner.ok()) {
    std::fprintf(stderr, "%s: cannot build the model\n", arch.c_str());
    return 1;
  }
  auto plain = (*plain_runner)->Train(data, config);
  auto priv = (*dp_runner)->TrainDpSgd(data, config, dp);
  if (!plain.ok() || !priv.ok()) {
    std::fprintf(stderr, "%s: %s %s\n", arch.c_str(), plain.status().ToString().c_str(),
                 priv.status().ToString().c_str());
    return 1;
  }
  // Examples processed: each plain epoch sees every example once; DP-SGD
  // sees q * N examples per step in expectation.
  const double plain_rate = static_cast<double>(data.size()) / plain->seconds;
  const double q = static_cast<double>(batch) / static_cast<double>(data.size());
  const double dp_rate =
      q * static_cast<double>(data.size()) * static_cast<double>(priv->steps) / priv->seconds;
  std::printf("%-6s batch %3d  SGD %8.0f ex/s   DP-SGD %8.0f ex/s   DP/SGD %.2f  (DP slowdown %.2fx)\n",
              arch.c_str(), batch, plain_rate, dp_rate, dp_rate / plain_rate, plain_rate / dp_rate);
  return 0;
}

int Main(int argc, char** argv) {
  const int64_t examples = argc > 1 ? std::atoll(argv[1]) : 5000;
  const int batch = argc > 2 ? std::atoi(argv[2]) : 64;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 1;
  if (examples < 1 || batch < 1 || threads < 1) {
    std::fprintf(stderr, "usage: dpsgd_bench [examples>0] [batch>0] [threads>0]\n");
    return 2;
  }
  training::SetTorchThreads(threads);
  std::shared_ptr<const training::Dataset> dataset;
  auto loaded =
      training::LoadFashionMnist(training::kDefaultFashionMnistDir, training::Split::kTrain, examples);
  if (loaded.ok()) {
    dataset = std::make_shared<const training::Dataset>(std::move(loaded).value());
    std::printf("Fashion-MNIST, %lld examples, %d thread(s)\n", static_cast<long long>(dataset->size()),
                threads);
  } else {
    dataset = std::make_shared<const training::Dataset>(training::MakeSynthetic(examples, 1));
    std::printf("synthetic data (%s), %lld examples, %d thread(s)\n", loaded.status().ToString().c_str(),
                static_cast<long long>(examples), threads);
  }
  const training::DataView data = training::DataView::All(dataset);
  int rc = BenchNoise();
  for (const char* arch : {"logreg", "2nn", "cnn"}) rc |= BenchModel(arch, data, batch);
  return rc;
}

}  // namespace
}  // namespace flotilla

int main(int argc, char** argv) { return flotilla::Main(argc, argv); }
