// The operator's HTTP endpoint without a federation: the Prometheus text
// format against hand-written expectations, and the server's routes, token
// and robustness over real loopback sockets.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "aggregator/metrics.h"
#include "monitoring/exposition.h"
#include "monitoring/http_server.h"

using namespace flotilla;
using namespace flotilla::monitoring;

TEST_CASE("The Prometheus text format: families, labels, escaping, histograms", "[monitoring]") {
  PromText t;
  t.Counter("x_total", "Things.", 3);
  t.Family("y", "gauge", "Labelled.");
  t.Sample(0.5, {{"state", "a\"b\\c\nd"}});
  Histogram h({1, 0.1});  // sorted on construction
  h.Observe(0.05);
  h.Observe(0.5);
  h.Observe(7);
  h.Observe(NAN);  // ignored
  t.Family("d_seconds", "histogram", "Durations.");
  t.HistogramSamples(h.data(), {{"phase", "p"}});
  CHECK(t.text() ==
        "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n"
        "# HELP y Labelled.\n# TYPE y gauge\ny{state=\"a\\\"b\\\\c\\nd\"} 0.5\n"
        "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n"
        "d_seconds_bucket{phase=\"p\",le=\"0.10000000000000001\"} 1\n"
        "d_seconds_bucket{phase=\"p\",le=\"1\"} 2\n"
        "d_seconds_bucket{phase=\"p\",le=\"+Inf\"} 3\n"
        "d_seconds_sum{phase=\"p\"} 7.5499999999999998\n"
        "d_seconds_count{phase=\"p\"} 3\n");
  CHECK(FormatValue(NAN) == "NaN");
  CHECK(FormatValue(-INFINITY) == "-Inf");
  CHECK(FormatValue(12345678901.0) == "12345678901");
}

TEST_CASE("Aggregator metrics count rounds, updates and rejections as they finish", "[monitoring]") {
  aggregator::AggregatorInfo info;
  info.federation = "fed";
  info.model_arch = "2nn";
  info.strategy = "fedavg";
  info.signing_key_fingerprint = "0011aabb:ccddeeff";
  aggregator::AggregatorMetrics m(info);
  aggregator::RoundSummary r;
  r.completed = true;
  r.selected = 5;
  r.received = 4;
  r.unreported = 1;
  r.total_examples = 400;
  r.train_seconds = 2;
  r.merge_seconds = 0.2;
  r.seconds = 2.2;
  r.test_accuracy = 0.8;
  m.RoundFinished(r);
  r.completed = false;
  r.received = 1;
  m.RoundFinished(r);
  m.Rejected("norm");
  m.Rejected("norm");
  m.Bytes(10, 20);
  aggregator::AggregatorGauges g;
  g.round_active = true;
  m.Publish(g);
  const std::string text = m.Render();
  for (const char* line : {"flotilla_rounds_started_total 3\n", "flotilla_rounds_completed_total 1\n",
                           "flotilla_rounds_failed_total 1\n", "flotilla_updates_accepted_total 5\n",
                           "flotilla_updates_unreported_total 2\n", "flotilla_examples_total 400\n",
                           "flotilla_messages_rejected_total{reason=\"norm\"} 2\n",
                           "flotilla_received_bytes_total 10\n", "flotilla_sent_bytes_total 20\n",
                           "flotilla_model_test_accuracy 0.8", "flotilla_round_duration_seconds_count 1\n",
                           "flotilla_info{federation=\"fed\",arch=\"2nn\",strategy=\"fedavg\"} 1\n"}) {
    INFO(line);
    CHECK(text.find(line) != std::string::npos);
  }
  CHECK(text.find("flotilla_dp_epsilon") == std::string::npos);  // no DP, no privacy gauges
  // The dashboard's state: the rounds, the rejections, the key's fingerprint only.
  const std::string json = m.RenderJson();
  CHECK(json.find("\"signing_key_fingerprint\":\"0011aabb:ccddeeff\"") != std::string::npos);
  CHECK(json.find("\"rejected\":{\"norm\":2}") != std::string::npos);
  CHECK(json.find("\"test_accuracy\":0.8") != std::string::npos);
  CHECK(json.find("\"round_active\":true") != std::string::npos);
}

