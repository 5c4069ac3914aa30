// Tests for privacy/shamir.h and privacy/secagg.h: Shamir sharing, the
// SecAgg / SecAgg+ state machines with dropouts at every stage, refusals of
// a misbehaving server, message parsing, mask uniformity and quantization.
#include "privacy/secagg.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <numeric>
#include <set>
#include <vector>

#include "core/rng.h"
#include "privacy/keys.h"
#include "privacy/shamir.h"

namespace flotilla::privacy {
namespace {

std::vector<unsigned char> RandomSecret(size_t size) {
  static Rng rng(42);  // test data only; the code under test draws from libsodium
  std::vector<unsigned char> s(size);
  for (auto& b : s) b = static_cast<unsigned char>(rng.NextU64());
  return s;
}

bool Equal(const SecretBytes& a, const std::vector<unsigned char>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), b.size()) == 0;
}

// ---------------------------------------------------------------------------
// Shamir

TEST_CASE("Shamir: every t-subset of n shares reconstructs", "[shamir]") {
  REQUIRE(EnsureSodium().ok());
  for (size_t size : {1u, 7u, 8u, 32u, 33u}) {
    const auto secret = RandomSecret(size);
    const uint32_t t = 3, n = 6;
    auto shares = ShamirSplit(secret.data(), secret.size(), t, n);
    REQUIRE(shares.ok());
    REQUIRE(shares->size() == n);
    int subsets = 0;
    for (uint32_t a = 0; a < n; ++a) {
      for (uint32_t b = a + 1; b < n; ++b) {
        for (uint32_t c = b + 1; c < n; ++c) {
          auto got = ShamirReconstruct({(*shares)[c], (*shares)[a], (*shares)[b]}, t, size);
          REQUIRE(got.ok());
          CHECK(Equal(*got, secret));
          ++subsets;
        }
      }
    }
    CHECK(subsets == 20);
    auto all = ShamirReconstruct(*shares, t, size);  // extra shares ignored
    REQUIRE(all.ok());
    CHECK(Equal(*all, secret));
  }
}

TEST_CASE("Shamir: t-1 shares do not give the secret", "[shamir]") {
  REQUIRE(EnsureSodium().ok());
  const auto secret = RandomSecret(32);
  const uint32_t t = 4;
  auto shares = ShamirSplit(secret.data(), secret.size(), t, 7);
  REQUIRE(shares.ok());
  std::vector<ShamirShare> few(shares->begin(), shares->begin() + (t - 1));
  // Asking for t shares with only t-1 is an error...
  auto refused = ShamirReconstruct(few, t, 32);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().code() == StatusCode::kInvalidArgument);
  // ...and interpolating t-1 shares as if the threshold were t-1 yields an
  // inconsistency error or garbage, never the secret.
  for (int trial = 0; trial < 20; ++trial) {
    auto again = ShamirSplit(secret.data(), secret.size(), t, 7);
    REQUIRE(again.ok());
    std::vector<ShamirShare> sub(again->begin() + 1, again->begin() + t);
    auto got = ShamirReconstruct(sub, t - 1, 32);
    if (got.ok()) {
      CHECK_FALSE(Equal(*got, secret));
    } else {
      CHECK(got.status().code() == StatusCode::kDataLoss);
    }
  }
}

