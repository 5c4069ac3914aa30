// Tests for the differential-privacy building blocks: privacy/noise.h,
// privacy/clipping.h and ModelRunner::TrainDpSgd (training/dp_sgd.cc),
// including per-example gradients checked against one backward pass per
// example.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/weights.h"
#include "privacy/clipping.h"
#include "privacy/noise.h"
#include "privacy/rdp_accountant.h"
#include "training/dataset.h"
#include "training/dp_sgd_testing.h"
#include "training/model.h"

namespace flotilla {
namespace {

using privacy::AdaptiveClipper;
using privacy::GaussianNoise;
using privacy::SecureRng;
using training::Dataset;
using training::DataView;
using training::DpSgdConfig;
using training::DpSgdTestPeer;
using training::ModelRunner;
using training::TrainConfig;

constexpr double kInf = std::numeric_limits<double>::infinity();

GaussianNoise TestNoise(uint64_t seed) {
  auto noise = GaussianNoise::CreateForTesting(seed);
  INFO(noise.status().ToString());
  REQUIRE(noise.ok());
  return std::move(noise).value();
}

std::unique_ptr<ModelRunner> MakeRunner(const std::string& arch, uint64_t seed) {
  auto runner = ModelRunner::Create(arch, seed);
  INFO(runner.status().ToString());
  REQUIRE(runner.ok());
  return std::move(runner).value();
}

// A view of `n` synthetic examples.
DataView SyntheticView(int64_t n, uint64_t seed) {
  return DataView::All(std::make_shared<const Dataset>(training::MakeSynthetic(n, seed)));
}

std::shared_ptr<const Dataset> LoadOrFail(training::Split split, int64_t limit) {
  auto ds = training::LoadFashionMnist(training::kDefaultFashionMnistDir, split, limit);
  INFO(ds.status().ToString());
  REQUIRE(ds.ok());
  return std::make_shared<const Dataset>(std::move(ds).value());
}

// ||a - b|| / ||b|| over flat buffers, in double.
double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    diff += d * d;
    ref += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(ref), 1e-30);
}

bool AllFinite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

// Exact-as-possible norm for checking ClipL2 (long double accumulation).
double ReferenceNorm(const std::vector<float>& v) {
  long double sum = 0.0L;
  for (float x : v) sum += static_cast<long double>(x) * x;
  return static_cast<double>(std::sqrt(sum));
}

// ---- Noise ----

TEST_CASE("GaussianNoise has mean 0 and the requested standard deviation", "[privacy][noise]") {
  constexpr size_t kN = 1000000;
  for (const double sigma : {1.0, 0.37, 250.0}) {
    GaussianNoise noise = TestNoise(7);
    std::vector<double> samples(kN);
    noise.Fill(samples.data(), kN, sigma);
    double sum = 0.0, sum_sq = 0.0, sum_4 = 0.0, lag_product = 0.0;
    size_t beyond_2 = 0;
    for (size_t i = 0; i < kN; ++i) {
      const double z = samples[i] / sigma;
      sum += z;
      sum_sq += z * z;
      sum_4 += z * z * z * z;
      if (std::fabs(z) > 2.0) ++beyond_2;
      if (i > 0) lag_product += z * samples[i - 1] / sigma;
    }
    const double mean = sum / kN;
    const double sd = std::sqrt(sum_sq / kN - mean * mean);
    INFO("sigma " << sigma << " mean/sigma " << mean << " sd/sigma " << sd);
    CHECK(std::fabs(mean) < 5.0 / std::sqrt(static_cast<double>(kN)));  // 5 standard errors
    CHECK(std::fabs(sd - 1.0) < 0.005);
    CHECK(std::fabs(sum_4 / kN - 3.0) < 0.05);                     // kurtosis of a normal; SE ~ 0.0049
    CHECK(std::fabs(beyond_2 / double(kN) - 0.0455003) < 0.0015);  // P(|Z| > 2); SE ~ 0.0002
    CHECK(std::fabs(lag_product / kN) < 0.005);  // neighbours (incl. Box-Muller pairs) uncorrelated
  }
}

