#include "privacy/secagg.h"

#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <set>

#include "core/rng.h"
#include "privacy/noise.h"

namespace flotilla::privacy {
namespace {

constexpr uint8_t kWireVersion = 1;
constexpr uint8_t kTagParams = 0x50;
constexpr uint8_t kTagAdvertise = 0x41;
constexpr uint8_t kTagRoster = 0x52;
constexpr uint8_t kTagShareKeys = 0x53;
constexpr uint8_t kTagRelayed = 0x54;
constexpr uint8_t kTagMasked = 0x4d;
constexpr uint8_t kTagUnmaskRequest = 0x55;
constexpr uint8_t kTagUnmaskResponse = 0x56;

constexpr size_t kParamsBytes = 44;
constexpr size_t kAdvertiseBodyBytes = 4 + 32 + 32 + 64;
constexpr size_t kEncryptedEntryBytes = 4 + 4 + 24 + kEncryptedSharesCiphertextBytes;
constexpr size_t kShareBytes = 6 + 8 * 5;  // a Shamir share of a 32-byte secret
constexpr size_t kRevealedEntryMinBytes = 4 + 1 + 2 + 6 + 8;

constexpr char kKeysLabel[] = "flotilla-secagg-keys-v1";
constexpr char kSharesLabel[] = "flotilla-secagg-shares-v1";
constexpr char kEncLabel[] = "flotilla-secagg-enc-v1";
constexpr char kPairLabel[] = "flotilla-secagg-pair-v1";
constexpr unsigned char kSelfNonce[crypto_stream_chacha20_NONCEBYTES] = {'f', 's', 'a', '-', 's', 'e', 'l', 'f'};
constexpr unsigned char kPairNonce[crypto_stream_chacha20_NONCEBYTES] = {'f', 's', 'a', '-', 'p', 'a', 'i', 'r'};

static_assert(kSecAggSeedBytes == crypto_stream_chacha20_KEYBYTES, "seeds are ChaCha20 keys");
static_assert(kShamirChunkBytes * 5 >= kSecAggSeedBytes, "a 32-byte secret is 5 chunks");

uint32_t LowMask(uint32_t bit_width) {
  return bit_width >= 32 ? 0xffffffffu : ((uint32_t{1} << bit_width) - 1);
}

// Appends little-endian integers and raw bytes to a string.
class Writer {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U16(uint16_t v) { Le(v, 2); }
  void U32(uint32_t v) { Le(v, 4); }
  void U64(uint64_t v) { Le(v, 8); }
  void Bytes(const unsigned char* data, size_t size) { out_.append(reinterpret_cast<const char*>(data), size); }
  void Header(uint8_t tag) {
    U8(tag);
    U8(kWireVersion);
  }
  std::string* out() { return &out_; }
  std::string Take() { return std::move(out_); }

 private:
  void Le(uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string out_;
};

// Reads little-endian integers and raw bytes, never past the end. Every
// method returns false (and reads nothing) when too few bytes remain.
class Reader {
 public:
  explicit Reader(std::string_view bytes)
      : p_(reinterpret_cast<const unsigned char*>(bytes.data())), left_(bytes.size()) {}
  bool U8(uint8_t* v) { return Le(v, 1); }
  bool U16(uint16_t* v) { return Le(v, 2); }
  bool U32(uint32_t* v) { return Le(v, 4); }
  bool U64(uint64_t* v) { return Le(v, 8); }
  bool Bytes(unsigned char* out, size_t size) {
    if (left_ < size) return false;
    std::memcpy(out, p_, size);
    Advance(size);
    return true;
  }
  // A view of the next `size` bytes, consumed.
  bool View(const unsigned char** out, size_t size) {
    if (left_ < size) return false;
    *out = p_;
    Advance(size);
    return true;
  }
  size_t left() const { return left_; }

