"""shared/analysis.py: loading a finished classify run, and the locked, staged analysis folder."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import CONFIGS

from shared.analysis import analysis_folder, load_classifier
from shared.config import load_config
from shared.errors import CheckpointError, PixlabError, RunFolderError
from shared.models import build_model
from shared.run import Run, RunLock


def make_run(tmp_path, *overrides, checkpoint: bool = True):
    """A digits LeNet-5 run folder holding one checkpoint of untrained weights (and EMA weights when asked)."""
    _, cfg = load_config(
        CONFIGS / "classify" / "lenet5_digits.yaml",
        [f"runs_dir={tmp_path / 'runs'}", "tracking.wandb=disabled", *overrides],
    )
    torch.manual_seed(0)
    model, average = build_model("lenet5", 10, in_channels=1), build_model("lenet5", 10, in_channels=1)
    with Run.create(cfg, argv=["pixlab", "train"]) as run:
        if checkpoint:
            objects = {"model": model} | ({"ema": _EMAState(average)} if cfg.train.ema_decay else {})
            run.save(5, objects)
    return run.dir, model, average


class _EMAState:
    def __init__(self, module):
        self.module = module

    def state_dict(self):
        return {"module": self.module.state_dict(), "updates": 5}


def test_load_classifier_gives_the_config_the_scored_weights_in_eval_mode_and_the_test_split(tmp_path):
    run_dir, model, average = make_run(tmp_path)
    cfg, loaded, data = load_classifier(run_dir, "cpu")
    assert cfg.algo == "classify" and cfg.data.name == "digits" and not loaded.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert data.test.images.device.type == "cpu" and len(data.test) == 360

    ema_dir, model, average = make_run(tmp_path, "train.ema_decay=0.9")
    _, loaded, _ = load_classifier(ema_dir, "cpu")
    assert all(torch.equal(v, average.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_load_classifier_names_the_folder_that_is_no_classify_run_or_has_no_checkpoint(tmp_path):
    with pytest.raises(RunFolderError, match=f"{tmp_path} is not a run folder"):
        load_classifier(tmp_path)
    (tmp_path / "config.yaml").write_text("algo: dqn\n")
    with pytest.raises(PixlabError, match=f"{tmp_path} is not a classify run .*algo: dqn"):
        load_classifier(tmp_path)
    run_dir, _, _ = make_run(tmp_path, checkpoint=False)
    with pytest.raises(CheckpointError, match=f"{run_dir} has no checkpoint"):
        load_classifier(run_dir)


def test_a_run_another_process_writes_is_refused_with_nothing_written(tmp_path):
    run_dir, _, _ = make_run(tmp_path)
    held = RunLock(run_dir)  # a second open file description: flock refuses it as it would another process
    try:
        with pytest.raises(RunFolderError, match="is being written by process"):
            with analysis_folder(run_dir, "attack"):
                pytest.fail("the block ran without the lock")
    finally:
        held.release()
    assert not (run_dir / "analysis").exists()


def test_an_exception_inside_leaves_no_folder_and_frees_the_lock(tmp_path):
    run_dir, _, _ = make_run(tmp_path)
    with pytest.raises(ValueError, match="boom"):
        with analysis_folder(run_dir, "attack") as analysis:
            analysis.save_json("partial.json", {"a": 1})
            raise ValueError("boom")
    assert not (run_dir / "analysis").exists()
    RunLock(run_dir).release()


def test_a_finished_analysis_is_renamed_into_place_with_its_files_and_its_own_wandb_run(tmp_path, monkeypatch):
    import wandb

    started = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: started.append(FakeWandbRun(kwargs)) or started[-1])
    run_dir, _, _ = make_run(tmp_path, "tracking.wandb=offline")
    with analysis_folder(run_dir, "attack", {"epsilons": [0.1]}) as analysis:
        staging = analysis.dir
        assert staging.name.startswith(".attack-")
        analysis.save_json("attack.json", {"error": 0.5})
        analysis.log({"attack/error": 0.5}, step=0)
        analysis.save_images("grid", torch.zeros(2, 1, 8, 8))
        analysis.summary({"attack/error": 0.5})
    assert not staging.exists() and analysis.dir.parent == run_dir / "analysis"
    assert re.fullmatch(r"attack-\d{8}-\d{6}", analysis.dir.name)
    assert [p.name for p in (run_dir / "analysis").iterdir()] == [analysis.dir.name]
    assert json.loads((analysis.dir / "attack.json").read_text()) == {"error": 0.5}
    assert (analysis.dir / "grid.png").exists()
    records = [json.loads(line) for line in (analysis.dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["attack/error"] == 0.5 and records[-1] == {"summary": {"attack/error": 0.5}}
    assert (run_dir / "metrics.jsonl").read_text() == ""  # the source run is left as it was

    source, wandb_run = started  # the source run's own, then a new one in the folder, grouped with the source
    assert source.init["dir"] == str(run_dir) and source.init["job_type"] == "train"
    init = wandb_run.init
    assert init["group"] == run_dir.name and init["job_type"] == "attack" and init["mode"] == "offline"
    assert init["dir"] == str(staging) and init["id"] is None and init["resume"] is None
    assert init["config"]["attack"] == {"epsilons": [0.1]} and init["config"]["data"]["name"] == "digits"
    assert wandb_run.logged[0] == ({"attack/error": 0.5}, 0) and set(wandb_run.logged[1][0]) == {"grid"}
    assert wandb_run.summary == {"attack/error": 0.5} and wandb_run.exit_code == 0


class FakeWandbRun:
    """What the tracker calls on a W&B run, recorded (a real offline run costs seconds of W&B's service)."""

    id = "fake"

    def __init__(self, init: dict):
        self.init, self.logged, self.summary, self.exit_code = init, [], {}, None

    def log(self, values: dict, step=None):
        self.logged.append((values, step))

    def finish(self, exit_code: int):
        self.exit_code = exit_code
