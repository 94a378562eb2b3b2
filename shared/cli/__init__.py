"""The `pixlab` command: the one place that knows every algorithm.

    pixlab train CONFIG [key=value ...]   start a run in runs/<date>-<time>-<name>/
    pixlab resume RUN_DIR                 continue a run from its newest intact checkpoint (one process at a time)
    pixlab eval RUN_DIR [key=value ...] [--out FILE]
                                          test metrics of a run's latest checkpoint, as JSON (overrides:
                                          how to evaluate, e.g. eval.episodes=30; the run is not changed;
                                          --out: also into FILE, with the command, machine and commit)
    pixlab bench classify [--json]        training images/s: our data path beside a plain DataLoader loop
    pixlab bench train [--json]           training images/s of LeNet-5, RAM, VAE, DCGAN, PixelCNN: pixlab's
                                          trainer path beside a pytorch/examples-style reference loop
    pixlab bench dqn [--json]             DQN agent steps/s while learning and replay bytes, beside SB3, and
                                          each part of our loop timed alone
    pixlab bench pixelcnn [--json]        PixelCNN sampling: the cached sampler's time beside the naive one's
    pixlab bench iwae [--images N] [--chunks C ...] [--json]
                                          the VAE's IWAE bound at k = 5000: images/s at each decoding chunk size
    pixlab bench smoke --device DEVICE [--steps N] [--set TRAINER:KEY=VALUE ...]
                                          every trainer for N steps on DEVICE (AMP and compile on cuda),
                                          steps/s each; exit 1 if any failed (shared/cli/smoke.py)
    pixlab attack RUN [...]               FGSM/PGD against a classify run over a sweep of epsilon (shared/cli/attack.py)
    pixlab explain RUN [...]              saliency, guided backprop, class models and their sanity check (shared/cli/explain.py)
    pixlab compress RUN [KEY=VALUE ...]   prune, share weights and quantize a classify run (shared/cli/compress.py)
    pixlab report RUNS... [--metric M] [--group-by KEY] [--out DIR] [--stats]
                                          mean learning curves over seeds, a table (report.md, .csv), sweep
                                          plots and a media gallery, from the run folders; --stats: intervals
                                          (shared/cli/report.py, shared/stats.py)
    pixlab report --wandb-workspace FILE  the W&B workspace layout of the registered algorithms (its panels)
    pixlab sweep SPEC [--workers N] [--backend local|slurm|wandb]
                                          the trials of a W&B-format sweep spec, one run folder each in
                                          runs/<sweep>/; run it again to resume (shared/cli/sweep/)
    pixlab reproduce NAME [--budget full|cpu|smoke] [--seeds K]
                                          a published result's sweep, then measured beside published
                                          (configs/reproduce/, shared/cli/reproduce.py); no NAME: the entries;
                                          --table [--write-readme README.md]: the README's results
                                          table from runs/reproduce-*

Under torchrun (`torchrun --standalone --nproc_per_node N -m shared.cli train ...`) rank 0 writes the run.

Exit status: 0 done; 1 training diverged: a NaN or infinite metric or weight (sweep, reproduce: a trial failed
for good); 2 bad input (config, data file, checkpoint, run folder, sweep spec) or a run another process is
writing, with nothing written; 128 + signal number (130 for SIGINT, 143 for
SIGTERM) after a checkpoint was saved.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from shared.config import REPO, load_config
from shared.errors import PixlabError

# An algorithm is a module of these packages that calls `register(...)` at its top level, the last line of
# every algorithm file (shared/config.py). The CLI finds them by that line instead of a hand-kept list, so a
# new algorithm is one new file; it reads the files' text instead of importing every module, so the modules
# that are not algorithms (benchmarks, env wrappers) and their optional dependencies stay out of every command.
ALGORITHM_PACKAGES = ("shared", "rl", "generative")
# Verbs that work on a finished run; each module adds its own parser (`add_parser(commands)`) and imports torch
# only inside its command, so that `pixlab --help` stays fast.
ANALYSIS_VERBS = ("attack", "explain", "compress")
REGISTER_CALL = re.compile(r"^register\(", re.MULTILINE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import_algorithms()
    try:
        return args.command(args)
    except PixlabError as e:
        print(f"pixlab: error: {e}", file=sys.stderr)
        return e.exit_code


def algorithm_modules() -> list[str]:
    """The dotted names of the modules that register an algorithm, package by package, in file-name order."""
    return [
        f"{package}.{path.stem}"
        for package in ALGORITHM_PACKAGES
        for path in sorted((REPO / package).glob("*.py"))
        if REGISTER_CALL.search(path.read_text(encoding="utf-8"))
    ]


def import_algorithms() -> None:
    """Register every `algo:` name; a sweep's worker process calls it too."""
    for module in algorithm_modules():
        importlib.import_module(module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixlab",
        description="Train, resume and evaluate pixlab runs. Each run is a folder under runs/.",
        epilog="Example: pixlab train configs/classify/lenet5_mnist.yaml optim.lr=0.01 seed=3",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="start a run from a YAML config and key=value overrides")
    train.add_argument("config", type=Path, help="a YAML file under configs/")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=0.01")
    train.set_defaults(command=cmd_train)

    resume = commands.add_parser("resume", help="continue a run from its latest checkpoint")
    resume.add_argument("run_dir", type=Path)
    resume.set_defaults(command=cmd_resume)

    evaluate = commands.add_parser("eval", help="print the test metrics of a run's latest checkpoint")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="evaluation settings, e.g. eval.episodes=30"
    )
    evaluate.add_argument(
        "--out", type=Path, help="also write the metrics to this JSON file, with the command, machine and commit"
    )
    evaluate.set_defaults(command=cmd_eval)

    bench = commands.add_parser("bench", help="measure training speed and print the figures")
    bench.add_argument("target", choices=["classify", "train", "dqn", "pixelcnn", "iwae", "smoke"])
    bench.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="TRAINER:KEY=VALUE",
        help="smoke: an override for one trainer, e.g. vae:train.batch_size=64 (repeatable)",
    )
    bench.add_argument("--json", action="store_true", help="print the full report as JSON")
    bench.add_argument(
        "--models", nargs="+", help="models to time (classify: default lenet5 resnet20; train: default all five)"
    )
    bench.add_argument("--trainers", nargs="+", help="smoke: the trainers to run (default all)")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per loop; the median is reported")
    bench.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply the timed steps (e.g. 0.1 for a smoke run)"
    )
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    bench.add_argument(
        "--steps", type=int, help="dqn: agent steps per agent (default 3000); smoke: steps per trainer (default 300)"
    )
    bench.add_argument("--learning-starts", type=int, default=1000, help="agent steps before learning (dqn)")
    bench.add_argument(
        "--compile", action="store_true", help="dqn: time our DQN with torch.compile; smoke: compile on CPU too"
    )
    bench.add_argument("--batch-size", type=int, default=16, help="images sampled at once (pixelcnn)")
    bench.add_argument("--image-size", type=int, default=28, help="side of the square binary images (pixelcnn)")
    bench.add_argument("--images", type=int, default=12, help="iwae: images bounded per chunk size")
    bench.add_argument(
        "--chunks", type=int, nargs="+", default=[8192, 512], help="iwae: latents decoded per forward, each timed"
    )
    bench.set_defaults(command=cmd_bench)

    report = commands.add_parser("report", help="learning curves, a results table and sweep plots from run folders")
    report.add_argument(
        "runs", nargs="*", type=Path, metavar="RUNS", help="run folders, or folders holding run folders (runs/<sweep>)"
    )
    report.add_argument("--metric", help="the metric to report, e.g. test/error (default: each algorithm's own)")
    report.add_argument(
        "--group-by",
        metavar="KEY",
        help="a dotted config key to group runs by (default: runs that differ only in seed)",
    )
    report.add_argument(
        "--out", type=Path, help="folder for the PNGs, report.md and report.csv (default: reports/<RUNS name>)"
    )
    direction = report.add_mutually_exclusive_group()
    direction.add_argument(
        "--higher-better", dest="higher_better", action="store_true", default=None, help="best = the maximum"
    )
    direction.add_argument("--lower-better", dest="higher_better", action="store_false", help="best = the minimum")
    report.add_argument(
        "--stats",
        action="store_true",
        help="and per group mean, median and IQM of the final values with 95%% bootstrap intervals; for two groups "
        "the probability of improvement (stats-*.png)",
    )
    report.add_argument(
        "--curves-only",
        action="store_true",
        help="the curves and the table alone: no sweep plot and no gallery of the runs' media (a report kept in "
        "the repository, where the run folders are not)",
    )
    report.add_argument(
        "--wandb-workspace",
        type=Path,
        metavar="FILE",
        help="instead: write the W&B workspace layout of every algorithm to FILE (configs/wandb/workspace.yaml)",
    )
    report.set_defaults(command=cmd_report)

    sweep = commands.add_parser("sweep", help="run the trials of a sweep spec (W&B sweep format); again: resume it")
    sweep.add_argument("spec", type=Path, help="a sweep YAML, e.g. configs/sweeps/lenet5_digits_lr.yaml")
    _add_pool_arguments(sweep, backends=("local", "slurm", "wandb"))
    sweep.add_argument(
        "--retries", type=int, help="attempts after a crash, per trial (default: the spec's retries, else 2)"
    )
    sweep.set_defaults(command=cmd_sweep)

    reproduce = commands.add_parser(
        "reproduce", help="reproduce a published result: its sweep, then measured beside published"
    )
    reproduce.add_argument("name", nargs="?", help="an entry of configs/reproduce/ (none: list them)")
    reproduce.add_argument(
        "--budget",
        choices=["full", "cpu", "smoke"],
        default="full",
        help="full: the paper's protocol; cpu: a 2-core session; smoke: seconds",
    )
    reproduce.add_argument("--seeds", type=int, help="run seeds 0..K-1 (default: the budget's)")
    reproduce.add_argument(
        "--table", action="store_true", help="print the README's results table from runs/reproduce-*/reproduce.json"
    )
    reproduce.add_argument(
        "--write-readme",
        type=Path,
        metavar="README",
        help="with --table: write it between the README's markers instead",
    )
    _add_pool_arguments(reproduce, backends=("local", "slurm"))
    reproduce.set_defaults(command=cmd_reproduce)

    for verb in ANALYSIS_VERBS:
        importlib.import_module(f"shared.cli.{verb}").add_parser(commands)
    return parser


