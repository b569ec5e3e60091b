// wherevit C++ examples: the artifact's sidecar, image decoding and preprocessing, .npy output.
//
// Everything the model expects comes from the sidecar JSON beside the artifact (model.pt2.json,
// model.engine.json): input names and size, resize mode, interpolation rule, mean/std, colour
// order, batch range and output names. The preprocessing below is a line-by-line port of
// wherevit/base/image.py (Preprocess) so the C++ app feeds the model the same floats as Python.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace wherevit {

using json = nlohmann::json;

constexpr const char* kSidecarFormat = "wherevit.artifact/1";

struct Preprocess {
  int height = 224, width = 224;
  float mean[3] = {0.485f, 0.456f, 0.406f};
  float std[3] = {0.229f, 0.224f, 0.225f};
  std::string resize = "stretch";       // "stretch" | "shorter_center"
  std::string interpolation = "area";   // "area" (INTER_AREA shrinking, linear enlarging) | "linear" | "cubic"
  std::string color_order = "RGB";      // channel order the model expects
};

struct Sidecar {
  json raw;
  std::string kind, task, precision;
  std::vector<std::string> inputs, outputs;
  Preprocess pre;
  int batch_min = 1, batch_max = 1;
};

// Reads ARTIFACT.json and checks the fields this program relies on; throws naming the problem.
inline Sidecar read_sidecar(const std::string& artifact, const std::string& want_kind) {
  const std::string path = artifact + ".json";
  std::ifstream f(path);
  if (!f) throw std::runtime_error(path + ": no sidecar beside the artifact; re-export with `wherevit export`");
  Sidecar s;
  try {
    s.raw = json::parse(f);
  } catch (const json::parse_error& e) {
    throw std::runtime_error(path + ": not valid JSON (" + e.what() + ")");
  }
  const json& j = s.raw;
  try {
    if (j.at("format").get<std::string>() != kSidecarFormat)
      throw std::runtime_error("format " + j.at("format").dump() + ", expected " + kSidecarFormat);
    s.kind = j.at("kind").get<std::string>();
    if (s.kind != want_kind)
      throw std::runtime_error("artifact kind is '" + s.kind + "', this program runs '" + want_kind + "' artifacts");
    s.task = j.value("task", "features");
    s.precision = j.value("precision", "fp32");
    for (const auto& i : j.at("inputs")) s.inputs.push_back(i.at("name").get<std::string>());
    for (const auto& o : j.at("outputs")) s.outputs.push_back(o.at("name").get<std::string>());
    const json& p = j.at("preprocess");
    s.pre.height = p.at("size").at(0).get<int>();
    s.pre.width = p.at("size").at(1).get<int>();
    for (int c = 0; c < 3; ++c) {
      s.pre.mean[c] = static_cast<float>(p.at("mean").at(c).get<double>());
      s.pre.std[c] = static_cast<float>(p.at("std").at(c).get<double>());
    }
    s.pre.resize = p.value("resize", "stretch");
    s.pre.interpolation = p.value("interpolation", "area");
    s.pre.color_order = p.value("color_order", "RGB");
    if (p.value("layout", "NCHW") != "NCHW") throw std::runtime_error("preprocess.layout must be NCHW");
    s.batch_min = j.at("batch").at("min").get<int>();
    s.batch_max = j.at("batch").at("max").get<int>();
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": missing or mistyped field (" + std::string(e.what()) + ")");
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  return s;
}

// Decoded file -> contiguous HxWx3 uint8 RGB, as wherevit.base.image.to_rgb_uint8 does
// (16-bit / 257 rounded, float * 255 rounded and clipped, gray -> RGB, alpha dropped).
inline cv::Mat read_rgb(const std::string& path) {
  cv::Mat img = cv::imread(path, cv::IMREAD_UNCHANGED);
  if (img.empty()) throw std::runtime_error(path + ": not a readable image (missing, corrupt or unsupported format)");
  const int depth = img.depth();
  if (depth == CV_16U) {
    img.convertTo(img, CV_32F, 1.0 / 257.0);
    img.convertTo(img, CV_8U);  // convertTo rounds to nearest, like numpy's +0.5 then truncate for non-negative values
  } else if (depth == CV_32F || depth == CV_64F) {
    img.convertTo(img, CV_8U, 255.0);  // saturates at 0 and 255
  } else if (depth != CV_8U) {
    throw std::runtime_error(path + ": unsupported pixel depth");
  }
  cv::Mat rgb;
  switch (img.channels()) {
    case 1: cv::cvtColor(img, rgb, cv::COLOR_GRAY2RGB); break;
    case 3: cv::cvtColor(img, rgb, cv::COLOR_BGR2RGB); break;   // imread gives BGR
    case 4: cv::cvtColor(img, rgb, cv::COLOR_BGRA2RGB); break;
    default: throw std::runtime_error(path + ": unsupported channel count " + std::to_string(img.channels()));
  }
  return rgb;
}

