"""The weights users already have -> a timm ViT: read a file in any layout people publish, adapt it
with timm's own filter, refuse what does not fit, and record where the weights came from.

``read_weights(path)`` reads a ``.safetensors``, ``.pth`` or ``.pt`` file and returns a ``Weights``:
the backbone's tensors under timm's names (before timm's filter), the layout it detected, the file's
SHA-256 and any training-only tensors worth keeping (a mask token). ``fit_weights(model, weights)``
runs timm's ``checkpoint_filter_fn`` (DINOv2 conversion -- ``register_tokens``, ``mask_token``,
SwiGLU ``w12``/``w3`` --, position-grid and patch-kernel resampling) and loads strictly; a mismatch
is a ``WeightsMismatch`` listing the missing, unexpected and mis-shaped keys and naming the timm
models the file does fit (``fitting_models``). ``backbone_from_weights(name, weights)`` does both
for a model name, at the file's own input size unless asked for another.

Layouts (``Weights.layout``):

==================== ==========================================================================
timm                 a flat state dict in timm's names: timm's hub files, the official DINO
                     releases (``dino_deitsmall16_pretrain.pth``), DeiT
timm-train           a timm training checkpoint ``{"state_dict", "state_dict_ema", ...}``
                     (the EMA for ``network="teacher"``, the online weights for "student")
dinov2               the official DINOv2 releases: flat, with ``mask_token`` (kept as an extra),
                     ``register_tokens``, ``ls1.gamma`` / ``ls2.gamma``, a 518 px (37 x 37) grid
dinov2-train         a DINOv2 training checkpoint ``{"model": {"teacher.backbone.*", ...}}``
                     (FSDP block chunks ``blocks.<chunk>.<i>`` flattened)
dino-train           a DINO training checkpoint ``{"teacher": {"backbone.*", "head.*"},
                     "student": {"module.backbone.*", ...}, "args": Namespace, ...}``
ibot-train           the same for iBOT (``ibot_loss``; ``backbone.masked_embed`` kept as an extra)
state_dict           a ``{"state_dict": ...}`` wrapper (iBOT's released ``checkpoint_teacher.pth``)
mae                  an MAE checkpoint ``{"model": encoder + decoder}``; the decoder is dropped
model                another ``{"model": ...}`` wrapper (DeiT, MAE fine-tuned)
wherevit-backbone    ``run/backbone.safetensors`` of a wherevit run (architecture in its metadata)
wherevit-checkpoint  ``run/checkpoints/step_*/model.safetensors`` (``teacher.`` / ``student.``)
==================== ==========================================================================

Only tensors are read: safetensors by construction, pickles with ``torch.load(weights_only=True)``
(``argparse.Namespace`` allowed, as in timm, because DINO, iBOT and MAE save their ``args``; its
fields are read as plain values). A file holding anything else is refused with the objects named.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch

from wherevit.base.errors import WherevitError
from wherevit.base.io import sha256_file

__all__ = [
    "WeightsError", "WeightsMismatch", "Weights", "read_weights", "fit_weights", "fitting_models",
    "backbone_from_weights", "native_img_size", "LAYOUTS",
]

log = logging.getLogger("wherevit.weights")

LAYOUTS = ("timm", "timm-train", "dinov2", "dinov2-train", "dino-train", "ibot-train", "state_dict", "mae", "model",
           "wherevit-backbone", "wherevit-checkpoint")
NETWORKS = ("teacher", "student")
# Training-only tensors some layouts keep beside the backbone: (file key -> extras name). iBOT and
# DINOv2 train a mask token; continued iBOT pretraining starts from it.
_EXTRAS = {"masked_embed": "mask_token"}


class WeightsError(WherevitError, ValueError):
    """A weights file that cannot be read, holds more than tensors, or is in no layout we know."""


class WeightsMismatch(WeightsError):
    """Weights that do not fit the requested model: the message lists the keys and the models they fit."""


@dataclass
class Weights:
    """A backbone's tensors read from one file, with what was learnt about the file."""

    state: dict[str, torch.Tensor]  # timm names, before timm's filter (the file's own grid and kernel)
    layout: str
    path: Path
    sha256: str
    bytes: int
    network: str | None = None  # which network of a two-network checkpoint (teacher / student / EMA)
    dropped: dict[str, int] = field(default_factory=dict)  # non-backbone key prefixes left out -> count
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # training-only tensors (mask_token)
    recorded: dict[str, Any] = field(default_factory=dict)  # a wherevit file's own record (model, timm_kwargs, ...)
    args: dict[str, Any] = field(default_factory=dict)  # a training run's saved args (DINO / iBOT / MAE), if any

    def record(self) -> dict[str, Any]:
        """Provenance for sidecars, run records and logs (JSON-ready)."""
        rec: dict[str, Any] = {"file": self.path.name, "path": str(self.path), "bytes": self.bytes, "sha256": self.sha256,
                               "layout": self.layout}
        if self.network:
            rec["network"] = self.network
        if self.dropped:
            rec["dropped"] = dict(self.dropped)
        if self.extras:
            rec["extras"] = sorted(self.extras)
        if self.args.get("arch"):
            rec["args_arch"] = str(self.args["arch"])
        return rec


