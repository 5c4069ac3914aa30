// TorchScript models (training/script_model.cc): what travels, what trains,
// what stays on the device. The .pt files are made at build time by
// scripts/make_models.py with python3-torch.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "training/csv.h"
#include "training/dataset.h"
#include "training/model.h"

namespace flotilla::training {
namespace {

std::string ModelFile(const std::string& name) { return std::string(FLOTILLA_MODELS) + "/" + name + ".pt"; }

ModelSpec Script(const std::string& name) {
  ModelSpec spec;
  spec.arch = kTorchScript;
  spec.path = ModelFile(name);
  return spec;
}

std::unique_ptr<ModelRunner> Load(const ModelSpec& spec) {
  auto runner = ModelRunner::Create(spec, 0);
  INFO(runner.status().ToString());
  REQUIRE(runner.ok());
  return std::move(runner).value();
}

std::vector<std::string> Names(const Layout& layout) {
  std::vector<std::string> names;
  for (const auto& t : layout.tensors()) names.push_back(t.name);
  return names;
}

bool Has(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// The values of the tensors whose names start with `prefix`.
std::vector<float> Slice(const Weights& w, const std::string& prefix) {
  std::vector<float> out;
  for (const auto& t : w.layout->tensors()) {
    if (t.name.rfind(prefix, 0) == 0) {
      out.insert(out.end(), w.data.begin() + t.offset, w.data.begin() + t.offset + t.numel);
    }
  }
  return out;
}

TrainConfig Sgd() {
  TrainConfig tc;
  tc.epochs = 1;
  tc.batch_size = 16;
  tc.learning_rate = 0.05;
  return tc;
}

}  // namespace

TEST_CASE("A TorchScript model with BatchNorm federates its running statistics, or keeps them local",
          "[training][script]") {
  auto federated = Load(Script("bn_cnn"));
  const std::vector<std::string> names = Names(*federated->layout());
  CHECK(names.front() == "conv1.weight");
  CHECK(Has(names, "bn1.weight"));  // BatchNorm's affine parameters are parameters
  CHECK(Has(names, "bn1.running_mean"));
  CHECK(Has(names, "bn2.running_var"));
  CHECK_FALSE(Has(names, "bn1.num_batches_tracked"));  // integer buffers never travel
  CHECK(federated->arch() == kTorchScript);

  ModelSpec local = Script("bn_cnn");
  local.buffers = ModelSpec::Buffers::kLocal;
  auto fedbn = Load(local);
  const std::vector<std::string> local_names = Names(*fedbn->layout());
  CHECK_FALSE(Has(local_names, "bn1.running_mean"));
  CHECK(Has(local_names, "bn1.weight"));
  CHECK(local_names.size() + 4 == names.size());

  // Training runs in train() mode: the running statistics move.
  auto data = std::make_shared<const Dataset>(MakeSynthetic(256, 3));
  const DataView view = DataView::All(data);
  const Weights before = federated->GetWeights();
  auto result = federated->Train(view, Sgd());
  INFO(result.status().ToString());
  REQUIRE(result.ok());
  CHECK(std::isfinite(result->mean_loss));
  const Weights after = federated->GetWeights();
  CHECK(Slice(after, "bn1.running_mean") != Slice(before, "bn1.running_mean"));
  CHECK(Slice(after, "fc.") != Slice(before, "fc."));
  // Evaluation runs in eval() mode: dropout off, statistics fixed, so it is
  // deterministic and leaves the model as it was.
  auto e1 = federated->Evaluate(view);
  auto e2 = federated->Evaluate(view);
  REQUIRE(e1.ok());
  REQUIRE(e2.ok());
  CHECK(e1->loss == e2->loss);
  CHECK(federated->GetWeights().data == after.data);
  // And it learns: the synthetic classes are separable.
  for (int i = 0; i < 4; ++i) REQUIRE(federated->Train(view, Sgd()).ok());
  CHECK(federated->Evaluate(view)->accuracy > 0.5);  // chance is 0.1

  // Another runner set to the trained weights evaluates the same.
  auto copy = Load(Script("bn_cnn"));
  REQUIRE(copy->SetWeights(federated->GetWeights()).ok());
  CHECK(copy->Evaluate(view)->loss == Approx(federated->Evaluate(view)->loss).epsilon(1e-6));
}

TEST_CASE("A frozen backbone stays bit-identical while the head trains", "[training][script]") {
  ModelSpec spec = Script("backbone_head");
  spec.freeze = {"backbone.*"};
  auto runner = Load(spec);
  auto data = std::make_shared<const Dataset>(MakeSynthetic(128, 5));
  const Weights before = runner->GetWeights();
  REQUIRE(runner->Train(DataView::All(data), Sgd()).ok());
  const Weights after = runner->GetWeights();
  CHECK(Slice(after, "backbone.") == Slice(before, "backbone."));  // exactly, bit for bit
  CHECK(Slice(after, "head.") != Slice(before, "head."));
  CHECK(Has(Names(*runner->layout()), "backbone.0.weight"));  // frozen still travels with the model
}

TEST_CASE("Personal layers train on the device and are not in the layout on the wire", "[training][script]") {
  ModelSpec spec = Script("backbone_head");
  spec.personal = {"head.*"};
  auto runner = Load(spec);
  const std::vector<std::string> names = Names(*runner->layout());
  CHECK_FALSE(Has(names, "head.weight"));
  CHECK_FALSE(Has(names, "head.bias"));
  CHECK(Has(names, "backbone.3.weight"));
  auto data = std::make_shared<const Dataset>(MakeSynthetic(128, 5));
  const DataView view = DataView::All(data);
  const double untrained = runner->Evaluate(view)->loss;
  for (int i = 0; i < 3; ++i) REQUIRE(runner->Train(view, Sgd()).ok());
  const double trained = runner->Evaluate(view)->loss;
  CHECK(trained < untrained);
  // A global model arriving replaces the shared part only: the personal
  // head stays as trained, so the loss stays near what the device reached.
  auto other = Load(spec);
  REQUIRE(runner->SetWeights(runner->GetWeights()).ok());
  CHECK(runner->Evaluate(view)->loss == Approx(trained).epsilon(1e-6));
  REQUIRE(other->SetWeights(runner->GetWeights()).ok());  // same layout on every device
}

TEST_CASE("A wrong model file on a device names the first differing parameter", "[training][script]") {
  auto expected = Load(Script("bn_cnn"));
  auto wrong = Load(Script("other_cnn"));
  Status st = wrong->SetWeights(expected->GetWeights());
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("conv1.weight") != std::string::npos);
  CHECK(st.message().find("[12,1,3,3]") != std::string::npos);

