// The logging flags every long-running command takes (--log, --log-format,
// --log-file; [log] level, format, file). Header-only, like cli/flags.h.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "core/log.h"

namespace flotilla::cli {

struct LogFlags {
  std::string level = "info";
  std::string format = "text";
  std::string file;
};

inline void AddLogFlags(CLI::App* app, LogFlags* f) {
  app->add_option("--log", f->level, "Log level: debug, info, warning, error")
      ->capture_default_str()
      ->check(CLI::IsMember({"debug", "info", "warning", "warn", "error", "off"}));
  app->add_option(
         "--log-format", f->format,
         "Log lines as text (for a terminal) or json (one object per line, with round and device fields)")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  app->add_option("--log-file", f->file, "Append log lines to this file instead of stderr")
      ->capture_default_str();
}

// Applies the flags; false after printing what is wrong (exit with 2).
inline bool ApplyLogFlags(const LogFlags& f, const char* command) {
  LogLevel level;
  LogFormat format;
  if (!ParseLogLevel(f.level, &level) || !ParseLogFormat(f.format, &format)) {
    std::fprintf(stderr, "%s: unknown --log level '%s' or --log-format '%s'\n", command, f.level.c_str(),
                 f.format.c_str());
    return false;
  }
  SetLogLevel(level);
  SetLogFormat(format);
  if (!f.file.empty()) {
    std::string error;
    if (!SetLogFile(f.file, &error)) {
      std::fprintf(stderr, "%s: %s\n", command, error.c_str());
      return false;
    }
  }
  return true;
}

}  // namespace flotilla::cli
