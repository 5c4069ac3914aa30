// ZapHandler: the ZeroMQ authentication handler (ZAP, RFC 27) that admits
// only clients whose CURVE public key is on the allowlist. It serves
// inproc://zeromq.zap.01 on a thread of its own; start it before the
// aggregator binds. The user id it returns is the client's Z85 public key,
// which the aggregator reads from every message (the "User-Id" property) as
// the client's identity.
//
// Thread-safety: SetAllowed / IsAllowed / counters may be called from any
// thread while the handler runs.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "core/status.h"
#include "net/transport.h"

namespace flotilla::net {

// Parses an allowlist file: one Z85 CURVE public key per line, optionally
// followed by whitespace and a label; a line whose first word is not a key
// and starts with '#' is a comment (Z85 itself uses '#'). A malformed line
// is an error naming the file and line (nothing is half-loaded).
StatusOr<std::set<std::string>> ReadAllowlist(const std::string& path);

class ZapHandler {
 public:
  static StatusOr<std::unique_ptr<ZapHandler>> Start(Context* context, const std::string& domain,
                                                     std::set<std::string> allowed);
  ~ZapHandler();  // stops the thread and closes the socket
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  void SetAllowed(std::set<std::string> allowed);
  bool IsAllowed(const std::string& z85_key) const;
  size_t allowed_count() const;
  uint64_t accepted() const { return accepted_.load(); }
  uint64_t refused() const { return refused_.load(); }

 private:
  ZapHandler(void* socket, std::string domain, std::set<std::string> allowed);
  void Serve();

  void* socket_;
  std::string domain_;
  mutable std::mutex mu_;
  std::set<std::string> allowed_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> accepted_{0}, refused_{0};
  std::thread thread_;
};

}  // namespace flotilla::net
