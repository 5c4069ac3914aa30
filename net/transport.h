// ZeroMQ transport: a ROUTER socket for the aggregator, DEALER sockets for
// clients. One Envelope per message. ZeroMQ stays private to this folder.
//
// Security: every socket runs CURVE (encryption and server authentication)
// unless SocketOptions::security is kNone, which exists only for local
// debugging. The aggregator's socket enforces a ZAP domain, so a connection
// is accepted only when a ZapHandler (net/zap.h) is running and approves
// the client's key; with no handler, every connection is refused.
//
// Thread-safety: a Context may be shared; each socket must be used by one
// thread at a time (ZeroMQ sockets are not thread-safe).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"

namespace flotilla::net {

enum class TransportSecurity {
  kCurve,  // the default: encrypted, server and client authenticated
  kNone,   // plaintext, no authentication: local debugging only
};

// CURVE keys are Z85 strings (40 characters).
struct CurveKeys {
  std::string public_key;
  std::string secret_key;
  std::string server_public_key;  // client sockets: the aggregator's key
};

struct SocketOptions {
  // Larger inbound messages make ZeroMQ drop the connection (ZMQ_MAXMSGSIZE).
  int64_t max_message_bytes = int64_t{256} << 20;
  // Queued outbound messages per peer before sends fail (ZMQ_SNDHWM), and
  // inbound messages per peer read ahead of the application (ZMQ_RCVHWM;
  // past it ZeroMQ stops reading that connection, so TCP pushes back).
  int send_high_water_mark = 1000;
  int receive_high_water_mark = 1000;
  // Milliseconds unsent messages are kept after close (ZMQ_LINGER).
  int linger_ms = 0;
  // Client reconnect backoff (ZMQ_RECONNECT_IVL / ZMQ_RECONNECT_IVL_MAX).
  int reconnect_ms = 100;
  int reconnect_max_ms = 5000;
  TransportSecurity security = TransportSecurity::kCurve;
  CurveKeys curve;
  // Client sockets: an explicit ROUTER routing id (ZMQ_ROUTING_ID); empty
  // lets the aggregator assign one. Identity never comes from it.
  std::string routing_id;
  // The ZAP domain the aggregator's socket enforces.
  std::string zap_domain = "flotilla";
  // Server sockets: connections the kernel queues before ZeroMQ accepts
  // them (ZMQ_BACKLOG; the kernel caps it at net.core.somaxconn). ZeroMQ's
  // default of 100 drops the SYNs of a burst of check-ins, and each
  // dropped device waits out TCP's retransmission (1, 3, 7, 15 s).
  int listen_backlog = 4096;
};

// Owns a ZeroMQ context (I/O threads). Sockets must be closed before it.
class Context {
 public:
  explicit Context(int io_threads = 1);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  void* raw() const { return ctx_; }

 private:
  void* ctx_;
};

struct Incoming {
  std::string peer;     // ROUTER routing id: where to send a reply
  std::string user_id;  // transport-authenticated identity ("" without CURVE)
  std::string payload;
};

// The aggregator's socket.
class ServerSocket {
 public:
  ServerSocket(const ServerSocket&) = delete;
  ServerSocket& operator=(const ServerSocket&) = delete;
  // Binds `endpoint` (e.g. "tcp://127.0.0.1:5555" or "tcp://127.0.0.1:*").
  static StatusOr<std::unique_ptr<ServerSocket>> Bind(Context* context, const std::string& endpoint,
                                                      const SocketOptions& options);
  ~ServerSocket();

  // The endpoint actually bound (with the chosen port for ":*").
  const std::string& endpoint() const { return endpoint_; }

  // Waits up to `timeout` for one well-formed message. Returns nullopt on
  // timeout. Messages that do not have exactly one payload frame are dropped
  // (and counted in dropped_messages()); they never reach the caller.
  StatusOr<std::optional<Incoming>> Receive(std::chrono::milliseconds timeout);
  // Sends without blocking. Unavailable when the peer is gone or its queue
  // is full; the caller decides whether that matters. The payload's bytes
  // count towards QueuedBytes(tag) until ZeroMQ has handed them to the
  // connection (or dropped them), so the caller can bound what one device
  // that does not read may hold in the aggregator's memory.
  Status Send(const std::string& peer, std::string payload, const std::string& tag = std::string());
  // Bytes sent with `tag` that ZeroMQ still holds in its queues.
  int64_t QueuedBytes(const std::string& tag) const;
  // Bytes still queued across all tags.
  int64_t TotalQueuedBytes() const { return total_queued_->load(); }

  uint64_t dropped_messages() const { return dropped_; }

 private:
  ServerSocket(void* socket, std::string endpoint);
  void* socket_;
  std::string endpoint_;
  uint64_t dropped_ = 0;
  // Per-tag counters, decremented from ZeroMQ's I/O thread when it releases
  // a message; entries at zero are dropped as the map grows.
  std::unordered_map<std::string, std::shared_ptr<std::atomic<int64_t>>> queued_;
  std::shared_ptr<std::atomic<int64_t>> total_queued_ = std::make_shared<std::atomic<int64_t>>(0);
};

// A client's socket. ZeroMQ connects in the background and reconnects with
// backoff; messages sent before the server is up are queued.
class ClientSocket {
 public:
  ClientSocket(const ClientSocket&) = delete;
  ClientSocket& operator=(const ClientSocket&) = delete;
  static StatusOr<std::unique_ptr<ClientSocket>> Connect(Context* context, const std::string& endpoint,
                                                         const SocketOptions& options);
  ~ClientSocket();

  Status Send(const std::string& payload);
  // Waits up to `timeout`; nullopt on timeout.
  StatusOr<std::optional<std::string>> Receive(std::chrono::milliseconds timeout);

  void* raw() const { return socket_; }

 private:
  explicit ClientSocket(void* socket) : socket_(socket) {}
  void* socket_;
};

// Waits until at least one socket is readable or `timeout` passes; returns
// the indices of the readable ones (empty on timeout).
StatusOr<std::vector<size_t>> PollReadable(const std::vector<ClientSocket*>& sockets,
                                           std::chrono::milliseconds timeout);

}  // namespace flotilla::net
