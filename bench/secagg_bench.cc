// Measures secure aggregation (privacy/secagg.h) in one process:
//   1. raw crypto_stream_chacha20 throughput against MaskExpander::Add on the
//      same vector length, and their ratio;
//   2. full rounds with the complete graph (SecAgg) and the Harary graph
//      (SecAgg+) at 0%, 10% and 30% dropout, where the dropped clients leave
//      after ShareKeys (the expensive case: the server must reconstruct their
//      mask keys and regenerate their pairwise masks with every surviving
//      neighbour). Prints client time per client (all stages), server time,
//      and bytes sent and received per client relative to the plain update
//      (4 bytes per element). Every round's result is checked bit for bit
//      against the plaintext sum of the survivors.
//
// Single-threaded. Usage:
//   secagg_bench [--clients 500] [--length 100000] [--bits 32] [--degree 0]
//                [--complete-clients N] [--no-complete] [--no-harary]
//                [--dropouts 0,10,30]
// --degree 0 picks RecommendedHararyDegree(clients); --complete-clients runs
// the complete graph at a smaller client count than the Harary graph.
#include <sodium.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/status.h"
#include "privacy/keys.h"
#include "privacy/secagg.h"

namespace flotilla::privacy {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchOptions {
  uint32_t clients = 500;
  uint32_t length = 100000;
  uint32_t bits = 32;
  uint32_t degree = 0;
  uint32_t complete_clients = 0;  // 0: same as clients
  bool complete = true;
  bool harary = true;
  std::vector<uint32_t> dropouts = {0, 10, 30};  // percent
};

// Accumulates wall time of the scopes it is started and stopped around.
class Stopwatch {
 public:
  void Start() { start_ = Clock::now(); }
  void Stop() { total_ += std::chrono::duration<double>(Clock::now() - start_).count(); }
  double seconds() const { return total_; }

 private:
  Clock::time_point start_;
  double total_ = 0;
};

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

void ChaChaThroughput(uint32_t length) {
  std::vector<uint32_t> buffer(length), acc(length, 0);
  unsigned char key[32];
  randombytes_buf(key, sizeof(key));
  const unsigned char nonce[8] = {0};
  const double bytes = 4.0 * length;
  const int reps = std::max(20, static_cast<int>(4e8 / bytes));  // ~0.4 GB per measurement
  MaskExpander expander(length);
  double best_raw = 0, best_mask = 0;
  for (int trial = 0; trial < 3; ++trial) {
    auto t0 = Clock::now();
    for (int r = 0; r < reps; ++r) {
      key[0] = static_cast<unsigned char>(r);
      crypto_stream_chacha20(reinterpret_cast<unsigned char*>(buffer.data()), buffer.size() * 4, nonce, key);
    }
    auto t1 = Clock::now();
    for (int r = 0; r < reps; ++r) {
      key[0] = static_cast<unsigned char>(r);
      expander.Add(key, MaskDomain::kPair, acc.data());
    }
    auto t2 = Clock::now();
    best_raw = std::max(best_raw, reps * bytes / Seconds(t0, t1) / 1e9);
    best_mask = std::max(best_mask, reps * bytes / Seconds(t1, t2) / 1e9);
  }
  volatile uint32_t sink = buffer[length / 2] ^ acc[length / 2];
  (void)sink;
  std::printf("PRG, %u words (%.1f KB) per seed, best of 3 x %d seeds:\n", length, bytes / 1e3, reps);
  std::printf("  raw crypto_stream_chacha20     %6.2f GB/s\n", best_raw);
  std::printf("  mask expansion (expand + add)  %6.2f GB/s   ratio %.0f%%\n\n", best_mask,
              100 * best_mask / best_raw);
}

struct RoundResult {
  Status status;
  uint32_t full_clients = 0;  // clients that ran every stage
  double client_create = 0, client_share = 0, client_mask = 0, client_unmask = 0;  // seconds, per full client
  double server_relay = 0, server_finish = 0;                                      // seconds
  double sent = 0, received = 0;                                                   // bytes per full client
  bool exact = false;
};

RoundResult RunRound(const SecAggParams& params, uint32_t dropout_percent, uint64_t seed,
                     const std::vector<SigningKeyPair>& identities,
                     const std::vector<std::vector<unsigned char>>& public_keys) {
  RoundResult res;
  const uint32_t n = params.num_clients;
  Rng rng(seed);
  std::vector<uint32_t> order(n);
  for (uint32_t i = 0; i < n; ++i) order[i] = i;
  rng.Shuffle(&order);
  const std::set<uint32_t> dropped(order.begin(),
                                   order.begin() + (static_cast<uint64_t>(n) * dropout_percent + 50) / 100);

  Stopwatch create, share, mask, unmask, relay, finish;
  std::vector<double> sent(n, 0), received(n, 0);
  std::vector<SecAggClient> clients;
  clients.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    create.Start();
    auto c = SecAggClient::Create(params, i, identities[i], public_keys);
    create.Stop();
    if (!c.ok()) {
      res.status = c.status();
      return res;
    }
    clients.push_back(std::move(c).value());
  }
  relay.Start();
  auto server_or = SecAggServer::Create(params, public_keys);
  relay.Stop();
  if (!server_or.ok()) {
    res.status = server_or.status();
    return res;
  }
  SecAggServer& server = *server_or;

