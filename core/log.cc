#include "core/log.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <vector>

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

namespace {

std::atomic<int> g_format{static_cast<int>(LogFormat::kText)};
std::mutex g_file_mu;
std::FILE* g_file = nullptr;  // null: stderr
thread_local std::vector<std::pair<std::string, std::string>> t_fields;

void JsonString(const std::string& in, std::string* out) {
  static const char kHex[] = "0123456789abcdef";
  *out += '"';
  for (unsigned char c : in) {
    if (c == '"' || c == '\\') {
      *out += '\\';
      *out += static_cast<char>(c);
    } else if (c == '\n') {
      *out += "\\n";
    } else if (c < 0x20) {
      *out += "\\u00";
      *out += kHex[c >> 4];
      *out += kHex[c & 15];
    } else {
      *out += static_cast<char>(c);
    }
  }
  *out += '"';
}

bool WholeNumber(const std::string& v) {
  return !v.empty() && v.size() < 16 && v.find_first_not_of("0123456789") == std::string::npos &&
         (v.size() == 1 || v[0] != '0');
}

}  // namespace

void SetLogFormat(LogFormat format) { g_format.store(static_cast<int>(format)); }

bool ParseLogFormat(const std::string& text, LogFormat* format) {
  if (text == "text") {
    *format = LogFormat::kText;
  } else if (text == "json") {
    *format = LogFormat::kJson;
  } else {
    return false;
  }
  return true;
}

bool SetLogFile(const std::string& path, std::string* error) {
  if (path.empty()) {
    std::lock_guard<std::mutex> lock(g_file_mu);
    if (g_file != nullptr) std::fclose(g_file);
    g_file = nullptr;
    return true;
  }
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) {
    *error = "cannot open log file " + path + ": " + std::strerror(errno);
    return false;
  }
  std::setvbuf(f, nullptr, _IOLBF, 0);
  std::lock_guard<std::mutex> lock(g_file_mu);
  if (g_file != nullptr) std::fclose(g_file);
  g_file = f;
  return true;
}

ScopedLogFields::ScopedLogFields(std::initializer_list<std::pair<const char*, std::string>> fields) {
  for (const auto& [k, v] : fields) t_fields.emplace_back(k, v);
  added_ = fields.size();
}

ScopedLogFields::~ScopedLogFields() { t_fields.resize(t_fields.size() - added_); }

void LogLine(LogLevel level, const char* component, const std::string& message) {
  static const char kLetters[] = {'D', 'I', 'W', 'E'};
  static const char* const kNames[] = {"debug", "info", "warning", "error"};
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const int millis = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[40];
  const size_t n = std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(stamp + n, sizeof(stamp) - n, ".%03dZ", millis);
  // Later fields override earlier ones of the same name.
  std::vector<std::pair<std::string, std::string>> fields;
  for (const auto& f : t_fields) {
    bool replaced = false;
    for (auto& g : fields) {
      if (g.first == f.first) {
        g.second = f.second;
        replaced = true;
      }
    }
    if (!replaced) fields.push_back(f);
  }
  std::string line;
  const int l = static_cast<int>(level) & 3;
  if (static_cast<LogFormat>(g_format.load()) == LogFormat::kJson) {
    line = "{\"ts\":\"" + std::string(stamp) + "\",\"level\":\"" + kNames[l] + "\",\"component\":";
    JsonString(component, &line);
    line += ",\"msg\":";
    JsonString(message, &line);
    for (const auto& [k, v] : fields) {
      line += ',';
      JsonString(k, &line);
      line += ':';
      if (WholeNumber(v)) {
        line += v;
      } else {
        JsonString(v, &line);
      }
    }
    line += "}\n";
  } else {
    line = std::string(stamp) + ' ' + kLetters[l] + ' ' + component + ": " + message;
    if (!fields.empty()) {
      line += " [";
      for (size_t i = 0; i < fields.size(); ++i) {
        if (i > 0) line += ' ';
        line += fields[i].first + '=' + fields[i].second;
      }
      line += ']';
    }
    line += '\n';
  }
  std::lock_guard<std::mutex> lock(g_file_mu);
  std::fwrite(line.data(), 1, line.size(), g_file != nullptr ? g_file : stderr);
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
