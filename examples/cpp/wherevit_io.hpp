// wherevit C++ examples: the artifact's sidecar, image decoding and preprocessing, .npy output.
//
// Everything the model expects comes from the sidecar JSON beside the artifact (model.pt2.json,
// model.engine.json): input names and size, resize mode, interpolation rule, mean/std, colour
// order, batch range and output names. The preprocessing below is a line-by-line port of
// wherevit/base/image.py (Preprocess) so the C++ app feeds the model the same floats as Python.
// Built with WHEREVIT_NO_OPENCV (CMake does so where OpenCV is missing) the apps take already
// preprocessed batches as .npy files (--input-npy) instead of image files.
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
#ifndef WHEREVIT_NO_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

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

// SHA-256 of a file (FIPS 180-4), to check the artifact against the sidecar as the Python runtime
// does: a replaced or truncated model file is refused instead of silently run.
inline std::string sha256_file(const std::string& path) {
  static const uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
      0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
      0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
      0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
      0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
      0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  auto block = [&](const unsigned char* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  };
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot read");
  std::vector<unsigned char> buf(1 << 20);
  uint64_t total = 0;
  size_t fill = 0;  // bytes of a partial block kept at the front of buf
  while (true) {
    f.read(reinterpret_cast<char*>(buf.data() + fill), static_cast<std::streamsize>(buf.size() - fill));
    const size_t got = static_cast<size_t>(f.gcount());
    total += got;
    const size_t have = fill + got, whole = have / 64 * 64;
    for (size_t off = 0; off < whole; off += 64) block(buf.data() + off);
    fill = have - whole;
    std::memmove(buf.data(), buf.data() + whole, fill);
    if (got == 0) break;
  }
  unsigned char tail[128] = {0};
  std::memcpy(tail, buf.data(), fill);
  tail[fill] = 0x80;
  const size_t n = fill + 9 <= 64 ? 64 : 128;
  const uint64_t bits = total * 8;
  for (int i = 0; i < 8; ++i) tail[n - 1 - i] = static_cast<unsigned char>(bits >> (8 * i));
  for (size_t off = 0; off < n; off += 64) block(tail + off);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (uint32_t v : h)
    for (int sft = 28; sft >= 0; sft -= 4) out.push_back(hex[(v >> sft) & 0xf]);
  return out;
}

// The artifact must be the file the sidecar describes (its SHA-256), as wherevit's read_sidecar checks.
inline void verify_artifact(const std::string& artifact, const Sidecar& s) {
  const std::string want = s.raw.at("artifact").value("sha256", "");
  const std::string have = sha256_file(artifact);
  if (want != have)
    throw std::runtime_error(artifact + " does not match its sidecar: file SHA-256 " + have.substr(0, 16) + "..., sidecar says " +
                             want.substr(0, std::min<size_t>(16, want.size())) +
                             "...; the file was replaced or corrupted -- re-export both together");
}

#ifndef WHEREVIT_NO_OPENCV
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
#endif  // WHEREVIT_NO_OPENCV

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

// A float32 .npy file (little-endian, C order, format 1.x or 2.x): its shape and values, checked
// against the file's size so a truncated or mislabelled file is an error, not garbage.
inline std::vector<float> read_npy_f32(const std::string& path, std::vector<int64_t>* shape) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot read");
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0 || (magic[6] != 1 && magic[6] != 2))
    throw std::runtime_error(path + ": not a .npy file (format 1.x or 2.x)");
  uint32_t hlen = 0;
  unsigned char len[4] = {0, 0, 0, 0};
  f.read(reinterpret_cast<char*>(len), magic[6] == 1 ? 2 : 4);
  hlen = uint32_t(len[0]) | uint32_t(len[1]) << 8 | uint32_t(len[2]) << 16 | uint32_t(len[3]) << 24;
  if (!f || hlen > (1u << 16)) throw std::runtime_error(path + ": bad .npy header length");
  std::string header(hlen, '\0');
  f.read(header.data(), hlen);
  if (!f) throw std::runtime_error(path + ": truncated .npy header");
  if (header.find("'descr': '<f4'") == std::string::npos)
    throw std::runtime_error(path + ": expected float32 little-endian data ('<f4'); save with np.asarray(x, '<f4')");
  if (header.find("'fortran_order': False") == std::string::npos) throw std::runtime_error(path + ": expected C order");
  const size_t open = header.find("'shape': ("), close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) throw std::runtime_error(path + ": no shape in the .npy header");
  shape->clear();
  std::stringstream dims(header.substr(open + 10, close - open - 10));
  std::string item;
  size_t count = 1;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    shape->push_back(std::stoll(item));
    if (shape->back() < 0) throw std::runtime_error(path + ": negative dimension");
    count *= static_cast<size_t>(shape->back());
  }
  std::vector<float> data(count);
  f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (!f || f.peek() != std::char_traits<char>::eof())
    throw std::runtime_error(path + ": the data does not match the header's shape (truncated or extra bytes)");
  return data;
}

// One float32 NCHW batch per model input, from preprocessed .npy files (one per input, the sidecar's
// input order) or from image files (sample k's image for input i is images[k * n_inputs + i]).
inline std::vector<std::vector<float>> load_feeds(const Sidecar& sc, const std::vector<std::string>& images,
                                                  const std::vector<std::string>& npy, int64_t* total) {
  const size_t n_in = sc.inputs.size();
  std::vector<std::vector<float>> feeds;
  if (!npy.empty()) {
    if (!images.empty()) throw std::runtime_error("give image files or --input-npy batches, not both");
    if (npy.size() != n_in) throw std::runtime_error("this model has " + std::to_string(n_in) + " input(s); got " +
                                                     std::to_string(npy.size()) + " --input-npy file(s)");
    for (size_t i = 0; i < n_in; ++i) {
      std::vector<int64_t> shape;
      feeds.push_back(read_npy_f32(npy[i], &shape));
      if (shape.size() != 4 || shape[1] != 3 || shape[2] != sc.pre.height || shape[3] != sc.pre.width || shape[0] < 1)
        throw std::runtime_error(npy[i] + ": expected a [N, 3, " + std::to_string(sc.pre.height) + ", " +
                                 std::to_string(sc.pre.width) + "] batch for input " + sc.inputs[i]);
      if (i > 0 && shape[0] != *total) throw std::runtime_error("the --input-npy batches have different sizes");
      *total = shape[0];
    }
    return feeds;
  }
#ifdef WHEREVIT_NO_OPENCV
  throw std::runtime_error("this build has no OpenCV to decode images: pass preprocessed batches with --input-npy");
#else
  if (images.size() % n_in != 0)
    throw std::runtime_error("this " + sc.task + " model takes " + std::to_string(n_in) + " images per sample; got " +
                             std::to_string(images.size()) + " image(s)");
  *total = static_cast<int64_t>(images.size() / n_in);
  std::vector<cv::Mat> rgb;
  for (const auto& p : images) rgb.push_back(read_rgb(p));
  for (size_t i = 0; i < n_in; ++i) {
    std::vector<cv::Mat> group;
    for (int64_t k = 0; k < *total; ++k) group.push_back(rgb[static_cast<size_t>(k) * n_in + i]);
    feeds.push_back(preprocess(group, sc.pre));
  }
  return feeds;
#endif
}

}  // namespace wherevit
