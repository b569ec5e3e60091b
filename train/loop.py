"""The training loop over precomputed schedules, in named steps: set up the run, then per step
schedule -> losses and optimizer step -> EMA -> log -> checkpoint, and finally the plain backbone."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from wherevit.base.config import ConfigError, from_dict, to_dict
from wherevit.base.image import Preprocess
from wherevit.base.io import atomic_write_text, check_writable_dir
from wherevit.train.backbone import timm_kwargs
from wherevit.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    plain_backbone,
    rng_state,
    save_backbone,
    save_checkpoint,
)
from wherevit.train.clipping import clip_gradients
from wherevit.train.config import TrainConfig
from wherevit.train.data.dataset import MultiCrop, SSLDataset, StepBatchSampler
from wherevit.train.data.scenes3d import SceneViews
from wherevit.train.data.sources import ImageFolder, ImageSource
from wherevit.train.data.synthetic import SyntheticScenes
from wherevit.train.data.views import ViewSpec
from wherevit.train.distributed import DistInfo, barrier, init_distributed
from wherevit.train.meta_arch import SSLMetaArch
from wherevit.train.metrics import MetricLogger
from wherevit.train.param_groups import freeze_layers, param_groups
from wherevit.train.schedules import Schedules
from wherevit.train.warm_start import initialised_from, start_from_weights

__all__ = ["TrainResult", "train", "resolve_device", "build_source", "build_optimizer", "build_loader"]

log = logging.getLogger("wherevit.train")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    backbone: Path | None
    last_logs: dict[str, float]
    skipped_images: list[str]


def resolve_device(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda was requested but no CUDA GPU is visible to torch")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def build_source(cfg: TrainConfig) -> ImageSource:
    d = cfg.data
    if d.source == "synthetic":
        return SyntheticScenes(d.synthetic_count, d.synthetic_size, d.synthetic_seed)
    if d.source == "scenes3d":
        return SceneViews(d.synthetic_count, d.synthetic_size, d.synthetic_seed)
    return ImageFolder(d.path)


def build_optimizer(student: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (no weight decay on biases, norms, tokens and position embeddings;
    ``optim.layer_decay`` and ``optim.freeze_blocks`` for continued pretraining)."""
    freeze_layers(student, cfg.optim.freeze_blocks)
    groups = param_groups(student, cfg.optim.layer_decay)
    fused = next(student.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.optim.betas, weight_decay=0.0, fused=fused or None)


def build_loader(cfg: TrainConfig, meta: SSLMetaArch, dist_info: DistInfo, start_step: int, pin: bool):
    c = cfg.data.crops
    aug = dict(flip_p=c.flip_p, color_jitter_p=c.color_jitter_p, grayscale_p=c.grayscale_p)
    transform = MultiCrop(
        ViewSpec(c.global_size, c.global_scale, blur_p=c.blur_p, solarize_p=c.solarize_p, **aug), c.n_global,
        ViewSpec(c.local_size, c.local_scale, blur_p=c.blur_p / 2, **aug), c.n_local,
        extra=meta.view_samplers(),
    )
    source = build_source(cfg)
    dataset = SSLDataset(source, transform, hooks=meta.data_hooks())
    sampler = StepBatchSampler(len(dataset), cfg.data.global_batch_size, cfg.seed,
                               dist_info.rank, dist_info.world_size, start_step)
    nw = cfg.data.num_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=nw, pin_memory=pin,
        persistent_workers=nw > 0, prefetch_factor=4 if nw > 0 else None,
        # Its own generator: creating the iterator must not draw from the global RNG, or a
        # resumed run's drop-path stream would be shifted relative to a straight run.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return loader, source


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _prepare_run_dir(cfg: TrainConfig, run_dir: Path, resume: bool, is_main: bool) -> None:
    cfg_file = run_dir / "config.yaml"
    has_ckpt = latest_checkpoint(run_dir) is not None
    if resume:
        if not has_ckpt:
            raise CheckpointError(f"--resume: no checkpoint in {run_dir}/checkpoints to resume from")
        if cfg_file.is_file():
            saved = from_dict(TrainConfig, yaml.safe_load(cfg_file.read_text()))
            diff = _diff(to_dict(saved), to_dict(cfg))
            if diff:
                raise ConfigError(f"--resume: config differs from the run's {cfg_file} at {', '.join(diff)}; "
                                  "resume with the run's own config (omit --config) or start a new --out")
    elif has_ckpt:
        raise CheckpointError(f"{run_dir} already holds checkpoints; pass --resume to continue it or choose another output directory")
    if is_main:
        check_writable_dir(run_dir)
        atomic_write_text(cfg_file, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)]
    return [] if a == b else [path]