TEST_CASE("GaussianNoise AddNoise Fill and Sample draw the same stream", "[privacy][noise]") {
  // Odd lengths exercise the spare sample of each Box-Muller pair.
  GaussianNoise a = TestNoise(3), b = TestNoise(3), c = TestNoise(3);
  std::vector<double> filled(11);
  a.Fill(filled.data(), 5, 2.0);
  a.Fill(filled.data() + 5, 6, 2.0);
  std::vector<float> added(11, 1.5f);
  b.AddNoise(added.data(), 3, 2.0);
  b.AddNoise(added.data() + 3, 8, 2.0);
  for (size_t i = 0; i < filled.size(); ++i) {
    CHECK(added[i] == static_cast<float>(1.5 + filled[i]));
    CHECK(c.Sample(2.0) == filled[i]);
  }
}

TEST_CASE("GaussianNoise with zero or invalid stddev", "[privacy][noise]") {
  GaussianNoise noise = TestNoise(1);
  std::vector<float> data = {1.0f, -2.0f, 3.0f};
  noise.AddNoise(data.data(), data.size(), 0.0);
  CHECK(data == std::vector<float>{1.0f, -2.0f, 3.0f});
  for (const double bad : {-1.0, kInf, std::nan("")}) {
    std::vector<float> d = {1.0f, 2.0f};
    noise.AddNoise(d.data(), d.size(), bad);
    CHECK(std::isnan(d[0]));
    CHECK(std::isnan(d[1]));
    CHECK(std::isnan(noise.Sample(bad)));
  }
}

TEST_CASE("Created generators are unpredictable - test generators repeat by seed", "[privacy][noise]") {
  auto a = GaussianNoise::Create();
  auto b = GaussianNoise::Create();
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  std::vector<double> xa(64), xb(64);
  a->Fill(xa.data(), xa.size(), 1.0);
  b->Fill(xb.data(), xb.size(), 1.0);
  CHECK(xa != xb);

  GaussianNoise s1 = TestNoise(42), s2 = TestNoise(42), s3 = TestNoise(43);
  std::vector<double> y1(64), y2(64), y3(64);
  s1.Fill(y1.data(), y1.size(), 1.0);
  s2.Fill(y2.data(), y2.size(), 1.0);
  s3.Fill(y3.data(), y3.size(), 1.0);
  CHECK(y1 == y2);
  CHECK(y1 != y3);

  // Moving a generator moves its stream; it is not duplicated.
  GaussianNoise s4 = TestNoise(42);
  GaussianNoise moved = std::move(s4);
  std::vector<double> y4(64);
  moved.Fill(y4.data(), y4.size(), 1.0);
  CHECK(y4 == y1);
}

TEST_CASE("SecureRng uniforms and Bernoulli draws have the right frequencies", "[privacy][noise]") {
  auto rng = SecureRng::CreateForTesting(5);
  REQUIRE(rng.ok());
  constexpr int kN = 200000;
  double sum = 0.0;
  int hits = 0;
  for (int i = 0; i < kN; ++i) {
    const double u = rng->UniformDouble();
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    sum += u;
    if (rng->Bernoulli(0.1)) ++hits;
  }
  CHECK(std::fabs(sum / kN - 0.5) < 5 * std::sqrt(1.0 / 12 / kN));
  CHECK(std::fabs(hits / double(kN) - 0.1) < 5 * std::sqrt(0.09 / kN));
  CHECK_FALSE(rng->Bernoulli(0.0));
  CHECK(rng->Bernoulli(1.0));
}

// ---- Clipping ----

TEST_CASE("ClipL2 never exceeds the clip norm", "[privacy][clipping]") {
  Rng rng(11);
  const std::vector<double> scales = {1e-42, 1e-30, 1e-6, 1.0, 1e6, 1e30, 3e38};
  const std::vector<double> clips = {1e-30, 1e-3, 0.1, 1.0, 3.7, 1e4, 1e35};
  int clipped = 0, unchanged = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const size_t n = 1 + static_cast<size_t>(rng.UniformInt(trial % 10 == 0 ? 200000 : 2000));
    const double scale = scales[rng.UniformInt(scales.size())];
    const double clip = clips[rng.UniformInt(clips.size())] * (0.5 + rng.UniformDouble());
    std::vector<float> v(n);
    const double kFloatMax = std::numeric_limits<float>::max();
    for (float& x : v)
      x = static_cast<float>(std::max(-kFloatMax, std::min(kFloatMax, scale * rng.Normal())));
    const std::vector<float> original = v;
    const double before = ReferenceNorm(original);
    const double returned = privacy::ClipL2(v.data(), n, clip);
    const double after = ReferenceNorm(v);
    INFO("trial " << trial << " n " << n << " scale " << scale << " clip " << clip << " before " << before
                  << " after " << after);
    REQUIRE(after <= clip * (1.0 + 1e-9));
    REQUIRE(privacy::L2Norm(v.data(), n) <= clip * (1.0 + 1e-12));
    CHECK(std::fabs(returned - before) <= 1e-12 * before);
    if (before <= clip * (1.0 - 1e-9)) {
      REQUIRE(v == original);
      ++unchanged;
    } else if (before > clip * (1.0 + 1e-6) && clip / before > 1e-30) {
      ++clipped;
      // Direction kept and the bound nearly attained (unless floats underflow).
      double dot = 0.0;
      for (size_t i = 0; i < n; ++i) dot += static_cast<double>(v[i]) * original[i];
      if (after > 1e-30) CHECK(dot / (after * before) > 1.0 - 1e-5);
      if (clip > 1e-30) CHECK(after >= clip * (1.0 - 1e-5));
    }
  }
  CHECK(clipped > 200);
  CHECK(unchanged > 200);
}

