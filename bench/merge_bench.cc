// The merge of one round's updates as the aggregator runs it, in GB/s of
// update data, against a plain memory-bandwidth loop over the same buffers
// in the same run (docs/results.md, "Merging"):
//   baseline      acc[i] += x[i] over every update (float into double): the
//                 tight loop the hardware allows;
//   accumulate    WeightedMean::AddFloat32 over the updates' bytes: FedAvg's
//                 in-memory accumulation (finiteness checked as it goes),
//                 and WeightedMean::Add on decoded Weights;
//   whole path    Store::ForEachUpdatePayload from a real RocksDB store on
//                 disk (XXH3-sealed values, the payload read in place),
//                 proto::Float32Payload, WeightedMean::AddFloat32: what
//                 RoundEngine::MergeStoredUpdates does for FedAvg;
//   robust        RobustCombiner (median, trimmed mean, Krum, Multi-Krum,
//                 Bulyan) on the same decoded updates.
// Each figure is the best of REPEATS runs; ratios are against the baseline.
// Usage: merge_bench [updates=100] [params=1663370 (the FedAvg CNN)] [repeats=3] [fedavg: skip the robust
// ones]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <vector>

#include "aggregator/store.h"
#include "aggregator/strategy.h"
#include "core/rng.h"
#include "proto/codec.h"

using namespace flotilla;
using namespace flotilla::aggregator;
using Clock = std::chrono::steady_clock;

namespace {

double Best(int repeats, const std::function<void()>& run) {
  double best = 1e300;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    run();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

void Fail(const Status& s) {
  std::fprintf(stderr, "merge_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 100;
  const int64_t params = argc > 2 ? std::atoll(argv[2]) : 1663370;
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 3;
  if (n < 3 || params < 1 || repeats < 1) {
    std::fprintf(stderr, "usage: merge_bench [updates>=3] [params>=1] [repeats>=1]\n");
    return 2;
  }
  auto layout = std::make_shared<const Layout>(*Layout::Create({{"w", {params}}}));
  std::vector<Weights> deltas;
  Rng rng(7);
  for (int c = 0; c < n; ++c) {
    Weights d = Weights::Zeros(layout);
    for (float& v : d.data) v = static_cast<float>(rng.Normal() * 0.01);
    deltas.push_back(std::move(d));
  }
  const double bytes = static_cast<double>(n) * static_cast<double>(params) * sizeof(float);
  const double gb = bytes / 1e9;
  std::printf("merge_bench: %d updates of %lld parameters (%.2f GB of update data), best of %d\n", n,
              static_cast<long long>(params), gb, repeats);

  // Baseline: the tight loop.
  std::vector<double> acc(static_cast<size_t>(params));
  const double baseline = Best(repeats, [&] {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (const Weights& d : deltas) {
      const float* x = d.data.data();
      double* a = acc.data();
      for (int64_t i = 0; i < params; ++i) a[i] += x[i];
    }
  });
  volatile double sink = acc[0];
  (void)sink;

  // FedAvg's accumulation in memory: AddFloat32 over each update's bytes
  // (finiteness checked per block as it goes), as the merge runs it.
  const double accumulate = Best(repeats, [&] {
    WeightedMean mean(layout);
    for (int c = 0; c < n; ++c) {
      const std::vector<float>& d = deltas[static_cast<size_t>(c)].data;
      Status s = mean.AddFloat32(
          std::string_view(reinterpret_cast<const char*>(d.data()), d.size() * sizeof(float)), 100.0 + c);
      if (!s.ok()) Fail(s);
    }
    if (!mean.Mean().ok()) Fail(Internal("no mean"));
  });
  // And WeightedMean::Add, which takes decoded Weights (a check pass, then
  // the sum): what the merge uses when it must decode (compressed updates,
  // clipping, central DP).
  const double add_decoded = Best(repeats, [&] {
    WeightedMean mean(layout);
    for (int c = 0; c < n; ++c) {
      Status s = mean.Add(deltas[static_cast<size_t>(c)], 100.0 + c);
      if (!s.ok()) Fail(s);
    }
  });

  // The whole path, from a store on disk (RocksDB, synced writes).
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("flotilla-merge-bench-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  double whole = 0.0;
  {
    StatusOr<std::unique_ptr<Store>> store = Store::Open(dir.string());
    if (!store.ok()) Fail(store.status());
    for (int c = 0; c < n; ++c) {
      records::UpdateRecord u;
      u.set_round(1);
      char id[32];
      std::snprintf(id, sizeof(id), "device-%05d", c);
      u.set_client_id(id);
      u.set_num_examples(100 + c);
      proto::WeightsToProto(deltas[static_cast<size_t>(c)], u.mutable_delta());
      Status s = (*store)->PutUpdate(u);
      if (!s.ok()) Fail(s);
    }
    whole = Best(repeats, [&] {
      WeightedMean mean(layout);
      // As RoundEngine::MergeStoredUpdates streams float32 updates.
      Status s = (*store)->ForEachUpdatePayload(
          1, [&](const records::UpdateRecord& u, std::string_view data) -> Status {
            ASSIGN_OR_RETURN(std::string_view payload, proto::Float32Payload(u.delta(), data, *layout));
            return mean.AddFloat32(payload, static_cast<double>(u.num_examples()));
          });
      if (!s.ok()) Fail(s);
      if (mean.count() != n) Fail(Internal("merged a different number of updates"));
    });
  }
  std::filesystem::remove_all(dir);

  auto row = [&](const char* name, double seconds) {
    std::printf("  %-22s %8.3f s  %7.2f GB/s  %6.1f%% of the baseline loop\n", name, seconds, gb / seconds,
                100.0 * baseline / seconds);
  };
  row("baseline loop", baseline);
  row("fedavg accumulate", accumulate);
  row("fedavg Add (decoded)", add_decoded);
  row("fedavg whole path", whole);

  if (argc > 4 && std::string(argv[4]) == "fedavg") return 0;
  // Robust combiners on the same decoded updates (one run each: they are
  // compute-bound and slow).
  const int f = std::max(1, n / 10);
  for (const std::string& name :
       {std::string("median"), std::string("trimmed-mean:0.1"), "krum:" + std::to_string(f),
        "multi-krum:" + std::to_string(f) + ":" + std::to_string(n - f),
        "bulyan:" + std::to_string(std::min(f, (n - 3) / 4))}) {
    StatusOr<Strategy> s = ParseStrategy(name);
    if (!s.ok()) Fail(s.status());
    const double seconds = Best(1, [&] {
      RobustCombiner c(layout, *s);
      for (const Weights& d : deltas) {
        Status st = c.Add(d);
        if (!st.ok()) Fail(st);
      }
      if (!c.Result().ok()) Fail(Internal(name + " failed"));
    });
    row(name.c_str(), seconds);
  }
  return 0;
}
