// Metrics in the Prometheus text exposition format (version 0.0.4): what a
// scrape of /metrics returns. PromText writes metric families (HELP and TYPE
// once each, then their samples); Histogram keeps the cumulative bucket
// counts of one observed quantity.
//
// Thread-safety: PromText is not thread-safe (build one per scrape);
// Histogram is not thread-safe (its owner locks).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::monitoring {

using Labels = std::vector<std::pair<std::string, std::string>>;

struct HistogramData {
  std::vector<double> bounds;    // upper bounds, ascending (+Inf is implicit)
  std::vector<uint64_t> counts;  // per bound, cumulative (observations <= bound)
  double sum = 0.0;
  uint64_t count = 0;
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  const HistogramData& data() const { return data_; }

 private:
  HistogramData data_;
};

// Bucket bounds for durations from 10 ms to about 3 hours.
std::vector<double> DurationBuckets();

class PromText {
 public:
  // A family: name (with its _total or unit suffix), "counter" | "gauge" |
  // "histogram", and a one-line help. Samples follow until the next family.
  void Family(const std::string& name, const char* type, const std::string& help);
  void Sample(double value, const Labels& labels = {});
  // A histogram's _bucket, _sum and _count lines under the current family.
  void HistogramSamples(const HistogramData& h, const Labels& labels = {});
  // Shorthands: one family with one sample.
  void Counter(const std::string& name, const std::string& help, double value);
  void Gauge(const std::string& name, const std::string& help, double value);
  const std::string& text() const { return out_; }

 private:
  void Line(const std::string& name, const Labels& labels, double value);
  std::string family_;
  std::string out_;
};

// The format's escaping of a label value (backslash, quote, newline).
std::string EscapeLabelValue(const std::string& v);
// A number as the format writes it: integers without a fraction, NaN and
// +Inf/-Inf spelled as Prometheus does.
std::string FormatValue(double v);

}  // namespace flotilla::monitoring
