"""Read what an offline W&B run wrote: its run-<id>.wandb file, a LevelDB-style log of protobuf Records.

wandb 0.31 writes no config.yaml or wandb-summary.json offline, so tests read the records themselves:
a 7-byte header (':W&B', magic 0xBEE1, version), then 32 KiB blocks of chunks, each with a 7-byte header
(crc32, length, type: 1 full, 2 first, 3 middle, 4 last).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B record log"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # block trailer: padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0:
            break
        pending += data[pos : pos + length]
        pos += length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run(run_dir: Path, wait: float = 10.0) -> dict:
    """{'run': the run record, 'config': {...}, 'summary': {...}, 'history': [{...}, ...]} of the run's W&B log.

    wandb.finish() can return before W&B's service has written the log: wait up to `wait` seconds for its
    exit record (a run finished in this very process is often still a bare header when finish returns).
    """
    (log,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + wait
    records = _records_so_far(log)
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.05)
        records = _records_so_far(log)
    out = {"run": None, "config": {}, "summary": {}, "history": []}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append(
                {("/".join(i.nested_key) or i.key): json.loads(i.value_json) for i in record.history.item}
            )
    return out


def _records_so_far(log: Path) -> list:
    """The records of a log W&B may still be writing: none while its header or last record is incomplete."""
    from google.protobuf.message import DecodeError

    if log.stat().st_size < 7:
        return []
    try:
        return read_records(log)
    except DecodeError:
        return []