 private:
  template <typename T>
  bool Le(T* v, size_t bytes) {
    if (left_ < bytes) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < bytes; ++i) x |= static_cast<uint64_t>(p_[i]) << (8 * i);
    *v = static_cast<T>(x);
    Advance(bytes);
    return true;
  }
  void Advance(size_t n) {
    p_ += n;
    left_ -= n;
  }
  const unsigned char* p_;
  size_t left_;
};

Status Truncated(const char* what) { return InvalidArgument(std::string(what) + ": truncated or malformed"); }

Status ReadHeader(Reader* r, uint8_t tag, const char* what) {
  uint8_t got_tag = 0, version = 0;
  if (!r->U8(&got_tag) || !r->U8(&version)) return Truncated(what);
  if (got_tag != tag) return InvalidArgument(std::string(what) + ": wrong message type " + std::to_string(got_tag));
  if (version != kWireVersion) {
    return InvalidArgument(std::string(what) + ": unsupported version " + std::to_string(version));
  }
  return Status::Ok();
}

Status ExpectEnd(const Reader& r, const char* what) {
  if (r.left() != 0) return InvalidArgument(std::string(what) + ": " + std::to_string(r.left()) + " trailing bytes");
  return Status::Ok();
}

// Reads a count and checks that `count` entries of at least `min_entry` bytes
// can fit in what is left, so the caller may reserve safely.
Status ReadCount(Reader* r, size_t min_entry, size_t max_count, const char* what, uint32_t* count) {
  if (!r->U32(count)) return Truncated(what);
  if (*count > max_count || static_cast<uint64_t>(*count) * min_entry > r->left()) {
    return InvalidArgument(std::string(what) + ": count " + std::to_string(*count) + " does not fit the message");
  }
  return Status::Ok();
}

void WriteAdvertiseBody(Writer* w, const AdvertiseKeysMessage& m) {
  w->U32(m.sender);
  w->Bytes(m.c_public.data(), m.c_public.size());
  w->Bytes(m.s_public.data(), m.s_public.size());
  w->Bytes(m.signature.data(), m.signature.size());
}

bool ReadAdvertiseBody(Reader* r, AdvertiseKeysMessage* m) {
  return r->U32(&m->sender) && r->Bytes(m->c_public.data(), m->c_public.size()) &&
         r->Bytes(m->s_public.data(), m->s_public.size()) && r->Bytes(m->signature.data(), m->signature.size());
}

void WriteEncryptedEntry(Writer* w, const EncryptedShares& e) {
  w->U32(e.sender);
  w->U32(e.recipient);
  w->Bytes(e.nonce.data(), e.nonce.size());
  w->Bytes(e.ciphertext.data(), e.ciphertext.size());
}

bool ReadEncryptedEntry(Reader* r, EncryptedShares* e) {
  e->ciphertext.resize(kEncryptedSharesCiphertextBytes);
  return r->U32(&e->sender) && r->U32(&e->recipient) && r->Bytes(e->nonce.data(), e->nonce.size()) &&
         r->Bytes(e->ciphertext.data(), e->ciphertext.size());
}

// Serializes a list of ciphertexts; refuses none (sizes are checked on use).
std::string SerializeEncrypted(uint8_t tag, uint32_t party, const std::vector<EncryptedShares>& shares) {
  Writer w;
  w.Header(tag);
  w.U32(party);
  w.U32(static_cast<uint32_t>(shares.size()));
  for (const EncryptedShares& e : shares) WriteEncryptedEntry(&w, e);
  return w.Take();
}

Status ParseEncrypted(std::string_view bytes, uint8_t tag, const char* what, uint32_t* party,
                      std::vector<EncryptedShares>* shares) {
  Reader r(bytes);
  RETURN_IF_ERROR(ReadHeader(&r, tag, what));
  if (!r.U32(party)) return Truncated(what);
  uint32_t count = 0;
  RETURN_IF_ERROR(ReadCount(&r, kEncryptedEntryBytes, kSecAggMaxClients, what, &count));
  shares->resize(count);
  for (EncryptedShares& e : *shares) {
    if (!ReadEncryptedEntry(&r, &e)) return Truncated(what);
  }
  return ExpectEnd(r, what);
}

void WriteIndexList(Writer* w, const std::vector<uint32_t>& list) {
  w->U32(static_cast<uint32_t>(list.size()));
  for (uint32_t v : list) w->U32(v);
}

Status ReadIndexList(Reader* r, const char* what, std::vector<uint32_t>* list) {
  uint32_t count = 0;
  RETURN_IF_ERROR(ReadCount(r, 4, kSecAggMaxClients, what, &count));
  list->resize(count);
  for (uint32_t& v : *list) {
    if (!r->U32(&v)) return Truncated(what);
  }
  return Status::Ok();
}

// The bytes a client signs to advertise its keys.
std::string SignedKeyBytes(const SecAggDigest& session, uint32_t round, uint32_t index, const SecAggPublicKey& c_public,
                           const SecAggPublicKey& s_public) {
  Writer w;
  w.Bytes(reinterpret_cast<const unsigned char*>(kKeysLabel), sizeof(kKeysLabel) - 1);
  w.Bytes(session.data(), session.size());
  w.Bytes(c_public.data(), c_public.size());
  w.Bytes(s_public.data(), s_public.size());
  w.U32(round);
  w.U32(index);
  return w.Take();
}

bool VerifyAdvertisement(const AdvertiseKeysMessage& m, const SecAggDigest& session, uint32_t round,
                         const std::vector<unsigned char>& public_key) {
  const std::string msg = SignedKeyBytes(session, round, m.sender, m.c_public, m.s_public);
  return crypto_sign_verify_detached(m.signature.data(), reinterpret_cast<const unsigned char*>(msg.data()),
                                     msg.size(), public_key.data()) == 0;
}

// The associated data of the ciphertext `sender` makes for `recipient`.
std::string SharesAd(const SecAggDigest& session, uint32_t sender, uint32_t recipient) {
  Writer w;
  w.Bytes(reinterpret_cast<const unsigned char*>(kSharesLabel), sizeof(kSharesLabel) - 1);
  w.Bytes(session.data(), session.size());
  w.U32(sender);
  w.U32(recipient);
  return w.Take();
}

// A 32-byte key shared by `me` and `peer`: BLAKE2b-256(label || session ||
// X25519(my_secret, peer_public) || public key of the lower index || of the
// higher). Fails when the peer's key is a low-order point.
StatusOr<SecretBytes> AgreeKey(const char* label, const SecAggDigest& session, const unsigned char* my_secret,
                               uint32_t me, const SecAggPublicKey& my_public, uint32_t peer,
                               const SecAggPublicKey& peer_public) {
  SecretBytes shared(crypto_scalarmult_BYTES);
  if (crypto_scalarmult(shared.data(), my_secret, peer_public.data()) != 0) {
    return InvalidArgument("client " + std::to_string(peer) + " advertised an invalid X25519 public key");
  }
  const SecAggPublicKey& lo = me < peer ? my_public : peer_public;
  const SecAggPublicKey& hi = me < peer ? peer_public : my_public;
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, kSecAggSeedBytes);
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(label), std::strlen(label));
  crypto_generichash_update(&state, session.data(), session.size());
  crypto_generichash_update(&state, shared.data(), shared.size());
  crypto_generichash_update(&state, lo.data(), lo.size());
  crypto_generichash_update(&state, hi.data(), hi.size());
  SecretBytes key(kSecAggSeedBytes);
  crypto_generichash_final(&state, key.data(), key.size());
  sodium_memzero(&state, sizeof(state));
  return key;
}

// A fresh X25519 pair from the CSPRNG.
void NewX25519Pair(SecretBytes* secret, SecAggPublicKey* public_key) {
  *secret = SecretBytes(crypto_scalarmult_SCALARBYTES);
  randombytes_buf(secret->data(), secret->size());
  crypto_scalarmult_base(public_key->data(), secret->data());
}

Status CheckPublicKeys(const std::vector<std::vector<unsigned char>>& keys, uint32_t n) {
  if (keys.size() != n) {
    return InvalidArgument("need one long-term public key per client: " + std::to_string(n) + ", got " +
                           std::to_string(keys.size()));
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i].size() != crypto_sign_PUBLICKEYBYTES) {
      return InvalidArgument("long-term public key of client " + std::to_string(i) + " is not 32 bytes");
    }
  }
  return Status::Ok();
}

bool SameAdvertisement(const AdvertiseKeysMessage& a, const AdvertiseKeysMessage& b) {
  return a.sender == b.sender && a.c_public == b.c_public && a.s_public == b.s_public && a.signature == b.signature;
}

std::string Str(uint64_t v) { return std::to_string(v); }

}  // namespace

// ---------------------------------------------------------------------------
// Parameters and graph

uint32_t SecAggParams::EffectiveDegree() const {
  return graph == SecAggGraph::kComplete ? (num_clients > 0 ? num_clients - 1 : 0) : degree;
}

std::string SecAggParams::Serialize() const {
  Writer w;
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
    return InvalidArgument(std::string(kWhat) + ": " + Str(bytes.size()) + " bytes, expected " + Str(kParamsBytes));
  }
  Reader r(bytes);
  RETURN_IF_ERROR(ReadHeader(&r, kTagParams, kWhat));
  SecAggParams p;
  uint8_t k = 0, graph = 0;
  if (!r.U32(&p.num_clients) || !r.U32(&p.threshold) || !r.U8(&k) || !r.U8(&graph) || !r.U32(&p.degree) ||
      !r.U64(&p.graph_seed) || !r.U32(&p.vector_length) || !r.U32(&p.round)) {
    return Truncated(kWhat);
  }
  for (int i = 0; i < 12; ++i) {
    uint8_t zero = 0;
    if (!r.U8(&zero) || zero != 0) return InvalidArgument(std::string(kWhat) + ": reserved bytes are not zero");
  }
  if (graph > static_cast<uint8_t>(SecAggGraph::kHarary)) {
    return InvalidArgument(std::string(kWhat) + ": unknown graph type " + Str(graph));
  }
  p.bit_width = k;
  p.graph = static_cast<SecAggGraph>(graph);
  RETURN_IF_ERROR(ValidateSecAggParams(p));
  return p;
}

Status ValidateSecAggParams(const SecAggParams& p) {
  if (p.num_clients < 2 || p.num_clients > kSecAggMaxClients) {
    return InvalidArgument("SecAgg needs 2.." + Str(kSecAggMaxClients) + " clients, got " + Str(p.num_clients));
  }
  if (p.bit_width < 1 || p.bit_width > 32) return InvalidArgument("SecAgg bit_width must be 1..32, got " + Str(p.bit_width));
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
                           " share holders per client (" + Str(group / 2 + 1) + ".." + Str(group) + "), got " +
                           Str(p.threshold));
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

