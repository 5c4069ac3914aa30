// Child processes: the simulator's supervisor (a server it kills and
// restarts), and the tests and benchmarks that run the real executables.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace flotilla {

// Starts args[0] (a path) with the given arguments, stdout and stderr
// appended to `output_path` ("/dev/null" to discard). Returns the child's
// pid, or -1 if fork failed; a child whose exec fails exits with 127.
pid_t SpawnProcess(const std::vector<std::string>& args, const std::string& output_path);

// Waits for `pid`: its exit code, or minus the signal that ended it.
int WaitProcess(pid_t pid);

}  // namespace flotilla
