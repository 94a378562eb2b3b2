"""Pruning, weight sharing, storage bytes and int8 quantization (shared/compress.py, shared/compression/)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import CONFIGS, only_run_dir

from shared.cli import main
from shared.compress import CompressionState, train_step
from shared.compression.int8 import quantize_int8, saved_bytes
from shared.compression.prune import apply_masks, magnitude_masks, prunable_layers, round_keep
from shared.compression.share import SharedLayer, kmeans_1d
from shared.compression.storage import huffman_bits, huffman_lengths, layer_bytes, sparse_streams
from shared.models import build_model, count_parameters
from shared.run import latest_checkpoint, load_checkpoint
from shared.tracking import read_metrics, read_summary
from shared.train.optim import Schedule, ScheduleConfig


def test_lenet5_caffe_has_the_papers_431080_parameters():
    model = build_model("lenet5_caffe", num_classes=10, in_channels=1)
    assert count_parameters(model) == 520 + 25_050 + 400_500 + 5_010 == 431_080
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="28x28"):
        model(torch.zeros(2, 1, 32, 32))


def test_per_layer_and_global_thresholds_keep_the_hand_picked_weights():
    weights = {"a": torch.tensor([0.1, -0.5, 0.3, 0.05]), "b": torch.tensor([2.0, -1.0, 0.4, 0.9])}
    per_layer = magnitude_masks(weights, {"a": 0.5, "b": 0.5})
    assert per_layer["a"].tolist() == [False, True, True, False]  # -0.5 and 0.3
    assert per_layer["b"].tolist() == [True, True, False, False]  # 2.0 and -1.0
    global_ = magnitude_masks(weights, 0.5)  # the 4 largest of all 8: 2.0, -1.0, 0.9, -0.5
    assert global_["a"].tolist() == [False, True, False, False]
    assert global_["b"].tolist() == [True, True, False, True]
    # A weight pruned before stays pruned, however large it is now.
    again = magnitude_masks(
        weights, {"a": 0.5, "b": 0.25}, previous=per_layer | {"b": torch.tensor([0, 1, 1, 1]).bool()}
    )
    assert again["b"].tolist() == [False, True, False, False]
    assert [round_keep(0.125, r, 3) for r in range(3)] == pytest.approx([0.5, 0.25, 0.125], rel=1e-12)


def test_masks_stay_exactly_zero_through_retraining_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    layers = prunable_layers(model)
    assert list(layers) == ["1", "3"]
    state = CompressionState()
    state.masks = magnitude_masks({n: m.weight for n, m in layers.items()}, {"1": 0.25, "3": 0.5})
    apply_masks(layers, state.masks)
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    # Momentum and weight decay would move a pruned weight off zero if the masks were not applied after the step.
    state.optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    state.schedule = Schedule(state.optimizer, ScheduleConfig(), total_steps=5)
    for _ in range(5):
        train_step(model, layers, state, "prune", torch.randn(10, 1, 4, 4), torch.randint(0, 3, (10,)))
    for name, layer in layers.items():
        mask = state.masks[name]
        assert torch.count_nonzero(layer.weight[~mask]) == 0
        assert (layer.weight[mask] != before[name][mask]).all()  # the kept weights did learn


def test_kmeans_finds_three_clusters_exactly():
    values = torch.tensor([-1.25, 2.0, -1.0, 0.25, -0.75, 1.75, 0.0, 2.25, -0.25])
    centroids, assignment = kmeans_1d(values, 3)
    # Linear init -1.25, 0.5, 2.25 puts the middle cluster with 0.5 at the first assignment; then the means.
    assert centroids.tolist() == [-1.0, 0.0, 2.0]
    assert assignment.tolist() == [0, 2, 0, 1, 0, 2, 1, 2, 1]


def test_a_centroid_learns_from_the_summed_gradients_of_its_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
    layers = prunable_layers(model)
    mask = torch.tensor([[1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 0, 1]]).bool()
    book = SharedLayer.cluster(layers["1"].weight, mask, bits=2)
    assert book.centroids.shape == (4,) and book.codes.shape == (int(mask.sum()),)
    state = CompressionState()
    state.masks, state.shared = {"1": mask}, {"1": book}
    layers["1"].weight.data.copy_(book.weight())
    inputs, labels = torch.randn(5, 1, 2, 3), torch.tensor([0, 1, 1, 0, 1])

    reference = copy.deepcopy(model)  # the gradient of each weight at the shared values, computed apart
    F.cross_entropy(reference(inputs), labels).backward()
    member_sums = torch.zeros(4)
    for grad, code in zip(reference[1].weight.grad[mask], book.codes):
        member_sums[code] += grad
    centroids = book.centroids.detach().clone()

    state.optimizer = torch.optim.SGD([book.centroids, layers["1"].bias], lr=1.0)
    state.schedule = Schedule(state.optimizer, ScheduleConfig(), total_steps=1)
    train_step(model, layers, state, "share", inputs, labels)
    assert torch.allclose(book.centroids.detach(), centroids - member_sums, atol=1e-7)
    weight = layers["1"].weight.detach()
    assert torch.equal(weight[mask], book.centroids.detach()[book.codes]) and torch.count_nonzero(weight[~mask]) == 0


def test_relative_indices_with_a_filler_count_the_hand_made_bytes():
    mask = torch.zeros(1, 24, dtype=torch.bool)
    mask[0, [1, 3, 20]] = True
    codes = torch.tensor([5, 1, 2])
    # 3-bit gaps run 1..7: gaps 2, 2, 17; 17 = filler (7) + filler (7) + 3.
    index_stream, code_stream = sparse_streams(mask, codes, index_bits=3)
    assert index_stream.tolist() == [2, 2, 0, 0, 3]
    assert code_stream.tolist() == [5, 1, 0, 0, 2]
    stored = layer_bytes(mask, codes, code_bits=3, index_bits=3, huffman=False)
    # 5 entries x 3 bits = 15 bits -> 2 bytes, for each stream; a codebook of 2**3 fp32 values.
    assert stored == {"entries": 5, "fillers": 2, "index": 2, "codes": 2, "codebook": 32, "total": 36}
    unshared = layer_bytes(mask, None, code_bits=32, index_bits=3, huffman=False)
    assert unshared["codes"] == 20 and unshared["codebook"] == 0


def test_huffman_code_lengths_on_known_frequencies():
    assert huffman_lengths({7: 5, 8: 2, 9: 1, 10: 1}) == {7: 1, 8: 2, 9: 3, 10: 3}
    assert huffman_bits(torch.tensor([7] * 5 + [8] * 2 + [9, 10])) == 5 * 1 + 2 * 2 + 3 + 3
    assert huffman_bits(torch.tensor([4, 4, 4])) == 3  # a lone symbol still takes a bit


def test_dynamic_int8_quantization_stores_a_smaller_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
    quantized = quantize_int8(model)
    assert isinstance(model[1], nn.Linear) and model[1].weight.dtype == torch.float32  # the original is untouched
    assert saved_bytes(quantized) < saved_bytes(model) / 3  # int8 weights: a quarter, plus scales and packing
    x = torch.randn(4, 1, 28, 28)
    assert (quantized(x).argmax(1) == model(x).argmax(1)).all()


def test_compress_a_digits_run_end_to_end(tmp_path, capsys):
    common = ["tracking.wandb=disabled", f"runs_dir={tmp_path / 'runs'}"]
    source_args = ["data.name=digits", "data.pad=10", "train.max_steps=12", "train.eval_batch_size=360"]
    assert main(["train", str(CONFIGS / "classify" / "lenet300_mnist.yaml"), *source_args, *common]) == 0
    source = only_run_dir(tmp_path / "runs")
    source_checkpoints = sorted((source / "checkpoints").iterdir())

    config = str(CONFIGS / "compress" / "lenet300_mnist.yaml")
    settings = ["prune.iterations=2", "train.max_steps_per_stage=3", "int8.repeats=1", *common]
    assert main(["compress", str(source), "prune.keep.bogus=0.5", *settings, "--config", config]) == 2
    assert "prune.keep names bogus" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [source.name]  # the refused run left nothing

    assert main(["compress", str(source), *settings, "--config", config]) == 0
    run = next(p for p in (tmp_path / "runs").iterdir() if p != source)
    summary = read_summary(run)
    assert summary["train/steps"] == 9  # two prune rounds and the fine-tune, 3 steps each
    # Han 2015's Table 1 fractions of the 784x300, 300x100 and 100x10 weights, reached in the last round.
    assert summary["weights/kept"] == round(0.08 * 235_200) + round(0.09 * 30_000) + round(0.26 * 1_000) == 21_776
    assert summary["weights/total"] == 266_200 and summary["bytes/dense"] == 4 * 266_610
    assert summary["bytes/huffman"] == summary["bytes/compressed"] < summary["bytes/fixed_width"]
    assert summary["bytes/fixed_width"] < summary["bytes/pruned"] < summary["bytes/dense"]
    assert summary["compression/ratio"] == summary["bytes/dense"] / summary["bytes/compressed"]
    assert summary["test/error"] == summary["test/error_shared"]
    stages = [r for r in read_metrics(run / "metrics.jsonl") if "test/error" in r and "summary" not in r]
    assert [r["step"] for r in stages] == [0, 3, 6, 9]  # dense, two prune rounds, sharing: each measured
    assert [r["weights/kept_fraction"] for r in stages][0] == 1.0 and stages[-1]["bytes/stored"] == summary[
        "bytes/huffman"
    ]
    assert stages[1]["bytes/stored"] > stages[2]["bytes/stored"] > stages[3]["bytes/stored"]
    assert {"test/error_dense", "test/error_pruned", "test/error_int8", "bytes/int8", "speed/int8_over_fp32"} <= set(
        summary
    )
    assert summary["bytes/int8"] < summary["bytes/fp32_saved"]

    weights = load_checkpoint(latest_checkpoint(run))["state"]["model"]
    hidden = weights["hidden.0.weight"]
    assert torch.count_nonzero(hidden) == round(0.08 * 235_200)
    assert len(torch.unique(hidden[hidden != 0])) <= 2**5  # 5-bit codes: at most 32 shared values
    assert sorted((source / "checkpoints").iterdir()) == source_checkpoints  # the source run is only read
    config_written = (run / "config.yaml").read_text()
    assert f"source: {source}" in config_written and json.loads((run / "meta.json").read_text())["algo"] == "compress"
