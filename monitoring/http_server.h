// The aggregator's HTTP endpoint for operators: the live dashboard (/, its
// data at /api/state), Prometheus metrics (/metrics), liveness and readiness
// probes (/healthz, /readyz). It runs
// cpp-httplib on its own threads (a small fixed pool), so a flood of
// connections or malformed requests never reaches the federation's loop;
// handlers only read what the loop published.
//
// Security: read-only. Bound to a loopback address it answers anyone on the
// machine; bound to any other address it requires "Authorization: Bearer
// TOKEN" (or ?token=TOKEN, for a browser opening the dashboard) on
// everything but the probes (401 otherwise), and refuses to start without a
// token. The dashboard shows no key material and no device data.
//
// Thread-safety: Start and Stop from one thread; the handlers are called on
// the server's threads and must be thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "core/status.h"

namespace httplib {
class Server;
}

namespace flotilla::monitoring {

struct HttpOptions {
  std::string listen = "127.0.0.1:9464";  // HOST:PORT; port 0 picks a free one
  std::string token;                      // required unless HOST is loopback
  int threads = 2;                        // worker threads
  // Tests force the token on a loopback address (a non-local address is
  // not available to them).
  bool require_token = false;
};

// HOST and PORT of "HOST:PORT" ("[::1]:9464" for IPv6); InvalidArgument
// saying the expected form.
StatusOr<std::pair<std::string, int>> ParseListen(const std::string& listen);
// 127.0.0.0/8, ::1 and "localhost".
bool IsLoopback(const std::string& host);

struct HttpHandlers {
  std::function<std::string()> metrics;     // the Prometheus text
  std::function<std::string()> state_json;  // the dashboard's state (GET /api/state)
  // Ready to serve devices; *why says what is missing when not.
  std::function<bool(std::string* why)> ready;
};

class HttpServer {
 public:
  // Binds and starts serving. InvalidArgument for a bad address or a
  // non-loopback address without a token; Unavailable when the port
  // cannot be bound (in use), saying which.
  static StatusOr<std::unique_ptr<HttpServer>> Start(const HttpOptions& options, HttpHandlers handlers);
  ~HttpServer();  // stops
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  const std::string& host() const { return host_; }
  // "http://HOST:PORT"
  std::string url() const;

 private:
  HttpServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::string host_;
  int port_ = 0;
};

}  // namespace flotilla::monitoring
