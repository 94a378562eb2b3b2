"""The `pixlab` command: the one place that knows every algorithm.

    pixlab train CONFIG [key=value ...]   start a run in runs/<date>-<time>-<name>/
    pixlab resume RUN_DIR                 continue a run from its latest checkpoint
    pixlab eval RUN_DIR [key=value ...]   test metrics of a run's latest checkpoint, as JSON (overrides:
                                          how to evaluate, e.g. eval.episodes=30; the run is not changed)
    pixlab bench classify [--json]        training images/s: our data path beside a plain DataLoader loop
    pixlab bench dqn [--json]             DQN agent steps/s while learning and replay bytes, beside SB3
    pixlab bench pixelcnn [--json]        PixelCNN sampling: the cached sampler's time beside the naive one's
    pixlab report RUNS... [--metric M] [--group-by KEY] [--out DIR]
                                          mean +/- std learning curves over seeds, a table (report.md, .csv)
                                          and sweep plots, from metrics.jsonl (shared/report.py)
    pixlab sweep SPEC [--workers N] [--backend local|slurm|wandb]
                                          the trials of a W&B-format sweep spec, one run folder each in
                                          runs/<sweep>/; run it again to resume (shared/sweep.py)
    pixlab reproduce NAME [--budget full|cpu|smoke] [--seeds K]
                                          a published result's sweep, then measured beside published
                                          (configs/reproduce/, shared/reproduce.py); no NAME: the entries;
                                          --table [--write-readme README.md]: the README's results
                                          table from runs/reproduce-*

Under torchrun (`torchrun --standalone --nproc_per_node N -m shared.cli train ...`) rank 0 writes the run.

Exit status: 0 done; 1 training diverged (sweep, reproduce: a trial failed for good); 2 bad input (config,
data file, checkpoint, sweep spec), with nothing written; 128 + signal number (130 for SIGINT, 143 for
SIGTERM) after a checkpoint was saved.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from shared.config import load_config
from shared.errors import PixlabError

# Importing an algorithm module registers its `algo:` name (shared.config.register).
ALGORITHM_MODULES = ("shared.classify", "rl.dqn", "rl.ram", "rl.reinforce", "generative.vae", "generative.dcgan", "generative.pixelcnn")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import_algorithms()
    try:
        return args.command(args)
    except PixlabError as e:
        print(f"pixlab: error: {e}", file=sys.stderr)
        return e.exit_code


def import_algorithms() -> None:
    """Register every `algo:` name; a sweep's worker process calls it too."""
    for module in ALGORITHM_MODULES:
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
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="evaluation settings, e.g. eval.episodes=30")
    evaluate.set_defaults(command=cmd_eval)

    bench = commands.add_parser("bench", help="measure training speed and print the figures")
    bench.add_argument("target", choices=["classify", "dqn", "pixelcnn"])
    bench.add_argument("--json", action="store_true", help="print the full report as JSON")
    bench.add_argument("--models", nargs="+", default=["lenet5", "resnet20"], help="models to time (classify)")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per loop; the median is reported")
    bench.add_argument("--steps-scale", type=float, default=1.0, help="multiply the timed steps (e.g. 0.1 for a smoke run)")
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    bench.add_argument("--steps", type=int, default=3000, help="agent steps per agent (dqn)")
    bench.add_argument("--learning-starts", type=int, default=1000, help="agent steps before learning (dqn)")
    bench.add_argument("--compile", action="store_true", help="time our DQN with torch.compile (dqn)")
    bench.add_argument("--batch-size", type=int, default=16, help="images sampled at once (pixelcnn)")
    bench.add_argument("--image-size", type=int, default=28, help="side of the square binary images (pixelcnn)")
    bench.set_defaults(command=cmd_bench)

    report = commands.add_parser("report", help="learning curves, a results table and sweep plots from run folders")
    report.add_argument("runs", nargs="+", type=Path, metavar="RUNS", help="run folders, or folders holding run folders (runs/<sweep>)")
    report.add_argument("--metric", help="the metric to report, e.g. test/error (default: each algorithm's own)")
    report.add_argument("--group-by", metavar="KEY", help="a dotted config key to group runs by (default: runs that differ only in seed)")
    report.add_argument("--out", type=Path, help="folder for the PNGs, report.md and report.csv (default: reports/<RUNS name>)")
    direction = report.add_mutually_exclusive_group()
    direction.add_argument("--higher-better", dest="higher_better", action="store_true", default=None, help="best = the maximum")
    direction.add_argument("--lower-better", dest="higher_better", action="store_false", help="best = the minimum")
    report.set_defaults(command=cmd_report)

    sweep = commands.add_parser("sweep", help="run the trials of a sweep spec (W&B sweep format); again: resume it")
    sweep.add_argument("spec", type=Path, help="a sweep YAML, e.g. configs/sweeps/lenet5_digits_lr.yaml")
    _add_pool_arguments(sweep, backends=("local", "slurm", "wandb"))
    sweep.add_argument("--retries", type=int, help="attempts after a crash, per trial (default: the spec's retries, else 2)")
    sweep.set_defaults(command=cmd_sweep)

    reproduce = commands.add_parser("reproduce", help="reproduce a published result: its sweep, then measured beside published")
    reproduce.add_argument("name", nargs="?", help="an entry of configs/reproduce/ (none: list them)")
    reproduce.add_argument("--budget", choices=["full", "cpu", "smoke"], default="full", help="full: the paper's protocol; cpu: a 2-core session; smoke: seconds")
    reproduce.add_argument("--seeds", type=int, help="run seeds 0..K-1 (default: the budget's)")
    reproduce.add_argument("--table", action="store_true", help="print the README's results table from runs/reproduce-*/reproduce.json")
    reproduce.add_argument("--write-readme", type=Path, metavar="README", help="with --table: write it between the README's markers instead")
    _add_pool_arguments(reproduce, backends=("local", "slurm"))
    reproduce.set_defaults(command=cmd_reproduce)
    return parser


