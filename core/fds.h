// File descriptors: every connection an aggregator holds costs one, and its
// store must still open its next write-ahead log or table file. These
// helpers tell a server how many more it may take.
#pragma once

#include <cstddef>
#include <optional>

namespace flotilla {

struct FdUsage {
  size_t open = 0;   // descriptors open now
  size_t limit = 0;  // the soft RLIMIT_NOFILE
  // Kept back for files the process must still open (a tenth of the limit,
  // at least 64, at most 1,024).
  size_t reserve = 0;
  // How many more connections fit before the reserve: 0 at the limit.
  size_t headroom() const { return open + reserve >= limit ? 0 : limit - reserve - open; }
};

// Counts /proc/self/fd against the soft limit; nullopt where that cannot be
// read (no /proc) or there is no limit.
std::optional<FdUsage> ReadFdUsage();

}  // namespace flotilla
