#include "training/partition.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <numeric>

#include "core/rng.h"

namespace flotilla::training {
namespace {

constexpr int kMaxDirichletDraws = 1000;

Status CheckClients(int clients) {
  if (clients < 1) return InvalidArgument("partition: clients must be >= 1, got " + std::to_string(clients));
  return Status::Ok();
}

// Parses the whole of `text` as a finite double.
bool ParseDouble(const std::string& text, double* out) {
  if (text.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (errno != 0 || end != text.c_str() + text.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

bool ParseInt(const std::string& text, int* out) {
  if (text.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (errno != 0 || end != text.c_str() + text.size() || v < INT32_MIN || v > INT32_MAX) return false;
  *out = static_cast<int>(v);
  return true;
}

// Draws one Dirichlet(alpha, ..., alpha) vector of length k. When every
// gamma draw underflows (tiny alpha), returns the limit distribution: all
// mass on one uniformly chosen component.
std::vector<double> DrawDirichlet(Rng& rng, int k, double alpha) {
  std::vector<double> p(static_cast<size_t>(k));
  double sum = 0.0;
  for (double& v : p) {
    v = rng.Gamma(alpha);
    sum += v;
  }
  if (!(sum > 0.0) || !std::isfinite(sum)) {
    std::fill(p.begin(), p.end(), 0.0);
    p[rng.UniformInt(static_cast<uint64_t>(k))] = 1.0;
    return p;
  }
  for (double& v : p) v /= sum;
  return p;
}

}  // namespace

StatusOr<Partition> PartitionIid(int64_t n, int clients, uint64_t seed) {
  RETURN_IF_ERROR(CheckClients(clients));
  if (n < clients) {
    return InvalidArgument("partition iid: " + std::to_string(n) + " examples cannot be split among " +
                           std::to_string(clients) + " clients");
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  Rng rng(seed);
  rng.Shuffle(&order);
  Partition parts(static_cast<size_t>(clients));
  for (int c = 0; c < clients; ++c) {
    const int64_t begin = n * c / clients;
    const int64_t end = n * (c + 1) / clients;
    parts[static_cast<size_t>(c)].assign(order.begin() + begin, order.begin() + end);
  }
  return parts;
}

StatusOr<Partition> PartitionDirichlet(const std::vector<int64_t>& labels, int64_t num_classes, int clients,
                                       double alpha, uint64_t seed, int64_t min_per_client) {
  RETURN_IF_ERROR(CheckClients(clients));
  if (!(alpha > 0.0) || !std::isfinite(alpha)) {
    return InvalidArgument("partition dirichlet: alpha must be a positive number, got " +
                           std::to_string(alpha));
  }
  if (num_classes < 1) return InvalidArgument("partition dirichlet: num_classes must be >= 1");
  if (min_per_client < 0) return InvalidArgument("partition dirichlet: min_per_client must be >= 0");
  const int64_t n = static_cast<int64_t>(labels.size());
  if (n < min_per_client * clients) {
    return InvalidArgument("partition dirichlet: " + std::to_string(n) + " examples cannot give " +
                           std::to_string(clients) + " clients at least " + std::to_string(min_per_client) +
                           " each");
  }
  std::vector<std::vector<int64_t>> by_class(static_cast<size_t>(num_classes));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = labels[static_cast<size_t>(i)];
    if (y < 0 || y >= num_classes) {
      return InvalidArgument("partition dirichlet: label " + std::to_string(y) + " of example " +
                             std::to_string(i) + " is not in [0, " + std::to_string(num_classes) + ")");
    }
    by_class[static_cast<size_t>(y)].push_back(i);
  }

  Rng rng(seed);
  for (int attempt = 0; attempt < kMaxDirichletDraws; ++attempt) {
    Partition parts(static_cast<size_t>(clients));
    for (const std::vector<int64_t>& class_indices : by_class) {
      if (class_indices.empty()) continue;
      std::vector<int64_t> shuffled = class_indices;
      rng.Shuffle(&shuffled);
      const std::vector<double> p = DrawDirichlet(rng, clients, alpha);
      const int64_t nk = static_cast<int64_t>(shuffled.size());
      // Cut points from the rounded cumulative proportions: every example is
      // dealt exactly once and the last cut is exactly nk.
      double cumulative = 0.0;
      int64_t begin = 0;
      for (int c = 0; c < clients; ++c) {
        cumulative += p[static_cast<size_t>(c)];
        int64_t end = c + 1 == clients ? nk : std::llround(cumulative * static_cast<double>(nk));
        end = std::clamp(end, begin, nk);
        auto& dest = parts[static_cast<size_t>(c)];
        dest.insert(dest.end(), shuffled.begin() + begin, shuffled.begin() + end);
        begin = end;
      }
    }
    bool enough = true;
    for (const auto& part : parts) enough = enough && static_cast<int64_t>(part.size()) >= min_per_client;
    if (enough) {
      for (auto& part : parts) std::sort(part.begin(), part.end());
      return parts;
    }
  }
  return FailedPrecondition("partition dirichlet: no draw in " + std::to_string(kMaxDirichletDraws) +
                            " gave every one of " + std::to_string(clients) + " clients at least " +
                            std::to_string(min_per_client) + " examples at alpha " + std::to_string(alpha) +
                            "; use a larger alpha or fewer clients");
}

StatusOr<Partition> PartitionShards(const std::vector<int64_t>& labels, int clients, int shards_per_client,
                                    uint64_t seed) {
  RETURN_IF_ERROR(CheckClients(clients));
  if (shards_per_client < 1) {
    return InvalidArgument("partition shards: shards_per_client must be >= 1, got " +
                           std::to_string(shards_per_client));
  }
  const int64_t n = static_cast<int64_t>(labels.size());
  const int64_t num_shards = int64_t{clients} * shards_per_client;
  const int64_t shard_size = n / num_shards;
  if (shard_size == 0) {
    return InvalidArgument("partition shards: " + std::to_string(n) + " examples are fewer than " +
                           std::to_string(num_shards) + " shards (" + std::to_string(clients) +
                           " clients x " + std::to_string(shards_per_client) + ")");
  }
  // Sort by label; ties keep index order so the result does not depend on
  // the sort implementation.
  std::vector<int64_t> sorted(static_cast<size_t>(n));
  std::iota(sorted.begin(), sorted.end(), int64_t{0});
  std::stable_sort(sorted.begin(), sorted.end(), [&labels](int64_t a, int64_t b) {
    return labels[static_cast<size_t>(a)] < labels[static_cast<size_t>(b)];
  });

  std::vector<int64_t> shard_ids(static_cast<size_t>(num_shards));
  std::iota(shard_ids.begin(), shard_ids.end(), int64_t{0});
  Rng rng(seed);
  rng.Shuffle(&shard_ids);

  Partition parts(static_cast<size_t>(clients));
  for (int c = 0; c < clients; ++c) {
    auto& dest = parts[static_cast<size_t>(c)];
    dest.reserve(static_cast<size_t>(shard_size * shards_per_client));
    for (int s = 0; s < shards_per_client; ++s) {
      const int64_t shard = shard_ids[static_cast<size_t>(int64_t{c} * shards_per_client + s)];
      const auto first = sorted.begin() + shard * shard_size;
      dest.insert(dest.end(), first, first + shard_size);
    }
  }
  return parts;
}

StatusOr<Partition> PartitionByName(const std::string& spec, const std::vector<int64_t>& labels,
                                    int64_t num_classes, int clients, uint64_t seed) {
  const size_t colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  const std::string arg = colon == std::string::npos ? "" : spec.substr(colon + 1);
  const std::string usage =
      "; expected \"iid\", \"dirichlet:<alpha>\" (e.g. dirichlet:0.5) or "
      "\"shards:<per client>\" (e.g. shards:2)";
  if (kind == "iid" && colon == std::string::npos) {
    return PartitionIid(static_cast<int64_t>(labels.size()), clients, seed);
  }
  if (kind == "dirichlet") {
    double alpha = 0.0;
    if (!ParseDouble(arg, &alpha)) return InvalidArgument("partition '" + spec + "': bad alpha" + usage);
    return PartitionDirichlet(labels, num_classes, clients, alpha, seed);
  }
  if (kind == "shards") {
    int per_client = 0;
    if (!ParseInt(arg, &per_client))
      return InvalidArgument("partition '" + spec + "': bad shard count" + usage);
    return PartitionShards(labels, clients, per_client, seed);
  }
  return InvalidArgument("unknown partition '" + spec + "'" + usage);
}

}  // namespace flotilla::training
