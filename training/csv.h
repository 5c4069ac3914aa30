// Tabular records from a CSV file: one example per row, numeric feature
// columns and an integer class label (or a real-valued target). No Torch
// here.
//
// A bad row is an error naming the file, the line and the column: a missing
// field, a value that is not a number, a label that is not a class id.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "training/dataset.h"

namespace flotilla::training {

struct CsvOptions {
  char delimiter = ',';
  int64_t skip_rows = 0;  // lines skipped before the header (or the first row)
  bool header = false;    // the first row (after skip_rows) names the columns
  // The label column: a header name, or a 0-based index; negative counts
  // from the end ("-1" is the last column).
  std::string label_column = "-1";
  // Feature columns (names or indices as above); empty: every column but
  // the label.
  std::vector<std::string> feature_columns;
  // Standardize every feature to mean 0, standard deviation 1 with
  // statistics from this file's rows only (a device's own data).
  bool standardize = true;
  // Class ids are 0..num_classes-1; 0 = the largest label seen + 1.
  int64_t num_classes = 0;
  // The label column holds real numbers to regress on (loss mse): they go
  // to Dataset::targets, and every example has class 0 of 1.
  bool real_target = false;
};

// The examples as a Dataset of shape [1, 1, F] (a flattened row), and the
// standardization that was applied (empty when standardize is false), so
// that inference on new rows can apply the same.
struct CsvData {
  Dataset dataset;
  std::vector<std::string> feature_names;
  std::vector<float> mean, stddev;
};

StatusOr<CsvData> LoadCsv(const std::string& path, const CsvOptions& options);

// The rows `rows` of `d` (a flattened tabular dataset) as a new dataset,
// each feature standardized with the statistics of `reference` rows (a
// device's own rows; or, for an evaluator, the training rows). A constant
// feature becomes 0. The statistics go to *mean and *stddev when given.
Dataset StandardizedRows(const Dataset& d, const std::vector<int64_t>& rows,
                         const std::vector<int64_t>& reference, std::vector<float>* mean = nullptr,
                         std::vector<float>* stddev = nullptr);

// Parses a data source name: "csv:PATH", "images:DIR" (one sub-folder per
// class, training/image_folder.h) or "fashion-mnist[:DIR]". The part after
// the colon goes to path ("" for the default Fashion-MNIST folder).
struct DataSourceName {
  std::string kind;  // "csv" | "images" | "fashion-mnist"
  std::string path;
};
StatusOr<DataSourceName> ParseDataSource(const std::string& name);

}  // namespace flotilla::training