// ---------------------------------------------------------------------------
// Mask expansion

MaskExpander::MaskExpander(size_t length) : scratch_(length) {}

MaskExpander::~MaskExpander() {
  if (!scratch_.empty()) sodium_memzero(scratch_.data(), scratch_.size() * sizeof(uint32_t));
}

void MaskExpander::Expand(const unsigned char* seed, MaskDomain domain, uint32_t* out) const {
  const unsigned char* nonce = domain == MaskDomain::kSelf ? kSelfNonce : kPairNonce;
  crypto_stream_chacha20(reinterpret_cast<unsigned char*>(out), scratch_.size() * sizeof(uint32_t), nonce, seed);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  for (size_t i = 0; i < scratch_.size(); ++i) out[i] = __builtin_bswap32(out[i]);
#endif
}

void MaskExpander::Add(const unsigned char* seed, MaskDomain domain, uint32_t* acc) {
  Expand(seed, domain, scratch_.data());
  const uint32_t* m = scratch_.data();
  const size_t n = scratch_.size();
  for (size_t i = 0; i < n; ++i) acc[i] += m[i];
}

void MaskExpander::Subtract(const unsigned char* seed, MaskDomain domain, uint32_t* acc) {
  Expand(seed, domain, scratch_.data());
  const uint32_t* m = scratch_.data();
  const size_t n = scratch_.size();
  for (size_t i = 0; i < n; ++i) acc[i] -= m[i];
}

// ---------------------------------------------------------------------------
// Messages

std::string AdvertiseKeysMessage::Serialize() const {
  Writer w;
  w.Header(kTagAdvertise);
  WriteAdvertiseBody(&w, *this);
  return w.Take();
}

StatusOr<AdvertiseKeysMessage> AdvertiseKeysMessage::Parse(std::string_view bytes) {
  constexpr const char* kWhat = "AdvertiseKeysMessage";
  Reader r(bytes);
  RETURN_IF_ERROR(ReadHeader(&r, kTagAdvertise, kWhat));
  AdvertiseKeysMessage m;
  if (!ReadAdvertiseBody(&r, &m)) return Truncated(kWhat);
  RETURN_IF_ERROR(ExpectEnd(r, kWhat));
  return m;
}

std::string RosterMessage::Serialize() const {
  Writer w;
  w.Header(kTagRoster);
  w.U32(recipient);
  w.U32(static_cast<uint32_t>(advertisements.size()));
  for (const AdvertiseKeysMessage& a : advertisements) WriteAdvertiseBody(&w, a);
  return w.Take();
}

StatusOr<RosterMessage> RosterMessage::Parse(std::string_view bytes) {
  constexpr const char* kWhat = "RosterMessage";
  Reader r(bytes);
  RETURN_IF_ERROR(ReadHeader(&r, kTagRoster, kWhat));
  RosterMessage m;
  if (!r.U32(&m.recipient)) return Truncated(kWhat);
  uint32_t count = 0;
  RETURN_IF_ERROR(ReadCount(&r, kAdvertiseBodyBytes, kSecAggMaxClients, kWhat, &count));
  m.advertisements.resize(count);
  for (AdvertiseKeysMessage& a : m.advertisements) {
    if (!ReadAdvertiseBody(&r, &a)) return Truncated(kWhat);
  }
  RETURN_IF_ERROR(ExpectEnd(r, kWhat));
  return m;
}

std::string ShareKeysMessage::Serialize() const { return SerializeEncrypted(kTagShareKeys, sender, shares); }

StatusOr<ShareKeysMessage> ShareKeysMessage::Parse(std::string_view bytes) {
  ShareKeysMessage m;
  RETURN_IF_ERROR(ParseEncrypted(bytes, kTagShareKeys, "ShareKeysMessage", &m.sender, &m.shares));
  return m;
}

std::string RelayedSharesMessage::Serialize() const { return SerializeEncrypted(kTagRelayed, recipient, shares); }

StatusOr<RelayedSharesMessage> RelayedSharesMessage::Parse(std::string_view bytes) {
  RelayedSharesMessage m;
  RETURN_IF_ERROR(ParseEncrypted(bytes, kTagRelayed, "RelayedSharesMessage", &m.recipient, &m.shares));
  return m;
}

std::string MaskedInputMessage::Serialize() const {
  Writer w;
  w.Header(kTagMasked);
  w.U32(sender);
  w.U8(static_cast<uint8_t>(bit_width));
  w.U32(static_cast<uint32_t>(masked.size()));
  std::string* out = w.out();
  if (bit_width == 32) {
    const size_t start = out->size();
    out->resize(start + 4 * masked.size());
    unsigned char* p = reinterpret_cast<unsigned char*>(out->data()) + start;
    for (size_t i = 0; i < masked.size(); ++i) {
      const uint32_t v = masked[i];
      p[4 * i] = static_cast<unsigned char>(v);
      p[4 * i + 1] = static_cast<unsigned char>(v >> 8);
      p[4 * i + 2] = static_cast<unsigned char>(v >> 16);
      p[4 * i + 3] = static_cast<unsigned char>(v >> 24);
    }
    return w.Take();
  }
  const uint32_t mask = LowMask(bit_width);
  out->reserve(out->size() + (static_cast<uint64_t>(masked.size()) * bit_width + 7) / 8);
  uint64_t buffer = 0;
  uint32_t bits = 0;
  for (uint32_t v : masked) {
    buffer |= static_cast<uint64_t>(v & mask) << bits;
    bits += bit_width;
    while (bits >= 8) {
      out->push_back(static_cast<char>(buffer & 0xff));
      buffer >>= 8;
      bits -= 8;
    }
  }
  if (bits > 0) out->push_back(static_cast<char>(buffer & 0xff));
  return w.Take();
}

StatusOr<MaskedInputMessage> MaskedInputMessage::Parse(std::string_view bytes) {
  constexpr const char* kWhat = "MaskedInputMessage";
  Reader r(bytes);
  RETURN_IF_ERROR(ReadHeader(&r, kTagMasked, kWhat));
  MaskedInputMessage m;
  uint8_t k = 0;
  uint32_t length = 0;
  if (!r.U32(&m.sender) || !r.U8(&k) || !r.U32(&length)) return Truncated(kWhat);
  if (k < 1 || k > 32) return InvalidArgument(std::string(kWhat) + ": bit width " + Str(k) + " is not in 1..32");
  if (length > kSecAggMaxVectorLength) return InvalidArgument(std::string(kWhat) + ": length " + Str(length) + " too large");
  const uint64_t payload = (static_cast<uint64_t>(length) * k + 7) / 8;
  if (r.left() != payload) {
    return InvalidArgument(std::string(kWhat) + ": " + Str(r.left()) + " payload bytes for " + Str(length) + " words of " +
                           Str(k) + " bits, expected " + Str(payload));
  }
  m.bit_width = k;
  m.masked.resize(length);
  const unsigned char* p = nullptr;
  if (!r.View(&p, payload)) return Truncated(kWhat);
  if (k == 32) {
    for (uint32_t i = 0; i < length; ++i) {
      m.masked[i] = static_cast<uint32_t>(p[4 * i]) | static_cast<uint32_t>(p[4 * i + 1]) << 8 |
                    static_cast<uint32_t>(p[4 * i + 2]) << 16 | static_cast<uint32_t>(p[4 * i + 3]) << 24;
    }
    return m;
  }
  const uint32_t mask = LowMask(k);
  uint64_t buffer = 0;
  uint32_t bits = 0;
  size_t next = 0;
  for (uint32_t i = 0; i < length; ++i) {
    while (bits < k) {
      buffer |= static_cast<uint64_t>(p[next++]) << bits;
      bits += 8;
    }
    m.masked[i] = static_cast<uint32_t>(buffer) & mask;
    buffer >>= k;
    bits -= k;
  }
  if (next != payload || buffer != 0) return InvalidArgument(std::string(kWhat) + ": nonzero padding bits");
  return m;
}

