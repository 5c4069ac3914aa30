// Values that carry their own checksum. RocksDB verifies a CRC32C of every
// block and blob it reads; Debian's build computes it in software (it is
// built portable, without SSE4.2), which made reading a round's updates
// back three times slower than everything else the merge does. Families
// listed in StoreOptions::self_checked_families are read without RocksDB's
// verification, and their values are sealed instead: a magic, then an
// XXH3-64 of the payload (libxxhash, over ten times faster), checked by
// Unseal on every read.
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace flotilla::storage {

// magic "FXH1" + 8-byte little-endian XXH3-64 of `payload` + `payload`.
std::string Seal(std::string_view payload);

// The payload of a sealed value: DataLoss when its hash does not match (a
// value corrupted on disk). A value without the magic (written before
// sealing) is returned whole.
StatusOr<std::string_view> Unseal(std::string_view value);

}  // namespace flotilla::storage