def _add_pool_arguments(parser: argparse.ArgumentParser, backends: Sequence[str]) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="trials at once: processes here, Slurm jobs queued, or W&B agents (default 1)",
    )
    parser.add_argument(
        "--backend", choices=backends, default="local", help="where trials run (default local: processes here)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1)")


def cmd_train(args: argparse.Namespace) -> int:
    algorithm, cfg = load_config(args.config, args.overrides)  # every check runs here, before the folder exists
    return _train(algorithm, cfg, run_dir=None)


def cmd_resume(args: argparse.Namespace) -> int:
    algorithm, cfg = _load_run_config(args.run_dir)
    return _train(algorithm, cfg, run_dir=args.run_dir)


def _train(algorithm, cfg, run_dir: Optional[Path]) -> int:
    """`pixlab train` (run_dir None: a new run folder) and `pixlab resume RUN_DIR`; under torchrun on every rank."""
    from shared.run import Run
    from shared.train import distributed

    dist = distributed.init()
    try:
        with Run.create(cfg, dist=dist) if run_dir is None else Run.reopen(cfg, run_dir, dist=dist) as run:
            if run.fresh and dist.is_main:
                print(f"pixlab: run folder {run.dir}", file=sys.stderr)
            algorithm.train(cfg, run)
    finally:
        distributed.shutdown()
    return _exit_status(run)


