// Private to privacy/secagg_*.cc: the little-endian byte writer and reader of
// the SecAgg wire formats, and ParseMessage, the one parse path of every message.
// Thread-safety: ByteWriter and ByteReader are values, one per thread; free functions are safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace flotilla::privacy::secagg_internal {

// Second byte of every message.
inline constexpr uint8_t kWireVersion = 1;

// First byte of every message; all here so that they stay distinct.
inline constexpr uint8_t kTagParams = 0x50;
inline constexpr uint8_t kTagAdvertise = 0x41;
inline constexpr uint8_t kTagRoster = 0x52;
inline constexpr uint8_t kTagShareKeys = 0x53;
inline constexpr uint8_t kTagRelayed = 0x54;
inline constexpr uint8_t kTagMasked = 0x4d;
inline constexpr uint8_t kTagUnmaskRequest = 0x55;
inline constexpr uint8_t kTagUnmaskResponse = 0x56;

// 2^k - 1: the words of Z_{2^k}.
inline uint32_t LowMask(uint32_t bit_width) {
  return bit_width >= 32 ? 0xffffffffu : ((uint32_t{1} << bit_width) - 1);
}

// Decimal, for error messages.
inline std::string Str(uint64_t v) { return std::to_string(v); }

// Appends little-endian integers and raw bytes to a string.
class ByteWriter {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U16(uint16_t v) { Le(v, 2); }
  void U32(uint32_t v) { Le(v, 4); }
  void U64(uint64_t v) { Le(v, 8); }
  void Bytes(const unsigned char* data, size_t size) {
    out_.append(reinterpret_cast<const char*>(data), size);
  }
  // Tag byte and kWireVersion.
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
// bool method returns false (and reads nothing) when too few bytes remain.
// `what` names the message in the errors of the Status methods.
class ByteReader {
 public:
  ByteReader(std::string_view bytes, const char* what)
      : p_(reinterpret_cast<const unsigned char*>(bytes.data())), left_(bytes.size()), what_(what) {}
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
  const char* what() const { return what_; }

  // InvalidArgument "<what>: truncated or malformed".
  Status Truncated() const;
  // OK for true, Truncated() for false; a Status passes through. Lets the
  // callbacks below be bool readers or Status-returning checks.
  Status Check(bool ok) const { return ok ? Status::Ok() : Truncated(); }
  Status Check(Status status) const { return status; }

  // Reads a u32 count and refuses it unless count <= max_count and `count`
  // entries of at least `min_entry` bytes fit in what is left (so the list
  // may be allocated safely), then reads each entry with
  // read_entry(this, &entry), which returns bool or Status.
  template <typename T, typename ReadEntry>
  Status List(size_t min_entry, size_t max_count, std::vector<T>* list, ReadEntry read_entry) {
    uint32_t count = 0;
    if (!U32(&count)) return Truncated();
    if (count > max_count || static_cast<uint64_t>(count) * min_entry > left_) {
      return InvalidArgument(std::string(what_) + ": count " + Str(count) + " does not fit the message");
    }
    list->resize(count);
    for (T& entry : *list) RETURN_IF_ERROR(Check(read_entry(this, &entry)));
    return Status::Ok();
  }

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
  const char* what_;
};

// OK when the reader starts with `tag` and kWireVersion (consumed);
// InvalidArgument naming the message otherwise.
Status ReadHeader(ByteReader* r, uint8_t tag);
// OK when nothing is left; InvalidArgument counting the trailing bytes.
Status ExpectEnd(const ByteReader& r);

// Parses exactly one message of type `Message`: checks the header (`tag`,
// version), reads the body with read_body(&reader, &message) (bool, false
// meaning truncated, or Status; counted lists through ByteReader::List), then
// refuses trailing bytes. `what` names the message in every error.
template <typename Message, typename ReadBody>
StatusOr<Message> ParseMessage(std::string_view bytes, uint8_t tag, const char* what, ReadBody read_body) {
  ByteReader r(bytes, what);
  RETURN_IF_ERROR(ReadHeader(&r, tag));
  Message m;
  RETURN_IF_ERROR(r.Check(read_body(&r, &m)));
  RETURN_IF_ERROR(ExpectEnd(r));
  return m;
}

}  // namespace flotilla::privacy::secagg_internal
