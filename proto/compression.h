// Smaller updates for thin links: a device's delta encoded as 8-bit
// integers with stochastic rounding, or as its top-k elements with error
// feedback. Decoding is WeightsFromProto's (proto/codec.h), so the
// aggregator validates, stores and merges compressed updates like any other.
//
// int8: per tensor, scale = max|x| / 127 and q = floor(x / scale + u) with u
// uniform in [0, 1), so E[q * scale] = x (unbiased) and |q * scale - x| <
// scale. 4x fewer bytes.
// top-k (Aji and Heafield 2017; error feedback as in Stich et al. 2018,
// "Sparsified SGD with Memory"): the device adds the residual it kept from
// earlier rounds, sends the k = ceil(F x n) largest elements by magnitude
// and keeps the rest as the next residual, so nothing is dropped, only
// delayed. 8 bytes per kept element.
//
// Thread-safety: the functions are pure but for the residual they update.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/status.h"
#include "core/weights.h"
#include "proto/flotilla.pb.h"

namespace flotilla::proto {

struct Compression {
  enum class Kind { kNone, kInt8, kTopK } kind = Kind::kNone;
  double fraction = 0.0;  // top-k: the share of elements sent, in (0, 1]
};

// "none" (or ""), "int8", "topk:F" with F in (0, 1]; InvalidArgument saying
// what is allowed.
StatusOr<Compression> ParseCompression(const std::string& name);
std::string CompressionName(const Compression& c);

// Encodes `delta` into `out`. `rng` draws the int8 rounding; `residual`
// (top-k only; sized to the delta, zeros at first) is added before and
// updated after. Non-finite values are an error.
Status EncodeUpdate(const Weights& delta, const Compression& c, Rng* rng, std::vector<float>* residual,
                    wire::WeightsProto* out);

}  // namespace flotilla::proto
