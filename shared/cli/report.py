"""`pixlab report RUNS... [--metric M] [--group-by KEY] [--out DIR] [--stats]`: learning curves, a results table,
sweep plots and a gallery of the runs' media, read from the run folders alone (no W&B needed).

    pixlab report runs/<sweep>                               every trial below it, grouped over seeds
    pixlab report runs/a runs/b --metric train/loss          any runs, one metric
    pixlab report runs/ --group-by agent.double --out /tmp/r group by a dotted config key
    pixlab report runs/a runs/b --stats                      and whether the difference is real: intervals

What it does, top to bottom:

1. Runs. Each RUNS path is a run folder (config.yaml + metrics.jsonl) or a folder searched recursively
   for run folders (runs/, runs/<sweep>/ with its trials).
2. Sections. Runs are split by algorithm (`algo:` of config.yaml). A section reports one metric:
   --metric, or the algorithm's default: the first metric with a goal, in the order its `register()` call
   lists them, that some run logged. Runs of a section that never logged the metric are left out, with a
   note on stderr. A line of metrics.jsonl that is not UTF-8 JSON is skipped with a warning naming the
   file and the line.
3. Series. A run's series is the (step, value) pairs of the metric in its step records; the x axis is the
   `step` the trainer logs (what it counts is the algorithm's registered step unit: agent steps for DQN and
   REINFORCE, optimizer steps for the others). A step logged twice keeps its later value. The final summary
   record's value of the metric, the figure the trainer reports (RAM's test error of its best-validation
   weights with 40 paths per image, after a curve of the last weights' errors; the VAE's IWAE bound, computed
   once), is the run's last point: at its last step (`train/steps` or its last record's), in place of a step
   record there. A value logged as NaN or Infinity (a diverged run) is kept and reported as not finite, with a
   warning naming the run and the first such step.
4. Groups. Runs whose configs are equal apart from the IGNORED keys (seed, name, runs_dir, device,
   tracking.*, checkpoint.*) are the seeds of one group; `--group-by key.path` groups by that key's
   value instead. A group is labelled by the config keys whose values differ between groups.
5. Curves. Per group, the mean over seeds, with a band: the 95% bootstrap interval of that mean at each step
   (shared/stats.py, `mean_band`; no band for one seed). Unequal step grids: when every seed logged at the same steps the curve uses
   those steps; otherwise each seed is linearly interpolated onto the union of the seeds' steps inside
   the range that every seed covers ([latest first step, earliest last step]). Each point is then a
   mean over all n seeds, nothing is extrapolated, and the curve ends where the shortest seed ended.
   Seeds that share no step range at all (one point each at different steps) are drawn one by one.
   When runs of the section come from the sweep of a reproduce entry (runs/reproduce-<entry>-<budget>, the
   sweep's name in each trial's runs_dir and tracking.group) that measures this metric, the entry's published
   figure is a dashed horizontal line, its source in the legend.
6. Table. Per group: seeds, final value (each run's last logged value; mean +/- std over seeds), best
   value (each run's min or max of its finite values, by the metric's direction; mean +/- std), and the
   runs' last steps. A group with a value that is not finite shows each run's value instead of a mean.
   Written as report.md (also printed; 4 significant digits) and report.csv (full precision, in the
   metric's unit; a group of one run has no std, left blank).
7. Sweep. The config keys (IGNORED excepted) whose values differ between a section's runs are its swept
   parameters. For each, the final value of every group (mean +/- std error bar over seeds) against the
   parameter; a log x axis for positive numbers that span two decades or more. Drawn when 1 to
   MAX_SWEPT keys differ: runs that differ in more are unrelated experiments, not a sweep.
8. Statistics (--stats). Per group, the mean, median and IQM of the runs' final values, each with a 95%
   stratified-bootstrap interval, and for exactly two groups the probability that a run of the first beats a run
   of the second in the metric's direction (Agarwal et al. 2021; definitions and resampling in shared/stats.py).
   A group's tasks, the strata, are its runs split by config (IGNORED keys aside): the seeds of one config are one
   task, and a --group-by group of several configs has several. The two groups' tasks are compared pairwise when
   they are the same configs, else pooled. A table in report.md, the values in report.csv, and
   stats-<section>.png drawn as rliable draws them: per statistic, a bar for each group's interval and a tick
   at its point estimate.
9. Gallery. For each group, the latest file (highest step) of each media key in its runs' media/ folders
   (PNG embedded, GIF and MP4 linked), with the key it was logged under: a file is <key, / as _>-<step>.<ext>,
   the key read back from the algorithm's registered media keys (else the file's prefix is shown).

Units: each algorithm's `register()` call (shared/config.py, `Metric`) gives its metrics their goal, unit
and scale; values are shown in that unit (test/error, logged as a fraction, is shown in %). A metric it
does not list is lower-is-better unless its name says return, reward, hns, accuracy or is_ (a score);
--higher-better / --lower-better override the direction.

`wandb_workspace()` is the same choice of metrics as a W&B workspace layout: configs/wandb/workspace.yaml,
written by `pixlab report --wandb-workspace configs/wandb/workspace.yaml`.

Bad input (a path with no run folders, a run's config.yaml that is not a YAML mapping, a metric no run
logged, a --group-by key a run's config lacks) raises PixlabError, which the CLI turns into exit status 2; it is checked before anything is written.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from shared import stats
from shared.cli.sweep import write_objective_plot
from shared.config import ALGORITHMS, Metric, did_you_mean
from shared.errors import ConfigError, PixlabError
from shared.tracking import read_metrics

HIGHER_IS_BETTER_WORDS = ("return", "reward", "hns", "accuracy", "is_")
FALLBACK_METRICS = ("test/error", "eval/return", "train/loss")  # for runs of an algorithm not registered here

# Config keys that do not make two runs different experiments.
IGNORED_KEYS = {"seed", "name", "runs_dir", "device"}
IGNORED_PREFIXES = ("tracking.", "checkpoint.")
MAX_SWEPT = 4
MEDIA_SUFFIXES = (".png", ".gif", ".mp4")
MEDIA_NAME = re.compile(r"^(?P<slug>.+)-(?P<step>\d+)$")  # <key, / as _>-<step>, as shared/tracking.py names them
REPRODUCE_SWEEP = re.compile(r"^reproduce-(?P<entry>.+)-(?P<budget>full|cpu|smoke)$")  # shared/cli/reproduce.py


@dataclass
class RunRecord:
    """One run folder as read from disk: its flattened config, step records and summary."""

    dir: Path
    config: dict[str, Any]  # dotted keys -> values
    records: list[dict]  # the records that carry a "step"
    summary: dict

    @property
    def algo(self) -> str:
        return str(self.config.get("algo") or "unknown")

    def series(self, metric: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(steps, values) of `metric` in step order, or None when the run never logged it. Values that are
        not finite (a diverged run logs Infinity or NaN) are kept."""
        by_step = {r["step"]: r[metric] for r in self.records if _is_number(r.get(metric))}
        if _is_number(self.summary.get(metric)):  # the run's own last word: it replaces a point at that step
            last = max([self.summary.get("train/steps", 0)] + [r["step"] for r in self.records])
            by_step[last] = self.summary[metric]
        if not by_step:
            return None
        steps = np.array(sorted(by_step), dtype=np.float64)
        return steps, np.array([by_step[s] for s in sorted(by_step)], dtype=np.float64)

    def logged(self) -> set[str]:
        """The names of every metric the run logged, in step records or in its summary."""
        found = {k for r in self.records for k, v in r.items() if _is_number(v)} | {
            k for k, v in self.summary.items() if _is_number(v)
        }
        return found - {"step", "wall_time"}


