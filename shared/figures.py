"""Figures a researcher reads before the numbers: labelled image grids, a confusion matrix, the glimpses of an
attention model, titled frames for animations.

    rgb = render(confusion_figure(confusion_counts(truths, predictions, 10), names, "lenet5 on MNIST"))
    run.log_images("test/confusion", as_batch(rgb), step, nrow=1)

Each function builds a matplotlib `Figure` on the Agg canvas and never goes through pyplot: no display is
needed, and no global list of open figures grows in a long training process. `render(figure)` turns a
figure into an RGB array (H, W, 3) uint8, the unit of `run.log_images` (through `as_batch`) and of a video
frame. Every figure has a title; axes that measure something are labelled, and image tiles, whose pixel
axes say nothing, carry a caption instead of ticks. matplotlib is imported by the functions that draw, not
with this module: a trainer that imports it starts as fast as before, and pays for matplotlib at its first figure.

Images come in as the trainers hold them: (N, C, H, W) floats in [0, 1], C = 1 (drawn in grey) or 3.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100  # pixels per inch of every figure: sizes below are given in pixels and divided by it
RIGHT, WRONG = "#1a7f37", "#cf222e"  # caption colours of a right and a wrong prediction
OCCLUDED = (0.55, 0.65, 0.85)  # RGB in [0, 1] of the pixels a completion figure hides from the model
SCALE_STYLES = ("-", "--", ":", "-.")  # line style of the retina's scales, finest first


def render(figure: Figure) -> np.ndarray:
    """Draw `figure` -> its pixels, an RGB array (H, W, 3) uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def as_batch(rgb: np.ndarray) -> torch.Tensor:
    """An RGB array (H, W, 3) uint8 -> the batch of one image (1, 3, H, W) in [0, 1] that `run.log_images` takes."""
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255)


def _pixels(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) floats in [0, 1] -> what imshow takes: (H, W) for grey, (H, W, 3) for colour."""
    pixels = image.detach().float().cpu().clamp(0, 1).numpy()
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


# ------------------------------------------------------------------------------------------- image grids
def image_grid_figure(
    images: torch.Tensor,
    title: str,
    columns: int = 8,
    captions: Optional[Sequence[str]] = None,
    column_titles: Optional[Sequence[str]] = None,
    row_labels: Optional[Sequence[str]] = None,
    tile_px: int = 128,
    rules: Optional[Sequence[Optional[int]]] = None,
) -> Figure:
    """Images (N, C, H, W) in [0, 1] as a grid of `columns` tiles, each enlarged by a whole factor to about
    `tile_px` pixels (nearest neighbour: an image pixel stays a square), with an optional caption under each
    tile, title over each column and label beside each row. `rules` (one per tile, None for none): the image
    row above which a dashed red line crosses the tile.

    The tiles are one picture drawn pixel for pixel with text around it, not an axes per tile: a grid of 64
    captioned tiles draws in a fraction of a second.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n, _, h, w = images.shape
    zoom = max(1, round(tile_px / max(h, w)))
    tile_h, tile_w = h * zoom, w * zoom
    longest = max(map(len, captions), default=0) if captions else 0
    gap = 8
    spacing = max(gap, round(5.5 * longest) + 4 - tile_w)  # between columns: a character is about 5.5 pixels at 8 pt
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    caption_px = 16 if captions else 0
    label_px = 20 if row_labels else 0
    header_px = 44 + (18 if column_titles else 0)
    margin = gap + (spacing - gap) // 2  # the first and last captions overhang their tiles by half as much
    content = label_px + columns * (tile_w + spacing) - spacing + 2 * margin
    width = max(content, 420)  # room for the title over a grid of few tiles, which are then centred
    height = header_px + rows * (tile_h + caption_px + gap) + gap
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    figure.suptitle(title, y=1 - 8 / height, va="top", wrap=True)
    canvas = np.full((height, width, 3), 255, np.uint8)  # white; uint8 is drawn as it is, without a colour map
    pixels = images.detach().float().cpu().clamp(0, 1).mul(255).round().byte().expand(n, 3, h, w)
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        row, column = divmod(i, columns)
        left = (width - content) // 2 + label_px + margin + column * (tile_w + spacing)
        top = header_px + row * (tile_h + caption_px + gap)
        canvas[top : top + tile_h, left : left + tile_w] = pixels[i].repeat(zoom, 0).repeat(zoom, 1)
        centre = (left + tile_w / 2) / width
        if captions:
            figure.text(centre, 1 - (top + tile_h + 2) / height, captions[i], ha="center", va="top", fontsize=8)
        if column_titles and row == 0:
            figure.text(centre, 1 - (top - 3) / height, column_titles[column], ha="center", va="bottom", fontsize=9)
        if row_labels and column == 0:
            y = 1 - (top + tile_h / 2) / height
            figure.text((left - 4) / width, y, row_labels[row], ha="right", va="center", rotation=90, fontsize=9)
        if rules and rules[i] is not None:
            y = 1 - (top + rules[i] * zoom) / height
            figure.add_artist(
                Line2D([left / width, (left + tile_w) / width], [y, y], color="red", linewidth=1, linestyle="--")
            )
    figure.figimage(canvas, origin="upper")
    return figure


