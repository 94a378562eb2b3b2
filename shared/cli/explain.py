"""`pixlab explain RUN`: what a classify run looks at (shared/saliency.py), and whether the maps mean anything.

    pixlab explain runs/<id> [--images 8] [--classes 0 3 7] [--steps 200] [--sanity-images 16]

Writes into runs/<id>/analysis/explain-<stamp>/ (shared/analysis.py), and to a W&B run grouped with the source:
- explain_maps.png: test images with their saliency map (Simonyan et al. 2014) and guided backpropagation
  (Springenberg et al. 2015) for the predicted class (or the true one, --target true), captioned truth/prediction;
- explain_class_models.png: one class-model image per class (gradient ascent on the class score from a zero image);
- explain_sanity_maps.png and explain_sanity_correlation.png: the cascading randomization test (Adebayo et al.
  2018), the maps of one image as the layers are re-initialised from the top down, and the mean Spearman rank
  correlation between the trained model's maps and the randomized model's at each stage, absolute and signed;
- explain.json: every number, with the class scores of the class models.
The sanity check's randomized weights come from the model's own initialisation with --seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SANITY_NOTE = (
    "Spearman rank correlation between the trained model's maps and those of the same model with its layers "
    "re-initialised from the top down (the last stage: every layer). Low means the method depends on the "
    "learned weights, which passes Adebayo et al.'s check; high means it shows the input, not the model."
)
MAP_STAGES = 8  # cascade stages drawn in explain_sanity_maps.png


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "explain", help="saliency maps, guided backprop, class models and their randomization sanity check"
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="a classify run folder")
    parser.add_argument("--images", type=int, default=8, help="test images to explain (default 8)")
    parser.add_argument("--classes", type=int, nargs="+", help="classes to draw a class model of (default all)")
    parser.add_argument("--steps", type=int, default=200, help="gradient-ascent steps per class model (default 200)")
    parser.add_argument(
        "--sanity-images", type=int, default=16, help="test images the sanity check averages over (default 16; 0: off)"
    )
    parser.add_argument(
        "--target", choices=["predicted", "true"], default="predicted", help="whose class score the maps explain"
    )
    parser.add_argument("--step-size", type=float, default=0.05, help="class models: RMS change per pixel per step")
    parser.add_argument("--l2", type=float, default=1e-3, help="class models: the L2 penalty's weight (lambda)")
    parser.add_argument("--jitter", type=int, default=2, help="class models: largest roll in pixels (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="jitter and the randomized model's initialisation")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.set_defaults(command=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from shared.analysis import analysis_folder, load_classifier
    from shared.errors import PixlabError
    from shared.saliency import GuidedBackpropError, guided_backprop
    from shared.train.device import select_device

    minimum = {"images": 1, "steps": 1, "sanity_images": 0, "jitter": 0}
    for name, least in minimum.items():
        if getattr(args, name) < least:
            raise PixlabError(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
    if not (args.step_size > 0 and args.l2 >= 0):
        raise PixlabError(f"--step-size must be > 0 and --l2 >= 0, got {args.step_size} and {args.l2}")
    device = select_device(args.device)
    cfg, model, data = load_classifier(args.run_dir, device)
    classes = list(range(data.num_classes)) if args.classes is None else args.classes
    wrong = [c for c in classes if not 0 <= c < data.num_classes]
    if wrong:
        raise PixlabError(f"--classes {wrong}: {cfg.data.name} has classes 0..{data.num_classes - 1}")
    count = min(max(args.images, args.sanity_images), len(data.test))
    x = data.prepare(data.test.images[:count])  # (count, C, H, W) in the model's input units
    labels = data.test.labels[:count]
    with torch.no_grad():
        predicted = model(x).argmax(1)
    targets = predicted if args.target == "predicted" else labels
    methods = ["saliency", "guided_backprop"]
    try:
        guided_backprop(model, x[:1], targets[:1])
    except GuidedBackpropError as e:
        print(f"pixlab: {e}; explaining with saliency maps alone", file=sys.stderr)
        methods = ["saliency"]

    settings = {k: v for k, v in vars(args).items() if k not in ("command", "run_dir")}
    with analysis_folder(args.run_dir, "explain", settings) as analysis:
        report: dict = {"run": str(args.run_dir), "model": cfg.model.name, "target": args.target, "methods": methods}
        n = min(args.images, count)
        report["images"] = explain_images(
            analysis, cfg, data, model, x[:n], labels[:n], predicted[:n], targets[:n], methods, args.target
        )
        report["class_models"] = draw_class_models(analysis, cfg, data, model, classes, args, device)
        if args.sanity_images:
            m = min(args.sanity_images, count)
            report["sanity_check"] = randomization_check(
                analysis, cfg, data, model, x[:m], targets[:m], methods, args.seed
            )
        analysis.save_json("explain.json", report)
    if args.sanity_images:
        sanity = report["sanity_check"]
        print(f"sanity check over {sanity['images']} test images: Spearman rank correlation with the trained maps")
        print("after re-initialising layers from the top (low = the map depends on the weights):")
        for stage in sanity["stages"]:
            values = ", ".join(
                f"{key} {stage[key]:.2f}"
                for key in stage
                if key.endswith(("_abs", "_signed")) and stage[key] is not None
            )
            print(f"  down to {stage['randomized'][-1]}: {values}")
    print(f"pixlab: explain of {args.run_dir} written to {analysis.dir}", file=sys.stderr)
    return 0


def to_pixels(data, x):
    """Model input (N, C, H, W) -> floats in [0, 1] (the data's normalisation undone)."""
    import torch

    mean = torch.tensor(data.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1)


def show(axes, image, title: str, **imshow) -> None:
    """An image tile: (H, W) or (C, H, W) floats, with a title and no pixel ticks."""
    pixels = image.detach().float().cpu().numpy()
    if pixels.ndim == 3:
        pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    axes.imshow(pixels, interpolation="nearest", **imshow)
    axes.set_title(title, fontsize=8)
    axes.set_xticks([])
    axes.set_yticks([])


def as_gradient_image(gradient):
    """A signed gradient (C, H, W) -> [0, 1], 0.5 where it is zero, scaled by its largest magnitude (the way
    Springenberg et al. show guided backpropagation)."""
    return (0.5 + 0.5 * gradient / gradient.abs().max().clamp(min=1e-12)).clamp(0, 1)


def explain_images(analysis, cfg, data, model, x, labels, predicted, targets, methods, target: str) -> list[dict]:
    """explain_maps.png: each image with its maps, one row per image; returns what each row shows."""
    from matplotlib.figure import Figure

    from shared.saliency import METHODS, saliency_map

    pixels = to_pixels(data, x)
    gradients = {method: METHODS[method](model, x, targets) for method in methods}
    columns = 1 + len(methods)
    figure = Figure(figsize=(1.9 * columns, 2.0 * len(x) + 0.6))
    figure.suptitle(f"What {cfg.model.name} looks at: {cfg.data.name} test images, maps of the {target} class")
    rows = []
    for i in range(len(x)):
        axes = figure.add_subplot(len(x), columns, i * columns + 1)
        show(axes, pixels[i], f"true {labels[i].item()}, predicted {predicted[i].item()}", cmap="gray", vmin=0, vmax=1)
        if "saliency" in methods:
            axes = figure.add_subplot(len(x), columns, i * columns + 2)
            show(axes, saliency_map(gradients["saliency"][i : i + 1])[0], "saliency |dS/dx|", cmap="hot", vmin=0)
        if "guided_backprop" in methods:
            axes = figure.add_subplot(len(x), columns, i * columns + 3)
            guided = as_gradient_image(gradients["guided_backprop"][i])
            show(axes, guided, "guided backprop", cmap="gray", vmin=0, vmax=1)
        rows.append(
            {"index": i, "true": labels[i].item(), "predicted": predicted[i].item(), "map_of": targets[i].item()}
        )
    figure.tight_layout()
    analysis.save_figure("explain/maps", figure)
    return rows


def draw_class_models(analysis, cfg, data, model, classes, args, device) -> list[dict]:
    """explain_class_models.png: the class model of each class, with its score; returns the scores."""
    import torch
    from matplotlib.figure import Figure

    from shared.saliency import class_model

    low = (0 - torch.tensor(data.mean)) / torch.tensor(data.std)  # what pixels 0 and 1 become, per channel
    high = (1 - torch.tensor(data.mean)) / torch.tensor(data.std)
    generator = torch.Generator().manual_seed(args.seed)
    images, found = [], []
    for c in classes:
        image = class_model(
            model,
            c,
            data.input_shape,
            low.to(device),
            high.to(device),
            args.steps,
            args.step_size,
            args.l2,
            args.jitter,
            generator,
        )
        with torch.no_grad():
            logits = model(image[None])[0]
        images.append(image)
        found.append({"class": c, "score": logits[c].item(), "probability": logits.softmax(0)[c].item()})
    pixels = to_pixels(data, torch.stack(images))
    columns = min(len(classes), 5)
    rows = -(-len(classes) // columns)
    figure = Figure(figsize=(2.0 * columns, 2.2 * rows + 0.6))
    figure.suptitle(f"Class models of {cfg.model.name}: {args.steps} steps of gradient ascent from zero, L2 {args.l2}")
    for i, (c, result) in enumerate(zip(classes, found)):
        axes = figure.add_subplot(rows, columns, i + 1)
        caption = f"class {c}: score {result['score']:.1f}, p {result['probability']:.2f}"
        show(axes, pixels[i], caption, cmap="gray", vmin=0, vmax=1)
    figure.tight_layout()
    analysis.save_figure("explain/class_models", figure)
    return found


def randomization_check(analysis, cfg, data, model, x, targets, methods, seed: int) -> dict:
    """The cascading randomization test: its two figures, W&B scalars (step = stage); returns its numbers."""
    import torch
    from matplotlib.figure import Figure

    from shared.models import build_model
    from shared.saliency import sanity_check

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_model(cfg.model.name, data.num_classes, in_channels=data.input_shape[0])
    fresh = fresh.to(x.device).eval()
    stages, trained, stage_maps = sanity_check(model, fresh, x, targets, methods)
    keys = [f"{method}_{kind}" for method in methods for kind in ("abs", "signed")]
    for step, stage in enumerate(stages):
        analysis.log({f"sanity/{key}": stage[key] for key in keys if stage[key] is not None}, step)
    last = stages[-1]
    analysis.summary({f"sanity/full_reinit/{key}": last[key] for key in keys if last[key] is not None})

    labels = [stage["randomized"][-1] for stage in stages]
    # A deep model has dozens of stages: the figure shows at most MAP_STAGES of them, evenly spaced, the last included.
    shown = sorted({round(i * (len(stages) - 1) / max(1, MAP_STAGES - 1)) for i in range(min(MAP_STAGES, len(stages)))})
    columns = len(shown) + 1
    figure = Figure(figsize=(1.6 * columns, 1.9 * len(methods) + 0.8))
    figure.suptitle(f"Sanity check of {cfg.model.name}: maps of one test image as layers are re-initialised, top down")
    for row, method in enumerate(methods):
        key = f"{method}_abs"
        tiles = [("trained", trained)] + [(f"random to {labels[i]}", stage_maps[i]) for i in shown]
        for column, (title, maps) in enumerate(tiles):
            axes = figure.add_subplot(len(methods), columns, row * columns + column + 1)
            show(axes, maps[key][0], title, cmap="hot", vmin=0)
            if column == 0:
                axes.set_ylabel(method.replace("_", " "), fontsize=8)
    figure.tight_layout()
    analysis.save_figure("explain/sanity_maps", figure)

    figure = Figure(figsize=(min(14.0, max(5.0, 0.8 * len(stages) + 2)), 3.6))
    axes = figure.add_subplot()
    for key in keys:
        axes.plot(range(len(stages)), [s[key] if s[key] is not None else float("nan") for s in stages], "o-", label=key)
    axes.set_xticks(
        range(len(stages)),
        [f"+{label}" for label in labels],
        rotation=90 if len(stages) > 12 else 45,
        ha="right",
        fontsize=7,
    )
    axes.set_xlabel("layers re-initialised, cumulative from the top")
    axes.set_ylabel("mean Spearman rank correlation")
    axes.set_ylim(-1.05, 1.05)
    axes.axhline(0, color="grey", linewidth=0.5)
    axes.legend(fontsize=7)
    axes.set_title(f"Model randomization test ({len(x)} images): low = the map depends on the weights")
    figure.tight_layout()
    analysis.save_figure("explain/sanity_correlation", figure)
    return {"images": len(x), "seed": seed, "note": SANITY_NOTE, "stages": stages, "full_reinit": last}
