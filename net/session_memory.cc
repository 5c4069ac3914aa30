#include "net/session_memory.h"

#include <dlfcn.h>
#include <sodium.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

namespace flotilla::net {
namespace {

// kUndecided until the first allocation or the switch, then fixed.
enum Mode : int { kUndecided = 0, kGuarded = 1, kPlain = 2 };
std::atomic<int> g_mode{kUndecided};

// The mode, fixed to kGuarded by the first allocation if still undecided.
int Decide() {
  int mode = g_mode.load(std::memory_order_acquire);
  if (mode == kUndecided && g_mode.compare_exchange_strong(mode, kGuarded, std::memory_order_acq_rel))
    return kGuarded;
  return mode;  // (a failed exchange leaves the current mode here)
}

// libsodium's own functions, found past this executable's definitions.
template <typename Fn>
Fn Next(const char* name) {
  void* f = ::dlsym(RTLD_NEXT, name);
  if (f == nullptr) std::abort();  // libsodium is linked: cannot happen
  return reinterpret_cast<Fn>(f);
}
using MallocFn = void* (*)(size_t);
using AllocArrayFn = void* (*)(size_t, size_t);
using FreeFn = void (*)(void*);

// Plain blocks keep their size in front, for zeroing on free.
constexpr size_t kHeader = 16;

void* PlainMalloc(size_t size) {
  if (size > SIZE_MAX - kHeader) return nullptr;
  auto* block = static_cast<unsigned char*>(std::malloc(size + kHeader));
  if (block == nullptr) return nullptr;
  *reinterpret_cast<size_t*>(block) = size;
  return block + kHeader;
}

}  // namespace

bool UsePlainSessionMemory() {
  int expected = kUndecided;
  return g_mode.compare_exchange_strong(expected, kPlain, std::memory_order_acq_rel) || expected == kPlain;
}

bool PlainSessionMemory() { return g_mode.load(std::memory_order_acquire) == kPlain; }

}  // namespace flotilla::net

extern "C" {

void* sodium_malloc(size_t size) {
  using namespace flotilla::net;
  if (Decide() == kPlain) return PlainMalloc(size);
  static const MallocFn next = Next<MallocFn>("sodium_malloc");
  return next(size);
}

void* sodium_allocarray(size_t count, size_t size) {
  using namespace flotilla::net;
  if (Decide() == kPlain) {
    if (count > 0 && size >= SIZE_MAX / count) return nullptr;
    return PlainMalloc(count * size);
  }
  static const AllocArrayFn next = Next<AllocArrayFn>("sodium_allocarray");
  return next(count, size);
}

void sodium_free(void* ptr) {
  using namespace flotilla::net;
  if (ptr == nullptr) return;
  if (Decide() == kPlain) {
    unsigned char* block = static_cast<unsigned char*>(ptr) - kHeader;
    sodium_memzero(ptr, *reinterpret_cast<size_t*>(block));
    std::free(block);
    return;
  }
  static const FreeFn next = Next<FreeFn>("sodium_free");
  next(ptr);
}

}  // extern "C"
