// wherevit_aoti: run a wherevit AOTInductor package (.pt2) on image files, from C++.
//
//   wherevit_aoti MODEL.pt2 [--out DIR] [--device cpu|cuda] [--dump-input] [--no-verify] IMAGE [IMAGE ...]
//   wherevit_aoti MODEL.pt2 [...] --input-npy BATCH.npy [--input-npy BATCH_B.npy]   (preprocessed float32 NCHW)
//
// Reads MODEL.pt2.json (the sidecar), decodes and preprocesses every image exactly as it says,
// runs the package with torch::inductor::AOTIModelPackageLoader in batches within the sidecar's
// range, prints each output's name, shape and first values, and with --out writes DIR/<output>.npy
// (np.load reads them). A two-input artifact (relative pose: images_a, images_b) takes pairs:
// a1 b1 a2 b2 ...
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>

// Only the headers used (not <torch/torch.h>): the example compiles in seconds, not a minute.
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "wherevit_io.hpp"

namespace {

int usage(const char* argv0) {
  std::cerr << "usage: " << argv0 << " MODEL.pt2 [--out DIR] [--device cpu|cuda] [--dump-input] [--no-verify] IMAGE [IMAGE ...]\n"
            << "       " << argv0 << " MODEL.pt2 [...] --input-npy BATCH.npy [--input-npy BATCH_B.npy]\n"
            << "  MODEL.pt2.json (its sidecar) must sit beside it; a two-input (pose) model takes pairs a1 b1 a2 b2 ...\n"
            << "  --input-npy: an already preprocessed float32 [N, 3, H, W] batch per model input, in the sidecar's order\n";
  return 2;
}

std::string npy_descr(at::ScalarType t, size_t* itemsize) {
  switch (t) {
    case at::kFloat: *itemsize = 4; return "<f4";
    case at::kLong: *itemsize = 8; return "<i8";
    case at::kInt: *itemsize = 4; return "<i4";
    default: throw std::runtime_error(std::string("unsupported output dtype ") + c10::toString(t));
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, out_dir, device = "cpu";
  bool dump_input = false, verify = true;
  std::vector<std::string> images, npy;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") return usage(argv[0]);
    if ((a == "--out" || a == "-o") && i + 1 < argc) { out_dir = argv[++i]; continue; }
    if (a == "--device" && i + 1 < argc) { device = argv[++i]; continue; }
    if (a == "--input-npy" && i + 1 < argc) { npy.push_back(argv[++i]); continue; }
    if (a == "--dump-input") { dump_input = true; continue; }
    if (a == "--no-verify") { verify = false; continue; }
    if (model_path.empty()) model_path = a; else images.push_back(a);
  }
  if (model_path.empty() || (images.empty() && npy.empty())) return usage(argv[0]);
  try {
    const wherevit::Sidecar sc = wherevit::read_sidecar(model_path, "pt2");
    if (verify) wherevit::verify_artifact(model_path, sc);
    const size_t n_in = sc.inputs.size();
    int64_t total = 0;
    std::vector<std::vector<float>> batches = wherevit::load_feeds(sc, images, npy, &total);
    std::vector<at::Tensor> feeds;
    for (auto& x : batches) feeds.push_back(at::from_blob(x.data(), {total, 3, sc.pre.height, sc.pre.width}, at::kFloat).clone());
    if (!out_dir.empty()) std::filesystem::create_directories(out_dir);
    if (dump_input && !out_dir.empty())
      for (size_t i = 0; i < n_in; ++i)
        wherevit::write_npy(out_dir + "/input_" + sc.inputs[i] + ".npy", feeds[i].data_ptr(), "<f4", 4,
                            {total, 3, sc.pre.height, sc.pre.width});

    const c10::Device dev(device);
    c10::InferenceMode guard;
    torch::inductor::AOTIModelPackageLoader loader(model_path, "model", false, 1, dev.is_cuda() ? dev.index() : -1);

    // Batches within the sidecar's range: split above max, pad below min (padding dropped).
    std::vector<std::vector<at::Tensor>> chunks;
    for (int64_t start = 0; start < total; start += sc.batch_max) {
      const int64_t n = std::min<int64_t>(sc.batch_max, total - start);
      std::vector<at::Tensor> x;
      for (auto& f : feeds) {
        at::Tensor c = f.narrow(0, start, n);
        if (n < sc.batch_min) c = at::cat({c, c.narrow(0, n - 1, 1).expand({sc.batch_min - n, -1, -1, -1})});
        x.push_back(c.contiguous().to(dev));
      }
      std::vector<at::Tensor> out = loader.run(x);
      if (out.size() != sc.outputs.size())
        throw std::runtime_error("the package returned " + std::to_string(out.size()) + " outputs, the sidecar names " +
                                 std::to_string(sc.outputs.size()));
      for (auto& o : out) o = o.narrow(0, 0, n).to(at::kCPU);
      chunks.push_back(out);
    }
    for (size_t k = 0; k < sc.outputs.size(); ++k) {
      std::vector<at::Tensor> parts;
      for (auto& c : chunks) parts.push_back(c[k]);
      at::Tensor t = at::cat(parts).contiguous();
      size_t itemsize = 0;
      const std::string descr = npy_descr(t.scalar_type(), &itemsize);
      std::cout << sc.outputs[k] << " " << (descr == "<f4" ? "float32" : descr == "<i8" ? "int64" : "int32") << " "
                << t.sizes() << " first:";
      at::Tensor flat = t.reshape({-1}).to(at::kDouble);
      for (int64_t e = 0; e < std::min<int64_t>(4, flat.numel()); ++e)
        std::cout << " " << std::setprecision(6) << flat[e].item<double>();
      std::cout << "\n";
      if (!out_dir.empty()) {
        std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
        wherevit::write_npy(out_dir + "/" + sc.outputs[k] + ".npy", t.data_ptr(), descr, itemsize, shape);
      }
    }
    std::cout << "ran " << total << " sample(s) of " << sc.raw.at("model").value("model", "?") << " (" << sc.task << ", "
              << sc.precision << ") on " << device << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