def _add_pool_arguments(parser: argparse.ArgumentParser, backends: Sequence[str]) -> None:
    parser.add_argument("--workers", type=int, default=1, help="trials at once: processes here, Slurm jobs queued, or W&B agents (default 1)")
    parser.add_argument("--backend", choices=backends, default="local", help="where trials run (default local: processes here)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1)")


def cmd_train(args: argparse.Namespace) -> int:
    from shared.run import FollowerRun, Run
    from shared.train import distributed

    algorithm, cfg = load_config(args.config, args.overrides)
    dist = distributed.init()
    try:
        with Run.create(cfg, dist=dist) if dist.is_main else FollowerRun(cfg, dist) as run:
            if dist.is_main:
                print(f"pixlab: run folder {run.dir}", file=sys.stderr)
            algorithm.train(cfg, run)
    finally:
        distributed.shutdown()
    return _exit_status(run)


def cmd_resume(args: argparse.Namespace) -> int:
    from shared.run import FollowerRun, Run, latest_checkpoint
    from shared.train import distributed

    algorithm, cfg = _load_run_config(args.run_dir)
    dist = distributed.init()
    if latest_checkpoint(args.run_dir) is None and dist.is_main:
        print(f"pixlab: {args.run_dir} has no checkpoint yet; starting it from step 0", file=sys.stderr)
    try:
        with Run.reopen(cfg, args.run_dir, dist=dist) if dist.is_main else FollowerRun(cfg, dist, args.run_dir) as run:
            algorithm.train(cfg, run)
    finally:
        distributed.shutdown()
    return _exit_status(run)


def cmd_eval(args: argparse.Namespace) -> int:
    from shared.errors import CheckpointError
    from shared.run import latest_checkpoint, load_checkpoint

    algorithm, cfg = _load_run_config(args.run_dir, args.overrides)
    path = latest_checkpoint(args.run_dir)
    if path is None:
        raise CheckpointError(f"{args.run_dir} has no checkpoint to evaluate")
    if algorithm.evaluate is None:
        raise PixlabError(f"algorithm {algorithm.name!r} has no evaluation")
    metrics = algorithm.evaluate(cfg, load_checkpoint(path))
    print(json.dumps({"checkpoint": str(path)} | metrics, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.target == "pixelcnn":
        from generative.bench import bench_pixelcnn, format_report as format_sampling

        if args.batch_size < 1 or args.image_size < 1:
            raise PixlabError(f"--batch-size and --image-size must be >= 1, got {args.batch_size} and {args.image_size}")
        report = bench_pixelcnn(batch_size=args.batch_size, image_size=args.image_size, device=args.device)
        print(json.dumps(report, indent=2) if args.json else format_sampling(report))
        return 0
    if args.target == "dqn":
        from rl.bench import bench_dqn, format_report

        report = bench_dqn(steps=args.steps, learning_starts=args.learning_starts, compile=args.compile)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 0
    from shared.bench import bench_classify, format_table
    from shared.models import MODELS

    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise PixlabError(f"--models: unknown {unknown}; known: {', '.join(sorted(MODELS))}")
    report = bench_classify(args.models, repeats=args.repeats, device=args.device, steps_scale=args.steps_scale)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from shared.report import write_report

    out, markdown = write_report(args.runs, args.out, args.metric, args.group_by, args.higher_better)
    print(markdown)
    print(f"pixlab: report written to {out}", file=sys.stderr)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from shared.sweep import load_spec, run_sweep

    spec = load_spec(args.spec)
    return run_sweep(spec, run_trial, args.backend, args.workers, args.retries, args.threads).status


def cmd_reproduce(args: argparse.Namespace) -> int:
    from shared import reproduce

    if args.table and args.write_readme:
        reproduce.update_readme(args.write_readme)
    elif args.table:
        print(reproduce.results_table())
    elif args.name is None:
        print(reproduce.list_entries())
    else:
        return reproduce.reproduce(args.name, args.budget, run_trial, args.seeds, args.backend, args.workers, args.threads)
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
        print(f"pixlab: stopped by signal {run.stop_signal}; checkpoint saved. Continue with: pixlab resume {run.dir}", file=sys.stderr)
        return 128 + run.stop_signal
    return 0


if __name__ == "__main__":
    sys.exit(main())