@dataclass
class Group:
    label: str
    runs: list[RunRecord]
    series: list[tuple[np.ndarray, np.ndarray]]  # per run, values in the metric's unit

    def finals(self) -> np.ndarray:
        return np.array([values[-1] for _, values in self.series])

    def bests(self, higher_better: bool) -> np.ndarray:
        """Each run's best finite value (NaN for a run with none)."""
        finite = [values[np.isfinite(values)] for _, values in self.series]
        return np.array([np.nan if len(v) == 0 else v.max() if higher_better else v.min() for v in finite])

    def last_steps(self) -> list[int]:
        return [int(steps[-1]) for steps, _ in self.series]

    def tasks(self) -> list[np.ndarray]:
        """The final values split by task, the strata of the bootstrap: one config's seeds are one task."""
        return list(by_task(self.runs, self.finals(), differing_keys(self.runs)).values())


@dataclass
class Section:
    """One algorithm's runs under one metric."""

    algo: str
    metric: Metric
    groups: list[Group]
    swept: dict[str, list[Any]]  # swept key -> its value in each group of `sweep_groups`
    sweep_groups: list[Group]  # the seed groups (runs equal but for seed), whatever --group-by says
    published: list[tuple[float, str]] = field(default_factory=list)  # (value, legend label) of reproduce entries

    @property
    def slug(self) -> str:
        return f"{self.algo}-{self.metric.name.replace('/', '-')}"


