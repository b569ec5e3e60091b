"""The head-task interface and its registry: a downstream head is one file (``tasks/depth.py`` is ~90 lines).

A head task says everything the pipeline needs to know about a head on frozen features, so
``wherevit train-head``, the evaluation suite, export (backbone + head as one graph), the INT8
step's parity metric and the CLI read it from here instead of switching on the task's name:

* data      ``synthetic_split`` (generated scenes) and ``folder_splits`` (the users' layout, named in
            ``data_help``): ``HeadSplit``s of images per graph input and targets by name
* model     ``build_head(embed_dim)``, ``loss``, ``evaluate`` (test metrics with a chance-level
            baseline on the same split under ``"baseline"``)
* export    ``input_names`` (one or two image inputs), ``output_specs`` (the sidecar's outputs) and
            ``graph_outputs`` (the head's part of the exported graph)
* INT8      ``parity_scenes`` / ``parity_score``: the head's own metric on generated scenes, from the
            fp32 reference and the quantised graph (``parity_metric`` names it)
* reports   ``columns`` (headline metrics of the suite and study table, with their chance values)
            and ``summary_line`` (what ``wherevit train-head`` prints)

Task options (the segmentation head's classes) live in a ``Config`` dataclass, as plug-ins have;
``create_head_task(name, options)`` validates them, ``from_record`` rebuilds a task from a saved
head's record. Register with ``@register_head_task``; another package adds one through the
entry-point group ``wherevit.head_tasks`` without editing wherevit.
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from wherevit.base.config import ConfigError, from_dict
from wherevit.base.registry import Registry
from wherevit.base.sidecar import HeadSection
from wherevit.train.backbone import BackboneFeatures
from wherevit.train.data.scenes3d import CLASSES
from wherevit.train.downstream.datasets import DatasetError, holdout_split

__all__ = ["HeadTask", "HeadTaskConfig", "HeadSplit", "Column", "HEAD_TASKS", "register_head_task", "create_head_task",
           "head_task_names", "ENTRY_POINT_GROUP", "HEAD_FORMAT"]

ENTRY_POINT_GROUP = "wherevit.head_tasks"
HEAD_FORMAT = "wherevit.head/1"


@dataclass
class HeadSplit:
    """One split of a task's data: (N, H, W, 3) uint8 RGB images per graph input, and targets by name (N, ...)."""

    images: tuple[np.ndarray, ...]
    targets: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.images[0])

    def __getitem__(self, sl) -> "HeadSplit":
        return HeadSplit(tuple(im[sl] for im in self.images), {k: v[sl] for k, v in self.targets.items()})


@dataclass(frozen=True)
class Column:
    """A headline metric: its key in the task's metrics (and in ``metrics["baseline"]``), title, direction."""

    key: str
    title: str
    higher_is_better: bool


@dataclass
class HeadTaskConfig:
    """Options every task accepts (none); subclasses add theirs."""


