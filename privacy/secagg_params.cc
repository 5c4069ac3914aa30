#include "privacy/secagg_params.h"

#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/rng.h"
#include "privacy/keys.h"
#include "privacy/secagg_codec.h"

namespace flotilla::privacy {
namespace {

using secagg_internal::ByteReader;
using secagg_internal::ByteWriter;
using secagg_internal::kTagParams;
using secagg_internal::ParseMessage;
using secagg_internal::Str;

constexpr size_t kParamsBytes = 44;

}  // namespace

uint32_t SecAggParams::EffectiveDegree() const {
  return graph == SecAggGraph::kComplete ? (num_clients > 0 ? num_clients - 1 : 0) : degree;
}

std::string SecAggParams::Serialize() const {
  ByteWriter w;
  w.Header(kTagParams);
  w.U32(num_clients);
  w.U32(threshold);
  w.U8(static_cast<uint8_t>(bit_width));
  w.U8(static_cast<uint8_t>(graph));
  w.U32(degree);
  w.U64(graph_seed);
  w.U32(vector_length);
  w.U32(round);
  for (int i = 0; i < 12; ++i) w.U8(0);
  return w.Take();
}

StatusOr<SecAggParams> SecAggParams::Parse(std::string_view bytes) {
  constexpr const char* kWhat = "SecAggParams";
  if (bytes.size() != kParamsBytes) {
    return InvalidArgument(std::string(kWhat) + ": " + Str(bytes.size()) + " bytes, expected " +
                           Str(kParamsBytes));
  }
  return ParseMessage<SecAggParams>(bytes, kTagParams, kWhat, [](ByteReader* r, SecAggParams* p) -> Status {
    uint8_t k = 0, graph_type = 0;
    if (!r->U32(&p->num_clients) || !r->U32(&p->threshold) || !r->U8(&k) || !r->U8(&graph_type) ||
        !r->U32(&p->degree) || !r->U64(&p->graph_seed) || !r->U32(&p->vector_length) || !r->U32(&p->round)) {
      return r->Truncated();
    }
    for (int i = 0; i < 12; ++i) {
      uint8_t zero = 0;
      if (!r->U8(&zero) || zero != 0) {
        return InvalidArgument(std::string(kWhat) + ": reserved bytes are not zero");
      }
    }
    if (graph_type > static_cast<uint8_t>(SecAggGraph::kHarary)) {
      return InvalidArgument(std::string(kWhat) + ": unknown graph type " + Str(graph_type));
    }
    p->bit_width = k;
    p->graph = static_cast<SecAggGraph>(graph_type);
    return ValidateSecAggParams(*p);
  });
}

Status ValidateSecAggParams(const SecAggParams& p) {
  if (p.num_clients < 2 || p.num_clients > kSecAggMaxClients) {
    return InvalidArgument("SecAgg needs 2.." + Str(kSecAggMaxClients) + " clients, got " +
                           Str(p.num_clients));
  }
  if (p.bit_width < 1 || p.bit_width > 32)
    return InvalidArgument("SecAgg bit_width must be 1..32, got " + Str(p.bit_width));
  if (p.vector_length < 1 || p.vector_length > kSecAggMaxVectorLength) {
    return InvalidArgument("SecAgg vector_length must be 1.." + Str(kSecAggMaxVectorLength) + ", got " +
                           Str(p.vector_length));
  }
  if (p.graph == SecAggGraph::kHarary) {
    if (p.degree < 2 || p.degree > p.num_clients - 1 || p.degree % 2 != 0) {
      return InvalidArgument("SecAgg+ degree must be even and in 2.." + Str(p.num_clients - 1) + " for " +
                             Str(p.num_clients) + " clients, got " + Str(p.degree));
    }
  } else if (p.graph != SecAggGraph::kComplete) {
    return InvalidArgument("unknown SecAgg graph type");
  }
  const uint32_t group = p.EffectiveDegree() + 1;  // neighbours and the client itself hold shares
  if (p.threshold > group || 2 * static_cast<uint64_t>(p.threshold) <= group) {
    return InvalidArgument("SecAgg threshold must be a strict majority of the " + Str(group) +
                           " share holders per client (" + Str(group / 2 + 1) + ".." + Str(group) +
                           "), got " + Str(p.threshold));
  }
  return Status::Ok();
}

SecAggDigest SecAggSessionDigest(const SecAggParams& params) {
  (void)EnsureSodium();
  const std::string bytes = params.Serialize();
  SecAggDigest digest;
  crypto_generichash(digest.data(), digest.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                     bytes.size(), nullptr, 0);
  return digest;
}

uint32_t RecommendedHararyDegree(uint32_t num_clients) {
  if (num_clients < 3) return 2;
  uint32_t d = static_cast<uint32_t>(std::ceil(10.0 * std::log2(static_cast<double>(num_clients))));
  if (d % 2 != 0) ++d;
  uint32_t cap = num_clients - 1;
  if (cap % 2 != 0) --cap;
  return std::max<uint32_t>(2, std::min(d, cap));
}

uint32_t RecommendedThreshold(uint32_t degree) { return (degree + 1) / 2 + 1; }

StatusOr<NeighbourGraph> NeighbourGraph::Build(const SecAggParams& params) {
  RETURN_IF_ERROR(ValidateSecAggParams(params));
  NeighbourGraph g;
  g.n_ = params.num_clients;
  g.complete_ = params.graph == SecAggGraph::kComplete || params.degree >= params.num_clients - 1;
  if (!g.complete_) {
    g.half_ = params.degree / 2;
    g.ring_.resize(g.n_);
    for (uint32_t i = 0; i < g.n_; ++i) g.ring_[i] = i;
    Rng rng(DeriveSeed(params.graph_seed, "secagg-harary", params.num_clients, params.degree));
    rng.Shuffle(&g.ring_);
    g.position_.resize(g.n_);
    for (uint32_t i = 0; i < g.n_; ++i) g.position_[g.ring_[i]] = i;
  }
  return g;
}

bool NeighbourGraph::AreNeighbours(uint32_t u, uint32_t v) const {
  if (u >= n_ || v >= n_ || u == v) return false;
  if (complete_) return true;
  const uint32_t a = position_[u], b = position_[v];
  const uint32_t diff = a > b ? a - b : b - a;
  const uint32_t ring_distance = std::min(diff, n_ - diff);
  return ring_distance <= half_;
}

std::vector<uint32_t> NeighbourGraph::Neighbours(uint32_t u) const {
  std::vector<uint32_t> out;
  if (complete_) {
    out.reserve(n_ - 1);
    for (uint32_t v = 0; v < n_; ++v) {
      if (v != u) out.push_back(v);
    }
    return out;
  }
  out.reserve(2 * half_);
  const uint32_t pos = position_[u];
  for (uint32_t j = 1; j <= half_; ++j) {
    out.push_back(ring_[(pos + j) % n_]);
    out.push_back(ring_[(pos + n_ - j) % n_]);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());  // only when 2 * half_ == n_ - 1 wraps
  return out;
}

}  // namespace flotilla::privacy
