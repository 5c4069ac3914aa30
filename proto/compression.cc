#include "proto/compression.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "proto/codec.h"

namespace flotilla::proto {

StatusOr<Compression> ParseCompression(const std::string& name) {
  Compression c;
  if (name.empty() || name == "none") return c;
  if (name == "int8") {
    c.kind = Compression::Kind::kInt8;
    return c;
  }
  if (name.rfind("topk:", 0) == 0) {
    char* end = nullptr;
    const double f = std::strtod(name.c_str() + 5, &end);
    if (end != name.c_str() + 5 && *end == '\0' && f > 0.0 && f <= 1.0) {
      c.kind = Compression::Kind::kTopK;
      c.fraction = f;
      return c;
    }
  }
  return InvalidArgument("compression must be none, int8 or topk:F with F in (0, 1] (e.g. topk:0.01), got '" +
                         name + "'");
}

std::string CompressionName(const Compression& c) {
  switch (c.kind) {
    case Compression::Kind::kNone:
      return "none";
    case Compression::Kind::kInt8:
      return "int8";
    case Compression::Kind::kTopK: {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "topk:%g", c.fraction);
      return buf;
    }
  }
  return "none";
}

Status EncodeUpdate(const Weights& delta, const Compression& c, Rng* rng, std::vector<float>* residual,
                    wire::WeightsProto* out) {
  for (float v : delta.data) {
    if (!std::isfinite(v)) return InvalidArgument("the update has a value that is not finite");
  }
  WeightsToProto(delta, out);  // the layout, and the float32 payload
  if (c.kind == Compression::Kind::kNone) return Status::Ok();
  if (c.kind == Compression::Kind::kInt8) {
    std::string bytes(delta.data.size(), '\0');
    for (const TensorSpec& t : delta.layout->tensors()) {
      const float* x = delta.data.data() + t.offset;
      float max_abs = 0.0f;
      for (int64_t i = 0; i < t.numel; ++i) max_abs = std::max(max_abs, std::abs(x[i]));
      const float scale = max_abs > 0.0f ? max_abs / 127.0f : 1.0f;
      for (int64_t i = 0; i < t.numel; ++i) {
        const double q = std::floor(static_cast<double>(x[i]) / scale + rng->UniformDouble());
        bytes[static_cast<size_t>(t.offset + i)] =
            static_cast<char>(static_cast<int8_t>(std::clamp(q, -127.0, 127.0)));
      }
      out->add_scales(scale);
    }
    out->set_data(std::move(bytes));
    out->set_encoding(wire::WeightsProto::INT8);
    return Status::Ok();
  }
  // top-k with error feedback.
  const size_t n = delta.data.size();
  if (residual->size() != n) residual->assign(n, 0.0f);
  std::vector<float> corrected(n);
  for (size_t i = 0; i < n; ++i) corrected[i] = delta.data[i] + (*residual)[i];
  const size_t k =
      std::min(n, std::max<size_t>(1, static_cast<size_t>(std::ceil(c.fraction * static_cast<double>(n)))));
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k - 1), order.end(),
                   [&](uint32_t a, uint32_t b) { return std::abs(corrected[a]) > std::abs(corrected[b]); });
  order.resize(k);
  std::sort(order.begin(), order.end());
  std::string indices(k * sizeof(uint32_t), '\0');
  std::string values(k * sizeof(float), '\0');
  *residual = corrected;
  for (size_t j = 0; j < k; ++j) {
    const uint32_t i = order[j];
    std::memcpy(&indices[j * sizeof(uint32_t)], &i, sizeof(uint32_t));
    std::memcpy(&values[j * sizeof(float)], &corrected[i], sizeof(float));
    (*residual)[i] = 0.0f;  // sent
  }
  out->set_indices(std::move(indices));
  out->set_data(std::move(values));
  out->set_encoding(wire::WeightsProto::SPARSE);
  return Status::Ok();
}

}  // namespace flotilla::proto
