#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>

#include "cli/commands.h"
#include "cli/config_file.h"

namespace flotilla::cli {
namespace {

bool LooksNumeric(const std::string& v) {
  if (v.empty()) return false;
  char* end = nullptr;
  std::strtod(v.c_str(), &end);
  return end == v.c_str() + v.size();
}

std::string TomlValue(const std::string& v) {
  if (v == "true" || v == "false" || LooksNumeric(v)) return v;
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

// The effective value of every option of `app` (and of its parsed
// subcommands), as TOML: the config file's keys under their sections, then
// the options that only exist as flags.
void PrintSettings(const CLI::App& app) {
  std::map<std::string, std::map<std::string, std::string>> sections;
  std::map<std::string, std::string> flag_only;
  std::vector<const CLI::App*> apps = {&app};
  for (const CLI::App* sub : app.get_subcommands()) apps.push_back(sub);
  for (const CLI::App* a : apps) {
    for (const CLI::Option* o : a->get_options()) {
      if (o->get_lnames().empty() || o->get_group().empty() || o->get_lnames()[0] == "help") continue;
      const std::string flag = "--" + o->get_lnames()[0];
      std::string value;
      if (o->count() > 0) {
        for (const auto& r : o->reduced_results()) value += (value.empty() ? "" : ",") + r;  // the last wins
      } else {
        value = o->get_default_str();
      }
      if (value.empty() && o->get_expected_max() == 0) value = "false";  // an unset flag
      bool mapped = false;
      for (const ConfigKey& k : ConfigKeys()) {
        if (flag != k.flag) continue;
        sections[k.section][k.key] = TomlValue(value);
        mapped = true;
        break;
      }
      if (!mapped) flag_only[o->get_lnames()[0]] = TomlValue(value);
    }
  }
  for (const auto& [section, keys] : sections) {
    std::cout << "[" << section << "]\n";
    for (const auto& [k, v] : keys) std::cout << k << " = " << v << "\n";
    std::cout << "\n";
  }
  std::cout << "# command-line only (not config-file keys)\n";
  for (const auto& [k, v] : flag_only) std::cout << "# --" << k << " = " << v << "\n";
}

}  // namespace

void PrepareApp(CLI::App* app, bool* print_config) {
  app->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app->add_flag("--print-config", *print_config, "Print the effective settings (TOML) and exit")->group("");
}

std::optional<int> Parse(CLI::App* app, int argc, char** argv, const bool* print_config,
                         const FlagOrigins& origins) {
  try {
    app->parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() != 0) {
      // Name the config file and key when the bad value came from there.
      const std::string message = e.what();
      std::string best;
      for (const auto& [flag, origin] : origins) {
        if (message.find(flag) != std::string::npos && flag.size() > best.size()) best = flag;
      }
      if (!best.empty()) {
        std::fprintf(stderr, "error: %s (from %s)\n", message.c_str(), origins.at(best).c_str());
        return e.get_exit_code();
      }
    }
    return app->exit(e);
  }
  if (print_config != nullptr && *print_config) {
    PrintSettings(*app);
    return 0;
  }
  return std::nullopt;
}

}  // namespace flotilla::cli