# --------------------------------------------------------------------- reading
def find_runs(paths: Sequence[Path]) -> list[RunRecord]:
    """Every run folder at or below `paths`, each read once, in path order."""
    found: dict[Path, Path] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise PixlabError(f"{path} does not exist")
        folders = (
            [path]
            if _is_run_dir(path)
            else sorted(p.parent for p in path.rglob("metrics.jsonl") if _is_run_dir(p.parent))
        )
        if not folders:
            raise PixlabError(f"{path} holds no run folders (a run folder has config.yaml and metrics.jsonl)")
        for folder in folders:
            found.setdefault(folder.resolve(), folder)
    return [read_run(folder) for folder in found.values()]


def read_run(folder: Path) -> RunRecord:
    """A run folder's config and records; lines of metrics.jsonl that cannot be read are skipped with a warning."""
    path = folder / "config.yaml"
    try:
        config = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise PixlabError(f"cannot read the run's config {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise PixlabError(f"{path} must hold a mapping of config keys, not {type(config).__name__}")
    try:
        records = read_metrics(folder / "metrics.jsonl", warn=_warn)
    except OSError as e:
        raise PixlabError(f"cannot read {folder / 'metrics.jsonl'}: {e.strerror}") from None
    summary: dict = {}
    for record in records:
        summary.update(record.get("summary", {}))
    return RunRecord(folder, flatten(config), [r for r in records if "step" in r], summary)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; lists stay values."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --------------------------------------------------------------------- building the report
def build_sections(
    runs: list[RunRecord],
    metric: Optional[str] = None,
    group_by: Optional[str] = None,
    higher_better: Optional[bool] = None,
) -> list[Section]:
    """Split runs by algorithm, pick each section's metric, group the runs; raises PixlabError on bad input."""
    if metric is not None and not any(metric in run.logged() for run in runs):
        known = sorted(set().union(*(run.logged() for run in runs)))
        raise PixlabError(
            f"no run logged the metric {metric!r}{did_you_mean(metric, known)}; the runs logged: {', '.join(known)}"
        )
    sections = []
    for algo in sorted({run.algo for run in runs}):
        members = [run for run in runs if run.algo == algo]
        name = metric or _default_metric(algo, members)
        kept = [run for run in members if name in run.logged()]
        for run in (run for run in members if name not in run.logged()):
            print(f"pixlab report: {run.dir} has no {name}; left out", file=sys.stderr)
        if not kept:
            continue
        described = describe_metric(name, algo, higher_better)
        for run in kept:
            _warn_not_finite(run, name)
        seed_groups = group_runs(kept, None, described)
        groups = seed_groups if group_by is None else group_runs(kept, group_by, described)
        swept = differing_keys(kept)
        sweepable = {
            k: [g.runs[0].config.get(k) for g in seed_groups]
            for k in swept
            if all(_is_scalar(g.runs[0].config.get(k)) for g in seed_groups)
        }
        sections.append(
            Section(
                algo,
                described,
                groups,
                sweepable if 1 <= len(swept) <= MAX_SWEPT else {},
                seed_groups,
                published_figures(kept, described),
            )
        )
    return sections


def published_figures(runs: list[RunRecord], metric: Metric) -> list[tuple[float, str]]:
    """(value in the metric's shown unit, legend label) of the published figure of each reproduce entry whose sweep
    (runs/reproduce-<entry>-<budget>) holds some of `runs` and that measures `metric`."""
    from shared.cli.reproduce import entry_names, load_entry

    known = set(entry_names())
    names = set()
    for run in runs:
        for sweep in (run.config.get("tracking.group"), Path(str(run.config.get("runs_dir", ""))).name):
            match = REPRODUCE_SWEEP.match(str(sweep))
            if match and match["entry"] in known:
                names.add(match["entry"])
    figures = []
    for name in sorted(names):
        try:
            entry = load_entry(name)
        except ConfigError as e:
            _warn(f"no published figure drawn for reproduce entry {name}: {e}")
            continue
        value = entry.published["value"]
        if entry.metric.name == metric.name and value is not None:
            figures.append((float(value), f"published: {entry.shown(value)} ({entry.published['source']})"))
    return figures


def describe_metric(name: str, algo: str, higher_better: Optional[bool] = None) -> Metric:
    """Goal, unit and scale of a metric, as `algo` registered it (else the goal guessed from its name and no
    unit); `higher_better` overrides the goal."""
    registered = ALGORITHMS[algo].metric(name) if algo in ALGORITHMS else None
    metric = registered or Metric(name)
    if higher_better is None and metric.goal is None:
        higher_better = any(w in name for w in HIGHER_IS_BETTER_WORDS)
    if higher_better is not None:
        metric = dataclasses.replace(metric, goal="maximize" if higher_better else "minimize")
    return metric


def metric_label(metric: Metric) -> str:
    """'test/error (%)': the name and the unit of the values shown."""
    return f"{metric.name} ({metric.unit})" if metric.unit else metric.name


def group_runs(runs: list[RunRecord], group_by: Optional[str], metric: Metric) -> list[Group]:
    """Groups of runs, by the value of `group_by` or by the whole config but the IGNORED keys (the seeds of
    one experiment), ordered by the values of the keys that tell them apart (numbers by size)."""
    if group_by is not None:
        lacking = [run for run in runs if group_by not in run.config]
        if lacking:
            hint = did_you_mean(group_by, sorted(lacking[0].config))
            raise PixlabError(
                f"--group-by {group_by}: no such key in the config of {', '.join(str(run.dir) for run in lacking)}{hint}"
            )
    differing = differing_keys(runs)
    keys = [group_by] if group_by is not None else differing
    buckets: dict[str, list[RunRecord]] = {}
    for run in runs:
        buckets.setdefault(json.dumps([run.config.get(k) for k in keys], default=str), []).append(run)
    groups = []
    for members in sorted(buckets.values(), key=lambda members: [_order(members[0].config.get(k)) for k in keys]):
        if group_by is not None:
            label = f"{group_by}={_show(members[0].config[group_by])}"
        elif 1 <= len(differing) <= MAX_SWEPT:
            label = ", ".join(f"{k}={_show(members[0].config.get(k))}" for k in differing)
        else:
            label = str(members[0].config.get("name", members[0].dir.name))
        scaled = [(steps, values * metric.scale) for steps, values in (run.series(metric.name) for run in members)]
        groups.append(Group(label, members, scaled))
    labels = [g.label for g in groups]
    for g in groups:  # experiments that share a name and differ in many keys: tell them apart by folder
        if labels.count(g.label) > 1:
            g.label = f"{g.label} ({g.runs[0].dir.name})"
    return groups


def by_task(runs: list[RunRecord], values: np.ndarray, keys: list[str]) -> dict[str, np.ndarray]:
    """`values` (one per run) split by the runs' values of the config `keys`: {task: values of its runs}."""
    tasks: dict[str, list[float]] = {}
    for run, value in zip(runs, values):
        tasks.setdefault(json.dumps([run.config.get(k) for k in keys], default=str), []).append(value)
    return {task: np.array(v) for task, v in tasks.items()}


def differing_keys(runs: list[RunRecord]) -> list[str]:
    """Config keys, IGNORED excepted, whose values are not the same in every run."""
    keys = sorted(set().union(*(run.config for run in runs)))
    return [
        k
        for k in keys
        if k not in IGNORED_KEYS
        and not k.startswith(IGNORED_PREFIXES)
        and len({json.dumps(run.config.get(k), default=str) for run in runs}) > 1
    ]


def common_grid(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values (seeds, steps)): the seeds on one step grid; unequal grids are interpolated inside their
    common range."""
    grids = [steps for steps, _ in series]
    if all(np.array_equal(grids[0], g) for g in grids[1:]):
        return grids[0], np.stack([v for _, v in series])
    first, last = max(g[0] for g in grids), min(g[-1] for g in grids)
    steps = np.unique(np.concatenate(grids))
    steps = steps[(steps >= first) & (steps <= last)]
    return steps, np.stack([np.interp(steps, s, v) for s, v in series])


# --------------------------------------------------------------------- writing
def write_report(
    paths: Sequence[Path],
    out: Optional[Path] = None,
    metric: Optional[str] = None,
    group_by: Optional[str] = None,
    higher_better: Optional[bool] = None,
    with_stats: bool = False,
    curves_only: bool = False,
) -> tuple[Path, str]:
    """Read the runs, check the request, then write the PNGs, report.md and report.csv to `out`; `with_stats`:
    the statistics of --stats too; `curves_only`: the curves and the table alone (no sweep plot, no search plot,
    no gallery).

    Returns (the folder written, the markdown). Nothing is written when the input is bad.
    """
    runs = find_runs(paths)
    sections = build_sections(runs, metric, group_by, higher_better)
    if not sections:
        raise PixlabError("none of the runs logged their algorithm's default metric yet; name one with --metric")
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("reports") / (Path(paths[0]).resolve().name if len(paths) == 1 else f"report-{stamp}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PixlabError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    parts = [f"# pixlab report\n\nRuns from: {', '.join(str(p) for p in paths)} ({len(runs)} run folders).\n"]
    rows = []
    with np.errstate(invalid="ignore", over="ignore"):  # means and stds of a diverged run's inf and NaN
        for section in sections:
            if curves_only:
                section.swept = {}  # neither its plot nor its line in the table
            images = [plot_curves(section, out / f"curves-{section.slug}.png")]
            if section.swept:
                images.append(plot_sweep(section, out / f"sweep-{section.slug}.png"))
            parts.append(markdown_section(section, [p.name for p in images]))
            section_rows = csv_rows(section)
            if with_stats:
                estimates = [stats.aggregates(g.tasks()) for g in section.groups]
                improvement = improvement_of(section)
                image = plot_stats(section, estimates, improvement, out / f"stats-{section.slug}.png")
                parts.append(markdown_stats(section, estimates, improvement, image.name))
                for row, group, estimate in zip(section_rows, section.groups, estimates):
                    row |= stats_columns(group, estimate)
            rows += section_rows
    for folder in [] if curves_only else paths:  # a sweep with an Optuna study (shared/cli/sweep/search.py)
        if image := write_objective_plot(Path(folder), out / f"objective-{Path(folder).resolve().name}.png"):
            parts.append(f"## The search\n\n![objective per trial]({image.name})\n")
    if not curves_only:
        parts.append(markdown_gallery(sections, out))
    markdown = "\n".join(part for part in parts if part)
    (out / "report.md").write_text(markdown)
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out, markdown


def markdown_section(section: Section, images: list[str]) -> str:
    m = section.metric
    direction = "higher is better" if m.higher_better else "lower is better"
    lines = [
        f"## {section.algo}: {metric_label(m)}, {direction}\n",
        f"| group | seeds | final {m.name} | best {m.name} ({'max' if m.higher_better else 'min'}) | last step |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for g in section.groups:
        lines.append(
            f"| {g.label} | {len(g.runs)} | {_mean_std(g.finals())} | {_mean_std(g.bests(m.higher_better))} | {_steps(g.last_steps())} |"
        )
    if section.swept:
        lines.append(f"\nSwept: {', '.join(section.swept)}.")
    lines += [""] + [f"![{name}]({name})" for name in images] + [""]
    return "\n".join(lines)


def csv_rows(section: Section) -> list[dict]:
    m = section.metric
    rows = []
    for g in section.groups:
        finals, bests = g.finals(), g.bests(m.higher_better)
        rows.append(
            {
                "algo": section.algo,
                "metric": m.name,
                "unit": m.unit,
                "best_is": "max" if m.higher_better else "min",
                "group": g.label,
                "seeds": len(g.runs),
                "final_mean": float(finals.mean()),
                "final_std": _std(finals),
                "best_mean": float(bests.mean()),
                "best_std": _std(bests),
                "last_step_min": min(g.last_steps()),
                "last_step_max": max(g.last_steps()),
                "runs": ";".join(run.dir.name for run in g.runs),
            }
        )
    return rows


def plot_curves(section: Section, path: Path) -> Path:
    """The learning curves of `curves_figure`, as a PNG at `path`."""
    curves_figure(section).savefig(path)
    return path


def curves_figure(section: Section):
    """The mean learning curve of every group on one axis, with the bootstrap interval of the mean as a band, and
    the published figure of the runs' reproduce entry, if any, as a dashed line. Returns the matplotlib Figure."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(9, 5.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    band = f"{stats.CONFIDENCE:.0%} bootstrap interval of the mean over seeds"
    banded = False
    for g in section.groups:
        steps, values = common_grid(g.series)
        if len(steps) == 0:  # the seeds share no step range: each drawn alone, in the group's colour
            color = None
            for i, (run_steps, run_values) in enumerate(g.series):
                label = f"{g.label} (n={len(g.runs)}, no common steps)" if i == 0 else None
                (line,) = ax.plot(
                    run_steps,
                    _finite(run_values),
                    marker="o",
                    markersize=4,
                    linewidth=1.0,
                    color=color,
                    alpha=0.7,
                    label=label,
                )
                color = line.get_color()
            continue
        marker = "o" if len(steps) <= 30 else None
        mean = _finite(values.mean(axis=0))  # a diverged run's values: gaps
        (line,) = ax.plot(steps, mean, marker=marker, markersize=4, linewidth=1.6, label=f"{g.label} (n={len(g.runs)})")
        interval = stats.mean_band(values)
        if interval is not None:
            ax.fill_between(steps, *interval, color=line.get_color(), alpha=0.2, linewidth=0)
            banded = True
    for value, label in section.published:
        ax.axhline(value, color="black", linestyle="--", linewidth=1.2, label=label)
    handles, _ = ax.get_legend_handles_labels()
    if banded:
        handles.append(Patch(color="grey", alpha=0.3, label=f"band: {band}"))
    ax.set_xlabel(f"step ({ALGORITHMS[section.algo].step_unit if section.algo in ALGORITHMS else 'steps'})")
    ax.set_ylabel(metric_label(section.metric))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_title(f"{section.algo}: {section.metric.name}, mean over seeds" + (f"; band: {band}" if banded else ""))
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="best")
    return fig


