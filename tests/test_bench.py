"""The benches run and print their figures, with the machine they ran on (speed goals live in the benches, not
here: no timing is asserted); `pixlab bench smoke` runs every trainer and fails when one does."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import run_cli

from shared.config import ALGORITHMS
from shared.machine import describe_machine, format_machine

FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx"}


def check_machine(machine: dict) -> None:
    assert set(machine["isa"]) == FLAGS and machine["threads"] >= 1 and machine["torch"] == torch.__version__
    assert machine["cpu"] and machine["device"] == "cpu"


def test_describe_machine_reports_torch_s_own_isa_probes():
    machine = describe_machine(torch.device("cpu"))
    check_machine(machine)
    assert machine["isa"]["avx2"] == torch.cpu._is_avx2_supported()
    assert machine["isa"]["amx"] == torch.cpu._is_amx_tile_supported()
    assert machine["isa"]["avx512_bf16"] == torch.cpu._is_avx512_bf16_supported()
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    line = format_machine(
        machine | {"cpu": "Some CPU", "threads": 2, "cores": 4, "isa": dict.fromkeys(FLAGS, False) | {"avx2": True}}
    )
    assert line == f"Some CPU, avx2, 2 of 4 threads, torch {torch.__version__}, cpu"


def test_bench_classify_prints_both_loops_and_their_ratio(tmp_path):
    result = run_cli(
        "bench", "classify", "--json", "--models", "lenet5", "--repeats", "1", "--steps-scale", "0.05", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    check_machine(report["machine"])
    (row,) = report["results"]
    assert row["model"] == "lenet5" and row["batch_size"] == 128 and row["steps_timed"] == 7
    assert row["pixlab_images_per_s"] > 0 and row["dataloader_images_per_s"] > 0
    assert abs(row["ratio"] - row["pixlab_images_per_s"] / row["dataloader_images_per_s"]) < 0.01
    data = row["data_path_only"]
    assert data["pixlab_batches_per_s"] > 0 and data["dataloader_batches_per_s"] > 0


def test_bench_rejects_an_unknown_model(tmp_path):
    result = run_cli("bench", "classify", "--models", "lenet6", cwd=tmp_path)
    assert result.returncode == 2 and "--models: unknown ['lenet6']" in result.stderr
    result = run_cli("bench", "train", "--models", "resnet20", cwd=tmp_path)
    assert (
        result.returncode == 2
        and "unknown ['resnet20'] for bench train; known: lenet5, ram, vae, dcgan, pixelcnn" in result.stderr
    )


def test_bench_train_runs_the_trainer_beside_the_reference_loop(tmp_path):
    result = run_cli(
        "bench",
        "train",
        "--json",
        "--models",
        "lenet5",
        "--repeats",
        "1",
        "--steps-scale",
        "0.1",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    check_machine(report["machine"])
    (row,) = report["results"]
    assert row["model"] == "lenet5" and row["config"] == "configs/classify/lenet5_mnist.yaml"
    assert row["batch_size"] == 128 and row["steps_timed"] == 10
    assert row["pixlab_images_per_s"] > 0 and row["reference_images_per_s"] > 0
    assert abs(row["ratio"] - row["pixlab_images_per_s"] / row["reference_images_per_s"]) < 0.01
    assert row["pixlab_precision"] in ("fp32", "bf16") and row["reference_precision"] == "fp32"
    assert not list(tmp_path.glob("runs")), "the trainer's run folder is a throwaway"


def test_bench_dqn_runs_ours_and_sb3_times_our_parts_and_reports_replay_sizes(tmp_path):
    pytest.importorskip("stable_baselines3")
    steps, starts = 750, 200  # one timed window of 250 steps after the warm-up
    result = run_cli("bench", "dqn", "--json", "--steps", str(steps), "--learning-starts", str(starts), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    check_machine(report["machine"])
    ours, theirs = report["pixlab"], report["sb3"]
    assert ours["gradient_steps"] == steps // 4 - (starts - 1) // 4 and theirs["gradient_steps"] > 0
    first = report["timed_from_step"]
    assert first == starts + 250  # the first 250 learning steps (allocations, the replay's first fills) are not timed
    assert ours["learning_steps_per_s"] > 0 and theirs["learning_steps_per_s"] > 0
    assert ours["bytes_per_transition"] < 7200 < 56000 < theirs["bytes_per_transition"]
    assert ours["precision"] in ("fp32", "bf16") and theirs["precision"] == "fp32"
    parts = ours["parts"]
    assert set(parts["ms_per_call"]) == {"env_step", "act", "replay_write", "replay_sample", "train_step"}
    assert all(ms > 0 for ms in parts["ms_per_call"].values())
    ms = parts["ms_per_call"]
    # epsilon falls linearly from 1 to 0.01 over the run's steps: its mean over the timed steps first..steps-1
    assert parts["greedy_fraction"] == pytest.approx(0.99 * (first + steps - 1) / 2 / steps, abs=1e-3)
    summed = (
        ms["env_step"]
        + ms["replay_write"]
        + parts["greedy_fraction"] * ms["act"]
        + (ms["replay_sample"] + ms["train_step"]) / 4
    )
    assert parts["ms_per_agent_step"] == pytest.approx(summed, abs=0.01)
    assert parts["loop_share"] == pytest.approx(ours["learning_steps_per_s"] / parts["steps_per_s"], abs=1e-3)


def test_bench_dqn_refuses_a_run_too_short_to_time(tmp_path):
    result = run_cli("bench", "dqn", "--steps", "600", "--learning-starts", "200", cwd=tmp_path)
    assert result.returncode == 2 and "--steps 600 leaves no timed window" in result.stderr, result.stderr[-2000:]
    assert "at least --learning-starts (200) + 500" in result.stderr


# ---- pixlab bench smoke


def smoke_json(tmp_path, *args: str):
    result = run_cli("bench", "smoke", "--json", "--device", "cpu", "--steps", "2", *args, cwd=tmp_path, timeout=900)
    return result, (json.loads(result.stdout) if result.stdout else None)


def test_bench_smoke_runs_every_trainer_and_prints_their_speeds(tmp_path, mnist_root, monkeypatch):
    monkeypatch.setenv("PIXLAB_DATA", str(mnist_root))  # RAM, the VAE and DCGAN read MNIST
    result, report = smoke_json(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    check_machine(report["machine"])
    assert [r["trainer"] for r in report["results"]] == [
        "classify",
        "dqn",
        "reinforce",
        "ram",
        "pixelcnn",
        "vae",
        "dcgan",
    ]
    for r in report["results"]:
        assert r["ok"] and r["steps_per_s"] > 0 and r["compile"] is False, r
    units = {r["trainer"]: r["unit"] for r in report["results"]}
    assert units["dqn"] == units["reinforce"] == "agent steps/s" and units["vae"] == "updates/s"
    table = run_cli("bench", "smoke", "--device", "cpu", "--steps", "2", "--trainers", "classify", cwd=tmp_path)
    assert table.returncode == 0 and "classify" in table.stdout and "ok" in table.stdout


def test_bench_smoke_exits_1_when_a_trainer_fails_and_runs_the_others(tmp_path):
    result, report = smoke_json(tmp_path, "--trainers", "classify", "pixelcnn", "--set", "pixelcnn:model.hidden=-4")
    assert result.returncode == 1
    classify, pixelcnn = report["results"]
    assert classify["ok"] and classify["steps_per_s"] > 0
    assert not pixelcnn["ok"] and "model.hidden" in pixelcnn["error"] and "steps_per_s" not in pixelcnn


def test_bench_smoke_rejects_unknown_trainers_and_bad_overrides(tmp_path):
    for args in (["--trainers", "dqn2"], ["--set", "vae.train.batch_size=4"], ["--set", "gan:train.batch_size=4"]):
        result = run_cli("bench", "smoke", "--device", "cpu", *args, cwd=tmp_path)
        assert result.returncode == 2 and "smoke: unknown trainers" in result.stderr, (args, result.stderr)
    assert run_cli("bench", "dqn", "--set", "dqn:agent.gamma=1", cwd=tmp_path).returncode == 2


def test_smoke_passes_accel_keys_only_to_configs_that_have_them(monkeypatch):
    from shared.cli import import_algorithms
    from shared.cli.smoke import smoke_overrides

    import_algorithms()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert smoke_overrides("vae", cpu, 8, compile=False) == [
        "train.max_steps=8",
        "eval.at_end=false",
        "metrics.network=none",
        "data.download=false",
        "accel.precision=auto",
        "device=cpu",
        "tracking.wandb=disabled",
        "tracking.log_every=2",
        "checkpoint.every=1000000000",
    ]
    assert "accel.compile=true" in smoke_overrides("vae", cuda, 8, compile=False)
    assert "accel.compile=true" in smoke_overrides("vae", cpu, 8, compile=True)
    assert "total_steps=64" in smoke_overrides("dqn", cpu, 8, compile=False)  # learns from step 32: 8 updates

    @dataclasses.dataclass
    class NoAccel:  # a trainer's config from before its `accel:` section
        algo: str = "vae"

    monkeypatch.setitem(ALGORITHMS, "vae", dataclasses.replace(ALGORITHMS["vae"], config=NoAccel))
    assert not [o for o in smoke_overrides("vae", cuda, 8, compile=True) if o.startswith("accel.")]
