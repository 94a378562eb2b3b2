"""Issue 12: no exit 0 for a diverged run, no run folder that cannot resume, no traceback for a user's mistake.

Each section follows the issue's: divergence, whole-or-absent folders, mistakes found at run time, file-system
trouble, one writer per run, evaluation with the wrong checkpoint; then the fault-injection test (slow).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch
from conftest import CONFIGS, REPO

import shared.classify  # noqa: F401  (registers algo: classify)
import shared.config
import shared.data.files
import shared.run
from shared.atomic import atomic_torch_save
from shared.checkpoint import first_non_finite, latest_checkpoint, list_checkpoints, load_checkpoint
from shared.cli import main
from shared.config import load_config
from shared.errors import CheckpointError, NonFiniteLossError, RunFolderError
from shared.run import Run, RunLock

DIGITS = CONFIGS / "classify" / "lenet5_digits.yaml"
QUIET = ["tracking.wandb=disabled"]


def runs_in(root):
    """The run folders under `root`, hidden staging folders left aside."""
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def train_tiny(tmp_path, *overrides) -> tuple[int, object]:
    """`pixlab train` of LeNet-5 on the digits for a few steps, in this process: (status, run folder or None)."""
    runs = tmp_path / "runs"
    status = main(
        ["train", str(DIGITS), f"runs_dir={runs}", *QUIET, "train.max_steps=4", "checkpoint.every=2", *overrides]
    )
    found = runs_in(runs)
    return status, found[-1] if found else None


def make_run(tmp_path, *overrides):
    _, cfg = load_config(DIGITS, [f"runs_dir={tmp_path / 'runs'}", *QUIET, *overrides])
    return cfg, Run.create(cfg, argv=["pixlab", "train"])


# --------------------------------------------------------------------- 1. a diverged run must not succeed
def test_lr_1e6_exits_1_at_the_first_infinite_test_loss(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", str(DIGITS), f"runs_dir={runs}", *QUIET, "optim.lr=1e6"]) == 1
    err = capsys.readouterr().err
    assert "test/loss is inf at step 23: training diverged and was stopped" in err
    assert "last checkpoint with finite weights is none (nothing was saved before the divergence)" in err


def test_a_diverged_run_names_its_last_checkpoint_with_finite_weights(tmp_path, capsys):
    status, run_dir = train_tiny(tmp_path, "optim.lr=1e6", "train.max_steps=30", "checkpoint.every=1")
    err = capsys.readouterr().err
    assert status == 1
    assert "optimizer.state.0.exp_avg_sq holds NaN or infinite values at step 2: training diverged" in err
    last = latest_checkpoint(run_dir)
    assert last.name == "step-000000001.pt" and f"last checkpoint with finite weights is {last}." in err
    assert first_non_finite(load_checkpoint(last)["state"]) is None


@pytest.mark.parametrize("override", ["optim.lr=inf", "optim.lr=nan", "optim.betas=[0.9,inf]"])
def test_non_finite_floats_in_a_config_are_rejected(tmp_path, capsys, override):
    key = override.split("=")[0]
    status, run_dir = train_tiny(tmp_path, override)
    err = capsys.readouterr().err
    assert status == 2 and run_dir is None
    assert f"pixlab: error: override '{override}': {key}=" in err and err.endswith(": must be a finite number\n")


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    _, run = make_run(tmp_path)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(
        NonFiniteLossError, match=r"model.weight holds NaN or infinite values at step 20: .*step-000000010.pt"
    ):
        with run:
            run.save(10, {"model": model})
            with torch.no_grad():
                model.weight[0, 0] = float("nan")
            run.save(20, {"model": model})
    assert [p.name for p in list_checkpoints(run.dir)] == ["step-000000010.pt"]


def test_a_non_finite_summary_fails_the_run(tmp_path):
    _, run = make_run(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"test/loss is inf in the summary: .*none \(nothing was saved"):
        with run:
            run.summary({"test/loss": float("inf"), "test/error": 0.5})
    assert run.dir.exists()  # a diverged run is kept, to be looked at


# --------------------------------------------------------------------- 2. a run folder is whole or absent
def test_a_kill_before_meta_json_leaves_no_run_folder(tmp_path, monkeypatch):
    real = shared.run.atomic_write_text

    def interrupted(path, text):
        if path.name == "meta.json":
            raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(shared.run, "atomic_write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_run(tmp_path)
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_new_run_removes_the_half_made_folders_of_dead_processes(tmp_path, capsys):
    runs = tmp_path / "runs"
    dead = runs / f".20261201-120000-x.tmp-{2**22 + 1}"  # above Linux's largest pid_max: no such process can exist
    alive = runs / f".20261201-120000-y.tmp-{os.getpid()}"  # this process: still making it
    for folder in (dead, alive):
        (folder / "checkpoints").mkdir(parents=True)
    status, _ = train_tiny(tmp_path)
    assert status == 0 and not dead.exists() and alive.exists()
    assert f"pixlab: removed {dead}, a run folder whose making was cut short by a kill" in capsys.readouterr().err


def test_resume_removes_temporaries_a_kill_left(tmp_path, capsys):
    cfg, run = make_run(tmp_path)
    with run:
        run.save(1, {"model": torch.nn.Linear(2, 2)})
    torn = [run.dir / "checkpoints" / ".step-000000002.pt.tmp-99999", run.dir / ".meta.json.tmp-99999"]
    for path in torn:
        path.write_bytes(b"half")
    with Run.reopen(cfg, run.dir, argv=["pixlab", "resume"]):
        pass
    assert not any(p.exists() for p in torn)
    assert f"removed {torn[1]}, a write cut short by a kill" in capsys.readouterr().err


def test_a_damaged_newest_checkpoint_is_named_and_resume_falls_back(tmp_path, capsys):
    cfg, run = make_run(tmp_path, "checkpoint.keep_last=3")
    model = torch.nn.Linear(2, 2)
    with run:
        for step in (10, 20):
            with torch.no_grad():
                model.weight.fill_(step)
            run.save(step, {"model": model})
    newest = latest_checkpoint(run.dir)
    newest.write_bytes(newest.read_bytes()[:200])
    fresh = torch.nn.Linear(2, 2)
    with Run.reopen(cfg, run.dir, argv=["pixlab", "resume"]) as again:
        assert again.restore({"model": fresh}) == {"step": 10}
    assert torch.equal(fresh.weight, torch.full((2, 2), 10.0))
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged (truncated or torn)" in err and "refusing" not in err
    assert f"using {run.dir / 'checkpoints' / 'step-000000010.pt'}, the newest intact checkpoint" in err
    assert json.loads((run.dir / "meta.json").read_text())["resumes"][-1]["from_checkpoint"] == "step-000000010.pt"


class Payload:
    def __reduce__(self):
        return (os.getpid, ())


def test_a_refused_resume_leaves_meta_json_as_it_was(tmp_path):
    cfg, run = make_run(tmp_path)
    with run:
        run.save(1, {"model": torch.nn.Linear(2, 2)})
    torch.save({"format": 1, "evil": Payload()}, run.dir / "checkpoints" / "step-000000002.pt")
    before = (run.dir / "meta.json").read_bytes()
    with pytest.raises(CheckpointError, match="refusing to load checkpoint .*step-000000002.pt"):
        Run.reopen(cfg, run.dir, argv=["pixlab", "resume"])
    assert (run.dir / "meta.json").read_bytes() == before


# --------------------------------------------------------------------- 3. mistakes found at run time
DQN = CONFIGS / "dqn" / "cartpole.yaml"


@pytest.mark.parametrize(
    "config, override, message",
    [
        (
            DQN,
            "env.id=CartPol-v1",
            "env.id='CartPol-v1' is not a registered gymnasium env (did you mean 'CartPole-v1'?)",
        ),
        (
            DQN,
            "env.id=ALE/Pnog-v5",
            "env.id='ALE/Pnog-v5' is not a registered gymnasium env (did you mean 'ALE/Pong-v5'?)",
        ),
        (DQN, "eval.episodes=0", "eval.episodes=0: must be > 0"),
        (DQN, "agent.buffer_size=100", "agent.buffer_size=100: must be >= agent.batch_size (128)"),
        (DQN, "env.obs_type=ram", "env.obs_type='ram': 'ram' needs an Atari env (ALE/<Game>-v5), not CartPole-v1"),
        (DIGITS, "data.pad=0", "data.pad=0: gives 8x8 images; lenet5 reads 32x32"),
        (DIGITS, "optim.lr=-1", "optim.lr=-1.0: must be > 0"),
        (DIGITS, "name=a/b", "name='a/b': must be a plain folder name"),
    ],
)
def test_run_time_mistakes_exit_2_naming_the_override_before_any_folder(tmp_path, capsys, config, override, message):
    runs = tmp_path / "runs"
    assert main(["train", str(config), f"runs_dir={runs}", *QUIET, override]) == 2
    assert f"pixlab: error: override '{override}': {message}" in capsys.readouterr().err
    assert not runs.exists()


def test_a_range_error_in_the_file_blames_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(DIGITS.read_text().replace("lr: 0.002", "lr: -0.002"))
    with pytest.raises(Exception, match=rf"^{path}: optim.lr=-0.002: must be > 0$"):
        load_config(path, ["seed=3"])


def test_a_scalar_for_a_section_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo: classify\ndata: 5\n")
    with pytest.raises(
        Exception, match=rf"^{path}: 'data' is a section, not a value \(5\); give it keys: augment, download, name"
    ):
        load_config(path)
    with pytest.raises(Exception, match=r"^override 'data.augment=3': 'data.augment' is a section, not a value \(3\)"):
        load_config(DIGITS, ["data.augment=3"])


# --------------------------------------------------------------------- 4. file-system trouble is reported
MNIST = CONFIGS / "classify" / "lenet5_mnist.yaml"


def test_a_folder_where_a_data_file_should_be(tmp_path, capsys):
    (tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz").mkdir(parents=True)
    runs = tmp_path / "runs"
    status = main(
        ["train", str(MNIST), f"runs_dir={runs}", *QUIET, f"data.root={tmp_path / 'data'}", "data.download=false"]
    )
    assert status == 2
    assert (
        f"cannot read {tmp_path / 'data' / 'mnist' / 'train-images-idx3-ubyte.gz'}: Is a directory"
        in capsys.readouterr().err
    )
    assert runs_in(runs) == []


def test_an_unreadable_data_file(tmp_path, monkeypatch):
    path = tmp_path / "f.gz"
    path.write_bytes(b"x")

    def denied(file, mode="r"):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(shared.data.files, "open", denied, raising=False)  # root reads any file: fake the refusal
    with pytest.raises(Exception, match=rf"^cannot read {path}: Permission denied$"):
        shared.data.files.ensure_file(tmp_path, "f.gz", "0" * 32, mirrors=[])


def test_runs_dir_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    status, _ = train_tiny(tmp_path, f"runs_dir={blocker / 'runs'}")
    assert status == 2
    assert f"cannot make a run folder in runs_dir='{blocker / 'runs'}': Not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "meta.json").unlink(), "is not a whole run folder: it has no meta.json"),
        (lambda d: (d / "meta.json").write_text("{"), "cannot read {d}/meta.json: Expecting property name"),
        (lambda d: (d / "config.yaml").write_text("algo: [classify"), "{d}/config.yaml is not valid YAML"),
        (
            lambda d: (d / "metrics.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\n'),
            "{d}/metrics.jsonl line 2 is not UTF-8 text",
        ),
    ],
)
def test_a_damaged_run_folder_is_refused_by_resume_with_its_path(tmp_path, capsys, damage, message):
    status, run_dir = train_tiny(tmp_path)
    assert status == 0
    damage(run_dir)
    meta = (run_dir / "meta.json").read_bytes() if (run_dir / "meta.json").exists() else None
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 2
    assert message.format(d=run_dir) in capsys.readouterr().err
    assert ((run_dir / "meta.json").read_bytes() if meta is not None else None) == meta


# --------------------------------------------------------------------- 5. one writer per run
def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    status, run_dir = train_tiny(tmp_path)
    assert status == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from shared.run import RunLock; RunLock({str(run_dir)!r}); print('held', flush=True); input()",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["resume", str(run_dir)]) == 2
        assert f"{run_dir} is being written by process {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / ".lock").read_text() == str(holder.pid)  # the dead process's PID is still in the file
    assert main(["resume", str(run_dir)]) == 0


def test_a_lock_is_released_when_the_run_ends(tmp_path):
    _, run = make_run(tmp_path)
    with pytest.raises(RunFolderError, match=f"is being written by process {os.getpid()}"):
        RunLock(run.dir)
    with run:
        pass
    RunLock(run.dir).release()


# --------------------------------------------------------------------- 7. evaluation with the wrong checkpoint
def test_eval_of_another_algorithms_checkpoint_says_what_was_expected(tmp_path, capsys):
    status, run_dir = train_tiny(tmp_path)
    assert status == 0
    last = latest_checkpoint(run_dir)
    checkpoint = load_checkpoint(last)
    checkpoint["state"] = {"q": torch.nn.Linear(2, 2).state_dict()}
    atomic_torch_save(checkpoint, last)
    assert main(["eval", str(run_dir)]) == 2
    assert (
        f"{last} is not a classify checkpoint of {run_dir / 'config.yaml'}: it has no 'model' state (it holds q)"
        in capsys.readouterr().err
    )


def test_eval_whose_metrics_are_not_finite_exits_1_naming_them(tmp_path, capsys, monkeypatch):
    status, run_dir = train_tiny(tmp_path)
    assert status == 0
    capsys.readouterr()
    nan_loss = dataclasses.replace(
        shared.config.ALGORITHMS["classify"], evaluate=lambda cfg, checkpoint: {"test/loss": float("nan")}
    )
    monkeypatch.setitem(shared.config.ALGORITHMS, "classify", nan_loss)
    assert main(["eval", str(run_dir)]) == 1
    captured = capsys.readouterr()
    assert '"test/loss": NaN' in captured.out  # still printed: the user sees what was measured
    assert f"pixlab: error: test/loss of {latest_checkpoint(run_dir)} not finite" in captured.err


def test_eval_with_another_architecture_says_what_was_expected(tmp_path, capsys):
    status, run_dir = train_tiny(tmp_path)
    assert status == 0
    capsys.readouterr()
    assert main(["eval", str(run_dir), "model.name=resnet20"]) == 2
    err = capsys.readouterr().err
    assert (
        f"{latest_checkpoint(run_dir)} does not hold the weights {run_dir / 'config.yaml'} (with the overrides) expects"
        in err
    )
    assert "Error(s) in loading state_dict for CifarResNet" in err


# --------------------------------------------------------------------- fault injection
def comparable(run_dir) -> list[dict]:
    """metrics.jsonl without what depends on the clock."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("wall_time", "train/images_per_s")} for r in records]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_with_the_uninterrupted_metrics(tmp_path):
    """SIGKILL `pixlab train` while it makes its folder, then `pixlab resume` many times, each at a random
    moment or in the middle of a checkpoint write (one every step), resuming after each kill; the run must
    end with the metrics and checkpoints of a run that was never killed."""
    args = [f"{DIGITS}", *QUIET, "train.max_steps=115", "checkpoint.every=1", "tracking.log_every=5"]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"OMP_NUM_THREADS": "1"}
    log = tmp_path / "stderr.txt"

    def start(*command):
        with open(log, "w") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "shared.cli", *command],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def kill_when(process, moment) -> bool:
        """SIGKILL `process` as soon as `moment()` is true; False when it ended first."""
        while process.poll() is None:
            if moment():
                process.kill()
                process.wait()
                return True
            time.sleep(0.001)
        return False

    began = time.monotonic()
    assert start("train", *args, f"runs_dir={tmp_path / 'reference'}").wait() == 0, log.read_text()
    duration = time.monotonic() - began

    runs, rng = tmp_path / "killed", random.Random(0)
    runs.mkdir()
    moments = {
        "making the folder": lambda: any(p not in before for p in runs.iterdir()),  # its staging name, or just after
        "writing a checkpoint": lambda: any(runs.glob("*/checkpoints/.step-*.tmp-*")),
        "at a random time": lambda: time.monotonic() > deadline,
    }
    kills = {name: 0 for name in moments}
    for attempt in range(13):  # 12 kills at most, then a run to the end
        found, before = runs_in(runs), set(runs.iterdir())
        process = start("resume", str(found[0])) if found else start("train", *args, f"runs_dir={runs}")
        name = "making the folder" if attempt < 2 else rng.choice(["writing a checkpoint", "at a random time"])
        deadline = time.monotonic() + rng.uniform(0, duration / 2)  # a resume has less to do than the whole run
        if attempt < 12 and kill_when(process, moments[name]):
            kills[name] += 1
            continue
        assert process.wait() == 0, log.read_text()
        break

    (killed,) = runs_in(runs)
    (uninterrupted,) = runs_in(tmp_path / "reference")
    assert comparable(killed) == comparable(uninterrupted), kills
    assert [p.name for p in list_checkpoints(killed)] == [p.name for p in list_checkpoints(uninterrupted)]
    assert not [p for p in (killed / "checkpoints").iterdir() if p.name.startswith(".")]
    assert kills["making the folder"] == 2 and kills["writing a checkpoint"] >= 1, kills
