// Where ZeroMQ keeps each CURVE session's keys and nonces.
//
// libzmq allocates them with libsodium's guarded allocator (sodium_malloc):
// every allocation is its own mapping with guard pages, locked in memory,
// so it costs mmap, mprotect, mlock and madvise calls, and freeing it
// munmap and mprotect, each with a TLB shootdown on every core. That is
// right for a real device or aggregator. A simulator opens thousands of
// sessions a second for virtual devices whose keys are derived from the
// seed: there it spent about a quarter of the machine's time in those calls
// (`perf record` of 1,000 check-ins per round, docs/results.md).
//
// UsePlainSessionMemory() switches this process to heap memory that is
// zeroed when freed (sodium_memzero): no guard pages, no mlock. The
// `flotilla sim` commands call it first; the aggregator and device commands
// never do. It works by defining sodium_malloc, sodium_allocarray and
// sodium_free in the executable, which the dynamic linker prefers to
// libsodium's; until the switch they forward to libsodium's own.
#pragma once

namespace flotilla::net {

// True when this process now uses plain memory for session state; false
// (and nothing changes) once libsodium's allocator has served an
// allocation, so the two kinds are never mixed.
bool UsePlainSessionMemory();

// Whether UsePlainSessionMemory() took effect (reported by the simulator).
bool PlainSessionMemory();

}  // namespace flotilla::net
