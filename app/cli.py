"""The ``wherevit`` command line: a thin layer of click over library functions.

Every command turns options into one library call and prints its result; anything the CLI can do,
a Python user can do with the same function. Heavy libraries are imported inside the commands, so
``wherevit --help`` is fast and the runtime commands work without torch.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from wherevit import __version__
from wherevit.base.errors import WherevitError

# Errors a user can fix: shown as one clear line. Anything else is a bug and keeps its traceback
# (a ValueError or KeyError from deep inside a library says nothing to a user without it).
_USER_ERRORS: tuple[type[BaseException], ...] = (WherevitError, FileNotFoundError, PermissionError)


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except _USER_ERRORS as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from e


def _weights_options(fn):
    """``--weights FILE`` / ``--pretrained``: CHECKPOINT then names a timm model and these give its weights."""
    fn = click.option("--pretrained", is_flag=True,
                      help="CHECKPOINT is a timm model name: use timm's own pretrained weights (downloaded once; needs a network).")(fn)
    return click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
                        help="CHECKPOINT is a timm model name (e.g. vit_small_patch14_dinov2): load it from this .safetensors/"
                             ".pth/.pt file in timm, DINO, DINOv2, iBOT, MAE or wherevit layout (README: From the weights you have).")(fn)


def _echo_weights(info: dict) -> None:
    """One line saying which weights file was loaded (and in which layout), when one was."""
    w = info.get("weights") or {}
    if w.get("sha256"):
        click.echo(f"weights: {w['file']} ({w['layout']} layout{', ' + w['network'] if w.get('network') else ''}; "
                   f"sha256 {w['sha256'][:16]}...)", err=True)


def _lazy_command():
    from wherevit.app.options_cli import LazyOptionsCommand

    return LazyOptionsCommand


def _precision_names() -> list[str]:
    from wherevit.base.precision import precision_names

    return list(precision_names())


def _bench_precisions() -> str:
    from wherevit.base.precision import PRECISIONS

    return ", ".join([*PRECISIONS, *(f"{n}-{m}" for n, p in PRECISIONS.items() for m in p.quant_modes[1:])])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="wherevit")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """wherevit: pretrain spatially aware ViTs, export them to ONNX / TensorRT / AOTInductor, and serve features.

    \b
    The train-then-export workflow (each command uses only files the ones before it wrote):
      wherevit train --config quickstart --out runs/qs      # DINO + SP on generated scenes (CPU ok)
      wherevit eval spatial runs/qs                          # position/scale probe on frozen features
      wherevit train-head depth runs/qs --out runs/qs/heads  # a depth head on frozen features (seg, pose, ...)
      wherevit study quickstart                              # the plug-in study: variants x seeds, intervals
      wherevit export runs/qs --out art/qs.onnx              # ONNX + sidecar, parity-checked
      wherevit export runs/qs --out art/qs.engine            # TensorRT(-RTX) engine (+ art/qs.onnx) + sidecars
      wherevit export runs/qs --out art/qs.pt2               # AOTInductor package for C++ (examples/cpp)
      wherevit bench art/qs.onnx                             # latency / throughput table
      wherevit serve art/qs.onnx                             # KServe v2 HTTP on 127.0.0.1:8000
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("-c", "--config", "config", default=None,
              help="Preset name (see `wherevit presets`) or path to a YAML config. Default: quickstart, or the "
                   "run's own config.yaml with --resume.")
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set total_steps=100 --set plugins.sp.weight=1.0 (repeatable).")
@click.option("-o", "--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (checkpoints, metrics.jsonl, backbone.safetensors). Default: runs/<config name>.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint (exactly).")
@click.option("--stop-at", type=int, default=None, help="Stop at this step (schedules still span total_steps).")
@click.option("--no-plugins", is_flag=True, help="Drop every plug-in from the config (a plain DINO run).")
@click.option("--no-progress", is_flag=True, help="No progress bar (metrics still go to metrics.jsonl).")
def train(config: str | None, overrides: tuple[str, ...], out: Path | None, resume: bool, stop_at: int | None,
          no_plugins: bool, no_progress: bool) -> None:
    """Pretrain a ViT with DINO self-distillation and the configured spatial plug-ins.

    Runs as one process, or as many under torchrun (DDP; world size from the environment):

    \b
      torchrun --nproc_per_node 8 -m wherevit.app.cli train --config vit_s16_dino_sp --set data.path=/data/in1k/train
    """
    from wherevit.app.signals import exit_by_signal_after_cleanup
    from wherevit.train.config import load_train_config
    from wherevit.train.distributed import leave_process_group_on_exit
    from wherevit.train.loop import train as train_fn

    if config is None:
        own = out / "config.yaml" if (resume and out is not None) else None
        config = str(own) if own is not None and own.is_file() else "quickstart"
    cfg = _run(load_train_config, config, list(overrides))
    if no_plugins:
        cfg.plugins = {}
    out = out or Path("runs") / Path(config).stem
    # under torchrun the process leaves its group (joining gloo's threads) before it can exit, however
    # the run ends; SIGTERM (torchrun, schedulers) unwinds like Ctrl-C, then the process dies of it
    with exit_by_signal_after_cleanup(), leave_process_group_on_exit():
        result = _run(train_fn, cfg, out, resume=resume, stop_at=stop_at, progress=not no_progress)
    if result.backbone is not None:
        click.echo(f"done: step {result.step}; backbone -> {result.backbone}; metrics -> {out / 'metrics.jsonl'}")
        if result.skipped_images:
            click.echo(f"{len(result.skipped_images)} unreadable image(s) were skipped", err=True)


