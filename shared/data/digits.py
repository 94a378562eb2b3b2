"""scikit-learn's 8x8 handwritten digits (1,797 images, UCI optdigits test set): ships inside sklearn, no download.

Pixels are 0..16 in the original; they are scaled to 0..255 uint8 like every other image set here.
The train/test split is fixed (a permutation from seed 0, 1,437 / 360) so that every run sees the same one.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.data.tensors import ImageData, Split

TEST_SIZE = 360


def load_digits(pad: int = 0) -> ImageData:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    order = np.random.RandomState(0).permutation(len(labels))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    scaled = images[train].astype(np.float64) / 255
    return ImageData(
        "digits",
        Split(torch.from_numpy(images[train]), torch.from_numpy(labels[train])),
        Split(torch.from_numpy(images[test]), torch.from_numpy(labels[test])),
        num_classes=10,
        mean=(float(scaled.mean()),),
        std=(float(scaled.std()),),
        pad=pad,
    )
