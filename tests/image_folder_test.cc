// Image folders (training/image_folder.h): one sub-folder per class, decoded
// with stb, resized, standardized; bad images named.
#include "training/image_folder.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "training/csv.h"

using namespace flotilla;
using namespace flotilla::training;
namespace fs = std::filesystem;

namespace {

// An 8x8 binary PGM whose pixels are all `value`.
void WritePgm(const fs::path& p, unsigned char value) {
  std::ofstream out(p, std::ios::binary);
  out << "P5\n8 8\n255\n" << std::string(64, static_cast<char>(value));
}

struct Folder {
  fs::path root = fs::temp_directory_path() / ("flotilla-images-" + std::to_string(::getpid()));
  Folder() {
    fs::remove_all(root);
    fs::create_directories(root / "cat");
    fs::create_directories(root / "bolt");
    for (int i = 0; i < 3; ++i) WritePgm(root / "cat" / ("c" + std::to_string(i) + ".pgm"), 200);
    for (int i = 0; i < 2; ++i) WritePgm(root / "bolt" / ("b" + std::to_string(i) + ".pgm"), 20);
    std::ofstream(root / "cat" / "notes.txt") << "not an image";  // ignored
  }
  ~Folder() { fs::remove_all(root); }
};

}  // namespace

TEST_CASE("An image folder loads one class per sub-folder, resized and standardized", "[images]") {
  Folder f;
  auto data = LoadImageFolder(f.root.string(), ImageFolderOptions());
  INFO(data.status().ToString());
  REQUIRE(data.ok());
  const Dataset& d = data->dataset;
  CHECK(data->class_names == std::vector<std::string>{"bolt", "cat"});  // sorted: bolt is 0
  CHECK(d.size() == 5);
  CHECK(d.num_classes == 2);
  CHECK(d.channels == 1);
  CHECK(d.height == 28);
  CHECK(d.width == 28);
  CHECK(d.labels == std::vector<int64_t>{0, 0, 1, 1, 1});
  CHECK(d.features.size() == 5u * 28 * 28);
  double sum = 0;
  for (float x : d.features) sum += x;
  CHECK(sum / d.features.size() == Approx(0.0).margin(1e-5));
  CHECK(d.features[0] < 0);      // a dark bolt
  CHECK(d.features.back() > 0);  // a bright cat
  CHECK(data->mean == Approx((2 * 20 + 3 * 200) / 5.0 / 255.0).epsilon(0.02));
  CHECK(ParseDataSource("images:/x")->kind == "images");

  ImageFolderOptions rgb;
  rgb.channels = 3;
  rgb.height = rgb.width = 16;
  auto colour = LoadImageFolder(f.root.string(), rgb);
  REQUIRE(colour.ok());
  CHECK(colour->dataset.features.size() == 5u * 3 * 16 * 16);
}

TEST_CASE("A bad image or an empty folder fails naming what is wrong", "[images]") {
  Folder f;
  std::ofstream(f.root / "cat" / "broken.png") << "\x89PNG but not really";
  auto data = LoadImageFolder(f.root.string(), ImageFolderOptions());
  REQUIRE_FALSE(data.ok());
  CHECK(std::string(data.status().message()).find("broken.png") != std::string::npos);

  const fs::path empty = f.root / "empty";
  fs::create_directories(empty);
  auto none = LoadImageFolder(empty.string(), ImageFolderOptions());
  REQUIRE_FALSE(none.ok());
  CHECK(std::string(none.status().message()).find("no class sub-folders") != std::string::npos);
  CHECK(LoadImageFolder((f.root / "missing").string(), ImageFolderOptions()).status().code() ==
        StatusCode::kNotFound);
}