TEST_CASE("Shamir: bad inputs are rejected with clear errors", "[shamir]") {
  REQUIRE(EnsureSodium().ok());
  const auto secret = RandomSecret(32);
  CHECK(ShamirSplit(secret.data(), 32, 0, 5).status().code() == StatusCode::kInvalidArgument);
  CHECK(ShamirSplit(secret.data(), 32, 6, 5).status().code() == StatusCode::kInvalidArgument);
  CHECK(ShamirSplit(secret.data(), 0, 2, 5).status().code() == StatusCode::kInvalidArgument);
  CHECK(ShamirSplit(secret.data(), 32, 2, std::vector<uint32_t>{1, 2, 2}).status().code() ==
        StatusCode::kInvalidArgument);
  auto zero = ShamirSplit(secret.data(), 32, 2, std::vector<uint32_t>{0, 1, 2});
  REQUIRE_FALSE(zero.ok());
  CHECK(zero.status().message().find("0") != std::string::npos);

  auto shares = ShamirSplit(secret.data(), 32, 3, 5);
  REQUIRE(shares.ok());
  // Duplicate x.
  auto dup = ShamirReconstruct({(*shares)[0], (*shares)[0], (*shares)[1]}, 3, 32);
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.status().message().find("x-coordinate") != std::string::npos);
  // Threshold 0.
  CHECK(ShamirReconstruct(*shares, 0, 32).status().code() == StatusCode::kInvalidArgument);
  // Inconsistent lengths.
  std::vector<ShamirShare> bad = *shares;
  bad[1].values.pop_back();
  CHECK(ShamirReconstruct(bad, 3, 32).status().code() == StatusCode::kInvalidArgument);
  // Value outside the field.
  bad = *shares;
  bad[2].values[0] = kShamirPrime;
  CHECK(ShamirReconstruct(bad, 3, 32).status().code() == StatusCode::kInvalidArgument);
  // Wrong secret size for these shares.
  CHECK(ShamirReconstruct(*shares, 3, 64).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("Shamir: shares serialize and parse hostile bytes are rejected", "[shamir]") {
  REQUIRE(EnsureSodium().ok());
  const auto secret = RandomSecret(32);
  auto shares = ShamirSplit(secret.data(), 32, 2, 3);
  REQUIRE(shares.ok());
  std::vector<ShamirShare> parsed;
  for (const ShamirShare& s : *shares) {
    const std::string bytes = s.Serialize();
    REQUIRE(bytes.size() == s.SerializedSize());
    auto p = ShamirShare::Parse(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
    REQUIRE(p.ok());
    CHECK(p->x == s.x);
    CHECK(p->values == s.values);
    parsed.push_back(*p);
  }
  auto got = ShamirReconstruct(parsed, 2, 32);
  REQUIRE(got.ok());
  CHECK(Equal(*got, secret));

  std::string bytes = (*shares)[0].Serialize();
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  CHECK_FALSE(ShamirShare::Parse(p, bytes.size() - 1).ok());  // truncated
  CHECK_FALSE(ShamirShare::Parse(p, 3).ok());
  std::string zero_x = bytes;
  std::memset(zero_x.data(), 0, 4);
  CHECK_FALSE(ShamirShare::Parse(reinterpret_cast<const unsigned char*>(zero_x.data()), zero_x.size()).ok());
  std::string big = bytes;
  std::memset(big.data() + 6, 0xff, 8);  // value >= p
  CHECK_FALSE(ShamirShare::Parse(reinterpret_cast<const unsigned char*>(big.data()), big.size()).ok());
  std::string huge_count = bytes;
  huge_count[4] = '\xff';
  huge_count[5] = '\xff';
  CHECK_FALSE(
      ShamirShare::Parse(reinterpret_cast<const unsigned char*>(huge_count.data()), huge_count.size()).ok());
}

// ---------------------------------------------------------------------------
// Protocol harness

struct Fleet {
  SecAggParams params;
  std::vector<SigningKeyPair> identities;
  std::vector<std::vector<unsigned char>> public_keys;
};

Fleet MakeFleet(const SecAggParams& params) {
  Fleet f;
  f.params = params;
  for (uint32_t i = 0; i < params.num_clients; ++i) {
    auto pair = GenerateSigningKeyPair();
    REQUIRE(pair.ok());
    f.public_keys.push_back(pair->public_key);
    f.identities.push_back(std::move(pair).value());
  }
  return f;
}

// Who leaves the round, and when.
struct Drops {
  std::set<uint32_t> before_advertise;  // never in U1
  std::set<uint32_t> after_advertise;   // in U1, not U2
  std::set<uint32_t> after_share_keys;  // in U2, not U3 (their masks must be reconstructed)
  std::set<uint32_t> after_masked;      // in U3, send no shares
  size_t size() const {
    return before_advertise.size() + after_advertise.size() + after_share_keys.size() + after_masked.size();
  }
};

// Every message goes through Serialize/Parse, as it would on the wire.
template <typename M>
M Wire(const M& m) {
  auto parsed = M::Parse(m.Serialize());
  REQUIRE(parsed.ok());
  return std::move(parsed).value();
}

SecAggClient MustCreate(const Fleet& f, uint32_t index) {
  auto c = SecAggClient::Create(f.params, index, f.identities[index], f.public_keys);
  REQUIRE(c.ok());
  return std::move(c).value();
}

std::vector<std::vector<uint32_t>> RandomInputs(const SecAggParams& p, uint64_t seed) {
  Rng rng(seed);
  const uint32_t mask = p.bit_width == 32 ? 0xffffffffu : ((1u << p.bit_width) - 1);
  std::vector<std::vector<uint32_t>> inputs(p.num_clients, std::vector<uint32_t>(p.vector_length));
  for (auto& v : inputs) {
    for (auto& w : v) w = static_cast<uint32_t>(rng.NextU64()) & mask;
  }
  return inputs;
}

std::vector<uint32_t> PlainSum(const SecAggParams& p, const std::vector<std::vector<uint32_t>>& inputs,
                               const std::vector<uint32_t>& who) {
  const uint32_t mask = p.bit_width == 32 ? 0xffffffffu : ((1u << p.bit_width) - 1);
  std::vector<uint32_t> sum(p.vector_length, 0);
  for (uint32_t u : who) {
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += inputs[u][i];
  }
  for (auto& w : sum) w &= mask;
  return sum;
}

// Runs one round; returns the server's result (or the first abort) and
// fills `survivors` with U3.
StatusOr<std::vector<uint32_t>> RunRound(const Fleet& f, const std::vector<std::vector<uint32_t>>& inputs,
                                         const Drops& drops, std::vector<uint32_t>* survivors) {
  const uint32_t n = f.params.num_clients;
  std::vector<SecAggClient> clients;
  for (uint32_t i = 0; i < n; ++i) {
    auto c = SecAggClient::Create(f.params, i, f.identities[i], f.public_keys);
    REQUIRE(c.ok());
    clients.push_back(std::move(c).value());
  }
  auto server_or = SecAggServer::Create(f.params, f.public_keys);
  REQUIRE(server_or.ok());
  SecAggServer& server = *server_or;

  std::vector<bool> in1(n), in2(n), in3(n);
  for (uint32_t i = 0; i < n; ++i) {
    if (drops.before_advertise.count(i)) continue;
    REQUIRE(server.HandleAdvertiseKeys(Wire(clients[i].AdvertiseKeys())).ok());
    in1[i] = true;
  }
  RETURN_IF_ERROR(server.EndAdvertiseKeys());
  for (uint32_t i = 0; i < n; ++i) {
    if (!in1[i] || drops.after_advertise.count(i)) continue;
    auto roster = server.RosterFor(i);
    REQUIRE(roster.ok());
    auto shares = clients[i].ShareKeys(Wire(*roster));
    if (!shares.ok()) return shares.status();
    REQUIRE(server.HandleShareKeys(Wire(*shares)).ok());
    in2[i] = true;
  }
  RETURN_IF_ERROR(server.EndShareKeys());
  for (uint32_t i = 0; i < n; ++i) {
    if (!in2[i] || drops.after_share_keys.count(i)) continue;
    auto relayed = server.SharesFor(i);
    REQUIRE(relayed.ok());
    auto masked = clients[i].MaskInput(Wire(*relayed), inputs[i]);
    if (!masked.ok()) return masked.status();
    REQUIRE(server.HandleMaskedInput(Wire(*masked)).ok());
    in3[i] = true;
  }
  RETURN_IF_ERROR(server.EndMaskedInput());
  *survivors = server.Survivors();
  for (uint32_t i = 0; i < n; ++i) {
    if (!in3[i] || drops.after_masked.count(i)) continue;
    auto request = server.UnmaskRequestFor(i);
    REQUIRE(request.ok());
    auto response = clients[i].Unmask(Wire(*request));
    if (!response.ok()) return response.status();
    REQUIRE(server.HandleUnmask(Wire(*response)).ok());
  }
  return server.Finish();
}

std::set<uint32_t> RandomSubset(Rng* rng, uint32_t n, uint32_t size, const std::set<uint32_t>& exclude = {}) {
  std::vector<uint32_t> pool;
  for (uint32_t i = 0; i < n; ++i) {
    if (!exclude.count(i)) pool.push_back(i);
  }
  rng->Shuffle(&pool);
  return std::set<uint32_t>(pool.begin(), pool.begin() + std::min<size_t>(size, pool.size()));
}

SecAggParams SmallParams() {
  SecAggParams p;
  p.num_clients = 10;
  p.threshold = 6;
  p.bit_width = 32;
  p.vector_length = 37;
  p.round = 3;
  return p;
}

TEST_CASE("SecAgg: no dropouts gives the exact sum", "[secagg]") {
  REQUIRE(EnsureSodium().ok());
  for (uint32_t k : {32u, 24u, 7u}) {
    SecAggParams p = SmallParams();
    p.bit_width = k;
    const Fleet f = MakeFleet(p);
    const auto inputs = RandomInputs(p, k);
    std::vector<uint32_t> survivors;
    auto sum = RunRound(f, inputs, {}, &survivors);
    REQUIRE(sum.ok());
    CHECK(survivors.size() == p.num_clients);
    CHECK(*sum == PlainSum(p, inputs, survivors));
  }
}

TEST_CASE("SecAgg: any n - t dropouts at any stage still give the survivors' exact sum", "[secagg]") {
  REQUIRE(EnsureSodium().ok());
  const SecAggParams p = SmallParams();
  const Fleet f = MakeFleet(p);
  const auto inputs = RandomInputs(p, 11);
  const uint32_t tolerance = p.num_clients - p.threshold;
  Rng rng(2024);
  for (int stage = 0; stage < 5; ++stage) {
    for (int trial = 0; trial < 4; ++trial) {
      const uint32_t count = trial == 0 ? tolerance : static_cast<uint32_t>(1 + rng.UniformInt(tolerance));
      Drops drops;
      if (stage == 0) drops.before_advertise = RandomSubset(&rng, p.num_clients, count);
      if (stage == 1) drops.after_advertise = RandomSubset(&rng, p.num_clients, count);
      if (stage == 2) drops.after_share_keys = RandomSubset(&rng, p.num_clients, count);
      if (stage == 3) drops.after_masked = RandomSubset(&rng, p.num_clients, count);
      if (stage == 4) {  // spread over the stages
        std::set<uint32_t> used;
        std::set<uint32_t>* sets[] = {&drops.after_advertise, &drops.after_share_keys, &drops.after_masked};
        for (uint32_t j = 0; j < count; ++j) {
          auto one = RandomSubset(&rng, p.num_clients, 1, used);
          used.insert(one.begin(), one.end());
          sets[j % 3]->insert(one.begin(), one.end());
        }
      }
      INFO("stage " << stage << ", " << drops.size() << " dropped");
      std::vector<uint32_t> survivors;
      auto sum = RunRound(f, inputs, drops, &survivors);
      REQUIRE(sum.ok());
      CHECK(*sum == PlainSum(p, inputs, survivors));
      CHECK(survivors.size() == p.num_clients - drops.size() + drops.after_masked.size());
    }
  }
}

TEST_CASE("SecAgg: more than n - t dropouts abort cleanly", "[secagg]") {
  REQUIRE(EnsureSodium().ok());
  const SecAggParams p = SmallParams();
  const Fleet f = MakeFleet(p);
  const auto inputs = RandomInputs(p, 12);
  const uint32_t too_many = p.num_clients - p.threshold + 1;
  Rng rng(7);
  for (int stage = 0; stage < 4; ++stage) {
    Drops drops;
    if (stage == 0) drops.before_advertise = RandomSubset(&rng, p.num_clients, too_many);
    if (stage == 1) drops.after_advertise = RandomSubset(&rng, p.num_clients, too_many);
    if (stage == 2) drops.after_share_keys = RandomSubset(&rng, p.num_clients, too_many);
    if (stage == 3) drops.after_masked = RandomSubset(&rng, p.num_clients, too_many);
    INFO("stage " << stage);
    std::vector<uint32_t> survivors;
    auto sum = RunRound(f, inputs, drops, &survivors);
    REQUIRE_FALSE(sum.ok());
    CHECK(sum.status().code() == StatusCode::kAborted);
    CHECK(sum.status().message().find("threshold") != std::string::npos);
  }
}

TEST_CASE("SecAgg+: Harary graph is symmetric regular and seed-determined", "[secagg]") {
  SecAggParams p;
  p.num_clients = 50;
  p.graph = SecAggGraph::kHarary;
  p.degree = 12;
  p.threshold = 7;
  p.vector_length = 8;
  p.graph_seed = 99;
  auto g = NeighbourGraph::Build(p);
  REQUIRE(g.ok());
  for (uint32_t u = 0; u < p.num_clients; ++u) {
    const auto nb = g->Neighbours(u);
    CHECK(nb.size() == p.degree);
    CHECK(std::is_sorted(nb.begin(), nb.end()));
    for (uint32_t v = 0; v < p.num_clients; ++v) {
      const bool linked = std::binary_search(nb.begin(), nb.end(), v);
      CHECK(linked == g->AreNeighbours(u, v));
      CHECK(g->AreNeighbours(u, v) == g->AreNeighbours(v, u));
    }
  }
  auto same = NeighbourGraph::Build(p);
  p.graph_seed = 100;
  auto other = NeighbourGraph::Build(p);
  REQUIRE(same.ok());
  REQUIRE(other.ok());
  int differ = 0;
  for (uint32_t u = 0; u < p.num_clients; ++u) {
    CHECK(same->Neighbours(u) == g->Neighbours(u));
    differ += other->Neighbours(u) != g->Neighbours(u);
  }
  CHECK(differ > 0);
  CHECK(RecommendedHararyDegree(500) == 90);
  CHECK(RecommendedThreshold(90) == 46);
}

TEST_CASE("SecAgg+: n = 50 on a sparse graph gives exact sums with dropouts", "[secagg]") {
  REQUIRE(EnsureSodium().ok());
  SecAggParams p;
  p.num_clients = 50;
  p.graph = SecAggGraph::kHarary;
  p.degree = 12;
  p.threshold = 7;  // 13 share holders per client; any 6 may go
  p.bit_width = 24;
  p.vector_length = 16;
  p.graph_seed = 5;
  const Fleet f = MakeFleet(p);
  const auto inputs = RandomInputs(p, 13);
  const uint32_t tolerance = p.degree + 1 - p.threshold;
  Rng rng(31);
  for (int trial = 0; trial < 4; ++trial) {
    Drops drops;
    std::set<uint32_t> used;
    std::set<uint32_t>* sets[] = {&drops.after_advertise, &drops.after_share_keys, &drops.after_masked};
    const uint32_t count = trial == 0 ? 0 : tolerance;
    for (uint32_t j = 0; j < count; ++j) {
      auto one = RandomSubset(&rng, p.num_clients, 1, used);
      used.insert(one.begin(), one.end());
      sets[(j + trial) % 3]->insert(one.begin(), one.end());
    }
    std::vector<uint32_t> survivors;
    auto sum = RunRound(f, inputs, drops, &survivors);
    REQUIRE(sum.ok());
    CHECK(*sum == PlainSum(p, inputs, survivors));
  }
  // Every neighbour of one client leaving after ShareKeys leaves it too few
  // share holders: the round aborts.
  auto g = NeighbourGraph::Build(p);
  REQUIRE(g.ok());
  Drops isolate;
  const auto nb = g->Neighbours(0);
  isolate.after_share_keys.insert(nb.begin(), nb.begin() + tolerance + 1);
  std::vector<uint32_t> survivors;
  auto sum = RunRound(f, inputs, isolate, &survivors);
  REQUIRE_FALSE(sum.ok());
  CHECK(sum.status().code() == StatusCode::kAborted);
}

// Runs a round without dropouts up to the Unmask stage and hands back the
// clients and server.
struct Staged {
  std::vector<SecAggClient> clients;
  std::vector<SecAggServer> server;  // one element; SecAggServer has no default constructor
};

Staged StageToUnmask(const Fleet& f) {
  Staged s;
  const uint32_t n = f.params.num_clients;
  for (uint32_t i = 0; i < n; ++i) {
    auto c = SecAggClient::Create(f.params, i, f.identities[i], f.public_keys);
    REQUIRE(c.ok());
    s.clients.push_back(std::move(c).value());
  }
  auto server = SecAggServer::Create(f.params, f.public_keys);
  REQUIRE(server.ok());
  s.server.push_back(std::move(server).value());
  SecAggServer& srv = s.server[0];
  for (auto& c : s.clients) REQUIRE(srv.HandleAdvertiseKeys(c.AdvertiseKeys()).ok());
  REQUIRE(srv.EndAdvertiseKeys().ok());
  for (auto& c : s.clients) REQUIRE(srv.HandleShareKeys(*c.ShareKeys(*srv.RosterFor(c.index()))).ok());
  REQUIRE(srv.EndShareKeys().ok());
  const std::vector<uint32_t> zeros(f.params.vector_length, 0);
  for (auto& c : s.clients)
    REQUIRE(srv.HandleMaskedInput(*c.MaskInput(*srv.SharesFor(c.index()), zeros)).ok());
  REQUIRE(srv.EndMaskedInput().ok());
  return s;
}

std::vector<uint32_t> AllBut(uint32_t n, std::set<uint32_t> out) {
  std::vector<uint32_t> v;
  for (uint32_t i = 0; i < n; ++i) {
    if (!out.count(i)) v.push_back(i);
  }
  return v;
}

TEST_CASE("SecAgg client refuses a server that lies about who dropped", "[secagg]") {
  REQUIRE(EnsureSodium().ok());
  const SecAggParams p = SmallParams();
  const Fleet f = MakeFleet(p);

  SECTION("overlapping survivor and dropped lists") {
    Staged s = StageToUnmask(f);
    UnmaskRequest bad;
    bad.survivors = AllBut(p.num_clients, {});
    bad.dropped = {4};
    auto r = s.clients[0].Unmask(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kAborted);
    CHECK(r.status().message().find("both") != std::string::npos);
    CHECK(s.clients[0].aborted());
    // Once aborted, even an honest request gets nothing.
    auto again = s.clients[0].Unmask(*s.server[0].UnmaskRequestFor(0));
    CHECK(again.status().code() == StatusCode::kAborted);
  }

  SECTION("both kinds of share for the same peer across two requests") {
    Staged s = StageToUnmask(f);
    UnmaskRequest first;
    first.survivors = AllBut(p.num_clients, {});
    auto r1 = s.clients[0].Unmask(first);
    REQUIRE(r1.ok());
    auto repeat = s.clients[0].Unmask(first);  // a consistent retry is answered
    REQUIRE(repeat.ok());
    CHECK(repeat->shares.size() == r1->shares.size());
    UnmaskRequest second;
    second.survivors = AllBut(p.num_clients, {7});
    second.dropped = {7};
    auto r2 = s.clients[0].Unmask(second);
    REQUIRE_FALSE(r2.ok());
    CHECK(r2.status().code() == StatusCode::kAborted);
    CHECK(r2.status().message().find("client 7") != std::string::npos);
  }

  SECTION("not listed as a survivor, repeated index, too few survivors") {
    Staged s = StageToUnmask(f);
    UnmaskRequest not_me;
    not_me.survivors = AllBut(p.num_clients, {1});
    CHECK(s.clients[1].Unmask(not_me).status().code() == StatusCode::kAborted);
    UnmaskRequest repeated;
    repeated.survivors = AllBut(p.num_clients, {});
    repeated.survivors.push_back(3);
    CHECK(s.clients[2].Unmask(repeated).status().code() == StatusCode::kAborted);
    UnmaskRequest few;
    few.survivors = {3, 4, 5};
    few.dropped = {0, 1, 2, 6, 7, 8, 9};
    CHECK(s.clients[3].Unmask(few).status().code() == StatusCode::kAborted);
  }

  SECTION("the honest path still works after other clients refused") {
    Staged s = StageToUnmask(f);
    SecAggServer& srv = s.server[0];
    for (auto& c : s.clients) REQUIRE(srv.HandleUnmask(*c.Unmask(*srv.UnmaskRequestFor(c.index()))).ok());
    auto sum = srv.Finish();
    REQUIRE(sum.ok());
    CHECK(*sum == std::vector<uint32_t>(p.vector_length, 0));
  }
}

TEST_CASE("SecAgg: tampered or mis-signed advertised keys are rejected", "[secagg]") {
  REQUIRE(EnsureSodium().ok());
  const SecAggParams p = SmallParams();
  const Fleet f = MakeFleet(p);
  std::vector<SecAggClient> clients;
  for (uint32_t i = 0; i < p.num_clients; ++i) clients.push_back(MustCreate(f, i));
  auto server = SecAggServer::Create(p, f.public_keys);
  REQUIRE(server.ok());

  AdvertiseKeysMessage tampered = clients[1].AdvertiseKeys();
  tampered.s_public[0] ^= 1;
  auto st = server->HandleAdvertiseKeys(tampered);
  CHECK(st.code() == StatusCode::kPermissionDenied);

  AdvertiseKeysMessage impostor = clients[1].AdvertiseKeys();
  impostor.sender = 2;  // client 1's signature presented as client 2's
  CHECK(server->HandleAdvertiseKeys(impostor).code() == StatusCode::kPermissionDenied);

  SecAggParams other_round = p;
  other_round.round = p.round + 1;  // a replay from another round
  auto replayed = SecAggClient::Create(other_round, 3, f.identities[3], f.public_keys);
  REQUIRE(replayed.ok());
  CHECK(server->HandleAdvertiseKeys(replayed->AdvertiseKeys()).code() == StatusCode::kPermissionDenied);

  // A client's identity must match its enrolled key.
  CHECK_FALSE(SecAggClient::Create(p, 4, f.identities[5], f.public_keys).ok());

  for (auto& c : clients) REQUIRE(server->HandleAdvertiseKeys(c.AdvertiseKeys()).ok());
  CHECK(server->HandleAdvertiseKeys(clients[0].AdvertiseKeys()).code() == StatusCode::kAlreadyExists);
  REQUIRE(server->EndAdvertiseKeys().ok());

  // A relaying server that alters a key is caught by the clients.
  auto roster = server->RosterFor(0);
  REQUIRE(roster.ok());
  roster->advertisements[3].c_public[5] ^= 0x40;
  auto shares = clients[0].ShareKeys(*roster);
  REQUIRE_FALSE(shares.ok());
  CHECK(shares.status().code() == StatusCode::kAborted);
  CHECK(shares.status().message().find("does not verify") != std::string::npos);
}

TEST_CASE("SecAgg: a tampered relayed ciphertext makes the recipient abort", "[secagg]") {
  REQUIRE(EnsureSodium().ok());
  const SecAggParams p = SmallParams();
  const Fleet f = MakeFleet(p);
  std::vector<SecAggClient> clients;
  for (uint32_t i = 0; i < p.num_clients; ++i) clients.push_back(MustCreate(f, i));
  auto server = SecAggServer::Create(p, f.public_keys);
  for (auto& c : clients) REQUIRE(server->HandleAdvertiseKeys(c.AdvertiseKeys()).ok());
  REQUIRE(server->EndAdvertiseKeys().ok());
  for (auto& c : clients) REQUIRE(server->HandleShareKeys(*c.ShareKeys(*server->RosterFor(c.index()))).ok());
  REQUIRE(server->EndShareKeys().ok());
  auto relayed = server->SharesFor(2);
  REQUIRE(relayed.ok());
  relayed->shares[0].recipient = 2;
  relayed->shares[0].ciphertext[10] ^= 1;
  auto masked = clients[2].MaskInput(*relayed, std::vector<uint32_t>(p.vector_length, 1));
  REQUIRE_FALSE(masked.ok());
  CHECK(masked.status().code() == StatusCode::kAborted);
  // Wrong input length is the caller's error, not an abort.
  auto short_input = clients[3].MaskInput(*server->SharesFor(3), std::vector<uint32_t>(3, 1));
  CHECK(short_input.status().code() == StatusCode::kInvalidArgument);
  CHECK_FALSE(clients[3].aborted());
}

TEST_CASE("SecAgg: parameters are validated", "[secagg]") {
  SecAggParams p = SmallParams();
  CHECK(ValidateSecAggParams(p).ok());
  p.threshold = 5;  // not a strict majority of 10
  CHECK_FALSE(ValidateSecAggParams(p).ok());
  p.threshold = 11;
  CHECK_FALSE(ValidateSecAggParams(p).ok());
  p = SmallParams();
  p.bit_width = 33;
  CHECK_FALSE(ValidateSecAggParams(p).ok());
  p = SmallParams();
  p.graph = SecAggGraph::kHarary;
  p.degree = 5;  // odd
  CHECK_FALSE(ValidateSecAggParams(p).ok());
  p = SmallParams();
  auto round_trip = SecAggParams::Parse(p.Serialize());
  REQUIRE(round_trip.ok());
  CHECK(round_trip->Serialize() == p.Serialize());
}

TEST_CASE("SecAgg messages: round trips and hostile bytes", "[secagg]") {
  for (uint32_t k : {1u, 7u, 13u, 24u, 31u, 32u}) {
    MaskedInputMessage m;
    m.sender = 9;
    m.bit_width = k;
    Rng rng(k);
    for (int i = 0; i < 101; ++i)
      m.masked.push_back(static_cast<uint32_t>(rng.NextU64()) & (k == 32 ? ~0u : (1u << k) - 1));
    const std::string bytes = m.Serialize();
    CHECK(bytes.size() == 11 + (101 * k + 7) / 8);
    auto back = MaskedInputMessage::Parse(bytes);
    REQUIRE(back.ok());
    CHECK(back->masked == m.masked);
    CHECK_FALSE(MaskedInputMessage::Parse(bytes.substr(0, bytes.size() - 1)).ok());
    CHECK_FALSE(MaskedInputMessage::Parse(bytes + "x").ok());
  }
  // Counts larger than the bytes present are refused before allocating.
  RelayedSharesMessage relayed;
  relayed.recipient = 1;
  std::string bytes = relayed.Serialize();
  bytes[6] = bytes[7] = bytes[8] = bytes[9] = '\xff';
  auto parsed = RelayedSharesMessage::Parse(bytes);
  REQUIRE_FALSE(parsed.ok());
  CHECK(parsed.status().message().find("count") != std::string::npos);
  CHECK_FALSE(UnmaskRequest::Parse(std::string("\x55\x01\xff\xff\xff\x7f", 6)).ok());
  CHECK_FALSE(AdvertiseKeysMessage::Parse("").ok());
  CHECK_FALSE(RosterMessage::Parse(std::string(1000, '\0')).ok());
  CHECK_FALSE(UnmaskResponse::Parse(std::string("\x56\x02", 2)).ok());  // unknown version
  for (size_t cut = 0; cut < 30; ++cut) {
    CHECK_FALSE(SecAggParams::Parse(SmallParams().Serialize().substr(0, cut)).ok());
  }
}

// ---------------------------------------------------------------------------
// Masks

TEST_CASE("SecAgg: a masked vector is indistinguishable from uniform", "[secagg]") {
  REQUIRE(EnsureSodium().ok());
  SecAggParams p = SmallParams();
  p.vector_length = 1 << 17;  // 131072 words
  // The keys are fresh each run, so a uniform mask fails the p > 0.001 test
  // in one run of a thousand: take the best of three rounds with new keys.
  // Any structure in the masks fails all three (its chi2 is in the millions).
  std::vector<double> chi2s;
  for (int attempt = 0; attempt < 3; ++attempt) {
    const Fleet f = MakeFleet(p);
    Staged s;
    for (uint32_t i = 0; i < p.num_clients; ++i) s.clients.push_back(MustCreate(f, i));
    auto server = SecAggServer::Create(p, f.public_keys);
    for (auto& c : s.clients) REQUIRE(server->HandleAdvertiseKeys(c.AdvertiseKeys()).ok());
    REQUIRE(server->EndAdvertiseKeys().ok());
    for (auto& c : s.clients)
      REQUIRE(server->HandleShareKeys(*c.ShareKeys(*server->RosterFor(c.index()))).ok());
    REQUIRE(server->EndShareKeys().ok());
    // A maximally structured input: every word the same.
    const std::vector<uint32_t> input(p.vector_length, 0x01020304u);
    auto masked = s.clients[4].MaskInput(*server->SharesFor(4), input);
    REQUIRE(masked.ok());
    std::vector<double> buckets(256, 0);
    for (uint32_t w : masked->masked) buckets[w >> 24] += 1;
    const double expected = static_cast<double>(p.vector_length) / 256;
    double chi2 = 0;
    for (double b : buckets) chi2 += (b - expected) * (b - expected) / expected;
    chi2s.push_back(chi2);
    if (chi2 < 330.5) break;
  }
  INFO("chi2 of each attempt over 255 degrees of freedom: " << Catch::Detail::stringify(chi2s));
  CHECK(*std::min_element(chi2s.begin(), chi2s.end()) < 330.5);  // p > 0.001
}

TEST_CASE("MaskExpander: add then subtract is the identity domains differ", "[secagg]") {
  REQUIRE(EnsureSodium().ok());
  MaskExpander ex(1000);
  const std::vector<unsigned char> seed_bytes = RandomSecret(32);
  const unsigned char* seed = seed_bytes.data();
  std::vector<uint32_t> acc(1000, 5), self(1000), pair(1000);
  ex.Add(seed, MaskDomain::kPair, acc.data());
  CHECK(acc != std::vector<uint32_t>(1000, 5));
  ex.Subtract(seed, MaskDomain::kPair, acc.data());
  CHECK(acc == std::vector<uint32_t>(1000, 5));
  ex.Expand(seed, MaskDomain::kSelf, self.data());
  ex.Expand(seed, MaskDomain::kPair, pair.data());
  CHECK(self != pair);
}

// ---------------------------------------------------------------------------
// Quantization

TEST_CASE("Quantization: the overflow check names the numbers", "[quantize]") {
  QuantizationConfig bad{1.0, 16, 1000, 100.0};  // 1000 x 200 > 65535
  auto st = CheckQuantization(bad);
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("1000 clients") != std::string::npos);
  CHECK(st.message().find("200") != std::string::npos);
  CHECK(st.message().find("65535") != std::string::npos);
  QuantizationConfig good{1.0, 32, 1000, MaxSafeScale(1.0, 32, 1000)};
  CHECK(CheckQuantization(good).ok());
  CHECK(QuantizedMax(good) * 1000 <= 0xffffffffull);
  good.scale = std::nextafter(good.scale * 1.001, 1e300);
  CHECK_FALSE(CheckQuantization(good).ok());
  CHECK_FALSE(CheckQuantization({0.0, 32, 10, 1.0}).ok());
  CHECK_FALSE(CheckQuantization({1.0, 33, 10, 1.0}).ok());
  CHECK_FALSE(CheckQuantization({1.0, 32, 10, std::nan("")}).ok());
}

TEST_CASE("Quantization: round trip within one step clipping applied", "[quantize]") {
  REQUIRE(EnsureSodium().ok());
  const QuantizationConfig c{2.0, 24, 50, MaxSafeScale(2.0, 24, 50)};
  REQUIRE(CheckQuantization(c).ok());
  Rng rng(3);
  std::vector<float> x(1000);
  for (auto& v : x) v = static_cast<float>(rng.Normal() * 0.03);  // norm about 0.95 < C
  auto q = Quantize(x, c);
  REQUIRE(q.ok());
  for (uint32_t w : *q) CHECK(w <= QuantizedMax(c));
  auto back = Dequantize(*q, 1, c);
  REQUIRE(back.ok());
  const double step = 1.0 / c.scale;
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i)
    worst = std::max(worst, std::fabs((*back)[i] - static_cast<double>(x[i])));
  CHECK(worst <= step * 1.0001 + 1e-6);

  std::vector<float> big(100, 1.0f);  // norm 10 > C = 2
  auto qb = Quantize(big, c);
  REQUIRE(qb.ok());
  auto bb = Dequantize(*qb, 1, c);
  double norm2 = 0;
  for (float v : *bb) norm2 += static_cast<double>(v) * v;
  CHECK(std::sqrt(norm2) == Approx(2.0).epsilon(0.01));

  CHECK_FALSE(Quantize({1.0f, std::nanf("")}, c).ok());
  CHECK_FALSE(Dequantize(*q, 51, c).ok());
}

