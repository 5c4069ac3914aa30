#include "sim/fleet_data.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>

#include "client/data_source.h"
#include "core/rng.h"
#include "training/csv.h"
#include "training/image_folder.h"
#include "training/partition.h"

namespace flotilla::sim {
namespace {

using training::Dataset;

// A file-based source split for a simulation: its rows shuffled with the
// run seed (`seed_label` keeps each source's draw its own), test_fraction
// held out, and each device's share of the rest, as rows of `all`.
struct Split {
  std::vector<int64_t> test_rows, train_rows;
  std::vector<std::vector<int64_t>> device_rows;
};

StatusOr<Split> SplitRows(const Dataset& all, const SimConfig& config, const std::string& source,
                          const char* seed_label, const char* unit) {
  std::vector<int64_t> order(static_cast<size_t>(all.size()));
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  Rng rng(DeriveSeed(config.aggregator.seed, seed_label));
  rng.Shuffle(&order);
  const size_t held =
      static_cast<size_t>(std::llround(config.test_fraction * static_cast<double>(order.size())));
  if (held < 1 || held >= order.size()) {
    return InvalidArgument(source + ": " + std::to_string(order.size()) + " " + unit + "; test_fraction " +
                           std::to_string(config.test_fraction) + " leaves no test or no training " + unit);
  }
  Split split;
  split.test_rows.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(held));
  split.train_rows.assign(order.begin() + static_cast<std::ptrdiff_t>(held), order.end());
  std::sort(split.train_rows.begin(), split.train_rows.end());
  std::vector<int64_t> train_labels;
  for (int64_t r : split.train_rows) train_labels.push_back(all.labels[static_cast<size_t>(r)]);
  ASSIGN_OR_RETURN(training::Partition parts,
                   training::PartitionByName(config.partition, train_labels, all.num_classes, config.clients,
                                             DeriveSeed(config.aggregator.seed, "partition")));
  for (const auto& part : parts) {
    std::vector<int64_t> rows;
    for (int64_t i : part) rows.push_back(split.train_rows[static_cast<size_t>(i)]);
    if (rows.empty()) {
      return InvalidArgument("partition " + config.partition + " left a device without " + unit);
    }
    split.device_rows.push_back(std::move(rows));
  }
  return split;
}

StatusOr<FleetData> LoadCsvFleet(const SimConfig& config, const std::string& path) {
  training::CsvOptions options = config.csv;
  options.standardize = false;  // per device, below
  ASSIGN_OR_RETURN(training::CsvData csv, training::LoadCsv(path, options));
  const Dataset& all = csv.dataset;
  ASSIGN_OR_RETURN(Split split, SplitRows(all, config, path, "csv-split", "records"));
  FleetData data;
  data.train =
      std::make_shared<const Dataset>(training::StandardizedRows(all, split.train_rows, split.train_rows));
  data.test =
      std::make_shared<const Dataset>(training::StandardizedRows(all, split.test_rows, split.train_rows));
  for (const auto& rows : split.device_rows) {
    data.devices.push_back(training::DataView::All(
        std::make_shared<const Dataset>(training::StandardizedRows(all, rows, rows))));
  }
  return data;
}

// An image folder: one standardization (the folder's pixel statistics) for
// all; devices are views onto the one decoded copy.
StatusOr<FleetData> LoadImageFleet(const SimConfig& config, const std::string& root) {
  ASSIGN_OR_RETURN(training::ImageFolderData images, training::LoadImageFolder(root, config.images));
  auto all = std::make_shared<const Dataset>(std::move(images.dataset));
  ASSIGN_OR_RETURN(Split split, SplitRows(*all, config, root, "image-split", "images"));
  FleetData data;
  data.train = all;
  // The test set as its own dataset (the evaluator takes every example of it).
  Dataset test = *all;
  test.features.clear();
  test.labels.clear();
  const size_t numel = static_cast<size_t>(all->example_numel());
  for (int64_t r : split.test_rows) {
    test.features.insert(test.features.end(), all->features.begin() + static_cast<std::ptrdiff_t>(r * numel),
                         all->features.begin() + static_cast<std::ptrdiff_t>((r + 1) * numel));
    test.labels.push_back(all->labels[static_cast<size_t>(r)]);
  }
  data.test = std::make_shared<const Dataset>(std::move(test));
  for (auto& rows : split.device_rows) data.devices.push_back(training::DataView{all, std::move(rows)});
  return data;
}

// "windows:N": see FleetData.
StatusOr<int64_t> ParseWindows(const std::string& spec) {
  const std::string prefix = "windows:";
  if (spec.rfind(prefix, 0) != 0) return int64_t{0};
  char* end = nullptr;
  const long long n = std::strtoll(spec.c_str() + prefix.size(), &end, 10);
  if (end == spec.c_str() + prefix.size() || *end != '\0' || n < 1 || n > 1000000) {
    return InvalidArgument("partition '" + spec +
                           "': windows:N needs N, the examples per device, in 1..1000000");
  }
  return static_cast<int64_t>(n);
}

// "fixed" (0), "powerlaw:ALPHA" / "dirichlet:ALPHA" (ALPHA).
StatusOr<double> ParseAlpha(const std::string& spec, const char* what, const char* none, const char* law,
                            double min_alpha) {
  if (spec == none) return 0.0;
  const std::string prefix = std::string(law) + ":";
  char* end = nullptr;
  const double alpha = spec.rfind(prefix, 0) == 0 ? std::strtod(spec.c_str() + prefix.size(), &end) : NAN;
  if (end == nullptr || *end != '\0' || !(alpha > min_alpha) || alpha > 1000) {
    return InvalidArgument(std::string(what) + " '" + spec + "': use " + none + " or " + law +
                           ":ALPHA (ALPHA > " + std::to_string(min_alpha).substr(0, 3) + ")");
  }
  return alpha;
}

StatusOr<FleetData> LoadShares(const SimConfig& config, bool device_data) {
  ASSIGN_OR_RETURN(training::DataSourceName source, training::ParseDataSource(config.data_source));
  ASSIGN_OR_RETURN(const int64_t window, ParseWindows(config.partition));
  ASSIGN_OR_RETURN(const double size_alpha, ParseAlpha(config.sizes, "sizes", "fixed", "powerlaw", 1.0));
  ASSIGN_OR_RETURN(const double skew_alpha,
                   ParseAlpha(config.label_skew, "label skew", "none", "dirichlet", 0.0));
  if (window == 0 && (size_alpha > 0 || skew_alpha > 0)) {
    return InvalidArgument(
        "sizes and label skew shape windows:N partitions (other partitions have their own: "
        "dirichlet:ALPHA, shards:K)");
  }
  if (window > 0 && source.kind != "fashion-mnist" && !source.kind.empty()) {
    return InvalidArgument(
        "partition windows:N is for Fashion-MNIST fleets; CSV and image sources "
        "standardize per device and take iid, dirichlet or shards");
  }
  if (source.kind == "csv") return LoadCsvFleet(config, source.path);
  if (source.kind == "images") return LoadImageFleet(config, source.path);
  const std::string dir = source.path.empty() ? config.data_dir : source.path;
  ASSIGN_OR_RETURN(Dataset test, training::LoadFashionMnist(dir, training::Split::kTest, config.test_limit));
  if (window > 0 && !device_data) {
    // A server: the test set; each device's count follows from the window.
    FleetData data;
    data.window = window;
    data.size_alpha = size_alpha;
    data.skew_alpha = skew_alpha;
    data.seed = DeriveSeed(config.aggregator.seed, "windows");
    data.window_devices = static_cast<size_t>(config.clients);
    data.window_held_out = config.held_out_fraction;
    data.test = std::make_shared<const Dataset>(std::move(test));
    return data;
  }
  ASSIGN_OR_RETURN(Dataset train,
                   training::LoadFashionMnist(dir, training::Split::kTrain, config.train_limit));
  if (window > 0) {
    FleetData data;
    data.order.resize(static_cast<size_t>(train.size()));
    for (size_t i = 0; i < data.order.size(); ++i) data.order[i] = static_cast<int64_t>(i);
    Rng rng(DeriveSeed(config.aggregator.seed, "partition"));
    rng.Shuffle(&data.order);
    if (window > train.size()) {
      return InvalidArgument("partition windows:" + std::to_string(window) + " is larger than the " +
                             std::to_string(train.size()) + " training examples");
    }
    data.window = window;
    data.window_devices = static_cast<size_t>(config.clients);
    data.window_held_out = config.held_out_fraction;
    data.size_alpha = size_alpha;
    data.skew_alpha = skew_alpha;
    data.seed = DeriveSeed(config.aggregator.seed, "windows");
    if (skew_alpha > 0) {
      data.by_class.resize(static_cast<size_t>(train.num_classes));
      for (int64_t idx : data.order)
        data.by_class[static_cast<size_t>(train.labels[static_cast<size_t>(idx)])].push_back(idx);
    }
    data.train = std::make_shared<const Dataset>(std::move(train));
    data.test = std::make_shared<const Dataset>(std::move(test));
    return data;
  }
  ASSIGN_OR_RETURN(
      training::Partition parts,
      training::PartitionByName(config.partition, train.labels, train.num_classes, config.clients,
                                DeriveSeed(config.aggregator.seed, "partition")));
  FleetData data;
  data.train = std::make_shared<const Dataset>(std::move(train));
  data.test = std::make_shared<const Dataset>(std::move(test));
  for (auto& part : parts) data.devices.push_back(training::DataView{data.train, std::move(part)});
  return data;
}

}  // namespace