class HeadTask(ABC):
    """One downstream head task (see the module docstring)."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""  # what the head predicts, one line
    data_help: ClassVar[str] = ""  # the folder layout ``folder_splits`` reads
    input_names: ClassVar[tuple[str, ...]] = ("images",)  # one or two image inputs of the exported graph
    columns: ClassVar[dict[str, Column]] = {}  # headline metric name -> column, in table order
    parity_metric: ClassVar[Column]  # the INT8 step's head metric (a key of ``parity_score``'s value)
    Config: ClassVar[type] = HeadTaskConfig

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg if cfg is not None else self.Config()

    # -- options and records -----------------------------------------------------------------
    @classmethod
    def from_record(cls, record: HeadSection) -> "HeadTask":
        """The task a saved head was trained for (its options read back from the record)."""
        return cls()

    @property
    def class_names(self) -> list[str]:
        """Class names recorded with the head (the generated scenes' classes unless the task has its own)."""
        return list(CLASSES)

    def record(self, embed_dim: int, image_size: tuple[int, int]) -> HeadSection:
        """What a saved head carries in its metadata, and export copies into the sidecar's ``head``."""
        names = self.class_names
        return HeadSection(task=self.name, embed_dim=int(embed_dim), format=HEAD_FORMAT, classes=names, n_classes=len(names),
                           image_size=list(image_size))

    # -- data ---------------------------------------------------------------------------------
    @abstractmethod
    def synthetic_split(self, n: int, size: int, seed: int, cache_dir: str | None) -> HeadSplit:
        """``n`` generated scene pairs at ``size`` px (seeds make train and test disjoint)."""

    def read_folder(self, root: str | os.PathLike, size: int) -> HeadSplit:
        """All items of a folder in this task's layout (``data_help``)."""
        raise DatasetError(f"head task {self.name!r} reads no folder layout; use --data synthetic")

    def folder_splits(self, root: str | os.PathLike, size: int) -> tuple[HeadSplit, HeadSplit]:
        """A folder in the task's layout, every fifth item (by sorted name) held out for testing."""
        return holdout_split(self.read_folder(root, size), root)

    def check_data(self, data: str) -> None:
        """Refuse option/data combinations before anything is loaded (override; raise ``DatasetError``)."""

    # -- model --------------------------------------------------------------------------------
    @abstractmethod
    def build_head(self, embed_dim: int) -> nn.Module:
        """A freshly initialised head for features of width ``embed_dim``."""

    @abstractmethod
    def loss(self, head: nn.Module, feats: Sequence[BackboneFeatures], targets: Mapping[str, torch.Tensor],
             hw: tuple[int, int]) -> torch.Tensor:
        """The training loss on one batch (``feats``: one ``BackboneFeatures`` per graph input)."""

    @abstractmethod
    def evaluate(self, head: nn.Module, feats: Sequence[BackboneFeatures], train: Mapping[str, torch.Tensor],
                 test: Mapping[str, torch.Tensor], hw: tuple[int, int]) -> dict:
        """Test metrics, with the chance-level baseline (computed from ``train`` targets, scored on ``test``) under "baseline"."""

    # -- export -------------------------------------------------------------------------------
    @abstractmethod
    def output_specs(self) -> list[dict]:
        """The exported graph's outputs as sidecar ``TensorSpec`` fields (name, dtype, shape with -1 dynamic, meaning)."""

    @abstractmethod
    def graph_outputs(self, head: nn.Module, feats: Sequence[BackboneFeatures], hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """The head's part of the exported graph: outputs in ``output_specs`` order."""

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.output_specs()]

    # -- INT8 parity --------------------------------------------------------------------------
    @abstractmethod
    def parity_scenes(self, count: int, size: int, seed: int) -> tuple[dict[str, list[np.ndarray]], Any]:
        """``count`` generated scenes: RGB images per input name, and the ground truth ``parity_score`` reads."""

    @abstractmethod
    def parity_score(self, outputs: Mapping[str, np.ndarray], truth: Any) -> float:
        """The head's metric (``parity_metric``) of a graph's outputs on ``parity_scenes``."""

    # -- reports ------------------------------------------------------------------------------
    def headline(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The suite's columns from this task's metrics."""
        return {name: float(metrics[c.key]) for name, c in self.columns.items()}

    def chance(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The chance-level value of each column: the baseline the metrics carry, on the same split."""
        return {name: float(metrics["baseline"][c.key]) for name, c in self.columns.items()}

    @abstractmethod
    def summary_line(self, metrics: Mapping[str, Any]) -> str:
        """One line for ``wherevit train-head``: the metrics next to their baseline."""


HEAD_TASKS: Registry = Registry("head task", ENTRY_POINT_GROUP)
HEAD_TASKS.base = HeadTask
register_head_task = HEAD_TASKS.register  # class decorator; a duplicate name is refused


def head_task_names() -> list[str]:
    """Every registered head task (entry points named, not imported)."""
    return HEAD_TASKS.names()


def create_head_task(name: str, options: Mapping[str, Any] | None = None) -> HeadTask:
    """Head task ``name`` with ``options`` validated against its ``Config`` (an unknown option names itself)."""
    cls = HEAD_TASKS.get(name)
    options = dict(options or {})
    known = [f.name for f in dataclasses.fields(cls.Config)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"head task {name!r} has no option {', '.join(unknown)}; its options: {', '.join(known) or 'none'}")
    return cls(from_dict(cls.Config, options, _path=name))


def predict_dense(head: nn.Module, feats: BackboneFeatures, hw: tuple[int, int], chunk: int = 256) -> torch.Tensor:
    """A dense head's predictions over a whole split, ``chunk`` samples at a time."""
    n = len(feats.cls)
    return torch.cat([head(feats[i : i + chunk], hw) for i in range(0, n, chunk)])
