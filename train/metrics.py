"""Per-step metrics: JSONL file, console progress bar, TensorBoard when installed."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tqdm import tqdm

__all__ = ["MetricLogger"]

log = logging.getLogger("wherevit.train")


class MetricLogger:
    """Writes one JSON line per logged step to ``run/metrics.jsonl`` (append: resumes continue it)."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True, progress: bool = True):
        self.enabled = enabled
        self.file = open(run_dir / "metrics.jsonl", "a") if enabled else None
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        disable=not (enabled and progress), dynamic_ncols=True)
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except (ImportError, ModuleNotFoundError):
                pass  # TensorBoard is optional

    def step(self, n: int = 1) -> None:
        self.bar.update(n)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        rec = {"step": step, "time": round(time.time(), 3), **{k: _round(v) for k, v in values.items()}}
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "loss/dino", "loss/sp", "img/s")})
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def event(self, step: int, name: str, data: dict) -> None:
        """A record that is not a metric (where the weights came from): ``{"step", "event": name, **data}``."""
        if self.enabled:
            self.file.write(json.dumps({"step": step, "event": name, **data}) + "\n")
            self.file.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)
            log.info(text)

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _round(v: float) -> float:
    return float(f"{v:.6g}") if isinstance(v, float) else v
