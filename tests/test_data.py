"""Datasets: IDX decoding, md5 checks, downloads that leave no partial file, digits, device batching."""

from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest
import torch

from shared.data import epoch_order, hold_out, load_dataset
from shared.data.files import ensure_file, md5sum
from shared.data.mnist import FILES, load_mnist, read_idx
from shared.data.tensors import Split
from shared.errors import ConfigError, DataError


def idx_bytes(array: np.ndarray) -> bytes:
    magic = {1: 2049, 3: 2051}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_read_idx_decodes_images_and_labels(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "i.gz").write_bytes(idx_bytes(images))
    (tmp_path / "l.gz").write_bytes(idx_bytes(np.array([7, 1], dtype=np.uint8)))
    assert np.array_equal(read_idx(tmp_path / "i.gz", dims=3), images)
    assert read_idx(tmp_path / "l.gz", dims=1).tolist() == [7, 1]


def test_read_idx_rejects_bad_magic_and_short_body(tmp_path):
    labels = idx_bytes(np.array([1, 2, 3], dtype=np.uint8))
    (tmp_path / "labels.gz").write_bytes(labels)
    with pytest.raises(DataError, match=r"labels.gz has IDX magic number 2049, expected 2051"):
        read_idx(tmp_path / "labels.gz", dims=3)
    raw = gzip.decompress(labels)
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-1]))
    with pytest.raises(DataError, match=r"short.gz holds 2 bytes of data, but its header says \(3,\) = 3"):
        read_idx(tmp_path / "short.gz", dims=1)
    (tmp_path / "torn.gz").write_bytes(labels[:-5])
    with pytest.raises(DataError, match=r"torn.gz is not a readable gzip file"):
        read_idx(tmp_path / "torn.gz", dims=1)


def test_download_from_a_mirror_verifies_md5_and_caches(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "f.gz").write_bytes(b"hello")
    cache = tmp_path / "cache"
    path = ensure_file(cache, "f.gz", md5sum(mirror / "f.gz"), [f"{mirror.as_uri()}/"])
    assert path == cache / "f.gz" and path.read_bytes() == b"hello"
    assert sorted(p.name for p in cache.iterdir()) == ["f.gz"]


def test_download_with_wrong_md5_leaves_no_partial_file(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "f.gz").write_bytes(b"truncated")
    cache = tmp_path / "cache"
    urls = [f"{mirror.as_uri()}/", f"{(tmp_path / 'absent').as_uri()}/"]
    with pytest.raises(DataError) as e:
        ensure_file(cache, "f.gz", "0" * 32, urls)
    message = str(e.value)
    assert "could not download f.gz (expected md5 00000000000000000000000000000000)" in message
    assert f"md5 {md5sum(mirror / 'f.gz')}, expected {'0' * 32}" in message
    assert list(cache.iterdir()) == []


def test_missing_file_without_download_names_file_and_md5(tmp_path):
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte.gz is missing \(expected md5 f68b3c2dcbeaaa9fbdd348bbdeb94873\)"
    ):
        load_mnist(str(tmp_path), download=False)