  auto missing = ModelRunner::Create(Script("no_such_model"), 0);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message().find("no_such_model.pt") != std::string::npos);

  // Not TorchScript at all.
  const std::string junk = std::string(FLOTILLA_MODELS) + "/junk.pt";
  std::ofstream(junk) << "not a model";
  ModelSpec bad = Script("junk");
  auto loaded = ModelRunner::Create(bad, 0);
  REQUIRE_FALSE(loaded.ok());
  CHECK(loaded.status().message().find("torch.jit.save") != std::string::npos);

  ModelSpec typo = Script("backbone_head");
  typo.freeze = {"backbon.*"};
  auto t = ModelRunner::Create(typo, 0);
  REQUIRE_FALSE(t.ok());
  CHECK(t.status().message().find("backbon.*") != std::string::npos);
  CHECK(t.status().message().find("backbone.0.weight") != std::string::npos);

  ModelSpec everything = Script("tabular_mlp");
  everything.personal = {"*"};
  CHECK_FALSE(ModelRunner::Create(everything, 0).ok());
  CHECK(ParseBufferPolicy("local").value() == ModelSpec::Buffers::kLocal);
  CHECK_FALSE(ParseBufferPolicy("shared").ok());
}

TEST_CASE("Data a TorchScript model cannot take fails with a clear error, not a crash",
          "[training][script]") {
  auto tabular = Load(Script("tabular_mlp"));  // expects 30 features
  auto images = std::make_shared<const Dataset>(MakeSynthetic(32, 1));
  auto r = tabular->Train(DataView::All(images), Sgd());
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("model was left as before") != std::string::npos);
}

