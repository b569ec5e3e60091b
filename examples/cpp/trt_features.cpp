// wherevit_trt: run a wherevit TensorRT / TensorRT-RTX engine (.engine) on image files, from C++.
//
//   wherevit_trt MODEL.engine [--out DIR] [--dump-input] [--no-verify] IMAGE [IMAGE ...]
//   wherevit_trt MODEL.engine [...] --input-npy BATCH.npy [--input-npy BATCH_B.npy]   (preprocessed float32 NCHW)
//
// The same shape as wherevit_aoti: sidecar (MODEL.engine.json) -> OpenCV decode + preprocess ->
// batches within the engine's profile -> outputs printed and written as DIR/<output>.npy.
// Before deserialising, the engine is checked against this build and this GPU the way the Python
// runtime does it (wherevit/runtime/backends/tensorrt.py, check_engine_compat): the library that
// built it must be this library at exactly the same version, and this GPU's compute capability
// must be one the engine targets. Engines carry no portable format: a mismatch means rebuilding.
#include <cuda_runtime_api.h>
#include <NvInfer.h>
#include <NvInferVersion.h>

#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include "wherevit_io.hpp"

namespace {

#if defined(TRT_MAJOR_RTX)
constexpr const char* kLibrary = "tensorrt_rtx";
const std::string kVersion = std::to_string(TRT_MAJOR_RTX) + "." + std::to_string(TRT_MINOR_RTX) + "." +
                             std::to_string(TRT_PATCH_RTX) + "." + std::to_string(TRT_BUILD_RTX);
#else
constexpr const char* kLibrary = "tensorrt";
const std::string kVersion = std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
                             std::to_string(NV_TENSORRT_PATCH) + "." + std::to_string(NV_TENSORRT_BUILD);
#endif

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[" << kLibrary << "] " << msg << "\n";
  }
};

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": CUDA error " + cudaGetErrorName(err));
}

// As check_engine_compat: the same library at the same version, and a targeted compute capability.
void check_engine_compat(const wherevit::Sidecar& sc, const std::string& device_cc) {
  const wherevit::json eng = sc.raw.value("engine", wherevit::json::object());
  const std::string lib = eng.value("library", "?"), built = eng.value("version", "?");
  const std::string rebuild = "rebuild it on this machine: wherevit export " +
                              sc.raw.value("model", wherevit::json::object()).value("checkpoint", "CKPT") +
                              " --format engine --precision " + sc.precision + " --trt-lib " + lib;
  if (lib != kLibrary)
    throw std::runtime_error("engine built by " + lib + " " + built + ", this program is built against " + kLibrary + " " +
                             kVersion + "; build wherevit_trt with -DWHEREVIT_TRT_LIB=" +
                             (lib == "tensorrt_rtx" ? "tensorrt_rtx" : "nvinfer") + " or " + rebuild);
  if (built != kVersion)
    throw std::runtime_error("engine built by " + lib + " " + built + ", this program uses " + lib + " " + kVersion +
                             ": TensorRT engines only load with the exact version that built them; " + rebuild);
  std::vector<std::string> targets;
  for (const auto& cc : eng.value("compute_capabilities", wherevit::json::array())) targets.push_back(cc.get<std::string>());
  if (!targets.empty() && std::find(targets.begin(), targets.end(), device_cc) == targets.end()) {
    std::string list;
    for (const auto& t : targets) list += (list.empty() ? "" : ", ") + t;
    std::string extra = " --cc " + device_cc;
    if (lib == "tensorrt_rtx" && device_cc.rfind("9.", 0) == 0)
      extra = " (TensorRT-RTX does not support compute capability 9.0; use the full tensorrt package)";
    throw std::runtime_error("engine built for compute capability " + list + ", this GPU is " + device_cc + "; " + rebuild + extra);
  }
}

size_t dtype_size(nvinfer1::DataType t, std::string* descr) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: *descr = "<f4"; return 4;
    case nvinfer1::DataType::kHALF: *descr = "<f2"; return 2;
    case nvinfer1::DataType::kINT32: *descr = "<i4"; return 4;
    case nvinfer1::DataType::kINT64: *descr = "<i8"; return 8;
    default: throw std::runtime_error("unsupported engine tensor dtype");
  }
}

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  void reserve(size_t n) {
    if (n <= bytes) return;
    if (ptr) cudaFree(ptr);
    cuda_check(cudaMalloc(&ptr, n), "cudaMalloc");
    bytes = n;
  }
  ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
};