  auto fail = [&res](const Status& st) {
    res.status = st;
    return res;
  };
  // Stage 0.
  for (uint32_t i = 0; i < n; ++i) {
    create.Start();
    const std::string bytes = clients[i].AdvertiseKeys().Serialize();
    create.Stop();
    sent[i] += bytes.size();
    relay.Start();
    auto m = AdvertiseKeysMessage::Parse(bytes);
    Status st = m.ok() ? server.HandleAdvertiseKeys(*m) : m.status();
    relay.Stop();
    if (!st.ok()) return fail(st);
  }
  relay.Start();
  Status st = server.EndAdvertiseKeys();
  relay.Stop();
  if (!st.ok()) return fail(st);
  // Stage 1.
  for (uint32_t i = 0; i < n; ++i) {
    relay.Start();
    const std::string roster = server.RosterFor(i)->Serialize();
    relay.Stop();
    received[i] += roster.size();
    share.Start();
    auto shares = clients[i].ShareKeys(*RosterMessage::Parse(roster));
    std::string bytes = shares.ok() ? shares->Serialize() : std::string();
    share.Stop();
    if (!shares.ok()) return fail(shares.status());
    sent[i] += bytes.size();
    relay.Start();
    auto m = ShareKeysMessage::Parse(bytes);
    st = m.ok() ? server.HandleShareKeys(*m) : m.status();
    relay.Stop();
    if (!st.ok()) return fail(st);
  }
  relay.Start();
  st = server.EndShareKeys();
  relay.Stop();
  if (!st.ok()) return fail(st);
  // Stage 2; the dropped clients leave here.
  const uint32_t word_mask = params.bit_width == 32 ? 0xffffffffu : ((1u << params.bit_width) - 1);
  std::vector<uint32_t> expected(params.vector_length, 0), input(params.vector_length);
  for (uint32_t i = 0; i < n; ++i) {
    if (dropped.count(i)) continue;
    Rng data(DeriveSeed(seed, "input", i));
    for (uint32_t& w : input) w = static_cast<uint32_t>(data.NextU64()) & word_mask;
    for (size_t j = 0; j < input.size(); ++j) expected[j] += input[j];
    relay.Start();
    const std::string relayed = server.SharesFor(i)->Serialize();
    relay.Stop();
    received[i] += relayed.size();
    mask.Start();
    auto masked = clients[i].MaskInput(*RelayedSharesMessage::Parse(relayed), input);
    std::string bytes = masked.ok() ? masked->Serialize() : std::string();
    mask.Stop();
    if (!masked.ok()) return fail(masked.status());
    sent[i] += bytes.size();
    relay.Start();
    auto m = MaskedInputMessage::Parse(bytes);
    st = m.ok() ? server.HandleMaskedInput(*m) : m.status();
    relay.Stop();
    if (!st.ok()) return fail(st);
  }
  relay.Start();
  st = server.EndMaskedInput();
  relay.Stop();
  if (!st.ok()) return fail(st);
  // Stage 3.
  for (uint32_t i = 0; i < n; ++i) {
    if (dropped.count(i)) continue;
    relay.Start();
    const std::string request = server.UnmaskRequestFor(i)->Serialize();
    relay.Stop();
    received[i] += request.size();
    unmask.Start();
    auto response = clients[i].Unmask(*UnmaskRequest::Parse(request));
    std::string bytes = response.ok() ? response->Serialize() : std::string();
    unmask.Stop();
    if (!response.ok()) return fail(response.status());
    sent[i] += bytes.size();
    relay.Start();
    auto m = UnmaskResponse::Parse(bytes);
    st = m.ok() ? server.HandleUnmask(*m) : m.status();
    relay.Stop();
    if (!st.ok()) return fail(st);
  }
  finish.Start();
  auto sum = server.Finish();
  finish.Stop();
  if (!sum.ok()) return fail(sum.status());
  for (uint32_t& w : expected) w &= word_mask;
  res.exact = *sum == expected;

