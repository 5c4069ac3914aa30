#include "client/data_source.h"

#include <cmath>

#include "core/rng.h"
#include "training/partition.h"

namespace flotilla::client {
namespace {

class Fixed : public DataSource {
 public:
  Fixed(training::DataView train, training::DataView held_out, std::string description)
      : train_(std::move(train)), held_out_(std::move(held_out)), description_(std::move(description)) {}
  StatusOr<training::DataView> TrainingData() override { return train_; }
  StatusOr<training::DataView> HeldOutData() override { return held_out_; }
  std::string Describe() const override {
    return description_ + ": " + std::to_string(train_.size()) + " training examples, " +
           std::to_string(held_out_.size()) + " held out";
  }

 private:
  training::DataView train_, held_out_;
  std::string description_;
};

// The application's dataset must be what the rest of the runtime assumes.
Status CheckDataset(const training::Dataset& d) {
  const std::string what = "the application's data callback returned ";
  if (d.size() == 0) return InvalidArgument(what + "no examples");
  if (d.channels < 1 || d.height < 1 || d.width < 1 || d.num_classes < 1) {
    return InvalidArgument(what + "a shape of " + std::to_string(d.channels) + "x" +
                           std::to_string(d.height) + "x" + std::to_string(d.width) + " with " +
                           std::to_string(d.num_classes) + " classes; every dimension must be >= 1");
  }
  if (!d.targets.empty() && d.targets.size() != d.labels.size()) {
    return InvalidArgument(what + std::to_string(d.targets.size()) + " targets for " +
                           std::to_string(d.size()) + " examples");
  }
  if (static_cast<int64_t>(d.features.size()) != d.size() * d.example_numel()) {
    return InvalidArgument(what + std::to_string(d.features.size()) + " feature values for " +
                           std::to_string(d.size()) + " examples of " + std::to_string(d.example_numel()) +
                           " values each");
  }
  for (size_t i = 0; i < d.labels.size(); ++i) {
    if (d.labels[i] < 0 || d.labels[i] >= d.num_classes) {
      return InvalidArgument(what + "label " + std::to_string(d.labels[i]) + " for example " +
                             std::to_string(i) + "; labels must be in [0, " + std::to_string(d.num_classes) +
                             ")");
    }
  }
  for (size_t i = 0; i < d.features.size(); ++i) {
    if (!std::isfinite(d.features[i])) {
      return InvalidArgument(what + "a non-finite feature value in example " +
                             std::to_string(static_cast<int64_t>(i) / d.example_numel()));
    }
  }
  return Status::Ok();
}

class Callback : public DataSource {
 public:
  Callback(FetchExamples fetch, double held_out_fraction, uint64_t seed)
      : fetch_(std::move(fetch)), held_out_fraction_(held_out_fraction), seed_(seed) {}

  StatusOr<training::DataView> TrainingData() override {
    RETURN_IF_ERROR(Refresh());
    return train_;
  }
  StatusOr<training::DataView> HeldOutData() override {
    if (!fetched_) RETURN_IF_ERROR(Refresh());
    return held_out_;
  }
  std::string Describe() const override {
    return "the application's callback: " + std::to_string(train_.size()) + " training examples, " +
           std::to_string(held_out_.size()) + " held out (last fetch)";
  }

 private:
  Status Refresh() {
    if (!fetch_) return FailedPrecondition("CallbackSource: no fetch function was given");
    StatusOr<training::Dataset> fetched = fetch_();
    if (!fetched.ok()) {
      return Unavailable("the application's data callback failed: " +
                         std::string(fetched.status().message()));
    }
    RETURN_IF_ERROR(CheckDataset(*fetched));
    auto shared = std::make_shared<const training::Dataset>(std::move(fetched).value());
    ASSIGN_OR_RETURN(auto split, SplitHeldOut(training::DataView::All(shared), held_out_fraction_,
                                              DeriveSeed(seed_, "held-out", calls_++)));
    train_ = std::move(split.first);
    held_out_ = std::move(split.second);
    fetched_ = true;
    return Status::Ok();
  }

