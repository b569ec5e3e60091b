"""The study file: which variants, seeds, budget and evaluations (validated; ``configs/study_*.yaml``).

Every trained variant is the ``train`` preset with the study's ``budget`` overrides (steps, batch,
data: the same for all), its own ``plugins`` and optional ``host`` (DINO) options; nothing else may
differ, so a row differs from the baseline only in what it names. ``random`` scores the untrained
architecture (initialised from the seed), ``chance`` is each evaluation's trivial baseline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wherevit.base.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from wherevit.train.config import TrainConfig, config_path, preset_names
from wherevit.train.evals.suite import SuiteConfig

__all__ = ["VariantSpec", "StudyConfig", "load_study_config", "resolve_train_config", "StudyError"]

# the budget: a variant may not change these (they are the study's, the same for every trained row)
_BUDGET_KEYS = ("seed", "total_steps", "model", "data", "optim")
# host options a variant may set: the DINO host and its iBOT head (plug-ins go under ``plugins``)
HOST_SECTIONS = ("dino", "ibot")


class StudyError(ConfigError):
    """A study file that cannot be run as written (unknown plug-in, bad baseline, budget override in a variant)."""


@dataclass
class VariantSpec:
    """One row of the study table."""

    name: str
    # "start": the study's starting weights (``weights``) evaluated as loaded, without training
    kind: Literal["trained", "random", "chance", "start"] = "trained"
    # plug-in name -> settings over the study's plugin_settings and the preset's section ({}: those as they are)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    host: list[str] = field(default_factory=list)  # host options, "dino.key=value" or "ibot.key=value"
    label: str = ""  # shown in the table and plot (default: name)

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"variant name {self.name!r} must be non-empty and contain no '/'")
        if self.kind != "trained" and (self.plugins or self.host):
            raise ValueError(f"variant {self.name!r} is {self.kind!r}: it trains nothing, so plugins/host must be empty")
        for item in self.host:
            key = item.split("=", 1)[0].strip()
            if "=" not in item or key.split(".", 1)[0] not in HOST_SECTIONS or "." not in key:
                raise ValueError(f"variant {self.name!r}: host option {item!r} must look like dino.key=value or "
                                 "ibot.key=value; steps, batch, data and model are the study's budget (set them in 'budget')")


@dataclass
class StudyConfig:
    """A whole study: ``wherevit study configs/study_quickstart.yaml``."""

    name: str
    variants: list[VariantSpec]
    train: str = "quickstart_sharp"  # training preset (name or YAML path) every trained variant starts from
    budget: list[str] = field(default_factory=list)  # key=value overrides for every trained variant
    plugin_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # per plug-in, over the preset's section
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    baseline: str = "dino"  # paired differences are taken against this variant
    # variant -> its own reference variant, compared too (a plug-in on the iBOT host against DINO + iBOT)
    contrasts: dict[str, str] = field(default_factory=dict)
    # multiple-comparison correction over each table's comparisons: "holm" (family-wise error) or "bh"
    # (Benjamini-Hochberg, false-discovery rate); verdicts are read off the adjusted p-values
    correction: Literal["holm", "bh"] = "holm"
    evaluation: SuiteConfig = field(default_factory=SuiteConfig)
    # A weights file every trained variant starts from (model.weights: continued pretraining); the
    # runs' cache keys hash its content, so a replaced file is trained again
    weights: str | None = None
    runs_dir: str = "runs/study"  # training runs and one results file per run (the cache)
    out: str = "benchmarks/results/study"  # results.json, table.md, study.png

    def validate(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats, got {self.seeds}")
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(dup)}")
        by_name = {v.name: v for v in self.variants}
        base = by_name.get(self.baseline)
        if base is None or base.kind != "trained":
            raise ValueError(f"baseline {self.baseline!r} must name a trained variant; variants: {', '.join(names)}")
        for variant, ref in self.contrasts.items():
            for n in (variant, ref):
                if n not in by_name:
                    raise ValueError(f"contrasts: {n!r} is not a variant; variants: {', '.join(names)}")
            if variant == ref:
                raise ValueError(f"contrasts: {variant!r} is compared with itself")
        for item in self.budget:
            if "=" not in item:
                raise ValueError(f"budget override {item!r} must look like key.path=value")
        from wherevit.train.plugins.base import PLUGINS, PluginError

        for v in self.variants:
            for p in v.plugins:
                try:
                    PLUGINS.get(p)  # the registry's one lookup: an unknown name lists the registered plug-ins
                except PluginError:
                    raise StudyError(f"variant {v.name!r} names plug-in {p!r}, which is not registered; registered "
                                     f"{PLUGINS.kind}s: {', '.join(PLUGINS.names()) or 'none'}") from None

    def variant(self, name: str) -> VariantSpec:
        return {v.name: v for v in self.variants}[name]


def load_study_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read and validate a study file; ``overrides`` are ``key=value`` on the study file itself."""
    data = load_yaml(path)
    apply_overrides(data, list(overrides or []))
    cfg = from_dict(StudyConfig, data)
    _base_dict(cfg)  # the preset must exist: fail now, not after the first run
    return cfg


def _base_dict(study: StudyConfig) -> dict[str, Any]:
    path = config_path(study.train)
    if path is None:
        raise StudyError(f"study {study.name!r}: no training preset or file named {study.train!r}; presets: {', '.join(preset_names())}")
    data = load_yaml(path)
    apply_overrides(data, list(study.budget))
    if study.weights:  # part of the budget: every trained variant starts from the same backbone
        data.setdefault("model", {})["weights"] = study.weights
    return data


def resolve_train_config(study: StudyConfig, variant: VariantSpec, seed: int) -> TrainConfig:
    """The full training config of ``variant`` at ``seed``: preset + budget + plug-ins + host options.

    A random/chance variant resolves to the baseline's config (its architecture and seed).
    """
    if variant.kind != "trained":
        variant = study.variant(study.baseline)
    data = _base_dict(study)
    preset_plugins = data.get("plugins") or {}
    plugins = {}
    for name, own in variant.plugins.items():
        section = copy.deepcopy(preset_plugins.get(name) or {})
        section.update(copy.deepcopy(study.plugin_settings.get(name) or {}))
        section.update(copy.deepcopy(own or {}))
        plugins[name] = section
    data["plugins"] = plugins
    data["seed"] = seed
    apply_overrides(data, list(variant.host))
    try:
        cfg = from_dict(TrainConfig, data)
    except ConfigError as e:
        raise StudyError(f"variant {variant.name!r} (seed {seed}): {e}") from e
    return cfg


def budget_of(cfg: TrainConfig) -> dict[str, Any]:
    """The part of a resolved config that every trained variant must share."""
    d = to_dict(cfg)
    return {k: d[k] for k in _BUDGET_KEYS if k != "seed"}
