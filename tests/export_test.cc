// Exported LibTorch archives load with torch::load into the model classes.
#include "training/export.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/raw_weights.h"
#include "training/model.h"
#include "training/model_impl.h"

using namespace flotilla;

TEST_CASE("An exported model loads with torch::load into its class", "[training][export]") {
  const auto path =
      std::filesystem::temp_directory_path() / ("flotilla-export-" + std::to_string(::getpid()) + ".pt");
  for (const std::string arch : {"logreg", "2nn"}) {
    auto runner = training::ModelRunner::Create(arch, 17);
    REQUIRE(runner.ok());
    const Weights w = (*runner)->GetWeights();
    REQUIRE(training::ExportTorchModule(arch, w, path.string()).ok());
    std::shared_ptr<torch::nn::Module> module;
    if (arch == "logreg")
      module = std::make_shared<training::internal::LogReg>();
    else
      module = std::make_shared<training::internal::Mlp2nn>();
    torch::load(module, path.string());
    size_t i = 0;
    for (const auto& p : module->named_parameters()) {
      const TensorSpec& spec = w.layout->tensors()[i++];
      REQUIRE(p.key() == spec.name);
      auto values = p.value().contiguous();
      REQUIRE(std::memcmp(values.data_ptr<float>(), w.data.data() + spec.offset,
                          spec.numel * sizeof(float)) == 0);
    }
    REQUIRE(i == w.layout->tensors().size());
  }
  // A layout that is not the architecture's is refused.
  auto other = training::ModelRunner::Create("logreg", 1);
  REQUIRE_FALSE(training::ExportTorchModule("2nn", (*other)->GetWeights(), path.string()).ok());
  std::filesystem::remove(path);
}

TEST_CASE("Raw export writes float32 data and a JSON layout", "[export]") {
  const auto path =
      std::filesystem::temp_directory_path() / ("flotilla-raw-" + std::to_string(::getpid()) + ".bin");
  auto layout = std::make_shared<const Layout>(*Layout::Create({{"a.w", {2, 2}}, {"a.b", {2}}}));
  Weights w = Weights::Zeros(layout);
  w.data = {1, 2, 3, 4, 5, 6};
  REQUIRE(WriteRawWeights(path.string(), w, "tiny", 7, 6).ok());
  REQUIRE(std::filesystem::file_size(path) == 24);
  std::ifstream json(path.string() + ".json");
  std::string text((std::istreambuf_iterator<char>(json)), std::istreambuf_iterator<char>());
  REQUIRE(text.find("\"a.b\", \"offset\": 4, \"shape\": [2]") != std::string::npos);
  REQUIRE(text.find("\"version\": 7") != std::string::npos);
  std::filesystem::remove(path);
  std::filesystem::remove(path.string() + ".json");
}
