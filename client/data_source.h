// Where a device's examples come from, behind one interface: files the
// device holds (Fashion-MNIST IDX, a CSV of records, a folder of images) or
// the application's own tensors through a callback. Each source also keeps
// a local held-out split that is never trained on, for federated
// evaluation of the global model.
//
// No Torch here: examples are training::Dataset (float features NCHW,
// integer labels).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/status.h"
#include "training/csv.h"
#include "training/dataset.h"
#include "training/image_folder.h"

namespace flotilla::client {

// A device's data. The runtime asks for TrainingData() before every task,
// so a source may return new examples each round (a camera's latest
// frames); HeldOutData() before every evaluation.
//
// Thread-safety: called from the thread that runs the device.
class DataSource {
 public:
  virtual ~DataSource() = default;
  // The examples to train on now; never empty.
  virtual StatusOr<training::DataView> TrainingData() = 0;
  // Examples kept out of training, for evaluating the global model on this
  // device (an empty view: none).
  virtual StatusOr<training::DataView> HeldOutData() = 0;
  // One line for logs: what the source is and how many examples it has.
  virtual std::string Describe() const = 0;
};

// The examples of a fixed view (held_out may be empty).
std::unique_ptr<DataSource> FixedSource(training::DataView train, training::DataView held_out = {},
                                        std::string description = "fixed examples");

// Splits `view` into (train, held-out): a seeded shuffle, then
// round(held_out_fraction * size) examples held out. held_out_fraction in
// [0, 1); InvalidArgument when the split would leave no training example.
StatusOr<std::pair<training::DataView, training::DataView>> SplitHeldOut(const training::DataView& view,
                                                                         double held_out_fraction,
                                                                         uint64_t seed);

// The application's own examples: `fetch` is called before every round and
// returns the examples to use then (features as float NCHW, labels as class
// ids; see training::Dataset); held_out_fraction of them (a fresh seeded
// split each call) are kept for evaluation. A fetch that fails or returns
// an inconsistent dataset declines that round with the reason, and the
// device carries on.
using FetchExamples = std::function<StatusOr<training::Dataset>()>;
std::unique_ptr<DataSource> CallbackSource(FetchExamples fetch, double held_out_fraction = 0.0,
                                           uint64_t seed = 1);

// Files on the device, by name as the command line takes them:
// "fashion-mnist[:DIR]" (the training split), "csv:PATH" or "images:DIR".
struct FileSourceOptions {
  std::string source = "fashion-mnist";
  std::string fashion_mnist_dir;        // for a bare "fashion-mnist" (empty: Debian's folder)
  training::CsvOptions csv;             // standardized with this device's own training rows
  training::ImageFolderOptions images;  // the model's input size and channels
  int64_t limit = 0;                    // keep the first N examples (0 = all)
  // The device's share when one file is split across devices (tests, demos):
  // partition `index` of `parts` by `partition` ("iid", "dirichlet:A",
  // "shards:K") with `seed`. A device with its own file: parts = 1.
  std::string partition = "iid";
  int parts = 1, index = 0;
  uint64_t seed = 1;
  double held_out_fraction = 0.0;  // kept out of training, for evaluation
};
// Loads once; errors name the file (and line, for a bad CSV row).
StatusOr<std::unique_ptr<DataSource>> LoadFileSource(const FileSourceOptions& options);

// Every example of options.source (up to options.limit; no partition, no
// split): what `flotilla client predict` runs over. Fashion-MNIST gives its
// test split; CSV rows and images are standardized with their own file's
// statistics.
StatusOr<training::Dataset> LoadAllExamples(const FileSourceOptions& options);

// Keeps the first `limit` examples of `d` (0 = all).
void KeepFirst(training::Dataset* d, int64_t limit);

}  // namespace flotilla::client
