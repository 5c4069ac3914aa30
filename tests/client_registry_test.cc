// The client registry as a part: registration, counters in the records it
// returns, strikes and pauses, and the population after a restart.
#include "aggregator/client_registry.h"

#include <catch2/catch.hpp>

using namespace flotilla;
using namespace flotilla::aggregator;
using namespace std::chrono_literals;

namespace {

wire::Hello HelloFrom(const std::string& name, int64_t examples) {
  wire::Hello h;
  h.set_client_name(name);
  h.set_num_examples(examples);
  return h;
}

}  // namespace

TEST_CASE("The client registry registers devices and returns their records", "[client_registry]") {
  ClientRegistry registry({3, 30, 600});
  CHECK(registry.Register("key-a", "peer-1", HelloFrom("ward-a", 100), 1000));
  CHECK_FALSE(registry.Register("key-a", "peer-2", HelloFrom("ward-a", 120), 2000));  // a reconnect
  CHECK(registry.at("key-a").peer == "peer-2");
  CHECK(registry.FindByPeer("peer-2") == "key-a");
  CHECK(registry.FindByPeer("peer-1").empty());
  registry.NoteAccepted("key-a");
  registry.NoteRejected("key-a", "norm");
  registry.NoteRejected("key-a", "norm");
  records::ClientRecord r = registry.RecordOf("key-a", 5000);
  CHECK(r.name() == "ward-a");
  CHECK(r.num_examples() == 120);
  CHECK(r.first_seen_unix_ms() == 1000);
  CHECK(r.last_seen_unix_ms() == 5000);
  CHECK(r.updates_accepted() == 1);
  CHECK(r.updates_rejected() == 2);
  CHECK(r.rejected_by_reason().at("norm") == 2);
  // Changed records until written.
  CHECK(registry.Dirty(5000).size() == 1);
  registry.MarkWritten({r});
  CHECK(registry.Dirty(5000).empty());
}

TEST_CASE("Strikes in a row pause a device, doubling up to the maximum", "[client_registry]") {
  ClientRegistry registry({3, 30, 100});
  registry.Register("k", "p", HelloFrom("d", 1), 0);
  const auto t0 = ClientRegistry::Clock::now();
  registry.AddStrike("k", "declined", t0, 0);
  registry.AddStrike("k", "declined", t0, 0);
  CHECK_FALSE(registry.Paused("k", t0));
  registry.AddStrike("k", "declined", t0, 0);  // third in a row: 30 s
  CHECK(registry.Paused("k", t0 + 29s));
  CHECK_FALSE(registry.Paused("k", t0 + 31s));
  CHECK(registry.CountPaused(t0) == 1);
  registry.AddStrike("k", "declined", t0, 0);  // fourth: 60 s
  CHECK(registry.Paused("k", t0 + 59s));
  registry.AddStrike("k", "declined", t0, 0);  // fifth: 120 s, capped at 100
  CHECK(registry.Paused("k", t0 + 99s));
  CHECK_FALSE(registry.Paused("k", t0 + 101s));
  CHECK(registry.RecordOf("k", 0).paused_until_unix_ms() == 100000);
  // An accepted update clears the strikes.
  registry.NoteAccepted("k");
  CHECK(registry.RecordOf("k", 0).strikes() == 0);
  ClientRegistry never({0, 30, 100});
  never.Register("k", "p", HelloFrom("d", 1), 0);
  for (int i = 0; i < 10; ++i) never.AddStrike("k", "declined", t0, 0);
  CHECK_FALSE(never.Paused("k", t0));
}

TEST_CASE("The registry restores the population and pauses after a restart", "[client_registry]") {
  records::ClientRecord paused;
  paused.set_client_id("k1");
  paused.set_name("d1");
  paused.set_updates_accepted(7);
  paused.set_strikes(4);
  paused.set_paused_until_unix_ms(70000);  // 10 s after "now"
  records::ClientRecord fine;
  fine.set_client_id("k2");
  fine.set_paused_until_unix_ms(1000);  // over already
  ClientRegistry registry({3, 30, 600});
  const auto now = ClientRegistry::Clock::now();
  registry.Restore({paused, fine}, now, 60000);
  CHECK(registry.size() == 2);
  CHECK(registry.Paused("k1", now + 9s));
  CHECK_FALSE(registry.Paused("k1", now + 11s));
  CHECK_FALSE(registry.Paused("k2", now));
  CHECK(registry.RecordOf("k1", 60000).updates_accepted() == 7);
  CHECK(registry.at("k1").peer.empty());  // not connected until it speaks
  CHECK(registry.Dirty(60000).empty());
}
