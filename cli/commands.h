// The `flotilla` command's subcommands, each a function over its own
// arguments (argv[0] is the subcommand's name), returning the exit code.
// The dispatcher (cli/flotilla_main.cc) adds the settings of a --config
// file before the user's flags; flags given on the command line override
// the file because every option keeps its last value.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>

namespace flotilla::cli {

int AggregatorMain(int argc, char** argv);
int ClientMain(int argc, char** argv);
int SimMain(int argc, char** argv);
int KeygenMain(int argc, char** argv);
int RegistryMain(int argc, char** argv);
int DpMain(int argc, char** argv);

// For commands that take a config file: options keep their last value, and
// a hidden --print-config sets *print_config. Call before adding options.
void PrepareApp(CLI::App* app, bool* print_config);

// Parses `argv` into `app`. On an error, prints it (naming the config file
// and key when the value came from the file) and returns the exit code;
// with --print-config, prints the settings and returns 0; else nullopt.
std::optional<int> Parse(CLI::App* app, int argc, char** argv, const bool* print_config);

}  // namespace flotilla::cli