TEST_CASE("ClipL2 on zero non-finite and extreme vectors", "[privacy][clipping]") {
  std::vector<float> zero(100, 0.0f);
  CHECK(privacy::ClipL2(zero.data(), zero.size(), 1.0) == 0.0);
  CHECK(zero == std::vector<float>(100, 0.0f));

  CHECK(privacy::ClipL2(nullptr, 0, 1.0) == 0.0);

  const float kMax = std::numeric_limits<float>::max();
  std::vector<float> huge(1000, kMax);
  const double huge_norm = privacy::ClipL2(huge.data(), huge.size(), 1.0);
  CHECK(huge_norm == Approx(static_cast<double>(kMax) * std::sqrt(1000.0)));
  CHECK(ReferenceNorm(huge) <= 1.0 + 1e-9);
  CHECK(ReferenceNorm(huge) >= 1.0 - 1e-6);

  std::vector<float> tiny(10, std::numeric_limits<float>::denorm_min());
  const std::vector<float> tiny_copy = tiny;
  privacy::ClipL2(tiny.data(), tiny.size(), 1.0);
  CHECK(tiny == tiny_copy);
  privacy::ClipL2(tiny.data(), tiny.size(), 1e-46);
  CHECK(ReferenceNorm(tiny) <= 1e-46 * (1.0 + 1e-9));

  std::vector<float> with_nan = {1.0f, std::nanf(""), 2.0f};
  CHECK(std::isnan(privacy::ClipL2(with_nan.data(), with_nan.size(), 1.0)));
  CHECK(with_nan == std::vector<float>(3, 0.0f));
  std::vector<float> with_inf = {1.0f, std::numeric_limits<float>::infinity()};
  CHECK(privacy::ClipL2(with_inf.data(), with_inf.size(), 1.0) == kInf);
  CHECK(with_inf == std::vector<float>(2, 0.0f));

  std::vector<float> any = {3.0f, 4.0f};
  CHECK(privacy::ClipL2(any.data(), any.size(), kInf) == 5.0);
  CHECK(any == std::vector<float>{3.0f, 4.0f});
  CHECK(privacy::ClipL2(any.data(), any.size(), 0.0) == 5.0);
  CHECK(any == std::vector<float>(2, 0.0f));
}

TEST_CASE("Adaptive clipping converges to the target quantile", "[privacy][clipping]") {
  // Update norms log-normal: median 2, so the 0.5-quantile is 2 and the
  // 0.9-quantile is 2 exp(1.2816 * 0.5).
  Rng rng(3);
  GaussianNoise noise = TestNoise(9);
  constexpr int kClients = 100;
  for (const double gamma : {0.5, 0.9}) {
    for (const double initial : {0.01, 100.0}) {
      auto clipper = AdaptiveClipper::Create(initial, gamma, 0.2, kClients / 20.0);
      REQUIRE(clipper.ok());
      std::vector<double> late_fractions;
      for (int round = 0; round < 400; ++round) {
        int64_t below = 0;
        for (int i = 0; i < kClients; ++i) {
          if (2.0 * std::exp(0.5 * rng.Normal()) <= clipper->clip_norm()) ++below;
        }
        if (round >= 300) late_fractions.push_back(static_cast<double>(below) / kClients);
        auto next = clipper->Update(below, kClients, noise);
        REQUIRE(next.ok());
        REQUIRE(std::isfinite(*next));
        REQUIRE(*next > 0.0);
      }
      const double mean_fraction =
          std::accumulate(late_fractions.begin(), late_fractions.end(), 0.0) / late_fractions.size();
      const double true_quantile = 2.0 * std::exp(0.5 * (gamma == 0.5 ? 0.0 : 1.2815516));
      INFO("gamma " << gamma << " initial " << initial << " final C " << clipper->clip_norm()
                    << " true quantile " << true_quantile << " mean fraction below " << mean_fraction);
      CHECK(std::fabs(mean_fraction - gamma) < 0.05);
      CHECK(std::fabs(std::log(clipper->clip_norm() / true_quantile)) < 0.35);
    }
  }
}

