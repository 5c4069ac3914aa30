#include "training/export.h"

#include <torch/script.h>

#include <map>

#include "training/model.h"

namespace flotilla::training {
namespace {

// Writes `tensors` (dotted names relative to this level) into `archive`,
// nesting one child archive per submodule as Module::save does.
void WriteLevel(torch::serialize::OutputArchive& archive,
                const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::vector<std::string> child_order;
  std::map<std::string, std::vector<std::pair<std::string, torch::Tensor>>> children;
  for (const auto& [name, tensor] : tensors) {
    const auto dot = name.find('.');
    if (dot == std::string::npos) {
      archive.write(name, tensor, /*is_buffer=*/false);
    } else {
      const std::string child = name.substr(0, dot);
      if (!children.count(child)) child_order.push_back(child);
      children[child].emplace_back(name.substr(dot + 1), tensor);
    }
  }
  for (const auto& child : child_order) {
    torch::serialize::OutputArchive child_archive(archive.compilation_unit());
    WriteLevel(child_archive, children[child]);
    archive.write(child, child_archive);
  }
}

}  // namespace

Status ExportTorchModule(const std::string& arch, const Weights& weights, const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner, ModelRunner::Create(arch, 0));
  RETURN_IF_ERROR(weights.Validate());
  RETURN_IF_ERROR(runner->layout()->CheckSame(*weights.layout).WithContext("export"));
  try {
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const TensorSpec& t : weights.layout->tensors()) {
      torch::Tensor tensor =
          torch::from_blob(const_cast<float*>(weights.data.data()) + t.offset, t.shape, torch::kFloat32)
              .clone();
      tensors.emplace_back(t.name, tensor);
    }
    torch::serialize::OutputArchive archive;
    WriteLevel(archive, tensors);
    archive.save_to(path);
  } catch (const std::exception& e) {
    return Unavailable("cannot write LibTorch archive " + path + ": " + e.what());
  }
  return Status::Ok();
}

Status WriteTorchScript(const std::string& module_path, const Weights& weights, const std::string& out_path,
                        const Weights* local) {
  RETURN_IF_ERROR(weights.Validate());
  if (local != nullptr) RETURN_IF_ERROR(local->Validate());
  torch::jit::Module module;
  try {
    module = torch::jit::load(module_path, torch::kCPU);
  } catch (const std::exception& e) {
    std::string what = e.what();
    return InvalidArgument("cannot load the TorchScript model " + module_path + ": " +
                           what.substr(0, what.find('\n')));
  }
  try {
    std::map<std::string, torch::Tensor> slots;
    for (const auto& p : module.named_parameters(/*recurse=*/true)) slots[p.name] = p.value;
    for (const auto& b : module.named_buffers(/*recurse=*/true)) slots[b.name] = b.value;
    torch::NoGradGuard no_grad;
    auto copy_in = [&](const Weights& from, const std::string& what) -> Status {
      for (const TensorSpec& t : from.layout->tensors()) {
        auto slot = slots.find(t.name);
        if (slot == slots.end()) {
          return InvalidArgument(what + " has '" + t.name + "', which " + module_path +
                                 " does not: is it the federation's model file?");
        }
        if (slot->second.sizes().vec() != t.shape || slot->second.scalar_type() != torch::kFloat) {
          return InvalidArgument("'" + t.name + "' has another shape or type in " + module_path +
                                 " than in " + what + ": is it the federation's model file?");
        }
        slot->second.copy_(
            torch::from_blob(const_cast<float*>(from.data.data()) + t.offset, t.shape, torch::kFloat32));
      }
      return Status::Ok();
    };
    RETURN_IF_ERROR(copy_in(weights, "the global model"));
    if (local != nullptr) RETURN_IF_ERROR(copy_in(*local, "this device's local state"));
    module.save(out_path);
  } catch (const std::exception& e) {
    return Unavailable("cannot write TorchScript file " + out_path + ": " + e.what());
  }
  return Status::Ok();
}

}  // namespace flotilla::training
