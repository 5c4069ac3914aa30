#include "core/z85.h"

#include <cstdint>

namespace flotilla {
namespace {

constexpr char kAlphabet[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

int DecodeChar(char c) {
  for (int i = 0; i < 85; ++i) {
    if (kAlphabet[i] == c) return i;
  }
  return -1;
}

}  // namespace

std::string Z85Encode(const std::vector<unsigned char>& bytes) {
  std::string out;
  out.reserve(bytes.size() / 4 * 5);
  for (size_t i = 0; i + 4 <= bytes.size(); i += 4) {
    uint32_t value = (uint32_t{bytes[i]} << 24) | (uint32_t{bytes[i + 1]} << 16) |
                     (uint32_t{bytes[i + 2]} << 8) | uint32_t{bytes[i + 3]};
    char chunk[5];
    for (int j = 4; j >= 0; --j) {
      chunk[j] = kAlphabet[value % 85];
      value /= 85;
    }
    out.append(chunk, 5);
  }
  return out;
}

StatusOr<std::vector<unsigned char>> Z85Decode(const std::string& text) {
  if (text.size() % 5 != 0) {
    return InvalidArgument("Z85 text length " + std::to_string(text.size()) + " is not a multiple of 5");
  }
  std::vector<unsigned char> out;
  out.reserve(text.size() / 5 * 4);
  for (size_t i = 0; i < text.size(); i += 5) {
    uint64_t value = 0;
    for (size_t j = 0; j < 5; ++j) {
      const int d = DecodeChar(text[i + j]);
      if (d < 0) return InvalidArgument("invalid Z85 character at position " + std::to_string(i + j));
      value = value * 85 + static_cast<uint64_t>(d);
    }
    if (value > 0xffffffffULL) return InvalidArgument("Z85 group overflows at position " + std::to_string(i));
    for (int k = 3; k >= 0; --k) out.push_back(static_cast<unsigned char>((value >> (8 * k)) & 0xff));
  }
  return out;
}

}  // namespace flotilla
