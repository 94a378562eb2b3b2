"""Datasets with checksums, held as tensors on the training device.

`load_dataset(name, root, download, pad)` is what trainers call; each dataset lives in its own module.
"""

from __future__ import annotations

from typing import Optional

from shared.data.tensors import ImageData, Split, epoch_order, hold_out

DATASETS = ("mnist", "digits", "cifar10")


def load_dataset(name: str, root: Optional[str] = None, download: bool = True, pad: int = 0) -> ImageData:
    if name == "mnist":
        from shared.data.mnist import load_mnist

        return load_mnist(root, download, pad)
    if name == "cifar10":
        from shared.data.cifar10 import load_cifar10

        return load_cifar10(root, download, pad)
    if name == "digits":
        from shared.data.digits import load_digits

        return load_digits(pad)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def class_names(name: str) -> list[str]:
    """The names of a dataset's classes in label order, as figures caption them: CIFAR-10's words, else the digit."""
    if name == "cifar10":
        from shared.data.cifar10 import CLASSES

        return list(CLASSES)
    return [str(label) for label in range(10)]


__all__ = ["DATASETS", "ImageData", "Split", "class_names", "epoch_order", "hold_out", "load_dataset"]
