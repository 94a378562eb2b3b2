"""The figures of shared/figures.py on small synthetic inputs, the completion sampler's given rows, and the
trainers' media functions run against a recording stand-in for a run (no training, no dataset files)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from generative.dcgan import DCGANConfig, log_training_animation, slerp, training_frames
from generative.pixelcnn import GatedPixelCNN, PixelCNN, complete
from generative.sampling import sample
from rl.ram import RAMConfig, RAMTrainConfig, RecurrentAttention, plot_glimpses
from shared import classify
from shared.classify import ClassifyConfig, ClassifyDataConfig, log_test_figures
from shared.data import ImageData, Split
from shared.figures import (
    completion_figure,
    confusion_counts,
    confusion_figure,
    glimpse_figure,
    glimpse_frames,
    image_grid_figure,
    mistake_caption,
    render,
)
from shared.media import read_video
from shared.models.glimpse import GlimpseConfig

DIGITS = [str(k) for k in range(10)]


class RecordingRun:
    """What a trainer's media functions call on a run, recorded: the keys of its images and videos."""

    def __init__(self, directory):
        self.dir = directory
        (directory / "media").mkdir(exist_ok=True)
        self.images: dict[str, torch.Tensor] = {}
        self.videos: dict[str, object] = {}

    def log_images(self, key, images, step, nrow=8):
        self.images[key] = images

    def log_video(self, key, path, step):
        self.videos[key] = path


def texts(figure) -> list[str]:
    """Every piece of text drawn on a figure: titles, axis labels, tick labels, annotations, legend entries."""
    return [t.get_text() for t in figure.findobj(lambda artist: hasattr(artist, "get_text")) if t.get_text()]


# ------------------------------------------------------------------------------------------- grids and confusion
def test_a_mistake_tile_is_captioned_with_truth_prediction_and_probability():
    caption = mistake_caption(4, 9, 0.8712, DIGITS)
    assert caption == "true 4 -> 9 (0.87)"
    assert (
        mistake_caption(3, 5, 0.5, ["airplane", "automobile", "bird", "cat", "deer", "dog"]) == "true cat -> dog (0.50)"
    )
    images = torch.rand(3, 1, 8, 8)
    images[0, 0, 0, 0] = 0.0  # not white: the first tile's corner is the grid's first non-white pixel
    figure = image_grid_figure(images, "three mistakes", columns=2, captions=[caption, "b", "c"], tile_px=32)
    assert [t.get_text() for t in figure.texts] == ["three mistakes", caption, "b", "c"]  # the title, then the captions
    rgb = render(figure)
    width, height = figure.get_size_inches() * figure.dpi
    assert rgb.dtype == np.uint8 and rgb.shape == (round(height), round(width), 3)
    tiles = figure.images[0].get_array()  # the tiles, enlarged 4x to 32 pixels, pixel for pixel
    top, left = next(zip(*np.nonzero(tiles[:, :, 0] != 255)))  # the first tile's corner
    first = images[0, 0].mul(255).round().byte().numpy().repeat(4, 0).repeat(4, 1)
    assert np.array_equal(tiles[top : top + 32, left : left + 32, 0], first)


