#include "privacy/quantization.h"

#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>

#include "privacy/keys.h"
#include "privacy/noise.h"

namespace flotilla::privacy {
namespace {

// 2^k - 1: the words of Z_{2^k}.
uint32_t LowMask(uint32_t bit_width) {
  return bit_width >= 32 ? 0xffffffffu : ((uint32_t{1} << bit_width) - 1);
}

std::string Str(uint64_t v) { return std::to_string(v); }

// Headroom in quantized units per unit of scale: 10 standard deviations of
// the sum of n clients' noise, 10 * sqrt(n) * sigma. One expression for the
// check and for MaxSafeScale, so they cannot disagree by a rounding.
double HeadroomPerScale(uint32_t num_clients, double noise_stddev) {
  return 10.0 * std::sqrt(static_cast<double>(num_clients)) * noise_stddev;
}

// n * QuantizedMax + 2 * NoiseHeadroom, exactly (at most 2^32 * 2^64 + 2^65).
unsigned __int128 QuantizedSpan(const QuantizationConfig& c) {
  return static_cast<unsigned __int128>(QuantizedMax(c)) * c.num_clients +
         2 * static_cast<unsigned __int128>(NoiseHeadroom(c));
}

// The parameter checks of CheckQuantization without the message, so that
// MaxSafeScale can probe candidates (CheckQuantization calls MaxSafeScale).
bool ParametersValid(const QuantizationConfig& c) {
  return std::isfinite(c.clip_norm) && c.clip_norm > 0 && std::isfinite(c.scale) && c.scale > 0 &&
         std::isfinite(c.noise_stddev) && c.noise_stddev >= 0 && c.bit_width >= 1 && c.bit_width <= 32 &&
         c.num_clients >= 1;
}

bool Fits(const QuantizationConfig& c) {
  return ParametersValid(c) && QuantizedSpan(c) <= (uint64_t{1} << c.bit_width) - 1;
}

}  // namespace

uint64_t QuantizedMax(const QuantizationConfig& c) {
  const double top = std::ceil(2.0 * c.clip_norm * c.scale);
  if (!(top >= 0)) return 0;
  if (top >= 18446744073709551615.0) return UINT64_MAX;
  return static_cast<uint64_t>(top);
}

uint64_t NoiseHeadroom(const QuantizationConfig& c) {
  if (c.noise_stddev == 0) return 0;
  const double h = std::ceil(HeadroomPerScale(c.num_clients, c.noise_stddev) * c.scale);
  if (!(h >= 0)) return 0;  // NaN or negative: rejected by CheckQuantization anyway
  if (h >= 18446744073709551615.0) return UINT64_MAX;
  return static_cast<uint64_t>(h);
}

double MaxSafeScale(double clip_norm, uint32_t bit_width, uint32_t num_clients, double noise_stddev) {
  if (!(clip_norm > 0) || !std::isfinite(clip_norm) || bit_width < 1 || bit_width > 32 || num_clients < 1)
    return 0;
  if (!(noise_stddev >= 0) || !std::isfinite(noise_stddev)) return 0;
  const uint64_t limit = (uint64_t{1} << bit_width) - 1;
  double scale = 0;
  if (noise_stddev == 0) {
    // ceil(2 C s) <= per_client  <=>  2 C s <= per_client.
    const uint64_t per_client = limit / num_clients;
    scale = static_cast<double>(per_client) / (2.0 * clip_norm);
  } else {
    // A scale s fits iff there are integers P >= ceil(2 C s) and
    // G >= ceil(a s), a = HeadroomPerScale, with n P + 2 G <= limit, i.e.
    // s <= P / (2 C) and s <= G / a. For a given P the best G is
    // floor((limit - n P) / 2), so the answer is the maximum over P of
    // min(P / (2 C), floor((limit - n P) / 2) / a): the first term rises with
    // P and the second falls, so the maximum is next to where they cross,
    // P = C * limit / (a + n C) without the floor (the floor moves the
    // crossing down by less than one). Try the integers around it.
    const double a = HeadroomPerScale(num_clients, noise_stddev);
    const double n = static_cast<double>(num_clients);
    const double cross = std::floor(clip_norm * static_cast<double>(limit) / (a + n * clip_norm));
    const uint64_t max_p = limit / num_clients;
    for (double p = cross - 2; p <= cross + 2; ++p) {
      if (p < 0 || p > static_cast<double>(max_p)) continue;
      const double g = std::floor((static_cast<double>(limit) - n * p) / 2);
      scale = std::max(scale, std::min(p / (2.0 * clip_norm), g / a));
    }
  }
  // Guard against rounding up (in the ceilings above or in the arithmetic):
  // step down until the full check, noise headroom included, passes.
  QuantizationConfig probe{clip_norm, bit_width, num_clients, scale, noise_stddev};
  while (scale > 0 && !Fits(probe)) {
    scale = std::nextafter(scale, 0.0);
    probe.scale = scale;
  }
  return scale;
}

Status CheckQuantization(const QuantizationConfig& c) {
  if (!std::isfinite(c.clip_norm) || c.clip_norm <= 0) {
    return InvalidArgument("quantization clip_norm must be finite and positive, got " +
                           std::to_string(c.clip_norm));
  }
  if (!std::isfinite(c.scale) || c.scale <= 0) {
    return InvalidArgument("quantization scale must be finite and positive, got " + std::to_string(c.scale));
  }
  if (!std::isfinite(c.noise_stddev) || c.noise_stddev < 0) {
    return InvalidArgument("quantization noise_stddev must be finite and >= 0, got " +
                           std::to_string(c.noise_stddev));
  }
  if (c.bit_width < 1 || c.bit_width > 32)
    return InvalidArgument("quantization bit_width must be 1..32, got " + Str(c.bit_width));
  if (c.num_clients < 1) return InvalidArgument("quantization num_clients must be at least 1");
  const uint64_t limit = (uint64_t{1} << c.bit_width) - 1;
  const uint64_t per_client = QuantizedMax(c);
  const uint64_t headroom = NoiseHeadroom(c);
  const unsigned __int128 total = QuantizedSpan(c);
  if (per_client > limit || total > limit) {
    const std::string noise_term =
        headroom == 0 ? std::string()
                      : " + 2 x noise headroom " + Str(headroom) + " (= ceil(10 x sqrt(" +
                            Str(c.num_clients) + " clients) x noise_stddev " +
                            std::to_string(c.noise_stddev) + " x scale " + std::to_string(c.scale) + "))";
    return InvalidArgument(
        "quantized sum can overflow: " + Str(c.num_clients) + " clients x per-client maximum " +
        Str(per_client) + " (= ceil(2 x clip_norm " + std::to_string(c.clip_norm) + " x scale " +
        std::to_string(c.scale) + "))" + noise_term + " = " +
        (total > UINT64_MAX ? std::string("more than 2^64") : Str(static_cast<uint64_t>(total))) + " > 2^" +
        Str(c.bit_width) + " - 1 = " + Str(limit) + "; use scale <= " +
        std::to_string(MaxSafeScale(c.clip_norm, c.bit_width, c.num_clients, c.noise_stddev)) +
        (headroom == 0 ? ", a smaller clip_norm or more bits"
                       : ", a smaller clip_norm, less noise or more bits"));
  }
  return Status::Ok();
}

StatusOr<std::vector<uint32_t>> Quantize(const std::vector<float>& values, const QuantizationConfig& c) {
  RETURN_IF_ERROR(EnsureSodium());
  RETURN_IF_ERROR(CheckQuantization(c));
  double norm2 = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i]))
      return InvalidArgument("cannot quantize non-finite value at index " + Str(i));
    norm2 += static_cast<double>(values[i]) * values[i];
  }
  const double norm = std::sqrt(norm2);
  const double factor = norm > c.clip_norm ? c.clip_norm / norm : 1.0;
  const double top = 2.0 * c.clip_norm * c.scale;
  const uint64_t max_q = QuantizedMax(c);
  const bool noisy = c.noise_stddev > 0;
  const double noise_stddev_q = c.noise_stddev * c.scale;  // in quantized units
  const uint64_t word_mask = LowMask(c.bit_width);

  // Uniform 32-bit words for the rounding decisions: ChaCha20 keyed from the
  // CSPRNG, expanded in blocks.
  SecretBytes key(crypto_stream_chacha20_KEYBYTES);
  randombytes_buf(key.data(), key.size());
  const unsigned char nonce[crypto_stream_chacha20_NONCEBYTES] = {'f', 's', 'a', '-', 'q', 'n', 't', 'z'};
  constexpr size_t kBlockWords = 4096;
  std::vector<uint32_t> random(std::min(values.size(), kBlockWords));
  // DP noise, drawn per block from a fresh CSPRNG-keyed generator. Only made
  // when needed, so the noise-free path is unchanged (and draws nothing).
  std::optional<GaussianNoise> gaussian;
  std::vector<double> noise;
  if (noisy) {
    ASSIGN_OR_RETURN(GaussianNoise g, GaussianNoise::Create());
    gaussian.emplace(std::move(g));
    noise.resize(random.size());
  }
  std::vector<uint32_t> out(values.size());
  Status status = Status::Ok();
  for (size_t start = 0; start < values.size() && status.ok(); start += kBlockWords) {
    const size_t count = std::min(kBlockWords, values.size() - start);
    // Block counter continues across blocks (64 bytes per ChaCha20 block).
    std::fill(random.begin(), random.begin() + count, 0u);
    crypto_stream_chacha20_xor_ic(reinterpret_cast<unsigned char*>(random.data()),
                                  reinterpret_cast<const unsigned char*>(random.data()), count * 4, nonce,
                                  start * 4 / 64, key.data());
    if (!noisy) {
      for (size_t j = 0; j < count; ++j) {
        double v = (static_cast<double>(values[start + j]) * factor + c.clip_norm) * c.scale;
        v = std::min(std::max(v, 0.0), top);
        const double floor_v = std::floor(v);
        const double frac = v - floor_v;
        uint64_t q = static_cast<uint64_t>(floor_v);
        if (static_cast<double>(random[j]) < frac * 4294967296.0) ++q;
        out[start + j] = static_cast<uint32_t>(std::min(q, max_q));
      }
      continue;
    }
    gaussian->Fill(noise.data(), count, noise_stddev_q);
    for (size_t j = 0; j < count; ++j) {
      // No clamping: clamping the noisy value would bias the sum and cut
      // the noise's tails, i.e. weaken the privacy the noise is there for.
      // The sum and the noise are formed in double and rounded once.
      const double v = (static_cast<double>(values[start + j]) * factor + c.clip_norm) * c.scale + noise[j];
      // |v| <= 2 C scale + 8.6 sigma scale < 2^33 by the check (GaussianNoise
      // truncates at 8.6 standard deviations), so the int64 below is exact;
      // a non-finite v could only come from a broken noise source.
      if (!std::isfinite(v) || std::fabs(v) > 9.0e15) {
        status = Internal("quantization noise produced a non-finite or out-of-range value at index " +
                          Str(start + j));
        break;
      }
      const double floor_v = std::floor(v);
      const double frac = v - floor_v;
      int64_t q = static_cast<int64_t>(floor_v);
      if (static_cast<double>(random[j]) < frac * 4294967296.0) ++q;
      // q mod 2^k: 2^k divides 2^64, so the two's complement bits of q
      // reduced to k bits are q mod 2^k also for negative q.
      out[start + j] = static_cast<uint32_t>(static_cast<uint64_t>(q) & word_mask);
    }
  }
  sodium_memzero(random.data(), random.size() * sizeof(uint32_t));
  if (!noise.empty()) sodium_memzero(noise.data(), noise.size() * sizeof(double));
  if (!status.ok()) {
    sodium_memzero(out.data(), out.size() * sizeof(uint32_t));
    return status;
  }
  return out;
}