@main.command()
@click.option("-o", "--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/quickstart"), show_default=True)
@click.option("--steps", type=int, default=None, help="Training steps (default: the quickstart preset's).")
@click.option("--no-progress", is_flag=True)
def quickstart(out: Path, steps: int | None, no_progress: bool) -> None:
    """Pretrain a tiny ViT with DINO + SP on generated scenes, evaluate, export ONNX + engine, bench.

    Minutes on a CPU; nothing is downloaded.
    """
    from wherevit.app.quickstart import quickstart as run_quickstart

    _run(run_quickstart, out, steps, progress=not no_progress, echo=click.echo)


@main.command()
def presets() -> None:
    """List the config presets shipped in configs/."""
    from wherevit.train.config import preset_names

    for name in preset_names():
        click.echo(name)


@main.group(name="eval")
def eval_group() -> None:
    """Evaluate frozen features."""


@eval_group.command(name="spatial")
@click.argument("checkpoint")
@click.option("--which", type=click.Choice(["teacher", "student"]), default="teacher", show_default=True,
              help="Network to evaluate when CHECKPOINT is a training checkpoint.")
@click.option("--random-init", is_flag=True, help="Same architecture, random weights (the floor).")
@click.option("--n-images", type=int, default=400, show_default=True, help="Held-out generated scenes.")
@click.option("--crop-size", type=int, default=32, show_default=True, help="Patch size fed to the backbone.")
@click.option("--folder", type=click.Path(path_type=Path), default=None,
              help="Score on this folder of photographs (up to --n-images) instead of generated scenes.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the full result as JSON here.")