def mistake_caption(truth: int, predicted: int, probability: float, class_names: Sequence[str]) -> str:
    """The caption of a misclassified image: 'true 4 -> 9 (0.87)', the probability the model gave its answer."""
    return f"true {class_names[truth]} -> {class_names[predicted]} ({probability:.2f})"


def titled_image(rgb: np.ndarray, title: str, caption: Optional[str] = None) -> Figure:
    """An RGB array (H, W, 3) uint8 shown at one figure pixel per image pixel, under a title and over a caption."""
    from matplotlib.figure import Figure

    h, w = rgb.shape[:2]
    title_px, caption_px = 36, 26 if caption else 8
    width, height = max(w + 16, 360), title_px + h + caption_px  # room for the title over a small image
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = figure.add_axes(((width - w) / 2 / width, caption_px / height, w / width, h / height))
    axes.imshow(rgb, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize=10, wrap=True)
    if caption:
        axes.set_xlabel(caption, fontsize=9, labelpad=4)
    return figure


# ------------------------------------------------------------------------------------------- confusion matrix
def confusion_counts(
    truths: torch.Tensor | np.ndarray, predictions: torch.Tensor | np.ndarray, classes: int
) -> np.ndarray:
    """Class labels (N,) and predictions (N,) -> counts (classes, classes) int64: row = true, column = predicted."""
    truths, predictions = (np.asarray(torch.as_tensor(v).cpu(), dtype=np.int64) for v in (truths, predictions))
    return np.bincount(truths * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def confusion_title(counts: np.ndarray, what: str) -> str:
    """'<what>: error 2.40% (24 of 1000)', read off the counts' diagonal."""
    total = int(counts.sum())
    errors = total - int(np.trace(counts))
    return f"{what}: error {errors / max(total, 1):.2%} ({errors} of {total})"


def confusion_figure(counts: np.ndarray, class_names: Sequence[str], what: str) -> Figure:
    """A confusion matrix of counts (K, K) (row = true, column = predicted), each cell's count written in it.

    The colours are on a log scale, so that the few mistakes show beside a diagonal a hundred times larger;
    empty cells are white.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    k = len(class_names)
    longest = max(map(len, class_names))
    rotate = longest > 2
    cell = max(24, min(80, 440 // k))  # pixels
    names = 7 * longest + 12  # pixels of the longest tick label
    left, top, matrix = names + 34, 44, cell * k
    bottom = (int(0.75 * names) if rotate else 18) + 44
    width, height = left + matrix + 110, top + matrix + bottom  # the colour bar and its label on the right
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)  # laid out by hand: a layout engine costs more
    axes = figure.add_axes((left / width, bottom / height, matrix / width, matrix / height))
    bar = figure.add_axes(((left + matrix + 14) / width, bottom / height, 16 / width, matrix / height))
    shown = np.ma.masked_equal(counts, 0)
    image = axes.imshow(shown, cmap="Blues", norm=LogNorm(vmin=0.5, vmax=max(int(counts.max()), 2)))
    figure.colorbar(image, cax=bar, label="test images (log scale)", format="{x:.0f}")
    bar.yaxis.set_minor_formatter(NullFormatter())  # counts at the decades only, not 6x10^-1
    axes.set_xticks(range(k), class_names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    axes.set_yticks(range(k), class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(confusion_title(counts, what), fontsize=11, wrap=True)
    if k <= 20:  # beyond that the numbers no longer fit their cells
        dark = math.sqrt(max(int(counts.max()), 2))  # above the geometric middle of the log scale: white text
        for (t, p), count in np.ndenumerate(counts):
            if count:
                colour = "white" if count > dark else "black"
                axes.text(p, t, str(count), ha="center", va="center", fontsize=7 if count >= 1000 else 8, color=colour)
    return figure


# ------------------------------------------------------------------------------------------- glimpses
def glimpse_caption(truth: int, predicted: int) -> str:
    """The caption under a digit whose glimpses are drawn: 'true 4, predicted 9'."""
    return f"true {truth}, predicted {predicted}"


def step_colours(steps: int) -> list:
    """One colour per glimpse: tab10's ten distinct colours while they last, then viridis from first to last."""
    from matplotlib import colormaps

    if steps <= 10:
        return [colormaps["tab10"](t) for t in range(steps)]
    return [colormaps["viridis"](t / (steps - 1)) for t in range(steps)]


def default_zoom(width: int) -> int:
    """Screen pixels per image pixel for a glimpse figure: at least 4, and at least 168 pixels across a digit."""
    return max(4, math.ceil(168 / width))


def glimpse_figure(
    images: torch.Tensor,
    centres: torch.Tensor,
    sides: Sequence[int],
    truths: Sequence[int],
    predictions: Sequence[int],
    title: str,
    zoom: Optional[int] = None,
    columns: int = 4,
    shown: Optional[int] = None,
    legend: bool = True,
) -> Figure:
    """Digits (N, 1, H, W) in [0, 1], each drawn at `zoom` screen pixels per image pixel with its glimpses over it.

    centres (N, T, 2) int: the (row, column) pixel each glimpse looked at, in order. Each glimpse is its number
    at its centre and the retina's squares of `sides` pixels around it (the patches the sensor reads), one
    colour per glimpse and one line style per scale, with a legend; a thin line joins the centres in order.
    Under each digit: its class and the model's prediction (green when right, red when wrong). `shown` draws
    glimpses 1..shown only, the last of them bold and the earlier ones' boxes faded: an animation's frame. Without
    `legend` the figure is narrower and quicker to draw (the legend's text is most of the drawing).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
    from matplotlib.patheffects import withStroke

    n, _, h, w = images.shape
    steps = centres.shape[1]
    frame = shown is not None  # an animation's frame: the newest glimpse bold, the earlier ones faded
    shown = steps if shown is None else shown
    zoom = zoom or default_zoom(w)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    panel_w, panel_h = w * zoom, h * zoom
    gap, caption_px, title_px = 16, 30, 44
    legend_w, legend_h = (170, 22 * (steps + len(sides)) + 24) if legend else (0, 0)
    width = gap + columns * (panel_w + gap) + legend_w
    height = title_px + max(rows * (panel_h + caption_px + gap), legend_h)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    figure.suptitle(title, y=1 - 10 / height, va="top", wrap=True)
    colours = step_colours(steps)
    centres = centres.cpu()
    for i in range(n):
        row, column = divmod(i, columns)
        left, top = gap + column * (panel_w + gap), title_px + row * (panel_h + caption_px + gap)
        axes = figure.add_axes((left / width, 1 - (top + panel_h) / height, panel_w / width, panel_h / height))
        axes.imshow(_pixels(images[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_xlim(-0.5, w - 0.5)
        axes.set_ylim(h - 0.5, -0.5)
        rs, cs = centres[i, :shown, 0].tolist(), centres[i, :shown, 1].tolist()
        axes.plot(cs, rs, color="white", linewidth=0.8, alpha=0.6)
        for t, (r, c) in enumerate(zip(rs, cs)):
            current = frame and t == shown - 1
            alpha = 0.5 if frame and not current else 1.0  # the boxes of earlier glimpses; their numbers stay
            for k, (side, style) in enumerate(zip(sides, SCALE_STYLES * len(sides))):
                corner = (c - side // 2 - 0.5, r - side // 2 - 0.5)  # the sensor's patch, pixel edges
                axes.add_patch(
                    Rectangle(
                        corner,
                        side,
                        side,
                        fill=False,
                        edgecolor=colours[t],
                        linestyle=style,
                        linewidth=(2.5 if current else 1.6) / (1 + 0.3 * k),
                        alpha=alpha * 0.75**k,
                    )
                )  # coarser scales thinner and fainter: the finest patch, the one read sharply, stands out
            axes.text(
                c,
                r,
                str(t + 1),
                color=colours[t],
                ha="center",
                va="center",
                fontsize=10,
                fontweight="bold",
                path_effects=[withStroke(linewidth=2.5, foreground="black")],
            )
        right = truths[i] == predictions[i]
        axes.set_xlabel(glimpse_caption(truths[i], predictions[i]), fontsize=10, color=RIGHT if right else WRONG)
    if not legend:
        return figure
    handles = [Line2D([], [], color=colours[t], linewidth=2, label=f"glimpse {t + 1}") for t in range(steps)]
    handles += [
        Line2D([], [], color="dimgray", linestyle=style, linewidth=1.5, label=f"scale {k + 1}: {side}x{side} px")
        for k, (side, style) in enumerate(zip(sides, SCALE_STYLES * len(sides)))
    ]
    figure.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1 - legend_w / width, 1 - title_px / height),
        fontsize=8,
        frameon=False,
        title="colour: order\nline: retina scale",
        title_fontsize=8,
    )
    return figure


def glimpse_frames(
    image: torch.Tensor,
    centres: torch.Tensor,
    sides: Sequence[int],
    truth: int,
    predicted: int,
    title: str,
    zoom: Optional[int] = None,
) -> list[np.ndarray]:
    """The frames of one digit's animation, (1, H, W) in [0, 1] and centres (T, 2): frame t draws glimpses 1..t,
    glimpse t bold, without the legend of the still figure (the glimpses are numbered). T RGB arrays (H', W', 3)
    uint8, all of one size."""
    steps = centres.shape[0]
    return [
        render(
            glimpse_figure(
                image[None],
                centres[None],
                sides,
                [truth],
                [predicted],
                f"{title}: glimpse {t} of {steps}",
                zoom=zoom,
                shown=t,
                legend=False,
            )
        )
        for t in range(1, steps + 1)
    ]


# ------------------------------------------------------------------------------------------- completions
def completion_figure(
    originals: torch.Tensor,
    completions: torch.Tensor,
    given_rows: int,
    title: str,
    row_labels: Optional[Sequence[str]] = None,
) -> Figure:
    """Image completions: originals (N, C, H, W) in [0, 1] and their completions (N, K, C, H, W) in [0, 1],
    of which the top `given_rows` rows were given. A row per image: the original, what the model was given
    (the hidden rows in blue-grey), and the K completions, a dashed line where the given rows end."""
    n, k, c, h, w = completions.shape

    def rgb(x: torch.Tensor) -> torch.Tensor:  # grey and colour tiles alike, so that the hidden rows can be tinted
        return x.detach().float().cpu().expand(*x.shape[:-3], 3, h, w)

    given = rgb(originals).clone()
    given[:, :, given_rows:] = torch.tensor(OCCLUDED).view(3, 1, 1)
    tiles = torch.cat([rgb(originals)[:, None], given[:, None], rgb(completions)], dim=1).flatten(0, 1)
    return image_grid_figure(
        tiles,
        title,
        columns=k + 2,
        column_titles=["original", f"given: top {given_rows} rows"] + [f"sample {j + 1}" for j in range(k)],
        row_labels=row_labels,
        tile_px=max(96, 4 * w),
        rules=[None if i % (k + 2) == 0 else given_rows for i in range(n * (k + 2))],  # all but the original
    )
