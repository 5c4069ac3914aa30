// The CSV data source (training/csv.h): real records from Debian's
// python3-sklearn, and bad files that must fail with file, line and column.
#include "training/csv.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

using namespace flotilla;
using namespace flotilla::training;
namespace fs = std::filesystem;

namespace {

const char* kBreastCancer = "/usr/lib/python3/dist-packages/sklearn/datasets/data/breast_cancer.csv";

fs::path WriteTemp(const std::string& name, const std::string& text) {
  const fs::path p = fs::temp_directory_path() / ("flotilla-csv-" + std::to_string(::getpid()) + "-" + name);
  std::ofstream(p) << text;
  return p;
}

}  // namespace

TEST_CASE("The Wisconsin breast-cancer records load as 569 examples of 30 standardized features", "[csv]") {
  CsvOptions o;
  o.skip_rows = 1;  // sklearn's own first line: "569,30,malignant,benign"
  auto data = LoadCsv(kBreastCancer, o);
  INFO(data.status().ToString());
  REQUIRE(data.ok());
  const Dataset& d = data->dataset;
  CHECK(d.size() == 569);
  CHECK(d.example_numel() == 30);
  CHECK(d.num_classes == 2);
  CHECK(std::count(d.labels.begin(), d.labels.end(), 1) == 357);  // benign
  // Standardized with the file's own statistics: mean 0, variance 1.
  double sum = 0.0, sq = 0.0;
  for (int64_t i = 0; i < d.size(); ++i) {
    const float x = d.features[static_cast<size_t>(i * 30 + 3)];
    sum += x;
    sq += x * x;
  }
  CHECK(sum / 569 == Approx(0.0).margin(1e-4));
  CHECK(sq / 569 == Approx(1.0).epsilon(1e-3));
  CHECK(data->mean[0] == Approx(14.127).epsilon(1e-3));  // mean radius, as the data set documents
}

TEST_CASE("A bad CSV row fails with the file, the line and the column", "[csv]") {
  const fs::path bad = WriteTemp("bad.csv", "age,dose,outcome\n61,2.5,1\n47,abc,0\n");
  CsvOptions o;
  o.header = true;
  o.label_column = "outcome";
  auto r = LoadCsv(bad.string(), o);
  REQUIRE_FALSE(r.ok());
  const std::string m(r.status().message());
  CHECK(m.find(bad.string() + ":3") != std::string::npos);
  CHECK(m.find("'dose'") != std::string::npos);
  CHECK(m.find("'abc'") != std::string::npos);

  const fs::path missing = WriteTemp("missing.csv", "61,2.5,1\n47,,0\n");
  auto r2 = LoadCsv(missing.string(), CsvOptions{});
  REQUIRE_FALSE(r2.ok());
  CHECK(std::string(r2.status().message()).find(":2") != std::string::npos);
  CHECK(std::string(r2.status().message()).find("missing value") != std::string::npos);

  const fs::path short_row = WriteTemp("short.csv", "61,2.5,1\n47,0\n");
  auto r3 = LoadCsv(short_row.string(), CsvOptions{});
  REQUIRE_FALSE(r3.ok());
  CHECK(std::string(r3.status().message()).find("2 fields, expected 3") != std::string::npos);

  const fs::path label = WriteTemp("label.csv", "61,2.5,1\n47,1.0,0.5\n");
  auto r4 = LoadCsv(label.string(), CsvOptions{});
  REQUIRE_FALSE(r4.ok());
  CHECK(std::string(r4.status().message()).find("not a class id") != std::string::npos);

  CsvOptions named;
  named.header = true;
  named.label_column = "result";
  auto r5 = LoadCsv(bad.string(), named);
  REQUIRE_FALSE(r5.ok());
  CHECK(std::string(r5.status().message()).find("columns: age, dose, outcome") != std::string::npos);

  CHECK(LoadCsv("/no/such/file.csv", CsvOptions{}).status().code() == StatusCode::kNotFound);
  for (const auto& p : {bad, missing, short_row, label}) fs::remove(p);
}

TEST_CASE("CSV columns by name or index, another delimiter, no standardization", "[csv]") {
  const fs::path p = WriteTemp("semi.csv", "# exported\nid;label;x;y\n1;0;1.5;10\n2;2;2.5;20\n");
  CsvOptions o;
  o.skip_rows = 1;
  o.header = true;
  o.delimiter = ';';
  o.label_column = "1";
  o.feature_columns = {"x", "-1"};
  o.standardize = false;
  auto r = LoadCsv(p.string(), o);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->dataset.features == std::vector<float>{1.5f, 10.0f, 2.5f, 20.0f});
  CHECK(r->dataset.labels == std::vector<int64_t>{0, 2});
  CHECK(r->dataset.num_classes == 3);
  CHECK(r->feature_names == std::vector<std::string>{"x", "y"});
  CHECK(ParseDataSource("csv:/x.csv")->path == "/x.csv");
  CHECK_FALSE(ParseDataSource("parquet:/x").ok());
  fs::remove(p);
}