TEST_CASE("Quantization: stochastic rounding is unbiased", "[quantize]") {
  REQUIRE(EnsureSodium().ok());
  const QuantizationConfig c{1.0, 32, 10, 10.0};  // coarse: step 0.1
  const float value = 0.0123f;                    // 10 * (0.0123 + 1) = 10.123: floor 10, frac 0.123
  const size_t n = 200000;
  // Below the clip norm per call: quantize in chunks of 50 (norm 0.087).
  double total = 0;
  std::set<uint32_t> seen;
  for (size_t done = 0; done < n; done += 50) {
    auto q = Quantize(std::vector<float>(50, value), c);
    REQUIRE(q.ok());
    for (uint32_t w : *q) {
      seen.insert(w);
      total += w;
    }
  }
  CHECK(seen == std::set<uint32_t>{10, 11});
  const double mean = total / n / c.scale - c.clip_norm;
  const double standard_error = std::sqrt(0.123 * 0.877 / n) / c.scale;
  INFO("mean " << mean << ", standard error " << standard_error);
  CHECK(std::fabs(mean - value) < 5 * standard_error);
}

TEST_CASE("Quantization + SecAgg: dequantized secure sum matches the float sum", "[quantize][secagg]") {
  REQUIRE(EnsureSodium().ok());
  SecAggParams p = SmallParams();
  p.bit_width = 24;
  p.vector_length = 64;
  const QuantizationConfig c{1.0, p.bit_width, p.num_clients, MaxSafeScale(1.0, p.bit_width, p.num_clients)};
  const Fleet f = MakeFleet(p);
  Rng rng(17);
  std::vector<std::vector<float>> updates(p.num_clients, std::vector<float>(p.vector_length));
  std::vector<std::vector<uint32_t>> inputs;
  for (auto& u : updates) {
    for (auto& v : u) v = static_cast<float>(rng.Normal() * 0.05);
    inputs.push_back(*Quantize(u, c));
  }
  Drops drops;
  drops.after_share_keys = {2, 8};
  std::vector<uint32_t> survivors;
  auto sum = RunRound(f, inputs, drops, &survivors);
  REQUIRE(sum.ok());
  auto approx = Dequantize(*sum, static_cast<uint32_t>(survivors.size()), c);
  REQUIRE(approx.ok());
  for (size_t i = 0; i < p.vector_length; ++i) {
    double want = 0;
    for (uint32_t u : survivors) want += updates[u][i];
    CHECK(std::fabs((*approx)[i] - want) <= survivors.size() / c.scale + 1e-5);
  }
}