  const uint32_t full = n - static_cast<uint32_t>(dropped.size());
  res.full_clients = full;
  res.client_create = create.seconds() / n;
  res.client_share = share.seconds() / n;
  res.client_mask = mask.seconds() / full;
  res.client_unmask = unmask.seconds() / full;
  res.server_relay = relay.seconds();
  res.server_finish = finish.seconds();
  for (uint32_t i = 0; i < n; ++i) {
    if (dropped.count(i)) continue;
    res.sent += sent[i] / full;
    res.received += received[i] / full;
  }
  return res;
}

Status RunGraph(const BenchOptions& opt, SecAggGraph graph, uint32_t clients) {
  SecAggParams p;
  p.num_clients = clients;
  p.bit_width = opt.bits;
  p.vector_length = opt.length;
  p.graph = graph;
  p.graph_seed = 0x5ecA66;
  p.round = 1;
  if (graph == SecAggGraph::kHarary) p.degree = opt.degree ? opt.degree : RecommendedHararyDegree(clients);
  p.threshold = RecommendedThreshold(p.EffectiveDegree());
  RETURN_IF_ERROR(ValidateSecAggParams(p));

  std::vector<SigningKeyPair> identities;
  std::vector<std::vector<unsigned char>> public_keys;
  for (uint32_t i = 0; i < clients; ++i) {
    ASSIGN_OR_RETURN(SigningKeyPair pair, GenerateSigningKeyPair());
    public_keys.push_back(pair.public_key);
    identities.push_back(std::move(pair));
  }
  std::printf("%s: n = %u, degree %u, threshold %u, %u words of %u bits\n",
              graph == SecAggGraph::kComplete ? "SecAgg, complete graph" : "SecAgg+, Harary graph", clients,
              p.EffectiveDegree(), p.threshold, opt.length, opt.bits);
  std::printf("  %-8s %8s | %9s %9s %9s %9s %9s | %9s %9s | %10s %10s | %s\n", "dropout", "clients", "create",
              "sharekey", "mask", "unmask", "total", "srv relay", "srv finish", "sent/plain", "recv/plain",
              "exact");
  const double plain = 4.0 * opt.length;
  for (uint32_t drop : opt.dropouts) {
    const auto t0 = Clock::now();
    RoundResult r = RunRound(p, drop, 1000 + drop, identities, public_keys);
    if (!r.status.ok()) {
      std::printf("  %6u%%  round failed: %s\n", drop, r.status.ToString().c_str());
      continue;
    }
    const double total = r.client_create + r.client_share + r.client_mask + r.client_unmask;
    std::printf(
        "  %6u%% %8u | %7.1fms %7.1fms %7.1fms %7.1fms %7.1fms | %8.2fs %8.2fs | %10.3f %10.3f | %s   "
        "(%.0fs)\n",
        drop, r.full_clients, 1e3 * r.client_create, 1e3 * r.client_share, 1e3 * r.client_mask,
        1e3 * r.client_unmask, 1e3 * total, r.server_relay, r.server_finish, r.sent / plain,
        r.received / plain, r.exact ? "yes" : "NO", Seconds(t0, Clock::now()));
    std::fflush(stdout);
    if (!r.exact) return Internal("secure sum differs from the plaintext sum");
  }
  std::printf("\n");
  return Status::Ok();
}