TEST_CASE("AdaptiveClipper rejects bad input", "[privacy][clipping]") {
  CHECK_FALSE(AdaptiveClipper::Create(0.0, 0.5, 0.2, 1.0).ok());
  CHECK_FALSE(AdaptiveClipper::Create(1.0, 1.5, 0.2, 1.0).ok());
  CHECK_FALSE(AdaptiveClipper::Create(1.0, 0.5, -0.2, 1.0).ok());
  CHECK_FALSE(AdaptiveClipper::Create(1.0, 0.5, 0.2, std::nan("")).ok());
  auto clipper = AdaptiveClipper::Create(1.0, 0.5, 0.2, 0.0);
  REQUIRE(clipper.ok());
  GaussianNoise noise = TestNoise(1);
  CHECK(clipper->Update(11, 10, noise).status().code() == StatusCode::kInvalidArgument);
  CHECK(clipper->Update(-1, 10, noise).status().code() == StatusCode::kInvalidArgument);
  CHECK(clipper->Update(0, 0, noise).status().code() == StatusCode::kInvalidArgument);
  CHECK(clipper->clip_norm() == 1.0);
  // Without count noise the update is the paper's formula exactly.
  auto next = clipper->Update(8, 10, noise);
  REQUIRE(next.ok());
  CHECK(*next == Approx(std::exp(-0.2 * (0.8 - 0.5))).epsilon(1e-15));
}

TEST_CASE("Adaptive clipping noise multiplier correction", "[privacy][clipping]") {
  auto z_delta = privacy::AdaptiveClippingNoiseMultiplier(1.0, 5.0);
  REQUIRE(z_delta.ok());
  CHECK(*z_delta == Approx(1.0 / std::sqrt(1.0 - 1.0 / 100.0)).epsilon(1e-14));
  // Composing back: (z_delta^-2 + (2 sigma_b)^-2)^-1/2 == z.
  auto z2 = privacy::AdaptiveClippingNoiseMultiplier(0.8, 3.0);
  REQUIRE(z2.ok());
  CHECK(1.0 / std::sqrt(1.0 / (*z2 * *z2) + 1.0 / 36.0) == Approx(0.8).epsilon(1e-14));
  CHECK(privacy::AdaptiveClippingNoiseMultiplier(1.0, 0.5).status().code() == StatusCode::kOutOfRange);
  CHECK(privacy::AdaptiveClippingNoiseMultiplier(1.0, 0.0).status().code() == StatusCode::kOutOfRange);
  CHECK(privacy::AdaptiveClippingNoiseMultiplier(0.0, 1.0).status().code() == StatusCode::kInvalidArgument);
  CHECK(privacy::AdaptiveClippingNoiseMultiplier(1.0, -1.0).status().code() == StatusCode::kInvalidArgument);
}

// ---- DP-SGD ----

