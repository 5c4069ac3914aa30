// Minimal leveled logging to stderr: "2026-11-24T21:59:41.123Z W aggregator: text".
// Thread-safe (one line is written with one call).
#pragma once

#include <sstream>
#include <string>

namespace flotilla {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kOff = 4 };

// Process-wide minimum level; default kInfo, or FLOTILLA_LOG=debug|info|warning|error|off.
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Parses "debug", "info", "warning", "error", "off".
bool ParseLogLevel(const std::string& text, LogLevel* level);

void LogLine(LogLevel level, const char* component, const std::string& message);

}  // namespace flotilla

#define FLOTILLA_LOG(level, component, expr)                                 \
  do {                                                                       \
    if (static_cast<int>(level) >= static_cast<int>(::flotilla::GetLogLevel())) { \
      std::ostringstream _flotilla_log_os;                                   \
      _flotilla_log_os << expr;                                              \
      ::flotilla::LogLine(level, component, _flotilla_log_os.str());         \
    }                                                                        \
  } while (0)

#define LOG_DEBUG(component, expr) FLOTILLA_LOG(::flotilla::LogLevel::kDebug, component, expr)
#define LOG_INFO(component, expr) FLOTILLA_LOG(::flotilla::LogLevel::kInfo, component, expr)
#define LOG_WARN(component, expr) FLOTILLA_LOG(::flotilla::LogLevel::kWarning, component, expr)
#define LOG_ERROR(component, expr) FLOTILLA_LOG(::flotilla::LogLevel::kError, component, expr)
