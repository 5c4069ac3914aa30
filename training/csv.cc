#include "training/csv.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

namespace flotilla::training {
namespace {

// Bounds that keep a hostile file from making us allocate absurdly.
constexpr size_t kMaxColumns = 100000;
constexpr int64_t kMaxClasses = 100000;

std::vector<std::string> SplitFields(const std::string& line, char delimiter) {
  std::vector<std::string> fields;
  std::string field;
  for (char c : line) {
    if (c == delimiter) {
      fields.push_back(field);
      field.clear();
    } else if (c != '\r') {
      field.push_back(c);
    }
  }
  fields.push_back(field);
  return fields;
}

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\"");
  if (b == std::string::npos) return std::string();
  const size_t e = s.find_last_not_of(" \t\"");
  return s.substr(b, e - b + 1);
}

// A column given by header name or index (negative from the end).
StatusOr<size_t> ResolveColumn(const std::string& spec, const std::vector<std::string>& names, size_t columns,
                               const std::string& path) {
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == spec) return i;
  }
  char* end = nullptr;
  errno = 0;
  const long long index = std::strtoll(spec.c_str(), &end, 10);
  if (spec.empty() || *end != '\0' || errno != 0) {
    std::string list;
    for (size_t i = 0; i < names.size() && i < 20; ++i) list += (i ? ", " : "") + names[i];
    return InvalidArgument(path + ": no column '" + spec + "'" +
                           (names.empty() ? std::string(" (no header: give a 0-based index, -1 for the last)")
                                          : " (columns: " + list + ")"));
  }
  const long long n = static_cast<long long>(columns);
  const long long resolved = index < 0 ? n + index : index;
  if (resolved < 0 || resolved >= n) {
    return InvalidArgument(path + ": column index " + spec + " is outside the " + std::to_string(columns) +
                           " columns");
  }
  return static_cast<size_t>(resolved);
}

}  // namespace

StatusOr<DataSourceName> ParseDataSource(const std::string& name) {
  const size_t colon = name.find(':');
  DataSourceName out;
  out.kind = name.substr(0, colon);
  out.path = colon == std::string::npos ? std::string() : name.substr(colon + 1);
  if (out.kind == "csv" && !out.path.empty()) return out;
  if (out.kind == "images" && !out.path.empty()) return out;
  if (out.kind == "fashion-mnist") return out;
  return InvalidArgument("unknown data source '" + name +
                         "'; use csv:PATH, images:DIR or fashion-mnist[:DIR]");
}

