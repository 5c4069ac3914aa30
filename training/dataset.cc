#include "training/dataset.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "core/rng.h"

namespace flotilla::training {
namespace {

constexpr uint32_t kImagesMagic = 0x00000803;  // unsigned byte, 3 dimensions
constexpr uint32_t kLabelsMagic = 0x00000801;  // unsigned byte, 1 dimension
constexpr float kMean = 0.2860f;
constexpr float kStd = 0.3530f;
// Bounds that keep a corrupt header from making us allocate absurd buffers.
constexpr uint32_t kMaxExamples = 10'000'000;
constexpr uint32_t kMaxSide = 4096;
constexpr int64_t kNumClasses = 10;
constexpr const char* kPackageHint = "apt-get install dataset-fashion-mnist";

// Owns a gzFile. zlib reads uncompressed files transparently, so a plain IDX
// file is accepted too.
class GzReader {
 public:
  // Opens `path`; NotFound when it does not exist.
  static StatusOr<GzReader> Open(const std::string& path) {
    errno = 0;
    gzFile f = gzopen(path.c_str(), "rb");
    if (f == nullptr) {
      const int err = errno;
      if (err == ENOENT) {
        return NotFound(path +
                        ": no such file; the Fashion-MNIST files come from Debian's "
                        "dataset-fashion-mnist package (" +
                        std::string(kPackageHint) + ")");
      }
      return Status(err == EACCES ? StatusCode::kPermissionDenied : StatusCode::kInternal,
                    path + ": cannot open: " + (err ? std::strerror(err) : "out of memory"));
    }
    return GzReader(f, path);
  }

  GzReader(GzReader&& o) noexcept : file_(std::exchange(o.file_, nullptr)), path_(std::move(o.path_)) {}
  GzReader& operator=(GzReader&&) = delete;
  GzReader(const GzReader&) = delete;
  ~GzReader() {
    if (file_ != nullptr) gzclose(file_);
  }

  // Reads exactly `n` bytes into `out`; DataLoss when the file ends early or
  // the compressed stream is corrupt.
  Status ReadExactly(void* out, size_t n) {
    auto* p = static_cast<unsigned char*>(out);
    while (n > 0) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n, size_t{1} << 30));
      const int got = gzread(file_, p, chunk);
      if (got < 0) {
        int errnum = 0;
        const char* msg = gzerror(file_, &errnum);
        return DataLoss(path_ + ": corrupt gzip data (" + (msg ? msg : "unknown zlib error") +
                        "); reinstall the dataset (" + kPackageHint + " --reinstall)");
      }
      if (got == 0) {
        return DataLoss(path_ + ": file is truncated; reinstall the dataset (" + std::string(kPackageHint) +
                        " --reinstall)");
      }
      p += got;
      n -= static_cast<size_t>(got);
    }
    return Status::Ok();
  }

  StatusOr<uint32_t> ReadBigEndian32() {
    std::array<unsigned char, 4> b{};
    RETURN_IF_ERROR(ReadExactly(b.data(), b.size()));
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
  }

  const std::string& path() const { return path_; }

 private:
  GzReader(gzFile f, std::string path) : file_(f), path_(std::move(path)) {}
  gzFile file_;
  std::string path_;
};

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

struct ImagesHeader {
  uint32_t count = 0, rows = 0, cols = 0;
};

StatusOr<ImagesHeader> ReadImagesHeader(GzReader& r) {
  ASSIGN_OR_RETURN(uint32_t magic, r.ReadBigEndian32());
  if (magic != kImagesMagic) {
    return DataLoss(r.path() + ": not an IDX image file (magic " + Hex32(magic) + ", expected 0x00000803)");
  }
  ImagesHeader h;
  ASSIGN_OR_RETURN(h.count, r.ReadBigEndian32());
  ASSIGN_OR_RETURN(h.rows, r.ReadBigEndian32());
  ASSIGN_OR_RETURN(h.cols, r.ReadBigEndian32());
  if (h.count > kMaxExamples || h.rows == 0 || h.cols == 0 || h.rows > kMaxSide || h.cols > kMaxSide) {
    return DataLoss(r.path() + ": implausible IDX dimensions " + std::to_string(h.count) + "x" +
                    std::to_string(h.rows) + "x" + std::to_string(h.cols));
  }
  return h;
}

StatusOr<uint32_t> ReadLabelsHeader(GzReader& r) {
  ASSIGN_OR_RETURN(uint32_t magic, r.ReadBigEndian32());
  if (magic != kLabelsMagic) {
    return DataLoss(r.path() + ": not an IDX label file (magic " + Hex32(magic) + ", expected 0x00000801)");
  }
  ASSIGN_OR_RETURN(uint32_t count, r.ReadBigEndian32());
  if (count > kMaxExamples) {
    return DataLoss(r.path() + ": implausible label count " + std::to_string(count));
  }
  return count;
}

}  // namespace