def test_confusion_counts_rows_are_truth_and_columns_predictions():
    truths = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])
    counts = confusion_counts(truths, predictions, 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    figure = confusion_figure(counts, ["zero", "one", "two"], "hand-made")
    matrix, colour_bar = figure.axes
    assert matrix.get_title() == "hand-made: error 33.33% (2 of 6)"
    assert (matrix.get_xlabel(), matrix.get_ylabel()) == ("predicted class", "true class")
    assert [t.get_text() for t in matrix.get_yticklabels()] == ["zero", "one", "two"]
    assert colour_bar.get_ylabel() == "test images (log scale)"
    assert sorted(t.get_text() for t in matrix.texts) == ["1", "1", "1", "1", "2"]  # the non-empty cells


def test_classify_end_of_run_figures_caption_each_mistake(tmp_path, monkeypatch):
    # A classifier that answers class 0 with probability 0.87 whatever the image: its mistakes are known.
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))
    nn.init.zeros_(model[1].weight)
    with torch.no_grad():
        model[1].bias.copy_(torch.log(torch.tensor([0.87] + [0.13 / 9] * 9)))
    labels = torch.tensor([0, 4, 0, 9])
    split = Split(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8), labels)
    data = ImageData("digits", split, split, num_classes=10, mean=(0.5,), std=(0.25,), pad=12)
    cfg = ClassifyConfig(name="tiny", data=ClassifyDataConfig(name="digits", pad=12))
    drawn = []
    monkeypatch.setattr(classify, "render", lambda figure: drawn.append(figure) or render(figure))
    run = RecordingRun(tmp_path)
    log_test_figures(cfg, run, model, data, step=7)
    assert sorted(run.images) == ["test/confusion", "test/mistakes"]
    confusion, mistakes = drawn
    assert confusion.axes[0].get_title() == "tiny, test set, step 7: error 50.00% (2 of 4)"
    assert [t.get_text() for t in mistakes.texts] == [
        "tiny: 2 of 2 misclassified test images, step 7",
        "true 4 -> 0 (0.87)",
        "true 9 -> 0 (0.87)",
    ]


# ------------------------------------------------------------------------------------------- glimpses
def test_glimpse_figure_draws_digits_at_4x_with_numbered_glimpses_and_answers():
    images = torch.rand(2, 1, 28, 28)
    centres = torch.tensor([[[5, 5], [14, 20], [27, 0]], [[0, 0], [10, 10], [20, 20]]])
    figure = glimpse_figure(images, centres, [8, 16], [3, 7], [5, 7], "two digits", zoom=4)
    rgb = render(figure)
    digit = figure.axes[0].get_window_extent()
    assert (round(digit.width), round(digit.height)) == (4 * 28, 4 * 28)
    assert rgb.shape[:2] == tuple(round(v) for v in figure.get_size_inches()[::-1] * figure.dpi)
    assert [axes.get_xlabel() for axes in figure.axes] == ["true 3, predicted 5", "true 7, predicted 7"]
    assert [t.get_text() for t in figure.axes[0].texts] == ["1", "2", "3"]  # numbered in order
    assert len(figure.axes[0].patches) == 3 * 2  # a box per glimpse and scale
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["glimpse 1", "glimpse 2", "glimpse 3", "scale 1: 8x8 px", "scale 2: 16x16 px"]

    frames = glimpse_frames(images[0], centres[0], [8, 16], 3, 5, "digit 0", zoom=4)
    assert len(frames) == 3 and all(f.shape == frames[0].shape for f in frames)
    assert not np.array_equal(frames[0], frames[1])


def test_ram_figure_and_one_animation_per_digit_with_a_frame_per_glimpse(tmp_path):
    cfg = RAMConfig(
        name="tiny-ram",
        model=GlimpseConfig(glimpses=2, patch=4, scales=2, hidden=16, what=8, where=8, glimpse_features=16),
        train=RAMTrainConfig(paths_to_plot=2),
    )
    torch.manual_seed(0)
    model = RecurrentAttention(1, 10, cfg.model)
    split = Split(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8), torch.tensor([1, 2, 3]))
    run = RecordingRun(tmp_path)
    plot_glimpses(model, split, cfg, run, step=5, animate=True)
    assert list(run.images) == ["test/glimpse_paths"]
    assert sorted(run.videos) == ["test/glimpse_video/0", "test/glimpse_video/1"]
    for path in run.videos.values():
        assert path.parent == tmp_path / "media" and len(read_video(path)) == 2  # one frame per glimpse


# ------------------------------------------------------------------------------------------- completions
def tiny_model(kind: str, channels: int, levels: int, num_classes=None) -> nn.Module:
    torch.manual_seed(0)
    if kind == "gated":
        return GatedPixelCNN(channels, levels, hidden=6, layers=2, head_hidden=12, num_classes=num_classes)
    return PixelCNN(channels, levels, hidden=4, layers=2, head_hidden=8)


