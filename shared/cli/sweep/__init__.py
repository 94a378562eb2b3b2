"""Sweeps: a W&B sweep YAML -> a list of trials -> a backend that runs them, resumably.

    pixlab sweep configs/sweeps/lenet5_digits_lr.yaml --workers 2
    pixlab sweep configs/sweeps/lenet5_digits_bayes.yaml   # bayes + hyperband, offline, through Optuna
    pixlab sweep SPEC --backend slurm       # the same trials as Slurm jobs, through submitit
    pixlab sweep SPEC --backend wandb       # W&B's sweep server picks the trials and stops them

The spec is W&B's sweep format, so whoever knows W&B sweeps knows it:

    method: grid                  # grid, random or bayes
    metric: {name: test/error, goal: minimize}        # bayes and early_terminate need it
    parameters:
      optim.lr: {values: [0.001, 0.003]}              # a dotted config key, as on the command line
      optim.weight_decay: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}
      train: {parameters: {batch_size: {value: 64}}}  # W&B's nesting: the key train.batch_size
    early_terminate: {type: hyperband, min_iter: 2, eta: 3}   # stop trials that fall behind (any method)
    run_cap: 8                    # random: how many draws (grid: at most this many combinations; bayes: points)
    config: configs/classify/lenet5_digits.yaml       # pixlab: the base config (cwd, then the repository)
    seeds: 3                      # pixlab: every combination runs with seeds 0, 1, 2 (or a list); bayes: the
                                  # objective is the mean over them
    overrides: [train.epochs=5]   # pixlab: applied to every trial, as on the `pixlab train` command line
    sample_seed: 0                # pixlab: seeds the random draws, so a re-run draws the same trials
    retries: 2                    # pixlab: a crashing trial is tried again up to this many times
    slurm: {partition: gpu, time: 120, gpus: 1, cpus: 8, mem_gb: 32}   # pixlab, --backend slurm

`program` and `command` are accepted and ignored (pixlab runs its own trial function). Distributions:
constant, categorical, uniform, int_uniform, q_uniform, log_uniform (bounds are natural logs, as in W&B),
log_uniform_values, q_log_uniform_values, normal and log_normal; W&B's rule stands that min and max without a
distribution mean int_uniform when both are integers, else uniform. W&B's q_log_uniform, q_normal, q_log_normal,
inv_log_uniform(_values), beta and q_beta are refused, naming the supported ones.

How it works, top to bottom (one module of this package a step):
1. spec.py: `load_spec` reads and checks the whole spec: a misspelled key, a distribution with min > max,
   bayes without run_cap or metric, a bad early_terminate, each trial's config (loaded exactly as `pixlab train`
   would load it), all fail with exit status 2 before anything is written.
2. trials.py: `expand` turns it into trials: the grid's product in the order of the spec, or `run_cap` draws
   from a generator seeded by `sample_seed`; each crossed with the seeds. A trial is the base config plus
   key=value overrides, and its own run name `<sweep>-t<index>`. search.py: a bayes sweep has no list; its Optuna
   study (runs/<sweep>/study.journal) asks for each point as the sweep goes, from the results so far, and with
   early_terminate (any method) the study's pruner, W&B's hyperband rule (hyperband.py), stops trials that fall
   behind from the values they log.
3. Each trial is a normal run folder in runs/<sweep>/ (config.yaml, meta.json, metrics.jsonl, checkpoints/),
   made by the trial function that shared/cli/__init__.py hands in: `pixlab train` with the overrides, or `pixlab
   resume` of the trial's folder when it has one already. shared/ does not know the algorithms, the CLI does.
   `tracking.group` is the sweep's name, so W&B groups the trials.
4. state.py: runs/<sweep>/sweep.json holds the sweep's state: each trial's overrides, status (pending,
   running, done, failed, interrupted, pruned), attempts and the tracebacks of its failures. Only the
   coordinating process writes it, atomically. Running the same command again skips the finished (and pruned)
   trials and resumes the others from their checkpoints, and a bayes sweep's study goes on from its trial
   count; more seeds add trials (not with a study: its objective is the mean over them), a raised run_cap
   continues a bayes search, another change of the spec is refused.
5. backends.py: backends run trials through one small interface (start, wait, signal): `LocalPool`, one
   process per attempt, forked from a forkserver that imported torch once (at most --workers at once, torch
   limited to --threads threads each, output to runs/<sweep>/<trial>.log), and `SlurmPool`, the same trial
   function submitted with submitit (`slurm.cluster: local` runs the same submission path on this machine).
   `stop` ends one trial early for the pruner (SIGTERM: it checkpoints). wandb_backend.py: `run_wandb` registers
   the sweep with W&B and runs `wandb.agent`s, whose server chooses the trials (and applies early_terminate); that
   backend needs a W&B login and is not exercised by the tests.
6. driver.py: `run_sweep` drives a backend. A crashing trial is recorded with its traceback and retried, from
   its checkpoint, while the others go on; a PixlabError (bad config or data, a diverged loss) is not retried:
   it would fail again. Ctrl-C or SIGTERM is passed once to every running trial, which checkpoints; the sweep
   then exits with 128 + the signal, and the trials are marked interrupted.
7. A progress line shows trials done, pruned, running, failed and pending, with an ETA from the trials finished
   so far. A study's sweep ends with its best point and runs/<sweep>/sweep_objective.png, the objective of each
   trial against its number with the best so far.
"""

from shared.cli.sweep.backends import LocalPool, Outcome, SlurmPool, TrialFunction, TrialJob, execute_trial
from shared.cli.sweep.driver import BACKENDS, Progress, run_sweep, summary_table
from shared.cli.sweep.search import Search, map_parameter, write_objective_plot
from shared.cli.sweep.spec import Parameter, SweepSpec, load_spec, parse_spec, resolve_config_path
from shared.cli.sweep.state import STATE_FORMAT, SweepResult, SweepState, find_run_dir
from shared.cli.sweep.trials import Trial, check_trials, expand, override_text
from shared.cli.sweep.wandb_backend import check_wandb_online, run_wandb

__all__ = [
    "BACKENDS",
    "STATE_FORMAT",
    "LocalPool",
    "Outcome",
    "Parameter",
    "Progress",
    "Search",
    "SlurmPool",
    "SweepResult",
    "SweepSpec",
    "SweepState",
    "Trial",
    "TrialFunction",
    "TrialJob",
    "check_trials",
    "check_wandb_online",
    "execute_trial",
    "expand",
    "find_run_dir",
    "load_spec",
    "map_parameter",
    "override_text",
    "parse_spec",
    "resolve_config_path",
    "run_sweep",
    "run_wandb",
    "summary_table",
    "write_objective_plot",
]
