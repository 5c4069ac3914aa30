// Bytes per round with and without update compression, on a real update:
// one device's local epoch (600 Fashion-MNIST examples) of the FedAvg CNN
// or 2NN. Prints, per encoding, the update's bytes on the wire, the ratio
// to float32 measured in the same run, the relative L2 error of what the
// aggregator decodes, and the encoding time against the training time.
// Usage: compression_bench [ARCH=cnn] [EXAMPLES=600]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/rng.h"
#include "proto/codec.h"
#include "proto/compression.h"
#include "training/dataset.h"
#include "training/model.h"

using namespace flotilla;

int main(int argc, char** argv) {
  const std::string arch = argc > 1 ? argv[1] : "cnn";
  const int64_t examples = argc > 2 ? std::atoll(argv[2]) : 600;
  training::SetTorchThreads(1);
  auto data =
      training::LoadFashionMnist(training::kDefaultFashionMnistDir, training::Split::kTrain, examples);
  if (!data.ok()) {
    std::fprintf(stderr, "%s\n", data.status().ToString().c_str());
    return 1;
  }
  auto runner = training::ModelRunner::Create(arch, 1);
  if (!runner.ok()) {
    std::fprintf(stderr, "%s\n", runner.status().ToString().c_str());
    return 1;
  }
  const Weights before = (*runner)->GetWeights();
  training::TrainConfig tc;
  tc.epochs = 1;
  tc.batch_size = 10;
  tc.learning_rate = 0.05;
  const auto t0 = std::chrono::steady_clock::now();
  auto trained =
      (*runner)->Train(training::DataView::All(std::make_shared<const training::Dataset>(*data)), tc);
  const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!trained.ok()) return 1;
  Weights delta = (*runner)->GetWeights();
  for (size_t i = 0; i < delta.data.size(); ++i) delta.data[i] -= before.data[i];
  double norm = 0;
  for (float v : delta.data) norm += static_cast<double>(v) * v;
  norm = std::sqrt(norm);

  std::printf("compression_bench: %s, %zu parameters, one local epoch on %lld examples (%.2f s)\n",
              arch.c_str(), delta.data.size(), static_cast<long long>(examples), train_s);
  std::printf("%-12s %12s %10s %12s %14s\n", "encoding", "bytes", "vs float32", "rel. error", "encode/train");
  size_t baseline = 0;
  for (const char* name : {"none", "int8", "topk:0.1", "topk:0.01"}) {
    const proto::Compression c = *proto::ParseCompression(name);
    Rng rng(1);
    std::vector<float> residual;
    wire::WeightsProto p;
    const auto e0 = std::chrono::steady_clock::now();
    if (!proto::EncodeUpdate(delta, c, &rng, &residual, &p).ok()) return 1;
    const double encode_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
    const size_t bytes = p.ByteSizeLong();
    if (baseline == 0) baseline = bytes;
    auto decoded = proto::WeightsFromProto(p, delta.layout);
    if (!decoded.ok()) return 1;
    double err = 0;
    for (size_t i = 0; i < delta.data.size(); ++i) {
      const double d = static_cast<double>(decoded->data[i]) - delta.data[i];
      err += d * d;
    }
    std::printf("%-12s %12zu %9.3fx %12.4f %13.4fx\n", name, bytes, static_cast<double>(bytes) / baseline,
                std::sqrt(err) / norm, encode_s / train_s);
  }
  std::printf("(top-k's error is what this round delays, not loses: error feedback sends it later)\n");
  return 0;
}
