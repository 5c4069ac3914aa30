// Secure aggregation: the server learns the sum (mod 2^k) of the surviving
// clients' quantized updates and nothing else about any one of them.
//
// This is the protocol of Bonawitz et al., "Practical Secure Aggregation for
// Privacy-Preserving Machine Learning" (CCS 2017), with the sparse neighbour
// graph of Bell et al., "Secure Single-Server Aggregation with
// (Poly)Logarithmic Overhead" (CCS 2020, "SecAgg+"). Everything here is a
// pure, network-free state machine over plain message structs; the client
// runtime and the aggregator carry the serialized messages inside protobuf
// `bytes` fields.
//
// Stages (U1 ⊇ U2 ⊇ U3 ⊇ U4 are the clients still present after each):
//   0 AdvertiseKeys  Each client makes two fresh X25519 pairs, c (encrypts
//                    shares) and s (pairwise masks), and signs them with its
//                    long-term Ed25519 key. Server verifies, keeps U1.
//   1 ShareKeys      Each client draws a 32-byte self-mask seed b_u and
//                    Shamir-splits b_u and s_sk t-of-(m+1) among the m
//                    neighbours in its roster (those in U1; m <= d) and
//                    itself (x = index + 1). The pair for
//                    neighbour v is encrypted with XChaCha20-Poly1305 under a
//                    key from X25519(c_sk_u, c_pk_v), with associated data
//                    binding the session, sender and recipient. Server relays
//                    the ciphertexts of U2 to their recipients.
//   2 MaskedInput    y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U2} sign(u,v) *
//                    PRG(s_uv) mod 2^k, with sign = +1 if u < v, else -1, and
//                    s_uv from X25519(s_sk_u, s_pk_v). Server sums, keeps U3.
//   3 Unmasking      Server sends survivors (U3) and dropped (U2 \ U3). Each
//                    client returns its shares of b_v for survivors and of
//                    s_sk_v for the dropped, never both kinds for one peer.
//                    Server reconstructs (t shares each), removes the masks
//                    and gets sum_{u in U3} x_u mod 2^k.
// Fewer than t clients at any stage ends the round with an Aborted status;
// a client that sees fewer than t in its own neighbourhood aborts itself
// (the round then fails only if the server ends up short of shares).
//
// PRG(seed) is ChaCha20 (libsodium crypto_stream_chacha20, 64-bit nonce) keyed
// with the 32-byte seed, with the fixed nonce "fsa-self" for self masks and
// "fsa-pair" for pairwise masks, read as little-endian uint32 words; words
// are reduced mod 2^k (uniform because 2^k divides 2^32).
//
// Derived keys are BLAKE2b-256 over (label || session digest || X25519 output
// || the lower index's public key || the higher index's public key), with
// labels "flotilla-secagg-enc-v1" and "flotilla-secagg-pair-v1". The session
// digest is BLAKE2b-256 of SecAggParams::Serialize(), so every signature,
// ciphertext and mask is bound to one round's parameters.
//
// Threat model: honest-but-curious server and clients (some of which may
// collude with it, fewer than t in any neighbourhood). Against a server that
// lies about who dropped, clients refuse overlapping survivor/dropped lists
// and never reveal both kinds of share for one peer across requests, and the
// threshold must be a strict majority of each neighbourhood; this stops a
// lying server only when none (or, for the complete graph with even n, one)
// of the target's neighbours colludes with it. The consistency-check round of
// Bonawitz et al.'s malicious-server variant (signatures over U3) is not
// implemented, and identity keys are only as authentic as their source. See
// docs/secure-aggregation.md, "Threat model".
//
// Thread-safety: SecAggClient and SecAggServer are not thread-safe; use one
// per thread or lock. Free functions are safe from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "privacy/keys.h"
#include "privacy/shamir.h"