@pytest.mark.parametrize("kind, channels, levels, num_classes", [("pixelcnn", 1, 2, None), ("gated", 3, 4, 10)])
def test_completion_keeps_the_given_rows_pixel_for_pixel_and_samples_the_rest(kind, channels, levels, num_classes):
    model = tiny_model(kind, channels, levels, num_classes).eval()
    torch.manual_seed(1)
    given = torch.randint(0, levels, (2, channels, 6, 5))
    labels = torch.tensor([3, 8]) if num_classes else None
    cached = sample(model, 2, (channels, 6, 5), seed=4, labels=labels, given=given, start_row=3)
    naive = sample(model, 2, (channels, 6, 5), seed=4, labels=labels, given=given, start_row=3, cached=False)
    assert torch.equal(cached[:, :, :3], given[:, :, :3])
    assert torch.equal(
        cached, naive
    )  # the cached sampler fills its maps from the given rows, as the naive one reads them

    done = complete(model, given, samples=3, seed=4, labels=labels)
    assert done.shape == (2, 3, channels, 6, 5)
    assert torch.equal(done[:, :, :, :3], given[:, None, :, :3].expand(2, 3, channels, 3, 5))
    assert not torch.equal(done[:, 0, :, 3:], done[:, 1, :, 3:])  # the bottom half is drawn, sample by sample


def test_sampler_refuses_a_start_row_without_given_images():
    model = tiny_model("pixelcnn", 1, 2)
    with pytest.raises(ValueError, match="start_row=3 needs given images of shape"):
        sample(model, 2, (1, 6, 5), seed=0, start_row=3)
    with pytest.raises(ValueError, match="start_row=7 must be in 0..6"):
        sample(model, 2, (1, 6, 5), seed=0, given=torch.zeros(2, 1, 6, 5), start_row=7)


def test_completion_figure_labels_its_columns():
    figure = completion_figure(torch.rand(2, 1, 8, 8), torch.rand(2, 3, 1, 8, 8), 4, "done", row_labels=["a", "b"])
    titles = ["original", "a", "given: top 4 rows", "sample 1", "sample 2", "sample 3", "b"]  # in drawing order
    assert [t.get_text() for t in figure.texts] == ["done", *titles]
    tiles = figure.images[0].get_array()  # 8x8 images enlarged 12x to 96 pixels
    tinted = (tiles == np.array([140, 166, 217], np.uint8)).all(-1)  # OCCLUDED, in 0..255
    assert tinted.sum() == 2 * (8 - 4) * 8 * 12 * 12  # the hidden rows of the two given tiles, and nothing else
    assert len(figure.artists) == 2 * 4  # a dashed line across every tile but the originals


# ------------------------------------------------------------------------------------------- DCGAN
def test_dcgan_training_animation_has_a_frame_per_logged_epoch(tmp_path):
    run = RecordingRun(tmp_path)
    for step, shade in ((10, 0), (20, 120), (30, 240), (40, 60)):  # step 40 is past the end: left out
        Image.fromarray(np.full((20, 30, 3), shade, np.uint8)).save(tmp_path / "media" / f"samples-{step:09d}.png")
    frames = training_frames(tmp_path / "media", 30, 10, "grids")
    assert len(frames) == 3 and all(f.shape == frames[0].shape for f in frames)
    log_training_animation(DCGANConfig(name="tiny-gan"), run, step=30, steps_per_epoch=10)
    assert list(run.videos) == ["media/training"] and len(read_video(run.videos["media/training"])) == 3


def test_slerp_keeps_its_ends_and_the_norm_between_orthogonal_ends():
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    path = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(path[0, 0], a[0]) and torch.allclose(path[0, 2], b[0])
    assert path[0, 1].norm().item() == pytest.approx(3.0)  # the linear midpoint's norm would be 3 / sqrt(2)
    assert torch.allclose(path[0, 1], torch.full((2,), 3 / math.sqrt(2)))
    same = slerp(a, a, torch.tensor([0.5]))  # parallel ends: the line, without a division by sin(0)
    assert torch.equal(same[0, 0], a[0])