# -- reading ------------------------------------------------------------------------------------


def _load_container(path: Path) -> tuple[Any, dict[str, str]]:
    """The file's top-level object (tensors and plain containers only) and safetensors metadata."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                return {k: fh.get_tensor(k) for k in fh.keys()}, meta
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path}: not a readable safetensors file ({e}); is it truncated or corrupt?") from e
    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": True}
    if head[:4] == b"PK\x03\x04":
        kwargs["mmap"] = True  # zip checkpoints: tensors stay on disk until used
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, **kwargs), {}
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 -- a legacy (non-zip) file cannot be scanned; the error says enough
            unsafe = []
        named = f" ({', '.join(sorted(set(unsafe)))})" if unsafe else ""
        raise WeightsError(
            f"{path} holds Python objects other than tensors{named}; wherevit reads only tensors from a weights file "
            "(torch.load(weights_only=True): a pickle can run code). Where you trust the file, save its state dict "
            "alone: torch.save(torch.load(f, weights_only=False)[<key>], 'plain.pth'), or convert it to .safetensors"
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable PyTorch or safetensors weights file ({type(e).__name__}: {e})") from e


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _only_tensors(state: Mapping, path: Path, where: str) -> dict[str, torch.Tensor]:
    bad = {k: type(v).__name__ for k, v in state.items() if not isinstance(v, torch.Tensor)}
    if bad:
        shown = ", ".join(f"{k} ({t})" for k, t in list(bad.items())[:6])
        raise WeightsError(f"{path}: {where} holds non-tensor entries: {shown}{' ...' if len(bad) > 6 else ''}")
    if not all(isinstance(k, str) for k in state):
        raise WeightsError(f"{path}: {where} has non-string keys")
    return dict(state)


def _strip(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Keys under ``prefix`` without it, and a count of the keys left out by their first name part."""
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return kept, _count_prefixes(k for k in state if not k.startswith(prefix))


def _count_prefixes(keys) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        head = k.split(".")[0]
        out[head] = out.get(head, 0) + 1
    return out


def _clean(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ``clean_state_dict`` (DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes)."""
    from timm.models import clean_state_dict

    return clean_state_dict(state)


def _unchunk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2's FSDP block chunks (``blocks.<chunk>.<i>.``, i the global index) -> ``blocks.<i>.``."""
    if not any(re.match(r"blocks\.\d+\.\d+\.", k) for k in state):
        return state
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}


def _args_dict(obj: Any) -> dict[str, Any]:
    args = obj.get("args") if isinstance(obj, Mapping) else None
    if isinstance(args, argparse.Namespace):
        return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {}


def _pick_network(obj: Mapping, network: str, path: Path) -> dict[str, torch.Tensor]:
    if network not in NETWORKS:
        raise WeightsError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    if network not in obj:
        raise WeightsError(f"{path}: no {network!r} network in this checkpoint (it has {', '.join(sorted(map(str, obj)))})")
    return _only_tensors(obj[network], path, f"[{network!r}]")


def _mae_encoder(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]] | None:
    """An MAE state dict without its decoder (``decoder_*`` and the decoder's ``mask_token``), or None."""
    if not any(k.startswith("decoder") for k in state):
        return None
    drop = [k for k in state if k.startswith("decoder") or k == "mask_token"]
    return {k: v for k, v in state.items() if k not in drop}, _count_prefixes(drop)


