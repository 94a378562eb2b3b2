"""Distillation (shared/distill.py): the loss against a hand computation, its T^2 gradient scale, the frozen
teacher, the checks that the teacher fits the student's data, a tiny distilled run on the digits set, and
`needs` in reproduce entries (the teacher runs of the same seed handed to each trial)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import CONFIGS

import shared.cli
import shared.cli.reproduce
import shared.cli.sweep.driver
from shared.cli import main
from shared.cli.reproduce import Needs, WithNeededRuns, load_entry, reproduce
from shared.config import load_config
from shared.distill import DistillConfig, check_teacher, distillation_loss, load_teacher
from shared.errors import ConfigError
from shared.tracking import read_metrics, read_summary

shared.cli.import_algorithms()

DISTILL = str(CONFIGS / "classify" / "mlp800_distill_mnist.yaml")
ALONE = str(CONFIGS / "classify" / "mlp800_mnist.yaml")
# The smallest MLP on the 8x8 digits padded to its 28x28, a few steps: seconds, no download.
TINY = [
    "data.name=digits",
    "data.pad=10",
    "model.name=lenet_300_100",
    "train.batch_size=64",
    "train.eval_batch_size=360",
    "tracking.wandb=disabled",
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ the loss
def test_loss_against_a_hand_computation_on_2x3_logits():
    t = 2.0
    # Logits chosen so that the softened distributions are round: z / T = log p.
    student = torch.tensor([[math.log(0.2), math.log(0.3), math.log(0.5)], [0.0, 0.0, 0.0]]) * t
    teacher = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)], [1.0, 1.0, 1.0]]) * t
    labels = torch.tensor([2, 0])
    # Row 0: soft CE of (0.5, 0.25, 0.25) against (0.2, 0.3, 0.5); at T = 1 the student's probabilities are
    # p^2 / sum p^2 = (0.04, 0.09, 0.25) / 0.38, so the hard CE of label 2 is log(0.38 / 0.25) = log 1.52.
    soft0 = -(0.5 * math.log(0.2) + 0.25 * math.log(0.3) + 0.25 * math.log(0.5))
    hard0 = math.log(1.52)
    # Row 1: both uniform: soft and hard CE are log 3.
    soft1 = hard1 = math.log(3)
    alpha = 0.25
    rows = [alpha * t**2 * soft + (1 - alpha) * hard for soft, hard in ((soft0, hard0), (soft1, hard1))]
    assert soft0 == pytest.approx(1.2790, abs=1e-4) and rows == pytest.approx([1.5930, 1.9226], abs=1e-4)

    mean = distillation_loss(student, teacher, labels, temperature=t, alpha=alpha)
    total = distillation_loss(student, teacher, labels, temperature=t, alpha=alpha, reduction="sum")
    assert mean.item() == pytest.approx(sum(rows) / 2, rel=1e-6)
    assert total.item() == pytest.approx(sum(rows), rel=1e-6)
    with pytest.raises(ValueError, match="reduction='none'"):
        distillation_loss(student, teacher, labels, t, alpha, reduction="none")


def test_alpha_0_is_plain_cross_entropy_and_alpha_1_the_soft_term_times_t_squared():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([1, 5, 9, 0])
    plain = F.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, 20.0, 0.0), plain, rtol=0, atol=1e-7)
    for t in (1.0, 4.0, 20.0):
        soft = -(F.softmax(teacher / t, 1) * F.log_softmax(student / t, 1)).sum(1).mean()
        torch.testing.assert_close(distillation_loss(student, teacher, labels, t, 1.0), t**2 * soft)


def test_soft_gradient_is_t_times_the_probability_gap_and_keeps_its_size_as_t_grows():
    """Section 2: d(T^2 H)/dz_s = T (q_s - q_t); for large T it tends to (z_s - z_t) / C for zero-mean logits,
    whatever T: the T^2 factor keeps the soft term's weight when T changes."""
    torch.manual_seed(0)
    student = torch.randn(3, 10)
    student -= student.mean(1, keepdim=True)
    teacher = torch.randn(3, 10)
    teacher -= teacher.mean(1, keepdim=True)
    teacher.requires_grad_(True)
    labels = torch.tensor([0, 1, 2])
    limit = (student - teacher.detach()) / 10 / 3  # (z_s - z_t) / C, and 1/B of the batch mean
    for t in (1.0, 5.0, 20.0, 200.0):
        z = student.clone().requires_grad_(True)
        distillation_loss(z, teacher, labels, t, alpha=1.0).backward()
        gap = F.softmax(student / t, 1) - F.softmax(teacher.detach() / t, 1)
        torch.testing.assert_close(z.grad, t * gap / 3)
        if t >= 20:
            # within O(1/T) of the logit-matching limit: 10% of its largest entry at T = 20, 1% at T = 200
            torch.testing.assert_close(z.grad, limit, rtol=0, atol=limit.abs().max().item() * 2 / t)
    assert teacher.grad is None  # no gradient flows into the teacher's logits


