"""Seeding, and every global RNG state as tensors and plain containers, so that a checkpoint holding it
loads with torch.load(weights_only=True) and a resumed run on CPU continues bit for bit."""

from __future__ import annotations

import random

import numpy as np
import torch

# The run's named random streams. Each is a torch.Generator seeded by seed * 1_000_003 + offset + index, the
# formula the trainers used before it had a name, so earlier runs and checkpoints keep their numbers. Streams
# drawn once per epoch or step take that as `index` and start at offset 0; fixed streams sit at small offsets.
STREAMS = {
    "epoch order": 0,  # the shuffle of epoch `index` (shared/data/tensors.py)
    "binarization": 0,  # the Bernoulli draw of epoch `index` (shared/data/binarize.py)
    "canvas": 0,  # where epoch `index` places digits and clutter (shared/data/translated.py)
    "glimpse locations": 0,  # RAM's location samples at step `index` (rl/ram.py)
    "adversarial start": 0,  # PGD's random start in adversarial training at step `index` (shared/classify.py)
    "sample scoring": 7,  # the samples that FID and IS score (generative/metrics.py)
    "test elbo": 11,  # the VAE's one latent sample per test image
    "iwae images": 100_000,  # the VAE's importance samples for the group of test images starting at `index`
    "fixed noise": 17,  # the latent noise behind every epoch's sample grid (VAE, DCGAN)
    "test attack": 19,  # PGD's random starts when the test set is attacked (shared/adversarial.py)
    "interpolation ends": 23,  # the latent pairs of DCGAN's interpolation strip
}


def stream(seed: int, purpose: str, index: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of `purpose` (a key of STREAMS) for a run seeded `seed`, at epoch or step `index`."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + STREAMS[purpose] + index)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """Every global RNG state, as tensors and plain containers (loadable with weights_only=True)."""
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Put back what `capture_rng` returned."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