int64_t FleetData::HeldOutCount(int64_t size) const {
  return std::min(size - 1,
                  static_cast<int64_t>(std::ceil(window_held_out * static_cast<double>(size) - 1e-9)));
}

int64_t FleetData::WindowSize(size_t i) const {
  if (size_alpha <= 0) return window;
  // Pareto with mean `window`: x_m = window (alpha - 1) / alpha, clamped.
  Rng rng(DeriveSeed(seed, "device-size", i));
  const double u = std::max(1e-12, 1.0 - rng.UniformDouble());
  const double xm = static_cast<double>(window) * (size_alpha - 1) / size_alpha;
  const double size = xm / std::pow(u, 1.0 / size_alpha);
  const double cap = std::min<double>(20.0 * static_cast<double>(window),
                                      order.empty() ? 20.0 * static_cast<double>(window) : order.size());
  return std::max<int64_t>(2, static_cast<int64_t>(std::min(cap, std::round(size))));
}

int64_t FleetData::Examples(size_t i) const {
  if (window == 0) return devices[i].size();
  const int64_t size = WindowSize(i);
  return size - HeldOutCount(size);
}

std::vector<int64_t> FleetData::WindowIndices(size_t i) const {
  const int64_t size = WindowSize(i);
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(size));
  const uint64_t n = order.size();
  if (skew_alpha > 0) {
    // Class proportions from Dir(alpha) (normalized gammas), then each
    // class's share from a window of that class's examples.
    std::mt19937_64 engine(DeriveSeed(seed, "device-skew", i));
    std::gamma_distribution<double> gamma(skew_alpha, 1.0);
    std::vector<double> p(by_class.size());
    double total = 0;
    for (auto& x : p) total += (x = gamma(engine));
    int64_t left = size;
    for (size_t c = 0; c < by_class.size() && left > 0; ++c) {
      const auto& pool = by_class[c];
      if (pool.empty()) continue;
      int64_t k = c + 1 == by_class.size()
                      ? left
                      : std::min<int64_t>(
                            left, std::llround(static_cast<double>(size) * p[c] / std::max(total, 1e-300)));
      const uint64_t start = engine() % pool.size();
      for (int64_t j = 0; j < k; ++j) out.push_back(pool[(start + static_cast<uint64_t>(j)) % pool.size()]);
      left -= k;
    }
    // Rounding left some to place: from the device's largest class.
    const size_t top = static_cast<size_t>(std::max_element(p.begin(), p.end()) - p.begin());
    for (int64_t j = 0; left > 0 && !by_class[top].empty(); ++j, --left)
      out.push_back(by_class[top][static_cast<size_t>(j) % by_class[top].size()]);
    Rng shuffle(DeriveSeed(seed, "device-order", i));
    shuffle.Shuffle(&out);
    return out;
  }
  const uint64_t start =
      size_alpha > 0
          ? DeriveSeed(seed, "device-start", i) % n
          : static_cast<uint64_t>((static_cast<unsigned __int128>(i) * static_cast<uint64_t>(window)) % n);
  for (int64_t k = 0; k < size; ++k) out.push_back(order[(start + static_cast<uint64_t>(k)) % n]);
  return out;
}

