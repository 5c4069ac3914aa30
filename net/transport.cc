#include "net/transport.h"

#include <zmq.h>

// libzmq 4.3 declares this option only in its draft API, but Debian's build
// implements it; setting it fails (and Bind fails closed) where it does not.
#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93
#endif

#include <cerrno>
#include <cstring>

#include "core/log.h"

namespace flotilla::net {
namespace {

Status ZmqError(const std::string& what) {
  const int err = zmq_errno();
  const std::string message = what + ": " + zmq_strerror(err);
  if (err == EAGAIN || err == EHOSTUNREACH || err == ETERM) return Unavailable(message);
  if (err == EADDRINUSE) return Unavailable(message + " (is another aggregator running on this port?)");
  return Internal(message);
}

Status SetInt(void* socket, int option, int value, const char* name) {
  if (zmq_setsockopt(socket, option, &value, sizeof(value)) != 0) {
    return ZmqError(std::string("setting ") + name);
  }
  return Status::Ok();
}

// libzmq applies ZMQ_MAXMSGSIZE to the frame on the wire, which under CURVE
// carries a MESSAGE command around the payload: "\x07MESSAGE" (8 bytes),
// an 8-byte nonce, a 16-byte MAC and a flags byte.
constexpr int64_t kCurveMessageOverhead = 8 + 8 + 16 + 1;

Status ApplyCommon(void* socket, const SocketOptions& options) {
  if (options.max_message_bytes <= 0) return InvalidArgument("max_message_bytes must be positive");
  // The limit is on the payload the application sees, whatever the mechanism.
  const int64_t max_size =
      options.max_message_bytes + (options.security == TransportSecurity::kCurve ? kCurveMessageOverhead : 0);
  if (zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max_size, sizeof(max_size)) != 0) {
    return ZmqError("setting ZMQ_MAXMSGSIZE");
  }
  RETURN_IF_ERROR(SetInt(socket, ZMQ_SNDHWM, options.send_high_water_mark, "ZMQ_SNDHWM"));
  RETURN_IF_ERROR(SetInt(socket, ZMQ_RCVHWM, options.receive_high_water_mark, "ZMQ_RCVHWM"));
  RETURN_IF_ERROR(SetInt(socket, ZMQ_LINGER, options.linger_ms, "ZMQ_LINGER"));
  return Status::Ok();
}

Status SetString(void* socket, int option, const std::string& value, const char* name) {
  if (zmq_setsockopt(socket, option, value.data(), value.size()) != 0) {
    return ZmqError(std::string("setting ") + name);
  }
  return Status::Ok();
}

Status CheckKey(const std::string& key, const char* what) {
  if (key.size() != 40) {
    return InvalidArgument(std::string(what) + " must be a 40-character Z85 CURVE key (see flotilla keygen)");
  }
  return Status::Ok();
}

Status ApplyServerSecurity(void* socket, const SocketOptions& options) {
  if (options.security == TransportSecurity::kNone) return Status::Ok();
  RETURN_IF_ERROR(CheckKey(options.curve.secret_key, "server secret key"));
  RETURN_IF_ERROR(SetInt(socket, ZMQ_CURVE_SERVER, 1, "ZMQ_CURVE_SERVER"));
  RETURN_IF_ERROR(SetString(socket, ZMQ_CURVE_SECRETKEY, options.curve.secret_key, "ZMQ_CURVE_SECRETKEY"));
  // Without a ZAP handler libzmq would accept every client; with the domain
  // enforced, a missing handler refuses them instead.
  RETURN_IF_ERROR(SetString(socket, ZMQ_ZAP_DOMAIN, options.zap_domain, "ZMQ_ZAP_DOMAIN"));
  RETURN_IF_ERROR(SetInt(socket, ZMQ_ZAP_ENFORCE_DOMAIN, 1, "ZMQ_ZAP_ENFORCE_DOMAIN"));
  return Status::Ok();
}

Status ApplyClientSecurity(void* socket, const SocketOptions& options) {
  if (options.security == TransportSecurity::kNone) return Status::Ok();
  RETURN_IF_ERROR(CheckKey(options.curve.public_key, "client public key"));
  RETURN_IF_ERROR(CheckKey(options.curve.secret_key, "client secret key"));
  RETURN_IF_ERROR(CheckKey(options.curve.server_public_key, "aggregator public key"));
  RETURN_IF_ERROR(
      SetString(socket, ZMQ_CURVE_SERVERKEY, options.curve.server_public_key, "ZMQ_CURVE_SERVERKEY"));
  RETURN_IF_ERROR(SetString(socket, ZMQ_CURVE_PUBLICKEY, options.curve.public_key, "ZMQ_CURVE_PUBLICKEY"));
  RETURN_IF_ERROR(SetString(socket, ZMQ_CURVE_SECRETKEY, options.curve.secret_key, "ZMQ_CURVE_SECRETKEY"));
  return Status::Ok();
}

// Polls one socket for input. Returns true when readable.
StatusOr<bool> WaitReadable(void* socket, std::chrono::milliseconds timeout) {
  zmq_pollitem_t item{socket, 0, ZMQ_POLLIN, 0};
  const int rc = zmq_poll(&item, 1, static_cast<long>(timeout.count()));
  if (rc < 0) {
    if (zmq_errno() == EINTR) return false;
    return ZmqError("zmq_poll");
  }
  return rc > 0 && (item.revents & ZMQ_POLLIN);
}

// Receives one frame into `out`; sets *more. Returns false on EAGAIN.
StatusOr<bool> ReceiveFrame(void* socket, std::string* out, bool* more, std::string* user_id) {
  zmq_msg_t msg;
  zmq_msg_init(&msg);
  if (zmq_msg_recv(&msg, socket, ZMQ_DONTWAIT) < 0) {
    zmq_msg_close(&msg);
    if (zmq_errno() == EAGAIN) return false;
    return ZmqError("receive");
  }
  out->assign(static_cast<const char*>(zmq_msg_data(&msg)), zmq_msg_size(&msg));
  *more = zmq_msg_more(&msg) != 0;
  if (user_id != nullptr) {
    const char* uid = zmq_msg_gets(&msg, "User-Id");
    user_id->assign(uid != nullptr ? uid : "");
  }
  zmq_msg_close(&msg);
  return true;
}

}  // namespace

