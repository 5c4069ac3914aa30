// An application that takes part in a federation from its own process: the
// code docs/client.md ("Embedding the library") walks through, built with
// the project so it stays true. Its "camera" hands over the newest frames
// before every round (here: synthetic 28x28 images); it trains only while
// the machine is idle (here: while the file PATH given by --busy-file does
// not exist), shows its progress, and writes the final model for its own
// inference.
//
// usage: embed_device --endpoint tcp://HOST:PORT --name NAME --keys DIR
//                     [--federation ID] [--model model.pt] [--state DIR] [--busy-file PATH]
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "client/data_source.h"
#include "client/device.h"
#include "privacy/keys.h"
#include "training/dataset.h"

using namespace flotilla;

namespace {

// The application's own examples, fetched before every round.
StatusOr<training::Dataset> LatestFrames() {
  static uint64_t frame = 0;
  return training::MakeSynthetic(200, ++frame);  // stands in for the camera's newest labelled frames
}

int Fail(const Status& st) {
  std::fprintf(stderr, "embed_device: %s\n", st.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string endpoint, name, keys, federation = "flotilla", model, state, busy_file;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: embed_device --endpoint tcp://HOST:PORT --name NAME --keys DIR [--federation ID] "
          "[--model model.pt] [--state DIR] [--busy-file PATH]\n"
          "Takes part in a federation as the device NAME (its key DIR/NAME.curve.key, the aggregator's "
          "DIR/aggregator.curve.pub and DIR/aggregator.sign.pub), training on the application's own "
          "examples; see docs/client.md, \"Embedding the library\".\n");
      return 0;
    }
    if (a == "--endpoint")
      endpoint = value();
    else if (a == "--name")
      name = value();
    else if (a == "--keys")
      keys = value();
    else if (a == "--federation")
      federation = value();
    else if (a == "--model")
      model = value();
    else if (a == "--state")
      state = value();
    else if (a == "--busy-file")
      busy_file = value();
    else {
      std::fprintf(stderr, "embed_device: unknown argument '%s' (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (endpoint.empty() || name.empty() || keys.empty()) {
    std::fprintf(stderr, "embed_device: --endpoint, --name and --keys are required (see --help)\n");
    return 2;
  }

  client::DeviceOptions options;
  options.session.endpoint = endpoint;
  options.session.name = name;
  options.session.federation = federation;
  auto own = privacy::ReadCurveSecretFile(keys + "/" + name + ".curve.key");
  if (!own.ok()) return Fail(own.status());
  auto server = privacy::ReadCurvePublicFile(keys + "/aggregator.curve.pub");
  if (!server.ok()) return Fail(server.status());
  options.session.socket.curve.public_key = own->public_z85;
  options.session.socket.curve.secret_key = own->SecretZ85();
  options.session.socket.curve.server_public_key = *server;
  auto model_key = privacy::ReadSigningPublicFile(keys + "/aggregator.sign.pub");
  if (!model_key.ok()) return Fail(model_key.status());
  options.model_public_key = *model_key;
  options.model_path = model;
  options.state_dir = state.empty() ? "embed-device-" + name : state;
  options.final_model_out = options.state_dir + "/final-model" + (model.empty() ? ".f32" : ".pt");

  client::DeviceCallbacks callbacks;
  callbacks.may_train = [busy_file] {  // never train while the machine is busy
    std::error_code ec;
    return busy_file.empty() || !std::filesystem::exists(busy_file, ec);
  };
  callbacks.on_progress = [](const client::Progress& p) {
    if (p.event == client::Progress::Event::kStep && p.step == p.steps) {
      std::printf("round %u: trained %lld steps\n", p.round, static_cast<long long>(p.steps));
    } else if (p.event == client::Progress::Event::kDeclined) {
      std::printf("round %u: declined (%s)\n", p.round, p.detail.c_str());
    }
  };
  auto device = client::Device::Create(options, client::CallbackSource(LatestFrames, 0.1), callbacks);
  if (!device.ok()) return Fail(device.status());
  auto stats = (*device)->Run();  // blocks; Stop(), Pause(), Resume() work from any thread
  if (!stats.ok()) return Fail(stats.status());
  std::printf("trained %d rounds; final model version %llu in %s\n", stats->rounds_trained,
              static_cast<unsigned long long>(stats->final_model_version), options.final_model_out.c_str());
  return 0;
}
