// Partitioners: split a dataset's example indices among clients. Every
// function is deterministic given its seed and covers the chosen examples
// exactly once (no example in two clients, none dropped except where a
// function documents it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace flotilla::training {

using Partition = std::vector<std::vector<int64_t>>;  // client -> example indices

// Shuffles 0..n-1 and deals contiguous, near-equal slices. Fails when
// n < clients (some client would get nothing).
StatusOr<Partition> PartitionIid(int64_t n, int clients, uint64_t seed);

// For each class, draws client proportions from Dirichlet(alpha) and deals
// that class's examples accordingly. Smaller alpha, more skew. Every client
// is guaranteed at least `min_per_client` examples (redrawn until true, up to
// a bound; fails with a clear error if impossible).
StatusOr<Partition> PartitionDirichlet(const std::vector<int64_t>& labels, int64_t num_classes, int clients,
                                       double alpha, uint64_t seed, int64_t min_per_client = 1);

// The FedAvg paper's pathological non-IID split: sort by label, cut into
// clients * shards_per_client equal shards, give each client
// shards_per_client random shards. Examples beyond an exact multiple of the
// shard count are dropped (at most clients*shards_per_client - 1).
StatusOr<Partition> PartitionShards(const std::vector<int64_t>& labels, int clients, int shards_per_client,
                                    uint64_t seed);

// Parses "iid", "dirichlet:0.5", "shards:2" and calls the matching function.
StatusOr<Partition> PartitionByName(const std::string& spec, const std::vector<int64_t>& labels,
                                    int64_t num_classes, int clients, uint64_t seed);

}  // namespace flotilla::training