Context::Context(int io_threads) : ctx_(zmq_ctx_new()) {
  zmq_ctx_set(ctx_, ZMQ_IO_THREADS, io_threads);
  // Fleets of simulated clients need many sockets in one process.
  zmq_ctx_set(ctx_, ZMQ_MAX_SOCKETS, 65536);
}

Context::~Context() { zmq_ctx_term(ctx_); }

StatusOr<std::unique_ptr<ServerSocket>> ServerSocket::Bind(Context* context, const std::string& endpoint,
                                                           const SocketOptions& options) {
  void* socket = zmq_socket(context->raw(), ZMQ_ROUTER);
  if (socket == nullptr) return ZmqError("creating ROUTER socket");
  auto fail = [socket](Status st) {
    zmq_close(socket);
    return st;
  };
  if (Status st = ApplyCommon(socket, options); !st.ok()) return fail(st);
  if (Status st = ApplyServerSecurity(socket, options); !st.ok()) return fail(st);
  // Report unroutable peers instead of dropping replies silently.
  if (Status st = SetInt(socket, ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY"); !st.ok()) return fail(st);
  if (Status st = SetInt(socket, ZMQ_BACKLOG, options.listen_backlog, "ZMQ_BACKLOG"); !st.ok())
    return fail(st);
  if (zmq_bind(socket, endpoint.c_str()) != 0) return fail(ZmqError("binding " + endpoint));
  char actual[256] = {0};
  size_t len = sizeof(actual);
  if (zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, actual, &len) != 0) {
    return fail(ZmqError("reading bound endpoint"));
  }
  return std::unique_ptr<ServerSocket>(new ServerSocket(socket, actual));
}

ServerSocket::ServerSocket(void* socket, std::string endpoint)
    : socket_(socket), endpoint_(std::move(endpoint)) {}

ServerSocket::~ServerSocket() { zmq_close(socket_); }

StatusOr<std::optional<Incoming>> ServerSocket::Receive(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    ASSIGN_OR_RETURN(bool readable, WaitReadable(socket_, std::max(left, std::chrono::milliseconds(0))));
    if (!readable) return std::optional<Incoming>();
    Incoming in;
    bool more = false;
    ASSIGN_OR_RETURN(bool got, ReceiveFrame(socket_, &in.peer, &more, nullptr));
    if (!got) continue;
    int frames = 1;
    while (more) {
      std::string frame;
      std::string uid;
      ASSIGN_OR_RETURN(bool got_part, ReceiveFrame(socket_, &frame, &more, &uid));
      if (!got_part) break;
      ++frames;
      if (frames == 2) {
        in.payload = std::move(frame);
        in.user_id = std::move(uid);
      }
    }
    if (frames == 2) return std::optional<Incoming>(std::move(in));
    ++dropped_;
    LOG_WARN("net", "dropped a message with " << frames - 1 << " payload frames (expected 1)");
  }
}

namespace {

// A payload handed to ZeroMQ without a copy; ZeroMQ calls Release (from
// its I/O thread, or from zmq_msg_close on failure) when it is done.
struct QueuedPayload {
  std::string bytes;
  std::shared_ptr<std::atomic<int64_t>> tag_counter;
  std::shared_ptr<std::atomic<int64_t>> total_counter;

  static void Release(void* /*data*/, void* hint) {
    auto* p = static_cast<QueuedPayload*>(hint);
    const auto n = static_cast<int64_t>(p->bytes.size());
    p->tag_counter->fetch_sub(n);
    p->total_counter->fetch_sub(n);
    delete p;
  }
};

}  // namespace

