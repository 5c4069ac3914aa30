#include "storage/sealed_value.h"

#include <xxhash.h>

#include <cstdint>

namespace flotilla::storage {
namespace {

constexpr std::string_view kMagic("FXH1", 4);
constexpr size_t kHeader = 4 + 8;

}  // namespace

std::string Seal(std::string_view payload) {
  const uint64_t h = XXH3_64bits(payload.data(), payload.size());
  std::string out;
  out.reserve(kHeader + payload.size());
  out.append(kMagic);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((h >> (8 * i)) & 0xff));
  out.append(payload);
  return out;
}

StatusOr<std::string_view> Unseal(std::string_view value) {
  if (value.size() < kHeader || value.substr(0, 4) != kMagic) return value;
  uint64_t want = 0;
  for (int i = 0; i < 8; ++i)
    want |= static_cast<uint64_t>(static_cast<unsigned char>(value[4 + i])) << (8 * i);
  const std::string_view payload = value.substr(kHeader);
  if (XXH3_64bits(payload.data(), payload.size()) != want) {
    return DataLoss("stored value fails its checksum (corrupted on disk)");
  }
  return payload;
}

}  // namespace flotilla::storage