namespace flotilla::privacy {

// Largest number of clients and vector length accepted anywhere (also bounds
// every parse).
inline constexpr uint32_t kSecAggMaxClients = 1u << 20;
inline constexpr uint32_t kSecAggMaxVectorLength = 1u << 28;
inline constexpr size_t kSecAggSeedBytes = 32;

using SecAggPublicKey = std::array<unsigned char, 32>;
using SecAggDigest = std::array<unsigned char, 32>;

// ---------------------------------------------------------------------------
// Parameters and neighbour graph

enum class SecAggGraph : uint8_t {
  kComplete = 0,  // every client is every other's neighbour (SecAgg)
  kHarary = 1,    // random Harary graph H(n, d) (SecAgg+)
};

// Public parameters of one SecAgg round; the server sends them with the task
// and every party must use identical values (they are bound into the session
// digest).
struct SecAggParams {
  uint32_t num_clients = 0;    // n >= 2; clients are indexed 0..n-1
  uint32_t threshold = 0;      // t: shares needed to reconstruct a secret
  uint32_t bit_width = 32;     // k in 1..32: inputs and the sum are in Z_{2^k}
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

// ---------------------------------------------------------------------------
// Mask expansion

enum class MaskDomain : uint8_t { kSelf, kPair };

// Expands 32-byte seeds into ChaCha20 keystreams of `length` uint32 words
// (one crypto_stream_chacha20 call per seed, into a scratch buffer) and adds
// or subtracts them from an accumulator with wrapping uint32 arithmetic. The
// caller reduces mod 2^k at the end. The scratch buffer is wiped on
// destruction. Not thread-safe; one per thread.
class MaskExpander {
 public:
  explicit MaskExpander(size_t length);
  ~MaskExpander();
  MaskExpander(const MaskExpander&) = delete;
  MaskExpander& operator=(const MaskExpander&) = delete;

  // acc[i] += PRG(seed)[i] (mod 2^32). REQUIRES: seed has 32 bytes, acc has
  // `length` words.
  void Add(const unsigned char* seed, MaskDomain domain, uint32_t* acc);
  // acc[i] -= PRG(seed)[i] (mod 2^32).
  void Subtract(const unsigned char* seed, MaskDomain domain, uint32_t* acc);
  // Writes PRG(seed) to out (`length` words).
  void Expand(const unsigned char* seed, MaskDomain domain, uint32_t* out) const;

 private:
  std::vector<uint32_t> scratch_;
};

// ---------------------------------------------------------------------------
// Messages. Each Serialize() starts with a tag byte and a version byte (1);
// integers are little-endian; Parse() accepts exactly one well-formed message
// and bounds every count by the bytes present, so hostile input cannot cause
// large allocations. Semantic checks (indices, stage, signatures) happen in
// the client and server.

// Stage 0, client -> server, and relayed server -> clients inside a roster.
// Wire: tag 0x41 | 1 | sender u32 | c_public 32 | s_public 32 | signature 64.
struct AdvertiseKeysMessage {
  uint32_t sender = 0;
  SecAggPublicKey c_public{};  // X25519, for share encryption
  SecAggPublicKey s_public{};  // X25519, for pairwise masks
  std::array<unsigned char, 64> signature{};  // Ed25519 by sender's long-term key

  std::string Serialize() const;
  static StatusOr<AdvertiseKeysMessage> Parse(std::string_view bytes);
};

// Stage 1, server -> client: the verified advertisements of U1 ∩ (N(u) ∪ {u}).
// Wire: tag 0x52 | 1 | recipient u32 | count u32 | count x (sender u32 |
// c_public | s_public | signature).
struct RosterMessage {
  uint32_t recipient = 0;
  std::vector<AdvertiseKeysMessage> advertisements;

  std::string Serialize() const;
  static StatusOr<RosterMessage> Parse(std::string_view bytes);
};

// One client's two shares for one recipient, encrypted.
// Wire entry: sender u32 | recipient u32 | nonce 24 | ciphertext (108 bytes:
// the b share and the s_sk share, 46 bytes each, plus a 16-byte tag).
struct EncryptedShares {
  uint32_t sender = 0;
  uint32_t recipient = 0;
  std::array<unsigned char, 24> nonce{};
  std::vector<unsigned char> ciphertext;
};
inline constexpr size_t kEncryptedSharesCiphertextBytes = 2 * (6 + 8 * 5) + 16;

// Stage 1, client -> server. Wire: tag 0x53 | 1 | sender u32 | count u32 |
// entries.
struct ShareKeysMessage {
  uint32_t sender = 0;
  std::vector<EncryptedShares> shares;  // one per neighbour in U1

  std::string Serialize() const;
  static StatusOr<ShareKeysMessage> Parse(std::string_view bytes);
};

// Stage 2, server -> client: the ciphertexts addressed to the recipient by
// members of U2. Wire: tag 0x54 | 1 | recipient u32 | count u32 | entries.
struct RelayedSharesMessage {
  uint32_t recipient = 0;
  std::vector<EncryptedShares> shares;

  std::string Serialize() const;
  static StatusOr<RelayedSharesMessage> Parse(std::string_view bytes);
};

// Stage 2, client -> server. Wire: tag 0x4d | 1 | sender u32 | bit_width u8 |
// length u32 | the words packed at bit_width bits each, least significant
// bit first, padded with zero bits to a whole byte.
struct MaskedInputMessage {
  uint32_t sender = 0;
  uint32_t bit_width = 32;
  std::vector<uint32_t> masked;  // each < 2^bit_width

