"""`pixlab reproduce NAME`: a published result, the sweep that measures it, and measured beside published.

    pixlab reproduce lenet5-mnist --budget cpu    # runs/reproduce-lenet5-mnist-cpu/: the seeds' runs, then
                                                  # reproduce.json, reproduce.md (the table it prints)
                                                  # and curve/ (the learning curve: pixlab report)
    pixlab reproduce                              # the entries: published figures and budgets
    pixlab reproduce --table                      # the README's results table, from every reproduce.json

An entry is a file configs/reproduce/<name>.yaml:

    model: LeNet-5
    task: MNIST test error
    config: configs/classify/lenet5_mnist.yaml
    metric: {name: test/error, decimals: 2}      # a summary key of the trainer, shown with 2 decimals
    published: {value: 0.95, source: "LeCun et al. 1998 ..."}   # value in the shown unit; null + text if none
    budgets:
      full:  {seeds: 3, overrides: [], about: the paper's protocol}
      cpu:   {seeds: 3, overrides: [...], about: what a 2-core CPU does in a session}
      smoke: {seeds: 2, overrides: [...], about: seconds, for tests}

The metric's goal, unit and scale are the ones the config's algorithm registered (shared/config.py,
`register`): test/error is logged as a fraction and shown in %.

A budget is overrides on the entry's config (or on its own `config:`); an item that is itself a list is
spliced in, so budgets can share a YAML anchor and differ in a key or two:
`full: {overrides: [&protocol [task.val_size=6000, ...], train.epochs=100]}`, `cpu: {overrides: [*protocol,
train.epochs=60]}`. `full` is the paper's protocol
as far as the config can state it, `cpu` what this project's 2-core machine does in well under the
3 hours of a session, and `smoke` a run of seconds that needs no downloaded data where the trainer can
read the built-in `digits` set (the RAM, VAE and DCGAN trainers read MNIST only, so their smoke budgets
need the MNIST files).

An entry whose runs take another entry's runs as input says so: `needs: {entry: mlp1200-mnist, key:
train.distill.teacher}` first reproduces mlp1200-mnist with the same budget and seeds (finding, resuming or
making its runs), then gives the trial of seed s `train.distill.teacher=<mlp1200-mnist's run folder of seed s>`.

How it runs: the entry and budget become a grid sweep spec with no parameters, the budget's overrides
and its seeds (or --seeds K: seeds 0..K-1), named reproduce-<name>-<budget>, and shared/cli/sweep/ runs it:
the same checks before anything is written, one run folder per seed, retries, and resume, so running the
command again continues a cut-short cpu budget from its checkpoints. Then the metric is read from each
seed's final summary in metrics.jsonl; measured is the mean +/- the sample standard deviation over
seeds (ddof 1; none for one seed), difference is measured - published.

Verdict: the 95% bootstrap interval of the mean over seeds (shared/stats.py: percentile, 10,000 resamples,
seeded) beside the published figure. **reached**: the interval contains the published figure or lies on its
better side (below it for a metric to minimize, above for one to maximize); **short**: it lies wholly on the
worse side; **single seed**: one seed, no interval; **n.a.**: no published figure, or no seed finished.
reproduce.json keeps the interval and the verdict; for one written before they existed, `--table` computes
them from its per-seed values.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from shared import stats
from shared.atomic import atomic_write_text
from shared.cli.sweep import TrialFunction, parse_spec, resolve_config_path, run_sweep
from shared.cli.sweep.state import read_state
from shared.config import REPO, Algorithm, Metric, check_keys, did_you_mean, load_config
from shared.errors import ConfigError, PixlabError
from shared.provenance import git_state
from shared.tracking import read_summary

ENTRIES = REPO / "configs" / "reproduce"
BUDGETS = ("full", "cpu", "smoke")
ENTRY_KEYS = ("model", "task", "config", "metric", "published", "budgets", "slurm", "needs")
METRIC_KEYS = ("name", "decimals")
PUBLISHED_KEYS = ("value", "source", "text")
BUDGET_KEYS = ("seeds", "overrides", "about", "config")
NEEDS_KEYS = ("entry", "key")


@dataclass
class Budget:
    seeds: int
    overrides: list[str]
    about: str
    config: Optional[str] = None  # another config than the entry's (a CPU-sized variant)


@dataclass(frozen=True)
class Needs:
    """An entry whose runs are an input of this one's (a distillation's teachers, a compression's sources)."""

    entry: str  # run first, with the same budget and seeds
    key: str  # the dotted config key that gets, in each trial, the needed entry's run folder of the same seed