std::string UnmaskRequest::Serialize() const {
  Writer w;
  w.Header(kTagUnmaskRequest);
  WriteIndexList(&w, survivors);
  WriteIndexList(&w, dropped);
  return w.Take();
}

StatusOr<UnmaskRequest> UnmaskRequest::Parse(std::string_view bytes) {
  constexpr const char* kWhat = "UnmaskRequest";
  Reader r(bytes);
  RETURN_IF_ERROR(ReadHeader(&r, kTagUnmaskRequest, kWhat));
  UnmaskRequest m;
  RETURN_IF_ERROR(ReadIndexList(&r, kWhat, &m.survivors));
  RETURN_IF_ERROR(ReadIndexList(&r, kWhat, &m.dropped));
  RETURN_IF_ERROR(ExpectEnd(r, kWhat));
  return m;
}

std::string UnmaskResponse::Serialize() const {
  Writer w;
  w.Header(kTagUnmaskResponse);
  w.U32(sender);
  w.U32(static_cast<uint32_t>(shares.size()));
  for (const RevealedShare& s : shares) {
    w.U32(s.owner);
    w.U8(static_cast<uint8_t>(s.kind));
    w.U16(static_cast<uint16_t>(s.share.SerializedSize()));
    const size_t start = w.out()->size();
    w.out()->resize(start + s.share.SerializedSize());
    s.share.SerializeTo(reinterpret_cast<unsigned char*>(w.out()->data()) + start);
  }
  return w.Take();
}

StatusOr<UnmaskResponse> UnmaskResponse::Parse(std::string_view bytes) {
  constexpr const char* kWhat = "UnmaskResponse";
  Reader r(bytes);
  RETURN_IF_ERROR(ReadHeader(&r, kTagUnmaskResponse, kWhat));
  UnmaskResponse m;
  if (!r.U32(&m.sender)) return Truncated(kWhat);
  uint32_t count = 0;
  RETURN_IF_ERROR(ReadCount(&r, kRevealedEntryMinBytes, 2 * static_cast<size_t>(kSecAggMaxClients), kWhat, &count));
  m.shares.resize(count);
  for (RevealedShare& s : m.shares) {
    uint8_t kind = 0;
    uint16_t size = 0;
    const unsigned char* p = nullptr;
    if (!r.U32(&s.owner) || !r.U8(&kind) || !r.U16(&size) || !r.View(&p, size)) return Truncated(kWhat);
    if (kind != static_cast<uint8_t>(ShareKind::kSelfMaskSeed) && kind != static_cast<uint8_t>(ShareKind::kMaskKey)) {
      return InvalidArgument(std::string(kWhat) + ": unknown share kind " + Str(kind));
    }
    s.kind = static_cast<ShareKind>(kind);
    ASSIGN_OR_RETURN(s.share, ShamirShare::Parse(p, size));
  }
  RETURN_IF_ERROR(ExpectEnd(r, kWhat));
  return m;
}

// ---------------------------------------------------------------------------
// Client

SecAggClient::SecAggClient(const SecAggParams& params, uint32_t index, NeighbourGraph graph)
    : params_(params), index_(index), graph_(std::move(graph)), session_(SecAggSessionDigest(params)) {}

StatusOr<SecAggClient> SecAggClient::Create(const SecAggParams& params, uint32_t index, const SigningKeyPair& identity,
                                            std::vector<std::vector<unsigned char>> client_public_keys) {
  RETURN_IF_ERROR(EnsureSodium());
  ASSIGN_OR_RETURN(NeighbourGraph graph, NeighbourGraph::Build(params));
  if (index >= params.num_clients) {
    return InvalidArgument("client index " + Str(index) + " is not below num_clients " + Str(params.num_clients));
  }
  RETURN_IF_ERROR(CheckPublicKeys(client_public_keys, params.num_clients));
  if (identity.secret.size() != crypto_sign_SECRETKEYBYTES || identity.public_key != client_public_keys[index]) {
    return InvalidArgument("the signing key of client " + Str(index) + " is not loaded or does not match its enrolled key");
  }
  SecAggClient client(params, index, std::move(graph));
  client.client_public_keys_ = std::move(client_public_keys);
  AdvertiseKeysMessage& ad = client.advertisement_;
  ad.sender = index;
  NewX25519Pair(&client.c_secret_, &ad.c_public);
  NewX25519Pair(&client.s_secret_, &ad.s_public);
  const std::string msg = SignedKeyBytes(client.session_, params.round, index, ad.c_public, ad.s_public);
  if (crypto_sign_detached(ad.signature.data(), nullptr, reinterpret_cast<const unsigned char*>(msg.data()), msg.size(),
                           identity.secret.data()) != 0) {
    return Internal("crypto_sign_detached failed");
  }
  return client;
}

Status SecAggClient::Abort(const std::string& message) {
  c_secret_.Wipe();
  s_secret_.Wipe();
  self_seed_.Wipe();
  peers_.clear();  // wipes keys and shares
  stage_ = Stage::kAborted;
  return Aborted("SecAgg client " + Str(index_) + " aborted round " + Str(params_.round) + ": " + message);
}

