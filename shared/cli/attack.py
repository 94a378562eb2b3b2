"""`pixlab attack RUN`: FGSM or PGD (shared/adversarial.py) against a classify run's final weights, over a sweep of
epsilon.

    pixlab attack runs/<id> [--method fgsm|pgd] [--epsilons 0 0.05 0.1 0.15 0.2 0.25 0.3] [--steps 40]
                            [--step-size 0.01] [--restarts 1] [--limit N] [--device auto]

Epsilon is in pixel units (the pixel range is [0, 1]), as in the papers. Writes into
runs/<id>/analysis/attack-<stamp>/ (shared/analysis.py), and to a W&B run grouped with the source run:
- attack.json: per epsilon, the error on the attacked test images, the mean softmax probability of the predicted
  class on them (confidence) and on the misclassified ones alone (wrong_confidence);
- error.png: error and confidence against epsilon;
- examples.png: test images clean, attacked at the largest epsilon, and the difference, with the predictions;
and prints the table. The method, steps and step size default to the run's `attack:` section (FGSM when it has
none); PGD's random starts come from the run's seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPSILONS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)  # Goodfellow et al.'s 0.25 and Madry et al.'s 0.3 among them
EXAMPLES = 8  # test images in examples.png


def add_parser(commands) -> None:
    parser = commands.add_parser("attack", help="FGSM and PGD against a classify run over a sweep of epsilon")
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="a classify run folder")
    parser.add_argument(
        "--method", choices=["fgsm", "pgd"], help="the attack (default: the run's attack.method, else fgsm)"
    )
    parser.add_argument(
        "--epsilons", type=float, nargs="+", default=list(EPSILONS), help="L-infinity radii in pixel units [0, 1]"
    )
    parser.add_argument("--steps", type=int, help="PGD steps (default: the run's attack.steps)")
    parser.add_argument("--step-size", type=float, help="PGD step size in pixel units (default: the run's)")
    parser.add_argument("--restarts", type=int, help="PGD random starts (default: the run's attack.restarts)")
    parser.add_argument("--limit", type=int, help="attack the first N test images only (default: all)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.set_defaults(command=cmd_attack)


def cmd_attack(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from shared.adversarial import attack, eval_mode, evaluate_attack, pixel_classifier
    from shared.analysis import analysis_folder, load_classifier
    from shared.errors import PixlabError
    from shared.rng import stream
    from shared.train.device import select_device

    for flag, value in (("--limit", args.limit), ("--steps", args.steps), ("--restarts", args.restarts)):
        if value is not None and value < 1:
            raise PixlabError(f"{flag} must be >= 1, got {value}")
    if args.step_size is not None and not args.step_size > 0:
        raise PixlabError(f"--step-size must be > 0 (pixel units), got {args.step_size}")
    outside = [e for e in args.epsilons if not 0 <= e <= 1]
    if outside:
        raise PixlabError(f"--epsilons {outside}: each must be in [0, 1], a fraction of the pixel range")
    device = select_device(args.device)
    cfg, model, data = load_classifier(args.run_dir, device)
    section = cfg.attack
    method = args.method or (section.method if section.method != "none" else "fgsm")
    given = {"steps": args.steps, "step_size": args.step_size, "restarts": args.restarts}
    settings = dataclasses.replace(section, method=method, **{k: v for k, v in given.items() if v is not None})
    split = data.test.head(args.limit)
    epsilons = sorted(set(args.epsilons))
    chosen = {"method": method, "epsilons": epsilons, "images": len(split)}
    if method == "pgd":
        chosen |= {"steps": settings.steps, "step_size": settings.step_size, "restarts": settings.restarts}

    with analysis_folder(args.run_dir, "attack", chosen) as analysis:
        results = []
        for index, epsilon in enumerate(epsilons):
            start = stream(cfg.seed, "test attack", 0, device)  # each epsilon from the same starts
            metrics = evaluate_attack(
                dataclasses.replace(settings, epsilon=epsilon), model, data, split, cfg.train.eval_batch_size, start
            )
            results.append({"epsilon": epsilon} | metrics)
            analysis.log({f"attack/{k}": v for k, v in results[-1].items()}, step=index)
        largest = dataclasses.replace(settings, epsilon=epsilons[-1])
        pixels, labels = split.images[:EXAMPLES].float().div(255), split.labels[:EXAMPLES]
        classify = pixel_classifier(model, data)
        with eval_mode(model):
            attacked = attack(largest, classify, pixels, labels, stream(cfg.seed, "test attack", 0, device))
            with torch.no_grad():
                clean_p, clean_y = classify(pixels).softmax(1).max(1)
                attacked_p, attacked_y = classify(attacked).softmax(1).max(1)
        what = f"{method.upper()}{_pgd_details(settings) if method == 'pgd' else ''} on {args.run_dir.name}"
        analysis.save_figure("attack/error", error_figure(results, what, len(split)))
        analysis.save_figure(
            "attack/examples",
            examples_figure(pixels, attacked, labels, (clean_y, clean_p), (attacked_y, attacked_p), epsilons[-1], what),
        )
        report = {"run": str(args.run_dir), "model": cfg.model.name, "data": cfg.data.name} | chosen
        analysis.save_json("attack.json", report | {"results": results})
        analysis.summary({f"attack/{k}_eps{r['epsilon']:g}": r[k] for r in results for k in ("error", "confidence")})
    print(format_table(results, what, len(split)))
    print(f"pixlab: attack of {args.run_dir} written to {analysis.dir}", file=sys.stderr)
    return 0


def _pgd_details(settings) -> str:
    restarts = f", {settings.restarts} starts" if settings.restarts > 1 else ""
    return f" ({settings.steps} steps of {settings.step_size:g}{restarts})"


def format_table(results: list[dict], what: str, images: int) -> str:
    """The printed table: one row per epsilon, error and confidences in %."""
    lines = [
        f"{what}, {images} test images",
        "| epsilon | error | confidence | confidence when wrong |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        wrong = f"{100 * r['wrong_confidence']:.1f}%" if "wrong_confidence" in r else "-"
        lines.append(f"| {r['epsilon']:g} | {100 * r['error']:.2f}% | {100 * r['confidence']:.1f}% | {wrong} |")
    return "\n".join(lines)


def error_figure(results: list[dict], what: str, images: int):
    """Error and mean confidence (in %) against epsilon."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    epsilons = [r["epsilon"] for r in results]
    axes.plot(epsilons, [100 * r["error"] for r in results], "o-", label="error")
    axes.plot(epsilons, [100 * r["confidence"] for r in results], "s--", label="mean confidence of the prediction")
    axes.set_xlabel("epsilon (L-infinity radius, pixel range [0, 1])")
    axes.set_ylabel("% of the attacked test images")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(f"{what}\n{images} test images")
    figure.tight_layout()
    return figure


def examples_figure(pixels, attacked, labels, clean, adversarial, epsilon: float, what: str):
    """Rows: the clean images, the attacked ones and their difference (grey 0, black -epsilon, white +epsilon),
    each captioned with the prediction and its probability."""
    import torch

    from shared.figures import image_grid_figure

    scale = 2 * epsilon if epsilon > 0 else 1.0
    difference = (attacked - pixels) / scale + 0.5
    captions = [f"predicted {int(y)} ({float(p):.2f})" for y, p in zip(*clean)]
    captions += [f"predicted {int(y)} ({float(p):.2f})" for y, p in zip(*adversarial)]
    captions += ["" for _ in labels]
    return image_grid_figure(
        torch.cat([pixels, attacked, difference]).cpu(),
        f"{what}: epsilon {epsilon:g}\ncaptions: prediction (probability); difference: grey 0, white +epsilon",
        columns=len(labels),
        captions=captions,
        column_titles=[f"true {int(y)}" for y in labels],
        row_labels=["clean", "adversarial", "difference"],
        tile_px=90,
    )
