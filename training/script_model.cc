// TorchScript models: the module a data scientist saved with
// torch.jit.save, loaded with torch::jit::load, its parameters and buffers
// sorted into what travels (the layout on the wire), what the optimizer
// trains, and what stays on the device.
#include <fnmatch.h>

#include <set>

#include "training/model_impl.h"

namespace flotilla::training {
namespace {

bool Matches(const std::vector<std::string>& globs, const std::string& name, std::set<std::string>* used) {
  bool any = false;
  for (const auto& g : globs) {
    if (fnmatch(g.c_str(), name.c_str(), 0) == 0) {
      used->insert(g);
      any = true;
    }
  }
  return any;
}

// A pattern that matches nothing is a typo, not a no-op.
Status CheckAllUsed(const std::vector<std::string>& globs, const std::set<std::string>& used,
                    const char* what, const std::vector<std::string>& names, const std::string& path) {
  for (const auto& g : globs) {
    if (used.count(g)) continue;
    std::string list;
    for (size_t i = 0; i < names.size() && i < 12; ++i) list += (i ? ", " : "") + names[i];
    if (names.size() > 12) list += ", ...";
    return InvalidArgument(std::string(what) + " pattern '" + g + "' matches no parameter of " + path +
                           " (parameters: " + list + ")");
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::unique_ptr<ModelRunner::Impl>> ModelRunner::LoadScript(const ModelSpec& spec) {
  if (spec.path.empty()) return InvalidArgument("a TorchScript model needs a file: [model] path");
  auto impl = std::make_unique<Impl>();
  impl->arch = kTorchScript;
  try {
    impl->script = torch::jit::load(spec.path, torch::kCPU);
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    return InvalidArgument("cannot load the TorchScript model " + spec.path + ": " + what +
                           " (make it with torch.jit.script or torch.jit.trace and torch.jit.save)");
  }
  std::vector<std::pair<std::string, std::vector<int64_t>>> travels, stays;
  std::vector<std::string> names;
  std::set<std::string> frozen_used, personal_used;
  try {
    for (const auto& p : impl->script->named_parameters(/*recurse=*/true)) {
      names.push_back(p.name);
      if (p.value.scalar_type() != torch::kFloat) {
        return InvalidArgument("parameter '" + p.name + "' of " + spec.path + " is " +
                               std::string(c10::toString(p.value.scalar_type())) +
                               "; Flotilla federates float32 models (call .float() before saving)");
      }
      torch::Tensor t = p.value;
      impl->state.push_back(t);
      const bool frozen = Matches(spec.freeze, p.name, &frozen_used);
      const bool personal = Matches(spec.personal, p.name, &personal_used);
      t.set_requires_grad(!frozen);
      if (!frozen) impl->trainable.push_back(t);
      if (!personal) {
        travels.emplace_back(p.name, t.sizes().vec());
        impl->params.push_back(t);
      } else {
        stays.emplace_back(p.name, t.sizes().vec());
        impl->local.push_back(t);
      }
    }
    for (const auto& b : impl->script->named_buffers(/*recurse=*/true)) {
      impl->state.push_back(b.value);
      // Integer buffers (BatchNorm's num_batches_tracked) count local steps:
      // they never travel.
      if (b.value.scalar_type() != torch::kFloat) continue;
      if (spec.buffers == ModelSpec::Buffers::kFederated) {
        travels.emplace_back(b.name, b.value.sizes().vec());
        impl->params.push_back(b.value);
      } else {
        stays.emplace_back(b.name, b.value.sizes().vec());
        impl->local.push_back(b.value);
      }
    }
  } catch (const std::exception& e) {
    return Internal("reading the parameters of " + spec.path + " failed in LibTorch: " + e.what());
  }
  RETURN_IF_ERROR(CheckAllUsed(spec.freeze, frozen_used, "freeze", names, spec.path));
  RETURN_IF_ERROR(CheckAllUsed(spec.personal, personal_used, "personal", names, spec.path));
  if (travels.empty()) {
    return InvalidArgument(spec.path + " has nothing to federate: no parameters, or all of them personal");
  }
  ASSIGN_OR_RETURN(Layout layout, Layout::Create(travels));
  impl->layout = std::make_shared<const Layout>(std::move(layout));
  if (!stays.empty()) {
    ASSIGN_OR_RETURN(Layout local, Layout::Create(stays));
    impl->local_layout = std::make_shared<const Layout>(std::move(local));
  }
  return impl;
}

std::optional<Weights> ModelRunner::GetLocalState() const {
  if (!impl_->local_layout) return std::nullopt;
  return internal::CopyOut(impl_->local_layout, impl_->local);
}

Status ModelRunner::SetLocalState(const Weights& state) {
  if (!impl_->local_layout) return FailedPrecondition("this model keeps nothing on the device");
  return internal::CopyIn(*impl_->local_layout, state, &impl_->local, "the device's stored local state");
}

Status ModelRunner::SaveScript(const Weights& global, const std::string& path) {
  if (!impl_->script) {
    return FailedPrecondition("SaveScript: '" + impl_->arch +
                              "' is a built-in architecture, not TorchScript");
  }
  RETURN_IF_ERROR(SetWeights(global));
  try {
    impl_->SetTraining(false);
    impl_->script->save(path);
  } catch (const std::exception& e) {
    return Unavailable("cannot write TorchScript file " + path + ": " + e.what());
  }
  return Status::Ok();
}

}  // namespace flotilla::training
