// The bare-LibTorch baseline of a simulated round (docs/results.md, "Fleets
// of 100,000"): the same devices' examples (Fashion-MNIST dealt as
// `flotilla sim --partition PARTITION` deals them) trained for EPOCHS local
// epochs each from the global model on the same number of threads (one
// model and one Torch thread per thread, as the simulator's trainer pool),
// merged by an example-weighted mean. No sockets, no encryption, no store,
// no selection, no evaluation: what a round would cost if it were only
// training.
//   build/bench/bare_rounds_bench FLEET PER_ROUND ROUNDS [THREADS [ARCH [PARTITION [EPOCHS [BATCH [LR]]]]]]
// (defaults: one thread per core, logreg, windows:60, 1, 32, 0.05).
// Prints seconds per round (mean of rounds 2..ROUNDS) as JSON.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/rng.h"
#include "sim/fleet_data.h"
#include "training/model.h"

using namespace flotilla;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: %s FLEET PER_ROUND ROUNDS [THREADS [ARCH [PARTITION [EPOCHS [BATCH [LR]]]]]]\n"
                 "  defaults: one thread per core, logreg, windows:60, 1 epoch, batch 32, lr 0.05\n",
                 argv[0]);
    return 2;
  }
  const int fleet = std::atoi(argv[1]), k = std::atoi(argv[2]), rounds = std::atoi(argv[3]);
  const int threads = argc > 4 && std::atoi(argv[4]) > 0
                          ? std::atoi(argv[4])
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const std::string arch = argc > 5 ? argv[5] : "logreg";
  sim::SimConfig config;
  config.clients = fleet;
  config.partition = argc > 6 ? argv[6] : "windows:60";
  auto data = sim::LoadFleetData(config);
  if (!data.ok()) {
    std::fprintf(stderr, "%s\n", data.status().ToString().c_str());
    return 1;
  }
  training::SetTorchThreads(1);
  std::vector<std::unique_ptr<training::ModelRunner>> runners;
  for (int t = 0; t < threads; ++t) {
    auto runner = training::ModelRunner::Create(arch, 1);
    if (!runner.ok()) {
      std::fprintf(stderr, "%s\n", runner.status().ToString().c_str());
      return 1;
    }
    runners.push_back(std::move(runner).value());
  }
  Weights global = runners[0]->GetWeights();
  training::TrainConfig tc;
  tc.epochs = argc > 7 ? std::atoi(argv[7]) : 1;
  tc.batch_size = argc > 8 ? std::atoi(argv[8]) : 32;
  tc.learning_rate = argc > 9 ? std::atof(argv[9]) : 0.05;
  std::vector<double> seconds;
  for (int r = 1; r <= rounds; ++r) {
    std::vector<size_t> chosen(static_cast<size_t>(fleet));
    for (size_t i = 0; i < chosen.size(); ++i) chosen[i] = i;
    Rng rng(DeriveSeed(1, "bare-sample", static_cast<uint64_t>(r)));
    rng.Shuffle(&chosen);
    chosen.resize(static_cast<size_t>(k));
    const auto start = std::chrono::steady_clock::now();
    std::atomic<size_t> next{0};
    std::mutex mu;
    std::vector<double> sum(global.data.size(), 0.0);
    double total = 0;
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        training::SetTorchThreads(1);
        std::vector<double> local(global.data.size(), 0.0);
        double n_local = 0;
        for (size_t j = next++; j < chosen.size(); j = next++) {
          if (!runners[t]->SetWeights(global).ok()) std::abort();
          training::TrainConfig c = tc;
          c.seed = DeriveSeed(1, "train", static_cast<uint64_t>(r), chosen[j]);
          auto result = runners[t]->Train(data->View(chosen[j]), c);
          if (!result.ok()) std::abort();
          const Weights w = runners[t]->GetWeights();
          const double n = static_cast<double>(result->examples);
          for (size_t e = 0; e < w.data.size(); ++e) local[e] += n * w.data[e];
          n_local += n;
        }
        std::lock_guard<std::mutex> lock(mu);
        for (size_t e = 0; e < local.size(); ++e) sum[e] += local[e];
        total += n_local;
      });
    }
    for (auto& t : pool) t.join();
    for (size_t e = 0; e < sum.size(); ++e) global.data[e] = static_cast<float>(sum[e] / total);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  double later = 0;
  for (size_t i = 1; i < seconds.size(); ++i) later += seconds[i];
  const double per_round = seconds.size() > 1 ? later / static_cast<double>(seconds.size() - 1) : seconds[0];
  std::printf(
      "{\"arch\": \"%s\", \"fleet\": %d, \"per_round\": %d, \"threads\": %d, \"seconds_per_round\": %.4f}\n",
      arch.c_str(), fleet, k, threads, per_round);
  return 0;
}
