// flotilla: one command for every job. Thin: picks the subcommand, adds the
// settings of a --config file before the user's flags (which override
// them), and runs the subcommand. See docs/configuration.md.
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/config_file.h"

namespace {

constexpr char kUsage[] =
    "Flotilla: federated learning for fleets of edge devices.\n"
    "\n"
    "usage: flotilla SUBCOMMAND [--config FILE] [flags...]     (flotilla SUBCOMMAND --help for its flags)\n"
    "\n"
    "subcommands:\n"
    "  aggregator   serve a federation: rounds, validation, signed models, the store\n"
    "  client       one device: run (the daemon) | pull | predict | status\n"
    "  sim          a simulated federation (N devices over the real wire), or its central baseline\n"
    "  keygen       CURVE and model-signing keys, allowlists, enrolment certificates\n"
    "  registry     stored models, rounds, the privacy ledger, devices, quarantine\n"
    "  dp           the privacy accountant: epsilon for a plan, or the noise for a target epsilon\n"
    "  report       one HTML page with plots of a run (or several overlaid): a simulator's directory or a "
    "store\n"
    "  config show  the effective settings of a role, merged from --config FILE and flags\n"
    "\n"
    "--config FILE: a TOML file shared by the aggregator, the devices and the simulator\n"
    "(sections [federation], [model], [round], [validation], [limits], [dp], [secagg], [keys], [data], "
    "[sim], [device], [log]);\n"
    "flags given on the command line override it. Every key: docs/configuration.md.\n";

struct Command {
  const char* name;
  int (*run)(int, char**, const flotilla::cli::FlagOrigins&);
};

const Command kCommands[] = {
    {"aggregator", flotilla::cli::AggregatorMain},
    {"client", flotilla::cli::ClientMain},
    {"sim", flotilla::cli::SimMain},
    {"keygen", flotilla::cli::KeygenMain},
    {"registry", flotilla::cli::RegistryMain},
    {"dp", flotilla::cli::DpMain},
    {"report", flotilla::cli::ReportMain},
};

// Runs `run` with argv = [name, config flags..., args...]; the config's
// flags for "client run" go right after the "run" (or "train") subcommand.
int RunWithConfig(const std::string& name, int (*run)(int, char**, const flotilla::cli::FlagOrigins&),
                  std::vector<std::string> args, const std::string& config_path, const std::string& role) {
  std::vector<std::string> full = {"flotilla " + name};
  flotilla::cli::FlagOrigins origins;
  if (!config_path.empty()) {
    auto flags = flotilla::cli::ReadConfigFlags(config_path, role);
    if (!flags.ok()) {
      std::fprintf(stderr, "flotilla %s: %s\n", name.c_str(), std::string(flags.status().message()).c_str());
      return 2;
    }
    origins = flags->origin;
    full.insert(full.end(), flags->flags.begin(), flags->flags.end());
    if (role == "client") {
      auto train_flags = flotilla::cli::ReadConfigFlags(config_path, "client run");
      // `client run` (alias `client train`) takes the device's keys.
      auto train = std::find_if(args.begin(), args.end(),
                                [](const std::string& a) { return a == "run" || a == "train"; });
      if (train_flags.ok() && train != args.end()) {
        origins.insert(train_flags->origin.begin(), train_flags->origin.end());
        args.insert(train + 1, train_flags->flags.begin(), train_flags->flags.end());
      }
    }
  }
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  return run(static_cast<int>(full.size()), argv.data(), origins);
}

}  // namespace

// Simulated fleets and busy aggregators hold a socket per connected device
// (and ZeroMQ a few descriptors per socket): lift the soft limit on open
// files to the hard one (and the hard one too, where we may).
void RaiseOpenFileLimit() {
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  struct rlimit wanted = limit;
  wanted.rlim_max = std::max<rlim_t>(limit.rlim_max, 1 << 20);
  wanted.rlim_cur = wanted.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &wanted) == 0) return;
  wanted.rlim_max = limit.rlim_max;
  wanted.rlim_cur = limit.rlim_max;
  (void)::setrlimit(RLIMIT_NOFILE, &wanted);
}

int main(int argc, char** argv) {
  RaiseOpenFileLimit();
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  // --config FILE (or --config=FILE), anywhere after the subcommand.
  std::string config_path, role = name;
  std::vector<std::string> args;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      config_path = a.substr(9);
    } else if (name == "config" && a == "--role" && i + 1 < argc) {
      role = argv[++i];
    } else {
      args.push_back(a);
    }
  }
  if (name == "config") {
    if (args.empty() || args[0] != "show" ||
        (role != "config" && role != "aggregator" && role != "client" && role != "sim")) {
      std::fputs(
          "usage: flotilla config show --config FILE [--role aggregator|client|sim] [flags...]\n"
          "prints the effective settings of that role (default: aggregator), merged from the file and the "
          "flags\n",
          stderr);
      return 2;
    }
    if (role == "config") role = "aggregator";
    args.erase(args.begin());
    args.insert(args.begin(), "--print-config");
    if (role == "client") args.push_back("train");
    for (const Command& c : kCommands) {
      if (role == c.name) return RunWithConfig(role, c.run, args, config_path, role);
    }
  }
  for (const Command& c : kCommands) {
    if (name == c.name) {
      if (!config_path.empty() && name != "aggregator" && name != "client" && name != "sim") {
        std::fprintf(stderr, "flotilla %s takes no --config\n", name.c_str());
        return 2;
      }
      return RunWithConfig(name, c.run, args, config_path, role);
    }
  }
  std::fprintf(stderr, "flotilla: unknown subcommand '%s'\n\n%s", name.c_str(), kUsage);
  return 2;
}
