"""Checkpoints: safetensors weights + a weights-only resumable state, written atomically.

Layout of a run directory::

    run/config.yaml                         resolved config
    run/checkpoints/step_00000500/model.safetensors   student, teacher, DINO centre (+ config in metadata)
    run/checkpoints/step_00000500/state.pt            optimizer, step, RNG states (torch.load(weights_only=True))
    run/checkpoints/latest                  name of the newest complete checkpoint
    run/backbone.safetensors                backbone-only weights for export (teacher by default)

A checkpoint directory is written under a temporary name and renamed when complete; ``latest`` is
replaced atomically afterwards, so a crash at any point leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from wherevit import __version__
from wherevit.base.errors import InvalidRequest, WherevitError
from wherevit.base.image import Preprocess
from wherevit.base.io import atomic_write_text, atomic_write_with, check_writable_dir, sha256_file
from wherevit.train.backbone import create_backbone, describe_backbone
from wherevit.train.plugins import plain_backbone_state
from wherevit.train.weights import WeightsError, backbone_from_weights, fitting_models, read_weights

__all__ = [
    "CheckpointError", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state",
    "save_backbone", "load_backbone", "plain_backbone", "named_source", "BACKBONE_FORMAT",
]

BACKBONE_FORMAT = "wherevit.backbone/1"


class CheckpointError(WherevitError, ValueError):
    """A checkpoint that is missing, corrupt, or does not match the model it is loaded into."""


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    ptr = Path(run_dir) / "checkpoints" / "latest"
    if not ptr.is_file():
        return None
    ckpt = ptr.parent / ptr.read_text().strip()
    return ckpt if (ckpt / "model.safetensors").is_file() else None


def rng_state() -> dict[str, Any]:
    """This process's RNG state (drop-path and any other torch randomness)."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    config: dict, keep: int = 2, rng_states: list[dict] | None = None) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep``.

    ``rng_states`` holds one ``rng_state()`` per rank (rank order), so every rank resumes its own stream.
    """
    root = check_writable_dir(Path(run_dir) / "checkpoints")
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta = {"config": json.dumps(config), "step": str(step), "wherevit_version": __version__}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata=meta)
    resumable: dict[str, Any] = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_states or [rng_state()]}
    torch.save(resumable, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(root / "latest", name + "\n")
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); is it truncated or corrupt?") from e


def load_checkpoint(ckpt_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    rank: int = 0, world_size: int = 1) -> tuple[int, bool]:
    """Restore weights, optimizer and this rank's RNG from a checkpoint directory.

    Returns ``(step, rng_restored)``; the RNG is not restored when the checkpoint was written by a
    different number of ranks (the caller reseeds: the run continues, but not bit for bit).
    """
    ckpt_dir = Path(ckpt_dir)
    state, _meta = _load_safetensors(ckpt_dir / "model.safetensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt_dir}: weights do not match this model's config:\n{e}") from e
    st_path = ckpt_dir / "state.pt"
    if not st_path.is_file():
        raise CheckpointError(f"{ckpt_dir}: missing state.pt (optimizer/step); cannot resume from it")
    try:
        st = torch.load(st_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{st_path}: unreadable resumable state ({e})") from e
    if optimizer is not None:
        optimizer.load_state_dict(st["optimizer"])
    states = st.get("rng") or []
    restored = len(states) == world_size
    if restored:
        torch.set_rng_state(states[rank]["torch"])
        if states[rank].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(states[rank]["cuda"])
    return int(st["step"]), restored


def plain_backbone(state: dict[str, torch.Tensor], model_name: str, timm_kwargs: dict,
                   plugins: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """A plain timm ViT holding a training backbone's weights, and the plug-ins' export notes.

    What plug-ins attached to the backbone (a positional field) is baked or dropped by their
    ``export_backbone_state``, so the result loads strictly into ``timm.create_model``.
    """
    kw = {k: v for k, v in timm_kwargs.items() if k != "drop_path_rate"}
    model = _seeded_backbone(model_name, True, **kw)
    state = {k: v.detach().cpu().clone() for k, v in state.items()}
    notes = plain_backbone_state(plugins or {}, state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"backbone weights do not match {model_name} with {kw}:\n{e}") from e
    return model.eval(), notes


def save_backbone(path: str | Path, backbone: torch.nn.Module, model_name: str, timm_kwargs: dict,
                  preprocess: dict, source: str, step: int | None = None, train_config: dict | None = None,
                  notes: dict | None = None) -> Path:
    """Backbone-only safetensors with everything export needs to rebuild it in its metadata.

    ``backbone`` must be a plain timm ViT (``plain_backbone``); ``notes`` (plug-in export notes,
    e.g. ``positional``) are merged into the recorded info.
    """
    info = {
        "format": BACKBONE_FORMAT,
        "model": model_name,
        "timm_kwargs": {k: v for k, v in timm_kwargs.items() if k != "drop_path_rate"},
        "arch": describe_backbone(backbone),
        "preprocess": preprocess,
        "source": source,
        "step": step,
        "wherevit_version": __version__,
        **(notes or {}),
    }
    meta = {"wherevit": json.dumps(info)}
    if train_config is not None:
        meta["train_config"] = json.dumps(train_config)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    return atomic_write_with(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def _resolve_backbone_file(spec: Path) -> Path:
    if spec.is_file():
        return spec
    if spec.is_dir():
        if (spec / "backbone.safetensors").is_file():
            return spec / "backbone.safetensors"
        if (spec / "model.safetensors").is_file():
            return spec / "model.safetensors"
        ckpt = latest_checkpoint(spec)
        if ckpt is not None:
            return ckpt / "model.safetensors"
        raise CheckpointError(f"{spec}: no backbone.safetensors, model.safetensors or checkpoints/latest inside")
    raise CheckpointError(f"checkpoint not found: {spec}")


def _seeded_backbone(name: str, dynamic_img_size: bool, **kwargs) -> torch.nn.Module:
    """``create_backbone`` initialised from seed 0, without touching the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_backbone(name, pretrained=False, dynamic_img_size=dynamic_img_size, **kwargs)


