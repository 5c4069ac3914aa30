#include "privacy/secagg_messages.h"

#include <string>

#include "privacy/secagg_codec.h"

namespace flotilla::privacy {
namespace {

using secagg_internal::ByteReader;
using secagg_internal::ByteWriter;
using secagg_internal::kTagAdvertise;
using secagg_internal::kTagMasked;
using secagg_internal::kTagRelayed;
using secagg_internal::kTagRoster;
using secagg_internal::kTagShareKeys;
using secagg_internal::kTagUnmaskRequest;
using secagg_internal::kTagUnmaskResponse;
using secagg_internal::LowMask;
using secagg_internal::ParseMessage;
using secagg_internal::Str;

constexpr size_t kAdvertiseBodyBytes = 4 + 32 + 32 + 64;
constexpr size_t kEncryptedEntryBytes = 4 + 4 + 24 + kEncryptedSharesCiphertextBytes;
constexpr size_t kRevealedEntryMinBytes = 4 + 1 + 2 + 6 + 8;

void WriteAdvertiseBody(ByteWriter* w, const AdvertiseKeysMessage& m) {
  w->U32(m.sender);
  w->Bytes(m.c_public.data(), m.c_public.size());
  w->Bytes(m.s_public.data(), m.s_public.size());
  w->Bytes(m.signature.data(), m.signature.size());
}

bool ReadAdvertiseBody(ByteReader* r, AdvertiseKeysMessage* m) {
  return r->U32(&m->sender) && r->Bytes(m->c_public.data(), m->c_public.size()) &&
         r->Bytes(m->s_public.data(), m->s_public.size()) &&
         r->Bytes(m->signature.data(), m->signature.size());
}

void WriteEncryptedEntry(ByteWriter* w, const EncryptedShares& e) {
  w->U32(e.sender);
  w->U32(e.recipient);
  w->Bytes(e.nonce.data(), e.nonce.size());
  w->Bytes(e.ciphertext.data(), e.ciphertext.size());
}

bool ReadEncryptedEntry(ByteReader* r, EncryptedShares* e) {
  e->ciphertext.resize(kEncryptedSharesCiphertextBytes);
  return r->U32(&e->sender) && r->U32(&e->recipient) && r->Bytes(e->nonce.data(), e->nonce.size()) &&
         r->Bytes(e->ciphertext.data(), e->ciphertext.size());
}

// Serializes a list of ciphertexts; refuses none (sizes are checked on use).
std::string SerializeEncrypted(uint8_t tag, uint32_t party, const std::vector<EncryptedShares>& shares) {
  ByteWriter w;
  w.Header(tag);
  w.U32(party);
  w.U32(static_cast<uint32_t>(shares.size()));
  for (const EncryptedShares& e : shares) WriteEncryptedEntry(&w, e);
  return w.Take();
}

// Body of ShareKeysMessage and RelayedSharesMessage: party u32 | count u32 |
// entries, where the party is the sender or the recipient.
template <typename M, uint32_t M::*kParty>
Status ReadEncryptedBody(ByteReader* r, M* m) {
  if (!r->U32(&(m->*kParty))) return r->Truncated();
  return r->List(kEncryptedEntryBytes, kSecAggMaxClients, &m->shares, ReadEncryptedEntry);
}

void WriteIndexList(ByteWriter* w, const std::vector<uint32_t>& list) {
  w->U32(static_cast<uint32_t>(list.size()));
  for (uint32_t v : list) w->U32(v);
}

Status ReadIndexList(ByteReader* r, std::vector<uint32_t>* list) {
  return r->List(4, kSecAggMaxClients, list, [](ByteReader* reader, uint32_t* v) { return reader->U32(v); });
}

Status ReadRosterBody(ByteReader* r, RosterMessage* m) {
  if (!r->U32(&m->recipient)) return r->Truncated();
  return r->List(kAdvertiseBodyBytes, kSecAggMaxClients, &m->advertisements, ReadAdvertiseBody);
}

Status ReadMaskedInputBody(ByteReader* r, MaskedInputMessage* m) {
  uint8_t k = 0;
  uint32_t length = 0;
  if (!r->U32(&m->sender) || !r->U8(&k) || !r->U32(&length)) return r->Truncated();
  if (k < 1 || k > 32) {
    return InvalidArgument(std::string(r->what()) + ": bit width " + Str(k) + " is not in 1..32");
  }
  if (length > kSecAggMaxVectorLength) {
    return InvalidArgument(std::string(r->what()) + ": length " + Str(length) + " too large");
  }
  const uint64_t payload = (static_cast<uint64_t>(length) * k + 7) / 8;
  if (r->left() != payload) {
    return InvalidArgument(std::string(r->what()) + ": " + Str(r->left()) + " payload bytes for " +
                           Str(length) + " words of " + Str(k) + " bits, expected " + Str(payload));
  }
  m->bit_width = k;
  m->masked.resize(length);
  const unsigned char* p = nullptr;
  if (!r->View(&p, payload)) return r->Truncated();
  if (k == 32) {
    for (uint32_t i = 0; i < length; ++i) {
      m->masked[i] = static_cast<uint32_t>(p[4 * i]) | static_cast<uint32_t>(p[4 * i + 1]) << 8 |
                     static_cast<uint32_t>(p[4 * i + 2]) << 16 | static_cast<uint32_t>(p[4 * i + 3]) << 24;
    }
    return Status::Ok();
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
    m->masked[i] = static_cast<uint32_t>(buffer) & mask;
    buffer >>= k;
    bits -= k;
  }
  if (next != payload || buffer != 0) {
    return InvalidArgument(std::string(r->what()) + ": nonzero padding bits");
  }
  return Status::Ok();
}

Status ReadUnmaskRequestBody(ByteReader* r, UnmaskRequest* m) {
  RETURN_IF_ERROR(ReadIndexList(r, &m->survivors));
  return ReadIndexList(r, &m->dropped);
}

// owner u32 | kind u8 | share length u16 | share.
Status ReadRevealedShare(ByteReader* r, RevealedShare* s) {
  uint8_t kind = 0;
  uint16_t size = 0;
  const unsigned char* p = nullptr;
  if (!r->U32(&s->owner) || !r->U8(&kind) || !r->U16(&size) || !r->View(&p, size)) return r->Truncated();
  if (kind != static_cast<uint8_t>(ShareKind::kSelfMaskSeed) &&
      kind != static_cast<uint8_t>(ShareKind::kMaskKey)) {
    return InvalidArgument(std::string(r->what()) + ": unknown share kind " + Str(kind));
  }
  s->kind = static_cast<ShareKind>(kind);
  ASSIGN_OR_RETURN(s->share, ShamirShare::Parse(p, size));
  return Status::Ok();
}

Status ReadUnmaskResponseBody(ByteReader* r, UnmaskResponse* m) {
  if (!r->U32(&m->sender)) return r->Truncated();
  return r->List(kRevealedEntryMinBytes, 2 * static_cast<size_t>(kSecAggMaxClients), &m->shares,
                 ReadRevealedShare);
}

}  // namespace

std::string AdvertiseKeysMessage::Serialize() const {
  ByteWriter w;
  w.Header(kTagAdvertise);
  WriteAdvertiseBody(&w, *this);
  return w.Take();
}

StatusOr<AdvertiseKeysMessage> AdvertiseKeysMessage::Parse(std::string_view bytes) {
  return ParseMessage<AdvertiseKeysMessage>(bytes, kTagAdvertise, "AdvertiseKeysMessage", ReadAdvertiseBody);
}

std::string RosterMessage::Serialize() const {
  ByteWriter w;
  w.Header(kTagRoster);
  w.U32(recipient);
  w.U32(static_cast<uint32_t>(advertisements.size()));
  for (const AdvertiseKeysMessage& a : advertisements) WriteAdvertiseBody(&w, a);
  return w.Take();
}

StatusOr<RosterMessage> RosterMessage::Parse(std::string_view bytes) {
  return ParseMessage<RosterMessage>(bytes, kTagRoster, "RosterMessage", ReadRosterBody);
}

std::string ShareKeysMessage::Serialize() const { return SerializeEncrypted(kTagShareKeys, sender, shares); }

StatusOr<ShareKeysMessage> ShareKeysMessage::Parse(std::string_view bytes) {
  return ParseMessage<ShareKeysMessage>(bytes, kTagShareKeys, "ShareKeysMessage",
                                        ReadEncryptedBody<ShareKeysMessage, &ShareKeysMessage::sender>);
}

std::string RelayedSharesMessage::Serialize() const {
  return SerializeEncrypted(kTagRelayed, recipient, shares);
}

StatusOr<RelayedSharesMessage> RelayedSharesMessage::Parse(std::string_view bytes) {
  return ParseMessage<RelayedSharesMessage>(
      bytes, kTagRelayed, "RelayedSharesMessage",
      ReadEncryptedBody<RelayedSharesMessage, &RelayedSharesMessage::recipient>);
}

std::string MaskedInputMessage::Serialize() const {
  ByteWriter w;
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
  return ParseMessage<MaskedInputMessage>(bytes, kTagMasked, "MaskedInputMessage", ReadMaskedInputBody);
}

std::string UnmaskRequest::Serialize() const {
  ByteWriter w;
  w.Header(kTagUnmaskRequest);
  WriteIndexList(&w, survivors);
  WriteIndexList(&w, dropped);
  return w.Take();
}

StatusOr<UnmaskRequest> UnmaskRequest::Parse(std::string_view bytes) {
  return ParseMessage<UnmaskRequest>(bytes, kTagUnmaskRequest, "UnmaskRequest", ReadUnmaskRequestBody);
}

std::string UnmaskResponse::Serialize() const {
  ByteWriter w;
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
  return ParseMessage<UnmaskResponse>(bytes, kTagUnmaskResponse, "UnmaskResponse", ReadUnmaskResponseBody);
}

}  // namespace flotilla::privacy
