#include "core/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace flotilla {
namespace {

LogLevel InitialLevel() {
  LogLevel level = LogLevel::kInfo;
  if (const char* env = std::getenv("FLOTILLA_LOG")) ParseLogLevel(env, &level);
  return level;
}

std::atomic<int>& LevelStorage() {
  static std::atomic<int> level{static_cast<int>(InitialLevel())};
  return level;
}

}  // namespace

void SetLogLevel(LogLevel level) { LevelStorage().store(static_cast<int>(level)); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(LevelStorage().load()); }

bool ParseLogLevel(const std::string& text, LogLevel* level) {
  if (text == "debug")
    *level = LogLevel::kDebug;
  else if (text == "info")
    *level = LogLevel::kInfo;
  else if (text == "warning" || text == "warn")
    *level = LogLevel::kWarning;
  else if (text == "error")
    *level = LogLevel::kError;
  else if (text == "off")
    *level = LogLevel::kOff;
  else
    return false;
  return true;
}

void LogLine(LogLevel level, const char* component, const std::string& message) {
  static const char kLetters[] = {'D', 'I', 'W', 'E'};
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const int millis = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  std::fprintf(stderr, "%s.%03dZ %c %s: %s\n", stamp, millis, kLetters[static_cast<int>(level) & 3],
               component, message.c_str());
}

bool LogLimiter::Allow(const std::string& key, Clock::time_point now, uint64_t* suppressed) {
  auto [it, inserted] = entries_.try_emplace(key);
  Entry& e = it->second;
  if (!inserted && now - e.last < interval_) {
    ++e.held;
    return false;
  }
  *suppressed = e.held;
  e.held = 0;
  e.last = now;
  if (entries_.size() > 10000) {
    // Forget keys quiet for a whole interval with nothing held back.
    for (auto i = entries_.begin(); i != entries_.end();) {
      i = (i->second.held == 0 && now - i->second.last >= interval_ && i != it) ? entries_.erase(i)
                                                                                : std::next(i);
    }
  }
  return true;
}

}  // namespace flotilla
