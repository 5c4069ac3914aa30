// Wall-clock time for records (round starts, last seen, quarantine times).
// Durations and deadlines use std::chrono::steady_clock instead.
#pragma once

#include <chrono>
#include <cstdint>

namespace flotilla {

// Milliseconds since the Unix epoch, now.
inline int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace flotilla