  FetchExamples fetch_;
  double held_out_fraction_;
  uint64_t seed_;
  uint64_t calls_ = 0;
  bool fetched_ = false;
  training::DataView train_, held_out_;
};

}  // namespace

void KeepFirst(training::Dataset* d, int64_t limit) {
  if (limit <= 0 || limit >= d->size()) return;
  d->labels.resize(static_cast<size_t>(limit));
  if (!d->targets.empty()) d->targets.resize(static_cast<size_t>(limit));
  d->features.resize(static_cast<size_t>(limit * d->example_numel()));
}

std::unique_ptr<DataSource> FixedSource(training::DataView train, training::DataView held_out,
                                        std::string description) {
  return std::make_unique<Fixed>(std::move(train), std::move(held_out), std::move(description));
}

std::unique_ptr<DataSource> CallbackSource(FetchExamples fetch, double held_out_fraction, uint64_t seed) {
  return std::make_unique<Callback>(std::move(fetch), held_out_fraction, seed);
}

StatusOr<std::pair<training::DataView, training::DataView>> SplitHeldOut(const training::DataView& view,
                                                                         double held_out_fraction,
                                                                         uint64_t seed) {
  if (!(held_out_fraction >= 0.0 && held_out_fraction < 1.0)) {
    return InvalidArgument("held_out_fraction must be in [0, 1), got " + std::to_string(held_out_fraction));
  }
  std::vector<int64_t> order = view.indices;
  const size_t held =
      static_cast<size_t>(std::llround(held_out_fraction * static_cast<double>(order.size())));
  if (held >= order.size()) {
    return InvalidArgument("holding out " + std::to_string(held) + " of " + std::to_string(order.size()) +
                           " examples leaves none to train on; lower held_out_fraction");
  }
  training::DataView train{view.base, {}}, held_out{view.base, {}};
  if (held == 0) {
    train.indices = std::move(order);
    return std::make_pair(std::move(train), std::move(held_out));
  }
  Rng rng(seed);
  rng.Shuffle(&order);
  held_out.indices.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(held));
  train.indices.assign(order.begin() + static_cast<std::ptrdiff_t>(held), order.end());
  return std::make_pair(std::move(train), std::move(held_out));
}

namespace {

// The examples of options.source: Fashion-MNIST's `split`, a CSV file
// (standardized over all its rows when `standardize_csv`), or an image
// folder (standardized with its own pixels); the first options.limit kept.
StatusOr<training::Dataset> LoadExamples(const FileSourceOptions& options, training::Split split,
                                         bool standardize_csv) {
  ASSIGN_OR_RETURN(training::DataSourceName source, training::ParseDataSource(options.source));
  training::Dataset data;
  if (source.kind == "csv") {
    training::CsvOptions csv = options.csv;
    csv.standardize = csv.standardize && standardize_csv;
    ASSIGN_OR_RETURN(training::CsvData loaded, training::LoadCsv(source.path, csv));
    data = std::move(loaded.dataset);
  } else if (source.kind == "images") {
    ASSIGN_OR_RETURN(training::ImageFolderData images,
                     training::LoadImageFolder(source.path, options.images));
    data = std::move(images.dataset);
  } else {
    const std::string dir = !source.path.empty()                 ? source.path
                            : !options.fashion_mnist_dir.empty() ? options.fashion_mnist_dir
                                                                 : training::kDefaultFashionMnistDir;
    ASSIGN_OR_RETURN(data, training::LoadFashionMnist(dir, split, options.limit));
  }
  KeepFirst(&data, options.limit);
  return data;
}

}  // namespace

StatusOr<training::Dataset> LoadAllExamples(const FileSourceOptions& options) {
  return LoadExamples(options, training::Split::kTest, /*standardize_csv=*/true);
}

StatusOr<std::unique_ptr<DataSource>> LoadFileSource(const FileSourceOptions& options) {
  ASSIGN_OR_RETURN(training::DataSourceName source, training::ParseDataSource(options.source));
  if (options.parts < 1 || options.index < 0 || options.index >= options.parts) {
    return InvalidArgument("the device's share is partition " + std::to_string(options.index) + " of " +
                           std::to_string(options.parts) + "; it must be in [0, parts)");
  }
  // CSV rows are standardized below, with this device's own training rows.
  ASSIGN_OR_RETURN(training::Dataset all, LoadExamples(options, training::Split::kTrain, false));
  ASSIGN_OR_RETURN(training::Partition parts,
                   training::PartitionByName(options.partition, all.labels, all.num_classes, options.parts,
                                             DeriveSeed(options.seed, "partition")));
  std::vector<int64_t> rows = parts[static_cast<size_t>(options.index)];
  if (rows.empty()) {
    return InvalidArgument("partition " + options.partition + " left this device without data");
  }
  auto shared = std::make_shared<const training::Dataset>(std::move(all));
  ASSIGN_OR_RETURN(auto split, SplitHeldOut(training::DataView{shared, std::move(rows)},
                                            options.held_out_fraction, DeriveSeed(options.seed, "held-out")));
  training::DataView train = std::move(split.first), held_out = std::move(split.second);
  if (source.kind == "csv" && options.csv.standardize) {
    // Both halves with the statistics of this device's training rows.
    auto standardized_train = std::make_shared<const training::Dataset>(
        training::StandardizedRows(*shared, train.indices, train.indices));
    training::DataView held;
    if (held_out.size() > 0) {
      held = training::DataView::All(std::make_shared<const training::Dataset>(
          training::StandardizedRows(*shared, held_out.indices, train.indices)));
    }
    train = training::DataView::All(std::move(standardized_train));
    held_out = std::move(held);
  }
  return FixedSource(std::move(train), std::move(held_out), options.source);
}

}  // namespace flotilla::client