DataView DataView::All(std::shared_ptr<const Dataset> base) {
  DataView view;
  const int64_t n = base ? base->size() : 0;
  view.indices.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) view.indices[static_cast<size_t>(i)] = i;
  view.base = std::move(base);
  return view;
}

StatusOr<Dataset> LoadFashionMnist(const std::string& dir, Split split, int64_t limit) {
  if (limit < 0) return InvalidArgument("LoadFashionMnist: limit must be >= 0, got " + std::to_string(limit));
  const std::string prefix = dir + "/" + (split == Split::kTrain ? "train" : "t10k");
  const std::string images_path = prefix + "-images-idx3-ubyte.gz";
  const std::string labels_path = prefix + "-labels-idx1-ubyte.gz";

  ASSIGN_OR_RETURN(GzReader images, GzReader::Open(images_path));
  ASSIGN_OR_RETURN(GzReader labels, GzReader::Open(labels_path));
  ASSIGN_OR_RETURN(ImagesHeader ih, ReadImagesHeader(images));
  ASSIGN_OR_RETURN(uint32_t label_count, ReadLabelsHeader(labels));
  if (label_count != ih.count) {
    return DataLoss(images_path + " holds " + std::to_string(ih.count) + " images but " + labels_path +
                    " holds " + std::to_string(label_count) + " labels");
  }

  const int64_t n = limit > 0 ? std::min<int64_t>(limit, ih.count) : int64_t{ih.count};
  Dataset ds;
  ds.channels = 1;
  ds.height = ih.rows;
  ds.width = ih.cols;
  ds.num_classes = kNumClasses;

  std::vector<unsigned char> raw_labels(static_cast<size_t>(n));
  RETURN_IF_ERROR(labels.ReadExactly(raw_labels.data(), raw_labels.size()));
  ds.labels.resize(raw_labels.size());
  for (size_t i = 0; i < raw_labels.size(); ++i) {
    if (raw_labels[i] >= kNumClasses) {
      return DataLoss(labels_path + ": label " + std::to_string(raw_labels[i]) + " of example " +
                      std::to_string(i) + " is not in [0, 10)");
    }
    ds.labels[i] = raw_labels[i];
  }

  // Read and convert in chunks so the raw bytes never need a second full copy.
  const size_t per_image = static_cast<size_t>(ih.rows) * ih.cols;
  ds.features.resize(static_cast<size_t>(n) * per_image);
  std::vector<unsigned char> chunk;
  constexpr size_t kChunkImages = 1024;
  for (size_t start = 0; start < static_cast<size_t>(n); start += kChunkImages) {
    const size_t count = std::min(kChunkImages, static_cast<size_t>(n) - start);
    chunk.resize(count * per_image);
    RETURN_IF_ERROR(images.ReadExactly(chunk.data(), chunk.size()));
    float* out = ds.features.data() + start * per_image;
    for (size_t i = 0; i < chunk.size(); ++i) {
      out[i] = (static_cast<float>(chunk[i]) / 255.0f - kMean) / kStd;
    }
  }
  return ds;
}

Dataset MakeSynthetic(int64_t n, uint64_t seed, int64_t height, int64_t width) {
  n = std::max<int64_t>(n, 0);
  height = std::max<int64_t>(height, 1);
  width = std::max<int64_t>(width, 1);
  Dataset ds;
  ds.channels = 1;
  ds.height = height;
  ds.width = width;
  ds.num_classes = kNumClasses;
  const size_t numel = static_cast<size_t>(height * width);

  Rng rng(DeriveSeed(seed, "synthetic"));
  std::vector<float> prototypes(static_cast<size_t>(kNumClasses) * numel);
  for (float& v : prototypes) v = static_cast<float>(rng.Normal());

  constexpr double kNoise = 0.8;
  ds.labels.resize(static_cast<size_t>(n));
  ds.features.resize(static_cast<size_t>(n) * numel);
  for (size_t i = 0; i < static_cast<size_t>(n); ++i) {
    const int64_t label = static_cast<int64_t>(rng.UniformInt(kNumClasses));
    ds.labels[i] = label;
    const float* proto = prototypes.data() + static_cast<size_t>(label) * numel;
    float* out = ds.features.data() + i * numel;
    for (size_t j = 0; j < numel; ++j) out[j] = proto[j] + static_cast<float>(kNoise * rng.Normal());
  }
  return ds;
}

}  // namespace flotilla::training