def plot_sweep(section: Section, path: Path) -> Path:
    """The final metric of every seed group against each swept parameter, one panel a parameter."""
    from matplotlib.figure import Figure

    keys = list(section.swept)
    fig = Figure(figsize=(4.8 * len(keys), 4.5), dpi=120, layout="constrained")
    finals = [g.finals() for g in section.sweep_groups]
    means, stds = _finite(np.array([f.mean() for f in finals])), _finite(np.array([_std(f) or 0.0 for f in finals]))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        values = section.swept[key]
        if all(_is_number(v) for v in values):
            xs = [float(v) for v in values]
            if use_log_axis(xs):
                ax.set_xscale("log")
        else:  # categories (strings, booleans) at positions 0, 1, ...
            categories = sorted({_show(v) for v in values})
            xs = [categories.index(_show(v)) for v in values]
            ax.set_xticks(range(len(categories)), categories)
        ax.errorbar(xs, means, yerr=stds, fmt="o", capsize=4, markersize=6)
        ax.set_xlabel(key)
        ax.set_ylabel(f"final {metric_label(section.metric)}")
        ax.set_title(f"final {section.metric.name} vs {key}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{section.algo}: each point one configuration, mean ± std over its seeds", fontsize=10)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------- statistics (--stats)
def improvement_of(section: Section) -> Optional[tuple[stats.Estimate, bool]]:
    """For a section of exactly two groups: P(a run of the first beats one of the second) in the metric's direction,
    and whether their tasks were compared pairwise (the same configs) rather than pooled. None for other counts
    of groups, or when a final value is not finite."""
    if len(section.groups) != 2:
        return None
    first, second = section.groups
    if not (np.isfinite(first.finals()).all() and np.isfinite(second.finals()).all()):
        return None
    keys = sorted(set(differing_keys(first.runs)) | set(differing_keys(second.runs)))
    a, b = by_task(first.runs, first.finals(), keys), by_task(second.runs, second.finals(), keys)
    paired = set(a) == set(b)
    x, y = ([a[t] for t in sorted(a)], [b[t] for t in sorted(a)]) if paired else ([first.finals()], [second.finals()])
    sign = 1.0 if section.metric.higher_better else -1.0  # better = greater, after the sign
    return stats.improvement([sign * t for t in x], [sign * t for t in y]), paired


