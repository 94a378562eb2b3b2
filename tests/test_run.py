"""Run folders, atomic checkpoints, the weights_only guard, RNG capture and signal handling."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from conftest import CONFIGS

import shared.classify  # noqa: F401
from shared.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from shared.config import load_config
from shared.errors import CheckpointError, DamagedCheckpointError, NonFiniteLossError
from shared.rng import capture_rng, restore_rng
from shared.run import Run


def make_run(tmp_path, *overrides):
    _, cfg = load_config(
        CONFIGS / "classify" / "lenet5_digits.yaml",
        [f"runs_dir={tmp_path / 'runs'}", "tracking.wandb=disabled", "checkpoint.keep_last=2", *overrides],
    )
    return cfg, Run.create(cfg, argv=["pixlab", "train", "x.yaml"])


def test_run_folder_layout_and_meta(tmp_path):
    cfg, run = make_run(tmp_path, "seed=7")
    with run:
        pass
    assert run.dir.parent == tmp_path / "runs" and run.dir.name.endswith("-lenet5-digits")
    assert {p.name for p in run.dir.iterdir()} == {
        "config.yaml",
        "meta.json",
        "metrics.jsonl",
        "checkpoints",
        "media",
        ".lock",
    }
    meta = json.loads((run.dir / "meta.json").read_text())
    assert meta["seed"] == 7 and meta["algo"] == "classify" and meta["command"] == ["pixlab", "train", "x.yaml"]
    assert meta["device"]["type"] == "cpu"
    assert meta["packages"]["torch"] == torch.__version__
    assert set(meta["git"]) == {"commit", "dirty"} if meta["git"] else meta["git"] is None
    assert "seed: 7" in (run.dir / "config.yaml").read_text()


def test_two_runs_in_the_same_second_get_two_folders(tmp_path):
    _, first = make_run(tmp_path)
    _, second = make_run(tmp_path)
    assert first.dir != second.dir


def test_checkpoints_are_atomic_keep_last_k_and_restore_state(tmp_path):
    cfg, run = make_run(tmp_path)
    model = torch.nn.Linear(3, 2)
    with run:
        for step in (10, 20, 30):
            with torch.no_grad():
                model.weight.fill_(step)
            run.save(step, {"model": model}, {"epoch": step // 10})
    names = [p.name for p in list_checkpoints(run.dir)]
    assert names == ["step-000000020.pt", "step-000000030.pt"]
    assert not [p for p in (run.dir / "checkpoints").iterdir() if p.name.startswith(".")]

    fresh = torch.nn.Linear(3, 2)
    with Run.reopen(cfg, run.dir, argv=["pixlab", "resume"]) as again:
        counters = again.restore({"model": fresh})
    assert counters == {"step": 30, "epoch": 3}
    assert torch.equal(fresh.weight, torch.full((2, 3), 30.0))
    meta = json.loads((run.dir / "meta.json").read_text())
    assert meta["resumes"][0]["from_checkpoint"] == "step-000000030.pt"


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    path = tmp_path / "rng.pt"
    torch.save({"rng": capture_rng()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)  # move every generator on
    restore_rng(torch.load(path, weights_only=True)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


class Payload:
    """Unpickling this runs os.system: a checkpoint holding it must be refused before it runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_a_pickle_payload_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "step-000000001.pt"
    torch.save({"format": 1, "step": 1, "state": {}, "evil": Payload(marker)}, path)
    with pytest.raises(
        CheckpointError, match=r"refusing to load checkpoint .*step-000000001.pt.*Nothing in it was run"
    ):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoints_are_damaged_and_foreign_ones_refused(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"format": 1, "step": 1, "counters": {}, "rng": {}, "state": {}}, good)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DamagedCheckpointError, match=r"checkpoint .*torn.pt is damaged \(truncated or torn\)"):
        load_checkpoint(torn)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="is not a pixlab checkpoint"):
        load_checkpoint(foreign)


def test_sigterm_sets_should_stop_and_handlers_are_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    _, run = make_run(tmp_path)
    with run:
        assert not run.should_stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert run.should_stop and run.stop_signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    _, run = make_run(tmp_path)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(
        NonFiniteLossError,
        match=r"train/loss is nan at step 12: .* last checkpoint with finite weights is .*step-000000010.pt",
    ):
        with run:
            run.save(10, {"model": model})
            run.check_finite("train/loss", 0.5, 11)
            run.check_finite("train/loss", float("nan"), 12)
    assert latest_checkpoint(run.dir).name == "step-000000010.pt"


def test_bad_input_before_any_checkpoint_removes_the_fresh_run_folder(tmp_path):
    _, run = make_run(
        tmp_path, "data.name=mnist", "data.pad=2", f"data.root={tmp_path / 'nowhere'}", "data.download=false"
    )
    with pytest.raises(Exception, match="is missing"):
        with run:
            shared.classify.train(run.cfg, run)
    assert not run.dir.exists()
