// Images on a device: a folder with one sub-folder per class
// (root/<class name>/<image>), PNG, JPEG, BMP or PNM, decoded with Debian's
// stb library, converted to grayscale or RGB, resized to the model's input
// and scaled to [0, 1], then standardized with the folder's own pixel mean
// and standard deviation (a device's own data). Classes are numbered in
// sorted name order. No Torch here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "training/dataset.h"

namespace flotilla::training {

struct ImageFolderOptions {
  int64_t height = 28, width = 28;  // the model's input
  int64_t channels = 1;             // 1 (grayscale) or 3 (RGB)
  bool standardize = true;
  int64_t max_images = 1000000;  // a bound against a runaway folder
};

struct ImageFolderData {
  Dataset dataset;                       // [N, channels, height, width]
  std::vector<std::string> class_names;  // label i is class_names[i]
  float mean = 0.0f, stddev = 1.0f;      // the standardization applied
};

// Errors name the file or folder: not a folder, no class sub-folders, an
// image that does not decode (and why).
StatusOr<ImageFolderData> LoadImageFolder(const std::string& root, const ImageFolderOptions& options);

}  // namespace flotilla::training