Status ServerSocket::Send(const std::string& peer, std::string payload, const std::string& tag) {
  if (zmq_send(socket_, peer.data(), peer.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
    return ZmqError("sending to peer");
  }
  std::shared_ptr<std::atomic<int64_t>>& counter = queued_[tag];
  if (!counter) {
    if (queued_.size() > 4096) {
      // Forget tags with nothing queued (their counters may still be held by
      // in-flight messages, which is harmless).
      for (auto it = queued_.begin(); it != queued_.end();) {
        it = it->second && it->second->load() == 0 && it->first != tag ? queued_.erase(it) : std::next(it);
      }
    }
    counter = std::make_shared<std::atomic<int64_t>>(0);
  }
  auto* held = new QueuedPayload{std::move(payload), counter, total_queued_};
  const auto n = static_cast<int64_t>(held->bytes.size());
  counter->fetch_add(n);
  total_queued_->fetch_add(n);
  zmq_msg_t msg;
  if (zmq_msg_init_data(&msg, held->bytes.data(), held->bytes.size(), &QueuedPayload::Release, held) != 0) {
    QueuedPayload::Release(nullptr, held);
    return ZmqError("preparing a message");
  }
  if (zmq_msg_send(&msg, socket_, ZMQ_DONTWAIT) < 0) {
    Status st = ZmqError("sending to peer");
    zmq_msg_close(&msg);  // releases the payload
    return st;
  }
  return Status::Ok();
}

int64_t ServerSocket::QueuedBytes(const std::string& tag) const {
  auto it = queued_.find(tag);
  return it == queued_.end() ? 0 : it->second->load();
}

StatusOr<std::unique_ptr<ClientSocket>> ClientSocket::Connect(Context* context, const std::string& endpoint,
                                                              const SocketOptions& options) {
  void* socket = zmq_socket(context->raw(), ZMQ_DEALER);
  if (socket == nullptr) return ZmqError("creating DEALER socket");
  auto fail = [socket](Status st) {
    zmq_close(socket);
    return st;
  };
  if (Status st = ApplyCommon(socket, options); !st.ok()) return fail(st);
  if (Status st = ApplyClientSecurity(socket, options); !st.ok()) return fail(st);
  if (!options.routing_id.empty()) {
    if (Status st = SetString(socket, ZMQ_ROUTING_ID, options.routing_id, "ZMQ_ROUTING_ID"); !st.ok()) {
      return fail(st);
    }
  }
  if (Status st = SetInt(socket, ZMQ_RECONNECT_IVL, options.reconnect_ms, "ZMQ_RECONNECT_IVL"); !st.ok()) {
    return fail(st);
  }
  if (Status st = SetInt(socket, ZMQ_RECONNECT_IVL_MAX, options.reconnect_max_ms, "ZMQ_RECONNECT_IVL_MAX");
      !st.ok()) {
    return fail(st);
  }
  if (zmq_connect(socket, endpoint.c_str()) != 0) return fail(ZmqError("connecting to " + endpoint));
  return std::unique_ptr<ClientSocket>(new ClientSocket(socket));
}

ClientSocket::~ClientSocket() { zmq_close(socket_); }

Status ClientSocket::Send(const std::string& payload) {
  if (zmq_send(socket_, payload.data(), payload.size(), ZMQ_DONTWAIT) < 0) return ZmqError("send");
  return Status::Ok();
}

StatusOr<std::optional<std::string>> ClientSocket::Receive(std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(bool readable, WaitReadable(socket_, timeout));
  if (!readable) return std::optional<std::string>();
  std::string payload;
  bool more = false;
  ASSIGN_OR_RETURN(bool got, ReceiveFrame(socket_, &payload, &more, nullptr));
  if (!got) return std::optional<std::string>();
  // The aggregator sends single-frame messages; discard any extra frames.
  while (more) {
    std::string extra;
    ASSIGN_OR_RETURN(bool got_part, ReceiveFrame(socket_, &extra, &more, nullptr));
    if (!got_part) break;
  }
  return std::optional<std::string>(std::move(payload));
}

StatusOr<std::vector<size_t>> PollReadable(const std::vector<ClientSocket*>& sockets,
                                           std::chrono::milliseconds timeout) {
  std::vector<zmq_pollitem_t> items(sockets.size());
  for (size_t i = 0; i < sockets.size(); ++i) items[i] = {sockets[i]->raw(), 0, ZMQ_POLLIN, 0};
  const int rc = zmq_poll(items.data(), static_cast<int>(items.size()), static_cast<long>(timeout.count()));
  std::vector<size_t> ready;
  if (rc < 0) {
    if (zmq_errno() == EINTR) return ready;
    return ZmqError("zmq_poll");
  }
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].revents & ZMQ_POLLIN) ready.push_back(i);
  }
  return ready;
}

}  // namespace flotilla::net