StatusOr<ShareKeysMessage> SecAggClient::ShareKeys(const RosterMessage& roster) {
  if (stage_ == Stage::kAborted) return Abort("already aborted");
  if (stage_ != Stage::kAdvertised) return FailedPrecondition("ShareKeys called twice or out of order");
  if (roster.recipient != index_) return Abort("roster is addressed to client " + Str(roster.recipient));

  std::set<SecAggPublicKey> keys = {advertisement_.c_public, advertisement_.s_public};
  std::map<uint32_t, Peer> peers;
  for (const AdvertiseKeysMessage& ad : roster.advertisements) {
    if (ad.sender == index_) {
      if (!SameAdvertisement(ad, advertisement_)) return Abort("roster holds a different advertisement for me");
      continue;
    }
    if (!graph_.AreNeighbours(index_, ad.sender)) return Abort("roster holds non-neighbour " + Str(ad.sender));
    if (peers.count(ad.sender)) return Abort("roster lists client " + Str(ad.sender) + " twice");
    if (!VerifyAdvertisement(ad, session_, params_.round, client_public_keys_[ad.sender])) {
      return Abort("advertisement of client " + Str(ad.sender) + " does not verify with its long-term key");
    }
    if (!keys.insert(ad.c_public).second || !keys.insert(ad.s_public).second) {
      return Abort("client " + Str(ad.sender) + " advertised a public key that is already in use");
    }
    Peer& peer = peers[ad.sender];
    peer.c_public = ad.c_public;
    peer.s_public = ad.s_public;
  }
  if (peers.size() + 1 < params_.threshold) {
    return Abort("only " + Str(peers.size()) + " neighbours advertised keys; " + Str(params_.threshold - 1) +
                 " are needed for threshold " + Str(params_.threshold));
  }
  for (auto& [v, peer] : peers) {
    auto enc = AgreeKey(kEncLabel, session_, c_secret_.data(), index_, advertisement_.c_public, v, peer.c_public);
    if (!enc.ok()) return Abort(enc.status().message());
    auto pair = AgreeKey(kPairLabel, session_, s_secret_.data(), index_, advertisement_.s_public, v, peer.s_public);
    if (!pair.ok()) return Abort(pair.status().message());
    peer.enc_key = std::move(enc).value();
    peer.pair_seed = std::move(pair).value();
  }

  self_seed_ = SecretBytes(kSecAggSeedBytes);
  randombytes_buf(self_seed_.data(), self_seed_.size());
  std::vector<uint32_t> xs;
  xs.reserve(peers.size() + 1);
  for (const auto& entry : peers) xs.push_back(entry.first + 1);
  xs.push_back(index_ + 1);
  auto b_shares = ShamirSplit(self_seed_.data(), self_seed_.size(), params_.threshold, xs);
  if (!b_shares.ok()) return Abort(b_shares.status().message());
  auto s_shares = ShamirSplit(s_secret_.data(), s_secret_.size(), params_.threshold, xs);
  if (!s_shares.ok()) return Abort(s_shares.status().message());
  c_secret_.Wipe();  // the encryption keys are derived; s_sk lives on only as shares
  s_secret_.Wipe();

  ShareKeysMessage out;
  out.sender = index_;
  out.shares.reserve(peers.size());
  SecretBytes plaintext(2 * kShareBytes);
  size_t i = 0;
  for (auto& [v, peer] : peers) {
    (*b_shares)[i].SerializeTo(plaintext.data());
    (*s_shares)[i].SerializeTo(plaintext.data() + kShareBytes);
    EncryptedShares e;
    e.sender = index_;
    e.recipient = v;
    randombytes_buf(e.nonce.data(), e.nonce.size());
    e.ciphertext.resize(kEncryptedSharesCiphertextBytes);
    const std::string ad = SharesAd(session_, index_, v);
    crypto_aead_xchacha20poly1305_ietf_encrypt(e.ciphertext.data(), nullptr, plaintext.data(), plaintext.size(),
                                               reinterpret_cast<const unsigned char*>(ad.data()), ad.size(), nullptr,
                                               e.nonce.data(), peer.enc_key.data());
    out.shares.push_back(std::move(e));
    ++i;
  }
  Peer& self = peers[index_];
  self.sent_shares = true;
  self.b_share = std::move((*b_shares)[i]);
  self.s_share = std::move((*s_shares)[i]);
  peers_ = std::move(peers);
  stage_ = Stage::kSharedKeys;
  return out;
}

StatusOr<MaskedInputMessage> SecAggClient::MaskInput(const RelayedSharesMessage& relayed,
                                                     const std::vector<uint32_t>& input) {
  if (stage_ == Stage::kAborted) return Abort("already aborted");
  if (stage_ != Stage::kSharedKeys) return FailedPrecondition("MaskInput called before ShareKeys or twice");
  if (input.size() != params_.vector_length) {
    return InvalidArgument("SecAgg input has " + Str(input.size()) + " words, the round expects " +
                           Str(params_.vector_length));
  }
  const uint32_t mask = LowMask(params_.bit_width);
  for (size_t i = 0; i < input.size(); ++i) {
    if (input[i] > mask) {
      return InvalidArgument("SecAgg input word " + Str(i) + " = " + Str(input[i]) + " does not fit " +
                             Str(params_.bit_width) + " bits");
    }
  }
  if (relayed.recipient != index_) return Abort("relayed shares are addressed to client " + Str(relayed.recipient));
  for (const EncryptedShares& e : relayed.shares) {
    auto it = peers_.find(e.sender);
    if (e.recipient != index_ || it == peers_.end() || e.sender == index_) {
      return Abort("relayed ciphertext from " + Str(e.sender) + " to " + Str(e.recipient) + " is not for me");
    }
    Peer& peer = it->second;
    if (peer.sent_shares) return Abort("two ciphertexts from client " + Str(e.sender));
    if (e.ciphertext.size() != kEncryptedSharesCiphertextBytes) {
      return Abort("ciphertext from client " + Str(e.sender) + " has the wrong size");
    }
    SecretBytes plaintext(2 * kShareBytes);
    const std::string ad = SharesAd(session_, e.sender, index_);
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(plaintext.data(), nullptr, nullptr, e.ciphertext.data(),
                                                   e.ciphertext.size(), reinterpret_cast<const unsigned char*>(ad.data()),
                                                   ad.size(), e.nonce.data(), peer.enc_key.data()) != 0) {
      return Abort("shares from client " + Str(e.sender) + " fail authentication");
    }
    auto b = ShamirShare::Parse(plaintext.data(), kShareBytes);
    auto s = ShamirShare::Parse(plaintext.data() + kShareBytes, kShareBytes);
    if (!b.ok() || !s.ok() || b->x != index_ + 1 || s->x != index_ + 1 ||
        b->values.size() != ShamirChunkCount(kSecAggSeedBytes) ||
        s->values.size() != ShamirChunkCount(kSecAggSeedBytes)) {
      return Abort("shares from client " + Str(e.sender) + " are malformed");
    }
    peer.b_share = std::move(b).value();
    peer.s_share = std::move(s).value();
    peer.sent_shares = true;
    peer.enc_key.Wipe();
  }
  uint32_t senders = 0;
  for (const auto& [v, peer] : peers_) senders += (v != index_ && peer.sent_shares) ? 1 : 0;
  if (senders + 1 < params_.threshold) {
    return Abort("only " + Str(senders) + " neighbours sent shares; " + Str(params_.threshold - 1) +
                 " are needed for threshold " + Str(params_.threshold));
  }

  MaskedInputMessage out;
  out.sender = index_;
  out.bit_width = params_.bit_width;
  out.masked = input;
  MaskExpander expander(input.size());
  expander.Add(self_seed_.data(), MaskDomain::kSelf, out.masked.data());
  for (auto& [v, peer] : peers_) {
    if (v == index_ || !peer.sent_shares) continue;
    if (index_ < v) {
      expander.Add(peer.pair_seed.data(), MaskDomain::kPair, out.masked.data());
    } else {
      expander.Subtract(peer.pair_seed.data(), MaskDomain::kPair, out.masked.data());
    }
  }
  if (mask != 0xffffffffu) {
    for (uint32_t& w : out.masked) w &= mask;
  }
  self_seed_.Wipe();
  for (auto& entry : peers_) {
    entry.second.pair_seed.Wipe();
    entry.second.enc_key.Wipe();
  }
  stage_ = Stage::kMaskedInput;
  return out;
}

