"""fp32 ONNX -> INT8 ONNX with ONNX Runtime's quantisation tools (static QDQ or dynamic).

* static (the default): Q/DQ pairs around every MatMul/Gemm/Conv input, activation scales fixed by
  calibration on real or generated images (method minmax, entropy or percentile), int8 weights per
  output channel. Scales are constants, so an image's features do not depend on its batch-mates,
  and the Q/DQ graph is what TensorRT's explicit quantisation consumes.
* dynamic: int8 weights, activation scales computed per call over the whole batch. No calibration,
  but an image's features move with whatever else is in the batch -- the sidecar says so and the
  server runs such an artifact one image at a time.

The graph is first put through ONNX Runtime's own ``quant_pre_process`` (shape inference, basic
fusions). LayerNorm and softmax are not in ``op_types_to_quantize`` and stay float; a head's layers
(quantisable nodes with no LayerNormalization downstream of them) are excluded so the head's outputs
are computed in float from float inputs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx

from wherevit.base.cpu import CpuIsa, cpu_isa
from wherevit.base.errors import WherevitError
from wherevit.base.image import IMAGE_EXTENSIONS, ImageDecodeError, Preprocess, read_image
from wherevit.base.io import atomic_path
from wherevit.base.options import option
from wherevit.base.precision import DEFAULT_MIN_COSINE

__all__ = [
    "QuantOptions", "CalibrationError", "CalibrationSet", "QUANT_MODES", "CALIB_METHODS", "MIN_CALIB_IMAGES",
    "reduce_range_decision", "calibration_set", "check_calibration_folder", "read_images", "generated_images", "float_head_nodes", "quantize_onnx",
]

log = logging.getLogger("wherevit.export")

QUANT_MODES = ("static", "dynamic")
CALIB_METHODS = ("minmax", "entropy", "percentile")
MIN_CALIB_IMAGES = 8  # fewer than this gives ranges set by a handful of images
STATIC_OPS = ("MatMul", "Gemm", "Conv")
DYNAMIC_OPS = ("MatMul", "Gemm")  # ConvInteger has few CPU kernels; the patch-embed conv is one op
CALIB_SEED, PARITY_SEED = 50_000, 60_000  # generated-scene seeds: calibration and parity sets are disjoint


class CalibrationError(WherevitError, ValueError):
    """Calibration input that cannot calibrate: missing or empty folder, unreadable image, too few images."""


@dataclass(frozen=True)
class QuantOptions:
    """How ``--precision int8`` quantises (the INT8 step's options). ``calib`` None means generated scenes."""

    mode: str = option("static", cli="--quant", choices=QUANT_MODES,
                       help="int8: static Q/DQ (calibrated, batch-independent) or dynamic (scales per call over the batch; "
                            "served one image at a time).")
    method: str = option("minmax", cli="--calib-method", choices=CALIB_METHODS, help="int8: calibration method.")
    calib: str | None = option(None, cli="--calib", metavar="DIR", help="int8: folder of calibration images (default: generated scenes).")
    calib_count: int = option(64, cli="--calib-count", help="int8: calibration images used.")
    per_channel: bool = option(True, cli=False)
    # None: True on a CPU without VNNI (ONNX Runtime's advice), else False
    reduce_range: bool | None = option(None, cli="--reduce-range/--full-range",
                                       help="int8: 7-bit weights (default: on exactly when the CPU lacks VNNI).")
    symmetric_activations: bool = option(False, cli=False)  # int8 activations with zero point 0 (TensorRT needs this; set for engines)
    quantize_bias: bool = option(True, cli=False)  # int32 biases (ONNX Runtime fuses them); TensorRT's parser takes only 8-bit DQ inputs
    min_cosine: float = option(DEFAULT_MIN_COSINE, cli="--min-cosine",
                               help="int8: fail below this per-sample cosine similarity to PyTorch fp32 (any float output).")
    parity_count: int = option(16, cli=False)
    calib_batch: int = option(8, cli=False)

    def __post_init__(self) -> None:
        if self.mode not in QUANT_MODES:
            raise ValueError(f"quantisation mode must be one of {', '.join(QUANT_MODES)}, got {self.mode!r}")
        if self.method not in CALIB_METHODS:
            raise ValueError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, got {self.method!r}")
        if self.mode == "static" and self.calib_count < MIN_CALIB_IMAGES:
            raise CalibrationError(f"--calib-count {self.calib_count} is too few to calibrate; use at least {MIN_CALIB_IMAGES}")
        if not 0.0 < self.min_cosine <= 1.0:
            raise ValueError(f"minimum cosine similarity must be in (0, 1], got {self.min_cosine}")
        if self.parity_count < 2 or self.calib_batch < 1:
            raise ValueError(f"parity_count must be >= 2 and calib_batch >= 1, got {self.parity_count}, {self.calib_batch}")


def reduce_range_decision(opts: QuantOptions, isa: CpuIsa | None = None) -> tuple[bool, str]:
    """(reduce_range, why). Explicit options win; otherwise 7-bit weights exactly when the CPU lacks VNNI."""
    isa = isa or cpu_isa()
    if opts.reduce_range is not None:
        return opts.reduce_range, f"set explicitly (this CPU: {isa.summary})"
    if isa.vnni:
        return False, f"CPU has VNNI ({isa.summary}): full 8-bit weights"
    return True, (f"CPU without VNNI ({isa.summary}): 7-bit weights so u8s8 pair sums cannot saturate vpmaddubsw's "
                  "16-bit intermediates (ONNX Runtime's advice for AVX2/AVX-512 without VNNI)")


@dataclass
class CalibrationSet:
    """Preprocessed calibration batches by input name, what they were, and held-out folder images for parity."""

    feeds: dict[str, np.ndarray]
    source: dict
    held_out: list[Path]


def generated_images(size: tuple[int, int], count: int, seed: int) -> list[np.ndarray]:
    """HxWx3 uint8 RGB generated scenes: 2-D layouts and 3-D scene views, alternating."""
    from wherevit.train.data.scenes3d import render_pair
    from wherevit.train.data.synthetic import render_scene

    out = []
    for i in range(count):
        if i % 2 == 0:
            out.append(render_scene(seed + i, size))
        else:  # the renderer makes square views: render at the larger side, the preprocessing resizes
            out.append(render_pair(seed + i, max(size))["a" if i % 4 == 1 else "b"]["rgb"])
    return out


def _folder_images(folder: Path) -> list[Path]:
    if not folder.exists():
        raise CalibrationError(f"calibration folder {folder} does not exist")
    if not folder.is_dir():
        raise CalibrationError(f"--calib {folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise CalibrationError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def read_images(paths: Sequence[Path]) -> list[np.ndarray]:
    """Decode image files to RGB; an unreadable one is a ``CalibrationError`` naming it."""
    out = []
    for p in paths:
        try:
            out.append(read_image(p))
        except ImageDecodeError as e:
            raise CalibrationError(f"calibration image unreadable: {e}") from e
    return out


def check_calibration_folder(opts: QuantOptions) -> None:
    """Fail fast (before any export step) on a folder that cannot calibrate: missing, empty, too few or unreadable images."""
    if opts.mode != "static" or opts.calib is None:
        return
    files = _folder_images(Path(opts.calib))
    if len(files) < opts.calib_count:
        raise CalibrationError(f"calibration folder {opts.calib} has {len(files)} images, too few for --calib-count "
                               f"{opts.calib_count}; add images or lower --calib-count (at least {MIN_CALIB_IMAGES})")
    read_images(files[: opts.calib_count])


def calibration_set(pre: Preprocess, input_names: Sequence[str], opts: QuantOptions) -> CalibrationSet:
    """The calibration images, preprocessed exactly as the runtime does, one set per graph input."""
    n = opts.calib_count
    if opts.calib is None:
        # Each input of a multi-input graph (pose: two views) gets its own images.
        feeds = {name: pre(generated_images(pre.size, n, CALIB_SEED + 1000 * k)) for k, name in enumerate(input_names)}
        return CalibrationSet(feeds, {"data": "generated scenes (2-D layouts and 3-D scene views)", "seed": CALIB_SEED,
                                      "count": n}, [])
    folder = Path(opts.calib)
    files = _folder_images(folder)
    need = n * len(input_names)
    if len(files) < need:
        raise CalibrationError(f"calibration folder {folder} has {len(files)} images, too few for --calib-count {n}"
                               f"{f' x {len(input_names)} inputs' if len(input_names) > 1 else ''}; add images or lower --calib-count "
                               f"(at least {MIN_CALIB_IMAGES})")
    feeds = {name: pre(read_images(files[k * n:(k + 1) * n])) for k, name in enumerate(input_names)}
    return CalibrationSet(feeds, {"data": str(folder), "count": n, "files_in_folder": len(files),
                                  "first": files[0].name, "last": files[need - 1].name}, files[need:])


def float_head_nodes(proto: onnx.ModelProto, op_types: Sequence[str] = STATIC_OPS) -> list[str]:
    """Quantisable nodes with no LayerNormalization downstream: a head's layers after the backbone's final norm."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    memo: dict[str, bool] = {}

    def reaches_norm(node: onnx.NodeProto) -> bool:
        key = node.name or node.output[0]
        if key in memo:
            return memo[key]
        memo[key] = False  # graphs are acyclic; this only guards revisits
        hit = any(c.op_type == "LayerNormalization" or reaches_norm(c) for out in node.output for c in consumers.get(out, ()))
        memo[key] = hit
        return hit

    return [n.name for n in proto.graph.node if n.op_type in op_types and not reaches_norm(n)]


class _Reader:
    """ONNX Runtime CalibrationDataReader over preprocessed batches."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int):
        total = len(next(iter(feeds.values())))
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            [{k: np.ascontiguousarray(v[i:i + batch]) for k, v in feeds.items()} for i in range(0, total, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # not needed by the calibrators used here
        pass


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    return type("WherevitCalibrationReader", (_Reader, CalibrationDataReader), {})


def quantize_onnx(fp32_onnx: Path, out: Path, opts: QuantOptions, calib: CalibrationSet | None,
                  isa: CpuIsa | None = None) -> dict:
    """Write the INT8 graph of ``fp32_onnx`` to ``out`` (atomically); returns the facts for the sidecar."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if opts.mode == "static" and calib is None:
        raise CalibrationError("static quantisation needs calibration images")
    t0 = time.perf_counter()
    reduce_range, why = reduce_range_decision(opts, isa)
    with tempfile.TemporaryDirectory(prefix="wherevit-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx), str(pre))
        proto = onnx.load(str(pre))
        ops = STATIC_OPS if opts.mode == "static" else DYNAMIC_OPS
        exclude = float_head_nodes(proto, ops)
        del proto
        with atomic_path(out) as dst:
            if opts.mode == "static":
                method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[opts.method]
                with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                    quantize_static(
                        str(pre), str(dst), _reader_class()(calib.feeds, opts.calib_batch), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(ops), per_channel=opts.per_channel, reduce_range=reduce_range,
                        activation_type=QuantType.QInt8 if opts.symmetric_activations else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=method,
                        # Q/DQ on the inputs only: every quantised op yields float, so LayerNorm and softmax
                        # read float (no 8-bit rounding of attention logits before the softmax).
                        extra_options={"ActivationSymmetric": opts.symmetric_activations, "WeightSymmetric": True,
                                       "QuantizeBias": opts.quantize_bias,
                                       "OpTypesToExcludeOutputQuantization": list(ops)},
                    )
            else:
                quantize_dynamic(str(pre), str(dst), op_types_to_quantize=list(ops), per_channel=opts.per_channel,
                                 reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    q = onnx.load(str(out))
    counts: dict[str, int] = {}
    for node in q.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    facts = {
        "mode": opts.mode,
        "batch_dependent": opts.mode == "dynamic",
        "tool": f"onnxruntime.quantization {ort.__version__} (quant_pre_process, "
                f"{'quantize_static, QDQ' if opts.mode == 'static' else 'quantize_dynamic'})",
        "op_types_quantized": list(ops),
        "kept_float": ["LayerNormalization", "Softmax", "graph outputs"] + (["head layers"] if exclude else []),
        "nodes_excluded": exclude,
        "per_channel": opts.per_channel,
        "weights": "int8, symmetric" + (", per output channel" if opts.per_channel else ", per tensor"),
        "activations": ("computed per call over the batch (uint8)" if opts.mode == "dynamic" else
                        "int8, symmetric (zero point 0)" if opts.symmetric_activations else "uint8, asymmetric"),
        "biases": "int32" if opts.mode == "static" and opts.quantize_bias else "float",
        "reduce_range": reduce_range,
        "reduce_range_reason": why,
        "cpu": (isa or cpu_isa()).to_dict(),
        "op_counts": {k: counts[k] for k in sorted(counts) if k in ("QuantizeLinear", "DequantizeLinear", "MatMulInteger",
                                                                     "DynamicQuantizeLinear", "MatMul", "Conv", "Gemm")},
        "quantize_seconds": round(time.perf_counter() - t0, 2),
    }
    if opts.mode == "static":
        facts["calibration"] = {**calib.source, "method": opts.method, "batch": opts.calib_batch}
    return facts

