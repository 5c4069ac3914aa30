#include "core/fds.h"

#include <dirent.h>
#include <sys/resource.h>

#include <algorithm>

namespace flotilla {

std::optional<FdUsage> ReadFdUsage() {
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return std::nullopt;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return std::nullopt;
  FdUsage usage;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++usage.open;
  }
  ::closedir(dir);
  if (usage.open > 0) --usage.open;  // the directory's own descriptor
  usage.limit = static_cast<size_t>(limit.rlim_cur);
  usage.reserve = std::clamp<size_t>(usage.limit / 10, 64, 1024);
  return usage;
}

}  // namespace flotilla
