"""Files that are whole or absent: write to a temporary file beside the target, fsync it, rename it over.

A kill between the write and the rename leaves only the temporary, `.<name>.tmp-<pid>`, which
`remove_temporaries` sweeps up when the folder's next owner opens it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: `.<name>.tmp-<pid>` in the same folder."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the `.<name>.tmp-<pid>` files a killed writer left in `folder`; call it only as the folder's
    one writer (shared.run holds its lock). Returns what was removed."""
    found = sorted(Path(folder).glob(".*.tmp-*"))
    for path in found:
        path.unlink(missing_ok=True)
    return found


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
