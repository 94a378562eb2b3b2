"""The ground floor of the verbs that analyse a finished classify run (`pixlab attack`, `pixlab explain`, ...).

    cfg, model, data = load_classifier(run_dir, device)
    with analysis_folder(run_dir, "attack", settings) as analysis:
        analysis.log({"attack/error": 0.9})
        analysis.save_figure("error", figure)
    print(analysis.dir)  # runs/<run>/analysis/attack-<YYYYmmdd-HHMMSS>/

An analysis never changes the run it reads: its results go to a folder of their own under the run's
`analysis/`, filled under a hidden temporary name while the run's lock is held (so a training or a resume
cannot write the run meanwhile) and renamed into place on success, so that it is whole or absent. Its W&B
run is a new one, grouped with the source run and typed by the verb, never the training run reopened: a
resume of that run rewrites its history.
"""

from __future__ import annotations

import datetime as _dt
import errno
import itertools
import json
import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
import yaml

from shared import classify  # registers `algo: classify`, whose config.yaml files are read here
from shared.atomic import atomic_write_text, fsync_dir, temporary_name
from shared.checkpoint import load_latest
from shared.config import load_config, to_dict
from shared.data import ImageData
from shared.errors import CheckpointError, PixlabError, RunFolderError
from shared.tracking import Tracker, image_grid


def load_classifier(
    run_dir: Path | str, device: torch.device | str = "cpu", training: bool = False
) -> tuple[Any, nn.Module, ImageData]:
    """(config, model, data) of a classify run: its config.yaml, the model with the weights of its newest intact
    checkpoint (the EMA weights when it kept them) in eval mode on `device`, and its dataset with the test split
    on `device` (the training split stays on the CPU); `training`: every split on `device`, with the run's own
    validation hold-out, as its trainer had them (a compression retrains on them)."""
    run_dir, device = Path(run_dir), torch.device(device)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder: it has no config.yaml")
    try:
        algo = (yaml.safe_load(config.read_text()) or {}).get("algo")
    except (yaml.YAMLError, AttributeError) as e:
        raise RunFolderError(f"cannot read {config}: {e}") from None
    if algo != "classify":
        raise PixlabError(f"{run_dir} is not a classify run (its config.yaml says algo: {algo}); analysis needs one")
    _, cfg = load_config(config)
    found = load_latest(run_dir, device)
    if found is None:
        raise CheckpointError(f"{run_dir} has no checkpoint: train it first (or resume it until it saves one)")
    path, checkpoint = found
    data = classify.prepare_data(cfg, device) if training else classify.load_test_data(cfg, device)
    try:
        model = classify.scored_model(cfg, checkpoint, data, device)
    except (KeyError, RuntimeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path} does not hold the {cfg.model.name} weights of {config}: {reason}") from None
    return cfg, model.eval(), data


class Analysis:
    """What `analysis_folder` yields: the folder being filled (`dir`; after the `with` block, the final folder)
    and a tracker that writes its metrics.jsonl and mirrors scalars, figures and images to a W&B run."""

    def __init__(self, directory: Path, tracker: Tracker):
        self.dir = directory
        self.tracker = tracker

    def log(self, scalars: dict[str, Any], step: int = 0) -> None:
        """Scalars at a step (an index of the sweep, e.g. the epsilon's), to metrics.jsonl and W&B."""
        self.tracker.log(scalars, step)

    def summary(self, values: dict[str, Any]) -> None:
        """The analysis's final numbers: a summary record in metrics.jsonl and the W&B run summary."""
        self.tracker.summary(values)

    def save_json(self, name: str, value: Any) -> Path:
        """`<dir>/<name>` as indented JSON."""
        path = self.dir / name
        atomic_write_text(path, json.dumps(value, indent=2) + "\n")
        return path

    def save_figure(self, key: str, figure: Any) -> Path:
        """A matplotlib `Figure` to `<dir>/<key>.png` (slashes become underscores) and to W&B under `key`. Build it
        with `matplotlib.figure.Figure`, as shared/figures.py does, not pyplot, whose figures live until closed."""
        from PIL import Image

        from shared.figures import render

        path = self.dir / f"{key.replace('/', '_')}.png"
        # Drawn at the figure's own size and DPI, as the trainers draw theirs: the image grids of shared/figures.py
        # place their pixels and their text in the same pixel coordinates, which a savefig at another DPI separates.
        Image.fromarray(render(figure)).save(path)
        self._to_wandb(key, path)
        return path

    def save_images(self, key: str, images: torch.Tensor, nrow: int = 8) -> Path:
        """A grid of images (N, C, H, W), floats in [0, 1], to `<dir>/<key>.png` and to W&B."""
        from PIL import Image

        path = self.dir / f"{key.replace('/', '_')}.png"
        Image.fromarray(image_grid(images, nrow)).save(path)
        self._to_wandb(key, path)
        return path

    def _to_wandb(self, key: str, path: Path) -> None:
        if self.tracker.wandb_run is not None:
            import wandb

            self.tracker.wandb_run.log({key: wandb.Image(str(path))})


@contextmanager
def analysis_folder(run_dir: Path | str, verb: str, settings: Optional[dict] = None) -> Iterator[Analysis]:
    """Hold the run's lock and fill `<run_dir>/analysis/<verb>-<YYYYmmdd-HHMMSS>/` through an `Analysis`.

    A run that another process is writing is refused (RunFolderError, exit status 2) with nothing written.
    The folder is filled under a hidden temporary name and renamed into place when the block ends without an
    exception; otherwise it is removed. `settings` (the verb's arguments) are the W&B run's config, beside the
    source run's. The W&B mode is the source run's `tracking.wandb` (auto: offline unless an API key is set).
    """
    from shared.run import RunLock

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunFolderError(f"{run_dir} is not a run folder: it has no config.yaml")
    _, cfg = load_config(run_dir / "config.yaml")
    lock = RunLock(run_dir)
    try:
        root = run_dir / "analysis"
        base = root / f"{verb}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        staging = temporary_name(base)
        root.mkdir(exist_ok=True)
        for dead in root.glob(".*.tmp-*"):  # left by a killed analysis: we hold the lock, so none is alive
            shutil.rmtree(dead, ignore_errors=True)
        staging.mkdir()
        try:
            tracking = replace(cfg.tracking, group=run_dir.name, job_type=verb, tags=[*cfg.tracking.tags, verb])
            tracker = Tracker(
                staging, tracking, {**to_dict(cfg), verb: dict(settings or {})}, name=f"{run_dir.name}-{verb}"
            )
            analysis = Analysis(staging, tracker)
            try:
                yield analysis
            except BaseException:
                tracker.close(exit_code=1)
                raise
            tracker.close()
            analysis.dir = _rename_into_place(staging, base)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if not any(root.iterdir()):  # the run's first analysis failed: leave the run as it was
                root.rmdir()
            raise
    finally:
        lock.release()


def _rename_into_place(staging: Path, base: Path) -> Path:
    """Rename `staging` to `base`, or `base-1`, `base-2`, ... when an analysis of the same second took it."""
    for suffix in itertools.count():
        directory = base.with_name(f"{base.name}-{suffix}") if suffix else base
        try:
            if not directory.exists():
                staging.rename(directory)
                fsync_dir(directory.parent)
                return directory
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