StatusOr<std::vector<float>> Dequantize(const std::vector<uint32_t>& sum, uint32_t num_summands,
                                        const QuantizationConfig& c) {
  RETURN_IF_ERROR(CheckQuantization(c));
  if (num_summands < 1 || num_summands > c.num_clients) {
    return InvalidArgument("Dequantize: num_summands must be 1.." + Str(c.num_clients) + ", got " +
                           Str(num_summands));
  }
  // Centred decoding. The sum of m clients' words is m C scale (the shift)
  // plus scale times the sum of their clipped values plus the noise, mod
  // 2^k. Subtracting the shift leaves a value in [-m C scale - H,
  // m C scale + H] (H = NoiseHeadroom, exceeded with probability ~1e-23),
  // an interval of width at most n QuantizedMax + 2 H <= 2^k - 1 by the
  // check, so the representative of d mod 2^k in [-2^(k-1), 2^(k-1)) is d
  // itself: negative sums and words that wrapped below 0 decode correctly.
  // Without noise this is sum / scale - m C up to rounding; it could only
  // differ when a coordinate's sum is within m/2 units of its worst case
  // m * QuantizedMax and ceil(2 C scale) is well above 2 C scale (not at
  // MaxSafeScale), which needs every client to sit at +C and round up.
  const uint32_t word_mask = LowMask(c.bit_width);
  const double modulus = static_cast<double>(uint64_t{1} << c.bit_width);
  const double half = modulus / 2;
  const double shift = static_cast<double>(num_summands) * c.clip_norm * c.scale;
  std::vector<float> out(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) {
    // Words are in Z_{2^k}; reading them mod 2^k also accepts a sum formed
    // with plain uint32 additions (which is right mod 2^k as 2^k | 2^32).
    double d = static_cast<double>(sum[i] & word_mask) - shift;
    // d is in (-2^k, 2^k) since both terms are in [0, 2^k): one step suffices.
    if (d >= half) {
      d -= modulus;
    } else if (d < -half) {
      d += modulus;
    }
    out[i] = static_cast<float>(d / c.scale);
  }
  return out;
}

}  // namespace flotilla::privacy
