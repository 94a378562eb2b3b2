"""`pixlab bench smoke --device DEVICE`: every trainer for a few hundred steps on one device, steps/s each.

The GPU-readiness check: each trainer runs from its own config under configs/, shortened by overrides, with
mixed precision and torch.compile on when the device is cuda (`accel.precision=auto`, `accel.compile=true`;
on CPU precision auto and compile only with --compile), in a throwaway run folder. Any exception is that
trainer's failure: the others still run, and the command exits 1.

Data: classify and PixelCNN read the built-in sklearn digits, DQN and REINFORCE play Atari (ale-py's ROMs);
RAM, the VAE and DCGAN need MNIST in $PIXLAB_DATA/mnist (their downloads are switched off here, so a missing
file fails at once with its path).

`steps` counts each trainer's own unit: optimizer steps for the epoch trainers and DQN (which learns from its
first batch, one update per 4 agent steps), agent steps for REINFORCE (it updates after each finished episode).
steps/s is read from the trainer's own log lines (train/images_per_s / batch, or train/steps_per_s), the
median of the windows after the first (which holds compilation and the first allocations) when there are more.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
import traceback
from typing import Sequence

import torch

from shared.config import ALGORITHMS, REPO, load_config
from shared.machine import describe_machine, format_machine
from shared.train.accel import resolve_precision
from shared.train.device import select_device
from shared.train.reference import throwaway_run

SNAPSHOT_EVERY = 10**9  # no checkpoints on the way: only the final save

# trainer -> (its config under configs/, overrides of `steps` steps that finish fast, the unit of its steps/s)
TRAINERS = {
    "classify": ("classify/lenet5_digits.yaml", ["train.max_steps={steps}", "train.epochs=100000"], "updates"),
    "dqn": (
        "dqn/pong.yaml",
        [
            "total_steps={dqn_steps}",
            "agent.learning_starts=32",
            "agent.buffer_size=10000",
            "agent.target_update=100",
            "eval.every=0",
            "eval.episodes=1",
            "eval.num_envs=1",
            "eval.max_episode_frames=200",
            "eval.video=false",
        ],
        "agent steps",
    ),
    "reinforce": (
        "reinforce/breakout_glimpses.yaml",
        ["total_steps={steps}", "env.num_envs=2", "agent.batch_episodes=1"],
        "agent steps",
    ),
    "ram": ("ram/mnist.yaml", ["train.max_steps={steps}", "task.test_limit=100", "task.download=false"], "updates"),
    "pixelcnn": ("pixelcnn/digits.yaml", ["train.max_steps={steps}", "train.epochs=100000"], "updates"),
    "vae": (
        "vae/binarized_mnist.yaml",
        ["train.max_steps={steps}", "eval.at_end=false", "metrics.network=none", "data.download=false"],
        "updates",
    ),
    "dcgan": (
        "dcgan/mnist.yaml",
        ["train.max_steps={steps}", "metrics.network=none", "data.download=false"],
        "updates",
    ),
}
NEEDS_MNIST = ("ram", "vae", "dcgan")


def smoke(
    device: str,
    steps: int = 300,
    trainers: Sequence[str] = tuple(TRAINERS),
    compile: bool = False,
    extra: Sequence[str] = (),
) -> dict:
    """Run each of `trainers` for `steps` steps on `device`; `extra` holds 'TRAINER:KEY=VALUE' overrides.

    -> {machine, steps, results: [{trainer, ok, steps_per_s, unit, precision, compile, seconds, error}]}.
    """
    target = select_device(device)
    results = []
    for name in trainers:
        overrides = [e.split(":", 1)[1] for e in extra if e.split(":", 1)[0] == name]
        results.append(_run_one(name, target, steps, compile, overrides))
    return {"benchmark": "smoke", "machine": describe_machine(target), "steps": steps, "results": results}


def smoke_overrides(name: str, device: torch.device, steps: int, compile: bool) -> list[str]:
    """The overrides that shorten trainer `name` to `steps` steps on `device`, with accel where its config has one."""
    _, overrides, _ = TRAINERS[name]
    common = [
        f"device={device.type}",
        "tracking.wandb=disabled",
        f"tracking.log_every={max(1, steps // 4)}",
        f"checkpoint.every={SNAPSHOT_EVERY}",
    ]
    filled = [o.format(steps=steps, dqn_steps=32 + 4 * steps) for o in overrides]
    # A config without an `accel` section takes no accel keys: it runs as it is, and gains them once it has one.
    if "accel" in {f.name for f in dataclasses.fields(ALGORITHMS[name].config)}:
        cuda = device.type == "cuda"
        filled += ["accel.precision=auto"] + (["accel.compile=true"] if cuda or compile else [])
    return filled + common


def _run_one(name: str, device: torch.device, steps: int, compile: bool, extra: list[str]) -> dict:
    config, _, unit = TRAINERS[name]
    result = {"trainer": name, "config": f"configs/{config}", "unit": f"{unit}/s", "ok": False}
    start = time.perf_counter()
    try:
        _, cfg = load_config(REPO / "configs" / config, smoke_overrides(name, device, steps, compile) + extra)
        accel = getattr(cfg, "accel", None)
        result["precision"] = "fp32 (no accel section)" if accel is None else resolve_precision(accel.precision, device)
        result["compile"] = bool(accel is not None and accel.compile)
        records = throwaway_run(cfg, ALGORITHMS[name].train, ["pixlab", "bench", "smoke", name])
        result["steps_per_s"] = round(_steps_per_s(records, cfg), 2)
        result["ok"] = True
    except Exception as e:  # any failure is this trainer's: report it and go on with the others
        traceback.print_exc(file=sys.stderr)
        result["error"] = f"{type(e).__name__}: {e}"
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _steps_per_s(records: list[dict], cfg) -> float:
    if any("train/steps_per_s" in r for r in records):
        rates = [r["train/steps_per_s"] for r in records if "train/steps_per_s" in r]
    else:
        rates = [r["train/images_per_s"] / cfg.train.batch_size for r in records if "train/images_per_s" in r]
    if not rates:
        raise RuntimeError("the run logged no speed: no train/steps_per_s or train/images_per_s line")
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def format_smoke(report: dict) -> str:
    lines = [f"smoke: {report['steps']} steps per trainer on {format_machine(report['machine'])}"]
    lines.append(f"{'trainer':<10} {'steps/s':>9} {'unit':<14} {'precision':<24} {'compile':<8} {'seconds':>8}  result")
    for r in report["results"]:
        speed = f"{r['steps_per_s']:>9.2f}" if r["ok"] else f"{'-':>9}"
        outcome = "ok" if r["ok"] else f"FAILED: {r['error'][:200]}"
        precision, compiled = r.get("precision", "-"), str(r.get("compile", "-"))
        lines.append(
            f"{r['trainer']:<10} {speed} {r['unit']:<14} {precision:<24} {compiled:<8} {r['seconds']:>8.1f}  {outcome}"
        )
    return "\n".join(lines)
