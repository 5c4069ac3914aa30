#include "net/zap.h"

#include <zmq.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "core/log.h"
#include "core/z85.h"

namespace flotilla::net {
namespace {

constexpr char kZapEndpoint[] = "inproc://zeromq.zap.01";

std::vector<std::string> ReceiveAll(void* socket) {
  std::vector<std::string> frames;
  int more = 1;
  while (more) {
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, socket, 0) < 0) {
      zmq_msg_close(&msg);
      break;
    }
    frames.emplace_back(static_cast<const char*>(zmq_msg_data(&msg)), zmq_msg_size(&msg));
    more = zmq_msg_more(&msg);
    zmq_msg_close(&msg);
  }
  return frames;
}

void SendReply(void* socket, const std::string& request_id, const char* code, const char* text,
               const std::string& user_id) {
  const std::string frames[] = {"1.0", request_id, code, text, user_id, ""};
  for (int i = 0; i < 6; ++i) zmq_send(socket, frames[i].data(), frames[i].size(), i < 5 ? ZMQ_SNDMORE : 0);
}

}  // namespace

StatusOr<std::set<std::string>> ReadAllowlist(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot read allowlist " + path + " (one client public key per line)");
  std::set<std::string> keys;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    std::istringstream tokens(line);
    std::string key;
    if (!(tokens >> key)) continue;  // blank line
    if (key == "public") {
      // A pasted "public = KEY" line from a .curve.pub file.
      std::string eq;
      tokens >> eq >> key;
      if (eq != "=") key.clear();
    }
    // Z85 uses '#', so a key may contain or even start with it: a line is a
    // comment only when its first word is not a key and starts with '#'.
    auto decoded = Z85Decode(key);
    const bool is_key = key.size() == 40 && decoded.ok() && decoded->size() == 32;
    if (!is_key && !key.empty() && key[0] == '#') continue;
    if (!is_key) {
      return InvalidArgument(
          path + ":" + std::to_string(line_no) +
          ": not a 40-character Z85 CURVE public key (a line is a key, optionally followed "
          "by a label, or a comment starting with '#')");
    }
    keys.insert(key);
  }
  return keys;
}

StatusOr<std::unique_ptr<ZapHandler>> ZapHandler::Start(Context* context, const std::string& domain,
                                                        std::set<std::string> allowed) {
  void* socket = zmq_socket(context->raw(), ZMQ_REP);
  if (socket == nullptr) return Internal(std::string("creating ZAP socket: ") + zmq_strerror(zmq_errno()));
  int linger = 0;
  zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof(linger));
  if (zmq_bind(socket, kZapEndpoint) != 0) {
    const std::string err = zmq_strerror(zmq_errno());
    zmq_close(socket);
    return FailedPrecondition("binding the ZAP handler: " + err + " (only one per ZeroMQ context)");
  }
  std::unique_ptr<ZapHandler> handler(new ZapHandler(socket, domain, std::move(allowed)));
  handler->thread_ = std::thread([h = handler.get()] { h->Serve(); });
  return handler;
}

ZapHandler::ZapHandler(void* socket, std::string domain, std::set<std::string> allowed)
    : socket_(socket), domain_(std::move(domain)), allowed_(std::move(allowed)) {}

ZapHandler::~ZapHandler() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  zmq_close(socket_);
}

void ZapHandler::SetAllowed(std::set<std::string> allowed) {
  std::lock_guard<std::mutex> lock(mu_);
  allowed_ = std::move(allowed);
}

bool ZapHandler::IsAllowed(const std::string& z85_key) const {
  std::lock_guard<std::mutex> lock(mu_);
  return allowed_.count(z85_key) > 0;
}

size_t ZapHandler::allowed_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allowed_.size();
}

void ZapHandler::Serve() {
  while (!stop_.load()) {
    zmq_pollitem_t item{socket_, 0, ZMQ_POLLIN, 0};
    const int rc = zmq_poll(&item, 1, 100);
    if (rc <= 0) continue;
    std::vector<std::string> f = ReceiveAll(socket_);
    // version, request id, domain, address, identity, mechanism, credentials...
    if (f.size() < 6) {
      LOG_WARN("zap", "malformed ZAP request with " << f.size() << " frames");
      if (f.size() >= 2) SendReply(socket_, f[1], "500", "malformed request", "");
      continue;
    }
    const std::string& request_id = f[1];
    const std::string& domain = f[2];
    const std::string& address = f[3];
    const std::string& mechanism = f[5];
    if (f[0] != "1.0") {
      SendReply(socket_, request_id, "500", "unsupported ZAP version", "");
      continue;
    }
    if (domain != domain_) {
      ++refused_;
      LOG_WARN("zap", "refused " << address << ": ZAP domain '" << domain << "'");
      SendReply(socket_, request_id, "400", "wrong domain", "");
      continue;
    }
    if (mechanism != "CURVE" || f.size() < 7 || f[6].size() != 32) {
      ++refused_;
      LOG_WARN("zap", "refused " << address << ": mechanism " << mechanism << " (CURVE required)");
      SendReply(socket_, request_id, "400", "CURVE required", "");
      continue;
    }
    const std::string key = Z85Encode(std::vector<unsigned char>(f[6].begin(), f[6].end()));
    if (!IsAllowed(key)) {
      ++refused_;
      LOG_WARN("zap", "refused " << address << ": key " << key << " is not on the allowlist");
      SendReply(socket_, request_id, "400", "not on the allowlist", "");
      continue;
    }
    ++accepted_;
    LOG_DEBUG("zap", "accepted " << address << " key " << key);
    SendReply(socket_, request_id, "200", "OK", key);
  }
}

}  // namespace flotilla::net
