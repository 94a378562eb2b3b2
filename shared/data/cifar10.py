"""CIFAR-10 (Krizhevsky 2009) from the official python batches: cifar-10-python.tar.gz, md5-checked.

The batches are Python pickles. They are read by an unpickler that admits numpy's array reconstruction
and nothing else, so a tampered file cannot run code; each batch is also checked against its md5.
A download is verified, then extracted into a temporary folder that is renamed into place only whole.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

from shared.data.files import data_root, ensure_file, md5sum
from shared.data.tensors import ImageData, Split
from shared.errors import DataError

MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
ARCHIVE = ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
BATCH_FOLDER = "cifar-10-batches-py"
BATCHES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
# The class of each label 0..9, in the order of the dataset's batches.meta.
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the 50,000 training images scaled to [0, 1].
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class _ArraysOnly(pickle.Unpickler):
    """Rebuilds numpy arrays, dicts, lists and bytes; any other global is refused before it is called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2: str -> bytes, nothing more
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR-10 batch")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
        if module == "_codecs":
            return codecs.encode
        return getattr(np, name)


def read_batch(path: Path, md5: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    actual = md5sum(path)
    if actual != md5:
        raise DataError(f"{path} has md5 {actual}, expected {md5}: the file is truncated, corrupt or not CIFAR-10")
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {e}") from None
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != data.shape[0]:
        raise DataError(f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {len(labels)}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _extract(archive: Path, folder: Path) -> None:
    """Unpack the batch folder from the archive into a temporary folder, then rename it into place."""
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")
        os.replace(staging / BATCH_FOLDER, folder / BATCH_FOLDER)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"cannot extract {archive}: {e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_cifar10(
    root: Optional[str] = None, download: bool = True, pad: int = 0, batches: Mapping[str, str] = BATCHES
) -> ImageData:
    """50,000 training and 10,000 test images, uint8 (N, 3, 32, 32), with int64 labels."""
    folder = data_root(root) / "cifar10"
    batch_dir = folder / BATCH_FOLDER
    if not batch_dir.is_dir():
        archive = ensure_file(folder, ARCHIVE[0], ARCHIVE[1], MIRRORS, download)
        _extract(archive, folder)
    parts = {}
    for name, md5 in batches.items():
        path = batch_dir / name
        if not path.exists():
            raise DataError(f"{path} is missing (expected md5 {md5}); delete {batch_dir} to extract it again")
        parts[name] = read_batch(path, md5)
    train = [parts[n] for n in batches if n.startswith("data_batch")]

    def split(arrays: list) -> Split:
        images = np.concatenate([a[0] for a in arrays])
        labels = np.concatenate([a[1] for a in arrays])
        return Split(torch.from_numpy(images), torch.from_numpy(labels))

    return ImageData("cifar10", split(train), split([parts["test_batch"]]), num_classes=10, mean=MEAN, std=STD, pad=pad)