def load_backbone(spec: str | Path, which: str = "teacher", dynamic_img_size: bool = True,
                  expect_model: str | None = None, random_init: bool = False, weights: str | Path | None = None,
                  pretrained: bool = False, img_size: int | None = None) -> tuple[torch.nn.Module, dict]:
    """Load a backbone for export, evaluation, heads or benchmarks: ``(model in eval mode, info)``.

    ``spec`` is a ``backbone.safetensors``, a training checkpoint directory or run directory (the
    ``which`` network of its newest checkpoint), or a timm model name: with ``weights`` (a file in
    any layout ``train/weights.py`` reads: timm, DINO, DINOv2, iBOT, MAE, wherevit), with
    ``pretrained`` (timm's own download), or else random weights initialised from seed 0 (every
    call gives the same weights; for trying export without training). ``img_size`` builds a named
    model at that size (timm resamples the position grid once, at load); by default a weights file
    keeps its own grid. ``expect_model`` guards against exporting the wrong architecture.
    ``random_init`` keeps the architecture and discards the weights (the floor in evaluations).
    ``info["weights"]`` records where the weights came from (file, SHA-256, layout).
    """
    if weights is not None or pretrained:
        model, info = _named_backbone(str(spec), weights, which, dynamic_img_size, expect_model, random_init, pretrained, img_size)
        if not random_init:
            info["weights"]["loaded_by"] = "pretrained" if pretrained else "weights"  # how to load them again (named_source)
        return model, info
    path = Path(spec)
    if not path.exists() and "/" not in str(spec) and not str(spec).endswith(".safetensors"):
        # seeded: export, bench reference and runtime agree on the weights
        kw = {"img_size": img_size} if img_size else {}
        model = _seeded_backbone(str(spec), dynamic_img_size, **kw).eval()
        size = list(model.patch_embed.img_size)
        info = {"format": BACKBONE_FORMAT, "model": str(spec), "timm_kwargs": kw, "source": "random-init",
                "step": None, "arch": describe_backbone(model),
                "preprocess": Preprocess(size=tuple(size)).to_dict(), "weights": {"layout": "random-init", "seed": 0}}
        return model, info
    file = _resolve_backbone_file(path)
    try:
        w = read_weights(file, which)
    except WeightsError as e:
        raise CheckpointError(str(e)) from e
    if not w.layout.startswith("wherevit"):
        fits = fitting_models(w.state)
        raise CheckpointError(f"{file} is a {w.layout}-layout weights file, not a wherevit run; name its model and pass the "
                              f"file with --weights, e.g. `{fits[0] if fits else '<timm model>'} --weights {file}`"
                              + (f" (it fits: {', '.join(fits)})" if fits else ""))
    info = dict(w.recorded)
    if expect_model and info["model"] != expect_model:
        raise CheckpointError(f"{file} holds a {info['model']} backbone, but {expect_model} was requested")
    model = _seeded_backbone(info["model"], dynamic_img_size, **info["timm_kwargs"])  # a random-init floor is reproducible
    if random_init:
        info.update(source="random-init", step=None, file=str(file), weights={"layout": "random-init", "seed": 0})
        info["arch"] = describe_backbone(model)
        return model.eval(), info
    try:
        model.load_state_dict(w.state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{file}: weights do not match {info['model']} with {info['timm_kwargs']}:\n{e}") from e
    info["arch"] = describe_backbone(model)
    info["file"] = str(file)
    info["weights"] = w.record()
    return model.eval(), info


def named_source(weights_record: dict | None) -> dict:
    """The ``load_backbone`` arguments that rebuild a named model's weights from a sidecar's weights
    record (``model.weights``: ``weights`` and ``which``, or ``pretrained``); ``{}`` when ``checkpoint`` alone says it."""
    rec = weights_record or {}
    if rec.get("loaded_by") == "pretrained":
        return {"pretrained": True}
    if rec.get("loaded_by") == "weights" and rec.get("path"):
        net = rec.get("network")
        return {"weights": rec["path"], "which": "student" if net == "student" else "teacher"}
    return {}


def _pretrained_record(cfg: dict) -> dict:
    """Where timm's pretrained weights came from: its config's source, and the local file with its
    SHA-256 where one can be found (a ``file`` entry, or the Hugging Face cache timm downloaded to)."""
    record = {k: cfg.get(k) for k in ("tag", "hf_hub_id", "url", "file") if cfg.get(k)}
    local = cfg.get("file")
    if not local and cfg.get("hf_hub_id"):
        try:
            from huggingface_hub import try_to_load_from_cache

            for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                hit = try_to_load_from_cache(cfg["hf_hub_id"], name)
                if isinstance(hit, str):
                    local = hit
                    break
        except ImportError:  # timm without huggingface_hub downloads by URL; the record keeps the URL
            pass
    if local and Path(local).is_file():
        record.update(path=str(local), bytes=Path(local).stat().st_size, sha256=sha256_file(local))
    return {"layout": "timm-pretrained", **record}


def _named_backbone(name: str, weights: str | Path | None, which: str, dynamic_img_size: bool, expect_model: str | None,
                    random_init: bool, pretrained: bool, img_size: int | None) -> tuple[torch.nn.Module, dict]:
    """A timm model by name with a weights file (``weights``) or timm's own pretrained weights."""
    if weights is not None and pretrained:
        raise InvalidRequest("give either a weights file or --pretrained (timm's download), not both")
    if Path(name).exists() or name.endswith((".safetensors", ".pth", ".pt")):
        raise InvalidRequest(f"with --weights/--pretrained the checkpoint argument names the timm model "
                             f"(e.g. vit_small_patch14_dinov2), got the path {name!r}")
    if expect_model and name != expect_model:
        raise CheckpointError(f"the model is {name}, but {expect_model} was requested")
    if pretrained:
        kw = {"img_size": img_size} if img_size else {}
        model = (_seeded_backbone(name, dynamic_img_size, **kw) if random_init
                 else create_backbone(name, pretrained=True, dynamic_img_size=dynamic_img_size, **kw)).eval()
        record = _pretrained_record(getattr(model, "pretrained_cfg", {}) or {})
        info = {"format": BACKBONE_FORMAT, "model": name, "timm_kwargs": kw, "source": "timm-pretrained", "step": None,
                "arch": describe_backbone(model), "preprocess": Preprocess(size=tuple(model.patch_embed.img_size)).to_dict(),
                "weights": record if not random_init else {"layout": "random-init"}}
        return model, info
    model, info = backbone_from_weights(name, read_weights(weights, which), img_size=img_size, dynamic_img_size=dynamic_img_size)
    if random_init:  # the same architecture at seed 0: the floor of an evaluation
        fresh = _seeded_backbone(name, dynamic_img_size, **info["timm_kwargs"]).eval()
        info.update(source="random-init", step=None, weights={"layout": "random-init", "seed": 0, "architecture_of": info["weights"]})
        return fresh, info
    return model, info
