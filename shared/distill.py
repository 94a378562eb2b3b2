"""Knowledge distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network").

A trained teacher's class probabilities, softened by a temperature T, are targets for a student as well as
the labels (Section 2):

    loss = alpha * T^2 * H(softmax(z_t / T), softmax(z_s / T)) + (1 - alpha) * H(y, softmax(z_s))

with H(p, q) = -sum_k p_k log q_k the cross-entropy, z_t and z_s the teacher's and the student's logits of
the same (augmented) batch. The soft term's gradient with respect to z_s is (q_s - q_t) / T, whose size
falls as 1/T^2 for large T (logits matched as T grows); the factor T^2 keeps the two terms' relative
weight when T changes. The soft term is a cross-entropy, as in the paper: it exceeds the KL divergence by
the teacher's entropy, a constant for the student, so a distilled run's train/loss is not comparable with
a plain run's.

In the classify trainer (shared/classify.py):

    train:
      distill: {teacher: runs/<a classify run>, temperature: 20, alpha: 0.9}

The teacher is the newest intact checkpoint of that run (its EMA weights when it kept them), frozen, in
eval mode (dropout off), on the training device; it must have been trained on the same data (data.name,
data.pad) because it reads the student's input tensor. Any zoo model can teach any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from shared.config import require
from shared.errors import ConfigError

PREFIX = "train.distill"


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # a classify run folder whose newest intact checkpoint teaches; null: no teacher
    temperature: float = 20.0  # T: Section 3 distils MNIST at 20
    # weight of the soft targets, 1 - alpha the labels' ("considerably lower", Section 2). 0.9 is the common
    # choice; on MNIST our students learned the teacher too loosely with it, and mlp800_distill_mnist.yaml uses 0.3
    alpha: float = 0.9


def check_values(cfg: DistillConfig) -> None:
    """Range checks of `train.distill` (ConfigError naming the key)."""
    require(cfg.temperature > 0, f"{PREFIX}.temperature", "must be > 0", cfg.temperature)
    require(0 <= cfg.alpha <= 1, f"{PREFIX}.alpha", "must be in [0, 1]", cfg.alpha)


def check_teacher(cfg: DistillConfig, data_name: str, pad: int, val_size: int) -> None:
    """The teacher must be a classify run folder trained on the student's data (`data.name`, `data.pad`): it
    reads the student's input tensor. When the student holds out `val_size` validation images, the teacher
    must not have trained on them: it must have held out at least as many (`hold_out` takes the first images
    of one fixed shuffle, so its held-out images include the student's). A teacher that learned them carries
    their labels into its soft targets for the training images and the student's validation error comes out
    too low: a distilled student that made 158 test errors scored 1.25% on such a split, one trained alone
    138 errors and 1.65%. Reads only its config.yaml, so a mistake exits before a run folder exists."""
    key = f"{PREFIX}.teacher"
    config = Path(cfg.teacher) / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{key}={cfg.teacher!r}: not a run folder (it has no config.yaml)", key=key)
    try:
        raw = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}={cfg.teacher!r}: cannot read {config}: {e}", key=key) from None
    if raw.get("algo") != "classify":
        raise ConfigError(f"{key}={cfg.teacher!r}: a classify run teaches, not algo {raw.get('algo')!r}", key=key)
    data = raw.get("data") or {}
    theirs, ours = (data.get("name"), data.get("pad", 0)), (data_name, pad)
    if theirs != ours:
        raise ConfigError(
            f"{key}={cfg.teacher!r}: the teacher was trained on data.name={theirs[0]}, data.pad={theirs[1]}, "
            f"this run reads data.name={ours[0]}, data.pad={ours[1]}; the teacher must read the same inputs",
            key=key,
        )
    held = data.get("val_size", 0)
    if val_size > held:
        raise ConfigError(
            f"{key}={cfg.teacher!r}: the teacher trained on {val_size - held} of this run's data.val_size={val_size} "
            f"validation images (it held out {held}): they would leak into the validation error through its soft "
            f"targets; give the teacher data.val_size >= {val_size}, or this run data.val_size <= {held}",
            key=key,
        )


def load_teacher(run_dir: str | Path, device: torch.device) -> nn.Module:
    """The classify run's scored weights (newest intact checkpoint, EMA when kept) on `device`: eval mode (no
    dropout, batch-norm running statistics) and every parameter frozen."""
    from shared.analysis import load_classifier

    _, teacher, _ = load_classifier(run_dir, device)
    teacher.eval().requires_grad_(False)
    return teacher


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """alpha * T^2 * H(softmax(z_t / T), softmax(z_s / T)) + (1 - alpha) * H(labels, softmax(z_s)), in nats.

    student_logits, teacher_logits: (B, C) floats; labels: (B,) class indices. `reduction`: "mean" or "sum"
    over the batch. No gradient flows into the teacher's logits.
    """
    soft_targets = F.softmax(teacher_logits.detach() / temperature, dim=1)  # (B, C)
    soft = -(soft_targets * F.log_softmax(student_logits / temperature, dim=1)).sum(1)  # (B,)
    hard = F.cross_entropy(student_logits, labels, reduction="none")  # (B,)
    per_example = alpha * temperature**2 * soft + (1 - alpha) * hard
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    raise ValueError(f"reduction={reduction!r}; valid: mean, sum")