namespace {

// Sends raw bytes to 127.0.0.1:port and returns what comes back first.
std::string RawExchange(int port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::send(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
  char buf[512];
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  ::close(fd);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

}  // namespace

TEST_CASE("The HTTP endpoint serves metrics and probes, and needs its token off loopback", "[monitoring]") {
  CHECK(IsLoopback("127.0.0.1"));
  CHECK(IsLoopback("127.3.2.1"));
  CHECK(IsLoopback("::1"));
  CHECK_FALSE(IsLoopback("0.0.0.0"));
  CHECK_FALSE(IsLoopback("10.1.2.3"));
  CHECK_FALSE(ParseListen("9464").ok());
  CHECK_FALSE(ParseListen("host:http").ok());
  CHECK_FALSE(ParseListen("host:70000").ok());
  CHECK(ParseListen("[::1]:9464")->first == "::1");

  // A non-loopback address without a token does not start.
  HttpOptions open;
  open.listen = "0.0.0.0:0";
  auto refused = HttpServer::Start(open, HttpHandlers());
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("needs a bearer token") != std::string::npos);

  std::atomic<bool> ready{false};
  HttpHandlers handlers;
  handlers.metrics = [] { return std::string("m_total 1\n"); };
  handlers.ready = [&ready](std::string* why) {
    *why = "warming up";
    return ready.load();
  };
  HttpOptions options;
  options.listen = "127.0.0.1:0";
  SECTION("loopback: no token") {
    auto server = HttpServer::Start(options, handlers);
    REQUIRE(server.ok());
    httplib::Client client("127.0.0.1", (*server)->port());
    auto m = client.Get("/metrics");
    REQUIRE(m);
    CHECK(m->status == 200);
    CHECK(m->body == "m_total 1\n");
    CHECK(m->get_header_value("Content-Type").find("version=0.0.4") != std::string::npos);
    auto r = client.Get("/readyz");
    REQUIRE(r);
    CHECK(r->status == 503);
    CHECK(r->body.find("warming up") != std::string::npos);
    ready = true;
    CHECK(client.Get("/readyz")->status == 200);
    CHECK(client.Get("/healthz")->status == 200);
    CHECK(client.Get("/secret")->status == 404);
    CHECK(client.Post("/metrics", "x", "text/plain")->status != 200);
    // Malformed requests get an error and leave the server serving.
    CHECK(RawExchange((*server)->port(), "GARBAGE\r\n\r\n").rfind("HTTP/1.1 400", 0) == 0);
    CHECK(RawExchange((*server)->port(), std::string(20000, 'A') + "\r\n\r\n").rfind("HTTP/1.1 4", 0) == 0);
    CHECK(client.Get("/healthz")->status == 200);
  }
  SECTION("with a token, as on any other address") {
    options.require_token = true;
    options.token = "short";
    REQUIRE_FALSE(HttpServer::Start(options, handlers).ok());
    options.token = "0123456789abcdef0123";
    auto server = HttpServer::Start(options, handlers);
    REQUIRE(server.ok());
    httplib::Client client("127.0.0.1", (*server)->port());
    auto none = client.Get("/metrics");
    REQUIRE(none);
    CHECK(none->status == 401);
    CHECK(none->body.find("m_total") == std::string::npos);
    CHECK(client.Get("/metrics", {{"Authorization", "Bearer 0123456789abcdef0124"}})->status == 401);
    auto good = client.Get("/metrics", {{"Authorization", "Bearer 0123456789abcdef0123"}});
    REQUIRE(good);
    CHECK(good->status == 200);
    CHECK(good->body == "m_total 1\n");
    CHECK(client.Get("/healthz")->status == 200);  // probes carry no data
  }
}