def markdown_stats(
    section: Section,
    estimates: list[dict[str, stats.Estimate]],
    improvement: Optional[tuple[stats.Estimate, bool]],
    image: str,
) -> str:
    """The --stats table of a section: each group's aggregates of its final values with their intervals."""
    m = section.metric
    names = list(stats.AGGREGATES)
    lines = [
        f"### Final {metric_label(m)}: {', '.join(names)} with {stats.CONFIDENCE:.0%} intervals\n",
        f"| group | runs | {' | '.join(names)} |",
        "| --- | ---: |" + " ---: |" * len(names),
    ]
    for g, estimate in zip(section.groups, estimates):
        tasks = len(g.tasks())
        runs = f"{len(g.runs)}" + (f" ({tasks} tasks)" if tasks > 1 else "")
        cells = [_estimate(estimate[name]) if np.isfinite(g.finals()).all() else "not finite" for name in names]
        lines.append(f"| {g.label} | {runs} | {' | '.join(cells)} |")
    lines.append(
        f"\nIntervals: {stats.CONFIDENCE:.0%} percentile intervals of {stats.RESAMPLES:,} stratified bootstrap "
        "resamples (each task's runs resampled on their own; a task is one config's seeds), seeded, so the same "
        "every time; none where every task has one run. IQM: the mean of the middle 50% of the runs (Agarwal et "
        "al. 2021)."
    )
    if improvement is not None:
        estimate, paired = improvement
        first, second = (g.label for g in section.groups)
        how = "task by task" if paired else "pooled (the two groups' configs differ)"
        lines.append(
            f"\nProbability of improvement: P({first} better than {second}) = {_estimate(estimate)}: the chance "
            f"that a run of the first has the {'higher' if m.higher_better else 'lower'} final {m.name}, ties "
            f"counting 1/2, {how}. 0.5: no difference; an interval that excludes 0.5: a difference the seeds show."
        )
    elif len(section.groups) == 2:
        lines.append("\nProbability of improvement: not computed, a final value is not finite.")
    lines += ["", f"![{image}]({image})", ""]
    return "\n".join(lines)