Status RunBench(const BenchOptions& opt) {
  RETURN_IF_ERROR(EnsureSodium());
  ChaChaThroughput(opt.length);
  std::printf(
      "Client times are per client (create = key generation and signing, mask = decrypting shares and\n"
      "masking); server times are totals for the round. Dropped clients leave after ShareKeys.\n\n");
  if (opt.complete)
    RETURN_IF_ERROR(
        RunGraph(opt, SecAggGraph::kComplete, opt.complete_clients ? opt.complete_clients : opt.clients));
  if (opt.harary) RETURN_IF_ERROR(RunGraph(opt, SecAggGraph::kHarary, opt.clients));
  return Status::Ok();
}

StatusOr<BenchOptions> ParseFlags(int argc, char** argv) {
  BenchOptions opt;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&](uint32_t* out) -> Status {
      if (i + 1 >= argc) return InvalidArgument(flag + " needs a value");
      char* end = nullptr;
      const unsigned long v = std::strtoul(argv[++i], &end, 10);
      if (*end != '\0') return InvalidArgument(flag + ": not a number: " + argv[i]);
      *out = static_cast<uint32_t>(v);
      return Status::Ok();
    };
    if (flag == "--clients") {
      RETURN_IF_ERROR(value(&opt.clients));
    } else if (flag == "--length") {
      RETURN_IF_ERROR(value(&opt.length));
    } else if (flag == "--bits") {
      RETURN_IF_ERROR(value(&opt.bits));
    } else if (flag == "--degree") {
      RETURN_IF_ERROR(value(&opt.degree));
    } else if (flag == "--complete-clients") {
      RETURN_IF_ERROR(value(&opt.complete_clients));
    } else if (flag == "--no-complete") {
      opt.complete = false;
    } else if (flag == "--no-harary") {
      opt.harary = false;
    } else if (flag == "--dropouts") {
      if (i + 1 >= argc) return InvalidArgument("--dropouts needs a list like 0,10,30");
      opt.dropouts.clear();
      std::string list = argv[++i];
      size_t pos = 0;
      while (pos <= list.size()) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        const int v = std::atoi(list.substr(pos, comma - pos).c_str());
        if (v < 0 || v > 99) return InvalidArgument("--dropouts: percentages must be 0..99");
        opt.dropouts.push_back(static_cast<uint32_t>(v));
        pos = comma + 1;
      }
    } else {
      return InvalidArgument("unknown flag " + flag +
                             " (flags: --clients --length --bits --degree --complete-clients --no-complete "
                             "--no-harary --dropouts)");
    }
  }
  if (opt.clients < 3 || opt.length < 1 || opt.bits < 1 || opt.bits > 32) {
    return InvalidArgument("need --clients >= 3, --length >= 1, --bits in 1..32");
  }
  return opt;
}

}  // namespace
}  // namespace flotilla::privacy

int main(int argc, char** argv) {
  auto opt = flotilla::privacy::ParseFlags(argc, argv);
  if (!opt.ok()) {
    std::fprintf(stderr, "secagg_bench: %s\n", opt.status().ToString().c_str());
    return 2;
  }
  const flotilla::Status st = flotilla::privacy::RunBench(*opt);
  if (!st.ok()) {
    std::fprintf(stderr, "secagg_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}