def cmd_eval(args: argparse.Namespace) -> int:
    from shared.checkpoint import load_latest
    from shared.errors import CheckpointError

    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):  # before, not after, the work
        raise PixlabError(f"--out {args.out}: expected a file path in an existing folder")
    algorithm, cfg = _load_run_config(args.run_dir, args.overrides)
    if algorithm.evaluate is None:
        raise PixlabError(f"algorithm {algorithm.name!r} has no evaluation")
    found = load_latest(args.run_dir)
    if found is None:
        raise CheckpointError(f"{args.run_dir} has no checkpoint to evaluate")
    path, checkpoint = found
    try:
        metrics = algorithm.evaluate(cfg, checkpoint)
    except KeyError as e:  # the checkpoint has no state under a name this algorithm reads
        raise CheckpointError(
            f"{path} is not a {algorithm.name} checkpoint of {args.run_dir / 'config.yaml'}: it has no {e} state "
            f"(it holds {', '.join(sorted(checkpoint['state']))})"
        ) from None
    except RuntimeError as e:  # load_state_dict: the weights are another architecture's
        if "state_dict" not in str(e):
            raise
        raise CheckpointError(
            f"{path} does not hold the weights {args.run_dir / 'config.yaml'} (with the overrides) expects: "
            f"{' '.join(str(e).split())[:300]}"
        ) from None
    print(json.dumps({"checkpoint": str(path)} | metrics, indent=2))
    broken = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if broken:  # the same rule as in training: a NaN or inf is a failure, not a result
        print(f"pixlab: error: {', '.join(broken)} of {path} not finite", file=sys.stderr)
        return 1
    if args.out is not None:
        _write_evaluation(args, cfg, path, metrics)
    return 0