StatusOr<UnmaskResponse> SecAggClient::Unmask(const UnmaskRequest& request) {
  if (stage_ == Stage::kAborted) return Abort("already aborted");
  if (stage_ != Stage::kMaskedInput) return FailedPrecondition("Unmask called before MaskInput");
  std::set<uint32_t> survivors, dropped;
  for (uint32_t v : request.survivors) {
    if (!survivors.insert(v).second) return Abort("survivor " + Str(v) + " is listed twice");
  }
  for (uint32_t v : request.dropped) {
    if (!dropped.insert(v).second) return Abort("dropped client " + Str(v) + " is listed twice");
    if (survivors.count(v)) return Abort("client " + Str(v) + " is listed as both survivor and dropped");
  }
  if (!survivors.count(index_)) return Abort("the server does not list me as a survivor");

  std::vector<std::pair<uint32_t, ShareKind>> reveal;
  uint32_t live_holders = 0;
  for (uint32_t v : survivors) {
    if (v != index_ && !graph_.AreNeighbours(index_, v)) continue;  // not mine to answer for
    auto it = peers_.find(v);
    if (it == peers_.end() || !it->second.sent_shares) {
      return Abort("the server lists client " + Str(v) + " as a survivor but it never sent me shares");
    }
    ++live_holders;
    reveal.emplace_back(v, ShareKind::kSelfMaskSeed);
  }
  if (live_holders < params_.threshold) {
    return Abort("only " + Str(live_holders) + " survivors in my neighbourhood; the threshold is " +
                 Str(params_.threshold));
  }
  for (uint32_t v : dropped) {
    auto it = peers_.find(v);
    if (it == peers_.end() || !it->second.sent_shares) continue;  // I hold nothing of v
    reveal.emplace_back(v, ShareKind::kMaskKey);
  }
  for (const auto& [v, kind] : reveal) {
    const ShareKind before = peers_[v].revealed;
    if (before != ShareKind{} && before != kind) {
      return Abort("asked for the " + std::string(kind == ShareKind::kMaskKey ? "mask-key" : "self-mask") +
                   " share of client " + Str(v) + " after revealing its other share");
    }
  }
  UnmaskResponse out;
  out.sender = index_;
  out.shares.reserve(reveal.size());
  for (const auto& [v, kind] : reveal) {
    Peer& peer = peers_[v];
    peer.revealed = kind;
    RevealedShare r;
    r.owner = v;
    r.kind = kind;
    r.share = kind == ShareKind::kSelfMaskSeed ? peer.b_share : peer.s_share;
    out.shares.push_back(std::move(r));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Server

namespace {

const char* StageName(SecAggServer::Stage stage) {
  switch (stage) {
    case SecAggServer::Stage::kAdvertiseKeys: return "AdvertiseKeys";
    case SecAggServer::Stage::kShareKeys: return "ShareKeys";
    case SecAggServer::Stage::kMaskedInput: return "MaskedInput";
    case SecAggServer::Stage::kUnmask: return "Unmask";
    case SecAggServer::Stage::kDone: return "Done";
    case SecAggServer::Stage::kAborted: return "Aborted";
  }
  return "?";
}

}  // namespace

SecAggServer::SecAggServer(const SecAggParams& params, NeighbourGraph graph)
    : params_(params), graph_(std::move(graph)), session_(SecAggSessionDigest(params)) {}

StatusOr<SecAggServer> SecAggServer::Create(const SecAggParams& params,
                                            std::vector<std::vector<unsigned char>> client_public_keys) {
  RETURN_IF_ERROR(EnsureSodium());
  ASSIGN_OR_RETURN(NeighbourGraph graph, NeighbourGraph::Build(params));
  RETURN_IF_ERROR(CheckPublicKeys(client_public_keys, params.num_clients));
  SecAggServer server(params, std::move(graph));
  server.client_public_keys_ = std::move(client_public_keys);
  server.clients_.resize(params.num_clients);
  return server;
}

Status SecAggServer::CheckStage(Stage expected) const {
  if (stage_ == Stage::kAborted) return abort_status_;
  if (stage_ != expected) {
    return FailedPrecondition(std::string("SecAgg server is in stage ") + StageName(stage_) + ", not " +
                              StageName(expected));
  }
  return Status::Ok();
}

Status SecAggServer::Abort(const std::string& message) {
  abort_status_ = Aborted("SecAgg round " + Str(params_.round) + " aborted: " + message);
  stage_ = Stage::kAborted;
  clients_.clear();
  sum_.clear();
  advertised_keys_.clear();
  return abort_status_;
}

uint32_t SecAggServer::CountIf(bool ClientState::*flag) const {
  uint32_t count = 0;
  for (const ClientState& c : clients_) count += (c.*flag) ? 1 : 0;
  return count;
}

Status SecAggServer::HandleAdvertiseKeys(const AdvertiseKeysMessage& m) {
  RETURN_IF_ERROR(CheckStage(Stage::kAdvertiseKeys));
  if (m.sender >= params_.num_clients) return InvalidArgument("advertisement from unknown client " + Str(m.sender));
  ClientState& c = clients_[m.sender];
  if (c.advertised) return AlreadyExists("client " + Str(m.sender) + " already advertised keys");
  if (!VerifyAdvertisement(m, session_, params_.round, client_public_keys_[m.sender])) {
    return PermissionDenied("advertisement of client " + Str(m.sender) +
                            " does not verify with its long-term key (tampered, wrong round or wrong parameters)");
  }
  if (m.c_public == m.s_public) return InvalidArgument("client " + Str(m.sender) + " advertised the same key twice");
  if (advertised_keys_.count(m.c_public) || advertised_keys_.count(m.s_public)) {
    return InvalidArgument("client " + Str(m.sender) + " advertised a key already used by another client");
  }
  advertised_keys_.insert(m.c_public);
  advertised_keys_.insert(m.s_public);
  c.advertised = true;
  c.advertisement = m;
  return Status::Ok();
}

Status SecAggServer::EndAdvertiseKeys() {
  RETURN_IF_ERROR(CheckStage(Stage::kAdvertiseKeys));
  const uint32_t u1 = CountIf(&ClientState::advertised);
  if (u1 < params_.threshold) {
    return Abort("only " + Str(u1) + " clients advertised keys; the threshold is " + Str(params_.threshold));
  }
  stage_ = Stage::kShareKeys;
  return Status::Ok();
}

StatusOr<RosterMessage> SecAggServer::RosterFor(uint32_t client) const {
  if (stage_ == Stage::kAborted) return abort_status_;
  if (stage_ == Stage::kAdvertiseKeys) return FailedPrecondition("the AdvertiseKeys stage is still open");
  if (client >= params_.num_clients || !clients_[client].advertised) {
    return FailedPrecondition("client " + Str(client) + " is not in U1");
  }
  RosterMessage out;
  out.recipient = client;
  for (uint32_t v = 0; v < params_.num_clients; ++v) {
    if (clients_[v].advertised && (v == client || graph_.AreNeighbours(client, v))) {
      out.advertisements.push_back(clients_[v].advertisement);
    }
  }
  return out;
}

Status SecAggServer::HandleShareKeys(const ShareKeysMessage& m) {
  RETURN_IF_ERROR(CheckStage(Stage::kShareKeys));
  if (m.sender >= params_.num_clients || !clients_[m.sender].advertised) {
    return InvalidArgument("ShareKeys from client " + Str(m.sender) + ", which is not in U1");
  }
  if (clients_[m.sender].shared) return AlreadyExists("client " + Str(m.sender) + " already sent its shares");
  std::set<uint32_t> expected;
  for (uint32_t v : graph_.Neighbours(m.sender)) {
    if (clients_[v].advertised) expected.insert(v);
  }
  std::set<uint32_t> seen;
  for (const EncryptedShares& e : m.shares) {
    if (e.sender != m.sender) return InvalidArgument("ShareKeys from " + Str(m.sender) + " holds a ciphertext from " + Str(e.sender));
    if (!expected.count(e.recipient)) {
      return InvalidArgument("ShareKeys from " + Str(m.sender) + " addresses " + Str(e.recipient) +
                             ", not a neighbour in U1");
    }
    if (!seen.insert(e.recipient).second) {
      return InvalidArgument("ShareKeys from " + Str(m.sender) + " addresses " + Str(e.recipient) + " twice");
    }
    if (e.ciphertext.size() != kEncryptedSharesCiphertextBytes) {
      return InvalidArgument("ShareKeys from " + Str(m.sender) + " holds a ciphertext of the wrong size");
    }
  }
  if (seen.size() != expected.size()) {
    return InvalidArgument("ShareKeys from " + Str(m.sender) + " covers " + Str(seen.size()) + " of its " +
                           Str(expected.size()) + " neighbours in U1");
  }
  for (const EncryptedShares& e : m.shares) clients_[e.recipient].inbox.push_back(e);
  clients_[m.sender].shared = true;
  return Status::Ok();
}

Status SecAggServer::EndShareKeys() {
  RETURN_IF_ERROR(CheckStage(Stage::kShareKeys));
  const uint32_t u2 = CountIf(&ClientState::shared);
  if (u2 < params_.threshold) {
    return Abort("only " + Str(u2) + " clients shared keys; the threshold is " + Str(params_.threshold));
  }
  for (ClientState& c : clients_) {
    // Ciphertexts for clients that left are never relayed.
    if (!c.shared) std::vector<EncryptedShares>().swap(c.inbox);
  }
  sum_.assign(params_.vector_length, 0);
  stage_ = Stage::kMaskedInput;
  return Status::Ok();
}

StatusOr<RelayedSharesMessage> SecAggServer::SharesFor(uint32_t client) const {
  if (stage_ == Stage::kAborted) return abort_status_;
  if (stage_ == Stage::kAdvertiseKeys || stage_ == Stage::kShareKeys) {
    return FailedPrecondition("the ShareKeys stage is still open");
  }
  if (client >= params_.num_clients || !clients_[client].shared) {
    return FailedPrecondition("client " + Str(client) + " is not in U2");
  }
  RelayedSharesMessage out;
  out.recipient = client;
  out.shares = clients_[client].inbox;
  return out;
}

Status SecAggServer::HandleMaskedInput(const MaskedInputMessage& m) {
  RETURN_IF_ERROR(CheckStage(Stage::kMaskedInput));
  if (m.sender >= params_.num_clients || !clients_[m.sender].shared) {
    return InvalidArgument("masked input from client " + Str(m.sender) + ", which is not in U2");
  }
  if (clients_[m.sender].masked) return AlreadyExists("client " + Str(m.sender) + " already sent its masked input");
  if (m.bit_width != params_.bit_width || m.masked.size() != params_.vector_length) {
    return InvalidArgument("masked input from client " + Str(m.sender) + " has " + Str(m.masked.size()) + " words of " +
                           Str(m.bit_width) + " bits; the round expects " + Str(params_.vector_length) + " of " +
                           Str(params_.bit_width));
  }
  const uint32_t mask = LowMask(params_.bit_width);
  for (uint32_t w : m.masked) {
    if (w > mask) return InvalidArgument("masked input from client " + Str(m.sender) + " has a word over 2^k");
  }
  uint32_t* sum = sum_.data();
  const uint32_t* in = m.masked.data();
  for (size_t i = 0; i < sum_.size(); ++i) sum[i] += in[i];
  clients_[m.sender].masked = true;
  std::vector<EncryptedShares>().swap(clients_[m.sender].inbox);  // relayed already
  return Status::Ok();
}

Status SecAggServer::EndMaskedInput() {
  RETURN_IF_ERROR(CheckStage(Stage::kMaskedInput));
  const uint32_t u3 = CountIf(&ClientState::masked);
  if (u3 < params_.threshold) {
    return Abort("only " + Str(u3) + " clients sent masked inputs; the threshold is " + Str(params_.threshold));
  }
  for (ClientState& c : clients_) std::vector<EncryptedShares>().swap(c.inbox);
  stage_ = Stage::kUnmask;
  return Status::Ok();
}

StatusOr<UnmaskRequest> SecAggServer::UnmaskRequestFor(uint32_t client) const {
  if (stage_ == Stage::kAborted) return abort_status_;
  if (stage_ != Stage::kUnmask && stage_ != Stage::kDone) return FailedPrecondition("the MaskedInput stage is still open");
  if (client >= params_.num_clients || !clients_[client].masked) {
    return FailedPrecondition("client " + Str(client) + " is not in U3");
  }
  UnmaskRequest out;
  out.survivors.push_back(client);
  for (uint32_t v : graph_.Neighbours(client)) {
    if (clients_[v].masked) {
      out.survivors.push_back(v);
    } else if (clients_[v].shared) {
      out.dropped.push_back(v);
    }
  }
  std::sort(out.survivors.begin(), out.survivors.end());
  return out;
}

Status SecAggServer::HandleUnmask(const UnmaskResponse& m) {
  RETURN_IF_ERROR(CheckStage(Stage::kUnmask));
  if (m.sender >= params_.num_clients || !clients_[m.sender].masked) {
    return InvalidArgument("unmask response from client " + Str(m.sender) + ", which is not in U3");
  }
  if (clients_[m.sender].unmasked) return AlreadyExists("client " + Str(m.sender) + " already sent its shares");
  std::set<std::pair<uint32_t, ShareKind>> seen;
  for (const RevealedShare& r : m.shares) {
    const std::string what = "unmask response from client " + Str(m.sender) + ": share of client " + Str(r.owner);
    if (r.owner >= params_.num_clients || (r.owner != m.sender && !graph_.AreNeighbours(m.sender, r.owner))) {
      return InvalidArgument(what + " cannot be held by this client");
    }
    const ClientState& owner = clients_[r.owner];
    if (r.kind == ShareKind::kSelfMaskSeed && !owner.masked) return InvalidArgument(what + ": owner is not a survivor");
    if (r.kind == ShareKind::kMaskKey && (owner.masked || !owner.shared)) {
      return InvalidArgument(what + ": owner did not drop after sharing keys");
    }
    if (r.kind != ShareKind::kSelfMaskSeed && r.kind != ShareKind::kMaskKey) return InvalidArgument(what + ": bad kind");
    if (r.share.x != m.sender + 1 || r.share.values.size() != ShamirChunkCount(kSecAggSeedBytes)) {
      return InvalidArgument(what + " is malformed");
    }
    if (!seen.insert({r.owner, r.kind}).second) return InvalidArgument(what + " is repeated");
  }
  for (const RevealedShare& r : m.shares) {
    ClientState& owner = clients_[r.owner];
    (r.kind == ShareKind::kSelfMaskSeed ? owner.b_shares : owner.s_shares).push_back(r.share);
  }
  clients_[m.sender].unmasked = true;
  return Status::Ok();
}

StatusOr<std::vector<uint32_t>> SecAggServer::Finish() {
  RETURN_IF_ERROR(CheckStage(Stage::kUnmask));
  const uint32_t n = params_.num_clients;
  const uint32_t t = params_.threshold;
  const uint32_t u4 = CountIf(&ClientState::unmasked);
  if (u4 < t) return Abort("only " + Str(u4) + " clients sent their shares; the threshold is " + Str(t));

  // Reconstruct every secret first, so a shortfall aborts before any work.
  std::vector<SecretBytes> self_seeds(n), mask_keys(n);
  for (uint32_t u = 0; u < n; ++u) {
    ClientState& c = clients_[u];
    if (c.masked) {
      if (c.b_shares.size() < t) {
        return Abort("self-mask seed of client " + Str(u) + " has " + Str(c.b_shares.size()) + " shares, needs " + Str(t));
      }
      auto seed = ShamirReconstruct(c.b_shares, t, kSecAggSeedBytes);
      if (!seed.ok()) return Abort("self-mask seed of client " + Str(u) + ": " + seed.status().message());
      self_seeds[u] = std::move(seed).value();
    } else if (c.shared) {
      if (c.s_shares.size() < t) {
        return Abort("mask key of dropped client " + Str(u) + " has " + Str(c.s_shares.size()) + " shares, needs " +
                     Str(t));
      }
      auto key = ShamirReconstruct(c.s_shares, t, kSecAggSeedBytes);
      if (!key.ok()) return Abort("mask key of dropped client " + Str(u) + ": " + key.status().message());
      SecAggPublicKey derived;
      crypto_scalarmult_base(derived.data(), key->data());
      if (derived != c.advertisement.s_public) {
        return Abort("reconstructed mask key of dropped client " + Str(u) +
                     " does not match its advertised key (a revealed share is corrupt)");
      }
      mask_keys[u] = std::move(key).value();
    }
  }

  MaskExpander expander(params_.vector_length);
  for (uint32_t u = 0; u < n; ++u) {
    if (clients_[u].masked) expander.Subtract(self_seeds[u].data(), MaskDomain::kSelf, sum_.data());
  }
  for (uint32_t v = 0; v < n; ++v) {
    if (mask_keys[v].size() == 0) continue;
    const SecAggPublicKey& v_public = clients_[v].advertisement.s_public;
    for (uint32_t u : graph_.Neighbours(v)) {
      if (!clients_[u].masked) continue;
      auto seed = AgreeKey(kPairLabel, session_, mask_keys[v].data(), v, v_public, u,
                           clients_[u].advertisement.s_public);
      if (!seed.ok()) return Abort(seed.status().message());
      // u added +PRG(s_uv) if u < v and -PRG(s_uv) otherwise; undo it.
      if (u < v) {
        expander.Subtract(seed->data(), MaskDomain::kPair, sum_.data());
      } else {
        expander.Add(seed->data(), MaskDomain::kPair, sum_.data());
      }
    }
  }
  const uint32_t mask = LowMask(params_.bit_width);
  std::vector<uint32_t> result = std::move(sum_);
  if (mask != 0xffffffffu) {
    for (uint32_t& w : result) w &= mask;
  }
  for (ClientState& c : clients_) {
    c.b_shares.clear();
    c.s_shares.clear();
  }
  stage_ = Stage::kDone;
  return result;
}

std::vector<uint32_t> SecAggServer::Survivors() const {
  std::vector<uint32_t> out;
  for (uint32_t u = 0; u < clients_.size(); ++u) {
    if (clients_[u].masked) out.push_back(u);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Quantization

namespace {

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
  if (!(clip_norm > 0) || !std::isfinite(clip_norm) || bit_width < 1 || bit_width > 32 || num_clients < 1) return 0;
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
    return InvalidArgument("quantization clip_norm must be finite and positive, got " + std::to_string(c.clip_norm));
  }
  if (!std::isfinite(c.scale) || c.scale <= 0) {
    return InvalidArgument("quantization scale must be finite and positive, got " + std::to_string(c.scale));
  }
  if (!std::isfinite(c.noise_stddev) || c.noise_stddev < 0) {
    return InvalidArgument("quantization noise_stddev must be finite and >= 0, got " +
                           std::to_string(c.noise_stddev));
  }
  if (c.bit_width < 1 || c.bit_width > 32) return InvalidArgument("quantization bit_width must be 1..32, got " + Str(c.bit_width));
  if (c.num_clients < 1) return InvalidArgument("quantization num_clients must be at least 1");
  const uint64_t limit = (uint64_t{1} << c.bit_width) - 1;
  const uint64_t per_client = QuantizedMax(c);
  const uint64_t headroom = NoiseHeadroom(c);
  const unsigned __int128 total = QuantizedSpan(c);
  if (per_client > limit || total > limit) {
    const std::string noise_term =
        headroom == 0 ? std::string()
                      : " + 2 x noise headroom " + Str(headroom) + " (= ceil(10 x sqrt(" + Str(c.num_clients) +
                            " clients) x noise_stddev " + std::to_string(c.noise_stddev) + " x scale " +
                            std::to_string(c.scale) + "))";
    return InvalidArgument(
        "quantized sum can overflow: " + Str(c.num_clients) + " clients x per-client maximum " + Str(per_client) +
        " (= ceil(2 x clip_norm " + std::to_string(c.clip_norm) + " x scale " + std::to_string(c.scale) + "))" +
        noise_term + " = " + (total > UINT64_MAX ? std::string("more than 2^64") : Str(static_cast<uint64_t>(total))) +
        " > 2^" + Str(c.bit_width) + " - 1 = " + Str(limit) + "; use scale <= " +
        std::to_string(MaxSafeScale(c.clip_norm, c.bit_width, c.num_clients, c.noise_stddev)) +
        (headroom == 0 ? ", a smaller clip_norm or more bits" : ", a smaller clip_norm, less noise or more bits"));
  }
  return Status::Ok();
}

StatusOr<std::vector<uint32_t>> Quantize(const std::vector<float>& values, const QuantizationConfig& c) {
  RETURN_IF_ERROR(EnsureSodium());
  RETURN_IF_ERROR(CheckQuantization(c));
  double norm2 = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return InvalidArgument("cannot quantize non-finite value at index " + Str(i));
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
    return InvalidArgument("Dequantize: num_summands must be 1.." + Str(c.num_clients) + ", got " + Str(num_summands));
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