TEST_CASE("DP-SGD trains a TorchScript model with per-example clipping, and BatchNorm is refused",
          "[training][script]") {
  auto tabular = Load(Script("tabular_mlp"));
  Dataset d;
  d.channels = d.height = 1;
  d.width = 30;
  d.num_classes = 2;
  for (int i = 0; i < 200; ++i) {  // two separable classes
    for (int j = 0; j < 30; ++j)
      d.features.push_back((i % 2 ? 1.0f : -1.0f) + 0.1f * static_cast<float>(j % 3));
    d.labels.push_back(i % 2);
  }
  const DataView view = DataView::All(std::make_shared<const Dataset>(std::move(d)));
  DpSgdConfig dp;
  dp.noise_multiplier = 0.5;
  dp.l2_clip = 1.0;
  dp.sampling_rate = 0.1;
  TrainConfig tc = Sgd();
  tc.epochs = 2;
  tc.learning_rate = 0.5;
  auto r = tabular->TrainDpSgd(view, tc, dp);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->steps == 20);  // epochs / q
  CHECK(tabular->Evaluate(view)->accuracy > 0.9);

  // With zero noise and a clip no gradient reaches, one step equals plain
  // SGD on the same batch (the whole data set at q = 1, no sampling).
  auto a = Load(Script("tabular_mlp"));
  auto b = Load(Script("tabular_mlp"));
  DpSgdConfig exact;
  exact.noise_multiplier = 0.0;
  exact.l2_clip = 1e6;
  exact.sampling_rate = 1.0;
  exact.steps = 1;
  exact.poisson_sampling = false;
  TrainConfig one = Sgd();
  one.batch_size = 200;
  REQUIRE(a->TrainDpSgd(view, one, exact).ok());
  REQUIRE(b->Train(view, one).ok());
  // Dropout draws differ between the two runs, so compare with a tolerance
  // on the training effect rather than bit for bit.
  const Weights wa = a->GetWeights(), wb = b->GetWeights();
  double diff = 0.0, moved = 0.0;
  const Weights w0 = Load(Script("tabular_mlp"))->GetWeights();
  for (size_t i = 0; i < wa.data.size(); ++i) {
    diff += std::abs(wa.data[i] - wb.data[i]);
    moved += std::abs(wb.data[i] - w0.data[i]);
  }
  CHECK(diff < 0.5 * moved);

  auto bn = Load(Script("bn_cnn"));
  auto images = std::make_shared<const Dataset>(MakeSynthetic(32, 1));
  auto refused = bn->TrainDpSgd(DataView::All(images), Sgd(), dp);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("BatchNorm") != std::string::npos);
}

}  // namespace flotilla::training

