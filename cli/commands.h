// The `flotilla` command's subcommands, each a function over its own
// arguments (argv[0] is the subcommand's name), returning the exit code.
// The dispatcher (cli/flotilla_main.cc) adds the settings of a --config
// file before the user's flags; flags given on the command line override
// the file because every option keeps its last value.
#pragma once

#include <CLI/CLI.hpp>
#include <map>
#include <optional>
#include <string>

namespace flotilla::cli {

// Where each flag that a config file gave came from ("--rounds" ->
// "examples/federation.toml: [round] rounds"), for error messages.
using FlagOrigins = std::map<std::string, std::string>;

int AggregatorMain(int argc, char** argv, const FlagOrigins& origins);
int ClientMain(int argc, char** argv, const FlagOrigins& origins);
int SimMain(int argc, char** argv, const FlagOrigins& origins);
int KeygenMain(int argc, char** argv, const FlagOrigins& origins);
int RegistryMain(int argc, char** argv, const FlagOrigins& origins);
int DpMain(int argc, char** argv, const FlagOrigins& origins);
int ReportMain(int argc, char** argv, const FlagOrigins& origins);

// For commands that take a config file: options keep their last value, and
// a hidden --print-config sets *print_config. Call before adding options.
void PrepareApp(CLI::App* app, bool* print_config);

// Parses `argv` into `app`. On an error, prints it (naming the config file
// and key when the value came from the file) and returns the exit code;
// with --print-config, prints the settings and returns 0; else nullopt.
std::optional<int> Parse(CLI::App* app, int argc, char** argv, const bool* print_config,
                         const FlagOrigins& origins);

}  // namespace flotilla::cli