@_weights_options
def eval_spatial(checkpoint: str, which: str, random_init: bool, n_images: int, crop_size: int, folder: Path | None,
                 json_out: Path | None, weights: str | None, pretrained: bool) -> None:
    """SP's position-and-scale prediction (MAE, R^2) and 8-way relative location on patch pairs.

    CHECKPOINT is a run directory, a checkpoint directory, a backbone.safetensors or a timm model name.
    Both tasks are label-free: --folder scores a backbone on your own images.
    """
    from wherevit.base.io import atomic_write_text
    from wherevit.train.checkpoint import load_backbone
    from wherevit.train.evals.spatial import SpatialEvalConfig, evaluate_spatial

    model, info = _run(load_backbone, checkpoint, which=which, random_init=random_init, weights=weights, pretrained=pretrained)
    _echo_weights(info)
    res = _run(evaluate_spatial, model, SpatialEvalConfig(n_images=n_images, crop_size=crop_size,
                                                          folder=str(folder) if folder else None))
    res["backbone"] = {k: info.get(k) for k in ("model", "source", "step", "file", "weights")}
    ps, rl = res["position_scale"], res["relative_location"]
    click.echo(f"backbone: {info['model']} ({info['source']}, step {info.get('step')})")
    click.echo(f"position/scale  MAE dx {ps['mae_dx']:.4f}  dy {ps['mae_dy']:.4f}  log-scale {ps['mae_logscale']:.4f}  "
               f"R^2 dx {ps['r2_dx']:.3f}  dy {ps['r2_dy']:.3f}  log-scale {ps['r2_logscale']:.3f}  mean {ps['r2_mean']:.3f}")
    click.echo(f"relative location (8-way) accuracy {rl['acc_8way']:.3f}  (chance {rl['chance']:.3f})")
    if json_out:
        atomic_write_text(json_out, json.dumps(res, indent=2))


def _export_params() -> list[click.Parameter]:
    """``wherevit export``'s per-format options, generated from each format's ``Options`` (and the INT8 step's)."""
    from wherevit.app.options_cli import export_option_groups, options_params
    from wherevit.export.formats import registered_formats

    fmt_help = "; ".join(f"{name}: {cls.help}" for name, cls in registered_formats().items() if cls.help)
    fmt_option = next(p for p in export.params if p.name == "fmt")
    fmt_option.help = f"{fmt_help}. Or a format a package registers. Default: from --out's suffix, else onnx."
    return options_params(export_option_groups())


def _export_signature() -> tuple:
    from wherevit.app.options_cli import export_options_signature

    return export_options_signature()


def _precision_help() -> str:
    from wherevit.base.precision import PRECISIONS

    return "; ".join(f"{p.name}: {p.title}" for p in PRECISIONS.values())


@main.command(cls=_lazy_command(), params_factory=lambda: _export_params(), signature=lambda: _export_signature())
@click.argument("checkpoint")
@click.option("-f", "--format", "fmt", default=None, help="A registered export format (listed with --help).")
@click.option("-p", "--precision", type=click.Choice(_precision_names()), default="fp32", show_default=True,
              help=_precision_help() + ". A format that cannot write it says so before any work.")
@click.option("-b", "--batch", default="1:8:64", show_default=True,
              help="min:opt:max batch for the dynamic batch axis and the TensorRT profile (opt = typical batch).")
@click.option("--imgsz", type=int, default=None, help="Input size (square). Default: the backbone's training size.")
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), default=Path("artifacts"), show_default=True,
              help="A folder (files named <model|task>_<precision>.<ext>), or the file itself: art/qs.onnx, "
                   "art/qs.engine or .plan, art/qs.pt2 (written exactly there at every precision; an engine's ONNX goes "
                   "beside it as art/qs.onnx, the float graph an INT8 graph is quantised from as art/qs_fp32.onnx).")
@click.option("--which", type=click.Choice(["teacher", "student"]), default="teacher", show_default=True,
              help="Network to export from a training checkpoint.")