  std::string Serialize() const;
  static StatusOr<MaskedInputMessage> Parse(std::string_view bytes);
};

// Stage 3, server -> client. Wire: tag 0x55 | 1 | count u32 | survivors |
// count u32 | dropped.
struct UnmaskRequest {
  std::vector<uint32_t> survivors;  // U3 (restricted to the recipient's neighbourhood)
  std::vector<uint32_t> dropped;    // U2 \ U3 (likewise)

  std::string Serialize() const;
  static StatusOr<UnmaskRequest> Parse(std::string_view bytes);
};

enum class ShareKind : uint8_t {
  kSelfMaskSeed = 1,  // share of b_v: revealed for survivors
  kMaskKey = 2,       // share of s_sk_v: revealed for dropped clients
};

struct RevealedShare {
  uint32_t owner = 0;  // whose secret this is a share of
  ShareKind kind = ShareKind::kSelfMaskSeed;
  ShamirShare share;
};

// Stage 3, client -> server. Wire: tag 0x56 | 1 | sender u32 | count u32 |
// count x (owner u32 | kind u8 | share length u16 | share).
struct UnmaskResponse {
  uint32_t sender = 0;
  std::vector<RevealedShare> shares;

  std::string Serialize() const;
  static StatusOr<UnmaskResponse> Parse(std::string_view bytes);
};

// ---------------------------------------------------------------------------
// Client

// One client's side of one round. Created per round; secrets (X25519 secret
// keys, b_u, derived keys) are wiped as soon as they are no longer needed and
// when the object is destroyed or aborts. Any failed check of what the
// server sent moves the client to a terminal aborted state: it returns
// Aborted from then on and never reveals anything else. Calling a stage out
// of order returns FailedPrecondition and changes nothing.
class SecAggClient {
 public:
  // Validates `params`, generates this round's two X25519 pairs and signs
  // them with `identity`. `client_public_keys[i]` is client i's long-term
  // Ed25519 public key (32 bytes), known from enrolment; entry `index` must be
  // identity's public key. The identity secret is not retained.
  static StatusOr<SecAggClient> Create(const SecAggParams& params, uint32_t index, const SigningKeyPair& identity,
                                       std::vector<std::vector<unsigned char>> client_public_keys);

  uint32_t index() const { return index_; }
  bool aborted() const { return stage_ == Stage::kAborted; }

  // Stage 0: the signed advertisement to send to the server.
  const AdvertiseKeysMessage& AdvertiseKeys() const { return advertisement_; }

  // Stage 1: checks the roster (signatures, neighbours only, distinct keys,
  // at least t - 1 neighbours), then returns one encrypted pair of shares per
  // neighbour in the roster. Aborted on any failed check.
  StatusOr<ShareKeysMessage> ShareKeys(const RosterMessage& roster);

  // Stage 2: decrypts and checks the relayed shares (they define this
  // client's view of U2), then masks `input`. InvalidArgument (without
  // aborting) when `input` has the wrong length or a value >= 2^k; Aborted
  // when a ciphertext fails or fewer than t - 1 neighbours sent shares.
  StatusOr<MaskedInputMessage> MaskInput(const RelayedSharesMessage& shares, const std::vector<uint32_t>& input);

  // Stage 3: returns shares of b_v for listed survivors and of s_sk_v for
  // listed dropped clients among those this client holds shares of. Aborted
  // when the lists overlap or repeat an index, this client is not a survivor,
  // a survivor never sent shares, fewer than t survivors are in this
  // client's neighbourhood, or the request asks for a different kind of share
  // of some peer than an earlier request did. A repeated consistent request
  // (e.g. after a server restart) gets the same answer.
  StatusOr<UnmaskResponse> Unmask(const UnmaskRequest& request);

 private:
  enum class Stage { kAdvertised, kSharedKeys, kMaskedInput, kAborted };
  struct Peer {
    SecAggPublicKey c_public{};
    SecAggPublicKey s_public{};
    SecretBytes enc_key;    // from c keys; decrypts the shares this peer sent
    SecretBytes pair_seed;  // s_uv
    bool sent_shares = false;  // in this client's view of U2
    ShamirShare b_share;       // this client's share of the peer's b
    ShamirShare s_share;       // this client's share of the peer's s_sk
    ShareKind revealed{};      // 0 until a share of this peer is revealed
  };

