// Tests for training/: Fashion-MNIST loading, partitioners and ModelRunner.
// Reads the real dataset from Debian's dataset-fashion-mnist package.

#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "training/dataset.h"
#include "training/model.h"
#include "training/partition.h"

namespace flotilla::training {
namespace {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("flotilla_training_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void AppendBigEndian32(std::string* s, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) s->push_back(static_cast<char>((v >> shift) & 0xff));
}

// Uncompressed IDX files (zlib reads them transparently).
std::string IdxImages(uint32_t count, uint32_t rows, uint32_t cols, const std::string& pixels) {
  std::string s;
  AppendBigEndian32(&s, 0x803);
  AppendBigEndian32(&s, count);
  AppendBigEndian32(&s, rows);
  AppendBigEndian32(&s, cols);
  return s + pixels;
}

std::string IdxLabels(const std::string& labels) {
  std::string s;
  AppendBigEndian32(&s, 0x801);
  AppendBigEndian32(&s, static_cast<uint32_t>(labels.size()));
  return s + labels;
}

// Copies one real file of the Fashion-MNIST package into `dir`.
void CopyPackageFile(const std::string& name, const fs::path& dir) {
  fs::copy_file(fs::path(kDefaultFashionMnistDir) / name, dir / name, fs::copy_options::overwrite_existing);
}

std::shared_ptr<const Dataset> LoadOrFail(Split split, int64_t limit) {
  auto ds = LoadFashionMnist(kDefaultFashionMnistDir, split, limit);
  INFO(ds.status().ToString());
  REQUIRE(ds.ok());
  return std::make_shared<const Dataset>(std::move(ds).value());
}

// Every index in [0, n) appears in exactly one client.
void RequireExactCover(const Partition& parts, int64_t n) {
  std::vector<int> seen(static_cast<size_t>(n), 0);
  int64_t total = 0;
  for (const auto& part : parts) {
    for (int64_t i : part) {
      REQUIRE(i >= 0);
      REQUIRE(i < n);
      ++seen[static_cast<size_t>(i)];
      ++total;
    }
  }
  REQUIRE(total == n);
  REQUIRE(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
}

std::vector<int64_t> CyclicLabels(int64_t n, int64_t classes = 10) {
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = i % classes;
  return labels;
}

// Mean over clients of the fraction of a client's examples in its most
// common class.
double MeanMaxClassFraction(const Partition& parts, const std::vector<int64_t>& labels) {
  double sum = 0.0;
  for (const auto& part : parts) {
    std::vector<int64_t> counts(10, 0);
    for (int64_t i : part) ++counts[static_cast<size_t>(labels[static_cast<size_t>(i)])];
    sum += static_cast<double>(*std::max_element(counts.begin(), counts.end())) /
           static_cast<double>(part.size());
  }
  return sum / static_cast<double>(parts.size());
}

std::unique_ptr<ModelRunner> MakeRunner(const std::string& arch, uint64_t seed) {
  auto runner = ModelRunner::Create(arch, seed);
  INFO(runner.status().ToString());
  REQUIRE(runner.ok());
  return std::move(runner).value();
}

}  // namespace

// ---- Dataset ----

TEST_CASE("Fashion-MNIST loads both splits in full", "[training][dataset]") {
  auto train = LoadOrFail(Split::kTrain, 0);
  auto test = LoadOrFail(Split::kTest, 0);
  CHECK(train->size() == 60000);
  CHECK(test->size() == 10000);
  for (const auto& ds : {train, test}) {
    CHECK(ds->channels == 1);
    CHECK(ds->height == 28);
    CHECK(ds->width == 28);
    CHECK(ds->features.size() == static_cast<size_t>(ds->size() * 784));
    CHECK(std::all_of(ds->labels.begin(), ds->labels.end(), [](int64_t y) { return y >= 0 && y < 10; }));
  }
  // The training set is balanced: 6000 of each class.
  std::vector<int64_t> counts(10, 0);
  for (int64_t y : train->labels) ++counts[static_cast<size_t>(y)];
  CHECK(std::all_of(counts.begin(), counts.end(), [](int64_t c) { return c == 6000; }));
}

TEST_CASE("Fashion-MNIST pixels are standardized", "[training][dataset]") {
  auto ds = LoadOrFail(Split::kTrain, 5000);
  REQUIRE(ds->size() == 5000);
  double sum = 0.0, sum_sq = 0.0;
  float lo = ds->features[0], hi = ds->features[0];
  for (float v : ds->features) {
    sum += v;
    sum_sq += static_cast<double>(v) * v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const double n = static_cast<double>(ds->features.size());
  const double mean = sum / n;
  const double stddev = std::sqrt(sum_sq / n - mean * mean);
  CHECK(std::abs(mean) < 0.1);
  CHECK(std::abs(stddev - 1.0) < 0.1);
  CHECK(lo == Approx((0.0 - 0.2860) / 0.3530).epsilon(1e-5));
  CHECK(hi == Approx((1.0 - 0.2860) / 0.3530).epsilon(1e-5));
}

TEST_CASE("LoadFashionMnist limit keeps the first examples", "[training][dataset]") {
  auto small = LoadOrFail(Split::kTest, 100);
  auto larger = LoadOrFail(Split::kTest, 300);
  REQUIRE(small->size() == 100);
  CHECK(std::equal(small->labels.begin(), small->labels.end(), larger->labels.begin()));
  CHECK(std::equal(small->features.begin(), small->features.end(), larger->features.begin()));
  CHECK(!LoadFashionMnist(kDefaultFashionMnistDir, Split::kTest, -1).ok());
}

TEST_CASE("A missing dataset directory is NotFound and names the path", "[training][dataset]") {
  const std::string dir = "/nonexistent/flotilla-fashion-mnist";
  auto ds = LoadFashionMnist(dir, Split::kTrain);
  REQUIRE(!ds.ok());
  CHECK(ds.status().code() == StatusCode::kNotFound);
  CHECK_THAT(ds.status().message(), Catch::Contains(dir));
  CHECK_THAT(ds.status().message(), Catch::Contains("apt-get install dataset-fashion-mnist"));
}

TEST_CASE("A truncated gzip file is DataLoss naming the file", "[training][dataset]") {
  TempDir dir;
  CopyPackageFile("t10k-labels-idx1-ubyte.gz", dir.path());
  const std::string images = ReadFile(fs::path(kDefaultFashionMnistDir) / "t10k-images-idx3-ubyte.gz");
  REQUIRE(images.size() > 200000);
  const fs::path images_path = dir.path() / "t10k-images-idx3-ubyte.gz";
  WriteFile(images_path, images.substr(0, 100000));

  auto ds = LoadFashionMnist(dir.path().string(), Split::kTest);
  REQUIRE(!ds.ok());
  CHECK(ds.status().code() == StatusCode::kDataLoss);
  CHECK_THAT(ds.status().message(), Catch::Contains(images_path.string()));
}

TEST_CASE("A corrupt gzip stream is DataLoss", "[training][dataset]") {
  TempDir dir;
  CopyPackageFile("t10k-images-idx3-ubyte.gz", dir.path());
  std::string labels = ReadFile(fs::path(kDefaultFashionMnistDir) / "t10k-labels-idx1-ubyte.gz");
  REQUIRE(labels.size() > 1000);
  for (size_t i = 100; i < 600; ++i) labels[i] = static_cast<char>(labels[i] ^ 0x5a);
  WriteFile(dir.path() / "t10k-labels-idx1-ubyte.gz", labels);

  auto ds = LoadFashionMnist(dir.path().string(), Split::kTest);
  REQUIRE(!ds.ok());
  CHECK(ds.status().code() == StatusCode::kDataLoss);
  CHECK_THAT(ds.status().message(), Catch::Contains("t10k-labels-idx1-ubyte.gz"));
}

TEST_CASE("Bad IDX headers are DataLoss", "[training][dataset]") {
  TempDir dir;
  const fs::path images = dir.path() / "train-images-idx3-ubyte.gz";
  const fs::path labels = dir.path() / "train-labels-idx1-ubyte.gz";
  const std::string pixels(3 * 4, '\x80');

  SECTION("wrong magic") {
    std::string bad = IdxImages(3, 2, 2, pixels);
    bad[3] = 0x01;
    WriteFile(images, bad);
    WriteFile(labels, IdxLabels(std::string("\x01\x02\x03", 3)));
  }
  SECTION("image and label counts differ") {
    WriteFile(images, IdxImages(3, 2, 2, pixels));
    WriteFile(labels, IdxLabels(std::string("\x01\x02", 2)));
  }
  SECTION("label out of range") {
    WriteFile(images, IdxImages(3, 2, 2, pixels));
    WriteFile(labels, IdxLabels(std::string("\x01\x0b\x03", 3)));
  }
  SECTION("fewer pixels than the header promises") {
    WriteFile(images, IdxImages(3, 2, 2, pixels.substr(0, 10)));
    WriteFile(labels, IdxLabels(std::string("\x01\x02\x03", 3)));
  }
  SECTION("absurd dimensions") {
    WriteFile(images, IdxImages(3, 100000, 2, pixels));
    WriteFile(labels, IdxLabels(std::string("\x01\x02\x03", 3)));
  }
  auto ds = LoadFashionMnist(dir.path().string(), Split::kTrain);
  REQUIRE(!ds.ok());
  CHECK(ds.status().code() == StatusCode::kDataLoss);
}

TEST_CASE("A well-formed small IDX file parses exactly", "[training][dataset]") {
  TempDir dir;
  WriteFile(dir.path() / "train-images-idx3-ubyte.gz", IdxImages(2, 2, 3,
                                                                 std::string("\x00\xff\x00\xff\x00\xff"
                                                                             "\x10\x20\x30\x40\x50\x60",
                                                                             12)));
  WriteFile(dir.path() / "train-labels-idx1-ubyte.gz", IdxLabels(std::string("\x09\x00", 2)));
  auto ds = LoadFashionMnist(dir.path().string(), Split::kTrain);
  INFO(ds.status().ToString());
  REQUIRE(ds.ok());
  CHECK(ds->size() == 2);
  CHECK(ds->height == 2);
  CHECK(ds->width == 3);
  CHECK(ds->labels == std::vector<int64_t>{9, 0});
  CHECK(ds->features[1] == Approx((1.0 - 0.2860) / 0.3530));
  CHECK(ds->features[6] == Approx((16.0 / 255.0 - 0.2860) / 0.3530));
}

TEST_CASE("MakeSynthetic is deterministic and well-formed", "[training][dataset]") {
  Dataset a = MakeSynthetic(200, 7);
  Dataset b = MakeSynthetic(200, 7);
  Dataset c = MakeSynthetic(200, 8);
  CHECK(a.size() == 200);
  CHECK(a.features.size() == 200u * 784u);
  CHECK(a.features == b.features);
  CHECK(a.labels == b.labels);
  CHECK(a.features != c.features);
  CHECK(std::all_of(a.labels.begin(), a.labels.end(), [](int64_t y) { return y >= 0 && y < 10; }));
  DataView all = DataView::All(std::make_shared<const Dataset>(std::move(a)));
  CHECK(all.size() == 200);
  CHECK(all.indices.front() == 0);
  CHECK(all.indices.back() == 199);
}

// ---- Partitioners ----

TEST_CASE("IID partition covers every example once in near-equal parts", "[training][partition]") {
  auto parts = PartitionIid(1003, 10, 42);
  REQUIRE(parts.ok());
  REQUIRE(parts->size() == 10);
  RequireExactCover(*parts, 1003);
  for (const auto& part : *parts) CHECK((part.size() == 100 || part.size() == 101));
  CHECK(!PartitionIid(5, 10, 1).ok());
  CHECK(!PartitionIid(100, 0, 1).ok());
}

TEST_CASE("Dirichlet partition covers every example once", "[training][partition]") {
  const auto labels = CyclicLabels(6000);
  for (double alpha : {0.1, 0.5, 10.0}) {
    auto parts = PartitionDirichlet(labels, 10, 20, alpha, 3);
    INFO("alpha " << alpha << ": " << parts.status().ToString());
    REQUIRE(parts.ok());
    REQUIRE(parts->size() == 20);
    RequireExactCover(*parts, 6000);
    for (const auto& part : *parts) CHECK(!part.empty());
  }
}

TEST_CASE("Dirichlet label skew grows as alpha shrinks", "[training][partition]") {
  const auto labels = CyclicLabels(6000);
  auto skewed = PartitionDirichlet(labels, 10, 20, 0.1, 11);
  auto mild = PartitionDirichlet(labels, 10, 20, 10.0, 11);
  REQUIRE(skewed.ok());
  REQUIRE(mild.ok());
  const double skewed_max = MeanMaxClassFraction(*skewed, labels);
  const double mild_max = MeanMaxClassFraction(*mild, labels);
  INFO("alpha 0.1: " << skewed_max << ", alpha 10: " << mild_max);
  CHECK(skewed_max > 0.5);
  CHECK(mild_max < 0.3);
  CHECK(skewed_max > mild_max + 0.2);
}

TEST_CASE("Dirichlet partition honours min_per_client and rejects bad input", "[training][partition]") {
  const auto labels = CyclicLabels(2000);
  auto parts = PartitionDirichlet(labels, 10, 10, 0.3, 5, 50);
  REQUIRE(parts.ok());
  for (const auto& part : *parts) CHECK(part.size() >= 50u);
  CHECK(!PartitionDirichlet(labels, 10, 10, 0.0, 5).ok());
  CHECK(!PartitionDirichlet(labels, 10, 10, -1.0, 5).ok());
  CHECK(!PartitionDirichlet(labels, 10, 0, 0.5, 5).ok());
  CHECK(!PartitionDirichlet(labels, 10, 10, 0.5, 5, 201).ok());  // 10 * 201 > 2000
  CHECK(!PartitionDirichlet(labels, 5, 10, 0.5, 5).ok());        // labels 5..9 out of range
}

TEST_CASE("Shards partition gives each client 2 single-label shards", "[training][partition]") {
  const auto labels = CyclicLabels(60000);
  auto parts = PartitionShards(labels, 100, 2, 9);
  REQUIRE(parts.ok());
  REQUIRE(parts->size() == 100);
  RequireExactCover(*parts, 60000);
  int64_t max_labels = 0;
  for (const auto& part : *parts) {
    REQUIRE(part.size() == 600u);  // 2 shards of 60000 / 200
    std::set<int64_t> distinct;
    for (int64_t i : part) distinct.insert(labels[static_cast<size_t>(i)]);
    max_labels = std::max<int64_t>(max_labels, static_cast<int64_t>(distinct.size()));
    // Each shard is one contiguous run of sorted labels, hence one label here.
    std::set<int64_t> first(part.begin(), part.begin() + 300);
    CHECK(first.size() == 300u);
  }
  CHECK(max_labels <= 2);
}

TEST_CASE("Shards partition drops only the remainder", "[training][partition]") {
  const auto labels = CyclicLabels(1005);
  auto parts = PartitionShards(labels, 10, 2, 1);
  REQUIRE(parts.ok());
  std::set<int64_t> all;
  for (const auto& part : *parts) {
    CHECK(part.size() == 100u);  // 2 shards of 1005 / 20 = 50
    all.insert(part.begin(), part.end());
  }
  CHECK(all.size() == 1000u);
  CHECK(!PartitionShards(CyclicLabels(10), 10, 2, 1).ok());
  CHECK(!PartitionShards(labels, 10, 0, 1).ok());
}

TEST_CASE("Partitions are deterministic in their seed", "[training][partition]") {
  const auto labels = CyclicLabels(3000);
  CHECK(*PartitionIid(3000, 10, 1) == *PartitionIid(3000, 10, 1));
  CHECK(*PartitionIid(3000, 10, 1) != *PartitionIid(3000, 10, 2));
  CHECK(*PartitionDirichlet(labels, 10, 10, 0.5, 1) == *PartitionDirichlet(labels, 10, 10, 0.5, 1));
  CHECK(*PartitionDirichlet(labels, 10, 10, 0.5, 1) != *PartitionDirichlet(labels, 10, 10, 0.5, 2));
  CHECK(*PartitionShards(labels, 10, 2, 1) == *PartitionShards(labels, 10, 2, 1));
  CHECK(*PartitionShards(labels, 10, 2, 1) != *PartitionShards(labels, 10, 2, 2));
}

TEST_CASE("PartitionByName parses specs", "[training][partition]") {
  const auto labels = CyclicLabels(1000);
  CHECK(*PartitionByName("iid", labels, 10, 10, 4) == *PartitionIid(1000, 10, 4));
  CHECK(*PartitionByName("dirichlet:0.5", labels, 10, 10, 4) == *PartitionDirichlet(labels, 10, 10, 0.5, 4));
  CHECK(*PartitionByName("shards:2", labels, 10, 10, 4) == *PartitionShards(labels, 10, 2, 4));
  for (const char* bad : {"", "iid:3", "dirichlet", "dirichlet:", "dirichlet:abc", "dirichlet:0.5x",
                          "shards:two", "shards:", "random"}) {
    auto parts = PartitionByName(bad, labels, 10, 10, 4);
    INFO("spec '" << bad << "'");
    REQUIRE(!parts.ok());
    CHECK(parts.status().code() == StatusCode::kInvalidArgument);
  }
}

// ---- ModelRunner ----

TEST_CASE("Architectures have the FedAvg paper's parameter counts", "[training][model]") {
  CHECK(MakeRunner("2nn", 1)->layout()->total_numel() == 199210);
  CHECK(MakeRunner("cnn", 1)->layout()->total_numel() == 1663370);
  CHECK(MakeRunner("logreg", 1)->layout()->total_numel() == 7850);
  auto runner = MakeRunner("2nn", 1);
  CHECK(runner->arch() == "2nn");
  REQUIRE(runner->layout()->tensors().size() == 6);
  CHECK(runner->layout()->tensors()[0].name == "fc1.weight");
  CHECK(runner->layout()->tensors()[0].shape == std::vector<int64_t>{200, 784});
  CHECK(runner->layout()->tensors()[1].name == "fc1.bias");

  auto unknown = ModelRunner::Create("resnet", 1);
  REQUIRE(!unknown.ok());
  CHECK(unknown.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(unknown.status().message(), Catch::Contains("2nn"));
}

TEST_CASE("Weights round trip bit-exactly", "[training][model]") {
  for (const std::string arch : {"2nn", "cnn", "logreg"}) {
    auto source = MakeRunner(arch, 1);
    auto dest = MakeRunner(arch, 2);
    const Weights w = source->GetWeights();
    REQUIRE(w.Validate().ok());
    CHECK(w.data != dest->GetWeights().data);
    REQUIRE(dest->SetWeights(w).ok());
    const Weights back = dest->GetWeights();
    REQUIRE(back.data.size() == w.data.size());
    CHECK(std::memcmp(back.data.data(), w.data.data(), w.data.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("SetWeights rejects bad weights and leaves the module unchanged", "[training][model]") {
  auto runner = MakeRunner("2nn", 1);
  const Weights original = runner->GetWeights();

  SECTION("different shape") {
    auto other = MakeRunner("logreg", 1);
    auto st = runner->SetWeights(other->GetWeights());
    CHECK(st.code() == StatusCode::kInvalidArgument);
  }
  SECTION("same names, one shape changed") {
    auto layout = Layout::Create({{"fc1.weight", {200, 784}},
                                  {"fc1.bias", {200}},
                                  {"fc2.weight", {200, 200}},
                                  {"fc2.bias", {200}},
                                  {"fc3.weight", {10, 100}},
                                  {"fc3.bias", {10}}});
    REQUIRE(layout.ok());
    Weights w = Weights::Zeros(std::make_shared<const Layout>(std::move(layout).value()));
    auto st = runner->SetWeights(w);
    CHECK(st.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(st.message(), Catch::Contains("fc3.weight"));
  }
  SECTION("non-finite value") {
    Weights w = MakeRunner("2nn", 5)->GetWeights();
    w.data[w.data.size() - 1] = std::nanf("");
    CHECK(!runner->SetWeights(w).ok());
  }
  SECTION("wrong buffer size") {
    Weights w = MakeRunner("2nn", 5)->GetWeights();
    w.data.pop_back();
    CHECK(!runner->SetWeights(w).ok());
  }
  CHECK(runner->GetWeights().data == original.data);
}

TEST_CASE("Initialization is deterministic in the seed even across threads", "[training][model]") {
  for (const std::string arch : {"2nn", "cnn"}) {
    std::vector<float> a, b;
    std::thread ta([&] { a = ModelRunner::Create(arch, 77).value()->GetWeights().data; });
    std::thread tb([&] { b = ModelRunner::Create(arch, 77).value()->GetWeights().data; });
    ta.join();
    tb.join();
    REQUIRE(!a.empty());
    CHECK(a == b);
    CHECK(MakeRunner(arch, 77)->GetWeights().data == a);
    CHECK(MakeRunner(arch, 78)->GetWeights().data != a);
  }
}

TEST_CASE("Initialization looks like Torch's default", "[training][model]") {
  auto runner = MakeRunner("2nn", 3);
  const Weights w = runner->GetWeights();
  const TensorSpec& fc1 = runner->layout()->tensors()[0];
  const float bound = 1.0f / std::sqrt(784.0f);
  float lo = 0, hi = 0;
  for (int64_t i = 0; i < fc1.numel; ++i) {
    lo = std::min(lo, w.data[static_cast<size_t>(fc1.offset + i)]);
    hi = std::max(hi, w.data[static_cast<size_t>(fc1.offset + i)]);
  }
  CHECK(lo >= -bound);
  CHECK(hi <= bound);
  CHECK(lo < -0.9f * bound);
  CHECK(hi > 0.9f * bound);
}

TEST_CASE("Bad training configuration and data are rejected", "[training][model]") {
  auto runner = MakeRunner("2nn", 1);
  const Weights original = runner->GetWeights();
  auto data = std::make_shared<const Dataset>(MakeSynthetic(50, 1));
  const DataView view = DataView::All(data);
  TrainConfig good;

  TrainConfig c = good;
  SECTION("batch_size 0") { c.batch_size = 0; }
  SECTION("epochs 0") { c.epochs = 0; }
  SECTION("learning rate 0") { c.learning_rate = 0.0; }
  SECTION("momentum 1") { c.momentum = 1.0; }
  auto result = runner->Train(view, c);
  REQUIRE(!result.ok());
  CHECK(result.status().code() == StatusCode::kInvalidArgument);
  CHECK(runner->GetWeights().data == original.data);
}

TEST_CASE("Bad views are rejected by Train and Evaluate", "[training][model]") {
  auto runner = MakeRunner("2nn", 1);
  auto data = std::make_shared<const Dataset>(MakeSynthetic(50, 1));
  DataView empty{data, {}};
  CHECK(runner->Train(empty, {}).status().code() == StatusCode::kInvalidArgument);
  CHECK(runner->Evaluate(empty).status().code() == StatusCode::kInvalidArgument);
  CHECK(runner->Train(DataView{}, {}).status().code() == StatusCode::kInvalidArgument);
  DataView out_of_range{data, {0, 1, 50}};
  CHECK(runner->Train(out_of_range, {}).status().code() == StatusCode::kInvalidArgument);
  auto small_images = std::make_shared<const Dataset>(MakeSynthetic(20, 1, 14, 14));
  auto st = runner->Train(DataView::All(small_images), {}).status();
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(st.message(), Catch::Contains("[1,14,14]"));
  CHECK(runner->Evaluate(DataView::All(data), 0).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("A diverging loss restores the weights and fails", "[training][model]") {
  auto runner = MakeRunner("2nn", 1);
  const Weights original = runner->GetWeights();
  // Huge inputs and a huge learning rate overflow within a few steps.
  Dataset ds = MakeSynthetic(256, 2);
  for (float& v : ds.features) v *= 1e30f;
  TrainConfig config;
  config.learning_rate = 1e10;
  config.batch_size = 8;
  config.epochs = 3;
  auto result = runner->Train(DataView::All(std::make_shared<const Dataset>(std::move(ds))), config);
  REQUIRE(!result.ok());
  CHECK_THAT(result.status().message(), Catch::Contains("learning rate"));
  CHECK(runner->GetWeights().data == original.data);
}

TEST_CASE("Training learns a synthetic task", "[training][model]") {
  auto data = std::make_shared<const Dataset>(MakeSynthetic(600, 3));
  auto runner = MakeRunner("logreg", 1);
  const DataView view = DataView::All(data);
  TrainConfig config;
  config.epochs = 2;
  config.learning_rate = 0.05;
  auto before = runner->Evaluate(view);
  auto result = runner->Train(view, config);
  REQUIRE(result.ok());
  CHECK(result->examples == 600);
  CHECK(result->steps == 2 * 19);  // ceil(600 / 32) per epoch
  CHECK(std::isfinite(result->mean_loss));
  auto after = runner->Evaluate(view);
  REQUIRE(before.ok());
  REQUIRE(after.ok());
  CHECK(after->examples == 600);
  CHECK(after->accuracy > 0.9);
  CHECK(after->loss < before->loss);
}

TEST_CASE("Training is deterministic given its seeds", "[training][model]") {
  SetTorchThreads(1);
  auto data = std::make_shared<const Dataset>(MakeSynthetic(300, 4));
  TrainConfig config;
  config.momentum = 0.9;
  config.weight_decay = 1e-4;
  config.seed = 12;
  for (const std::string arch : {"2nn", "cnn"}) {
    DataView view = DataView::All(data);
    if (arch == "cnn") view.indices.resize(64);  // the cnn costs ~4 ms per example
    auto a = MakeRunner(arch, 5);
    auto b = MakeRunner(arch, 5);
    REQUIRE(a->Train(view, config).ok());
    REQUIRE(b->Train(view, config).ok());
    const Weights wa = a->GetWeights();
    CHECK(wa.data == b->GetWeights().data);
    CHECK(wa.data != MakeRunner(arch, 5)->GetWeights().data);

    auto c = MakeRunner(arch, 5);
    TrainConfig other = config;
    other.seed = 13;
    REQUIRE(c->Train(view, other).ok());
    CHECK(c->GetWeights().data != wa.data);
  }
}

TEST_CASE("Batches accumulated over smaller passes give the same update", "[training][model]") {
  SetTorchThreads(1);
  auto data = std::make_shared<const Dataset>(MakeSynthetic(200, 6));
  const DataView view = DataView::All(data);
  TrainConfig config;
  config.batch_size = 50;
  config.momentum = 0.9;
  config.seed = 3;
  auto whole = MakeRunner("2nn", 2);
  auto passes = MakeRunner("2nn", 2);
  REQUIRE(whole->Train(view, config).ok());
  config.max_pass_examples = 7;  // 50 = 7 * 7 + 1: uneven passes
  auto result = passes->Train(view, config);
  REQUIRE(result.ok());
  CHECK(result->steps == 4);  // steps are batches, not passes
  const Weights a = whole->GetWeights(), b = passes->GetWeights();
  double max_diff = 0;
  for (size_t i = 0; i < a.data.size(); ++i)
    max_diff = std::max(max_diff, double(std::fabs(a.data[i] - b.data[i])));
  CHECK(max_diff < 1e-5);  // float summation order only
  CHECK(max_diff > 0);     // and truly computed another way
}

TEST_CASE("FedProx's proximal term pulls each step toward where training started", "[training][model]") {
  SetTorchThreads(1);
  auto data = std::make_shared<const Dataset>(MakeSynthetic(64, 6));
  const DataView view = DataView::All(data);
  TrainConfig config;  // plain SGD, lr 0.01: two steps of 32
  config.seed = 4;
  // Without the term: w0 -> w1 -> w2, w1 seen from the step hook.
  auto plain = MakeRunner("logreg", 2);
  const Weights w0 = plain->GetWeights();
  Weights w1;
  config.on_step = [&](int64_t step, int64_t) {
    if (step == 1) w1 = plain->GetWeights();
    return true;
  };
  REQUIRE(plain->Train(view, config).ok());
  const Weights w2 = plain->GetWeights();
  // With it: the first step is the same (w = w0, the term's gradient is 0);
  // the second adds mu (w1 - w0) to the gradient, so
  // w2' = w2 - lr mu (w1 - w0).
  config.on_step = nullptr;
  config.proximal_mu = 5.0;
  auto prox = MakeRunner("logreg", 2);
  REQUIRE(prox->Train(view, config).ok());
  const Weights p2 = prox->GetWeights();
  double max_err = 0, moved = 0;
  for (size_t i = 0; i < w2.data.size(); ++i) {
    const double expected = w2.data[i] - 0.01 * 5.0 * (w1.data[i] - w0.data[i]);
    max_err = std::max(max_err, std::fabs(expected - p2.data[i]));
    moved = std::max(moved, double(std::fabs(p2.data[i] - w2.data[i])));
  }
  CHECK(max_err < 1e-6);
  CHECK(moved > 1e-5);  // the term did change the result
  config.proximal_mu = -1;
  CHECK_FALSE(MakeRunner("logreg", 2)->Train(view, config).ok());
}

TEST_CASE("SCAFFOLD's correction is added to every step's gradient of the trained tensors",
          "[training][model]") {
  SetTorchThreads(1);
  auto data = std::make_shared<const Dataset>(MakeSynthetic(64, 6));
  const DataView view = DataView::All(data);
  TrainConfig config;  // plain SGD, lr 0.01, one step over all 64 examples
  config.batch_size = 64;
  config.seed = 4;
  auto plain = MakeRunner("logreg", 2);
  REQUIRE(plain->Train(view, config).ok());
  const Weights w1 = plain->GetWeights();
  // One step: w1' = w0 - lr (g + v) = w1 - lr v.
  auto corrected = MakeRunner("logreg", 2);
  const std::vector<bool> trained = corrected->TrainedEntries();
  CHECK(trained == std::vector<bool>{true, true});
  Weights v = Weights::Zeros(corrected->layout());
  for (size_t i = 0; i < v.data.size(); ++i) v.data[i] = 0.5f - 0.0001f * static_cast<float>(i % 1000);
  config.control_correction = &v;
  REQUIRE(corrected->Train(view, config).ok());
  const Weights c1 = corrected->GetWeights();
  double max_err = 0;
  for (size_t i = 0; i < w1.data.size(); ++i)
    max_err =
        std::max(max_err, std::fabs(double{w1.data[i]} - 0.01 * double{v.data[i]} - double{c1.data[i]}));
  CHECK(max_err < 1e-6);
  // A correction for another model is refused before training.
  Weights wrong = Weights::Zeros(MakeRunner("2nn", 2)->layout());
  config.control_correction = &wrong;
  CHECK(corrected->Train(view, config).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("A step hook that says stop aborts training and restores the model", "[training][model]") {
  auto data = std::make_shared<const Dataset>(MakeSynthetic(200, 6));
  auto runner = MakeRunner("logreg", 2);
  const Weights original = runner->GetWeights();
  TrainConfig config;
  config.epochs = 2;
  std::vector<std::pair<int64_t, int64_t>> seen;
  config.on_step = [&](int64_t step, int64_t steps) {
    seen.emplace_back(step, steps);
    return step < 3;
  };
  auto result = runner->Train(DataView::All(data), config);
  REQUIRE(result.status().code() == StatusCode::kAborted);
  CHECK_THAT(result.status().message(), Catch::Contains("stopped after step 3 of 14"));
  REQUIRE(seen.size() == 3);
  CHECK(seen.back() == std::make_pair<int64_t, int64_t>(3, 14));  // 2 epochs of ceil(200 / 32)
  CHECK(runner->GetWeights().data == original.data);
}

TEST_CASE("The 2nn learns Fashion-MNIST", "[training][model][slow]") {
  SetTorchThreads(1);
  auto train = LoadOrFail(Split::kTrain, 2000);
  auto test = LoadOrFail(Split::kTest, 1000);
  auto runner = MakeRunner("2nn", 1);
  TrainConfig config;
  config.epochs = 3;
  config.batch_size = 32;
  config.learning_rate = 0.05;
  config.momentum = 0.5;
  config.seed = 1;
  auto before = runner->Evaluate(DataView::All(test));
  auto result = runner->Train(DataView::All(train), config);
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  auto after = runner->Evaluate(DataView::All(test));
  REQUIRE(before.ok());
  REQUIRE(after.ok());
  INFO("accuracy before " << before->accuracy << ", after " << after->accuracy << ", train loss "
                          << result->mean_loss);
  CHECK(before->accuracy < 0.3);
  CHECK(after->accuracy > 0.7);
  CHECK(after->examples == 1000);
}

}  // namespace flotilla::training
