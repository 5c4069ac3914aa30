// Leveled logging, one line per event, to stderr or a file:
//   text: "2026-11-24T21:59:41.123Z W aggregator: text [round=3 device=ab12cd34ef56]"
//   json: {"ts":"2026-11-24T21:59:41.123Z","level":"warning","component":"aggregator",
//          "msg":"text","round":3,"device":"ab12cd34ef56"}
// Structured fields come from ScopedLogFields on the writing thread.
// Thread-safe (one line is written with one call).
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace flotilla {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kOff = 4 };

// Process-wide minimum level; default kInfo, or FLOTILLA_LOG=debug|info|warning|error|off.
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Parses "debug", "info", "warning", "error", "off".
bool ParseLogLevel(const std::string& text, LogLevel* level);

enum class LogFormat { kText, kJson };
void SetLogFormat(LogFormat format);
// Parses "text", "json".
bool ParseLogFormat(const std::string& text, LogFormat* format);
// Appends every line to `path` instead of stderr (created when missing;
// "" goes back to stderr).
// False, leaving stderr, when it cannot be opened; *error then says why.
bool SetLogFile(const std::string& path, std::string* error);

void LogLine(LogLevel level, const char* component, const std::string& message);

// Fields added to every line this thread writes while the object lives
// (inner scopes add to, or override, outer ones): the round, a device's
// key prefix. Values that are whole numbers are JSON numbers.
class ScopedLogFields {
 public:
  ScopedLogFields(std::initializer_list<std::pair<const char*, std::string>> fields);
  ~ScopedLogFields();
  ScopedLogFields(const ScopedLogFields&) = delete;
  ScopedLogFields& operator=(const ScopedLogFields&) = delete;

 private:
  size_t added_ = 0;
};

// Lets one log line per key through per interval and counts the others, so
// a flood of the same event (one device's rejected messages) writes one
// line with a count instead of thousands. Not thread-safe.
class LogLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  explicit LogLimiter(Clock::duration interval = std::chrono::seconds(10)) : interval_(interval) {}

  // True when a line for `key` may be written at `now`; then *suppressed is
  // how many were held back since the previous line for it.
  bool Allow(const std::string& key, Clock::time_point now, uint64_t* suppressed);

 private:
  struct Entry {
    Clock::time_point last;
    uint64_t held = 0;
  };
  Clock::duration interval_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace flotilla

#define FLOTILLA_LOG(level, component, expr)                                      \
  do {                                                                            \
    if (static_cast<int>(level) >= static_cast<int>(::flotilla::GetLogLevel())) { \
      std::ostringstream _flotilla_log_os;                                        \
      _flotilla_log_os << expr;                                                   \
      ::flotilla::LogLine(level, component, _flotilla_log_os.str());              \
    }                                                                             \
  } while (0)

#define LOG_DEBUG(component, expr) FLOTILLA_LOG(::flotilla::LogLevel::kDebug, component, expr)
#define LOG_INFO(component, expr) FLOTILLA_LOG(::flotilla::LogLevel::kInfo, component, expr)
#define LOG_WARN(component, expr) FLOTILLA_LOG(::flotilla::LogLevel::kWarning, component, expr)
#define LOG_ERROR(component, expr) FLOTILLA_LOG(::flotilla::LogLevel::kError, component, expr)