training::DataView FleetData::View(size_t i) const {
  if (window == 0) return devices[i];
  std::vector<int64_t> all = WindowIndices(i);
  all.resize(all.size() - static_cast<size_t>(HeldOutCount(static_cast<int64_t>(all.size()))));
  return training::DataView{train, std::move(all)};
}

training::DataView FleetData::HeldOut(size_t i) const {
  if (window == 0) return held_out[i];
  std::vector<int64_t> all = WindowIndices(i);
  const size_t held = static_cast<size_t>(HeldOutCount(static_cast<int64_t>(all.size())));
  return training::DataView{train,
                            std::vector<int64_t>(all.end() - static_cast<std::ptrdiff_t>(held), all.end())};
}

StatusOr<FleetData> LoadFleetData(const SimConfig& config, bool device_data) {
  if (config.aggregator.federated_eval && !(config.held_out_fraction > 0)) {
    return InvalidArgument(
        "federated evaluation needs held-out examples on the devices: set --held-out-fraction");
  }
  ASSIGN_OR_RETURN(FleetData data, LoadShares(config, device_data));
  if (data.window > 0) return data;
  data.held_out.resize(data.devices.size());
  if (config.held_out_fraction <= 0) return data;
  for (size_t i = 0; i < data.devices.size(); ++i) {
    ASSIGN_OR_RETURN(auto split, client::SplitHeldOut(data.devices[i], config.held_out_fraction,
                                                      DeriveSeed(config.aggregator.seed, "held-out", i)));
    data.devices[i] = std::move(split.first);
    data.held_out[i] = std::move(split.second);
  }
  return data;
}

}  // namespace flotilla::sim
