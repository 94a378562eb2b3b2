"""Dataset files on disk: where they live, md5 checks, and downloads that never leave a partial file.

The data root is, in order: the config's `data.root`, the PIXLAB_DATA environment variable, or
~/.cache/pixlab/data. Each dataset has a folder under it (`<root>/mnist/`, `<root>/cifar10/`).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from shared.errors import DataError


def data_root(root: Optional[str] = None) -> Path:
    if root:
        return Path(root).expanduser()
    if os.environ.get("PIXLAB_DATA"):
        return Path(os.environ["PIXLAB_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pixlab" / "data"


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """The file's md5 as hex; a file that cannot be read (permissions, a folder in its place) is a DataError."""
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    return digest.hexdigest()


def ensure_file(folder: Path, filename: str, md5: str, mirrors: Sequence[str], download: bool = True) -> Path:
    """Return folder/filename after checking its md5, downloading it first from `mirrors` if it is missing.

    A present file with the wrong md5 is an error (it is not replaced: it may be the user's). A download
    goes to a temporary file in the same folder and is renamed only once its md5 matches.
    """
    path = Path(folder) / filename
    if path.exists():
        actual = md5sum(path)
        if actual != md5:
            raise DataError(
                f"{path} has md5 {actual}, expected {md5}: the file is truncated or corrupt. "
                "Delete it to download it again, or replace it with the original."
            )
        return path
    if not download:
        raise DataError(f"{path} is missing (expected md5 {md5}); set data.root or PIXLAB_DATA to a folder that has it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {path.parent} to download {filename}: {e.strerror}") from None
    failures = []
    for mirror in mirrors:
        url = mirror + filename
        tmp = path.with_name(f".{filename}.part-{os.getpid()}")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                while block := response.read(1 << 20):
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
            actual = md5sum(tmp)
            if actual != md5:
                failures.append(f"{url}: md5 {actual}, expected {md5}")
                continue
            os.replace(tmp, path)
            return path
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            failures.append(f"{url}: {getattr(e, 'reason', e)}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"could not download {filename} (expected md5 {md5}) into {path.parent}:\n  "
        + "\n  ".join(failures)
        + "\nWithout network, copy the file there by hand, or point data.root / PIXLAB_DATA at a folder that has it."
    )