TEST_CASE("Vectorized per-example gradients match one backward pass per example", "[training][dpsgd]") {
  training::SetTorchThreads(1);
  const DataView batch = SyntheticView(12, 5);
  for (const std::string arch : {"2nn", "cnn", "logreg"}) {
    INFO(arch);
    auto runner = MakeRunner(arch, 2);
    const std::vector<float> weights_before = runner->GetWeights().data;
    auto fast = DpSgdTestPeer::PerExampleGradients(*runner, batch);
    auto slow = DpSgdTestPeer::PerExampleGradientsReference(*runner, batch);
    auto norms = DpSgdTestPeer::PerExampleNorms(*runner, batch);
    INFO(fast.status().ToString() << " " << slow.status().ToString() << " " << norms.status().ToString());
    REQUIRE(fast.ok());
    REQUIRE(slow.ok());
    REQUIRE(norms.ok());
    REQUIRE(fast->size() == 12);
    REQUIRE(slow->size() == 12);
    REQUIRE(norms->size() == 12);
    std::vector<double> slow_norms;
    for (size_t i = 0; i < 12; ++i) {
      INFO("example " << i);
      REQUIRE(*(*fast)[i].layout == *runner->layout());
      const double slow_norm = (*slow)[i].L2Norm();
      REQUIRE(slow_norm > 0.0);
      slow_norms.push_back(slow_norm);
      CHECK(RelativeError((*fast)[i].data, (*slow)[i].data) < 1e-5);
      CHECK(std::fabs((*norms)[i] - slow_norm) <= 1e-5 * slow_norm);
    }
    // Examples differ, so this is not one gradient repeated.
    CHECK(RelativeError((*fast)[0].data, (*fast)[1].data) > 1e-2);

    // The clipped sum with a clip at the median norm (about half clipped).
    std::vector<double> sorted = slow_norms;
    std::sort(sorted.begin(), sorted.end());
    const double clip = sorted[6];
    std::vector<double> expected(static_cast<size_t>(runner->layout()->total_numel()), 0.0);
    for (size_t i = 0; i < 12; ++i) {
      const double factor = std::min(1.0, clip / slow_norms[i]);
      for (size_t k = 0; k < expected.size(); ++k) expected[k] += factor * (*slow)[i].data[k];
    }
    auto clipped = DpSgdTestPeer::ClippedGradientSum(*runner, batch, clip);
    REQUIRE(clipped.ok());
    CHECK(RelativeError(clipped->data, std::vector<float>(expected.begin(), expected.end())) < 1e-5);
    CHECK(runner->GetWeights().data == weights_before);
  }
}

TEST_CASE("DP-SGD without noise or clipping is full-batch SGD", "[training][dpsgd]") {
  training::SetTorchThreads(1);
  const DataView data = SyntheticView(40, 8);
  for (const std::string arch : {"2nn", "cnn", "logreg"}) {
    for (const bool poisson : {false, true}) {
      INFO(arch << (poisson ? " poisson q=1" : " fixed batch"));
      TrainConfig config;
      config.epochs = 2;
      config.batch_size = 40;
      config.learning_rate = 0.1;
      config.momentum = 0.9;
      config.weight_decay = 1e-3;
      config.seed = 4;
      auto plain = MakeRunner(arch, 3);
      auto dp = MakeRunner(arch, 3);
      REQUIRE(plain->Train(data, config).ok());
      DpSgdConfig dp_config;
      dp_config.noise_multiplier = 0.0;
      dp_config.l2_clip = 1e30;
      dp_config.poisson_sampling = poisson;
      dp_config.sampling_rate = 1.0;
      auto result = dp->TrainDpSgd(data, config, dp_config);
      INFO(result.status().ToString());
      REQUIRE(result.ok());
      CHECK(result->steps == 2);
      CHECK(result->examples == 40);
      CHECK(std::isfinite(result->mean_loss));
      const std::vector<float> start = MakeRunner(arch, 3)->GetWeights().data;
      const std::vector<float> a = plain->GetWeights().data;
      const std::vector<float> b = dp->GetWeights().data;
      std::vector<float> delta_a(a.size()), delta_b(b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        delta_a[i] = a[i] - start[i];
        delta_b[i] = b[i] - start[i];
      }
      CHECK(RelativeError(delta_b, delta_a) < 1e-4);  // the step, not just the weights, agrees
    }
  }
}

TEST_CASE("DP-SGD with noise changes the weights stays finite and is not reproducible", "[training][dpsgd]") {
  training::SetTorchThreads(1);
  const DataView data = SyntheticView(100, 2);
  TrainConfig config;
  config.learning_rate = 0.05;
  config.seed = 1;
  DpSgdConfig dp;
  dp.noise_multiplier = 1.0;
  dp.l2_clip = 1.0;
  dp.sampling_rate = 0.1;
  dp.steps = 5;
  auto a = MakeRunner("2nn", 1);
  auto b = MakeRunner("2nn", 1);
  const std::vector<float> start = a->GetWeights().data;
  auto ra = a->TrainDpSgd(data, config, dp);
  auto rb = b->TrainDpSgd(data, config, dp);
  REQUIRE(ra.ok());
  REQUIRE(rb.ok());
  CHECK(ra->steps == 5);
  const Weights wa = a->GetWeights();
  CHECK(wa.Validate().ok());
  CHECK(AllFinite(wa.data));
  CHECK(wa.data != start);
  CHECK(wa.data != b->GetWeights().data);

  // With sigma C large against the clipped sum (at most q N C = 10 here,
  // against a noise norm of about 2 sqrt(7850) = 177), the step is almost
  // pure noise: per coordinate lr * sigma * C / (q N) * N(0, 1).
  auto c = MakeRunner("logreg", 1);
  const std::vector<float> c_start = c->GetWeights().data;
  DpSgdConfig noisy;
  noisy.noise_multiplier = 2.0;
  noisy.l2_clip = 1.0;
  noisy.sampling_rate = 0.1;
  noisy.steps = 1;
  REQUIRE(c->TrainDpSgd(data, config, noisy).ok());
  const std::vector<float> c_end = c->GetWeights().data;
  double sum_sq = 0.0;
  for (size_t i = 0; i < c_end.size(); ++i) sum_sq += std::pow(double(c_end[i]) - c_start[i], 2);
  const double expected_sd = config.learning_rate * 2.0 * 1.0 / (0.1 * 100);
  CHECK(std::sqrt(sum_sq / c_end.size()) == Approx(expected_sd).epsilon(0.05));
}

