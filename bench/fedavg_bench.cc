// Measures the streaming FedAvg merge (WeightedMean) against a baseline that
// buffers every client's delta and averages at the end, in the same run.
// Prints time per merged update and peak extra memory for each.
// Usage: fedavg_bench [clients=20] [params=1663370]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "aggregator/strategy.h"
#include "core/rng.h"

using namespace flotilla;
using flotilla::aggregator::WeightedMean;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  const int clients = argc > 1 ? std::atoi(argv[1]) : 20;
  const int64_t params = argc > 2 ? std::atoll(argv[2]) : 1663370;  // the FedAvg CNN
  auto layout = std::make_shared<const Layout>(*Layout::Create({{"w", {params}}}));
  Rng rng(1);
  Weights delta = Weights::Zeros(layout);
  for (auto& v : delta.data) v = static_cast<float>(rng.Normal() * 0.01);

  // Streaming: O(model) state.
  auto t0 = Clock::now();
  WeightedMean mean(layout);
  for (int c = 0; c < clients; ++c) {
    if (!mean.Add(delta, 100.0 + c).ok()) return 1;
  }
  auto streamed = mean.Mean();
  const double streaming_s = std::chrono::duration<double>(Clock::now() - t0).count();

  // Baseline: keep every update, then average (O(clients x model)).
  t0 = Clock::now();
  std::vector<std::vector<float>> buffered;
  for (int c = 0; c < clients; ++c) buffered.push_back(delta.data);
  std::vector<double> acc(static_cast<size_t>(params), 0.0);
  double total = 0;
  for (int c = 0; c < clients; ++c) {
    for (int64_t i = 0; i < params; ++i) acc[i] += (100.0 + c) * buffered[c][i];
    total += 100.0 + c;
  }
  std::vector<float> out(static_cast<size_t>(params));
  for (int64_t i = 0; i < params; ++i) out[i] = static_cast<float>(acc[i] / total);
  const double buffered_s = std::chrono::duration<double>(Clock::now() - t0).count();

  const double model_mb = params * 4.0 / 1e6;
  std::printf("fedavg_bench: %d clients x %lld parameters (%.1f MB per update)\n", clients,
              static_cast<long long>(params), model_mb);
  std::printf("  streaming  %.2f ms/update, extra memory %.1f MB (one double accumulator)\n",
              1e3 * streaming_s / clients, params * 8.0 / 1e6);
  std::printf("  buffered   %.2f ms/update, extra memory %.1f MB (every update kept)\n",
              1e3 * buffered_s / clients, params * 8.0 / 1e6 + clients * model_mb);
  std::printf("  ratio streaming/buffered time %.2f, memory %.3f\n", streaming_s / buffered_s,
              (params * 8.0 / 1e6) / (params * 8.0 / 1e6 + clients * model_mb));
  return streamed.ok() && streamed->data[0] == streamed->data[0] ? 0 : 1;
}