@click.option("--dynamic-hw", is_flag=True, help="Also make height/width dynamic (ONNX only; engines use fixed sizes).")
@click.option("--no-pooled", is_flag=True, help="Omit the `pooled` (mean patch token) output.")
@click.option("--rtol", type=float, default=None, help="Parity tolerance on relative L2 error (default by precision).")
@click.option("--model", "expect_model", default=None, help="Fail unless the checkpoint holds this timm model.")
@click.option("--head", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A head_<task>.safetensors from `wherevit train-head`: export backbone + head as one graph.")
@_weights_options
def export(checkpoint: str, fmt: str | None, precision: str, batch: str, imgsz: int | None, out: Path, which: str,
           dynamic_hw: bool, no_pooled: bool, rtol: float | None, expect_model: str | None, head: str | None,
           weights: str | None, pretrained: bool, **format_values) -> None:
    """Export a backbone to ONNX, a TensorRT engine, an AOTInductor package or a Triton model repository,
    parity-checked, each with a sidecar JSON (``--precision int8``: the ONNX graph quantised by ONNX Runtime,
    cosine-checked, and what the engine or Triton formats build from it).

    CHECKPOINT is a run directory, checkpoint directory, backbone.safetensors, or a timm model
    name such as vit_small_patch16_224 (random weights: try export without training).
    Per-format options (--trt-lib, --device, --triton-*, --quant, ...) come from each format's Options.
    """
    from wherevit.app.options_cli import collect_options, export_option_groups
    from wherevit.export.api import ExportRequest, export_artifacts, parse_batch, resolve_output

    out_dir, fmt, out_file = _run(resolve_output, out, fmt)
    options = collect_options(export_option_groups(), format_values)
    req = ExportRequest(
        checkpoint=checkpoint, out_dir=out_dir, out_file=out_file, format=fmt, precision=precision, batch=_run(parse_batch, batch),
        imgsz=imgsz, which=which, dynamic_hw=dynamic_hw, pooled=not no_pooled, rtol=rtol, expect_model=expect_model, head=head,
        format_options=options, weights=weights, pretrained=pretrained,
    )
    click.echo(f"exporting {checkpoint} -> {out} ({fmt}, {precision}, batch {req.batch[0]}:{req.batch[1]}:{req.batch[2]})", err=True)
    res = _run(export_artifacts, req)
    if res.parity is not None:
        click.echo(res.parity.summary())
    for note in res.notes:
        click.echo(f"note: {note}", err=True)
    if res.int8_parity is not None:
        click.echo(res.int8_parity.summary())
    for name, path in res.artifacts.items():
        click.echo(f"{name + ':':<8}{path}")
    for sc in res.sidecars:
        click.echo(f"sidecar: {sc}")
    if res.sidecars:
        _echo_weights(json.loads(res.sidecars[-1].read_text()).get("model", {}))


@main.command()
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (0.0.0.0 exposes it to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=None,
              help="Also serve the KServe v2 / Triton gRPC API on this port (same batcher; needs grpcio and tritonclient[grpc]).")
@click.option("--name", default=None, help="Model name in URLs (default: the artifact's timm model name).")
@click.option("--backend", default="auto", show_default=True, help="ort-cpu, ort-cuda, ort-trt, tensorrt, or auto.")
@click.option("--max-batch", type=click.IntRange(min=1), default=None, help="Images per executed batch (default: the artifact's max).")
@click.option("--max-wait-ms", type=click.FloatRange(0, 60_000), default=2.0, show_default=True, help="How long a batch waits to fill.")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True, help="Queued requests; more get 503.")
@click.option("--timeout-ms", type=click.FloatRange(0, 3_600_000, min_open=True), default=30000, show_default=True,
              help="Default request deadline.")
@click.option("--max-request-mb", type=click.FloatRange(0, 2047, min_open=True), default=64, show_default=True,
              help="Largest request body (HTTP) or message (gRPC; its limit is 2 GiB).")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=None,
              help="Most pixels an encoded image may declare in its header; larger ones get 400 before decoding "
                   "(default 67108864 = 8192 x 8192).")
@click.option("--decode-workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Threads decoding encoded images; decoded memory stays below this many images at the pixel cap.")
def serve(artifact: str, host: str, port: int, grpc_port: int | None, name: str | None, backend: str, max_batch: int | None,
          max_wait_ms: float, max_queue: int, timeout_ms: float, max_request_mb: float, max_image_pixels: int | None,
          decode_workers: int) -> None:
    """Serve ARTIFACT (ONNX or engine, sidecar beside it) over KServe v2 HTTP with dynamic batching.

    Works with Triton clients (tritonclient.http and, with --grpc-port, tritonclient.grpc; perf_analyzer).
    Metrics at /metrics; Triton statistics at /v2/models/<m>/stats.
    """
    from wherevit.base.image import DEFAULT_MAX_IMAGE_PIXELS
    from wherevit.base.sidecar import read_sidecar
    from wherevit.runtime.batching import BatchingConfig
    from wherevit.runtime.server import ServeConfig
    from wherevit.runtime.server import serve as serve_fn

    meta = _run(read_sidecar, artifact)
    mb = max_batch or int(meta.batch.max)
    batching = _run(BatchingConfig, mb, max_wait_ms, max_queue, timeout_ms)
    cfg = ServeConfig(host=host, port=port, grpc_port=grpc_port, name=name, batching=batching, max_request_mb=max_request_mb,
                      max_image_pixels=max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS, decode_workers=decode_workers)
    _run(serve_fn, artifact, cfg, backend)