def stats_columns(group: Group, estimate: dict[str, stats.Estimate]) -> dict:
    """report.csv's --stats columns of a group: each aggregate and its interval (blank: none)."""
    columns: dict[str, Any] = {"tasks": len(group.tasks())}
    for name, e in estimate.items():
        columns |= {name.lower(): e.value, f"{name.lower()}_low": e.low, f"{name.lower()}_high": e.high}
    return columns


def plot_stats(
    section: Section,
    estimates: list[dict[str, stats.Estimate]],
    improvement: Optional[tuple[stats.Estimate, bool]],
    path: Path,
) -> Path:
    """Interval estimates as rliable draws them: one panel a statistic, one row a group, a bar over the interval
    and a tick at the point estimate; for two groups a last panel with the probability of improvement."""
    from matplotlib.figure import Figure

    names = list(stats.AGGREGATES)
    panels = len(names) + (improvement is not None)
    rows = len(section.groups)
    fig = Figure(figsize=(3.4 * panels + 1.5, 0.5 * rows + 1.8), dpi=120, layout="constrained")
    for j, name in enumerate(names):
        ax = fig.add_subplot(1, panels, j + 1)
        for i, estimate in enumerate(estimates):
            _interval_row(ax, i, estimate[name], f"C{i}")
        ax.set_yticks(range(rows), [g.label for g in section.groups] if j == 0 else [])
        ax.set_ylim(rows - 0.5, -0.5)  # the first group on top
        ax.set_xlabel(f"final {metric_label(section.metric)}")
        ax.set_title(name)
        ax.grid(axis="x", alpha=0.3)
    if improvement is not None:
        ax = fig.add_subplot(1, panels, panels)
        _interval_row(ax, 0, improvement[0], "C0")
        ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
        first, second = (g.label for g in section.groups)
        ax.set_yticks([0], [f"X = {first}\nY = {second}"])
        ax.set_xlim(0, 1)
        ax.set_ylim(0.5, -0.5)
        ax.set_xlabel("P(X better than Y)")
        ax.set_title("probability of improvement")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"{section.algo}: final {section.metric.name}, point estimate (tick) and "
        f"{stats.CONFIDENCE:.0%} stratified-bootstrap interval (bar)",
        fontsize=10,
    )
    fig.savefig(path)
    return path


