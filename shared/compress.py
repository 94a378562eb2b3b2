"""Compressing a trained classifier (lecture 15): magnitude pruning with retraining (Han, Pool, Tran, Dally 2015,
"Learning both weights and connections for efficient neural networks"), then weight sharing by k-means with
fine-tuned centroids and the size of the stored model (Han, Mao, Dally 2016, "Deep Compression"), and
PyTorch's post-training dynamic int8 quantization beside them.

    pixlab compress runs/<classify run>                   # configs/compress/han2015.yaml with source=RUN
    pixlab train configs/compress/lenet300_mnist.yaml source=runs/<classify run>

A compress run reads a finished classify run (`source`: the weights of its newest intact checkpoint, its
dataset, its training recipe) and never changes it. Its stages, each measured on the test set and logged:
1. prune, `prune.iterations` rounds: each round removes the smallest weights until its share of the target is
   reached (shared/compression/prune.py), then retrains `prune.retrain_epochs` with the masks held, with the
   source run's optimizer, schedule, batch size and augmentation at `prune.lr_scale` times its learning rate
   (Han 2015, Section 3.3: retraining starts from the trained weights, so it needs a lower rate);
2. share: k-means per layer over the surviving weights, then `share.finetune_epochs` of training the
   centroids (and the biases) with the summed gradients of their weights (shared/compression/share.py);
3. storage: the bytes of the sparse, shared model, with and without Huffman coding, against the dense fp32
   model's bytes (shared/compression/storage.py);
4. int8: the dense source model through torch.ao.quantization.quantize_dynamic: its error, its saved size and
   its CPU speed beside fp32 (shared/compression/int8.py).

The stages are ranges of one step counter, so checkpoints, `pixlab resume` and the logs work as for every
trainer: a checkpoint holds the model, the masks, the codebooks and the stage's optimizer, and the data order
is a function of (seed, step) only. The model stays a plain zoo model throughout (pruned weights are zeros,
shared weights are copies of their centroids), so `pixlab eval` and any tool that reads a classify model read it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from shared.analysis import load_classifier
from shared.classify import ClassifyConfig, evaluate_split
from shared.compression.int8 import images_per_second, quantize_int8, saved_bytes
from shared.compression.prune import (
    apply_masks,
    count_kept,
    layer_kind,
    magnitude_masks,
    prunable_layers,
    round_keep,
)
from shared.compression.share import SharedLayer, set_centroid_gradients, write_shared_weights
from shared.compression.storage import compressed_bytes, dense_bytes
from shared.config import RunConfig, load_config, register, require, require_positive
from shared.data import ImageData, epoch_order
from shared.data.augment import augment
from shared.errors import ConfigError
from shared.run import Run
from shared.train.device import select_device
from shared.train.loop import RunningMeans
from shared.train.optim import Schedule, make_optimizer


@dataclass
class PruneConfig:
    iterations: int = 3  # prune-retrain rounds to reach the target (0: no pruning)
    scope: Literal["layer", "global"] = "layer"  # layer: a fraction per layer; global: one threshold over all
    keep_conv: float = 0.3  # scope layer: fraction of each conv layer's weights kept, unless `keep` names the layer
    keep_fc: float = 0.1  # scope layer: the same for each linear layer
    keep: dict[str, float] = field(default_factory=dict)  # scope layer: {module name: fraction kept}, Han's tables
    keep_global: float = 0.1  # scope global: the fraction of all the conv and linear weights kept
    retrain_epochs: int = 2  # after each round, with the masks held
    lr_scale: float = 0.1  # retraining lr = lr_scale * the source run's optim.lr


@dataclass
class ShareConfig:
    enabled: bool = True
    bits_conv: int = 8  # codebook of 2**bits centroids per conv layer (Deep Compression: 8 for conv)
    bits_fc: int = 5  # ... per linear layer (Deep Compression: 5 for fc)
    finetune_epochs: int = 1  # of the centroids (and biases)
    lr_scale: float = 0.1  # fine-tuning lr = lr_scale * the source run's optim.lr


@dataclass
class StorageConfig:
    index_bits_conv: int = 8  # bits per relative sparse index in conv layers (Deep Compression: 8)
    index_bits_fc: int = 4  # ... in linear layers (Deep Compression: 4 for fc)
    huffman: bool = True  # bytes/compressed counts Huffman-coded indices and codes (bytes/fixed_width never does)


@dataclass
class Int8Config:
    enabled: bool = True
    repeats: int = 3  # timed passes over the test set per model; the fastest counts


@dataclass
class CompressTrainConfig:
    batch_size: Optional[int] = None  # default: the source run's train.batch_size
    max_steps_per_stage: Optional[int] = None  # cap each retraining and fine-tuning stage (smoke tests, budgets)


@dataclass
class CompressConfig(RunConfig):
    algo: str = "compress"
    name: str = "compress"
    source: Optional[str] = None  # a classify run folder; its newest intact checkpoint is compressed
    prune: PruneConfig = field(default_factory=PruneConfig)
    share: ShareConfig = field(default_factory=ShareConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    int8: Int8Config = field(default_factory=Int8Config)
    train: CompressTrainConfig = field(default_factory=CompressTrainConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        p = self.prune
        require(p.iterations >= 0, "prune.iterations", "must be >= 0", p.iterations)
        for key, value in [("keep_conv", p.keep_conv), ("keep_fc", p.keep_fc), ("keep_global", p.keep_global)]:
            require(0 < value <= 1, f"prune.{key}", "must be a fraction in (0, 1]", value)
        for layer, value in p.keep.items():
            require(0 < value <= 1, f"prune.keep.{layer}", "must be a fraction in (0, 1]", value)
        for key in ("share.bits_conv", "share.bits_fc"):
            bits = getattr(self.share, key.split(".")[1])
            require(1 <= bits <= 16, key, "must be in 1..16 (a codebook of 2**bits fp32 values)", bits)
        for key in ("storage.index_bits_conv", "storage.index_bits_fc"):
            bits = getattr(self.storage, key.split(".")[1])
            require(1 <= bits <= 32, key, "must be in 1..32", bits)
        require_positive(
            self,
            "prune.retrain_epochs",
            "prune.lr_scale",
            "share.finetune_epochs",
            "share.lr_scale",
            "int8.repeats",
            optional=("train.batch_size", "train.max_steps_per_stage"),
        )

    def check(self) -> None:
        if self.source is not None:
            source_config(self.source)


def source_config(source: str) -> ClassifyConfig:
    """The classify config of the run folder `source`; a ConfigError naming `source` when it is not one."""
    config = Path(source) / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"source={source!r} is not a run folder: it has no config.yaml", key="source")
    algorithm, cfg = load_config(config)
    if algorithm.name != "classify":
        raise ConfigError(f"source={source!r} is a {algorithm.name} run; compress reads a classify run", key="source")
    return cfg


# ------------------------------------------------------------------------------------------- the plan
@dataclass
class Stage:
    """A range of steps: prune round `round` (0-based: prune to its fractions, then retrain) or the
    weight-sharing fine-tune (its `round` is prune.iterations, after the last prune round)."""

    kind: Literal["prune", "share"]
    start: int
    steps: int
    round: int = 0

    @property
    def end(self) -> int:
        return self.start + self.steps


def plan_stages(cfg: CompressConfig, steps_per_epoch: int) -> list[Stage]:
    """Every stage in order, with its first step and length."""
    cap = cfg.train.max_steps_per_stage or math.inf
    retrain = int(min(cfg.prune.retrain_epochs * steps_per_epoch, cap))
    stages = [Stage("prune", r * retrain, retrain, r) for r in range(cfg.prune.iterations)]
    if cfg.share.enabled:
        finetune = int(min(cfg.share.finetune_epochs * steps_per_epoch, cap))
        stages.append(Stage("share", len(stages) * retrain, finetune, cfg.prune.iterations))
    return stages


def keep_targets(prune: PruneConfig, layers: dict[str, nn.Module]) -> Union[dict[str, float], float]:
    """The final fractions kept: {layer: fraction} (scope layer) or one fraction of them all (scope global)."""
    if prune.scope == "global":
        return prune.keep_global
    unknown = sorted(set(prune.keep) - set(layers))
    if unknown:
        raise ConfigError(
            f"prune.keep names {', '.join(unknown)}, not conv or linear layers of the source model; "
            f"its layers: {', '.join(layers)}",
            key="prune.keep",
        )
    default = {"conv": prune.keep_conv, "fc": prune.keep_fc}
    return {name: prune.keep.get(name, default[layer_kind(layer)]) for name, layer in layers.items()}


def keep_in_round(target: Union[dict[str, float], float], stage: Stage, iterations: int):
    if isinstance(target, dict):
        return {name: round_keep(keep, stage.round, iterations) for name, keep in target.items()}
    return round_keep(target, stage.round, iterations)


class CompressionState:
    """What a checkpoint holds besides the weights: the masks, the codebooks, and the optimizer and schedule
    of the stage in progress (restored into that stage's fresh ones when a run resumes within it)."""

    def __init__(self) -> None:
        self.masks: dict[str, torch.Tensor] = {}  # layer -> bool, shaped like its weight
        self.shared: dict[str, SharedLayer] = {}
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.schedule: Optional[Schedule] = None
        self.restored: dict = {}

    def state_dict(self) -> dict:
        return {
            "masks": self.masks,
            "shared": {name: book.state() for name, book in self.shared.items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "schedule": self.schedule.state_dict() if self.schedule else {},
        }

    def load_state_dict(self, state: dict) -> None:
        self.masks = dict(state["masks"])
        self.shared = {name: SharedLayer.from_state(s) for name, s in state["shared"].items()}
        self.restored = {"optimizer": state["optimizer"], "schedule": state["schedule"]}


# ------------------------------------------------------------------------------------------- one step
def train_step(
    model: nn.Module,
    layers: dict[str, nn.Module],
    state: CompressionState,
    kind: str,
    inputs: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """One optimizer step of a stage on a batch of model inputs (B, C, H, W) and labels (B,); the mean loss.

    prune: every weight learns, then the masks set the pruned ones back to exactly zero.
    share: the codebooks learn from their weights' summed gradients, then the layers take their new values.
    """
    model.train()
    loss = F.cross_entropy(model(inputs).float(), labels)
    model.zero_grad(set_to_none=True)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if kind == "share":
        set_centroid_gradients(layers, state.shared)
    state.optimizer.step()
    state.schedule.step()
    if kind == "share":
        write_shared_weights(layers, state.shared)
    else:
        apply_masks(layers, state.masks)
    return loss.detach()


def begin_stage(
    stage: Stage, cfg: CompressConfig, layers: dict[str, nn.Module], state: CompressionState, target
) -> None:
    """At a stage's first step: prune to the round's fractions, or cluster the surviving weights."""
    if stage.kind == "prune":
        weights = {name: layer.weight for name, layer in layers.items()}
        state.masks = magnitude_masks(weights, keep_in_round(target, stage, cfg.prune.iterations), state.masks)
        apply_masks(layers, state.masks)
    else:
        bits = {"conv": cfg.share.bits_conv, "fc": cfg.share.bits_fc}
        state.shared = {
            name: SharedLayer.cluster(layer.weight, full_mask(state, name, layer), bits[layer_kind(layer)])
            for name, layer in layers.items()
        }
        write_shared_weights(layers, state.shared)


def stage_optimizer(stage: Stage, cfg: CompressConfig, source: ClassifyConfig, model, state: CompressionState):
    """The source run's optimizer and schedule at the stage's lower learning rate, over what the stage trains:
    every parameter when retraining, the centroids and the unshared parameters (biases) when fine-tuning."""
    if stage.kind == "prune":
        parameters, lr_scale = list(model.parameters()), cfg.prune.lr_scale
    else:
        shared_weights = {id(layer.weight) for layer in prunable_layers(model).values()}
        unshared = [p for p in model.parameters() if id(p) not in shared_weights]
        parameters, lr_scale = [book.centroids for book in state.shared.values()] + unshared, cfg.share.lr_scale
    state.optimizer = make_optimizer(parameters, replace(source.optim, lr=source.optim.lr * lr_scale))
    state.schedule = Schedule(state.optimizer, source.schedule, stage.steps)


def full_mask(state: CompressionState, name: str, layer: nn.Module) -> torch.Tensor:
    """The layer's mask, or all-true when nothing was pruned."""
    if name in state.masks:
        return state.masks[name]
    return torch.ones_like(layer.weight, dtype=torch.bool)


# ------------------------------------------------------------------------------------------- train
def train(cfg: CompressConfig, run: Run) -> None:
    if cfg.source is None:
        raise ConfigError(
            "source is not set: name the classify run to compress (pixlab compress runs/<id>, or source=runs/<id>)",
            key="source",
        )
    source, model, data = load_classifier(cfg.source, run.device, training=True)
    dense = copy.deepcopy(model).cpu() if cfg.int8.enabled else None  # the source weights, before any restore
    layers = prunable_layers(model)
    target = keep_targets(cfg.prune, layers)
    batch_size = cfg.train.batch_size or source.train.batch_size
    eval_batch_size = source.train.eval_batch_size
    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    stages = plan_stages(cfg, steps_per_epoch)
    total_steps = stages[-1].end if stages else 0

    state = CompressionState()
    objects = {"model": model, "compression": state}
    counters = run.restore(objects) or {"step": 0}
    step, results = counters["step"], dict(counters.get("results", {}))
    running = RunningMeans(["loss"], run.device, counters)

    def measure(key: str) -> float:
        """Test error, the fraction of weights kept and (after a stage) the bytes stored now: logged; the error
        and fraction also kept for the summary under `key` (test/error_dense, _pruned, _shared)."""
        error = evaluate_split(model, data.test, data, eval_batch_size)["error"]
        kept, weights = count_kept({n: full_mask(state, n, layer) for n, layer in layers.items()})
        metrics = {"test/error": error, "weights/kept_fraction": kept / weights}
        if step > 0:
            metrics["bytes/stored"] = stored_bytes(cfg, model, layers, state, shared=True, huffman=cfg.storage.huffman)
        run.log(metrics, step)
        results.update({key: error, "weights/kept_fraction": kept / weights})
        return error

    def save() -> None:
        run.save(step, objects, running.state() | {"results": results})

    if step == 0:
        measure("test/error_dense")
    progress = tqdm(total=total_steps, initial=step, desc=cfg.name, unit="step", disable=None, dynamic_ncols=True)
    order_epoch, order = -1, None
    for stage in stages:
        if step >= stage.end:
            continue
        if step == stage.start:
            begin_stage(stage, cfg, layers, state, target)
        stage_optimizer(stage, cfg, source, model, state)
        if step > stage.start:  # resumed within the stage
            state.optimizer.load_state_dict(state.restored["optimizer"])
            state.schedule.load_state_dict(state.restored["schedule"])
        while step < stage.end:
            epoch, batch = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(len(data.train), cfg.seed, epoch, run.device)
            index = order[batch * batch_size : (batch + 1) * batch_size]
            images = augment(data.train.images[index], source.data.augment, cfg.seed, step)
            loss = train_step(model, layers, state, stage.kind, data.prepare(images), data.train.labels[index])
            step += 1
            running.add(loss=loss)
            progress.update(1)
            if step % cfg.tracking.log_every == 0:
                metrics = running.pop()
                run.check_finite("train/loss", metrics["train/loss"], step)
                run.log(metrics | {"train/lr": state.schedule.lr, "compress/stage": stage.round + 1}, step)
            if step == stage.end:
                error = measure("test/error_pruned" if stage.kind == "prune" else "test/error_shared")
                progress.write(f"{stage_name(stage, cfg)}: test error {error:.2%}")
            if step % cfg.checkpoint.every == 0 or step == stage.end or run.should_stop:
                save()
            if run.should_stop:
                progress.close()
                return
    progress.close()
    summary = results | storage_metrics(cfg, model, layers, state)
    final = [k for k in ("test/error_shared", "test/error_pruned", "test/error_dense") if k in results][0]
    summary["test/error"] = results[final]
    if cfg.int8.enabled:
        summary |= int8_metrics(cfg, dense, data, eval_batch_size)
    run.summary(summary | {"train/steps": step})
    print(format_summary(cfg.name, summary))


def stage_name(stage: Stage, cfg: CompressConfig) -> str:
    if stage.kind == "prune":
        return f"prune round {stage.round + 1}/{cfg.prune.iterations}"
    return "weight sharing"


def stored_bytes(
    cfg: CompressConfig, model: nn.Module, layers: dict, state: CompressionState, shared: bool, huffman: bool
) -> int:
    """Bytes of the model stored sparse as it stands: relative indices, and codes into the codebooks (when `shared`
    and the layers are shared yet) or fp32 values (shared/compression/storage.py)."""
    masks = {name: full_mask(state, name, layer) for name, layer in layers.items()}
    bits = {"conv": cfg.storage.index_bits_conv, "fc": cfg.storage.index_bits_fc}
    index_bits = {name: bits[layer_kind(layer)] for name, layer in layers.items()}
    books = state.shared if shared else {}
    codes = {name: book.codes for name, book in books.items()}
    code_bits = {name: book.bits for name, book in books.items()}
    return compressed_bytes(model, masks, codes, code_bits, index_bits, huffman)[0]


def storage_metrics(cfg: CompressConfig, model: nn.Module, layers: dict, state: CompressionState) -> dict:
    """bytes/* and compression/ratio of the model as stored now (pruned and shared), against dense fp32."""
    dense = dense_bytes(model)
    pruned = stored_bytes(cfg, model, layers, state, shared=False, huffman=False)
    fixed = stored_bytes(cfg, model, layers, state, shared=True, huffman=False)
    huffman = stored_bytes(cfg, model, layers, state, shared=True, huffman=True)
    stored = huffman if cfg.storage.huffman else fixed
    kept, weights = count_kept({name: full_mask(state, name, layer) for name, layer in layers.items()})
    return {
        "weights/kept": kept,
        "weights/total": weights,
        "bytes/dense": dense,
        "bytes/pruned": pruned,
        "bytes/fixed_width": fixed,
        "bytes/huffman": huffman,
        "bytes/compressed": stored,
        "compression/ratio": dense / stored,
        "compression/weights_ratio": weights / kept,
    }


def int8_metrics(cfg: CompressConfig, dense: nn.Module, data: ImageData, batch_size: int) -> dict:
    """The dense source model (on CPU) against its dynamic int8 copy: test error, saved bytes, images/s."""
    quantized = quantize_int8(dense)
    test = data.test.to(torch.device("cpu"))
    fp32_speed = images_per_second(dense, test, data, batch_size, cfg.int8.repeats)
    int8_speed = images_per_second(quantized, test, data, batch_size, cfg.int8.repeats)
    return {
        "test/error_int8": evaluate_split(quantized, test, data, batch_size)["error"],
        "bytes/fp32_saved": saved_bytes(dense),
        "bytes/int8": saved_bytes(quantized),
        "speed/fp32_images_per_s": fp32_speed,
        "speed/int8_images_per_s": int8_speed,
        "speed/int8_over_fp32": int8_speed / fp32_speed,
    }


def format_summary(name: str, s: dict) -> str:
    lines = [f"{name}: test error dense {s['test/error_dense']:.2%}"]
    if "test/error_pruned" in s:
        lines.append(
            f"  pruned  {s['test/error_pruned']:.2%} with {s['weights/kept']:,} of {s['weights/total']:,} weights "
            f"({s['compression/weights_ratio']:.1f}x fewer)"
        )
    if "test/error_shared" in s:
        lines.append(f"  shared  {s['test/error_shared']:.2%}")
    lines.append(
        f"  stored  {s['bytes/compressed']:,} bytes of {s['bytes/dense']:,} dense fp32 ({s['compression/ratio']:.1f}x; "
        f"pruned fp32 {s['bytes/pruned']:,}, fixed width {s['bytes/fixed_width']:,}, Huffman {s['bytes/huffman']:,})"
    )
    if "test/error_int8" in s:
        lines.append(
            f"  int8    {s['test/error_int8']:.2%}, {s['bytes/int8']:,} bytes saved vs {s['bytes/fp32_saved']:,} fp32, "
            f"{s['speed/int8_images_per_s']:,.0f} vs {s['speed/fp32_images_per_s']:,.0f} images/s on CPU "
            f"({s['speed/int8_over_fp32']:.2f}x)"
        )
    return "\n".join(lines)


def evaluate(cfg: CompressConfig, checkpoint: dict) -> dict:
    """Test error and sparsity of the compressed weights in `checkpoint`."""
    device = select_device(cfg.device)
    source, model, data = load_classifier(cfg.source, device)
    model.load_state_dict(checkpoint["state"]["model"])
    metrics = evaluate_split(model, data.test, data, source.train.eval_batch_size)
    weights = [layer.weight for layer in prunable_layers(model).values()]
    kept = sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)
    return {"step": checkpoint["step"], "weights/kept_fraction": kept} | {f"test/{k}": v for k, v in metrics.items()}


register(
    CompressConfig,
    train,
    evaluate,
    metrics=[
        {"name": "test/error", "goal": "minimize", "unit": "%", "scale": 100},  # of the final compressed model
        {"name": "test/error_shared", "goal": "minimize", "unit": "%", "scale": 100, "once": True},
        {"name": "test/error_pruned", "goal": "minimize", "unit": "%", "scale": 100, "once": True},
        {"name": "test/error_dense", "goal": "minimize", "unit": "%", "scale": 100, "once": True},
        {"name": "compression/ratio", "goal": "maximize", "unit": "x", "once": True},  # dense fp32 bytes / stored
        {"name": "compression/weights_ratio", "goal": "maximize", "unit": "x", "once": True},  # Han 2015's "12x"
        {"name": "weights/kept_fraction", "goal": None},
        {"name": "bytes/compressed", "goal": "minimize", "unit": "bytes", "once": True},
        {"name": "bytes/stored", "goal": "minimize", "unit": "bytes"},  # after each stage, as the model stands
        {"name": "bytes/dense", "unit": "bytes", "once": True},
        {"name": "test/error_int8", "goal": "minimize", "unit": "%", "scale": 100, "once": True},
        {"name": "bytes/int8", "goal": "minimize", "unit": "bytes", "once": True},
        {"name": "speed/int8_over_fp32", "goal": "maximize", "once": True},  # CPU images/s ratio; not a test assertion
        {"name": "train/loss", "goal": "minimize", "unit": "nats"},
        {"name": "train/lr"},
        {"name": "compress/stage"},  # 1..prune.iterations: the prune rounds; prune.iterations + 1: the fine-tune
    ],
)