StatusOr<CsvData> LoadCsv(const std::string& path, const CsvOptions& options) {
  std::ifstream in(path);
  if (!in) {
    return NotFound(path + ": cannot open: " + std::strerror(errno));
  }
  if (options.skip_rows < 0) return InvalidArgument("skip_rows must be >= 0");
  std::string line;
  int64_t line_no = 0;
  for (int64_t i = 0; i < options.skip_rows && std::getline(in, line); ++i) ++line_no;

  CsvData out;
  std::vector<std::string> names;
  if (options.header) {
    if (!std::getline(in, line)) return InvalidArgument(path + ": no header row");
    ++line_no;
    for (const auto& f : SplitFields(line, options.delimiter)) names.push_back(Trim(f));
  }
  size_t columns = names.size();
  size_t label = 0;
  std::vector<size_t> features;
  std::vector<double> values;  // row-major, features only
  std::vector<int64_t> labels;
  std::vector<float> targets;  // real_target
  int64_t max_label = -1;
  while (std::getline(in, line)) {
    ++line_no;
    if (Trim(line).empty()) continue;
    const std::vector<std::string> fields = SplitFields(line, options.delimiter);
    const std::string where = path + ":" + std::to_string(line_no);
    if (columns == 0) {
      columns = fields.size();
      if (columns < 2 || columns > kMaxColumns) {
        return InvalidArgument(where + ": " + std::to_string(columns) +
                               " columns; need a label and a feature");
      }
    }
    if (features.empty()) {
      ASSIGN_OR_RETURN(label, ResolveColumn(options.label_column, names, columns, path));
      if (options.feature_columns.empty()) {
        for (size_t c = 0; c < columns; ++c) {
          if (c != label) features.push_back(c);
        }
      } else {
        for (const auto& spec : options.feature_columns) {
          ASSIGN_OR_RETURN(size_t c, ResolveColumn(spec, names, columns, path));
          if (c == label) return InvalidArgument(path + ": column '" + spec + "' is the label");
          features.push_back(c);
        }
      }
      for (size_t c : features) {
        out.feature_names.push_back(c < names.size() ? names[c] : "column " + std::to_string(c));
      }
    }
    if (fields.size() != columns) {
      return InvalidArgument(where + ": " + std::to_string(fields.size()) + " fields, expected " +
                             std::to_string(columns) + " (a missing or extra value)");
    }
    auto column_name = [&](size_t c) { return c < names.size() ? "'" + names[c] + "'" : std::to_string(c); };
    for (size_t c : features) {
      const std::string v = Trim(fields[c]);
      char* end = nullptr;
      errno = 0;
      const double x = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(x)) {
        return InvalidArgument(where + ": column " + column_name(c) + " is '" + v.substr(0, 40) +
                               "', not a finite number" + (v.empty() ? " (missing value)" : ""));
      }
      values.push_back(x);
    }
    const std::string v = Trim(fields[label]);
    char* end = nullptr;
    errno = 0;
    const double y = std::strtod(v.c_str(), &end);
    if (options.real_target) {
      if (v.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(y)) {
        return InvalidArgument(where + ": target column " + column_name(label) + " is '" + v.substr(0, 40) +
                               "', not a finite number" + (v.empty() ? " (missing value)" : ""));
      }
      targets.push_back(static_cast<float>(y));
      labels.push_back(0);
      max_label = 0;
      continue;
    }
    if (v.empty() || *end != '\0' || !(y >= 0) || y != std::floor(y) || y >= kMaxClasses) {
      return InvalidArgument(where + ": label column " + column_name(label) + " is '" + v.substr(0, 40) +
                             "', not a class id (0, 1, 2, ...)");
    }
    labels.push_back(static_cast<int64_t>(y));
    max_label = std::max(max_label, labels.back());
  }
  if (labels.empty()) return InvalidArgument(path + ": no data rows");
  const int64_t classes = options.num_classes > 0 ? options.num_classes : max_label + 1;
  if (max_label >= classes) {
    return InvalidArgument(path + ": label " + std::to_string(max_label) + " but num_classes is " +
                           std::to_string(classes));
  }
  Dataset& d = out.dataset;
  d.channels = 1;
  d.height = 1;
  d.width = static_cast<int64_t>(features.size());
  d.num_classes = classes;
  d.features.assign(values.begin(), values.end());
  d.labels = std::move(labels);
  d.targets = std::move(targets);
  if (options.standardize) {
    std::vector<int64_t> all(static_cast<size_t>(d.size()));
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
    d = StandardizedRows(d, all, all, &out.mean, &out.stddev);
  }
  return out;
}

Dataset StandardizedRows(const Dataset& d, const std::vector<int64_t>& rows,
                         const std::vector<int64_t>& reference, std::vector<float>* mean_out,
                         std::vector<float>* stddev_out) {
  const size_t f = static_cast<size_t>(d.example_numel());
  std::vector<double> mean(f, 0.0), sd(f, 0.0);
  auto at = [&](int64_t row, size_t j) {
    return static_cast<double>(d.features[static_cast<size_t>(row) * f + j]);
  };
  for (int64_t r : reference) {
    for (size_t j = 0; j < f; ++j) mean[j] += at(r, j);
  }
  const double n = static_cast<double>(std::max<size_t>(1, reference.size()));
  for (size_t j = 0; j < f; ++j) mean[j] /= n;
  for (int64_t r : reference) {
    for (size_t j = 0; j < f; ++j) sd[j] += (at(r, j) - mean[j]) * (at(r, j) - mean[j]);
  }
  for (size_t j = 0; j < f; ++j) {
    sd[j] = std::sqrt(sd[j] / n);
    if (sd[j] < 1e-12) sd[j] = 1.0;  // a constant feature becomes 0
  }
  Dataset out;
  out.channels = d.channels;
  out.height = d.height;
  out.width = d.width;
  out.num_classes = d.num_classes;
  out.features.reserve(rows.size() * f);
  out.labels.reserve(rows.size());
  for (int64_t r : rows) {
    for (size_t j = 0; j < f; ++j) out.features.push_back(static_cast<float>((at(r, j) - mean[j]) / sd[j]));
    out.labels.push_back(d.labels[static_cast<size_t>(r)]);
    if (!d.targets.empty()) out.targets.push_back(d.targets[static_cast<size_t>(r)]);
  }
  if (mean_out != nullptr) mean_out->assign(mean.begin(), mean.end());
  if (stddev_out != nullptr) stddev_out->assign(sd.begin(), sd.end());
  return out;
}

}  // namespace flotilla::training