// The decoded noisy sum minus the true float sum: mean and standard
// deviation over coordinates.
struct ErrorStats {
  double mean = 0;
  double stddev = 0;
  double worst = 0;
};

ErrorStats DecodingError(const std::vector<float>& decoded, const std::vector<std::vector<float>>& updates,
                         const std::vector<uint32_t>& survivors) {
  ErrorStats e;
  std::vector<double> err(decoded.size());
  for (size_t i = 0; i < decoded.size(); ++i) {
    double want = 0;
    for (uint32_t u : survivors) want += updates[u][i];
    err[i] = decoded[i] - want;
    e.mean += err[i];
    e.worst = std::max(e.worst, std::fabs(err[i]));
  }
  e.mean /= static_cast<double>(err.size());
  for (double x : err) e.stddev += (x - e.mean) * (x - e.mean);
  e.stddev = std::sqrt(e.stddev / static_cast<double>(err.size() - 1));
  return e;
}

TEST_CASE("Quantization: the check reserves headroom for the noise", "[quantize]") {
  // 100 x ceil(600) = 60000 <= 65535 without noise. With sigma 0.1 the
  // headroom is ceil(10 x sqrt(100) x 0.1 x 300) = 3000 and 60000 + 6000 > 65535.
  QuantizationConfig c{1.0, 16, 100, 300.0};
  REQUIRE(CheckQuantization(c).ok());
  CHECK(NoiseHeadroom(c) == 0);
  c.noise_stddev = 0.1;
  CHECK(NoiseHeadroom(c) == 3000);
  auto st = CheckQuantization(c);
  REQUIRE_FALSE(st.ok());
  CHECK(st.code() == StatusCode::kInvalidArgument);
  INFO(st.message());
  CHECK(st.message().find("100 clients") != std::string::npos);
  CHECK(st.message().find("600") != std::string::npos);
  CHECK(st.message().find("noise headroom 3000") != std::string::npos);
  CHECK(st.message().find("66000") != std::string::npos);
  CHECK(st.message().find("65535") != std::string::npos);
  CHECK(st.message().find("less noise") != std::string::npos);

  // MaxSafeScale accounts for the headroom: it passes and 0.1% more fails.
  for (uint32_t k : {12u, 16u, 24u, 32u}) {
    for (uint32_t n : {1u, 7u, 100u, 1000u}) {
      for (double sigma : {1e-6, 0.01, 0.1, 1.0, 5.0}) {
        const double s = MaxSafeScale(1.5, k, n, sigma);
        if (s == 0) continue;  // nothing fits (e.g. 1000 clients in 12 bits)
        INFO("k " << k << " n " << n << " sigma " << sigma << " scale " << s);
        QuantizationConfig safe{1.5, k, n, s, sigma};
        CHECK(CheckQuantization(safe).ok());
        CHECK(QuantizedMax(safe) * n + 2 * NoiseHeadroom(safe) <= (uint64_t{1} << k) - 1);
        CHECK(s <= MaxSafeScale(1.5, k, n));  // the noise costs resolution (or some slack)
        safe.scale = std::nextafter(s * 1.001, 1e300);
        CHECK_FALSE(CheckQuantization(safe).ok());
      }
    }
  }
  // The error message's suggestion is itself safe.
  c.scale = MaxSafeScale(1.0, 16, 100, 0.1);
  CHECK(CheckQuantization(c).ok());
  CHECK(c.scale < 300.0);
  // Without noise the default argument gives the old answer.
  CHECK(MaxSafeScale(1.0, 32, 1000) == MaxSafeScale(1.0, 32, 1000, 0.0));
}