@main.command()
@click.argument("target")
@click.option("--backends", default="all", show_default=True,
              help="Comma list of registered backends (ort-cpu, ort-cuda, ort-trt, tensorrt, torch-eager, torch-compile, "
                   "torch-compile-cudagraphs, and any a plug-in package adds), or all.")
@click.option("--batch", "batches", default="1,8", show_default=True, help="Comma list of batch sizes.")
@click.option("--precision", "precisions", default="fp32", show_default=True,
              help=f"Comma list of {_bench_precisions()} (int8-dynamic: dynamically quantised INT8).")
@click.option("--reference", default=None, help="Checkpoint for the PyTorch rows and parity (default: the sidecar's).")
@click.option("--no-copies", is_flag=True, help="Time device work only (inputs already on the GPU) where the backend allows.")
@click.option("--min-seconds", type=float, default=1.0, show_default=True, help="Minimum timed duration per row.")
@click.option("--min-iters", type=int, default=10, show_default=True)
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--imgsz", type=int, default=None, help="Input size when TARGET is a checkpoint.")
@click.option("-o", "--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench"), show_default=True)
@_weights_options
def bench(target: str, backends: str, batches: str, precisions: str, reference: str | None, no_copies: bool,
          min_seconds: float, min_iters: int, warmup: int, imgsz: int | None, out: Path, weights: str | None,
          pretrained: bool) -> None:
    """Latency / throughput table across backends for an artifact or a checkpoint.

    TARGET is an exported artifact (its siblings in the same folder join in) or a checkpoint /
    timm model name, which is exported first. Writes bench.json, bench.csv and bench.png to --out.
    """
    from wherevit.app.bench import (
        BenchRequest,
        TimingConfig,
        format_table,
        run_bench,
    )

    if (weights or pretrained) and Path(target).is_file():
        raise click.UsageError("--weights/--pretrained go with a timm model name as TARGET (exported first), not an artifact")
    names = None if backends == "all" else tuple(b.strip() for b in backends.split(",") if b.strip())
    try:
        bs = tuple(int(b) for b in batches.split(","))
    except ValueError:
        raise click.BadParameter(f"{batches!r} is not a comma list of integers", param_hint="--batch") from None
    req = BenchRequest(target, out, names, bs, tuple(p.strip() for p in precisions.split(",")), reference, not no_copies,
                       TimingConfig(warmup=warmup, min_iters=min_iters, min_seconds=min_seconds), imgsz,
                       weights=weights, pretrained=pretrained)
    rows, paths = _run(run_bench, req)
    from wherevit.app.machine import format_machine

    click.echo(format_machine(json.loads(Path(paths["json"]).read_text())["machine"]))
    click.echo(format_table(rows))
    for kind, p in paths.items():
        click.echo(f"{kind}: {p}")


