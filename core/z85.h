// Z85 (ZeroMQ RFC 32) encoding of binary keys: 4 bytes -> 5 printable
// characters. Used for CURVE keys in files, allowlists and logs.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace flotilla {

// REQUIRES: bytes.size() % 4 == 0.
std::string Z85Encode(const std::vector<unsigned char>& bytes);
// InvalidArgument on a length not a multiple of 5 or a character outside
// the Z85 alphabet.
StatusOr<std::vector<unsigned char>> Z85Decode(const std::string& text);

}  // namespace flotilla