TEST_CASE("Quantization: non-finite or negative noise is rejected", "[quantize]") {
  REQUIRE(EnsureSodium().ok());
  for (double bad : {-0.1, -1e-300, std::nan(""), HUGE_VAL, -HUGE_VAL}) {
    INFO("noise_stddev " << bad);
    const QuantizationConfig c{1.0, 32, 10, 10.0, bad};
    auto st = CheckQuantization(c);
    REQUIRE_FALSE(st.ok());
    CHECK(st.code() == StatusCode::kInvalidArgument);
    CHECK(st.message().find("noise_stddev") != std::string::npos);
    CHECK_FALSE(Quantize({0.1f, 0.2f}, c).ok());
    CHECK_FALSE(Dequantize({1, 2}, 1, c).ok());
    CHECK(MaxSafeScale(1.0, 32, 10, bad) == 0);
  }
}

TEST_CASE("Quantization: centred decoding maps wrapped sums to negative values", "[quantize]") {
  // 10 clients with shift C scale = 100 each: the sum's centre is 1000.
  const QuantizationConfig c{1.0, 16, 10, 100.0, 0.5};
  REQUIRE(CheckQuantization(c).ok());
  auto d = Dequantize({1000, 1000 + 250, 1000 - 250, 0, 65535, 65535 - 999, 1000 + 32767}, 10, c);
  REQUIRE(d.ok());
  CHECK((*d)[0] == Approx(0.0).margin(1e-6));
  CHECK((*d)[1] == Approx(2.5));
  CHECK((*d)[2] == Approx(-2.5));
  CHECK((*d)[3] == Approx(-10.0));   // noise-free minimum: every client at -C
  CHECK((*d)[4] == Approx(-10.01));  // wrapped: one unit below the minimum
  CHECK((*d)[5] == Approx(-20.0));   // wrapped further (noise)
  CHECK((*d)[6] == Approx(327.67));  // the top of the window
  // A sum formed by plain uint32 additions is read mod 2^16.
  auto plain = Dequantize({65536u * 3 + 1250}, 10, c);
  REQUIRE(plain.ok());
  CHECK((*plain)[0] == Approx(2.5));
  // Without noise the centred decoding equals the old sum / scale - m C.
  const QuantizationConfig q{2.0, 24, 50, MaxSafeScale(2.0, 24, 50)};
  std::vector<uint32_t> sums = {0, 1, 12345, static_cast<uint32_t>(QuantizedMax(q) * 50)};
  for (uint32_t m : {1u, 17u, 50u}) {
    std::vector<uint32_t> in;
    for (uint32_t w : sums) in.push_back(static_cast<uint32_t>(std::min<uint64_t>(w, QuantizedMax(q) * m)));
    auto got = Dequantize(in, m, q);
    REQUIRE(got.ok());
    for (size_t i = 0; i < in.size(); ++i) {
      const double old = static_cast<double>(in[i]) / q.scale - m * q.clip_norm;
      CHECK((*got)[i] == Approx(old).margin(1e-4));
    }
  }
}