class _TrainHeadCommand(click.Command):
    """``train-head``: its help lists the registered head tasks (read from the registry when help is shown)."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        from wherevit.train.downstream.tasks import HEAD_TASKS

        with formatter.section("Head tasks"):
            formatter.write_dl([(name, f"{cls.summary}; --data folder: {cls.data_help or 'none'}")
                                for name, cls in HEAD_TASKS.items().items()])


@main.command(name="train-head", cls=_TrainHeadCommand)
@click.argument("task")
@click.argument("checkpoint")
@click.option("--data", "data_spec", default="synthetic", show_default=True,
              help="'synthetic' (generated 3-D scenes) or a folder in the task's layout (listed below).")
@click.option("--n-classes", type=int, default=None, help="seg: classes in a folder data set.")
@click.option("--reduce-zero-label", is_flag=True, default=None, help="seg: ADE20K convention: label 0 is ignored, k -> k-1.")
@click.option("--which", type=click.Choice(["teacher", "student"]), default="teacher", show_default=True)
@click.option("--random-init", is_flag=True, help="Same architecture, random weights (the floor).")
@click.option("--n-train", type=int, default=600, show_default=True, help="Generated scene pairs for training.")
@click.option("--n-test", type=int, default=200, show_default=True, help="Generated scene pairs for testing.")
@click.option("--size", type=int, default=None, help="Image size (default: the backbone's).")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("-o", "--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where head_<task>.safetensors and head_<task>.json go (default: heads/ beside the checkpoint).")
@click.option("--no-progress", is_flag=True)
@_weights_options
def train_head(task: str, checkpoint: str, data_spec: str, n_classes: int | None, reduce_zero_label: bool | None, which: str,
               random_init: bool, n_train: int, n_test: int, size: int | None, epochs: int, out: Path | None,
               no_progress: bool, weights: str | None, pretrained: bool) -> None:
    """Train a head for TASK (depth, seg, pose, or one a package registers) on frozen features, and measure it.

    Metrics on held-out data, next to a chance-level baseline computed on the same split (depth RMSE /
    AbsRel / delta<1.25, segmentation mIoU, pose rotation and translation-direction errors, ...).
    """
    from wherevit.train.checkpoint import load_backbone
    from wherevit.train.downstream.fit import HeadTrainConfig, fit_head, load_task_data
    from wherevit.train.downstream.tasks import create_head_task

    options = {k: v for k, v in (("n_classes", n_classes), ("reduce_zero_label", reduce_zero_label)) if v is not None}
    head_task = _run(create_head_task, task, options)  # an unknown task or option is one line naming what exists
    named = weights is not None or pretrained  # built at --size: timm resamples the grid once, as export will
    model, info = _run(load_backbone, checkpoint, which=which, random_init=random_init, weights=weights, pretrained=pretrained,
                       img_size=size if named else None)
    _echo_weights(info)
    size = size or int(info["arch"]["img_size"][0])
    out = out or (Path(checkpoint) / "heads" if Path(checkpoint).is_dir() else Path("heads"))
    cfg = HeadTrainConfig(n_train=n_train, n_test=n_test, size=size, epochs=epochs)
    splits = _run(load_task_data, head_task, data_spec, cfg)
    _, m = _run(fit_head, head_task, model, cfg, progress=not no_progress, out_dir=out, splits=splits)
    click.echo(head_task.summary_line(m))
    click.echo(f"head -> {out / f'head_{task}.safetensors'}")


@eval_group.command(name="jigsaw")
@click.argument("checkpoint")
@click.option("--random-init", is_flag=True, help="Same architecture, random weights (the floor).")
@click.option("--n-test", type=int, default=200, show_default=True)
@click.option("--folder", type=click.Path(path_type=Path), default=None,
              help="Score tile placement on this folder of photographs instead of generated scenes (no recognition part).")
@_weights_options
def eval_jigsaw(checkpoint: str, random_init: bool, n_test: int, folder: Path | None, weights: str | None, pretrained: bool) -> None:
    """SP's jigsaw understanding: 3x3 tile slot prediction and recognition of the reassembled image."""
    from wherevit.train.checkpoint import load_backbone
    from wherevit.train.evals.jigsaw import JigsawConfig, evaluate_jigsaw

    model, info = _run(load_backbone, checkpoint, random_init=random_init, weights=weights, pretrained=pretrained)
    _echo_weights(info)
    r = _run(evaluate_jigsaw, model, JigsawConfig(n_test=n_test, image_size=int(info["arch"]["img_size"][0]),
                                                  folder=str(folder) if folder else None))
    line = (f"jigsaw  per-tile {r['per_tile_acc']:.3f} (chance {r['chance_per_tile']:.3f})  full permutation "
            f"{r['full_permutation_acc']:.3f}")
    if r["recognition_intact"] is not None:
        line += (f"  recognition intact/shuffled/reassembled {r['recognition_intact']:.3f} / "
                 f"{r['recognition_shuffled']:.3f} / {r['recognition_reassembled']:.3f}")
    click.echo(line)


