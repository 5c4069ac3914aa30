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

// A TorchScript federation's global model back as a TorchScript file the
// device's own code loads with torch::jit::load: the module in
// `module_path` (the device's copy) with every tensor of `weights` copied
// into the parameter or buffer of that name. What the weights do not carry
// (personal layers, local buffers) stays as in the file, unless `local` (a
// device's own personal parameters and local buffers, ModelRunner::
// GetLocalState) is given: then those are copied in too. A tensor the
// module does not have, or of another shape, is an error naming it.
Status WriteTorchScript(const std::string& module_path, const Weights& weights, const std::string& out_path,
                        const Weights* local = nullptr);

}  // namespace flotilla::training