def _interval_row(ax, row: int, estimate: stats.Estimate, color: str) -> None:
    """One row of an interval plot: the interval as a bar (when there is one), the point estimate as a tick."""
    if estimate.interval is not None:
        ax.barh(row, estimate.high - estimate.low, left=estimate.low, height=0.6, color=color, alpha=0.75)
    if np.isfinite(estimate.value):
        ax.vlines(estimate.value, row - 0.35, row + 0.35, color="black", linewidth=2)


# --------------------------------------------------------------------- the gallery
def latest_media(group: Group, algo: str) -> dict[str, tuple[Path, int]]:
    """{media key: (the latest file of it in the group's runs' media/, its step)}: the highest step, the first run
    of the group on a tie. Files are <key, / as _>-<step>.<png|gif|mp4>; the key is read back from the algorithm's
    registered media keys, else it is the file's prefix; a file without a step counts as step -1."""
    registered = {key.replace("/", "_"): key for key in (ALGORITHMS[algo].media if algo in ALGORITHMS else ())}
    latest: dict[str, tuple[Path, int]] = {}
    for run in group.runs:
        media = run.dir / "media"
        files = sorted(media.iterdir()) if media.is_dir() else []
        for path in files:
            if path.name.startswith(".") or path.suffix.lower() not in MEDIA_SUFFIXES or not path.is_file():
                continue  # a temporary name of a file still being written, or not media
            match = MEDIA_NAME.match(path.stem)
            slug, step = (match["slug"], int(match["step"])) if match else (path.stem, -1)
            key = registered.get(slug, slug)
            if key not in latest or step > latest[key][1]:
                latest[key] = (path, step)
    return latest


def markdown_gallery(sections: list[Section], out: Path) -> str:
    """report.md's Gallery: each group's latest media, PNG embedded and GIF/MP4 linked, paths relative to `out`;
    empty when no run has media."""
    lines = []
    for section in sections:
        for g in section.groups:
            found = latest_media(g, section.algo)
            if not found:
                continue
            lines.append(f"### {section.algo}: {g.label}\n")
            for key, (path, step) in sorted(found.items()):
                link = Path(os.path.relpath(path.resolve(), out.resolve())).as_posix()
                shown = f"![{key}]({link})" if path.suffix.lower() == ".png" else f"[{path.name}]({link})"
                when = f"step {step:,}, " if step >= 0 else ""
                lines.append(f"- `{key}` ({when}{path.parent.parent.name}): {shown}")
            lines.append("")
    if not lines:
        return ""
    return "\n".join(["## Gallery\n", "The latest file of each media key in each group's runs.\n", *lines])