@dataclass
class _Run:
    """Everything one training run holds between steps."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    dist_info: DistInfo
    meta: SSLMetaArch
    optimizer: torch.optim.Optimizer
    student_fn: Any
    sched: Schedules
    start: int
    stop: int
    use_bf16: bool
    logger: MetricLogger


def _setup_run(cfg: TrainConfig, run_dir: Path, resume: bool, stop_at: int | None, progress: bool) -> tuple[_Run, Any, ImageSource]:
    """Device, process group, run directory, model, optimizer, resume, DDP, schedules, data, logger.

    The order matters for exact resume: the model is initialised from ``cfg.seed`` before the
    checkpoint restores the RNG, and the loader's own generator never touches the global one.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg, local_rank)
    dist_info = init_distributed(device)
    _prepare_run_dir(cfg, run_dir, resume, dist_info.is_main)
    barrier()

    torch.manual_seed(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    meta = SSLMetaArch(cfg)
    started = None
    if cfg.model.weights and not resume:  # both backbones from the file; heads fresh (a resume restores all)
        started = start_from_weights(meta, cfg, run_dir if dist_info.is_main else None)
    meta = meta.to(device)
    optimizer = build_optimizer(meta.student, cfg)
    start, rng_restored = 0, False
    if resume:
        start, rng_restored = load_checkpoint(latest_checkpoint(run_dir), meta, optimizer, dist_info.rank, dist_info.world_size)
        if not rng_restored and dist_info.is_main:
            log.warning("checkpoint was written by a different number of ranks: RNG streams are reseeded")
    if dist_info.enabled and not rng_restored:
        torch.manual_seed(cfg.seed + 1000 * dist_info.rank + start)  # independent drop-path per rank
    if cfg.compile:  # the token-level path calls the blocks directly, so compile those
        meta.student.backbone.blocks.compile()
        meta.teacher.backbone.blocks.compile()
    student_fn = DDP(meta.student, device_ids=[device.index] if device.type == "cuda" else None) if dist_info.enabled else meta.student

    stop = min(stop_at or cfg.total_steps, cfg.total_steps)
    loader, source = build_loader(cfg, meta, dist_info, start, pin=device.type == "cuda")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    logger = MetricLogger(run_dir, cfg.total_steps, start, enabled=dist_info.is_main, progress=progress)
    if started is not None:
        logger.event(start, "weights", started)
    logger.message(f"data: {source.describe()}; model: {cfg.model.name}; plug-ins: {', '.join(meta.plugins) or 'none'}; "
                   f"ibot: {'on' if cfg.ibot.enabled else 'off'}; "
                   f"device: {device}{' x' + str(dist_info.world_size) if dist_info.enabled else ''}; "
                   f"precision: {'bf16' if use_bf16 else 'fp32'}; steps {start} -> {stop}")
    run = _Run(cfg, run_dir, device, dist_info, meta, optimizer, student_fn, Schedules.from_config(cfg), start, stop,
               use_bf16, logger)
    return run, loader, source


def _report_skipped(batch: dict, skipped: dict[str, None], logger: MetricLogger) -> None:
    """Warn once per unreadable image the workers skipped (collected in ``skipped``)."""
    for msg in (m for s in batch.pop("skipped") for m in s.split("\n") if m):
        if msg not in skipped:
            skipped[msg] = None
            logger.message(f"warning: skipped unreadable image: {msg}")


def _apply_schedule(optimizer: torch.optim.Optimizer, sched: Schedules, step: int) -> None:
    for g in optimizer.param_groups:
        g["lr"] = float(sched.lr[step]) * g.get("lr_scale", 1.0)
        g["weight_decay"] = float(sched.weight_decay[step]) if g["apply_wd"] else 0.0


def _optimise(run: _Run, batch: dict, step: int, params: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """One step: losses, backward, last-layer freeze, clipping, optimizer, EMA of the teacher."""
    cfg, meta = run.cfg, run.meta
    _apply_schedule(run.optimizer, run.sched, step)
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16) if run.use_bf16 else contextlib.nullcontext()
    with autocast:
        total, logs = meta.forward_losses(batch, float(run.sched.teacher_temp[step]), run.student_fn, step=step)
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if step < cfg.dino.freeze_last_layer_steps:
        meta.student.dino_head.last_layer.weight.grad = None
    if cfg.optim.clip_grad > 0:  # per module (DINOv2) or per parameter (DINO): train/clipping.py
        logs.update(clip_gradients(meta.clip_groups(), cfg.optim.clip_grad, cfg.optim.clip_mode))
    run.optimizer.step()
    meta.update_teacher(float(run.sched.momentum[step]))
    return logs


def _log_metrics(run: _Run, step: int, logs: dict[str, torch.Tensor], elapsed: float, n_steps: int, n_skipped: int) -> dict[str, float]:
    """Average the logs over ranks, refuse non-finite losses, add the schedules and throughput."""
    sched, cfg = run.sched, run.cfg
    logs_f = _global_mean(logs, run.dist_info)
    if not all(map(_finite, logs_f.values())):
        raise FloatingPointError(f"non-finite loss at step {step}: {logs_f}; lower optim.base_lr or check the data")
    logs_f.update({
        "lr": float(sched.lr[step - 1]), "wd": float(sched.weight_decay[step - 1]),
        "momentum": float(sched.momentum[step - 1]), "teacher_temp": float(sched.teacher_temp[step - 1]),
        "step_time": elapsed / n_steps,
        "img/s": n_steps * cfg.data.global_batch_size / elapsed,
        "skipped_images": n_skipped,
    })
    run.logger.log(step, logs_f)
    return logs_f


def _save_checkpoint(run: _Run, step: int) -> None:
    rngs = _gather(rng_state(), run.dist_info)
    if run.dist_info.is_main:
        save_checkpoint(run.run_dir, step, run.meta, run.optimizer, to_dict(run.cfg), run.cfg.keep_ckpts, rngs)
    barrier()


def _export_backbone(run: _Run, step: int) -> Path:
    """The teacher's (or student's) backbone as a plain timm ViT, with what export needs to know."""
    cfg = run.cfg
    net = run.meta.teacher if cfg.export_from == "teacher" else run.meta.student
    preprocess = Preprocess(size=(cfg.model.img_size,) * 2).to_dict()  # what export and the runtime will apply
    plain, notes = plain_backbone(net.backbone.state_dict(), cfg.model.name, timm_kwargs(cfg.model), cfg.plugins)
    notes.update(initialised_from(run.run_dir))  # where model.weights came from, carried into every export
    return save_backbone(run.run_dir / "backbone.safetensors", plain, cfg.model.name, timm_kwargs(cfg.model),
                         preprocess, cfg.export_from, step, to_dict(cfg), notes)


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, stop_at: int | None = None,
          progress: bool = True) -> TrainResult:
    """Pretrain per ``cfg`` into ``run_dir``; ``stop_at`` ends early at that step (schedules unchanged).

    Run under ``torchrun`` for several processes; the same call is a single process otherwise.
    The process group it joins stays joined (a second call reuses it); the process's entry point
    leaves it before exiting, as the CLI does with ``distributed.leave_process_group_on_exit``.
    Each step: next batch -> schedule -> losses and optimizer step -> EMA -> log -> checkpoint.
    """
    run, loader, _source = _setup_run(cfg, Path(run_dir), resume, stop_at, progress)
    skipped: dict[str, None] = {}
    logs_f: dict[str, float] = {}
    params = [p for p in run.meta.student.parameters() if p.requires_grad]
    it = iter(loader)
    t_last, n_last = time.perf_counter(), 0
    step = run.start
    try:
        while step < run.stop:
            batch = next(it)
            _report_skipped(batch, skipped, run.logger)
            logs = _optimise(run, _to_device(batch, run.device), step, params)
            step += 1
            n_last += 1
            run.logger.step()
            if step % cfg.log_every == 0 or step == run.stop:
                if run.device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                logs_f = _log_metrics(run, step, logs, now - t_last, n_last, len(skipped))
                t_last, n_last = now, 0
            if step % cfg.ckpt_every == 0 or step == run.stop:
                _save_checkpoint(run, step)
    finally:
        run.logger.close()
        # the last references to the iterator (a persistent loader keeps one too): its __del__ stops
        # and joins the data-loader workers now, also when an exception's traceback keeps this frame
        del it, loader

    backbone_path = None
    if run.dist_info.is_main:
        backbone_path = _export_backbone(run, step)
        if skipped:
            run.logger.message(f"{len(skipped)} unreadable image(s) were skipped (listed above)")
    barrier()
    return TrainResult(run.run_dir, step, backbone_path, logs_f, list(skipped))


def _gather(obj: Any, dist_info: DistInfo) -> list:
    """``obj`` from every rank, in rank order (a list of one without DDP)."""
    if not dist_info.enabled:
        return [obj]
    out = [None] * dist_info.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def _global_mean(logs: dict[str, torch.Tensor], dist_info: DistInfo) -> dict[str, float]:
    """Log values averaged over ranks, so the logged loss is the global batch's."""
    names = sorted(logs)
    vals = torch.stack([logs[k].detach().float().reshape(()) for k in names])
    if dist_info.enabled:
        torch.distributed.all_reduce(vals)
        vals /= dist_info.world_size
    return dict(zip(names, vals.tolist()))


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")