TEST_CASE("TrainDpSgd rejects bad configuration and keeps the model", "[training][dpsgd]") {
  const DataView data = SyntheticView(20, 1);
  auto runner = MakeRunner("logreg", 1);
  const std::vector<float> start = runner->GetWeights().data;
  TrainConfig config;
  auto bad = [&](DpSgdConfig dp) {
    auto result = runner->TrainDpSgd(data, config, dp);
    return !result.ok() && result.status().code() == StatusCode::kInvalidArgument;
  };
  DpSgdConfig dp;
  dp.noise_multiplier = -1.0;
  CHECK(bad(dp));
  dp = DpSgdConfig();
  dp.l2_clip = 0.0;
  CHECK(bad(dp));
  dp = DpSgdConfig();
  dp.l2_clip = kInf;
  CHECK(bad(dp));
  dp = DpSgdConfig();
  dp.sampling_rate = 1.5;
  CHECK(bad(dp));
  dp = DpSgdConfig();
  dp.steps = -1;
  CHECK(bad(dp));
  dp = DpSgdConfig();
  dp.sampling_rate = 1e-12;  // ceil(1 / 1e-12) steps
  CHECK(bad(dp));
  config.learning_rate = 0.0;
  CHECK(bad(DpSgdConfig()));
  config = TrainConfig();
  CHECK_FALSE(runner->TrainDpSgd(DataView{data.base, {}}, config, DpSgdConfig()).ok());
  CHECK(runner->GetWeights().data == start);

  // A diverging run fails and leaves the model as it was.
  config.learning_rate = 1e30;
  DpSgdConfig loud;
  loud.noise_multiplier = 1.0;
  loud.l2_clip = 1e10;
  loud.sampling_rate = 0.5;
  loud.steps = 20;
  auto result = runner->TrainDpSgd(data, config, loud);
  REQUIRE_FALSE(result.ok());
  CHECK(result.status().code() == StatusCode::kInvalidArgument);
  CHECK(runner->GetWeights().data == start);
}

TEST_CASE("DP-SGD learns Fashion-MNIST with the 2nn", "[training][dpsgd][slow]") {
  training::SetTorchThreads(1);
  auto train = LoadOrFail(training::Split::kTrain, 5000);
  auto test = LoadOrFail(training::Split::kTest, 1000);
  auto runner = MakeRunner("2nn", 1);
  TrainConfig config;
  config.epochs = 5;
  config.learning_rate = 0.5;
  config.momentum = 0.5;
  DpSgdConfig dp;
  dp.noise_multiplier = 0.8;
  dp.l2_clip = 1.0;
  dp.sampling_rate = 0.02;  // expected batch 100
  auto result = runner->TrainDpSgd(DataView::All(train), config, dp);
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  CHECK(result->steps == 250);
  auto eval = runner->Evaluate(DataView::All(test));
  REQUIRE(eval.ok());
  privacy::RdpAccountant accountant;
  REQUIRE(accountant.Compose(dp.sampling_rate, dp.noise_multiplier, result->steps).ok());
  auto spent = accountant.GetPrivacySpent(1e-5);
  REQUIRE(spent.ok());
  INFO("accuracy " << eval->accuracy << ", epsilon " << spent->epsilon << " at delta 1e-5, "
                   << result->seconds << " s");
  CHECK(eval->accuracy > 0.6);
  CHECK(spent->epsilon < 10.0);
}

}  // namespace
}  // namespace flotilla
