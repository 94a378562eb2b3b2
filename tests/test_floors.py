"""The floors of DESIGN.md, read from the source with `ast`: the ground floor (shared/, but for the verbs) imports
nothing above it, rl/ and generative/ stand on it and never import each other or the verbs.

Every import counts, at module level or inside a function (a lazy import is still a dependency), and so does
`importlib.import_module("...")` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

# The top floor: shared/cli/, the verbs (train, sweep, report, reproduce, bench) that know every algorithm. A name
# stands for the module and everything under it.
TOP_FLOOR = ("shared.cli",)
PACKAGES = ("shared", "rl", "generative")


def within(module: str, names: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def floor(module: str) -> str:
    """'top', 'ground', 'rl' or 'generative'."""
    if within(module, TOP_FLOOR):
        return "top"
    return "ground" if within(module, ("shared",)) else module.split(".")[0]


# What each floor may not import: the floors above it, and its neighbour on the same floor.
FORBIDDEN = {
    "ground": ("top", "rl", "generative"),
    "rl": ("top", "generative"),
    "generative": ("top", "rl"),
    "top": (),
}


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(root: Path, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, wherever it stands in it."""
    module = module_name(root, path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from shared import cli` imports the module shared.cli
                name = f"{target}.{alias.name}"
                found.append((node.lineno, name if is_module(root, name) else target))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def sources(root: Path) -> list[Path]:
    return sorted(p for package in PACKAGES for p in (root / package).rglob("*.py"))


def violations(root: Path) -> list[str]:
    """'path:line (floor) imports module (floor)' for every import that goes up a floor or across to a neighbour."""
    found = []
    for path in sources(root):
        here = floor(module_name(root, path))
        for line, target in imports(root, path):
            if within(target, PACKAGES) and floor(target) in FORBIDDEN[here]:
                found.append(f"{path.relative_to(root)}:{line} ({here}) imports {target} ({floor(target)})")
    return sorted(set(found))


def test_the_tree_is_read():
    assert {module_name(REPO, p) for p in sources(REPO)} >= {"shared.cli", "shared.run", "rl.dqn", "generative.vae"}


def test_the_ground_floor_imports_nothing_above_it():
    assert [v for v in violations(REPO) if "(ground) imports" in v] == []


def test_rl_and_generative_never_import_each_other():
    assert [v for v in violations(REPO) if v.endswith(("(rl)", "(generative)")) and "(ground)" not in v] == []


def test_rl_and_generative_do_not_import_the_verbs():
    assert [v for v in violations(REPO) if v.endswith("(top)") and "(ground)" not in v] == []


def test_the_top_floor_names_modules_that_exist():
    """A stale TOP_FLOOR (after a move) would silently put the verbs on the ground floor: fail instead."""
    modules = {module_name(REPO, p) for p in sources(REPO)}
    assert [name for name in TOP_FLOOR if not any(within(m, (name,)) for m in modules)] == []


def plant(root: Path, files: dict[str, str]) -> Path:
    """A tree of the three packages holding `files` (path: source) and empty modules for what they import."""
    for package in PACKAGES:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").touch()
    for where, source in files.items():
        (root / where).parent.mkdir(parents=True, exist_ok=True)
        (root / where).write_text(source)
    return root


LAZY_VAE = "def f():\n    import generative.vae\n"
LAZY_PIXELCNN = "def f():\n    from generative import pixelcnn\n"
BY_NAME = "import importlib\nimportlib.import_module('rl.envs')\n"


@pytest.mark.parametrize(
    "where, source, found",
    [
        ("shared/models/nature_cnn.py", "from rl.replay import FrameReplay\n", "1 (ground) imports rl.replay (rl)"),
        ("shared/train/ema.py", LAZY_VAE, "2 (ground) imports generative.vae (generative)"),
        ("shared/run.py", "from .cli import main\n", "1 (ground) imports shared.cli (top)"),  # relative
        ("shared/data/__init__.py", "from ..cli import sweep\n", "1 (ground) imports shared.cli.sweep (top)"),
        ("rl/dqn.py", LAZY_PIXELCNN, "2 (rl) imports generative.pixelcnn (generative)"),
        ("generative/vae.py", BY_NAME, "2 (generative) imports rl.envs (rl)"),
        ("rl/bench.py", "from shared.cli.report import main\n", "1 (rl) imports shared.cli.report (top)"),
    ],
)
def test_a_planted_import_is_caught(tmp_path, where, source, found):
    others = {
        "shared/cli/__init__.py": "",
        "shared/cli/sweep.py": "",
        "shared/cli/report.py": "",
        "generative/pixelcnn.py": "",
    }
    assert violations(plant(tmp_path, others | {where: source})) == [f"{where}:{found}"]


def test_the_verbs_may_import_every_floor_and_the_others_the_ground(tmp_path):
    root = plant(
        tmp_path,
        {
            "shared/cli/__init__.py": "import rl.dqn\nfrom generative import vae\nfrom shared import run\n",
            "shared/run.py": "from shared.config import load_config\n",
            "rl/dqn.py": "from shared.run import Run\nfrom rl.replay import FrameReplay\n",
            "generative/vae.py": "def f():\n    from shared.models import conv_vae\n",
        },
    )
    assert violations(root) == []
