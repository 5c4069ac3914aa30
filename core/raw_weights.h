// The raw export format for inference code outside LibTorch: PATH holds the
// weights as little-endian float32 in layout order, PATH.json the layout
// (names, shapes, offsets in elements) plus architecture, version and round.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"
#include "core/weights.h"

namespace flotilla {

Status WriteRawWeights(const std::string& path, const Weights& weights, const std::string& arch,
                       uint64_t version, uint32_t round);

}  // namespace flotilla
