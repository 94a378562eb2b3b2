"""Metrics to a local metrics.jsonl (always) and to Weights & Biases (offline unless asked for online).

One JSON object per line: {"step": int, "<section>/<name>": float, ..., "wall_time": seconds since
the run first started}. Stable names across trainers: train/loss, eval/return, eval/hns, test/nll_nats,
test/error, and the media keys samples and video, so that `pixlab report` and the W&B panels
(configs/wandb/README.md) read every algorithm the same way.
An offline W&B run lands in <run>/wandb/offline-run-*; `wandb sync <that folder>` uploads it later.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from shared.config import TrackingConfig


def wandb_mode(setting: str, env: Optional[dict] = None) -> str:
    """Resolve tracking.wandb to 'online', 'offline' or 'disabled'.

    auto means offline, unless an API key is present and W&B is not switched off or offline by its
    own environment variables (WANDB_MODE, WANDB_DISABLED).
    """
    env = os.environ if env is None else env
    if setting != "auto":
        return setting
    if env.get("WANDB_MODE") == "disabled" or env.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        return "disabled"
    if env.get("WANDB_API_KEY") and env.get("WANDB_MODE") != "offline":
        return "online"
    return "offline"


def wandb_group_and_tags(cfg: TrackingConfig, config: dict) -> tuple[Optional[str], list[str]]:
    """The W&B group and tags of a run (configs/wandb/README.md): `tracking.group`, else the config's `name`,
    so that the seeds of one experiment fall in one group; `tracking.tags` with the algorithm's name put
    first when it is missing, since the standard panels filter on it."""
    tags = list(cfg.tags)
    algo = config.get("algo")
    if algo and algo not in tags:
        tags.insert(0, algo)
    return cfg.group or config.get("name"), tags


class Tracker:
    """Writes metrics.jsonl and mirrors everything to a W&B run when W&B is not disabled."""

    def __init__(
        self,
        run_dir: Path,
        cfg: TrackingConfig,
        config: dict,
        name: str,
        wandb_id: Optional[str] = None,
        time_offset: float = 0.0,
    ):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.media_dir = self.run_dir / "media"
        self.time_offset = time_offset  # wall time already spent before a resume
        self._start = time.monotonic()
        self._file = open(self.metrics_path, "a", buffering=1)
        self.mode = wandb_mode(cfg.wandb)
        self.wandb_run = None
        if self.mode != "disabled":
            import wandb  # imported here: W&B is heavy and not needed when switched off

            group, tags = wandb_group_and_tags(cfg, config)
            self.wandb_run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=group,
                tags=tags or None,
                job_type=cfg.job_type,
                name=name,
                config=config,
                dir=str(self.run_dir),
                mode=self.mode,
                id=wandb_id,
                resume="allow" if wandb_id else None,
            )

    @property
    def wandb_id(self) -> Optional[str]:
        return self.wandb_run.id if self.wandb_run is not None else None

    def wall_time(self) -> float:
        return self.time_offset + time.monotonic() - self._start

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record scalars at a training step. Tensors are converted with .item()."""
        values = {k: _scalar(v) for k, v in metrics.items()}
        record = {"step": int(step), **values, "wall_time": round(self.wall_time(), 3)}
        self._file.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=int(step))

    def log_images(self, key: str, images: torch.Tensor, step: int, nrow: int = 8) -> Path:
        """Save a grid of images (N, C, H, W), floats in [0, 1], to media/ and to W&B."""
        from PIL import Image

        grid = image_grid(images, nrow)
        path = self.media_dir / f"{key.replace('/', '_')}-{step:09d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Image(grid)}, step=int(step))
        return path

    def log_video(self, key: str, path: Path, step: int) -> None:
        """An animation already written to media/ (an MP4 or a GIF, shared.media), mirrored to W&B."""
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Video(str(path), format=Path(path).suffix.lstrip("."))}, step=int(step))

    def summary(self, values: dict[str, Any]) -> None:
        """Final numbers of the run: a 'summary' record in metrics.jsonl and the W&B run summary."""
        values = {k: _scalar(v) for k, v in values.items()}
        self._file.write(json.dumps({"summary": values}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    def truncate_after(self, step: int) -> None:
        """Drop the records logged after `step` (and any summary): a resumed run logs them again, as an
        uninterrupted one would."""
        self._file.close()
        kept = [
            line for line in read_metrics_lines(self.metrics_path) if json.loads(line).get("step", math.inf) <= step
        ]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)
        self._file = open(self.metrics_path, "a", buffering=1)

    def close(self, exit_code: int = 0) -> None:
        self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


def read_metrics(path: Path, warn: Optional[Callable[[str], None]] = None) -> list[dict]:
    """Every record of a metrics.jsonl file; see `read_metrics_lines` for the lines it skips."""
    return [json.loads(line) for line in read_metrics_lines(path, warn)]


def read_metrics_lines(path: Path, warn: Optional[Callable[[str], None]] = None) -> list[str]:
    """The lines of a metrics.jsonl file that are UTF-8 JSON. The others are skipped (a torn last line is what
    a killed process leaves; one in the middle is damage), and `warn` gets a message naming file and line."""
    lines = []
    raw = Path(path).read_bytes().splitlines()
    for number, data in enumerate(raw, 1):
        try:
            line = data.decode("utf-8")
            json.loads(line)
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError both are
            if warn is not None:
                what = "not UTF-8" if isinstance(e, UnicodeDecodeError) else "not JSON"
                torn = " (the last line: a write cut short)" if number == len(raw) else ""
                warn(f"{path}, line {number}: skipped, {what}{torn}")
            continue
        lines.append(line)
    return lines


def read_summary(run_dir: Optional[Path | str]) -> dict:
    """The final summary a trainer wrote to its run's metrics.jsonl, or {} when it has none (yet)."""
    path = Path(run_dir or "") / "metrics.jsonl"
    if run_dir is None or not path.exists():
        return {}
    summaries = [r["summary"] for r in read_metrics(path) if "summary" in r]
    return summaries[-1] if summaries else {}


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> one uint8 image (rows*H', nrow*W', 3), tiles separated by `pad` pixels."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(n, 3, h, w)
    rows = math.ceil(n / nrow)
    grid = torch.zeros(3, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value
