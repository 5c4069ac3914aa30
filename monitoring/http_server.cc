#include "monitoring/http_server.h"

#include <httplib.h>

#include <cstdlib>

#include "core/log.h"
#include "web/assets.h"

namespace flotilla::monitoring {

// monitoring/dashboard.html and dashboard.js (embedded by the build).
extern const std::string_view kDashboardHtml;
extern const std::string_view kDashboardJs;

StatusOr<std::pair<std::string, int>> ParseListen(const std::string& listen) {
  const std::string form = "'" + listen + "': use HOST:PORT, e.g. 127.0.0.1:9464 (port 0 picks a free one)";
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) return InvalidArgument(form);
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port_text = listen.substr(colon + 1);
  if (port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos)
    return InvalidArgument(form);
  const int port = std::atoi(port_text.c_str());
  if (port > 65535) return InvalidArgument(form);
  return std::make_pair(host, port);
}

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

namespace {

// Constant time in the length of `expected`.
bool SameSecret(const std::string& got, const std::string& expected) {
  if (got.size() != expected.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < got.size(); ++i) diff |= static_cast<unsigned char>(got[i] ^ expected[i]);
  return diff == 0;
}

bool Authorized(const httplib::Request& req, const std::string& token) {
  if (token.empty()) return true;
  if (SameSecret(req.get_header_value("Authorization"), "Bearer " + token)) return true;
  return req.has_param("token") && SameSecret(req.get_param_value("token"), token);
}

void Unauthorized(httplib::Response& res) {
  res.status = 401;
  res.set_header("WWW-Authenticate", "Bearer");
  res.set_content("a bearer token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)\n",
                  "text/plain");
}

// The dashboard page with uPlot and its script inline (nothing fetched
// but /api/state).
std::string DashboardPage() {
  std::string page(kDashboardHtml);
  auto put = [&page](const std::string& marker, std::string_view with) {
    const size_t at = page.find(marker);
    if (at != std::string::npos) page.replace(at, marker.size(), web::EscapeForInlineElement(with));
  };
  put("/*UPLOT_CSS*/", web::kUplotCss);
  put("/*UPLOT_JS*/", web::kUplotJs);
  put("/*DASHBOARD_JS*/", kDashboardJs);
  return page;
}

}  // namespace

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpOptions& options, HttpHandlers handlers) {
  ASSIGN_OR_RETURN(auto hp, ParseListen(options.listen));
  const bool need_token = options.require_token || !IsLoopback(hp.first);
  if (need_token && options.token.size() < 16) {
    return InvalidArgument(
        "the HTTP endpoint on " + options.listen +
        " is reachable from other machines and needs a bearer token of at least 16 "
        "characters: set [http] token_file (or --http-token-file), or listen on 127.0.0.1");
  }
  const std::string token = need_token ? options.token : std::string();
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->server_ = std::make_unique<httplib::Server>();
  httplib::Server& svr = *s->server_;
  const int threads = std::max(1, options.threads);
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  svr.set_read_timeout(2, 0);
  svr.set_write_timeout(5, 0);
  svr.set_keep_alive_max_count(20);
  svr.set_keep_alive_timeout(2);
  svr.set_payload_max_length(8 << 10);
  auto metrics = handlers.metrics;
  svr.Get("/metrics", [metrics, token](const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, token)) return Unauthorized(res);
    res.set_content(metrics ? metrics() : std::string(), "text/plain; version=0.0.4; charset=utf-8");
  });
  auto state = handlers.state_json;
  svr.Get("/api/state", [state, token](const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, token)) return Unauthorized(res);
    res.set_header("Cache-Control", "no-store");
    res.set_content(state ? state() : std::string("{}"), "application/json");
  });
  const std::string page = DashboardPage();
  svr.Get("/", [page, token](const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, token)) return Unauthorized(res);
    res.set_header(
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'");
    res.set_content(page, "text/html; charset=utf-8");
  });
  svr.Get("/healthz",
          [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
  auto ready = handlers.ready;
  svr.Get("/readyz", [ready](const httplib::Request&, httplib::Response& res) {
    std::string why;
    if (!ready || ready(&why)) {
      res.set_content("ready\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content("not ready: " + why + "\n", "text/plain");
    }
  });
  if (hp.second == 0) {
    s->port_ = svr.bind_to_any_port(hp.first);
    if (s->port_ <= 0) return Unavailable("cannot bind the HTTP endpoint on " + hp.first + " (any port)");
  } else {
    if (!svr.bind_to_port(hp.first, hp.second))
      return Unavailable("cannot bind the HTTP endpoint on " + options.listen +
                         " (in use, or not an address of this machine); choose another with [http] listen");
    s->port_ = hp.second;
  }
  s->host_ = hp.first;
  s->thread_ = std::thread([&svr] { svr.listen_after_bind(); });
  LOG_INFO("http", "serving the dashboard (/), /metrics, /healthz and /readyz on "
                       << s->url() << (token.empty() ? "" : " (bearer token required)"));
  return s;
}

HttpServer::~HttpServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

std::string HttpServer::url() const {
  const bool v6 = host_.find(':') != std::string::npos;
  return "http://" + (v6 ? "[" + host_ + "]" : host_) + ":" + std::to_string(port_);
}

}  // namespace flotilla::monitoring
