// The `flotilla` command and its config file: keys map to the flags of the
// roles that take them, mistakes name the file and the key, the docs list
// every key, and the command line overrides the file.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "cli/config_file.h"
#include "core/subprocess.h"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

fs::path TempFile(const std::string& name, const std::string& text) {
  const fs::path p = fs::temp_directory_path() / ("flotilla-cli-" + std::to_string(::getpid()) + "-" + name);
  std::ofstream(p) << text;
  return p;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs the flotilla binary; returns its exit code and output.
int RunFlotilla(const std::vector<std::string>& args, std::string* output) {
  const fs::path out = fs::temp_directory_path() / ("flotilla-cli-out-" + std::to_string(::getpid()));
  fs::remove(out);
  std::vector<std::string> argv = {FLOTILLA_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  const pid_t pid = SpawnProcess(argv, out.string());
  REQUIRE(pid > 0);
  const int code = WaitProcess(pid);
  *output = ReadAll(out);
  fs::remove(out);
  return code;
}

const std::string kExample = std::string(FLOTILLA_SOURCE_DIR) + "/examples/federation.toml";

}  // namespace

TEST_CASE("Config keys become the flags of the roles that take them", "[cli]") {
  auto agg = cli::ReadConfigFlags(kExample, "aggregator");
  REQUIRE(agg.ok());
  const std::set<std::string> flags(agg->flags.begin(), agg->flags.end());
  CHECK(flags.count("--federation=fashion-demo"));
  CHECK(flags.count("--endpoint=tcp://127.0.0.1:7400"));
  CHECK(flags.count("--epochs=2"));
  CHECK(flags.count("--seed=7"));
  CHECK_FALSE(flags.count("--partition=iid"));  // a data key the aggregator does not take
  CHECK(agg->origin.at("--epochs").find("[round] epochs in " + kExample) != std::string::npos);
  auto client = cli::ReadConfigFlags(kExample, "client");
  REQUIRE(client.ok());
  const std::set<std::string> cflags(client->flags.begin(), client->flags.end());
  CHECK(cflags.count("--connect=tcp://127.0.0.1:7400"));  // the same key, the device's flag
  CHECK_FALSE(cflags.count("--epochs=2"));                // training settings travel in tasks
  auto train = cli::ReadConfigFlags(kExample, "client run");
  REQUIRE(train.ok());
  const std::set<std::string> tflags(train->flags.begin(), train->flags.end());
  CHECK(tflags.count("--seed=7"));  // the partition seed is shared, not handed over by hand
  CHECK(tflags.count("--partition=iid"));
}

TEST_CASE("Config mistakes name the file, the key and what is allowed", "[cli]") {
  const fs::path typo = TempFile("typo.toml", "[round]\nepoch = 3\n");
  auto r = cli::ReadConfigFlags(typo.string(), "aggregator");
  REQUIRE_FALSE(r.ok());
  const std::string m(r.status().message());
  CHECK(m.find(typo.string()) != std::string::npos);
  CHECK(m.find("'epoch'") != std::string::npos);
  CHECK(m.find("epochs") != std::string::npos);  // the allowed keys
  const fs::path section = TempFile("section.toml", "[rounds]\nepochs = 3\n");
  CHECK(std::string(cli::ReadConfigFlags(section.string(), "sim").status().message())
            .find("unknown section [rounds]") != std::string::npos);
  const fs::path top = TempFile("top.toml", "epochs = 3\n");
  CHECK(
      std::string(cli::ReadConfigFlags(top.string(), "sim").status().message()).find("outside any section") !=
      std::string::npos);
  CHECK_FALSE(cli::ReadConfigFlags("/nonexistent/flotilla.toml", "sim").ok());
  fs::remove(typo);
  fs::remove(section);
  fs::remove(top);
}

TEST_CASE("docs/configuration.md lists every config key", "[cli]") {
  const std::string docs = ReadAll(std::string(FLOTILLA_SOURCE_DIR) + "/docs/configuration.md");
  REQUIRE_FALSE(docs.empty());
  for (const cli::ConfigKey& k : cli::ConfigKeys()) {
    const size_t section = docs.find(std::string("## [") + k.section + "]");
    INFO("[" << k.section << "] " << k.key);
    REQUIRE(section != std::string::npos);
    const size_t next = docs.find("\n## ", section + 1);
    const std::string body =
        docs.substr(section, next == std::string::npos ? std::string::npos : next - section);
    CHECK(body.find(std::string("| `") + k.key + "` |") != std::string::npos);
    CHECK(body.find(std::string("`") + k.flag + "`") != std::string::npos);
  }
}

TEST_CASE("flotilla config show merges the file and the flags", "[cli]") {
  std::string out;
  REQUIRE(RunFlotilla({"config", "show", "--config", kExample}, &out) == 0);
  CHECK(out.find("[round]\nbatch = 32") != std::string::npos);
  CHECK(out.find("epochs = 2\n") != std::string::npos);
  CHECK(out.find("name = \"fashion-demo\"") != std::string::npos);
  REQUIRE(RunFlotilla({"config", "show", "--config", kExample, "--epochs", "9"}, &out) == 0);
  CHECK(out.find("epochs = 9\n") != std::string::npos);  // the command line wins
  REQUIRE(RunFlotilla({"config", "show", "--config", kExample, "--role", "client", "--name", "dev0"}, &out) ==
          0);
  CHECK(out.find("endpoint = \"tcp://127.0.0.1:7400\"") != std::string::npos);
  CHECK(out.find("seed = 7") != std::string::npos);
  const fs::path typo = TempFile("typo2.toml", "[round]\nepoch = 3\n");
  CHECK(RunFlotilla({"aggregator", "--config", typo.string()}, &out) == 2);
  CHECK(out.find("unknown key 'epoch' in [round]") != std::string::npos);
  const fs::path bad = TempFile("bad.toml", "[round]\nepochs = \"many\"\n");
  CHECK(RunFlotilla({"aggregator", "--config", bad.string()}, &out) != 0);
  CHECK(out.find("[round] epochs in " + bad.string()) != std::string::npos);
  fs::remove(typo);
  fs::remove(bad);
}

TEST_CASE("flotilla --help lists every subcommand and each has --help", "[cli]") {
  std::string out;
  REQUIRE(RunFlotilla({"--help"}, &out) == 0);
  for (const char* sub :
       {"aggregator", "client", "sim", "keygen", "registry", "dp", "report", "config show"}) {
    CHECK(out.find(std::string("  ") + sub) != std::string::npos);
  }
  for (const char* sub : {"aggregator", "client", "sim", "keygen", "registry", "dp", "report"}) {
    INFO(sub);
    CHECK(RunFlotilla({sub, "--help"}, &out) == 0);
    CHECK(out.find("--") != std::string::npos);
  }
  CHECK(RunFlotilla({"frobnicate"}, &out) == 2);
  CHECK(out.find("unknown subcommand") != std::string::npos);
}

TEST_CASE("CSV feature columns and targets reach the reader from flags", "[cli]") {
  const std::string bc = "csv:/usr/lib/python3/dist-packages/sklearn/datasets/data/breast_cancer.csv";
  std::string out;
  // The label column cannot also be a feature (30 is the last column).
  CHECK(RunFlotilla({"client", "predict", "--model", FLOTILLA_BIN, "--data", bc, "--csv-skip-rows", "1",
                     "--csv-features", "0,30"},
                    &out) != 0);
  CHECK(out.find("column '30' is the label") != std::string::npos);
  // An unknown target kind is a usage error.
  CHECK(RunFlotilla({"client", "predict", "--model", FLOTILLA_BIN, "--data", bc, "--csv-target", "bogus"},
                    &out) != 0);
  CHECK(out.find("--csv-target") != std::string::npos);
}
