"""Run a study: train and evaluate what is missing, reuse what is cached, resume what was cut off.

Each (variant, seed) is one run. Its results file ``<runs_dir>/results/<key>.json`` is written
atomically when the run is complete; ``key`` hashes what determines the numbers (the resolved
training config with its seed, or the architecture for random weights, and the evaluation
settings), not the variant's name. So a finished run is never redone, a renamed or newly added
variant reuses any run it shares, and changing the evaluation re-scores the same trained
backbones (training runs live in ``<runs_dir>/train/<train key>``, keyed by the config alone).
A training killed midway resumes from its newest checkpoint. Runs go seed by seed, so an
interrupted study already holds complete pairs for its first seeds.

Several ``wherevit study`` processes may share one ``runs_dir`` (e.g. one per seed on a bigger
machine): a run being worked on holds ``locks/<train key or key>.lock`` (its process id), which the
others skip; the lock of a process that died is taken over.

Keys hash the configs' non-default values only, so a config field added later (whose default
keeps the old behaviour) does not invalidate finished runs. A training key also hashes
``train.config.METHODS_VERSION``, bumped whenever a default changes what a config trains, so runs
trained under older defaults are never reused. Code changes that should invalidate every result
(a fixed evaluation) bump ``RESULT_FORMAT``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from wherevit.base.config import to_dict
from wherevit.base.io import atomic_write_text, sha256_file
from wherevit.train import loop
from wherevit.train.backbone import create_backbone, timm_kwargs
from wherevit.train.checkpoint import latest_checkpoint, load_backbone
from wherevit.train.config import METHODS_VERSION, TrainConfig
from wherevit.train.evals import suite
from wherevit.train.study.config import StudyConfig, StudyError, budget_of, resolve_train_config
from wherevit.train.weights import backbone_from_weights, read_weights

__all__ = ["RunSpec", "plan_runs", "run_study", "load_records", "RESULT_FORMAT"]

RESULT_FORMAT = "wherevit.study.run/1"  # in every key: a change of format invalidates old results


def _plain(obj: Any) -> Any:
    """JSON fallback: numpy scalars and arrays as numbers and lists, anything else as text."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _non_default(obj: Any) -> Any:
    """A dataclass as the plain data of its fields that differ from the field defaults (recursively)."""
    if not dataclasses.is_dataclass(obj):
        return to_dict(obj)
    default = type(obj)()
    out = {}
    for f in dataclasses.fields(obj):
        value, ref = getattr(obj, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            sub = _non_default(value)
            if sub:
                out[f.name] = sub
        elif to_dict(value) != to_dict(ref):
            out[f.name] = to_dict(value)
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_plain).encode()).hexdigest()[:20]


def _folder_digest(folder: str | None) -> str | None:
    """Names, sizes and mtimes of a folder's files: a folder whose contents change gets new keys."""
    if not folder:
        return None
    entries = []
    for dirpath, _dirs, names in os.walk(folder, followlinks=True):
        for n in names:
            st = os.stat(os.path.join(dirpath, n))
            entries.append((os.path.relpath(os.path.join(dirpath, n), folder), st.st_size, int(st.st_mtime)))
    return _digest(sorted(entries))


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _train_identity(cfg: TrainConfig) -> dict[str, Any]:
    """What a training run's key hashes: the config's non-default values, with a starting weights file
    (``model.weights``) named by its content (SHA-256) rather than its path: a replaced file gets new
    runs, a moved one keeps them."""
    ident = _non_default(cfg)
    if cfg.model.weights:
        path = Path(cfg.model.weights).expanduser()
        if not path.is_file():
            raise StudyError(f"model.weights: weights file not found: {path}")
        st = path.stat()
        stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if stamp not in _SHA_CACHE:
            _SHA_CACHE[stamp] = sha256_file(path)
        ident["model"] = {**ident.get("model", {}), "weights": f"sha256:{_SHA_CACHE[stamp]}"}
    return ident


@dataclass(frozen=True)
class RunSpec:
    """One (variant, seed) of a study, with the keys of its cached files."""

    variant: str
    kind: str  # "trained", "random" or "start" (chance rows are derived, never run)
    seed: int
    train_cfg: TrainConfig
    evaluation: suite.SuiteConfig
    train_key: str | None
    key: str

    @property
    def label(self) -> str:
        return f"{self.variant} seed {self.seed}"