  SecAggClient(const SecAggParams& params, uint32_t index, NeighbourGraph graph);
  // Wipes every secret, enters kAborted and returns Aborted(message).
  Status Abort(const std::string& message);

  SecAggParams params_;
  uint32_t index_ = 0;
  NeighbourGraph graph_;
  SecAggDigest session_{};
  std::vector<std::vector<unsigned char>> client_public_keys_;
  Stage stage_ = Stage::kAdvertised;
  AdvertiseKeysMessage advertisement_;
  SecretBytes c_secret_;
  SecretBytes s_secret_;
  SecretBytes self_seed_;       // b_u
  std::map<uint32_t, Peer> peers_;  // neighbours in the roster, and this client itself
};

// ---------------------------------------------------------------------------
// Server

// The aggregator's side of one round: verifies and relays keys and shares,
// sums masked inputs as they arrive (O(vector_length) memory for the sum),
// tracks who is still present and unmasks. Handle* reject a bad or
// duplicate message without changing state (InvalidArgument,
// PermissionDenied for a bad signature, AlreadyExists for a repeat,
// FailedPrecondition for the wrong stage); End* close a stage and abort the
// round if fewer than t clients remain. After an abort every call returns
// the abort status.
class SecAggServer {
 public:
  enum class Stage { kAdvertiseKeys, kShareKeys, kMaskedInput, kUnmask, kDone, kAborted };

  // `client_public_keys[i]`: client i's long-term Ed25519 public key.
  static StatusOr<SecAggServer> Create(const SecAggParams& params,
                                       std::vector<std::vector<unsigned char>> client_public_keys);

  Stage stage() const { return stage_; }
  const SecAggParams& params() const { return params_; }

  Status HandleAdvertiseKeys(const AdvertiseKeysMessage& message);
  // Closes stage 0: U1 = clients whose advertisement verified.
  Status EndAdvertiseKeys();
  // REQUIRES stage >= kShareKeys and client in U1.
  StatusOr<RosterMessage> RosterFor(uint32_t client) const;

  // Accepts a ShareKeys message from a member of U1 that holds exactly one
  // well-formed ciphertext for each of its neighbours in U1.
  Status HandleShareKeys(const ShareKeysMessage& message);
  // Closes stage 1: U2 = clients whose ShareKeys message was accepted.
  Status EndShareKeys();
  // REQUIRES stage >= kMaskedInput and client in U2.
  StatusOr<RelayedSharesMessage> SharesFor(uint32_t client) const;

  // Adds a masked input from a member of U2 to the running sum.
  Status HandleMaskedInput(const MaskedInputMessage& message);
  // Closes stage 2: U3 = clients whose masked input was accepted.
  Status EndMaskedInput();
  // REQUIRES stage >= kUnmask and client in U3.
  StatusOr<UnmaskRequest> UnmaskRequestFor(uint32_t client) const;

  // Accepts the shares a member of U3 reveals.
  Status HandleUnmask(const UnmaskResponse& message);
  // Reconstructs every needed secret and returns sum_{u in U3} x_u mod 2^k.
  // Aborted if fewer than t clients answered or any secret has fewer than t
  // shares, or a reconstructed mask key does not match its advertised public
  // key (a corrupt share).
  StatusOr<std::vector<uint32_t>> Finish();

  // U3, ascending: whose inputs the sum contains (valid from kUnmask on).
  std::vector<uint32_t> Survivors() const;

 private:
  struct ClientState {
    bool advertised = false;   // in U1
    bool shared = false;       // in U2
    bool masked = false;       // in U3
    bool unmasked = false;     // in U4
    AdvertiseKeysMessage advertisement;
    std::vector<EncryptedShares> inbox;  // ciphertexts addressed to this client
    std::vector<ShamirShare> b_shares;   // revealed shares of this client's b
    std::vector<ShamirShare> s_shares;   // revealed shares of this client's s_sk
  };

  SecAggServer(const SecAggParams& params, NeighbourGraph graph);
  Status CheckStage(Stage expected) const;
  Status Abort(const std::string& message);
  uint32_t CountIf(bool ClientState::*flag) const;

