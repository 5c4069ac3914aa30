// The data-source flags shared by `flotilla sim` and `flotilla client
// run/predict`: which source, how to read a CSV file, and the size images
// are read at.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "training/csv.h"
#include "training/image_folder.h"

namespace flotilla::cli {

// Call ResolveCsvFlags after parsing (it checks the delimiter).
inline void AddCsvFlags(CLI::App* app, std::string* source, training::CsvOptions* csv, std::string* delimiter,
                        training::ImageFolderOptions* images) {
  app->add_option("--data", *source,
                  "Data source: fashion-mnist, csv:PATH (tabular records: numeric features, an integer class "
                  "label; see --csv-label) or images:DIR (one sub-folder of images per class, resized to "
                  "--image-height x --image-width)")
      ->capture_default_str();
  app->add_option("--csv-label", csv->label_column,
                  "CSV: the label column, a header name or a 0-based index (negative from the end)")
      ->capture_default_str();
  app->add_option(
         "--csv-features", csv->feature_columns,
         "CSV: the feature columns, names or 0-based indices (comma-separated; default: every column "
         "but the label)")
      ->delimiter(',');
  app->add_option("--csv-skip-rows", csv->skip_rows, "CSV: lines to skip before the header or the first row")
      ->capture_default_str();
  app->add_flag("--csv-header", csv->header, "CSV: the first row names the columns");
  app->add_option("--csv-delimiter", *delimiter, "CSV: the field delimiter (one character)")
      ->capture_default_str();
  app->add_option("--csv-target", csv->real_target,
                  "CSV: the label column holds class ids (class) or real numbers to regress on (real, for "
                  "--loss mse)")
      ->transform(CLI::CheckedTransformer(std::map<std::string, bool>{{"class", false}, {"real", true}}))
      ->default_str("class");
  app->add_option("--image-height", images->height, "Images: the model's input height (images are resized)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app->add_option("--image-width", images->width, "Images: the model's input width")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app->add_option("--image-channels", images->channels, "Images: 1 (grayscale) or 3 (RGB)")
      ->capture_default_str()
      ->check(CLI::IsMember({1, 3}));
}

inline bool ResolveCsvFlags(const std::string& delimiter, training::CsvOptions* csv) {
  if (delimiter.size() != 1) {
    std::fprintf(stderr, "error: --csv-delimiter must be one character, got '%s'\n", delimiter.c_str());
    return false;
  }
  csv->delimiter = delimiter[0];
  return true;
}

}  // namespace flotilla::cli