def _unwrap(obj: Any, path: Path, network: str) -> tuple[dict[str, torch.Tensor], str, str | None, dict]:
    """(backbone tensors in timm names, layout, network, dropped prefixes) of a loaded file."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict of tensors (a state dict or a checkpoint), got {type(obj).__name__}")
    dropped: dict[str, int] = {}
    if "teacher" in obj or "student" in obj:  # DINO / iBOT training checkpoints
        state = _clean(_pick_network(obj, network, path))
        layout = "ibot-train" if "ibot_loss" in obj or any(k.endswith("masked_embed") for k in state) else "dino-train"
        if any(k.startswith("backbone.") for k in state):
            state, dropped = _strip(state, "backbone.")
        return state, layout, network, dropped
    if isinstance(obj.get("model"), Mapping):
        state = _clean(_only_tensors(obj["model"], path, "['model']"))
        if any(k.startswith(("teacher.backbone.", "student.backbone.")) for k in state):
            if network not in NETWORKS:
                raise WeightsError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
            state, dropped = _strip(state, f"{network}.backbone.")
            if not state:
                raise WeightsError(f"{path}: no {network}.backbone.* tensors in this DINOv2 checkpoint")
            return _unchunk(state), "dinov2-train", network, dropped
        mae = _mae_encoder(state)
        return (*mae[:1], "mae", None, mae[1]) if mae else (state, "model", None, dropped)
    if "state_dict" in obj or "state_dict_ema" in obj:  # timm training checkpoints, iBOT's released teacher
        ema = obj.get("state_dict_ema")
        if ema is not None and network == "teacher":
            return _clean(_only_tensors(ema, path, "['state_dict_ema']")), "timm-train", "ema", dropped
        if "state_dict" not in obj:
            raise WeightsError(f"{path}: only an EMA ('state_dict_ema') in this checkpoint; use the teacher network")
        state = _clean(_only_tensors(obj["state_dict"], path, "['state_dict']"))
        layout = "timm-train" if "state_dict_ema" in obj or ("epoch" in obj and "optimizer" in obj) else "state_dict"
        if any(k.startswith("backbone.") for k in state):
            state, dropped = _strip(state, "backbone.")
        return state, layout, ("student" if layout == "timm-train" else None), dropped
    if not _is_tensor_dict(obj):
        tops = ", ".join(f"{k} ({type(v).__name__})" for k, v in list(obj.items())[:8])
        raise WeightsError(f"{path}: not a layout wherevit knows (top-level entries: {tops}); known layouts: {', '.join(LAYOUTS)}")
    state = _clean(dict(obj))
    if all(k.startswith("backbone.") for k in state):  # a DINO teacher saved with its wrapper
        state, dropped = _strip(state, "backbone.")
    mae = _mae_encoder(state)
    if mae:
        return mae[0], "mae", None, mae[1]
    layout = "dinov2" if "mask_token" in state or "register_tokens" in state else "timm"
    return _unchunk(state), layout, None, dropped


def _read_wherevit(state: dict[str, torch.Tensor], meta: dict[str, str], path: Path,
                   network: str) -> tuple[dict[str, torch.Tensor], str, str | None, dict[str, Any]]:
    """A wherevit backbone or training checkpoint: its plain backbone tensors and its own record."""
    if "wherevit" in meta:
        return state, "wherevit-backbone", None, json.loads(meta["wherevit"])
    if network not in NETWORKS:
        raise WeightsError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    from wherevit.base.config import from_dict
    from wherevit.base.image import Preprocess
    from wherevit.train.backbone import create_backbone, timm_kwargs
    from wherevit.train.config import TrainConfig
    from wherevit.train.plugins import plain_backbone_state

    tc = from_dict(TrainConfig, json.loads(meta["config"]))
    prefix = f"{network}.backbone."
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    kw = {k: v for k, v in timm_kwargs(tc.model).items() if k != "drop_path_rate"}
    recorded = {"model": tc.model.name, "timm_kwargs": kw, "source": network, "step": int(meta.get("step", 0)),
                "preprocess": Preprocess(size=(tc.model.img_size,) * 2).to_dict()}
    with torch.random.fork_rng(devices=[]):  # a shape probe only; never moves the caller's RNG
        probe = create_backbone(tc.model.name, pretrained=False, dynamic_img_size=True, **kw)
    recorded.update(plain_backbone_state(tc.plugins, state, probe))  # bake what plug-ins attached (a positional field)
    return state, "wherevit-checkpoint", network, recorded


def read_weights(path: str | Path, network: str = "teacher") -> Weights:
    """Read a weights file in any known layout (see the module docstring); tensors only.

    ``network`` picks the teacher or the student of a two-network checkpoint (DINO, iBOT, DINOv2,
    wherevit); for a timm training checkpoint "teacher" means its EMA. Layouts holding one network
    ignore it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}" + (" (a directory; give the file)" if path.is_dir() else ""))
    obj, meta = _load_container(path)
    recorded: dict[str, Any] = {}
    if "wherevit" in meta or "config" in meta:
        state, layout, net, recorded = _read_wherevit(obj, meta, path, network)
        dropped = {}
    else:
        state, layout, net, dropped = _unwrap(obj, path, network)
    extras = {_EXTRAS[k]: state.pop(k).reshape(-1) for k in list(state) if k in _EXTRAS}
    if layout.startswith("dinov2") and "mask_token" in state:
        extras["mask_token"] = state["mask_token"].reshape(-1)  # timm's filter drops it from the backbone
    if not state:
        raise WeightsError(f"{path}: no backbone tensors found (layout {layout})")
    size = path.stat().st_size
    w = Weights(state=state, layout=layout, path=path.resolve(), sha256=sha256_file(path), bytes=size, network=net,
                dropped=dropped, extras=extras, recorded=recorded, args=_args_dict(obj))
    log.info("read %s: layout %s, %d tensors, sha256 %s", path, layout, len(state), w.sha256[:12])
    return w


