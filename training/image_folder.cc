#include "training/image_folder.h"

#include <stb/stb_image.h>
#include <stb/stb_image_resize.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>

namespace flotilla::training {
namespace {

namespace fs = std::filesystem;

bool IsImage(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".pgm" || ext == ".ppm";
}

}  // namespace

StatusOr<ImageFolderData> LoadImageFolder(const std::string& root, const ImageFolderOptions& options) {
  if (options.channels != 1 && options.channels != 3) return InvalidArgument("image channels must be 1 or 3");
  if (options.height < 1 || options.width < 1 || options.height > 4096 || options.width > 4096) {
    return InvalidArgument("image size must be between 1x1 and 4096x4096");
  }
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    return NotFound(root + ": not a folder (expected one sub-folder of images per class)");
  }
  ImageFolderData out;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    if (entry.is_directory()) out.class_names.push_back(entry.path().filename().string());
  }
  std::sort(out.class_names.begin(), out.class_names.end());
  if (out.class_names.empty()) {
    return InvalidArgument(root + ": no class sub-folders (put each class's images in root/<class>/)");
  }
  Dataset& d = out.dataset;
  d.channels = options.channels;
  d.height = options.height;
  d.width = options.width;
  d.num_classes = static_cast<int64_t>(out.class_names.size());
  const size_t pixels = static_cast<size_t>(options.height * options.width * options.channels);
  std::vector<unsigned char> resized(pixels);
  for (size_t label = 0; label < out.class_names.size(); ++label) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(fs::path(root) / out.class_names[label], ec)) {
      if (entry.is_regular_file() && IsImage(entry.path())) files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      if (d.size() >= options.max_images) {
        return InvalidArgument(root + ": more than " + std::to_string(options.max_images) + " images");
      }
      int w = 0, h = 0, n = 0;
      std::unique_ptr<unsigned char, void (*)(void*)> image(
          stbi_load(file.c_str(), &w, &h, &n, static_cast<int>(options.channels)), stbi_image_free);
      if (!image) {
        return InvalidArgument(file.string() + ": cannot decode the image (" + stbi_failure_reason() + ")");
      }
      if (!stbir_resize_uint8(image.get(), w, h, 0, resized.data(), static_cast<int>(options.width),
                              static_cast<int>(options.height), 0, static_cast<int>(options.channels))) {
        return Internal(file.string() + ": resizing failed");
      }
      // Interleaved HWC bytes to planar CHW floats in [0, 1].
      const size_t base = d.features.size();
      d.features.resize(base + pixels);
      const size_t plane = static_cast<size_t>(options.height * options.width);
      for (size_t i = 0; i < plane; ++i) {
        for (size_t c = 0; c < static_cast<size_t>(options.channels); ++c) {
          d.features[base + c * plane + i] = resized[i * static_cast<size_t>(options.channels) + c] / 255.0f;
        }
      }
      d.labels.push_back(static_cast<int64_t>(label));
    }
  }
  if (d.labels.empty())
    return InvalidArgument(root + ": no images (.png, .jpg, .bmp, .pgm, .ppm) in its class folders");
  if (options.standardize) {
    double sum = 0.0, sq = 0.0;
    for (float x : d.features) sum += x;
    const double mean = sum / static_cast<double>(d.features.size());
    for (float x : d.features) sq += (x - mean) * (x - mean);
    double sd = std::sqrt(sq / static_cast<double>(d.features.size()));
    if (sd < 1e-12) sd = 1.0;
    for (float& x : d.features) x = static_cast<float>((x - mean) / sd);
    out.mean = static_cast<float>(mean);
    out.stddev = static_cast<float>(sd);
  }
  return out;
}

}  // namespace flotilla::training
