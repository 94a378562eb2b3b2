"""`pixlab bench pixelcnn`: the cached sampler (generative/sampling.py) beside the naive one, same model, same seed.

Both samplers draw one batch of binary 28x28 images from a PixelCNN and a Gated PixelCNN of the default
config's size (generative/pixelcnn.py, ModelConfig), at their random initialisation: the time per forward
pass does not depend on the weights' values. Each sampler is timed once, end to end, and the two batches
are compared sub-pixel by sub-pixel.
"""

from __future__ import annotations

import platform
import time

import torch

from generative.pixelcnn import ModelConfig, build_model
from generative.sampling import sample
from shared.train.device import select_device


def bench_pixelcnn(batch_size: int = 16, image_size: int = 28, device: str = "auto", seed: int = 0) -> dict:
    target = select_device(device)
    shape = (1, image_size, image_size)
    results = []
    for kind in ("pixelcnn", "gated"):
        cfg = ModelConfig(kind=kind)
        torch.manual_seed(seed)
        model = build_model(cfg, channels=1, levels=2, num_classes=10).to(target)
        timings, images = {}, {}
        for name, cached in (("naive", False), ("cached", True)):
            _sync(target)
            start = time.perf_counter()
            images[name] = sample(model, batch_size, shape, seed, cached=cached)
            _sync(target)
            timings[name] = time.perf_counter() - start
        mismatched = int((images["naive"] != images["cached"]).sum())
        results.append(
            {
                "kind": kind,
                "model": f"hidden {cfg.hidden}, {cfg.layers} layers after the first, kernels {cfg.first_kernel}/{cfg.kernel}, head {cfg.head_hidden}",
                "parameters": sum(p.numel() for p in model.parameters()),
                "naive_s": round(timings["naive"], 4),
                "cached_s": round(timings["cached"], 4),
                "speedup": round(timings["naive"] / timings["cached"], 2),
                "samples_match": mismatched == 0,
                "mismatched_subpixels": mismatched,
            }
        )
    return {
        "benchmark": "pixelcnn sampling",
        "images": f"{batch_size} x {shape} binary, seed {seed}",
        "batch_size": batch_size,
        "device": str(target),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "results": results,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_report(report: dict) -> str:
    lines = [
        f"pixelcnn sampling bench: {report['images']} on {report['device']} ({report['threads']} threads, torch {report['torch']})",
        f"{'model':<9} {'parameters':>10} {'naive s':>9} {'cached s':>9} {'speedup':>8}  samples",
    ]
    for r in report["results"]:
        same = "identical" if r["samples_match"] else f"{r['mismatched_subpixels']} sub-pixels differ"
        lines.append(f"{r['kind']:<9} {r['parameters']:>10} {r['naive_s']:>9.2f} {r['cached_s']:>9.2f} {r['speedup']:>7.1f}x  {same}")
        lines.append(f"          ({r['model']})")
    return "\n".join(lines)
