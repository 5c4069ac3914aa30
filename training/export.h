// Export of model weights as a LibTorch archive: the same layout
// torch::save(module, path) writes, so `torch::load(module, path)` fills an
// instance of the model class (nested submodule archives, one entry per
// parameter).
#pragma once

#include <string>

#include "core/status.h"
#include "core/weights.h"

namespace flotilla::training {

// `arch` must be a known architecture and `weights` must match its layout.
Status ExportTorchModule(const std::string& arch, const Weights& weights, const std::string& path);

}  // namespace flotilla::training
