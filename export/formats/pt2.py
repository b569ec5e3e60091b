"""AOTInductor packages (``.pt2``): an exported graph compiled ahead of time to a shared library.

``torch._inductor.aoti_compile_and_package`` compiles the ``torch.export`` graph of the wrapped
backbone (or backbone + head) into one zip that C++ loads with
``torch::inductor::AOTIModelPackageLoader`` and Python with ``torch._inductor.aoti_load_package``
-- no Python model code, no ONNX. The batch axis is dynamic over the profile's range; the input
size is fixed. The package is compiled for one device (CPU unless CUDA is asked for) and runs only
with a torch of a compatible version, both recorded in the sidecar's ``pt2`` section.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from wherevit.base.errors import InvalidRequest, WherevitError
from wherevit.base.io import atomic_write_with
from wherevit.base.options import option
from wherevit.base.precision import get_precision, precision_names
from wherevit.base.sidecar import Pt2Section, artifact_record, sidecar_path, write_sidecar
from wherevit.export.formats.base import ExportContext, ExportFormat, register_format
from wherevit.export.parity import ParityError, check_parity
from wherevit.export.request import StepResult

__all__ = ["Pt2Error", "Pt2Format", "Pt2Options", "pt2_device", "compiler_unavailable_reason", "compile_pt2", "run_pt2", "PT2_DEVICES"]

PT2_DEVICES = ("cpu", "cuda")


class Pt2Error(WherevitError, RuntimeError):
    """An AOTInductor package that cannot be compiled or loaded here."""


def pt2_device(device: str) -> str:
    """Check ``device`` ("cpu" or "cuda") can compile a package here; returns it."""
    if device not in PT2_DEVICES:
        raise InvalidRequest(f"--device must be one of {', '.join(PT2_DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise Pt2Error("a CUDA .pt2 package is compiled on a machine with a CUDA GPU; this one has none "
                       "(compile for the CPU with --device cpu, or export on the GPU machine)")
    return device


def compiler_unavailable_reason() -> str | None:
    """AOTInductor writes C++ and compiles it at export time: None when a compiler is here, else why not."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) or shutil.which("g++") or shutil.which("clang++"):
        return None
    return f"AOTInductor compiles C++ when exporting a .pt2, and no C++ compiler ({cxx}, g++ or clang++) is installed here"


def compile_pt2(model: nn.Module, out: Path, batch: tuple[int, int, int], size: tuple[int, int], device: str = "cpu") -> dict:
    """Export ``model`` (a ``FeatureModel``/``HeadModel``: float32 NCHW inputs by ``input_names``) and
    compile it to ``out`` atomically; returns facts for the sidecar's ``pt2`` section."""
    h, w = size
    dev = torch.device(pt2_device(device))
    model = model.eval().to(dev)
    # torch.export specialises a batch of 1 to a constant: trace with 2 and mark the axis dynamic.
    example = tuple(torch.randn(2, 3, h, w, device=dev) for _ in model.input_names)
    dim = torch.export.Dim("batch", min=1, max=max(int(batch[2]), 2))
    dynamic = tuple({0: dim} for _ in model.input_names)
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, example, dynamic_shapes=dynamic, strict=False)
    t_export = time.perf_counter() - t0

    def write(tmp: Path) -> None:
        # aoti_compile_and_package insists on a .pt2 name; compile beside the final file, then move.
        with tempfile.TemporaryDirectory(prefix=".pt2-", dir=tmp.parent) as d, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            pkg = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(d, "model.pt2"))
            os.replace(pkg, tmp)

    t1 = time.perf_counter()
    try:
        atomic_write_with(out, write)
    except Exception as e:
        raise Pt2Error(f"AOTInductor could not compile {out.name} for {device}: {type(e).__name__}: {e}") from e
    return {
        "device": device,
        "torch": torch.__version__,
        "input_names": list(model.input_names),
        "output_names": list(model.output_names),
        "export_seconds": round(t_export, 2),
        "compile_seconds": round(time.perf_counter() - t1, 2),
        "compiler": f"torch._inductor.aoti_compile_and_package (torch {torch.__version__})",
        "loaders": ["C++: torch::inductor::AOTIModelPackageLoader", "Python: torch._inductor.aoti_load_package"],
    }


def run_pt2(runner, feeds: Mapping[str, np.ndarray], input_names: list[str], output_names: list[str],
            device: str = "cpu") -> dict[str, np.ndarray]:
    """Run a loaded package (``aoti_load_package``) on float32 NCHW batches by input name."""
    with torch.inference_mode():
        outs = runner(*(torch.from_numpy(np.ascontiguousarray(feeds[n])).to(device) for n in input_names))
    if isinstance(outs, torch.Tensor):
        outs = (outs,)
    return {n: o.detach().cpu().numpy() for n, o in zip(output_names, outs)}


@dataclass(frozen=True)
class Pt2Options:
    device: str = option("cpu", cli="--device", choices=PT2_DEVICES,
                         help="pt2 only: the device the package is compiled for (cuda needs a CUDA GPU here).")


@register_format
class Pt2Format(ExportFormat):
    """``pt2``: the wrapped model -> an AOTInductor package + parity (the package itself, loaded back) + sidecar."""

    name = "pt2"
    suffixes = (".pt2",)
    precisions = precision_names(quantized=False)  # a compiled float graph; INT8 is the ONNX formats' step
    Options = Pt2Options
    help = "an AOTInductor package (C++: examples/cpp)"

    def check(self, req) -> None:
        if req.dynamic_hw:
            raise InvalidRequest("--dynamic-hw is for ONNX only; a .pt2 package is compiled for one input size (use --imgsz)")
        pt2_device(req.options(self.name, Pt2Options).device)
        reason = compiler_unavailable_reason()
        if reason:
            raise Pt2Error(f"{reason} (apt-get install g++)")

    def build(self, ctx: ExportContext) -> StepResult:
        precision, device = ctx.sidecar.precision, ctx.options(self).device
        out = ctx.track(ctx.artifact_path(self.name, precision, self.suffixes[0]))
        facts = compile_pt2(ctx.wrap(ctx.backbone, precision), out, ctx.batch, ctx.preprocess.size, device)
        record = artifact_record(out)
        meta = dataclasses.replace(ctx.sidecar, kind=self.name, precision=precision, pt2=Pt2Section(**facts))
        meta.parity, cmp = self._parity(ctx, out, device, precision)
        ctx.track(sidecar_path(out))
        return StepResult(out, write_sidecar(out, meta, record=record), cmp)

    @staticmethod
    def _parity(ctx: ExportContext, out: Path, device: str, precision: str):
        """The package as a user loads it (``aoti_load_package``) against PyTorch fp32; raises above tolerance."""
        rtol = ctx.req.rtol or get_precision(precision).rtol
        runner = torch._inductor.aoti_load_package(str(out))
        names = (ctx.input_names, list(ctx.reference.output_names))
        cmp, report = check_parity(ctx.reference, lambda feeds: run_pt2(runner, feeds, *names, device), ctx.preprocess, rtol,
                                   batch=max(min(3, ctx.batch[2]), ctx.batch[0]))
        if not cmp:
            raise ParityError(f"pt2 parity failed for {out.name} (tolerance rel_l2 <= {rtol:g}):\n{cmp.summary()}")
        return {"backend": f"torch._inductor.aoti_load_package ({device})", "reference": "PyTorch fp32", "rtol": rtol,
                "passed": True, **report}, cmp