TEST_CASE("Quantization + SecAgg: noisy sum has the noise of the survivors", "[quantize][secagg]") {
  REQUIRE(EnsureSodium().ok());
  SecAggParams p = SmallParams();
  p.bit_width = 32;
  p.vector_length = 4000;
  const double sigma = 0.01;
  const QuantizationConfig c{1.0, p.bit_width, p.num_clients,
                             MaxSafeScale(1.0, p.bit_width, p.num_clients, sigma), sigma};
  REQUIRE(CheckQuantization(c).ok());
  const Fleet f = MakeFleet(p);
  Rng rng(23);
  std::vector<std::vector<float>> updates(p.num_clients, std::vector<float>(p.vector_length));
  std::vector<std::vector<uint32_t>> inputs;
  for (auto& u : updates) {
    for (auto& v : u) v = static_cast<float>(rng.Normal() * 0.01);  // norm about 0.63 < C
    auto q = Quantize(u, c);
    REQUIRE(q.ok());
    inputs.push_back(*q);
  }
  Drops drops;
  drops.after_share_keys = {2, 8};
  drops.after_masked = {5};  // a survivor whose shares are not needed
  std::vector<uint32_t> survivors;
  auto sum = RunRound(f, inputs, drops, &survivors);
  REQUIRE(sum.ok());
  REQUIRE(survivors.size() == 8);
  auto decoded = Dequantize(*sum, static_cast<uint32_t>(survivors.size()), c);
  REQUIRE(decoded.ok());
  const ErrorStats e = DecodingError(*decoded, updates, survivors);
  const double want_sd = std::sqrt(static_cast<double>(survivors.size())) * sigma;
  INFO("mean " << e.mean << ", sd " << e.stddev << ", expected sd " << want_sd << ", worst " << e.worst);
  CHECK(std::fabs(e.mean) < 5 * want_sd / std::sqrt(static_cast<double>(p.vector_length)));
  CHECK(e.stddev == Approx(want_sd).epsilon(0.1));
  CHECK(e.worst < 10 * want_sd);

  // The same inputs without noise decode to within the rounding steps.
  const QuantizationConfig quiet{1.0, p.bit_width, p.num_clients, c.scale};
  std::vector<std::vector<uint32_t>> plain;
  for (const auto& u : updates) plain.push_back(*Quantize(u, quiet));
  std::vector<uint32_t> plain_survivors;
  auto plain_sum = RunRound(f, plain, drops, &plain_survivors);
  REQUIRE(plain_sum.ok());
  auto plain_decoded = Dequantize(*plain_sum, static_cast<uint32_t>(plain_survivors.size()), quiet);
  REQUIRE(plain_decoded.ok());
  CHECK(DecodingError(*plain_decoded, updates, plain_survivors).worst <=
        plain_survivors.size() / c.scale + 1e-5);
}

