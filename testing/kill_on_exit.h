// A spawned child (core/subprocess.h) that a test must not leave running:
// killed (SIGKILL) and reaped when the guard goes out of scope, as when a
// REQUIRE leaves the test early, unless the test already waited for it
// (done = true).
#pragma once

#include <signal.h>
#include <sys/types.h>

#include "core/subprocess.h"

namespace flotilla::testing {

struct KillOnExit {
  pid_t pid;
  bool done = false;
  ~KillOnExit() {
    if (!done) {
      ::kill(pid, SIGKILL);
      WaitProcess(pid);
    }
  }
};

}  // namespace flotilla::testing
