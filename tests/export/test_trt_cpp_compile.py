"""The TensorRT C++ example (examples/cpp/trt_features.cpp) compiled against TensorRT 10.16's and 11.1's headers.

The headers are vendored in third_party/tensorrt-headers/<version>/include (Apache-2.0, NVIDIA/TensorRT's
``include/``); the CUDA toolkit's headers come from /usr/local/cuda. CMake's ``wherevit_trt_objects``
target compiles every translation unit of ``wherevit_trt`` to objects. Linking needs the TensorRT
library (libnvinfer) and libcudart, and running needs a GPU with an engine built on it: neither is
possible here, so this test stops at the objects and checks that what is left for the linker is
exactly TensorRT's and CUDA's entry points.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEADERS = REPO / "third_party" / "tensorrt-headers"
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"


def _missing() -> str | None:
    if shutil.which("cmake") is None or (shutil.which("c++") or shutil.which("g++")) is None:
        return "cmake and a C++ compiler are needed (apt-get install cmake g++; .ci/run installs them)"
    if not (CUDA_INCLUDE / "cuda_runtime_api.h").is_file():
        return f"the CUDA toolkit's headers are not at {CUDA_INCLUDE} (set CUDA_HOME)"
    return None


@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
@pytest.mark.parametrize("version,opencv", [("10.16", True), ("11.1", True), ("11.1", False)],
                         ids=["trt10.16", "trt11.1", "trt11.1-no-opencv"])
def test_wherevit_trt_compiles_against_tensorrt_headers(version, opencv, tmp_path):
    include = HEADERS / version / "include"
    assert (include / "NvInfer.h").is_file() and (HEADERS / version / "LICENSE").is_file()
    build = tmp_path / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(REPO / "examples" / "cpp"), "-B", str(build), *generator,
                 f"-DTensorRT_INCLUDE_DIR={include}", f"-DCUDAToolkit_ROOT={CUDA_INCLUDE.parent}",
                 *([] if opencv else ["-DCMAKE_DISABLE_FIND_PACKAGE_OpenCV=ON"])]  # the --input-npy-only build
    res = subprocess.run(configure, capture_output=True, text=True)
    log = res.stdout + res.stderr
    if res.returncode != 0 and "nlohmann_json" in log:
        pytest.skip("nlohmann-json's CMake files are needed (apt-get install nlohmann-json3-dev; .ci/run installs it)")
    assert res.returncode == 0, log
    if opencv and "OpenCV (C++) not found" in log:
        pytest.skip("OpenCV C++ development files are needed for the image-decoding build (apt-get install libopencv-dev)")
    assert ("OpenCV (C++) not found" in log) == (not opencv)
    major, minor = version.split(".")
    assert f"compiling wherevit_trt_objects against TensorRT {major}.{minor}.0 headers" in log, log
    link_line = next(ln for ln in log.splitlines() if "SKIP wherevit_trt (objects only)" in ln)
    assert "linking and running need the TensorRT library, libcudart and a GPU" in link_line

    build_cmd = ["cmake", "--build", str(build), "--target", "wherevit_trt_objects", "--verbose", "-j2"]
    res = subprocess.run(build_cmd, capture_output=True, text=True)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    compile_line = next(ln for ln in out.splitlines() if "trt_features.cpp" in ln and " -c " in ln)
    print(f"\nTensorRT {version}{'' if opencv else ' (no OpenCV)'}: {compile_line.strip()}")
    assert ("-DWHEREVIT_NO_OPENCV" in compile_line) == (not opencv)
    ours = [ln for ln in out.splitlines() if "warning:" in ln and "examples/cpp" in ln]
    assert not ours, "warnings in our C++:\n" + "\n".join(ours)  # the headers' own are silenced as SYSTEM
    objects = list(build.rglob("trt_features.cpp.o"))
    assert len(objects) == 1 and objects[0].stat().st_size > 0
    if shutil.which("nm"):
        undefined = subprocess.run(["nm", "-u", str(objects[0])], capture_output=True, text=True, check=True).stdout
        # what only libnvinfer and libcudart can resolve: the link step that needs TensorRT and a CUDA runtime
        assert "createInferRuntime_INTERNAL" in undefined and "cudaMemcpyAsync" in undefined
    print(f"TensorRT {version}: wherevit_trt compiled to objects; linking needs libnvinfer and libcudart, "
          "running needs a GPU (not here)")
