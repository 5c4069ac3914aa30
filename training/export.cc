#include "training/export.h"

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

}  // namespace flotilla::training