TEST_CASE("Quantization + SecAgg: noisy words that wrap below zero still decode", "[quantize][secagg]") {
  REQUIRE(EnsureSodium().ok());
  SecAggParams p = SmallParams();
  p.bit_width = 16;
  p.vector_length = 3000;
  // Noise as large as C: a word is C scale + x scale + noise, so it falls
  // below 0 (and wraps to near 2^16) whenever the noise exceeds x + C. The
  // inputs sit near -C: each client's first coordinates are -0.9 C (the
  // rest small), so those words wrap about a third of the time.
  const double clip = 1.0, sigma = 1.0;
  const QuantizationConfig c{clip, p.bit_width, p.num_clients,
                             MaxSafeScale(clip, p.bit_width, p.num_clients, sigma), sigma};
  REQUIRE(CheckQuantization(c).ok());
  REQUIRE(c.scale > 100);  // still a usable resolution (about 787 levels per unit)
  const uint32_t modulus = 1u << p.bit_width;
  const Fleet f = MakeFleet(p);
  Rng rng(29);
  std::vector<std::vector<float>> updates(p.num_clients, std::vector<float>(p.vector_length));
  std::vector<std::vector<uint32_t>> inputs;
  size_t wrapped = 0, words = 0;
  for (uint32_t u = 0; u < p.num_clients; ++u) {
    auto& x = updates[u];
    x[u] = static_cast<float>(-0.9 * clip);  // one coordinate per client near -C
    for (size_t i = p.num_clients; i < x.size(); ++i)
      x[i] = static_cast<float>(-std::fabs(rng.Normal()) * 0.005);
    auto q = Quantize(x, c);
    REQUIRE(q.ok());
    for (uint32_t w : *q) {
      CHECK(w < modulus);
      // Noise-free words are at most QuantizedMax; above 2^15 means wrapped.
      if (w >= modulus / 2) ++wrapped;
      ++words;
    }
    inputs.push_back(*q);
  }
  INFO("wrapped " << wrapped << " of " << words);
  CHECK(wrapped > words / 10);  // P(N(0,1) < -1) ~ 16%

  Drops drops;
  drops.after_share_keys = {3};
  drops.after_advertise = {7};
  std::vector<uint32_t> survivors;
  auto sum = RunRound(f, inputs, drops, &survivors);
  REQUIRE(sum.ok());
  REQUIRE(survivors.size() == 8);
  for (uint32_t w : *sum) CHECK(w < modulus);
  auto decoded = Dequantize(*sum, static_cast<uint32_t>(survivors.size()), c);
  REQUIRE(decoded.ok());
  const ErrorStats e = DecodingError(*decoded, updates, survivors);
  const double want_sd = std::sqrt(static_cast<double>(survivors.size())) * sigma;
  size_t negative = 0;
  for (float v : *decoded) negative += v < 0;
  INFO("mean " << e.mean << ", sd " << e.stddev << ", expected sd " << want_sd << ", worst " << e.worst
               << ", negative sums " << negative);
  CHECK(std::fabs(e.mean) < 5 * want_sd / std::sqrt(static_cast<double>(p.vector_length)));
  CHECK(e.stddev == Approx(want_sd).epsilon(0.1));
  CHECK(e.worst < 10 * want_sd);  // no sum decoded 2^16 / scale ~ 83 away
  CHECK(negative > p.vector_length / 3);
}

}  // namespace
}  // namespace flotilla::privacy