# --------------------------------------------------------------------- the W&B workspace
WORKSPACE_HEADER = """\
# The standard W&B workspace of the `pixlab` project: one section per algorithm, filtered on the algorithm's
# tag; its panels are the metrics its `register()` call lists (shared/config.py), in that order: the first
# with a `best` is the one `pixlab report` judges it by. Generated: `pixlab report --wandb-workspace <this file>` after
# registering an algorithm (tests/test_report.py checks that it is current). README.md beside it explains
# it; build it by hand in the W&B UI, or with a script on the `wandb-workspaces` package (not a dependency).
#
# panel types: line (a metric against Step; unit "x100 = %": shown x100 by `pixlab report`, logged as is),
#              media (the latest images or video of a key), runs_table (values written once, at the end)
"""
WORKSPACE_SETTINGS = {
    "project": "pixlab",
    "x_axis": "Step",  # the `step` each trainer logs; its unit is the algorithm's registered step unit
    # the mean over seeds as `pixlab report` draws it; W&B's panels have no bootstrap interval, so the band is the std
    "grouping": {"group_by": "Group", "aggregate": "mean", "range": "stddev"},
    "smoothing": "none",
}


def wandb_workspace() -> str:
    """configs/wandb/workspace.yaml: the W&B workspace layout of every registered algorithm, as YAML."""
    sections = []
    for name in sorted(ALGORITHMS):
        algorithm = ALGORITHMS[name]
        panels = []
        for m in (m for m in algorithm.metrics if not m.once):
            unit = m.unit if m.scale == 1 else f"x{m.scale:g} = {m.unit}"
            best = {"maximize": "max", "minimize": "min"}.get(m.goal)
            panels.append(
                {"type": "line", "metric": m.name} | ({"unit": unit} if unit else {}) | ({"best": best} if best else {})
            )
        once = [m.name for m in algorithm.metrics if m.once]
        panels += [{"type": "runs_table", "columns": once}] if once else []
        panels += [{"type": "media", "key": key} for key in algorithm.media]
        sections.append({"name": name, "step": algorithm.step_unit, "filter": {"tags": [name]}, "panels": panels})
    body = yaml.safe_dump(
        WORKSPACE_SETTINGS | {"sections": sections}, sort_keys=False, default_flow_style=None, width=120
    )
    return WORKSPACE_HEADER + "\n" + body


# --------------------------------------------------------------------- small helpers
def use_log_axis(values: list[Any]) -> bool:
    """A log axis for positive numbers that span two decades or more (learning rates, buffer sizes)."""
    return all(_is_number(v) for v in values) and min(values) > 0 and max(values) / min(values) >= 100


def _default_metric(algo: str, runs: list[RunRecord]) -> str:
    """The first of the algorithm's scores (its registered metrics with a goal) that some run logged."""
    candidates = ALGORITHMS[algo].scores() if algo in ALGORITHMS else FALLBACK_METRICS
    logged = set().union(*(run.logged() for run in runs))
    return next((m for m in candidates if m in logged), candidates[0])


def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file()


def _is_number(value: Any) -> bool:
    """An int or a float, finite or not (json reads a logged inf or NaN as a float)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(values: np.ndarray) -> np.ndarray:
    """`values` with inf and -inf made NaN, which matplotlib leaves out of lines and axis limits."""
    return np.where(np.isfinite(values), values, np.nan)


def _warn(message: str) -> None:
    print(f"pixlab report: {message}", file=sys.stderr)


def _warn_not_finite(run: RunRecord, metric: str) -> None:
    """A warning naming the run and the first step at which `metric` was not finite."""
    steps, values = run.series(metric)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argmax(bad))
        _warn(f"{run.dir}: {metric} is not finite ({values[first]}) from step {int(steps[first])} on: the run diverged")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, str, bool))


def _order(value: Any) -> tuple:
    """A sort key that puts numbers first, by size, then everything else by its text."""
    return (0, float(value), "") if _is_number(value) else (1, 0.0, _show(value))


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def _std(values: np.ndarray) -> Optional[float]:
    """Sample standard deviation over seeds; None for one seed."""
    return float(values.std(ddof=1)) if len(values) > 1 else None


def _mean_std(values: np.ndarray) -> str:
    """'0.05 ± 0.01'; when a value is not finite, each run's value: 'not finite (inf, 0.05)'."""
    if not np.isfinite(values).all():
        return f"not finite ({', '.join(f'{v:.4g}' for v in values)})"
    std = _std(values)
    return f"{values.mean():.4g}" if std is None else f"{values.mean():.4g} ± {std:.2g}"


def _estimate(e: stats.Estimate) -> str:
    """'0.73 [0.68, 0.8]', or '0.73 (no interval)' when there was nothing to resample."""
    if e.interval is None:
        return f"{e.value:.4g} (no interval)"
    return f"{e.value:.4g} [{e.low:.4g}, {e.high:.4g}]"


def _steps(steps: list[int]) -> str:
    return f"{min(steps):,}" if min(steps) == max(steps) else f"{min(steps):,}–{max(steps):,}"
