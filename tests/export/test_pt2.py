"""AOTInductor packages (.pt2): export with parity, the pt2 runtime backend, and the C++ example
apps in examples/cpp built with CMake and checked against the Python runtime on the same images.

One compiled package is shared by the whole module (compiling takes ~15-30 s even for the tiny model).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import wherevit.app.pt2_backend  # noqa: F401  (registers the pt2 backend)
from wherevit import runtime
from wherevit.base.errors import InvalidRequest
from wherevit.base.io import sha256_file
from wherevit.base.sidecar import BatchRange, read_sidecar, sidecar_path
from wherevit.export.api import ExportRequest, export_artifacts
from wherevit.export.formats.pt2 import Pt2Error, compiler_unavailable_reason
from wherevit.export.onnx_export import FeatureModel
from wherevit.export.parity import torch_reference
from wherevit.runtime.compare import DEFAULT_RTOL, compare
from wherevit.train.checkpoint import load_backbone

pytestmark = pytest.mark.skipif(compiler_unavailable_reason() is not None, reason=str(compiler_unavailable_reason()))

REPO = Path(__file__).resolve().parents[2]
CPP_SRC = REPO / "examples" / "cpp"


@pytest.fixture(scope="module")
def pt2_artifact(trained_run, tmp_path_factory):
    """fp32 .pt2 (batch 2:3:4, so 5 images need a chunk of 4 and a padded chunk of 1) + sidecar."""
    out = tmp_path_factory.mktemp("pt2")
    return export_artifacts(ExportRequest(str(trained_run), out, format="pt2", batch=(2, 3, 4))).pt2


def test_pt2_export_sidecar_and_parity(pt2_artifact):
    meta = read_sidecar(pt2_artifact)
    assert pt2_artifact.name == "model_fp32.pt2"
    assert meta.kind == "pt2" and meta.artifact.sha256 == sha256_file(pt2_artifact)
    assert meta.inputs[0].name == "images" and meta.inputs[0].shape == [-1, 3, 32, 32]
    assert meta.output_names == ["cls", "patch_tokens", "pooled"]
    assert meta.batch == BatchRange(2, 3, 4)
    assert meta.pt2.device == "cpu" and meta.pt2.torch == torch.__version__
    par = meta.parity
    assert par["passed"] is True and par["reference"] == "PyTorch fp32" and par["rtol"] == DEFAULT_RTOL["fp32"]
    assert all(o["rel_l2"] < 1e-5 for kind in ("random", "scenes") for o in par[kind]["outputs"])


def test_pt2_backend_dynamic_batch_matches_pytorch(pt2_artifact, trained_run):
    ref = FeatureModel(load_backbone(trained_run, dynamic_img_size=False)[0]).eval()
    with runtime.load(pt2_artifact) as m:  # "auto" finds the pt2 backend for a .pt2
        assert m.backend.name == "pt2"
        for b in (1, 4, 7):  # below the minimum (padded), the maximum, above it (split)
            x = np.random.default_rng(b).standard_normal((b, 3, 32, 32)).astype(np.float32)
            got = m.run(x).outputs
            cmp = compare(torch_reference(ref, {"images": x}), got, DEFAULT_RTOL["fp32"])
            assert cmp, cmp.summary()
            assert got["cls"].shape == (b, 64) and got["patch_tokens"].shape == (b, 16, 64)


def test_pt2_refusals_are_clear(trained_run, pt2_artifact, tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(Pt2Error, match="has none"):
            export_artifacts(ExportRequest(str(trained_run), tmp_path, format="pt2", format_options={"pt2": {"device": "cuda"}}))
    with pytest.raises(InvalidRequest, match="--dynamic-hw is for ONNX only"):
        export_artifacts(ExportRequest(str(trained_run), tmp_path, format="pt2", dynamic_hw=True))
    assert not list(tmp_path.iterdir())
    from wherevit.app.pt2_backend import Pt2Backend

    meta = read_sidecar(pt2_artifact)
    if not torch.cuda.is_available():
        cuda = dataclasses.replace(meta, pt2=dataclasses.replace(meta.pt2, device="cuda"))
        assert "compiled for CUDA" in Pt2Backend.unavailable_reason(cuda)
    assert "runs pt2 artifacts" in Pt2Backend.unavailable_reason(dataclasses.replace(meta, kind="onnx"))


def test_pt2_parity_failure_leaves_nothing_behind(trained_run, pt2_artifact, tmp_path, monkeypatch):
    """rtol 1e-30 fails parity: the package and its sidecar are removed. (The compile step is stood
    in for by the module's package -- the same graph -- to keep the test fast.)"""
    import wherevit.export.formats.pt2 as pt2

    def reuse(model, out, batch, size, device="cpu"):
        out.write_bytes(pt2_artifact.read_bytes())
        return {"device": device, "torch": torch.__version__}  # the pt2 section's required facts (it is typed now)

    monkeypatch.setattr(pt2, "compile_pt2", reuse)
    with pytest.raises(pt2.ParityError, match="pt2 parity failed for model_fp32.pt2"):
        export_artifacts(ExportRequest(str(trained_run), tmp_path, format="pt2", batch=(2, 3, 4), rtol=1e-30))
    assert not list(tmp_path.iterdir())


# --- the C++ example apps -------------------------------------------------------------------------

def _first(patterns: list[str]) -> str | None:
    return next((p for pat in patterns for p in glob.glob(pat)), None)


def cpp_unavailable_reason() -> str | None:
    """Why the C++ example cannot be built here (None when it can)."""
    missing = []
    if not shutil.which("cmake"):
        missing.append("cmake")
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        missing.append("a C++ compiler (g++)")
    if not _first(["/usr/lib/*/cmake/opencv4/OpenCVConfig.cmake", "/usr/lib/cmake/opencv4/OpenCVConfig.cmake",
                   "/usr/local/lib/cmake/opencv4/OpenCVConfig.cmake", "/usr/local/lib*/cmake/opencv4/OpenCVConfig.cmake"]):
        missing.append("OpenCV C++ development files (libopencv-dev)")
    if not _first(["/usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake", "/usr/lib/cmake/nlohmann_json/nlohmann_jsonConfig.cmake",
                   "/usr/local/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake", "/usr/lib/*/cmake/nlohmann_json/nlohmann_jsonConfig.cmake",
                   "/usr/local/lib/cmake/nlohmann_json/nlohmann_jsonConfig.cmake"]):
        missing.append("nlohmann-json (nlohmann-json3-dev)")
    if missing:
        return "cannot build examples/cpp: no " + ", no ".join(missing) + " (apt-get install cmake g++ libopencv-dev nlohmann-json3-dev)"
    return None


@pytest.fixture(scope="module")
def cpp_build(request, tmp_path_factory) -> tuple[Path, str]:
    """examples/cpp configured and built once; the build folder lives in pytest's cache (keyed by
    source folder and torch) so a second run only re-links what changed. Returns (folder, configure log)."""
    reason = cpp_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import torch.utils

    prefix = torch.utils.cmake_prefix_path
    key = hashlib.sha1(f"{CPP_SRC}|{prefix}|{torch.__version__}".encode()).hexdigest()[:12]
    cache = getattr(request.config, "cache", None)
    build = Path(os.environ.get("WHEREVIT_CPP_BUILD") or (cache.mkdir(f"cpp-build-{key}") if cache else tmp_path_factory.mktemp("cpp")))
    gen = ["-G", "Ninja"] if shutil.which("ninja") and not (build / "Makefile").exists() else []
    cfg = subprocess.run(["cmake", "-S", str(CPP_SRC), "-B", str(build), *gen, f"-DCMAKE_PREFIX_PATH={prefix}"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, f"cmake configure failed:\n{cfg.stdout}\n{cfg.stderr}"
    res = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True)
    assert res.returncode == 0, f"cmake build failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return build, cfg.stdout


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """PNGs of different sizes and kinds: shrunk (INTER_AREA), enlarged (linear), exact, gray, 16-bit, RGBA."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:1:48j, 0:1:40j]
    smooth = (np.stack([yy, xx, (yy + xx) / 2], -1) * 255).astype(np.uint8)  # gradients survive resizing visibly
    specs = {
        "shrink_48x40.png": np.clip(smooth.astype(int) + rng.integers(-20, 20, smooth.shape), 0, 255).astype(np.uint8),
        "enlarge_20x28.png": rng.integers(0, 256, (20, 28, 3), dtype=np.uint8),
        "exact_32x32.png": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "gray_40x56.png": rng.integers(0, 256, (40, 56), dtype=np.uint8),
        "deep16_36x30.png": rng.integers(0, 65536, (36, 30, 3), dtype=np.uint16),
        "alpha_24x44.png": rng.integers(0, 256, (24, 44, 4), dtype=np.uint8),
    }
    paths = []
    for name, arr in specs.items():
        assert cv2.imwrite(str(d / name), arr)
        paths.append(d / name)
    return paths


def _run_app(exe: Path, artifact: Path, imgs: list[Path], out: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([str(exe), str(artifact), "--out", str(out), "--dump-input", *map(str, imgs)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, f"{exe.name} failed:\n{res.stdout}\n{res.stderr}"
    return res


# One 8-bit level after normalisation: the most two OpenCV builds may disagree on a resized pixel.
ONE_LEVEL = 1 / 255 / min(0.229, 0.224, 0.225) + 1e-6


def _check_against_python(out: Path, artifact: Path, imgs: list[Path], backend: str = "pt2", pairs: bool = False) -> None:
    with runtime.load(artifact, backend=backend) as m:
        if pairs:
            a, b = imgs[0::2], imgs[1::2]
            want = m.predict(a, b).outputs
            inputs = {"images_a": m.preprocess(m.load_images(a)), "images_b": m.preprocess(m.load_images(b))}
        else:
            want = m.embed(imgs).outputs
            inputs = {"images": m.preprocess(m.load_images(imgs))}
    for name, x in inputs.items():
        got = np.load(out / f"input_{name}.npy")
        assert got.shape == x.shape and np.abs(got - x).max() <= ONE_LEVEL, f"C++ preprocessing of {name} differs"
    got = {k: np.load(out / f"{k}.npy") for k in want}
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype, k
    floats = {k: v for k, v in want.items() if np.issubdtype(v.dtype, np.floating)}
    cmp = compare(floats, got, DEFAULT_RTOL["fp32"])
    assert cmp, cmp.summary()


def test_cpp_aoti_app_matches_python_runtime(cpp_build, pt2_artifact, onnx_artifact, images, tmp_path):
    build, _ = cpp_build
    res = _run_app(build / "wherevit_aoti", pt2_artifact, images, tmp_path / "out")
    assert "cls float32 [6, 64]" in res.stdout and "patch_tokens float32 [6, 16, 64]" in res.stdout
    _check_against_python(tmp_path / "out", pt2_artifact, images)            # same package through torch
    _check_against_python(tmp_path / "out", onnx_artifact, images, "ort-cpu")  # and the ONNX artifact


def test_cpp_aoti_app_takes_preprocessed_npy_batches(cpp_build, pt2_artifact, images, tmp_path):
    """--input-npy (what a build without OpenCV takes): the batch Python preprocessed, the same outputs."""
    exe = cpp_build[0] / "wherevit_aoti"
    with runtime.load(pt2_artifact, backend="pt2") as m:
        x = m.preprocess(m.load_images(images[:5]))
        want = m.run(x).outputs
    np.save(tmp_path / "x.npy", x)
    res = subprocess.run([str(exe), str(pt2_artifact), "--out", str(tmp_path / "out"), "--input-npy", str(tmp_path / "x.npy")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    cmp = compare(want, {k: np.load(tmp_path / "out" / f"{k}.npy") for k in want}, DEFAULT_RTOL["fp32"])
    assert cmp, cmp.summary()
    bad = tmp_path / "bad.npy"
    np.save(bad, x[:, :, :16])  # wrong height
    res = subprocess.run([str(exe), str(pt2_artifact), "--input-npy", str(bad)], capture_output=True, text=True)
    assert res.returncode == 1 and "expected a [N, 3, 32, 32] batch for input images" in res.stderr
    np.save(bad, x.astype(np.float64))
    res = subprocess.run([str(exe), str(pt2_artifact), "--input-npy", str(bad)], capture_output=True, text=True)
    assert res.returncode == 1 and "expected float32" in res.stderr
    res = subprocess.run([str(exe), str(pt2_artifact), "--input-npy", str(tmp_path / "x.npy"), str(images[0])],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "not both" in res.stderr


def test_cpp_aoti_app_follows_the_sidecar_resize_mode(cpp_build, pt2_artifact, images, tmp_path):
    """A sidecar that says shorter_center (and BGR input order) is followed by C++ exactly as by Python."""
    art = tmp_path / pt2_artifact.name
    os.symlink(pt2_artifact, art)
    meta = json.loads(sidecar_path(pt2_artifact).read_text())
    meta["preprocess"].update(resize="shorter_center", color_order="BGR")
    sidecar_path(art).write_text(json.dumps(meta))
    build, _ = cpp_build
    _run_app(build / "wherevit_aoti", art, images[:5], tmp_path / "out")  # 5 = a chunk of 4 + one padded to 2
    _check_against_python(tmp_path / "out", art, images[:5])


def test_cpp_aoti_app_errors_name_the_problem(cpp_build, pt2_artifact, onnx_artifact, images, tmp_path):
    exe = cpp_build[0] / "wherevit_aoti"
    res = subprocess.run([str(exe), str(onnx_artifact), str(images[0])], capture_output=True, text=True)
    assert res.returncode == 1 and "this program runs 'pt2' artifacts" in res.stderr
    res = subprocess.run([str(exe), str(pt2_artifact), str(tmp_path / "missing.png")], capture_output=True, text=True)
    assert res.returncode == 1 and "missing.png: not a readable image" in res.stderr
    tampered = tmp_path / "tampered.pt2"
    tampered.write_bytes(pt2_artifact.read_bytes() + b"\0")
    sidecar_path(tampered).write_text(sidecar_path(pt2_artifact).read_text())
    res = subprocess.run([str(exe), str(tampered), str(images[0])], capture_output=True, text=True)
    assert res.returncode == 1 and "does not match its sidecar" in res.stderr  # the SHA-256 check, as in Python


def test_cpp_aoti_app_runs_a_two_input_pose_package(cpp_build, trained_run, images, tmp_path):
    from safetensors.torch import save_file

    from wherevit.train.downstream.heads import RelPoseHead

    torch.manual_seed(0)
    head = RelPoseHead(64)
    meta = {"wherevit": json.dumps({"format": "wherevit.head/1", "task": "pose", "embed_dim": 64, "classes": None, "image_size": [32, 32]})}
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / "head_pose.safetensors"), metadata=meta)
    res = export_artifacts(ExportRequest(str(trained_run), tmp_path, format="pt2", head=str(tmp_path / "head_pose.safetensors"),
                                         batch=(1, 2, 4)))
    meta = read_sidecar(res.pt2)
    assert res.pt2.name == "pose_fp32.pt2" and meta.parity["passed"] and meta.task == "pose"
    assert meta.input_names == ["images_a", "images_b"]
    out = _run_app(cpp_build[0] / "wherevit_aoti", res.pt2, images, tmp_path / "out")  # pairs: (a1 b1) (a2 b2) (a3 b3)
    assert "rotation float32 [3, 3, 3]" in out.stdout
    _check_against_python(tmp_path / "out", res.pt2, images, pairs=True)


def test_cpp_tensorrt_app_is_built_or_says_why(cpp_build):
    build, log = cpp_build
    if (build / "wherevit_trt").exists():
        return  # built: running it needs an engine on a GPU (wherevit export --format engine on that machine)
    line = next((ln for ln in log.splitlines() if "SKIP wherevit_trt" in ln), None)
    assert line is not None, "CMake neither built wherevit_trt nor said why"
    pytest.skip(line.split("wherevit: ", 1)[-1])