namespace flotilla::training {
namespace {

const char* kSklearnData = "/usr/lib/python3/dist-packages/sklearn/datasets/data/";

DataView AllOf(Dataset d) { return DataView::All(std::make_shared<const Dataset>(std::move(d))); }

TrainConfig Adam(int epochs) {
  TrainConfig tc = Sgd();
  tc.optimizer = Optimizer::kAdam;
  tc.learning_rate = 0.01;
  tc.epochs = epochs;
  return tc;
}

// The evaluation before and after training `runner` on `view` with `tc`.
std::pair<EvalResult, EvalResult> BeforeAndAfter(ModelRunner* runner, const DataView& view,
                                                 const TrainConfig& tc) {
  auto before = runner->Evaluate(view);
  REQUIRE(before.ok());
  REQUIRE(runner->Train(view, tc).ok());
  auto after = runner->Evaluate(view);
  REQUIRE(after.ok());
  return {*before, *after};
}

}  // namespace

TEST_CASE("ROC AUC counts ordered pairs, ties as half", "[training][losses]") {
  CHECK(RocAuc({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 1, 1}) == Approx(0.75));
  CHECK(RocAuc({1, 2, 3, 4}, {0, 0, 1, 1}) == Approx(1.0));
  CHECK(RocAuc({4, 3, 2, 1}, {0, 0, 1, 1}) == Approx(0.0));
  CHECK(RocAuc({1, 1, 1, 1}, {0, 1, 0, 1}) == Approx(0.5));
  CHECK(std::isnan(RocAuc({1, 2}, {1, 1})));
}

TEST_CASE("Binary cross-entropy with Adam learns the breast-cancer records and reports AUC",
          "[training][losses]") {
  CsvOptions csv;
  csv.skip_rows = 1;
  auto data = LoadCsv(std::string(kSklearnData) + "breast_cancer.csv", csv);
  REQUIRE(data.ok());
  const DataView view = AllOf(data->dataset);
  ModelSpec spec = Script("tabular_logit");
  spec.loss = Loss::kBinaryCrossEntropy;
  auto runner = Load(spec);
  const TrainConfig tc = Adam(5);
  const auto [before, after] = BeforeAndAfter(runner.get(), view, tc);
  CHECK(after.loss < before.loss);
  CHECK(after.accuracy > 0.95);
  CHECK(after.auc > 0.98);
  CHECK(std::isnan(after.mae));
  // The 2-logit model does not fit the loss: a clear error, no crash.
  ModelSpec wrong = Script("tabular_mlp");
  wrong.loss = Loss::kBinaryCrossEntropy;
  auto two = Load(wrong);
  auto refused = two->Train(view, tc);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(std::string(refused.status().message()), Catch::Contains("needs one output per example"));
  // Labels beyond 0/1 are refused for bce.
  Dataset three = data->dataset;
  three.labels[7] = 2;
  three.num_classes = 3;
  auto bad = runner->Train(AllOf(three), tc);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(std::string(bad.status().message()), Catch::Contains("needs labels 0 and 1"));
}

TEST_CASE("Mean squared error regresses real targets from a CSV and reports MAE", "[training][losses]") {
  CsvOptions csv;
  csv.skip_rows = 1;
  csv.header = true;
  csv.label_column = "MEDV";
  csv.real_target = true;
  auto data = LoadCsv(std::string(kSklearnData) + "boston_house_prices.csv", csv);
  REQUIRE(data.ok());
  REQUIRE(data->dataset.targets.size() == 506);
  CHECK(data->dataset.targets[0] == Approx(24.0));
  const DataView view = AllOf(data->dataset);
  ModelSpec spec = Script("tabular_regressor");
  spec.loss = Loss::kMse;
  auto runner = Load(spec);
  const auto [before, after] = BeforeAndAfter(runner.get(), view, Adam(40));
  // House prices in $1000s: from predicting ~0 to within a few thousand.
  CHECK(before.mae > 15);
  CHECK(after.mae < 4);
  CHECK(after.loss == Approx(after.loss));  // finite
  CHECK(after.loss < 0.1 * before.loss);
  CHECK(after.accuracy == 0);
  // Class labels are not regression targets, and real targets are not classes.
  auto classes = runner->Evaluate(AllOf(MakeSynthetic(10, 1, 1, 13)));
  REQUIRE_FALSE(classes.ok());
  CHECK_THAT(std::string(classes.status().message()), Catch::Contains("needs a real-valued target"));
  ModelSpec ce = Script("tabular_mlp");
  auto wrong = Load(ce);
  CHECK_FALSE(wrong->Evaluate(view).ok());
  // A bad target is named with its line.
  CsvOptions strict = csv;
  const std::string path = std::filesystem::temp_directory_path() / "flotilla-bad-target.csv";
  {
    std::ofstream out(path);
    out << "skip\na,b\n1,2.5\n3,oops\n";
  }
  strict.label_column = "b";
  auto bad = LoadCsv(path, strict);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(std::string(bad.status().message()), Catch::Contains(":4"));
  CHECK_THAT(std::string(bad.status().message()), Catch::Contains("not a finite number"));
  std::filesystem::remove(path);
}

TEST_CASE("The built-in classifiers take cross-entropy only", "[training][losses]") {
  auto spec = MakeModelSpec("2nn", "", "", {}, {}, "mse");
  REQUIRE_FALSE(spec.ok());
  CHECK_THAT(std::string(spec.status().message()), Catch::Contains("10-class classifier"));
  CHECK_FALSE(MakeModelSpec(kTorchScript, "m.pt", "", {}, {}, "hinge").ok());
  CHECK(MakeModelSpec(kTorchScript, "m.pt", "", {}, {}, "bce")->loss == Loss::kBinaryCrossEntropy);
  CHECK(ParseOptimizer("adam").value() == Optimizer::kAdam);
  CHECK_FALSE(ParseOptimizer("rmsprop").ok());
}

}  // namespace flotilla::training
