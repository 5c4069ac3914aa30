#include "sim/fleet_data.h"

#include <algorithm>
#include <cmath>

#include "core/rng.h"
#include "training/csv.h"
#include "training/partition.h"

namespace flotilla::sim {
namespace {

using training::Dataset;

// The rows `rows` of `d`, standardized per feature with their own mean and
// standard deviation.
Dataset Standardized(const Dataset& d, const std::vector<int64_t>& rows) {
  Dataset out = d;
  const size_t f = static_cast<size_t>(d.example_numel());
  out.features.assign(rows.size() * f, 0.0f);
  out.labels.clear();
  for (size_t i = 0; i < rows.size(); ++i) {
    std::copy_n(d.features.begin() + static_cast<std::ptrdiff_t>(rows[i] * static_cast<int64_t>(f)), f,
                out.features.begin() + static_cast<std::ptrdiff_t>(i * f));
    out.labels.push_back(d.labels[static_cast<size_t>(rows[i])]);
  }
  for (size_t j = 0; j < f && !rows.empty(); ++j) {
    double sum = 0.0, sq = 0.0;
    for (size_t i = 0; i < rows.size(); ++i) sum += out.features[i * f + j];
    const double mean = sum / static_cast<double>(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) sq += (out.features[i * f + j] - mean) * (out.features[i * f + j] - mean);
    double sd = std::sqrt(sq / static_cast<double>(rows.size()));
    if (sd < 1e-12) sd = 1.0;
    for (size_t i = 0; i < rows.size(); ++i) {
      out.features[i * f + j] = static_cast<float>((out.features[i * f + j] - mean) / sd);
    }
  }
  return out;
}

// The union's statistics applied to other rows: what a central evaluator
// would use.
Dataset StandardizedLike(const Dataset& d, const std::vector<int64_t>& rows, const std::vector<int64_t>& like) {
  const size_t f = static_cast<size_t>(d.example_numel());
  std::vector<double> mean(f, 0.0), sd(f, 0.0);
  for (int64_t r : like) {
    for (size_t j = 0; j < f; ++j) mean[j] += d.features[static_cast<size_t>(r) * f + j];
  }
  for (size_t j = 0; j < f; ++j) mean[j] /= static_cast<double>(like.size());
  for (int64_t r : like) {
    for (size_t j = 0; j < f; ++j) {
      const double x = d.features[static_cast<size_t>(r) * f + j] - mean[j];
      sd[j] += x * x;
    }
  }
  Dataset out = d;
  out.features.assign(rows.size() * f, 0.0f);
  out.labels.clear();
  for (size_t j = 0; j < f; ++j) {
    sd[j] = std::sqrt(sd[j] / static_cast<double>(like.size()));
    if (sd[j] < 1e-12) sd[j] = 1.0;
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    for (size_t j = 0; j < f; ++j) {
      out.features[i * f + j] =
          static_cast<float>((d.features[static_cast<size_t>(rows[i]) * f + j] - mean[j]) / sd[j]);
    }
    out.labels.push_back(d.labels[static_cast<size_t>(rows[i])]);
  }
  return out;
}

StatusOr<FleetData> LoadCsvFleet(const SimConfig& config, const std::string& path) {
  training::CsvOptions options = config.csv;
  options.standardize = false;  // per device, below
  ASSIGN_OR_RETURN(training::CsvData csv, training::LoadCsv(path, options));
  const Dataset& all = csv.dataset;
  std::vector<int64_t> order(static_cast<size_t>(all.size()));
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  Rng rng(DeriveSeed(config.aggregator.seed, "csv-split"));
  rng.Shuffle(&order);
  const size_t held = static_cast<size_t>(std::llround(config.test_fraction * static_cast<double>(order.size())));
  if (held < 1 || held >= order.size()) {
    return InvalidArgument(path + ": " + std::to_string(order.size()) + " records; test_fraction " +
                           std::to_string(config.test_fraction) + " leaves no test or no training records");
  }
  const std::vector<int64_t> test_rows(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(held));
  std::vector<int64_t> train_rows(order.begin() + static_cast<std::ptrdiff_t>(held), order.end());
  std::sort(train_rows.begin(), train_rows.end());
  std::vector<int64_t> train_labels;
  for (int64_t r : train_rows) train_labels.push_back(all.labels[static_cast<size_t>(r)]);
  ASSIGN_OR_RETURN(training::Partition parts,
                   training::PartitionByName(config.partition, train_labels, all.num_classes, config.clients,
                                             DeriveSeed(config.aggregator.seed, "partition")));
  FleetData data;
  data.train = std::make_shared<const Dataset>(StandardizedLike(all, train_rows, train_rows));
  data.test = std::make_shared<const Dataset>(StandardizedLike(all, test_rows, train_rows));
  for (const auto& part : parts) {
    std::vector<int64_t> rows;
    for (int64_t i : part) rows.push_back(train_rows[static_cast<size_t>(i)]);
    if (rows.empty()) return InvalidArgument("partition " + config.partition + " left a device without records");
    data.devices.push_back(training::DataView::All(std::make_shared<const Dataset>(Standardized(all, rows))));
  }
  return data;
}

}  // namespace

StatusOr<FleetData> LoadFleetData(const SimConfig& config) {
  ASSIGN_OR_RETURN(training::DataSourceName source, training::ParseDataSource(config.data_source));
  if (source.kind == "csv") return LoadCsvFleet(config, source.path);
  const std::string dir = source.path.empty() ? config.data_dir : source.path;
  ASSIGN_OR_RETURN(Dataset train, training::LoadFashionMnist(dir, training::Split::kTrain, config.train_limit));
  ASSIGN_OR_RETURN(Dataset test, training::LoadFashionMnist(dir, training::Split::kTest, config.test_limit));
  ASSIGN_OR_RETURN(training::Partition parts,
                   training::PartitionByName(config.partition, train.labels, train.num_classes, config.clients,
                                             DeriveSeed(config.aggregator.seed, "partition")));
  FleetData data;
  data.train = std::make_shared<const Dataset>(std::move(train));
  data.test = std::make_shared<const Dataset>(std::move(test));
  for (auto& part : parts) data.devices.push_back(training::DataView{data.train, std::move(part)});
  return data;
}

}  // namespace flotilla::sim