int usage(const char* argv0) {
  std::cerr << "usage: " << argv0 << " MODEL.engine [--out DIR] [--dump-input] [--no-verify] IMAGE [IMAGE ...]\n"
            << "       " << argv0 << " MODEL.engine [...] --input-npy BATCH.npy [--input-npy BATCH_B.npy]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, out_dir;
  bool dump_input = false, verify = true;
  std::vector<std::string> images, npy;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") return usage(argv[0]);
    if ((a == "--out" || a == "-o") && i + 1 < argc) { out_dir = argv[++i]; continue; }
    if (a == "--input-npy" && i + 1 < argc) { npy.push_back(argv[++i]); continue; }
    if (a == "--dump-input") { dump_input = true; continue; }
    if (a == "--no-verify") { verify = false; continue; }
    if (model_path.empty()) model_path = a; else images.push_back(a);
  }
  if (model_path.empty() || (images.empty() && npy.empty())) return usage(argv[0]);
  try {
    const wherevit::Sidecar sc = wherevit::read_sidecar(model_path, "engine");
    if (verify) wherevit::verify_artifact(model_path, sc);
    int dev = 0;
    cudaDeviceProp prop{};
    cuda_check(cudaGetDevice(&dev), "cudaGetDevice");
    cuda_check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
    check_engine_compat(sc, std::to_string(prop.major) + "." + std::to_string(prop.minor));

    const size_t n_in = sc.inputs.size();
    int64_t total64 = 0;
    const std::vector<std::vector<float>> feeds = wherevit::load_feeds(sc, images, npy, &total64);
    const int total = static_cast<int>(total64);
    if (!out_dir.empty()) std::filesystem::create_directories(out_dir);
    const int64_t h = sc.pre.height, w = sc.pre.width, sample = 3 * h * w;
    if (dump_input && !out_dir.empty())
      for (size_t i = 0; i < n_in; ++i)
        wherevit::write_npy(out_dir + "/input_" + sc.inputs[i] + ".npy", feeds[i].data(), "<f4", 4, {total, 3, h, w});

    std::ifstream f(model_path, std::ios::binary);
    const std::vector<char> blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
    std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine) throw std::runtime_error(std::string(kLibrary) + " could not deserialise " + model_path + " (see the messages above)");
    std::unique_ptr<nvinfer1::IExecutionContext> ctx(engine->createExecutionContext());
    cudaStream_t stream;
    cuda_check(cudaStreamCreate(&stream), "cudaStreamCreate");

    std::map<std::string, DeviceBuffer> buffers;
    std::map<std::string, std::vector<char>> results;  // output name -> host bytes, all chunks
    std::map<std::string, std::vector<int64_t>> shapes;
    std::map<std::string, std::string> descrs;
    for (int start = 0; start < total; start += sc.batch_max) {
      const int n = std::min(sc.batch_max, total - start);
      const int run_n = std::max(n, sc.batch_min);  // pad only to the profile minimum
      for (size_t i = 0; i < n_in; ++i) {
        const std::string& name = sc.inputs[i];
        std::vector<float> x(feeds[i].begin() + start * sample, feeds[i].begin() + (start + n) * sample);
        const std::vector<float> last(x.end() - sample, x.end());
        for (int k = n; k < run_n; ++k) x.insert(x.end(), last.begin(), last.end());
        if (engine->getTensorDataType(name.c_str()) != nvinfer1::DataType::kFLOAT)
          throw std::runtime_error("input " + name + " is not float32 in this engine");
        if (!ctx->setInputShape(name.c_str(), nvinfer1::Dims4{run_n, 3, h, w}))
          throw std::runtime_error("batch " + std::to_string(run_n) + " is outside the engine's profile");
        DeviceBuffer& b = buffers[name];
        b.reserve(x.size() * sizeof(float));
        cuda_check(cudaMemcpyAsync(b.ptr, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice, stream), "copy in");
        ctx->setTensorAddress(name.c_str(), b.ptr);
      }
      std::map<std::string, std::vector<char>> host;
      for (const auto& name : sc.outputs) {
        const nvinfer1::Dims d = ctx->getTensorShape(name.c_str());
        size_t count = 1;
        std::vector<int64_t> shape;
        for (int k = 0; k < d.nbDims; ++k) { count *= static_cast<size_t>(d.d[k]); shape.push_back(d.d[k]); }
        const size_t item = dtype_size(engine->getTensorDataType(name.c_str()), &descrs[name]);
        DeviceBuffer& b = buffers[name];
        b.reserve(std::max<size_t>(count * item, 1));
        ctx->setTensorAddress(name.c_str(), b.ptr);
        host[name].resize(count * item);
        shape[0] = n;
        shapes[name] = shape;
      }
      if (!ctx->enqueueV3(stream)) throw std::runtime_error(std::string(kLibrary) + " execution failed");
      for (auto& [name, bytes] : host)
        cuda_check(cudaMemcpyAsync(bytes.data(), buffers[name].ptr, bytes.size(), cudaMemcpyDeviceToHost, stream), "copy out");
      cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      for (auto& [name, bytes] : host) {  // drop the padding rows
        const size_t keep = bytes.size() / static_cast<size_t>(run_n) * static_cast<size_t>(n);
        results[name].insert(results[name].end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(keep));
      }
    }
    cudaStreamDestroy(stream);
    for (const auto& name : sc.outputs) {
      std::vector<int64_t> shape = shapes[name];
      shape[0] = total;
      std::ostringstream s;
      for (size_t k = 0; k < shape.size(); ++k) s << (k ? ", " : "") << shape[k];
      std::cout << name << " " << descrs[name] << " [" << s.str() << "]\n";
      if (!out_dir.empty())
        wherevit::write_npy(out_dir + "/" + name + ".npy", results[name].data(), descrs[name],
                            descrs[name] == "<f2" ? 2 : (descrs[name] == "<i8" ? 8 : 4), shape);
    }
    std::cout << "ran " << total << " sample(s) with " << kLibrary << " " << kVersion << " on " << prop.name << " (compute capability "
              << prop.major << "." << prop.minor << ")\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
