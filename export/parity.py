"""Export parity: the exported graph against the PyTorch fp32 reference, through the one comparator.

Every format checks its artifact the same way: the same fresh inputs (random tensors, and generated
scenes preprocessed exactly as the runtime does), the reference's float outputs, and
``wherevit.runtime.compare`` -- which fails a comparison that compared nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from wherevit.base.errors import WherevitError
from wherevit.base.image import Preprocess
from wherevit.runtime.compare import Comparison, compare

__all__ = ["ParityError", "parity_inputs", "torch_reference", "check_parity"]

Runner = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class ParityError(WherevitError, RuntimeError):
    """The exported graph's outputs differ from PyTorch's beyond the tolerance."""


def parity_inputs(preprocess: Preprocess, input_names: list[str], batch: int = 3, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Fresh random images and generated scenes per input, preprocessed exactly as the runtime does."""
    from wherevit.train.data.synthetic import render_scene

    rng = np.random.default_rng(seed)
    h, w = preprocess.size
    random = {n: rng.standard_normal((batch, 3, h, w)).astype(np.float32) for n in input_names}
    scenes = {n: preprocess([render_scene(10_000 + seed * 97 + 13 * k + i, (h, w)) for i in range(batch)])
              for k, n in enumerate(input_names)}
    return {"random": random, "scenes": scenes}


def torch_reference(model: nn.Module, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a wrapped export model in PyTorch on float32 NCHW batches, by input name."""
    with torch.no_grad():
        outs = model(*(torch.from_numpy(feeds[n]) for n in model.input_names))
    return {n: o.numpy() for n, o in zip(model.output_names, outs)}


def check_parity(reference: nn.Module, run: Runner, preprocess: Preprocess, rtol: float,
                 batch: int = 3) -> tuple[Comparison, dict]:
    """Compare ``run(feeds)`` with the reference on every input set; returns the merged comparison and
    a per-set report for the sidecar. Float outputs are compared (integer outputs such as argmax
    labels derive from them)."""
    report, merged = {}, Comparison()
    for kind, feeds in parity_inputs(preprocess, list(reference.input_names), batch=batch).items():
        ref = {k: v for k, v in torch_reference(reference, feeds).items() if np.issubdtype(v.dtype, np.floating)}
        cmp = compare(ref, dict(run(feeds)), rtol)
        report[kind] = cmp.to_dict()
        merged.outputs += [dataclasses.replace(o, name=f"{o.name}[{kind}]") for o in cmp.outputs]
        merged.missing += [f"{m}[{kind}]" for m in cmp.missing]
    return merged, report