def _evaluation(study: StudyConfig, cfg: TrainConfig, seed: int) -> suite.SuiteConfig:
    # the backbone's own input size; the evaluation's seeds follow the run's, so pairs share them
    return replace(study.evaluation, size=cfg.model.img_size, seed=seed, tasks=tuple(study.evaluation.tasks))


def plan_runs(study: StudyConfig) -> list[RunSpec]:
    """Every run the study needs, seed by seed, in variant order (chance variants excluded)."""
    runs, budgets = [], {}
    folder = _folder_digest(study.evaluation.folder)
    for seed in study.seeds:
        for v in study.variants:
            if v.kind == "chance":
                continue
            cfg = resolve_train_config(study, v, seed)
            ev = _evaluation(study, cfg, seed)
            ev_key = {k: val for k, val in _non_default(ev).items() if k != "cache_dir"} | {"folder_digest": folder}
            if v.kind == "trained":
                budgets[v.name] = budget_of(cfg)
                # the methods version: a changed default changes what the same non-default values train
                train_key = _digest({"format": RESULT_FORMAT, "methods": METHODS_VERSION, "train": _train_identity(cfg)})
                key = _digest({"format": RESULT_FORMAT, "kind": "trained", "train": train_key, "eval": ev_key})
            elif v.kind == "start":
                if not cfg.model.weights:
                    raise StudyError(f"variant {v.name!r} is kind 'start' (the starting weights, untrained), but the study "
                                     "has no weights: set 'weights' in the study file")
                train_key = None
                key = _digest({"format": RESULT_FORMAT, "kind": "start", "model": _train_identity(cfg)["model"], "eval": ev_key})
            else:
                train_key = None
                model_key = {k: val for k, val in _non_default(cfg.model).items() if k not in ("weights", "weights_network")}
                key = _digest({"format": RESULT_FORMAT, "kind": "random", "model": model_key, "seed": seed, "eval": ev_key})
            runs.append(RunSpec(v.name, v.kind, seed, cfg, ev, train_key, key))
    first = next(iter(budgets.values()), None)
    for name, b in budgets.items():  # guaranteed by construction; checked because the comparison rests on it
        if b != first:
            raise StudyError(f"variant {name!r} does not share the study's budget (steps, batch, data, model, optimiser)")
    return runs


def _train_summary(run_dir: Path) -> dict[str, Any]:
    """First and last logged DINO loss and teacher entropies: whether the run learnt anything."""
    file = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.is_file() else []
    rows = [r for r in rows if "loss/dino" in r]
    keep = ("step", "loss/dino", "loss/total", "dino/teacher_entropy", "dino/teacher_batch_entropy")
    pick = lambda r: {k: r[k] for k in keep if k in r}
    return {"first": pick(rows[0]), "last": pick(rows[-1])} if rows else {}


def _ensure_trained(run: RunSpec, runs_dir: Path, progress: bool, echo: Callable[[str], None]) -> tuple[torch.nn.Module, dict]:
    """The run's trained backbone: loaded if complete, else trained (resumed from its newest checkpoint)."""
    run_dir = runs_dir / "train" / run.train_key
    backbone = run_dir / "backbone.safetensors"
    info: dict[str, Any] = {"run_dir": str(run_dir)}
    if backbone.is_file():
        model, meta = load_backbone(backbone)
        if meta.get("step") == run.train_cfg.total_steps:  # a run stopped early (stop_at) also leaves a backbone
            return model, info | {"trained_now": False, "step": meta.get("step")}
    ckpt = latest_checkpoint(run_dir)
    t0 = time.perf_counter()
    if ckpt is not None:
        echo(f"  resuming training from {ckpt.name}")
    result = loop.train(run.train_cfg, run_dir, resume=ckpt is not None, progress=progress)
    info |= {"trained_now": True, "train_seconds": round(time.perf_counter() - t0, 1),
             "resumed_from": ckpt.name if ckpt is not None else None, "step": result.step}
    return load_backbone(backbone)[0], info


