// SecAgg round parameters (SecAggParams, their wire form and validation), the
// session digest, and the neighbour graph (complete, or Harary for SecAgg+).
// Thread-safety: values and free functions; NeighbourGraph is immutable after Build, safe to share.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace flotilla::privacy {

// Largest number of clients and vector length accepted anywhere (also bounds
// every parse).
inline constexpr uint32_t kSecAggMaxClients = 1u << 20;
inline constexpr uint32_t kSecAggMaxVectorLength = 1u << 28;
inline constexpr size_t kSecAggSeedBytes = 32;

using SecAggPublicKey = std::array<unsigned char, 32>;
using SecAggDigest = std::array<unsigned char, 32>;

enum class SecAggGraph : uint8_t {
  kComplete = 0,  // every client is every other's neighbour (SecAgg)
  kHarary = 1,    // random Harary graph H(n, d) (SecAgg+)
};

// Public parameters of one SecAgg round; the server sends them with the task
// and every party must use identical values (they are bound into the session
// digest).
struct SecAggParams {
  uint32_t num_clients = 0;  // n >= 2; clients are indexed 0..n-1
  uint32_t threshold = 0;    // t: shares needed to reconstruct a secret
  uint32_t bit_width = 32;   // k in 1..32: inputs and the sum are in Z_{2^k}
  SecAggGraph graph = SecAggGraph::kComplete;
  uint32_t degree = 0;         // kHarary only: neighbours per client, even, 2..n-1
  uint64_t graph_seed = 0;     // kHarary only: public seed of the relabelling
  uint32_t vector_length = 0;  // 1..kSecAggMaxVectorLength
  uint32_t round = 0;

  // Neighbours per client: n - 1 for kComplete, `degree` for kHarary.
  uint32_t EffectiveDegree() const;

  // Wire form (44 bytes): tag 0x50 | version 1 | n u32 | t u32 | k u8 |
  // graph u8 | degree u32 | seed u64 | length u32 | round u32 | 12 zero bytes
  // reserved. Little-endian.
  std::string Serialize() const;
  static StatusOr<SecAggParams> Parse(std::string_view bytes);
};

// OK when the parameters are usable; otherwise InvalidArgument naming the
// offending value. Requires in particular that t is a strict majority of each
// neighbourhood (2t > d + 1, counting the client itself) and t <= d + 1.
Status ValidateSecAggParams(const SecAggParams& params);

// BLAKE2b-256 of params.Serialize().
SecAggDigest SecAggSessionDigest(const SecAggParams& params);

// Default SecAgg+ degree for n clients: the smallest even d >= 10 * log2(n),
// capped at the largest even number <= n - 1 (at which point the complete
// graph costs about the same).
uint32_t RecommendedHararyDegree(uint32_t num_clients);
// Default threshold for a neighbourhood of `degree` neighbours plus the
// client itself: floor((d + 1) / 2) + 1, the smallest strict majority.
uint32_t RecommendedThreshold(uint32_t degree);

// The neighbour relation, computed identically by every party from the
// public parameters. For kHarary, clients are placed on a ring in the order of
// a permutation of 0..n-1 drawn from graph_seed (core/rng.h; public, so a
// non-cryptographic generator is fine), and each is joined to the d/2 nearest
// on either side. Memory is O(n) for either graph.
class NeighbourGraph {
 public:
  static StatusOr<NeighbourGraph> Build(const SecAggParams& params);

  uint32_t num_clients() const { return n_; }
  uint32_t degree() const { return complete_ ? n_ - 1 : 2 * half_; }
  // False for u == v and for indices out of range.
  bool AreNeighbours(uint32_t u, uint32_t v) const;
  // The neighbours of u, ascending, without u. REQUIRES: u < num_clients().
  std::vector<uint32_t> Neighbours(uint32_t u) const;

 private:
  NeighbourGraph() = default;
  uint32_t n_ = 0;
  uint32_t half_ = 0;
  bool complete_ = true;
  std::vector<uint32_t> ring_;      // ring position -> client
  std::vector<uint32_t> position_;  // client -> ring position
};

}  // namespace flotilla::privacy
