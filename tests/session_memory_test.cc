// net/session_memory.h: libsodium's guarded allocator stays in charge once
// it served an allocation; the two kinds of memory are never mixed.
#include "net/session_memory.h"

#include <sodium.h>

#include <catch2/catch.hpp>
#include <cstring>

using namespace flotilla;

TEST_CASE("Session memory: after libsodium's allocator served a block, the switch to plain memory is refused",
          "[net]") {
  REQUIRE(sodium_init() >= 0);
  void* block = sodium_allocarray(4, 16);
  REQUIRE(block != nullptr);
  std::memset(block, 0xA5, 64);
  sodium_free(block);
  CHECK(sodium_allocarray(SIZE_MAX / 2, 4) == nullptr);  // overflow
  // This test process used the guarded allocator: no switch now.
  CHECK_FALSE(net::UsePlainSessionMemory());
  CHECK_FALSE(net::PlainSessionMemory());
  void* again = sodium_malloc(100);
  REQUIRE(again != nullptr);
  sodium_free(again);
  sodium_free(nullptr);
}