def _random_backbone(cfg: TrainConfig, seed: int) -> torch.nn.Module:
    """The architecture initialised from ``seed``, without touching the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_backbone(cfg.model.name, pretrained=False, **timm_kwargs(cfg.model)).eval()


def _execute(run: RunSpec, runs_dir: Path, progress: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    record: dict[str, Any] = {"format": RESULT_FORMAT, "key": run.key, "variant": run.variant, "kind": run.kind,
                              "seed": run.seed, "train_key": run.train_key, "config": to_dict(run.train_cfg),
                              "evaluation": to_dict(run.evaluation)}
    if run.kind == "trained":
        model, info = _ensure_trained(run, runs_dir, progress, echo)
        record["train"] = info | {"curve": _train_summary(Path(info["run_dir"]))}
    elif run.kind == "start":  # the loaded backbone at the study's input size, as every trained run starts
        m = run.train_cfg.model
        model, info = backbone_from_weights(m.name, read_weights(m.weights, m.weights_network), img_size=m.img_size,
                                            timm_kwargs=timm_kwargs(m))
        record["weights"] = info["weights"]
    else:
        model = _random_backbone(run.train_cfg, run.seed)
    t0 = time.perf_counter()
    results = suite.evaluate_suite(model, run.evaluation)  # not under no_grad: the heads train
    record |= {"eval_seconds": round(time.perf_counter() - t0, 1), "scores": suite.headline_scores(results),
               "chance": suite.chance_scores(results), "results": results,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return record


def load_records(study: StudyConfig, runs_dir: Path | None = None) -> tuple[list[dict], list[RunSpec]]:
    """The finished runs' records and the runs still missing, without running anything."""
    runs_dir = Path(runs_dir or study.runs_dir)
    done, missing = [], []
    for run in plan_runs(study):
        file = runs_dir / "results" / f"{run.key}.json"
        if file.is_file():
            rec = json.loads(file.read_text())
            done.append(rec | {"variant": run.variant, "seed": run.seed})  # the name may have changed since
        else:
            missing.append(run)
    return done, missing


def _take_lock(lock: Path) -> int | None:
    """Create ``lock`` for this process; None if it is held by another live process on this machine."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid, _, host = lock.read_text().partition(" ")
                pid_i = int(pid)
            except (OSError, ValueError):
                return None  # being written right now by its owner
            if host != socket.gethostname():
                return pid_i  # another machine: trust it
            try:
                os.kill(pid_i, 0)
                return pid_i
            except ProcessLookupError:
                lock.unlink(missing_ok=True)  # its process died: take it over
                continue
            except PermissionError:
                return pid_i
        os.write(fd, me.encode())
        os.close(fd)
        return None
    return -1


def run_study(study: StudyConfig, runs_dir: Path | None = None, progress: bool = False,
              echo: Callable[[str], None] = print, max_runs: int | None = None) -> list[dict]:
    """Run every missing (variant, seed) of ``study`` and return all records (cached and new).

    ``max_runs`` stops after that many new runs (the rest stays missing: call again to continue).
    """
    runs_dir = Path(runs_dir or study.runs_dir)
    results_dir = runs_dir / "results"
    plan = plan_runs(study)
    done, missing = load_records(study, runs_dir)
    echo(f"study {study.name}: {len(plan)} runs ({len(done)} cached, {len(missing)} to run), "
         f"{len(study.variants)} variants x {len(study.seeds)} seeds; runs in {runs_dir}")
    records = {r["key"]: r for r in done}
    ran = 0
    for i, run in enumerate(plan, 1):
        if run.key in records:
            echo(f"[{i}/{len(plan)}] {run.label}: cached")
            continue
        if max_runs is not None and ran >= max_runs:
            break
        # a trained run locks its training: two studies that evaluate one training differently share it
        lock = runs_dir / "locks" / f"{run.train_key or run.key}.lock"
        holder = _take_lock(lock)
        if holder is not None:
            echo(f"[{i}/{len(plan)}] {run.label}: skipped, another process ({holder}) is running it")
            continue
        try:
            if (results_dir / f"{run.key}.json").is_file():  # finished by another process meanwhile
                records[run.key] = json.loads((results_dir / f"{run.key}.json").read_text())
                echo(f"[{i}/{len(plan)}] {run.label}: cached")
                continue
            echo(f"[{i}/{len(plan)}] {run.label}: {'training + ' if run.kind == 'trained' else ''}evaluating ...")
            t0 = time.perf_counter()
            rec = _execute(run, runs_dir, progress, echo)
            atomic_write_text(results_dir / f"{run.key}.json", json.dumps(rec, indent=1, default=_plain))
        finally:
            lock.unlink(missing_ok=True)
        records[run.key] = rec
        ran += 1
        took = time.perf_counter() - t0
        train_s = rec.get("train", {}).get("train_seconds")
        echo(f"[{i}/{len(plan)}] {run.label}: done in {took:.0f} s"
             + (f" (training {train_s:.0f} s, evaluation {rec['eval_seconds']:.0f} s)" if train_s else ""))
    return [records[r.key] for r in plan if r.key in records]