  SecAggParams params_;
  NeighbourGraph graph_;
  SecAggDigest session_{};
  std::vector<std::vector<unsigned char>> client_public_keys_;
  Stage stage_ = Stage::kAdvertiseKeys;
  Status abort_status_;
  std::vector<ClientState> clients_;
  std::set<SecAggPublicKey> advertised_keys_;  // every key in U1, to refuse reuse
  std::vector<uint32_t> sum_;
};

// ---------------------------------------------------------------------------
// Quantization: float updates <-> words in Z_{2^k} whose sum over n clients
// cannot wrap out of the decoding window.
//
// Distributed DP. With noise_stddev = sigma > 0 every client adds
// N(0, sigma^2) to each coordinate of its clipped update before rounding, so
// a sum over m clients carries N(0, m sigma^2) per coordinate and no single
// party (the server included) sees an un-noised sum. The noise is unbounded
// in principle, so a client's word may fall below 0 or above the per-client
// maximum; words are therefore kept mod 2^k (a value below 0 wraps to near
// 2^k) and Dequantize decodes centred: it reduces sum - m * C * scale into
// [-2^(k-1), 2^(k-1)). The noise-free part of d lies in
// [-m * C * scale, m * C * scale] (plus rounding), and CheckQuantization
// reserves H = NoiseHeadroom(config) on each side for the noise: 10
// standard deviations of the noise of n clients, exceeded with probability
// ~1e-23, so the decoded sum is the true one except then. Caveat: the
// noise is continuous Gaussian rounded stochastically, not a discrete
// Gaussian (see the floating-point caveat in privacy/noise.h), and each
// client's sigma is the noise of the sum only when all n clients contribute;
// with dropouts the sum carries less. Account for both when stating a
// guarantee.

struct QuantizationConfig {
  double clip_norm = 1.0;    // C: updates are clipped to L2 norm C, so each coordinate is in [-C, C]
  uint32_t bit_width = 32;   // k
  uint32_t num_clients = 1;  // n: the most inputs that will be summed
  double scale = 1.0;        // levels per unit: x maps to round(scale * (x + C))
  // sigma: standard deviation of the Gaussian noise each client adds to each
  // clipped coordinate before rounding, in value units (the units of the
  // inputs and of C). 0 disables the noise. Must be finite and >= 0.
  double noise_stddev = 0.0;
};

// The largest quantized value one client can produce without noise:
// ceil(2 * C * scale). With noise a client's word can be anything mod 2^k.
uint64_t QuantizedMax(const QuantizationConfig& config);

// Room reserved on each side of the noise-free range of an n-client sum for
// the noise: H = ceil(10 * sqrt(n) * noise_stddev * scale) quantized units
// (0 when noise_stddev is 0; UINT64_MAX when it does not fit).
uint64_t NoiseHeadroom(const QuantizationConfig& config);

// OK when C and scale are finite and positive, noise_stddev is finite and
// >= 0, 1 <= k <= 32, n >= 1 and
//   n * QuantizedMax(config) + 2 * NoiseHeadroom(config) <= 2^k - 1;
// otherwise InvalidArgument naming the numbers (and the largest safe scale).
// Without noise this is exactly the condition that the sum cannot wrap.
Status CheckQuantization(const QuantizationConfig& config);

// The largest scale that passes CheckQuantization for C, k, n and
// noise_stddev (0 if none).
double MaxSafeScale(double clip_norm, uint32_t bit_width, uint32_t num_clients, double noise_stddev = 0.0);

// Clips `values` to L2 norm C, shifts by C and scales, then rounds
// stochastically (up with probability equal to the fractional part, using
// ChaCha20 keyed from the CSPRNG), so the result is unbiased:
// E[q_i] = scale * (x_i + C). InvalidArgument on a non-finite value or a
// configuration that fails CheckQuantization.
//
// Without noise (noise_stddev == 0) each word is in [0, QuantizedMax]. With
// noise, v_i = scale * (x_i + C) + scale * N(0, noise_stddev^2) is formed in
// double (noise from GaussianNoise, i.e. the CSPRNG, fresh per call), NOT
// clamped (clamping would bias the sum and weaken the noise), rounded
// stochastically to an integer q_i (E[q_i] = v_i), and returned as
// q_i mod 2^k (two's complement: -1 becomes 2^k - 1).
StatusOr<std::vector<uint32_t>> Quantize(const std::vector<float>& values, const QuantizationConfig& config);

// Maps the sum (mod 2^k; words are read mod 2^k) of `num_summands`
// quantized vectors back to the sum of their clipped float vectors plus
// their noise: d = sum - num_summands * C * scale is reduced into
// [-2^(k-1), 2^(k-1)) by adding or subtracting 2^k, and the result is
// d / scale. Without noise this equals sum / scale - num_summands * C up to
// rounding (but for a corner case far from MaxSafeScale, see secagg.cc).
// InvalidArgument unless 1 <= num_summands <= n and the configuration is
// valid.
StatusOr<std::vector<float>> Dequantize(const std::vector<uint32_t>& sum, uint32_t num_summands,
                                        const QuantizationConfig& config);

}  // namespace flotilla::privacy
