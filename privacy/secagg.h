// Secure aggregation (SecAgg and SecAgg+), umbrella header: includes the whole public API.
// Thread-safety: SecAggClient and SecAggServer are not thread-safe; use one
// per thread or lock. Free functions are safe from any thread.
#pragma once

#include "privacy/quantization.h"     // float updates <-> words in Z_{2^k}, distributed DP noise
#include "privacy/secagg_client.h"    // SecAggClient
#include "privacy/secagg_masks.h"     // MaskExpander
#include "privacy/secagg_messages.h"  // the message structs and their wire forms
#include "privacy/secagg_params.h"    // SecAggParams, NeighbourGraph
#include "privacy/secagg_server.h"    // SecAggServer

// Protocol overview. The server learns the sum (mod 2^k) of the surviving
// clients' quantized updates and nothing else about any one of them.
//
// This is the protocol of Bonawitz et al., "Practical Secure Aggregation for
// Privacy-Preserving Machine Learning" (CCS 2017), with the sparse neighbour
// graph of Bell et al., "Secure Single-Server Aggregation with
// (Poly)Logarithmic Overhead" (CCS 2020, "SecAgg+"). Everything here is a
// pure, network-free state machine over plain message structs; the client
// runtime and the aggregator carry the serialized messages inside protobuf
// `bytes` fields.
//
// Stages (U1 ⊇ U2 ⊇ U3 ⊇ U4 are the clients still present after each):
//   0 AdvertiseKeys  Each client makes two fresh X25519 pairs, c (encrypts
//                    shares) and s (pairwise masks), and signs them with its
//                    long-term Ed25519 key. Server verifies, keeps U1.
//   1 ShareKeys      Each client draws a 32-byte self-mask seed b_u and
//                    Shamir-splits b_u and s_sk t-of-(m+1) among the m
//                    neighbours in its roster (those in U1; m <= d) and
//                    itself (x = index + 1). The pair for
//                    neighbour v is encrypted with XChaCha20-Poly1305 under a
//                    key from X25519(c_sk_u, c_pk_v), with associated data
//                    binding the session, sender and recipient. Server relays
//                    the ciphertexts of U2 to their recipients.
//   2 MaskedInput    y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U2} sign(u,v) *
//                    PRG(s_uv) mod 2^k, with sign = +1 if u < v, else -1, and
//                    s_uv from X25519(s_sk_u, s_pk_v). Server sums, keeps U3.
//   3 Unmasking      Server sends survivors (U3) and dropped (U2 \ U3). Each
//                    client returns its shares of b_v for survivors and of
//                    s_sk_v for the dropped, never both kinds for one peer.
//                    Server reconstructs (t shares each), removes the masks
//                    and gets sum_{u in U3} x_u mod 2^k.
// Fewer than t clients at any stage ends the round with an Aborted status;
// a client that sees fewer than t in its own neighbourhood aborts itself
// (the round then fails only if the server ends up short of shares).
//
// PRG(seed) is ChaCha20 (libsodium crypto_stream_chacha20, 64-bit nonce) keyed
// with the 32-byte seed, with the fixed nonce "fsa-self" for self masks and
// "fsa-pair" for pairwise masks, read as little-endian uint32 words; words
// are reduced mod 2^k (uniform because 2^k divides 2^32).
//
// Derived keys are BLAKE2b-256 over (label || session digest || X25519 output
// || the lower index's public key || the higher index's public key), with
// labels "flotilla-secagg-enc-v1" and "flotilla-secagg-pair-v1". The session
// digest is BLAKE2b-256 of SecAggParams::Serialize(), so every signature,
// ciphertext and mask is bound to one round's parameters.
//
// Threat model: honest-but-curious server and clients (some of which may
// collude with it, fewer than t in any neighbourhood). Against a server that
// lies about who dropped, clients refuse overlapping survivor/dropped lists
// and never reveal both kinds of share for one peer across requests, and the
// threshold must be a strict majority of each neighbourhood; this stops a
// lying server only when none (or, for the complete graph with even n, one)
// of the target's neighbours colludes with it. The consistency-check round of
// Bonawitz et al.'s malicious-server variant (signatures over U3) is not
// implemented, and identity keys are only as authentic as their source. See
// docs/secure-aggregation.md, "Threat model".
//
// Where the code is (privacy/): secagg_params (parameters, session digest,
// neighbour graph), secagg_messages (structs, Serialize/Parse), secagg_codec
// (private: byte writer/reader and the one parse helper), secagg_keys
// (private: key advertisement signatures, key agreement, share-encryption
// AD), secagg_masks (mask PRG), secagg_client, secagg_server, quantization.