def _write_evaluation(args: argparse.Namespace, cfg, checkpoint: Path, metrics: dict) -> None:
    """`pixlab eval --out FILE`: the printed metrics as a result file a README can cite, with what made them."""
    import time

    from shared.atomic import atomic_write_text
    from shared.machine import describe_run_machine
    from shared.provenance import git_state

    record = {
        "command": " ".join(["pixlab eval", str(args.run_dir), *args.overrides]),
        "checkpoint": str(checkpoint),
        "metrics": metrics,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "git": git_state(),
        "machine": describe_run_machine(cfg),
    }
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(f"pixlab: wrote {args.out}", file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.overrides and args.target != "smoke":
        raise PixlabError(f"--set {args.overrides} is for `pixlab bench smoke` only")
    if args.target == "smoke":
        from shared.cli.smoke import TRAINERS, format_smoke, smoke

        unknown = [t for t in (args.trainers or []) + [o.split(":", 1)[0] for o in args.overrides] if t not in TRAINERS]
        if unknown or any(":" not in o for o in args.overrides):
            raise PixlabError(
                f"smoke: unknown trainers {unknown} or overrides not TRAINER:KEY=VALUE in {args.overrides}; "
                f"trainers: {', '.join(TRAINERS)}"
            )
        steps = 300 if args.steps is None else args.steps
        if steps < 1:
            raise PixlabError(f"--steps must be >= 1, got {steps}")
        report = smoke(args.device, steps, args.trainers or tuple(TRAINERS), args.compile, args.overrides)
        print(json.dumps(report, indent=2) if args.json else format_smoke(report))
        return 0 if all(r["ok"] for r in report["results"]) else 1
    if args.target == "train":
        from generative.bench import TRAIN_CASES as generative_cases
        from rl.bench import TRAIN_CASES as rl_cases
        from shared.cli.bench import LENET5, bench_train, format_train

        cases = {"lenet5": LENET5} | rl_cases | generative_cases
        unknown = [m for m in args.models or [] if m not in cases]
        if unknown:
            raise PixlabError(f"--models: unknown {unknown} for bench train; known: {', '.join(cases)}")
        chosen = [cases[m] for m in args.models or cases]
        return _print_report(bench_train(chosen, args.repeats, args.device, args.steps_scale), format_train, args.json)
    if args.target == "pixelcnn":
        from generative.bench import bench_pixelcnn
        from generative.bench import format_report as format_sampling

        if args.batch_size < 1 or args.image_size < 1:
            raise PixlabError(
                f"--batch-size and --image-size must be >= 1, got {args.batch_size} and {args.image_size}"
            )
        report = bench_pixelcnn(batch_size=args.batch_size, image_size=args.image_size, device=args.device)
        print(json.dumps(report, indent=2) if args.json else format_sampling(report))
        return 0
    if args.target == "iwae":
        from generative.bench import IWAE_K, bench_iwae, format_iwae

        grouped = 2 * IWAE_K  # from this chunk on, images share a chunk and draw other latents
        if args.images < 1 or args.repeats < 1 or not all(1 <= c < grouped for c in args.chunks):
            raise PixlabError(
                f"--images and --repeats must be >= 1 and each of --chunks in 1..{grouped - 1} (from 2k = {grouped:,} "
                f"on, images share a chunk and draw other latents), got {args.images}, {args.repeats} and {args.chunks}"
            )
        return _print_report(bench_iwae(args.images, args.chunks, args.repeats, args.device), format_iwae, args.json)
    if args.target == "dqn":
        from rl.bench import bench_dqn, format_report

        report = bench_dqn(
            steps=3000 if args.steps is None else args.steps, learning_starts=args.learning_starts, compile=args.compile
        )
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 0
    from shared.cli.bench import bench_classify, format_table
    from shared.models import MODELS

    models = args.models or ["lenet5", "resnet20"]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise PixlabError(f"--models: unknown {unknown}; known: {', '.join(sorted(MODELS))}")
    return _print_report(
        bench_classify(models, repeats=args.repeats, device=args.device, steps_scale=args.steps_scale),
        format_table,
        args.json,
    )


def _print_report(report: dict, format_text, as_json: bool) -> int:
    print(json.dumps(report, indent=2) if as_json else format_text(report))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from shared.cli.report import wandb_workspace, write_report

    if args.wandb_workspace is not None:
        if args.runs:
            raise PixlabError("--wandb-workspace writes the layout of the registered algorithms; give it no RUNS")
        args.wandb_workspace.write_text(wandb_workspace())
        print(f"pixlab: W&B workspace layout written to {args.wandb_workspace}", file=sys.stderr)
        return 0
    if not args.runs:
        raise PixlabError("pixlab report needs RUNS: run folders, or folders holding run folders (runs/<sweep>)")
    out, markdown = write_report(
        args.runs, args.out, args.metric, args.group_by, args.higher_better, args.stats, args.curves_only
    )
    print(markdown)
    print(f"pixlab: report written to {out}", file=sys.stderr)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from shared.cli.sweep import load_spec, run_sweep

    spec = load_spec(args.spec)
    return run_sweep(spec, run_trial, args.backend, args.workers, args.retries, args.threads).status


def cmd_reproduce(args: argparse.Namespace) -> int:
    from shared.cli import reproduce

    if args.table and args.write_readme:
        reproduce.update_readme(args.write_readme)
    elif args.table:
        print(reproduce.results_table())
    elif args.name is None:
        print(reproduce.list_entries())
    else:
        return reproduce.reproduce(
            args.name, args.budget, run_trial, args.seeds, args.backend, args.workers, args.threads
        )
    return 0


def run_trial(config: str, overrides: Sequence[str], run_dir: Optional[str]) -> int:
    """A sweep's trial, in its worker process: `pixlab train CONFIG OVERRIDES`, or `pixlab resume RUN_DIR`
    for a trial whose folder an interrupted or crashed attempt left. Errors propagate to the sweep."""
    import_algorithms()
    if run_dir is None:
        return cmd_train(argparse.Namespace(config=Path(config), overrides=list(overrides)))
    return cmd_resume(argparse.Namespace(run_dir=Path(run_dir)))


def _load_run_config(run_dir: Path, overrides: Sequence[str] = ()):
    config = Path(run_dir) / "config.yaml"
    if not config.exists():
        raise PixlabError(f"{run_dir} is not a run folder: it has no config.yaml")
    return load_config(config, overrides)


def _exit_status(run) -> int:
    if run.stop_signal is not None:
        if not run.dist.is_main:
            return 128 + run.stop_signal
        print(
            f"pixlab: stopped by signal {run.stop_signal}; checkpoint saved. Continue with: pixlab resume {run.dir}",
            file=sys.stderr,
        )
        return 128 + run.stop_signal
    return 0
