// Smaller updates (proto/compression.h): int8 with stochastic rounding and
// top-k with error feedback, and hostile encodings the decoder refuses.
#include "proto/compression.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>

#include "aggregator/config.h"
#include "proto/codec.h"

using namespace flotilla;

namespace {

Weights Delta(uint64_t seed) {
  auto layout = std::make_shared<const Layout>(*Layout::Create({{"a", {50, 4}}, {"b", {30}}}));
  Weights w = Weights::Zeros(layout);
  Rng rng(seed);
  for (size_t i = 0; i < w.data.size(); ++i)
    w.data[i] = static_cast<float>(rng.UniformDouble() - 0.5) * (i < 200 ? 1.0f : 0.01f);
  return w;
}

}  // namespace

TEST_CASE("int8 updates are 4x smaller, within one step of each value, and unbiased", "[compression]") {
  const Weights x = Delta(1);
  proto::Compression c = *proto::ParseCompression("int8");
  wire::WeightsProto full, small;
  proto::WeightsToProto(x, &full);
  Rng rng(7);
  std::vector<float> unused;
  REQUIRE(proto::EncodeUpdate(x, c, &rng, &unused, &small).ok());
  CHECK(small.data().size() * 4 == full.data().size());
  auto decoded = proto::WeightsFromProto(small, x.layout);
  REQUIRE(decoded.ok());
  // Per tensor, the step is max|x| / 127 (tensor b's values are 100x smaller:
  // its own scale keeps them).
  for (const TensorSpec& t : x.layout->tensors()) {
    float max_abs = 0;
    for (int64_t i = t.offset; i < t.offset + t.numel; ++i) max_abs = std::max(max_abs, std::abs(x.data[i]));
    for (int64_t i = t.offset; i < t.offset + t.numel; ++i) {
      CHECK(std::abs(decoded->data[i] - x.data[i]) <= max_abs / 127.0f * 1.0001f);
    }
  }
  // Unbiased: the mean of many encodings approaches the value.
  std::vector<double> mean(x.data.size(), 0.0);
  const int draws = 400;
  for (int d = 0; d < draws; ++d) {
    wire::WeightsProto p;
    REQUIRE(proto::EncodeUpdate(x, c, &rng, &unused, &p).ok());
    auto w = proto::WeightsFromProto(p, x.layout);
    for (size_t i = 0; i < mean.size(); ++i) mean[i] += w->data[i] / draws;
  }
  double worst = 0;
  for (size_t i = 0; i < 200; ++i) worst = std::max(worst, std::abs(mean[i] - x.data[i]));
  CHECK(worst < 0.5 / 127.0 * 0.25);  // well under a quarter step after 400 draws
}

TEST_CASE("top-k sends the largest elements and keeps the rest for later rounds", "[compression]") {
  const Weights d1 = Delta(2), d2 = Delta(3);
  proto::Compression c = *proto::ParseCompression("topk:0.1");
  CHECK(proto::CompressionName(c) == "topk:0.1");
  std::vector<float> residual;
  Rng rng(1);
  wire::WeightsProto p1, p2;
  REQUIRE(proto::EncodeUpdate(d1, c, &rng, &residual, &p1).ok());
  const size_t k = 23;  // ceil(0.1 x 230)
  CHECK(p1.indices().size() == k * 4);
  CHECK(p1.data().size() == k * 4);
  auto s1 = proto::WeightsFromProto(p1, d1.layout);
  REQUIRE(s1.ok());
  // The kept ones are exact and are the largest by magnitude.
  float smallest_sent = 1e9f, largest_kept = 0;
  for (size_t i = 0; i < d1.data.size(); ++i) {
    if (s1->data[i] != 0.0f) {
      CHECK(s1->data[i] == d1.data[i]);
      smallest_sent = std::min(smallest_sent, std::abs(d1.data[i]));
    } else {
      largest_kept = std::max(largest_kept, std::abs(d1.data[i]));
      CHECK(residual[i] == d1.data[i]);
    }
  }
  CHECK(smallest_sent >= largest_kept);
  // Error feedback: what was sent over two rounds plus what is still kept
  // is exactly what was trained.
  REQUIRE(proto::EncodeUpdate(d2, c, &rng, &residual, &p2).ok());
  auto s2 = proto::WeightsFromProto(p2, d2.layout);
  for (size_t i = 0; i < d1.data.size(); ++i) {
    CHECK(s1->data[i] + s2->data[i] + residual[i] == Approx(d1.data[i] + d2.data[i]).margin(1e-6));
  }
}

TEST_CASE("Hostile compressed encodings are refused with a reason", "[compression]") {
  const Weights x = Delta(4);
  Rng rng(1);
  std::vector<float> residual;
  wire::WeightsProto int8, sparse;
  REQUIRE(proto::EncodeUpdate(x, *proto::ParseCompression("int8"), &rng, &residual, &int8).ok());
  REQUIRE(proto::EncodeUpdate(x, *proto::ParseCompression("topk:0.05"), &rng, &residual, &sparse).ok());
  auto refused = [&](const wire::WeightsProto& p) { return !proto::WeightsFromProto(p, x.layout).ok(); };
  {
    auto p = int8;
    p.mutable_data()->pop_back();
    CHECK(refused(p));
  }
  {
    auto p = int8;
    p.mutable_scales()->RemoveLast();
    CHECK(refused(p));
  }
  {
    auto p = int8;
    p.set_scales(0, NAN);
    CHECK(refused(p));
  }
  {
    auto p = sparse;
    std::string idx = p.indices();
    std::memcpy(&idx[4], &idx[0], 4);  // a repeated index
    p.set_indices(idx);
    CHECK(refused(p));
  }
  {
    auto p = sparse;
    std::string idx = p.indices();
    const uint32_t far = 1u << 30;
    std::memcpy(&idx[idx.size() - 4], &far, 4);  // outside the model
    p.set_indices(idx);
    CHECK(refused(p));
  }
  {
    auto p = sparse;
    p.mutable_data()->append("xxxx");
    CHECK(refused(p));
  }
  {
    auto p = sparse;
    float nan = NAN;
    std::string data = p.data();
    std::memcpy(&data[0], &nan, 4);
    p.set_data(data);
    CHECK(refused(p));
  }
  {
    auto p = int8;
    p.set_encoding(static_cast<wire::WeightsProto::Encoding>(9));
    CHECK(refused(p));
  }
  {
    // A sparse payload claiming a huge layout is refused before anything is
    // allocated for it: compressed weights need the expected layout.
    auto p = sparse;
    p.mutable_layout(0)->set_shape(0, int64_t{1} << 40);
    CHECK_FALSE(proto::WeightsFromProto(p, nullptr).ok());
  }
  CHECK_FALSE(proto::ParseCompression("topk:0").ok());
  CHECK_FALSE(proto::ParseCompression("topk:1.5").ok());
  CHECK_FALSE(proto::ParseCompression("gzip").ok());

  aggregator::AggregatorConfig config;
  config.compression = "int8";
  config.signing_key = nullptr;
  config.secagg.enabled = true;
  Status st = config.Validate();
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("secure aggregation") != std::string::npos);
}