@dataclass
class Entry:
    name: str
    path: Path
    model: str
    task: str
    config: str
    metric: Metric  # as the config's algorithm registered it
    curve: Metric  # the learning curve's: `metric`, or where that comes once at the end, the first score that does not
    decimals: int
    published: dict
    budgets: dict[str, Budget]
    slurm: dict = field(default_factory=dict)
    needs: Optional[Needs] = None

    def shown(self, value: float) -> str:
        """A metric value in its unit and the entry's precision: 0.95%, 81.30 nats/image, 18.9."""
        unit = self.metric.unit
        return f"{value:.{self.decimals}f}{unit if unit in ('%', '') else ' ' + unit}"


def entry_names() -> list[str]:
    return sorted(p.stem for p in ENTRIES.glob("*.yaml"))


def load_entry(name: str) -> Entry:
    """Read configs/reproduce/<name>.yaml; an unknown name or key is a ConfigError (exit 2) naming it."""
    path = ENTRIES / f"{name}.yaml"
    if not path.is_file():
        known = entry_names()
        raise ConfigError(
            f"unknown reproduce entry {name!r}{did_you_mean(name, known)}; known entries: {', '.join(known)}"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    _require_keys(raw, ENTRY_KEYS, ("model", "task", "config", "metric", "published", "budgets"), str(path), "")
    _require_keys(raw["metric"], METRIC_KEYS, ("name",), str(path), "metric.")
    _require_keys(raw["published"], PUBLISHED_KEYS, ("value", "source"), str(path), "published.")
    _require_keys(raw["budgets"], BUDGETS, BUDGETS, str(path), "budgets.")
    budgets = {}
    for budget, body in raw["budgets"].items():
        _require_keys(body, BUDGET_KEYS, ("seeds", "overrides", "about"), str(path), f"budgets.{budget}.")
        overrides = [o for item in body["overrides"] or [] for o in (item if isinstance(item, list) else [item])]
        budgets[budget] = Budget(int(body["seeds"]), overrides, str(body["about"]), body.get("config"))
    algorithm, cfg = load_config(resolve_config_path(raw["config"], str(path)))
    metric = _registered_metric(algorithm, raw["metric"]["name"], path)
    curve = metric if not metric.once else next(m for m in algorithm.metrics if m.goal and not m.once)
    decimals = raw["metric"].get("decimals", 2)
    return Entry(
        name,
        path,
        raw["model"],
        raw["task"],
        raw["config"],
        metric,
        curve,
        decimals,
        raw["published"],
        budgets,
        raw.get("slurm") or {},
        _parse_needs(raw.get("needs"), name, cfg, path),
    )


_MISSING = object()


def _parse_needs(raw: Any, name: str, cfg: Any, path: Path) -> Optional[Needs]:
    """`needs: {entry: <another entry>, key: <a dotted key of the entry's config>}`, checked; None when absent."""
    if raw is None:
        return None
    _require_keys(raw, NEEDS_KEYS, NEEDS_KEYS, str(path), "needs.")
    other, key = raw["entry"], raw["key"]
    known = [n for n in entry_names() if n != name]
    if other not in known:
        raise ConfigError(
            f"{path}: needs.entry={other!r} is not another reproduce entry{did_you_mean(other, known)}; "
            f"known entries: {', '.join(known)}"
        )
    node = cfg
    for part in str(key).split("."):
        node = getattr(node, part, _MISSING) if dataclasses.is_dataclass(node) else _MISSING
    if not isinstance(key, str) or node is _MISSING:
        raise ConfigError(f"{path}: needs.key={key!r} is not a key of the entry's config, e.g. train.distill.teacher")
    return Needs(other, key)


def _registered_metric(algorithm: Algorithm, name: str, path: Path) -> Metric:
    """The metric `name` as the entry config's algorithm registered it: its goal, unit and scale."""
    metric = algorithm.metric(name)
    if metric is None or metric.goal is None:
        scores = algorithm.scores()
        raise ConfigError(
            f"{path}: metric.name={name!r} is not a score that algorithm {algorithm.name!r} registers"
            f"{did_you_mean(name, scores)}; its scores: {', '.join(scores)}"
        )
    return metric


def _require_keys(node: Any, valid: tuple, required: tuple, source: str, prefix: str) -> None:
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: {prefix[:-1] or 'the file'} must be a mapping with keys {', '.join(valid)}")
    check_keys(node, valid, source, prefix)
    missing = [k for k in required if k not in node]
    if missing:
        raise ConfigError(f"{source}: missing key(s) {', '.join(prefix + k for k in missing)}")


def sweep_spec(entry: Entry, budget: str, seeds: Optional[int] = None):
    """The sweep behind an entry's budget, checked by shared/cli/sweep/ like any sweep spec."""
    b = entry.budgets[budget]
    raw = {
        "name": f"reproduce-{entry.name}-{budget}",
        "method": "grid",
        "metric": {"name": entry.metric.name, "goal": entry.metric.goal},
        "config": b.config or entry.config,
        "overrides": b.overrides,
        "seeds": seeds or b.seeds,
    }
    if entry.slurm:
        raw["slurm"] = entry.slurm
    return parse_spec(raw, entry.path)


def reproduce(
    name: str,
    budget: str,
    trial_fn: TrialFunction,
    seeds: Optional[int] = None,
    backend: str = "local",
    workers: int = 1,
    threads: int = 1,
    out=None,
    needed_by: tuple[str, ...] = (),
) -> int:
    """Run (or resume) the sweep behind an entry, then print measured beside published and write it down.

    An entry with `needs` first reproduces the needed entry with the same budget and seeds (its runs are
    found finished, resumed or made, and it writes its own reproduce.json), then gives each of its own
    trials `needs.key=<the needed entry's run folder of the trial's seed>`. `needed_by`: the entries that
    are waiting for this one, to refuse a circle.
    """
    out = out or sys.stderr
    if budget not in BUDGETS:
        raise ConfigError(f"--budget {budget!r} is not a valid choice; valid choices: {', '.join(BUDGETS)}")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if name in needed_by:
        raise ConfigError(f"reproduce entries need each other in a circle: {' -> '.join([*needed_by, name])}")
    entry = load_entry(name)
    spec = sweep_spec(entry, budget, seeds)
    if entry.needs is not None:
        needed = entry.needs.entry
        needed_spec = sweep_spec(load_entry(needed), budget, len(spec.seeds))
        count = None if seeds is None and needed_spec.seeds == spec.seeds else len(spec.seeds)  # as a user types it
        status = reproduce(needed, budget, trial_fn, count, backend, workers, threads, out, (*needed_by, name))
        folders = finished_runs(needed_spec.dir, spec.seeds)
        missing = [seed for seed in spec.seeds if seed not in folders]
        if missing:
            print(
                f"pixlab: reproduce {name}: not run, the needed entry {needed} has no finished run of seed(s) "
                f"{', '.join(map(str, missing))}; run `pixlab reproduce {needed} --budget {budget}` again to resume it",
                file=out,
            )
            return status or 1
        trial_fn = WithNeededRuns(trial_fn, entry.needs.key, folders)
        for seed, folder in folders.items():  # a wrong key or an unfit run exits 2 here, before anything runs
            load_config(spec.config, [*spec.overrides, f"seed={seed}", f"{entry.needs.key}={folder}"])
    print(f"pixlab: reproduce {name} ({budget}: {entry.budgets[budget].about})", file=out)
    result = run_sweep(spec, trial_fn, backend=backend, workers=workers, threads=threads, out=out)
    measured = measure(entry, budget, result.trials, seeds) | {"machine": machine(spec, threads, backend)}
    atomic_write_text(result.dir / "reproduce.json", json.dumps(measured, indent=2))
    table = format_table([measured])
    atomic_write_text(result.dir / "reproduce.md", table + "\n")
    write_curve(entry, result.dir, out)
    print(table)
    return result.status


def write_curve(entry: Entry, sweep_dir: Path, out) -> None:
    """<sweep>/curve/: `pixlab report` of the entry's runs (shared/cli/report.py), kept in the repository beside
    reproduce.json: the learning curve of the entry's metric, the mean over seeds with its interval and the
    published figure as a dashed line, and its report.md and report.csv. The seeds are one group even where
    `needs` gives each its own input run. The curve is `entry.curve`: where the trainer computes the metric once,
    at the end (the VAE's IWAE bound), the algorithm's first score logged along the run (the VAE's test ELBO). No
    gallery: the runs' media stay local. Before any run has logged a step, a note instead."""
    from shared.cli.report import write_report

    runs = Path(os.path.relpath(sweep_dir))  # report.md names the runs as a reader of the repository finds them
    try:
        write_report([runs], runs / "curve", metric=entry.curve.name, group_by="tracking.group", curves_only=True)
    except PixlabError as e:
        print(f"pixlab: reproduce {entry.name}: no learning curve yet: {e}", file=out)


def machine(spec, threads: int, backend: str) -> dict:
    """Where the trials ran: this machine's CPU, its ISA flags and torch (shared/machine.py), with the torch threads
    and the precision each trial used; for the slurm backend this is the submitting machine (each run's meta.json
    names its own device)."""
    from shared.machine import describe_run_machine

    _, cfg = load_config(spec.config, spec.overrides)
    return describe_run_machine(cfg) | {"threads": threads, "backend": backend}


def format_machine(m: dict) -> str:
    """'AMD EPYC 7B13 (avx2), 1 thread, fp32'; '' for a reproduce.json written before machines were recorded."""
    if "machine" not in m:
        return ""
    host = m["machine"]
    flags = [flag for flag, present in host["isa"].items() if present] or ["no avx2"]
    threads = f"{host['threads']} thread{'s' if host['threads'] != 1 else ''}"
    return f"{host['cpu']} ({', '.join(flags)}), {threads}, {host['precision']}"


def finished_runs(sweep_dir: Path, seeds: list) -> dict[int, str]:
    """seed -> run folder of the finished trials of `seeds` in a sweep's state (runs/<sweep>/sweep.json)."""
    records = read_state(sweep_dir / "sweep.json")["trials"].values() if (sweep_dir / "sweep.json").exists() else []
    return {r["seed"]: r["run_dir"] for r in records if r["status"] == "done" and r["seed"] in seeds}


@dataclass(frozen=True)
class WithNeededRuns:
    """A trial function that adds `key=<folder>` to each trial's overrides, `folder` being the needed entry's run
    of the trial's seed. A module-level class, so that it pickles to a worker process or a Slurm job."""

    trial_fn: TrialFunction
    key: str
    folders: dict  # seed -> run folder

    def __call__(self, config: str, overrides: Sequence[str], run_dir: Optional[str]) -> int:
        seed = int([o for o in overrides if o.startswith("seed=")][-1].removeprefix("seed="))
        return self.trial_fn(config, [*overrides, f"{self.key}={self.folders[seed]}"], run_dir)


def measure(entry: Entry, budget: str, trials: list[dict], seeds: Optional[int] = None) -> dict:
    """The entry's metric over the finished seeds: values, mean, std, difference, wall time, command."""
    summaries = {t["seed"]: read_summary(t["run_dir"]) for t in trials if t["status"] == "done"}
    finished = [
        (t["seed"], summaries[t["seed"]].get(entry.metric.name), t["wall_time"])
        for t in trials
        if t["seed"] in summaries
    ]
    scored = [(seed, value * entry.metric.scale, wall) for seed, value, wall in finished if value is not None]
    values = [v for _, v, _ in scored]
    mean = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else None
    published = entry.published["value"]
    walls = [w for _, _, w in scored if w is not None]
    command = f"pixlab reproduce {entry.name} --budget {budget}" + (f" --seeds {seeds}" if seeds else "")
    return {
        "entry": entry.name,
        "model": entry.model,
        "task": entry.task,
        "metric": entry.metric.name,
        "budget": budget,
        "about": entry.budgets[budget].about,
        "seeds": [seed for seed, _, _ in scored],
        "values": values,
        "mean": mean,
        "std": std,
        "trials": len(trials),
        "published": published,
        "source": entry.published["source"],
        "published_text": entry.published.get("text"),
        "difference": None if mean is None or published is None else mean - published,
        **judge(values, published, entry.metric.goal),
        "wall_time_s": sum(walls) if walls else None,
        "wall_time_per_seed_s": statistics.fmean(walls) if walls else None,
        "command": command,
        "summaries": {str(seed): summary for seed, summary in summaries.items()},  # each seed's run, every figure
        "measured": _dt.datetime.now().isoformat(timespec="seconds"),
        "git": git_state(),
    }


def judge(values: list[float], published: Optional[float], goal: str) -> dict:
    """{'interval': [low, high] of the mean over seeds (None for fewer than two), 'confidence', 'verdict'}: reached,
    short, single seed or n.a., as the module's docstring says; values and published in the metric's shown unit."""
    interval = stats.bootstrap(stats.aggregate_mean, [values]).interval if values else None
    if published is None or not values:
        verdict = "n.a."
    elif interval is None:
        verdict = "single seed"
    else:
        low, high = interval
        verdict = "reached" if (low <= published if goal == "minimize" else high >= published) else "short"
    return {
        "interval": None if interval is None else list(interval),
        "confidence": stats.CONFIDENCE,
        "verdict": verdict,
    }


# --------------------------------------------------------------------------------------------- tables
def format_measured(entry: Entry, m: dict) -> str:
    """'0.71 ± 0.02% (0.73, 0.72, 0.69; seeds 0, 1, 2)', or why there is no number."""
    if m["mean"] is None:
        return f"not measured (0 of {m['trials']} seeds finished)"
    spread = "" if m["std"] is None else f" ± {entry.shown(m['std'])}"
    each = ", ".join(f"{v:.{entry.decimals}f}" for v in m["values"])
    partial = "" if len(m["values"]) == m["trials"] else f"; {len(m['values'])} of {m['trials']} seeds finished"
    return f"{entry.shown(m['mean'])}{spread} ({each}; seeds {', '.join(map(str, m['seeds']))}{partial})"


def format_published(entry: Entry, m: dict) -> str:
    figure = m["published_text"] or ("none" if m["published"] is None else entry.shown(m["published"]))
    return f"{figure} ({m['source']})"


def format_verdict(entry: Entry, m: dict) -> str:
    """'reached (95% CI [0.68, 0.80]%)', 'short (...)', 'single seed' or 'n.a.'; a reproduce.json written before
    verdicts existed is judged from its per-seed values."""
    judged = m if "verdict" in m else judge(m.get("values") or [], m["published"], entry.metric.goal)
    if judged["interval"] is None:
        return judged["verdict"]
    low, high = judged["interval"]
    number = f"{high:.{entry.decimals}f}"
    unit = entry.shown(high)[len(number) :]  # '%', ' nats/image' or ''
    return f"{judged['verdict']} ({judged['confidence']:.0%} CI [{low:.{entry.decimals}f}, {number}]{unit})"


def format_wall(m: dict) -> str:
    return (
        "n/a"
        if m["wall_time_s"] is None
        else f"{m['wall_time_per_seed_s']:.0f} s per seed ({m['wall_time_s']:.0f} s in all)"
    )


def format_table(measured: list[dict]) -> str:
    """Measured beside published: the table `pixlab reproduce` prints and writes to reproduce.md."""
    rows = [
        "| entry | task | measured | published | verdict | difference | budget | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in measured:
        entry = load_entry(m["entry"])
        difference = (
            "n/a" if m["difference"] is None else ("+" if m["difference"] >= 0 else "") + entry.shown(m["difference"])
        )
        rows.append(
            f"| {m['entry']} | {m['task']} | {format_measured(entry, m)} | {format_published(entry, m)} | {format_verdict(entry, m)} | {difference} | {m['budget']}: {m['about']} | {format_wall(m)} |"
        )
    return "\n".join(rows)


def results_table(runs_dir: Path = Path("runs"), budgets: tuple = ("full", "cpu")) -> str:
    """The README's results table: one row per reproduce.json under runs_dir (smoke runs left out), each with its command."""
    found = [json.loads(p.read_text()) for p in sorted(Path(runs_dir).glob("reproduce-*/reproduce.json"))]
    found = [m for m in found if m["budget"] in budgets and m["entry"] in entry_names()]
    found.sort(key=lambda m: (entry_names().index(m["entry"]), BUDGETS.index(m["budget"])))
    rows = [
        "| model | task | measured | published | verdict | budget | wall time, date, machine | command |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in found:
        entry = load_entry(m["entry"])
        when = "; ".join(filter(None, [f"{format_wall(m)}, {m['measured'][:10]}", format_machine(m)]))
        rows.append(
            f"| {m['model']} | {m['task']} | {format_measured(entry, m)} | {format_published(entry, m)} | {format_verdict(entry, m)} | {m['budget']}: {m['about']} | {when} | `{m['command']}` |"
        )
    return "\n".join(rows)


README_MARKERS = ("<!-- pixlab reproduce --table: start -->", "<!-- pixlab reproduce --table: end -->")


def update_readme(readme: Path, runs_dir: Path = Path("runs")) -> None:
    """Replace the table between the README's two markers with `results_table()`, atomically."""
    text = readme.read_text() if readme.exists() else ""
    start, end = text.find(README_MARKERS[0]), text.find(README_MARKERS[1])
    if start < 0 or end < start:
        raise ConfigError(
            f"{readme}: no results table to replace; put the lines {README_MARKERS[0]!r} and {README_MARKERS[1]!r} around it"
        )
    head, tail = text[: start + len(README_MARKERS[0])], text[end:]
    atomic_write_text(readme, f"{head}\n{results_table(runs_dir)}\n{tail}")


def list_entries() -> str:
    """Each entry with its published figure and budgets: what `pixlab reproduce` with no name prints."""
    lines = []
    for name in entry_names():
        entry = load_entry(name)
        published = entry.published.get("text") or (
            "none" if entry.published["value"] is None else entry.shown(entry.published["value"])
        )
        lines.append(f"{name}: {entry.model}, {entry.task}; published {published} ({entry.published['source']})")
        lines += [f"    --budget {b:<5}  {entry.budgets[b].seeds} seed(s), {entry.budgets[b].about}" for b in BUDGETS]
    return "\n".join(lines)
