// Key material for tests that run a real aggregator: a signing pair, a
// CURVE pair for the aggregator and one per client.
#pragma once

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "aggregator/server.h"
#include "client/session.h"
#include "privacy/keys.h"

namespace flotilla::testing {

struct TestKeys {
  std::shared_ptr<const privacy::SigningKeyPair> signing;
  privacy::CurveKeyPair server;
  std::vector<privacy::CurveKeyPair> clients;

  explicit TestKeys(int n_clients) {
    auto s = privacy::GenerateSigningKeyPair();
    REQUIRE(s.ok());
    signing = std::make_shared<const privacy::SigningKeyPair>(std::move(s).value());
    auto sk = privacy::GenerateCurveKeyPair();
    REQUIRE(sk.ok());
    server = std::move(sk).value();
    for (int i = 0; i < n_clients; ++i) {
      auto k = privacy::GenerateCurveKeyPair();
      REQUIRE(k.ok());
      clients.push_back(std::move(k).value());
    }
  }

  // Secure aggregator config allowing every client key.
  void Apply(aggregator::AggregatorConfig* c) const {
    c->signing_key = signing;
    c->socket.security = net::TransportSecurity::kCurve;
    c->socket.curve.public_key = server.public_z85;
    c->socket.curve.secret_key = server.SecretZ85();
    for (const auto& k : clients) c->allowed_clients.insert(k.public_z85);
  }

  // Client socket options for client i (or for arbitrary keys).
  net::SocketOptions ClientSocket(int i) const { return ClientSocketWith(clients[i], server.public_z85); }
  static net::SocketOptions ClientSocketWith(const privacy::CurveKeyPair& own,
                                             const std::string& server_pub) {
    net::SocketOptions o;
    o.security = net::TransportSecurity::kCurve;
    o.curve.public_key = own.public_z85;
    o.curve.secret_key = own.SecretZ85();
    o.curve.server_public_key = server_pub;
    return o;
  }
};

}  // namespace flotilla::testing
