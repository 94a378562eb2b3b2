"""`pixlab compress RUN [KEY=VALUE ...]`: prune, share and quantize a classify run (shared/compress.py).

    pixlab compress runs/<classify run>                                  # configs/compress/han2015.yaml
    pixlab compress runs/<id> prune.iterations=5 share.bits_fc=4         # with overrides
    pixlab compress runs/<id> --config configs/compress/lenet300_mnist.yaml

It is `pixlab train CONFIG source=RUN KEY=VALUE ...`: a new run folder under runs/ (the source run is only
read), with checkpoints, `pixlab resume`, metrics.jsonl and W&B like every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.config import REPO

DEFAULT_CONFIG = REPO / "configs" / "compress" / "han2015.yaml"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "compress",
        help="prune, share weights and quantize a classify run (a new compress run under runs/)",
        epilog="Example: pixlab compress runs/<id> prune.iterations=3 share.bits_fc=5",
    )
    parser.add_argument("run_dir", metavar="RUN", help="a finished classify run folder (its latest checkpoint)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the compress config")
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="the compress config (default configs/compress/han2015.yaml)",
    )
    parser.set_defaults(command=cmd_compress)


def cmd_compress(args: argparse.Namespace) -> int:
    from shared.cli import _train
    from shared.config import load_config

    algorithm, cfg = load_config(args.config, [f"source={args.run_dir}", *args.overrides])
    return _train(algorithm, cfg, run_dir=None)