# ----------------------------------------------------------------------------------------- the teacher
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A lenet_300_100 trained 10 steps on the digits set (pad 10), in a folder of its own."""
    runs = tmp_path_factory.mktemp("teacher")
    assert main(["train", ALONE, *TINY, "train.max_steps=10", f"runs_dir={runs}", "name=teacher"]) == 0
    (folder,) = runs.iterdir()
    return folder


def test_the_teacher_is_frozen_in_eval_mode_on_the_device(teacher_run):
    teacher = load_teacher(teacher_run, torch.device("cpu"))
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    logits = teacher(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10) and logits.grad_fn is None
    assert all(p.device.type == "cpu" for p in teacher.parameters())


def test_a_teacher_that_reads_other_data_is_refused_before_anything_is_written(teacher_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    mnist = ["data.name=mnist", "data.pad=0", "model.name=lenet_300_100", f"runs_dir={runs}"]
    assert main(["train", DISTILL, *mnist, f"train.distill.teacher={teacher_run}"]) == 2
    err = capsys.readouterr().err
    assert f"override 'train.distill.teacher={teacher_run}'" in err
    assert "the teacher was trained on data.name=digits, data.pad=10, this run reads data.name=mnist, data.pad=0" in err
    assert main(["train", DISTILL, *TINY, f"train.distill.teacher={tmp_path}", f"runs_dir={runs}"]) == 2
    assert f"train.distill.teacher='{tmp_path}': not a run folder (it has no config.yaml)" in capsys.readouterr().err
    assert main(["train", DISTILL, *TINY, "train.distill.alpha=1.5", f"runs_dir={runs}"]) == 2
    assert "train.distill.alpha=1.5: must be in [0, 1]" in capsys.readouterr().err
    assert (
        main(["train", DISTILL, *TINY, f"train.distill.teacher={teacher_run}", "data.val_size=100", f"runs_dir={runs}"])
        == 2
    )
    assert "the teacher trained on 100 of this run's data.val_size=100 validation images (it held out 0)" in (
        capsys.readouterr().err
    )
    assert not runs.exists()


@pytest.mark.parametrize("theirs, ours, refused", [(200, 200, False), (300, 200, False), (200, 201, True)])
def test_the_teacher_must_have_held_out_the_students_validation_images(tmp_path, theirs, ours, refused):
    # hold_out takes the first images of one fixed shuffle: a teacher that held out more held out the student's
    data = {"name": "digits", "pad": 10, "val_size": theirs}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"algo": "classify", "data": data}))
    cfg = DistillConfig(teacher=str(tmp_path))
    if refused:
        with pytest.raises(ConfigError, match=r"trained on 1 of this run's data.val_size=201 validation images"):
            check_teacher(cfg, "digits", 10, ours)
    else:
        check_teacher(cfg, "digits", 10, ours)


def test_an_mlp_on_images_it_cannot_read_is_refused_naming_data_pad():
    with pytest.raises(
        ConfigError, match=r"data.pad=0: gives 8x8 images; mlp_800_800 reads 28x28 \(mnist: pad 0, digits: pad 10\)"
    ):
        load_config(ALONE, ["data.name=digits"])
    assert load_config(ALONE, ["data.name=digits", "data.pad=10"])[1].data.pad == 10


def test_a_tiny_distilled_run_on_digits(teacher_run, tmp_path):
    runs = tmp_path / "runs"
    overrides = [*TINY, "train.max_steps=6", "tracking.log_every=3", f"runs_dir={runs}"]
    assert main(["train", DISTILL, *overrides, f"train.distill.teacher={teacher_run}"]) == 0
    (student,) = runs.iterdir()
    losses = [r["train/loss"] for r in read_metrics(student / "metrics.jsonl") if "train/loss" in r]
    # the config's alpha T^2 = 0.3 * 400 times a soft cross-entropy of at least the teacher's entropy at T = 20,
    # close to log 10 = 2.30: a plain cross-entropy (about 2.3 at the start) would be 100 times smaller.
    alpha = load_config(DISTILL, [])[1].train.distill.alpha
    assert alpha == 0.3 and len(losses) == 2 and all(loss > alpha * 400 * 2.0 for loss in losses)
    summary = read_summary(student)
    assert summary["train/steps"] == 6 and 0 <= summary["test/errors"] <= 360
    assert yaml.safe_load((student / "config.yaml").read_text())["train"]["distill"]["teacher"] == str(teacher_run)


# ------------------------------------------------------------------------------------------ needs: entries
class InlinePool:
    """The sweep's LocalPool interface, running each trial in this process as it starts: no worker to fork
    (seconds each). That WithNeededRuns crosses to a worker is checked by pickling it."""

    def __init__(self, trial_fn):
        self.trial_fn, self.ended = trial_fn, []

    def start(self, trial_id, job):
        status = self.trial_fn(job.config, list(job.overrides), job.run_dir)
        self.ended.append((trial_id, {"status": status, "error": None, "retry": True}))

    def wait(self, timeout):
        ended, self.ended = self.ended, []
        return ended


@pytest.fixture
def entries(tmp_path, monkeypatch) -> Path:
    """An empty folder of reproduce entries, the current folder, whose sweeps run their trials inline."""
    monkeypatch.setattr(shared.cli.reproduce, "ENTRIES", tmp_path)
    monkeypatch.setattr(shared.cli.sweep.driver, "LocalPool", InlinePool)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_entry(folder: Path, name: str, config: str = DISTILL, needs=None, overrides=("data.pad=10",)) -> None:
    smoke = {"seeds": 2, "overrides": ["data.name=digits", *overrides], "about": "fake"}
    entry = {
        "model": name,
        "task": "digits",
        "config": config,
        "metric": {"name": "test/errors", "decimals": 1},
        "published": {"value": 1, "source": "test"},
        "budgets": {b: smoke for b in ("full", "cpu", "smoke")},
    }
    if needs is not None:
        entry["needs"] = needs
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(entry))


@pytest.mark.parametrize(
    "needs, message",
    [
        ("teacher", "needs must be a mapping with keys entry, key"),
        ({"entry": "base"}, "missing key(s) needs.key"),
        ({"entry": "base", "key": "train.distill.teacher", "seed": 0}, "unknown key 'needs.seed'"),
        ({"entry": "bse", "key": "x"}, "needs.entry='bse' is not another reproduce entry (did you mean 'base'?)"),
        ({"entry": "student", "key": "x"}, "needs.entry='student' is not another reproduce entry"),
        ({"entry": "base", "key": "train.distil.teacher"}, "needs.key='train.distil.teacher' is not a key of"),
    ],
)
def test_a_bad_needs_is_a_config_error_naming_the_key(entries, needs, message):
    write_entry(entries, "base", ALONE)
    write_entry(entries, "student", needs=needs)
    with pytest.raises(ConfigError) as error:
        load_entry("student")
    assert f"{entries / 'student.yaml'}: {message}" in str(error.value)


def test_entries_that_need_each_other_are_refused_before_anything_runs(entries):
    write_entry(entries, "a", needs={"entry": "b", "key": "train.distill.teacher"})
    write_entry(entries, "b", needs={"entry": "a", "key": "train.distill.teacher"})
    with pytest.raises(ConfigError, match="reproduce entries need each other in a circle: a -> b -> a"):
        reproduce("a", "smoke", fake_trial)
    assert not (entries / "runs").exists()


def fake_trial(config, overrides, run_dir):
    """A trial function that trains nothing: it makes the run folder `pixlab train` would, holding a classify
    config.yaml on the digits (pad 10) with the overrides it got, and a summary of 10 + seed errors."""
    given = dict(o.split("=", 1) for o in overrides)
    folder = Path(given["runs_dir"]) / f"20260101-000000-{given['name']}"
    folder.mkdir(parents=True)
    config = {"algo": "classify", "data": {"name": "digits", "pad": 10}, "overrides": list(overrides)}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.jsonl").write_text(json.dumps({"summary": {"test/errors": 10 + int(given["seed"])}}) + "\n")
    return 0


def given_overrides(folder: Path) -> dict:
    """The overrides `fake_trial` got for the run in `folder`, as a dict (the last of a key wins)."""
    return dict(o.split("=", 1) for o in yaml.safe_load((folder / "config.yaml").read_text())["overrides"])


def test_needs_runs_the_needed_entry_first_and_hands_each_trial_its_seeds_run(entries):
    write_entry(entries, "teachers", ALONE)
    write_entry(entries, "students", needs={"entry": "teachers", "key": "train.distill.teacher"})
    assert load_entry("students").needs == Needs("teachers", "train.distill.teacher")

    assert reproduce("students", "smoke", fake_trial) == 0
    runs = entries / "runs"
    teachers = {given_overrides(f)["seed"]: str(f) for f in (runs / "reproduce-teachers-smoke").glob("2026*")}
    students = {
        given_overrides(f)["seed"]: given_overrides(f) for f in (runs / "reproduce-students-smoke").glob("2026*")
    }
    assert sorted(teachers) == sorted(students) == ["0", "1"]
    assert {seed: given["train.distill.teacher"] for seed, given in students.items()} == teachers
    for name in ("teachers", "students"):
        measured = json.loads((runs / f"reproduce-{name}-smoke" / "reproduce.json").read_text())
        assert (measured["values"], measured["command"]) == ([10, 11], f"pixlab reproduce {name} --budget smoke")
    handed = pickle.loads(pickle.dumps(WithNeededRuns(fake_trial, "train.distill.teacher", teachers)))
    assert (handed.trial_fn, handed.folders) == (fake_trial, teachers)  # it crosses to a worker process

    # LeNet-5 students (digits at pad 12, a config fine on its own) find the teachers' runs finished (fake_trial
    # would fail to make their folders again) and are refused by the teachers' pad 10, naming the key, before
    # their own sweep exists.
    lenet = ("data.pad=12", "model.name=lenet5")
    write_entry(entries, "lenets", needs={"entry": "teachers", "key": "train.distill.teacher"}, overrides=lenet)
    load_config(DISTILL, ["data.name=digits", *lenet])
    teachers_pad = "data.pad=10, this run reads data.name=digits, data.pad=12"
    with pytest.raises(ConfigError, match=f"override 'train.distill.teacher=.*{teachers_pad}"):
        reproduce("lenets", "smoke", fake_trial)
    assert len(list((runs / "reproduce-teachers-smoke").glob("2026*"))) == 2
    assert not (runs / "reproduce-lenets-smoke").exists()
