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

// A duration of the steady clock from seconds (a config value).
inline std::chrono::steady_clock::duration SecondsOf(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}

}  // namespace flotilla
