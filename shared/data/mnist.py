"""MNIST from the four original gzipped IDX files (LeCun, Cortes, Burges), each checked against its md5."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from shared.data.files import data_root, ensure_file
from shared.data.tensors import ImageData, Split
from shared.errors import DataError

# The mirrors torchvision uses, in the same order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
IDX_MAGIC = {1: 2049, 3: 2051}  # unsigned bytes, 1 dimension (labels) or 3 (images)
MEAN, STD = (0.1307,), (0.3081,)  # of the 60,000 training images scaled to [0, 1]


def read_idx(path: Path, dims: int) -> np.ndarray:
    """Decode a gzipped IDX file of unsigned bytes with `dims` dimensions, checking magic number and size."""
    try:
        raw = gzip.decompress(Path(path).read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable gzip file ({e})") from None
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_MAGIC[dims]:
        raise DataError(f"{path} has IDX magic number {magic}, expected {IDX_MAGIC[dims]} (ubyte, {dims} dims)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = raw[4 + 4 * dims :]
    if len(body) != int(np.prod(shape)):
        raise DataError(f"{path} holds {len(body)} bytes of data, but its header says {shape} = {int(np.prod(shape))}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def load_mnist(root: Optional[str] = None, download: bool = True, pad: int = 0) -> ImageData:
    """The 60,000 training and 10,000 test digits as uint8 (N, 1, 28, 28) tensors with int64 labels."""
    folder = data_root(root) / "mnist"
    arrays = {}
    for key, (filename, md5) in FILES.items():
        path = ensure_file(folder, filename, md5, MIRRORS, download)
        arrays[key] = read_idx(path, dims=3 if key.endswith("images") else 1)

    def split(prefix: str) -> Split:
        images = torch.from_numpy(arrays[f"{prefix}_images"].copy()).unsqueeze(1)
        labels = torch.from_numpy(arrays[f"{prefix}_labels"].astype(np.int64))
        return Split(images, labels)

    return ImageData("mnist", split("train"), split("test"), num_classes=10, mean=MEAN, std=STD, pad=pad)
