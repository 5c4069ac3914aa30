// The TOML config file shared by the roles of a federation (aggregator,
// devices, simulator): sections [federation], [round], [validation],
// [limits], [dp], [secagg], [keys], [data], [sim], [log], each key mapped to
// the command-line flag of every role that takes it. docs/configuration.md
// lists every key with its default; a test keeps the two in step.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/status.h"

namespace flotilla::cli {

struct ConfigKey {
  const char* section;
  const char* key;
  const char* role;  // "aggregator", "sim", "client" or "client run"
  const char* flag;  // e.g. "--epochs"
};

// Every key, for every role that takes it.
const std::vector<ConfigKey>& ConfigKeys();

// The flags `role` gets from the file at `path` (values as --flag=value, in
// file order), and for each flag where it came from ("[round] epochs in
// FILE"). Keys of other roles are skipped; an unknown section or key, or a
// file that does not parse, is InvalidArgument naming the file, the key and
// what is allowed.
struct ConfigFlags {
  std::vector<std::string> flags;
  std::map<std::string, std::string> origin;  // flag -> "[section] key in FILE"
};
StatusOr<ConfigFlags> ReadConfigFlags(const std::string& path, const std::string& role);

}  // namespace flotilla::cli
