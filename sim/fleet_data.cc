#include "sim/fleet_data.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

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
    return InvalidArgument("partition '" + spec + "': windows:N needs N, the examples per device, in 1..1000000");
  }
  return static_cast<int64_t>(n);
}

StatusOr<FleetData> LoadShares(const SimConfig& config, bool device_data) {
  ASSIGN_OR_RETURN(training::DataSourceName source, training::ParseDataSource(config.data_source));
  ASSIGN_OR_RETURN(const int64_t window, ParseWindows(config.partition));
  if (window > 0 && source.kind != "fashion-mnist" && !source.kind.empty()) {
    return InvalidArgument("partition windows:N is for Fashion-MNIST fleets; CSV and image sources "
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

int64_t FleetData::Examples(size_t i) const {
  if (window == 0) return devices[i].size();
  const int64_t held = static_cast<int64_t>(std::ceil(window_held_out * static_cast<double>(window) - 1e-9));
  return window - held;
}

training::DataView FleetData::View(size_t i) const {
  if (window == 0) return devices[i];
  const int64_t held = static_cast<int64_t>(std::ceil(window_held_out * static_cast<double>(window) - 1e-9));
  training::DataView v{train, {}};
  const int64_t n = static_cast<int64_t>(order.size());
  const int64_t start = static_cast<int64_t>((static_cast<unsigned __int128>(i) * static_cast<uint64_t>(window)) %
                                             static_cast<uint64_t>(n));
  for (int64_t k = 0; k < window - held; ++k) v.indices.push_back(order[static_cast<size_t>((start + k) % n)]);
  return v;
}

training::DataView FleetData::HeldOut(size_t i) const {
  if (window == 0) return held_out[i];
  const int64_t held = static_cast<int64_t>(std::ceil(window_held_out * static_cast<double>(window) - 1e-9));
  training::DataView v{train, {}};
  const int64_t n = static_cast<int64_t>(order.size());
  const int64_t start = static_cast<int64_t>((static_cast<unsigned __int128>(i) * static_cast<uint64_t>(window)) %
                                             static_cast<uint64_t>(n));
  for (int64_t k = window - held; k < window; ++k) v.indices.push_back(order[static_cast<size_t>((start + k) % n)]);
  return v;
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