# -- fitting ------------------------------------------------------------------------------------


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _timm_names(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The few renames timm's filter makes (DINOv2, DeiT-3), on shapes only: for signatures."""
    out = {}
    for k, s in shapes.items():
        k = {"register_tokens": "reg_token"}.get(k, k)
        k = re.sub(r"mlp\.w12\.", "mlp.fc1.", re.sub(r"mlp\.w3\.", "mlp.fc2.", k))
        k = re.sub(r"gamma_([12])$", r"ls\1.gamma", k)
        out[k] = s
    return out


def _signature(shapes: dict[str, tuple[int, ...]]) -> tuple | None:
    """What a file's shapes say about the architecture (the position grid excepted: it is resampled)."""
    s = _timm_names(shapes)
    proj = s.get("patch_embed.proj.weight")
    if proj is None:
        return None
    depth = len({int(m.group(1)) for k in s if (m := re.match(r"blocks\.(\d+)\.", k))})
    reg = s["reg_token"][1] if "reg_token" in s else 0
    fc1 = s.get("blocks.0.mlp.fc1.weight")
    has = lambda k: k in s  # noqa: E731
    return (tuple(proj), depth, reg, has("cls_token"), has("blocks.0.ls1.gamma"), fc1[0] if fc1 else None,
            has("blocks.0.attn.qkv.bias"), has("blocks.0.attn.q_norm.weight"), has("norm_pre.weight"), has("norm.weight"),
            has("fc_norm.weight"), has("pos_embed"))


@lru_cache(maxsize=None)
def _model_signature(name: str) -> tuple | None:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            model = timm.create_model(name, num_classes=0, weight_init="skip")
    except Exception:  # noqa: BLE001 -- a model that cannot be built here fits nothing
        return None
    return _signature(_shapes(model.state_dict())) if isinstance(model, VisionTransformer) else None


def fitting_models(state: Mapping[str, torch.Tensor], limit: int = 6) -> list[str]:
    """Registered timm ViTs whose architecture these tensors fit (grid size aside), best-known first.

    Candidates are the models named with the file's patch size (``patch14``) and register count
    (``reg4``), built on the meta device; a few seconds, and only on the error path.
    """
    import timm

    sig = _signature(_shapes(state))
    if sig is None:
        return []
    p, reg = sig[0][-1], sig[2]
    names = [n for n in timm.list_models() if f"patch{p}" in n and (f"reg{reg}" in n if reg else "reg" not in n)]
    fits = [n for n in names if _model_signature(n) == sig]
    fits.sort(key=lambda n: (not n.startswith("vit_"), len(n), n))
    return fits[:limit]


def native_img_size(weights: Weights) -> int | None:
    """The input size the file's position grid was made for (grid x patch), when it is square."""
    st = weights.state
    pe, proj = st.get("pos_embed"), st.get("patch_embed.proj.weight")
    if pe is None or proj is None or pe.ndim != 3:
        return None
    n_reg = int(st["register_tokens"].shape[1]) if "register_tokens" in st else int(st["reg_token"].shape[1]) if "reg_token" in st else 0
    for prefix in (0, 1, 1 + n_reg, n_reg):
        g = math.isqrt(max(int(pe.shape[1]) - prefix, 0))
        if g > 0 and g * g == int(pe.shape[1]) - prefix:
            return g * int(proj.shape[-1])
    return None


def fit_weights(model: torch.nn.Module, weights: Weights, model_name: str | None = None) -> dict[str, Any]:
    """Load ``weights`` into a timm ViT through timm's ``checkpoint_filter_fn``; strict.

    Returns what was adapted (``resampled``: position grid / patch kernel, from -> to). A file that
    does not fit raises ``WeightsMismatch`` with the missing, unexpected and mis-shaped keys and
    the timm models it fits.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    src = dict(weights.state)  # the filter pops keys: keep the file's tensors intact
    if "register_tokens" in src and "mask_token" not in src:
        # timm converts a DINOv2 layout when it sees the mask token; some re-saved files dropped it
        src["mask_token"] = torch.zeros(1, src["register_tokens"].shape[-1])
    size, kernel = native_img_size(weights), tuple(src["patch_embed.proj.weight"].shape[-2:]) if "patch_embed.proj.weight" in src else None
    expected = model.state_dict()
    try:
        state = checkpoint_filter_fn(src, model)
    except (RuntimeError, ValueError, KeyError, IndexError) as e:  # resampling a tensor of the wrong rank, ...
        raise _mismatch(model, model_name, weights, _shapes(src), expected, f"timm's filter refused it ({e})") from e
    extra_head = {k for k in state if k.startswith("head.") and k not in expected}  # a classifier; features only here
    for k in extra_head:
        state.pop(k)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shaped = [k for k in sorted(set(expected) & set(state)) if tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shaped:
        raise _mismatch(model, model_name, weights, _shapes(state), expected, "", missing, unexpected, shaped)
    model.load_state_dict(state, strict=True)
    adapted: dict[str, Any] = {}
    grid = [int(g) for g in model.patch_embed.grid_size]
    if size is not None and kernel is not None and [size // kernel[0]] * 2 != grid and model.pos_embed is not None:
        adapted["pos_embed"] = {"grid_from": [size // kernel[0]] * 2, "grid_to": grid, "interpolation": "bicubic", "antialias": True}
    if kernel is not None and kernel != tuple(model.patch_embed.proj.weight.shape[-2:]):
        adapted["patch_kernel"] = {"from": list(kernel), "to": list(model.patch_embed.proj.weight.shape[-2:])}
    if extra_head:
        adapted["dropped_classifier"] = sorted(extra_head)
    return adapted


def _describe(sig: tuple | None) -> str:
    if sig is None:
        return "no patch embedding"
    proj, depth, reg, cls, ls, hidden = sig[:6]
    parts = [f"patch {proj[-1]}", f"width {proj[0]}", f"depth {depth}", f"mlp {hidden}"]
    parts += [f"{reg} registers"] if reg else []
    parts += ["layer scale"] if ls else []
    parts += [] if cls else ["no CLS token"]
    return ", ".join(parts)


def _show_keys(keys: list[str], limit: int = 12) -> str:
    """Keys, whole blocks collapsed (``blocks 2-11 (every tensor)``), at most ``limit`` shown."""
    per_block: dict[int, list[str]] = {}
    rest = []
    for k in keys:
        m = re.match(r"blocks\.(\d+)\.", k)
        (per_block.setdefault(int(m.group(1)), []).append(k) if m else rest.append(k))
    if len(per_block) > 1 and len({len(v) for v in per_block.values()}) == 1:
        ids = sorted(per_block)
        span = f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ", ".join(map(str, ids))
        rest.append(f"blocks {span} ({len(per_block[ids[0]])} tensors each)")
    else:
        rest = sorted(keys)
    return ", ".join(rest[:limit]) + (f", ... ({len(rest)} in all)" if len(rest) > limit else "")


def _mismatch(model, model_name: str | None, weights: Weights, have: dict, expected: Mapping, why: str,
              missing: list[str] = (), unexpected: list[str] = (), shaped: list[str] = ()) -> WeightsMismatch:
    name = model_name or type(model).__name__
    lines = [f"{weights.path.name} ({weights.layout} layout) does not fit {name}" + (f": {why}" if why else ""),
             f"  the file: {_describe(_signature(_shapes(weights.state)))}",
             f"  {name}: {_describe(_signature(_shapes(expected)))}"]
    show = lambda ks: ", ".join(ks[:4]) + (f", ... ({len(ks)} in all)" if len(ks) > 4 else "")  # noqa: E731
    if missing:
        lines.append(f"  missing keys (the model has them, the file does not): {_show_keys(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys (the file has them, the model does not): {_show_keys(unexpected)}")
    if shaped:
        lines.append("  shape mismatches: " + show([f"{k} file {list(have[k])} vs model {list(expected[k].shape)}" for k in shaped]))
    fits = fitting_models(weights.state)
    if fits:
        lines.append(f"  the file fits: {', '.join(fits)}")
    else:
        lines.append("  no registered timm ViT has this architecture; register one with timm's @register_model "
                     "or pass its overrides (model.depth, model.embed_dim, ... in a training config)")
    return WeightsMismatch("\n".join(lines))


def backbone_from_weights(name: str, weights: Weights, *, img_size: int | None = None, dynamic_img_size: bool = True,
                          timm_kwargs: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``name`` built at ``img_size`` (default: the file's own grid) with ``weights`` loaded: ``(model in eval mode, info)``.

    ``info`` has the keys ``load_backbone`` returns (model, timm_kwargs, source, step, arch,
    preprocess) and ``weights``: the file's record plus what timm's filter adapted. A wherevit file
    brings its own architecture (``timm_kwargs``); ``name`` must then be the model it records.
    """
    from wherevit.base.image import Preprocess
    from wherevit.train.backbone import create_backbone, describe_backbone

    kw = dict(weights.recorded.get("timm_kwargs") or {})
    recorded_model = weights.recorded.get("model")
    if recorded_model and recorded_model != name:
        raise WeightsMismatch(f"{weights.path.name} is a wherevit {weights.layout} of {recorded_model}, not {name}; "
                              f"name {recorded_model} (or pass the run directory as the checkpoint)")
    kw.update(timm_kwargs or {})
    kw.pop("drop_path_rate", None)
    size = img_size or (kw.get("img_size") if recorded_model else None) or native_img_size(weights)
    if size is not None:
        kw["img_size"] = int(size)
    with torch.random.fork_rng(devices=[]):  # every parameter is overwritten; do not move the caller's RNG
        torch.manual_seed(0)
        model = create_backbone(name, pretrained=False, dynamic_img_size=dynamic_img_size, **kw)
    adapted = fit_weights(model, weights, name)
    size_hw = tuple(int(s) for s in model.patch_embed.img_size)
    pre = dict(weights.recorded.get("preprocess") or {})
    pre = Preprocess.from_dict({k: v for k, v in pre.items() if k != "scale"}, size=size_hw).to_dict()
    record = weights.record() | ({"adapted": adapted} if adapted else {})
    info = {"format": "wherevit.backbone/1", "model": name, "timm_kwargs": kw,
            "source": weights.network or weights.layout, "step": weights.recorded.get("step"),
            "arch": describe_backbone(model), "preprocess": pre, "weights": record, "file": str(weights.path)}
    for key in ("positional", "initialised_from"):  # what a wherevit run recorded about its backbone
        if key in weights.recorded:
            info[key] = weights.recorded[key]
    return model.eval(), info