inline cv::Mat resize_to(const cv::Mat& img, int h, int w, const std::string& interpolation) {
  if (img.rows == h && img.cols == w) return img;
  int flag;
  if (interpolation == "area") {
    flag = (h < img.rows || w < img.cols) ? cv::INTER_AREA : cv::INTER_LINEAR;  // area only when shrinking
  } else if (interpolation == "linear") {
    flag = cv::INTER_LINEAR;
  } else if (interpolation == "cubic") {
    flag = cv::INTER_CUBIC;
  } else {
    throw std::runtime_error("unknown interpolation '" + interpolation + "' in the sidecar");
  }
  cv::Mat out;
  cv::resize(img, out, cv::Size(w, h), 0, 0, flag);
  return out;
}

// One RGB image resized to the model's input size (Preprocess.resize_rgb).
inline cv::Mat resize_rgb(const cv::Mat& img, const Preprocess& p) {
  const int h = p.height, w = p.width;
  if (p.resize == "shorter_center") {
    const double s = std::max(static_cast<double>(h) / img.rows, static_cast<double>(w) / img.cols);
    // std::nearbyint rounds half to even, like Python's round()
    const int nh = std::max(h, static_cast<int>(std::nearbyint(img.rows * s)));
    const int nw = std::max(w, static_cast<int>(std::nearbyint(img.cols * s)));
    cv::Mat r = resize_to(img, nh, nw, p.interpolation);
    const int y0 = (nh - h) / 2, x0 = (nw - w) / 2;
    return r(cv::Rect(x0, y0, w, h));
  }
  if (p.resize != "stretch") throw std::runtime_error("unknown resize mode '" + p.resize + "' in the sidecar");
  return resize_to(img, h, w, p.interpolation);
}

// Images -> float32 NCHW batch: x / 255, then (x - mean) / std, in float32 in that order (so the
// values are bit-identical to numpy's). Colour order: RGB unless the sidecar says BGR.
inline std::vector<float> preprocess(const std::vector<cv::Mat>& rgb_images, const Preprocess& p) {
  const int h = p.height, w = p.width;
  const size_t plane = static_cast<size_t>(h) * w;
  std::vector<float> out(rgb_images.size() * 3 * plane);
  const bool bgr = p.color_order == "BGR";
  const float inv255 = static_cast<float>(1.0 / 255.0);
  for (size_t n = 0; n < rgb_images.size(); ++n) {
    cv::Mat r = resize_rgb(rgb_images[n], p);
    float* dst = out.data() + n * 3 * plane;
    for (int y = 0; y < h; ++y) {
      const uint8_t* row = r.ptr<uint8_t>(y);
      for (int x = 0; x < w; ++x) {
        for (int c = 0; c < 3; ++c) {
          const int src_c = bgr ? 2 - c : c;
          float v = static_cast<float>(row[x * 3 + src_c]) * inv255;
          v -= p.mean[c];
          v /= p.std[c];
          dst[c * plane + static_cast<size_t>(y) * w + x] = v;
        }
      }
    }
  }
  return out;
}

// A NumPy .npy file (format 1.0, little-endian, C order): np.load reads it directly.
inline void write_npy(const std::string& path, const void* data, const std::string& descr, size_t itemsize,
                      const std::vector<int64_t>& shape) {
  std::ostringstream dims;
  size_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dims << shape[i] << (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
    count *= static_cast<size_t>(shape[i]);
  }
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims.str() + "), }";
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw std::runtime_error(path + ": cannot write");
    const uint16_t hlen = static_cast<uint16_t>(header.size());
    f.write("\x93NUMPY\x01\x00", 8);
    f.write(reinterpret_cast<const char*>(&hlen), 2);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(count * itemsize));
    if (!f) throw std::runtime_error(path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": cannot move into place");
}

}  // namespace wherevit