def test_truncated_mnist_file_names_file_and_expected_md5_and_is_kept(tmp_path, mnist_root):
    folder = tmp_path / "mnist"
    shutil.copytree(mnist_root / "mnist", folder)
    name, md5 = FILES["train_labels"]
    (folder / name).chmod(0o644)
    (folder / name).write_bytes((mnist_root / "mnist" / name).read_bytes()[:1000])
    with pytest.raises(DataError) as e:
        load_mnist(str(tmp_path))
    assert f"{folder / name} has md5 " in str(e.value) and f"expected {md5}" in str(e.value)
    assert (folder / name).stat().st_size == 1000  # the user's file is not replaced behind their back
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_real_mnist_shapes_labels_and_pad(mnist_root):
    data = load_mnist(str(mnist_root), download=False, pad=2)
    assert data.train.images.shape == (60000, 1, 28, 28) and data.test.images.shape == (10000, 1, 28, 28)
    assert data.train.images.dtype == torch.uint8
    assert data.train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first training labels
    assert data.test.labels[:3].tolist() == [7, 2, 1]
    assert torch.bincount(data.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = data.prepare(data.train.images[:8])
    assert x.shape == (8, 1, 32, 32) and data.input_shape == (1, 32, 32)
    assert torch.allclose(x[:, :, 0, :], torch.tensor(-data.mean[0] / data.std[0]))  # padding is background
    unpadded = load_mnist(str(mnist_root), download=False).prepare(data.train.images)
    assert abs(unpadded.mean().item()) < 1e-3 and abs(unpadded.std().item() - 1) < 1e-3


def test_digits_need_no_download_and_have_a_fixed_split():
    data = load_dataset("digits", pad=12)
    assert (len(data.train), len(data.test)) == (1437, 360)
    assert data.train.images.shape[1:] == (1, 8, 8) and data.input_shape == (1, 32, 32)
    assert data.train.images.max().item() == 255
    again = load_dataset("digits")
    assert torch.equal(again.test.labels, data.test.labels)


def test_batches_follow_the_epoch_order_from_a_start_batch():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    order = epoch_order(10, seed=3, epoch=1, device=torch.device("cpu"))
    assert torch.equal(order, epoch_order(10, seed=3, epoch=1, device=torch.device("cpu")))
    assert not torch.equal(order, epoch_order(10, seed=3, epoch=2, device=torch.device("cpu")))
    batches = list(split.batches(4, order, start=1))
    assert [b[1].tolist() for b in batches] == [order[4:8].tolist(), order[8:].tolist()]
    assert torch.equal(batches[0][0].view(-1).long(), batches[0][1])
    assert [len(b[1]) for b in split.batches(4)] == [4, 4, 2]


def test_random_crop_takes_the_window_at_the_drawn_offsets():
    from shared.data.augment import random_crop, step_generator

    images = torch.arange(3 * 2 * 4 * 5, dtype=torch.uint8).view(3, 2, 4, 5)
    out = random_crop(images, 2, step_generator(5, 11, torch.device("cpu")))
    offsets = torch.randint(0, 5, (2, 3), generator=step_generator(5, 11, torch.device("cpu")))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for b in range(3):
        dy, dx = offsets[:, b].tolist()
        assert torch.equal(out[b], padded[b, :, dy : dy + 4, dx : dx + 5])
    assert torch.equal(random_crop(images, 2, step_generator(5, 11, torch.device("cpu"))), out)  # same (seed, step)


def test_random_flip_mirrors_about_half_and_nothing_else():
    from shared.data.augment import random_flip, step_generator

    images = torch.arange(64 * 3 * 2, dtype=torch.uint8).view(64, 1, 3, 2)
    out = random_flip(images, step_generator(0, 0, torch.device("cpu")))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    assert all(f or torch.equal(o, i) for f, o, i in zip(flipped, out, images))
    assert 20 < sum(flipped) < 44


def write_cifar_batch(path, images: np.ndarray, labels: list[int], protocol: int = 2):
    """A batch in the official format: a pickled dict with b'data' (N, 3072) uint8 and b'labels'."""
    import pickle

    with open(path, "wb") as f:
        pickle.dump(
            {b"batch_label": b"test", b"labels": labels, b"data": images.reshape(len(labels), -1)}, f, protocol=protocol
        )


def fake_cifar(root, n: int = 4):
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    md5s = {}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        write_cifar_batch(folder / name, rng.randint(0, 256, (n, 3, 32, 32)).astype(np.uint8), list(range(n)))
        md5s[name] = md5sum(folder / name)
    return folder, md5s


def test_cifar10_reads_the_official_batch_format(tmp_path):
    from shared.data.cifar10 import load_cifar10, read_batch

    folder, md5s = fake_cifar(tmp_path)
    data = load_cifar10(str(tmp_path), download=False, batches=md5s)
    assert data.train.images.shape == (20, 3, 32, 32) and data.test.images.shape == (4, 3, 32, 32)
    images, labels = read_batch(folder / "data_batch_2", md5s["data_batch_2"])
    assert torch.equal(data.train.images[4:8], torch.from_numpy(images)) and labels.tolist() == [0, 1, 2, 3]
    assert data.input_shape == (3, 32, 32) and len(data.mean) == 3


def test_cifar10_wrong_md5_and_pickle_payload_are_refused(tmp_path):
    import pickle

    from shared.data.cifar10 import read_batch

    folder, md5s = fake_cifar(tmp_path)
    with pytest.raises(DataError, match=r"data_batch_1 has md5 .*, expected 0{32}"):
        read_batch(folder / "data_batch_1", "0" * 32)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = folder / "evil"
    evil.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"global 'posix.system' is not allowed"):
        read_batch(evil, md5sum(evil))
    assert not marker.exists()


def test_cifar10_missing_archive_without_download(tmp_path):
    from shared.data.cifar10 import load_cifar10

    with pytest.raises(
        DataError, match=r"cifar-10-python.tar.gz is missing \(expected md5 c58f30108f718f92721af3b95e74349a\)"
    ):
        load_cifar10(str(tmp_path), download=False)


def test_cifar10_archive_is_verified_then_extracted_whole(tmp_path, monkeypatch):
    import tarfile

    from shared.data import cifar10

    source, md5s = fake_cifar(tmp_path / "source")
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-py")
    monkeypatch.setattr(cifar10, "ARCHIVE", ("cifar-10-python.tar.gz", md5sum(folder / "cifar-10-python.tar.gz")))
    data = cifar10.load_cifar10(str(tmp_path / "data"), download=False, batches=md5s)
    assert len(data.train) == 20
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_hold_out_splits_off_the_same_images_for_every_call_and_refuses_an_empty_rest():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    split = Split(images, torch.arange(10))
    kept, held = hold_out(split, 3, "task.val_size")
    order = epoch_order(10, seed=0, epoch=-1, device=torch.device("cpu"))  # the fixed shuffle it draws from
    assert held.labels.tolist() == order[:3].tolist() and kept.labels.tolist() == order[3:].tolist()
    assert held.images.flatten().tolist() == held.labels.tolist()  # images travel with their labels
    again, _ = hold_out(split, 3, "task.val_size")
    assert torch.equal(again.labels, kept.labels)
    with pytest.raises(ConfigError, match=r"task.val_size=10 leaves no training images \(the set has 10\)"):
        hold_out(split, 10, "task.val_size")


def test_head_takes_the_first_images_with_their_labels_or_all_of_them():
    split = Split(torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1), torch.arange(5))
    assert split.head(2).labels.tolist() == [0, 1] and split.head(2).images.flatten().tolist() == [0, 1]
    assert split.head(None) is split
