"""Parity of a quantised graph against PyTorch fp32: per-sample cosine similarity, and a head's own metric.

The images are disjoint from the calibration set (other generated-scene seeds, plus the folder's
images beyond ``--calib-count`` when a folder was given). Cosine goes through the one comparator
(``wherevit.runtime.compare.compare(..., min_cosine=...)``). For head graphs the head task's own metric
on generated scenes (``HeadTask.parity_metric``: depth RMSE, segmentation mIoU, pose rotation error,
...) is computed from the fp32 reference and from the quantised graph, and the change is reported.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from wherevit.base.image import Preprocess
from wherevit.export.onnx_export import torch_reference
from wherevit.export.quantize import PARITY_SEED, QuantOptions, generated_images, read_images
from wherevit.runtime.compare import Comparison, compare

__all__ = ["quant_parity_inputs", "cosine_parity", "head_metric_change"]


def quant_parity_inputs(pre: Preprocess, input_names: Sequence[str], opts: QuantOptions,
                        held_out: Sequence[Path] = ()) -> tuple[dict[str, np.ndarray], dict]:
    """Calibration-disjoint images per input: generated scenes and up to half of ``parity_count`` held-out folder images."""
    n = opts.parity_count
    from_folder = list(held_out)[: (n // 2) * len(input_names)]
    per_input = len(from_folder) // len(input_names)
    feeds, described = {}, {"generated_scenes": n - per_input, "generated_seed": PARITY_SEED, "held_out_folder_images": per_input}
    for k, name in enumerate(input_names):
        imgs = generated_images(pre.size, n - per_input, PARITY_SEED + 1000 * k)
        if per_input:
            imgs += read_images(from_folder[k * per_input:(k + 1) * per_input])
        feeds[name] = pre(imgs)
    return feeds, described


def _session(artifact: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])


def cosine_parity(ref_model, artifact: Path, feeds: dict[str, np.ndarray], min_cosine: float,
                  batch: int = 8) -> Comparison:
    """Per-sample cosine of every float output against the PyTorch fp32 ``ref_model``.

    Batches of ``batch`` images: a dynamic artifact's scales span a batch, as they will when served."""
    sess = _session(artifact)
    names = [o.name for o in sess.get_outputs()]
    total = len(next(iter(feeds.values())))
    refs, gots = [], []
    for i in range(0, total, batch):
        part = {k: v[i:i + batch] for k, v in feeds.items()}
        refs.append({k: v for k, v in torch_reference(ref_model, part).items() if np.issubdtype(v.dtype, np.floating)})
        gots.append(dict(zip(names, sess.run(names, part))))
    ref = {k: np.concatenate([r[k] for r in refs]) for k in refs[0]}
    got = {k: np.concatenate([g[k] for g in gots]) for k in gots[0]}
    return compare(ref, got, min_cosine=min_cosine)


def head_metric_change(ref_model, artifact: Path, pre: Preprocess, task: str, count: int = 16,
                       seed: int = PARITY_SEED + 7) -> dict:
    """The head task's own metric (``HeadTask.parity_metric``) from fp32 PyTorch and from ``artifact`` on
    ``count`` generated scenes."""
    from wherevit.train.downstream.tasks import get_head_task

    head_task = get_head_task(task)
    images, truth = head_task.parity_scenes(count, max(pre.size), seed)
    feeds = {name: pre(images[name]) for name in head_task.input_names}
    sess = _session(artifact)
    names = [o.name for o in sess.get_outputs()]
    a = head_task.parity_score(torch_reference(ref_model, feeds), truth)
    b = head_task.parity_score(dict(zip(names, sess.run(names, feeds))), truth)
    m = head_task.parity_metric
    return {"metric": m.title, "better": "higher" if m.higher_is_better else "lower", "scenes": count, "seed": seed,
            "fp32_pytorch": float(a), "int8": float(b), "change": float(b - a)}


def comparison_report(cmp: Comparison) -> dict:
    """Per-output cosine figures for the sidecar."""
    return {"passed": bool(cmp), "missing": cmp.missing,
            "outputs": [{k: v for k, v in dataclasses.asdict(o).items() if k in ("name", "shape", "cos_mean", "cos_min", "min_cosine",
                                                                                  "rel_l2", "max_abs", "passed")}
                        for o in cmp.outputs]}
