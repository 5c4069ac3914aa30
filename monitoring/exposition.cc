#include "monitoring/exposition.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace flotilla::monitoring {

Histogram::Histogram(std::vector<double> bounds) {
  std::sort(bounds.begin(), bounds.end());
  data_.bounds = std::move(bounds);
  data_.counts.assign(data_.bounds.size(), 0);
}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  for (size_t i = 0; i < data_.bounds.size(); ++i) {
    if (value <= data_.bounds[i]) ++data_.counts[i];
  }
  data_.sum += value;
  ++data_.count;
}

std::vector<double> DurationBuckets() {
  return {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 10800};
}

std::string EscapeLabelValue(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.17g", v);
  }
  return buf;
}

void PromText::Family(const std::string& name, const char* type, const std::string& help) {
  family_ = name;
  out_ += "# HELP " + name + " " + help + "\n";
  out_ += "# TYPE " + name + " " + type + "\n";
}

void PromText::Line(const std::string& name, const Labels& labels, double value) {
  out_ += name;
  if (!labels.empty()) {
    out_ += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i > 0) out_ += ',';
      out_ += labels[i].first + "=\"" + EscapeLabelValue(labels[i].second) + "\"";
    }
    out_ += '}';
  }
  out_ += ' ' + FormatValue(value) + '\n';
}

void PromText::Sample(double value, const Labels& labels) { Line(family_, labels, value); }

void PromText::HistogramSamples(const HistogramData& h, const Labels& labels) {
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    Labels l = labels;
    l.emplace_back("le", FormatValue(h.bounds[i]));
    Line(family_ + "_bucket", l, static_cast<double>(h.counts[i]));
  }
  Labels inf = labels;
  inf.emplace_back("le", "+Inf");
  Line(family_ + "_bucket", inf, static_cast<double>(h.count));
  Line(family_ + "_sum", labels, h.sum);
  Line(family_ + "_count", labels, static_cast<double>(h.count));
}

void PromText::Counter(const std::string& name, const std::string& help, double value) {
  Family(name, "counter", help);
  Sample(value);
}

void PromText::Gauge(const std::string& name, const std::string& help, double value) {
  Family(name, "gauge", help);
  Sample(value);
}

}  // namespace flotilla::monitoring
