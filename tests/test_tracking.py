"""Tracking: W&B mode resolution, the files an offline W&B run writes, metrics.jsonl and image grids."""

from __future__ import annotations

import json

import pytest
import torch
from wandb_records import offline_run

from shared.config import TrackingConfig
from shared.tracking import Tracker, image_grid, read_metrics, wandb_group_and_tags, wandb_mode


@pytest.mark.parametrize(
    "setting, env, expected",
    [
        ("auto", {}, "offline"),
        ("auto", {"WANDB_API_KEY": "k"}, "online"),
        ("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "offline"),
        ("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}, "disabled"),
        ("auto", {"WANDB_DISABLED": "true"}, "disabled"),
        ("online", {}, "online"),
        ("disabled", {"WANDB_API_KEY": "k"}, "disabled"),
    ],
)
def test_wandb_is_offline_unless_asked_for_online(setting, env, expected):
    assert wandb_mode(setting, env) == expected


def test_offline_wandb_run_holds_config_summary_history_and_tags(tmp_path):
    cfg = TrackingConfig(project="proj", group="grp", tags=["a", "b"], job_type="train")
    tracker = Tracker(tmp_path, cfg, config={"seed": 3, "optim": {"lr": 0.5}}, name="my-run")
    tracker.log({"train/loss": torch.tensor(2.0)}, step=1)
    tracker.log({"train/loss": 1.0}, step=2)
    tracker.summary({"test/error": 0.0125})
    tracker.close()

    written = offline_run(tmp_path)
    run = written["run"]
    assert (run.project, run.run_group, run.job_type, run.display_name) == ("proj", "grp", "train", "my-run")
    assert list(run.tags) == ["a", "b"]
    assert written["config"]["seed"] == 3 and written["config"]["optim"] == {"lr": 0.5}
    assert written["summary"]["test/error"] == 0.0125 and written["summary"]["train/loss"] == 1.0
    assert [h["train/loss"] for h in written["history"]] == [2.0, 1.0]
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r.get("train/loss") for r in records] == [2.0, 1.0, None]
    assert records[-1] == {"summary": {"test/error": 0.0125}}


def test_without_a_group_the_run_groups_by_its_config_name_and_is_tagged_with_its_algorithm(tmp_path):
    tracker = Tracker(
        tmp_path,
        TrackingConfig(tags=["mnist"]),
        config={"algo": "vae", "name": "vae-mnist", "seed": 1},
        name="20261123-000000-vae-mnist",
    )
    tracker.close()
    run = offline_run(tmp_path)["run"]
    assert run.run_group == "vae-mnist" and list(run.tags) == ["vae", "mnist"]


@pytest.mark.parametrize(
    "group, tags, expected",
    [
        ("lr-sweep", ["dqn", "pong"], ("lr-sweep", ["dqn", "pong"])),  # set in the config: kept as it is
        (None, ["pong", "dqn"], ("dqn-pong", ["pong", "dqn"])),  # the algorithm already among the tags
        (None, [], ("dqn-pong", ["dqn"])),
    ],
)
def test_wandb_group_and_tags(group, tags, expected):
    assert wandb_group_and_tags(TrackingConfig(group=group, tags=tags), {"algo": "dqn", "name": "dqn-pong"}) == expected


def test_truncate_after_drops_later_records_and_the_summary(tmp_path):
    tracker = Tracker(tmp_path, TrackingConfig(wandb="disabled"), config={}, name="r")
    for step in (10, 20, 30):
        tracker.log({"train/loss": step}, step)
    tracker.summary({"x": 1})
    tracker.truncate_after(20)
    tracker.log({"train/loss": 31}, 30)
    tracker.close()
    assert [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (10, 10),
        (20, 20),
        (30, 31),
    ]


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "train/lo')
    assert read_metrics(path) == [{"step": 1}]


def test_image_grid_places_each_tile():
    images = torch.zeros(3, 1, 2, 2)
    images[1] = 1.0  # the second tile is white
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    assert (grid[1:3, 4:6] == 255).all()  # tile 1: row 0, column 1
    assert grid.sum() == 255 * 4 * 3