@eval_group.command(name="probes")
@click.argument("checkpoint")
@click.option("--random-init", is_flag=True, help="Same architecture, random weights (the floor).")
@_weights_options
def eval_probes(checkpoint: str, random_init: bool, weights: str | None, pretrained: bool) -> None:
    """k-NN (cosine, k=20, T=0.07) and linear probe on CLS features of generated scenes."""
    from wherevit.train.checkpoint import load_backbone
    from wherevit.train.evals.probes import ProbeConfig, evaluate_probes

    model, info = _run(load_backbone, checkpoint, random_init=random_init, weights=weights, pretrained=pretrained)
    _echo_weights(info)
    r = _run(evaluate_probes, model, ProbeConfig(size=int(info["arch"]["img_size"][0])))
    click.echo(f"probes  k-NN {r['knn_acc']:.3f}  linear {r['linear_acc']:.3f}  (majority class {r['chance']:.3f}; "
               f"classes {', '.join(r['classes'])})")


@main.command()
@click.argument("config")
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a study-file value, e.g. --set seeds=[0,1,2,3] --set evaluation.folder=photos/ (repeatable).")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Training runs and per-run results (the cache). Default: the study file's runs_dir.")
@click.option("-o", "--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where results.json, table.md and study.png go. Default: the study file's out.")
@click.option("--max-runs", type=int, default=None, help="Stop after this many new runs (run again to continue).")
@click.option("--report-only", is_flag=True, help="Run nothing; write the report from the finished runs.")
@click.option("--progress", is_flag=True, help="Show each training's progress bar.")
def study(config: str, overrides: tuple[str, ...], runs_dir: Path | None, out: Path | None, max_runs: int | None,
          report_only: bool, progress: bool) -> None:
    """Run a plug-in study: variants x seeds, same budget, every evaluation; mean, 95% interval and paired
    differences against the baseline.

    CONFIG is a study file (configs/study_quickstart.yaml) or the name of a shipped one (quickstart).
    Finished runs are cached and reused (also by other study files); an interrupted study continues
    where it stopped, and a training cut off midway resumes from its checkpoint.
    """
    from wherevit.app.signals import exit_by_signal_after_cleanup
    from wherevit.train.study import load_study_config, run_and_report

    path = Path(config)
    if not path.exists() and "/" not in config and not config.endswith((".yaml", ".yml")):
        import importlib.resources

        shipped = importlib.resources.files("wherevit.configs") / f"study_{config}.yaml"
        path = Path(str(shipped)) if shipped.is_file() else path
    cfg = _run(load_study_config, path, list(overrides))
    command = "wherevit " + " ".join(sys.argv[1:]) if sys.argv and "study" in sys.argv else f"wherevit study {config}"
    with exit_by_signal_after_cleanup():  # SIGTERM unwinds: the run's lock released, its loader workers joined
        _run(run_and_report, cfg, runs_dir, out, command=command, progress=progress, echo=click.echo, max_runs=max_runs,
             report_only=report_only)


@main.group()
def data() -> None:
    """Generated data for tests, demos and the quickstart."""


@data.command(name="synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("-n", "--count", type=int, default=256, show_default=True)
@click.option("--size", type=int, default=96, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def data_synth(out: Path, count: int, size: int, seed: int) -> None:
    """Write COUNT generated scenes as PNG files into OUT (deterministic from --seed)."""
    from wherevit.train.data.synthetic import write_synthetic_folder

    paths = _run(write_synthetic_folder, out, count, size, seed)
    click.echo(f"wrote {len(paths)} images to {out}")


if __name__ == "__main__":  # `python -m wherevit.app.cli` (what torchrun runs)
    sys.exit(main())
