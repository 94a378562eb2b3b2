"""What meta.json records about the source tree: git_state's commit and dirty flag on a small repository."""

from __future__ import annotations

import subprocess

from shared.provenance import git_state


def git(repo, *args) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_git_state_is_dirty_for_source_changes_but_not_for_the_labs_own_results(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "runs" / "reproduce-x-cpu").mkdir(parents=True)
    (tmp_path / "shared" / "model.py").write_text("x = 1\n")
    (tmp_path / "runs" / "reproduce-x-cpu" / "reproduce.json").write_text("{}\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    head = git(tmp_path, "rev-parse", "HEAD")

    assert git_state(tmp_path) == {"commit": head.strip(), "dirty": False}
    (tmp_path / "runs" / "reproduce-x-cpu" / "reproduce.json").write_text('{"mean": 1.0}\n')
    (tmp_path / "shared" / "untracked.py").write_text("y = 2\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "shared" / "model.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True


def test_git_state_is_none_outside_a_checkout(tmp_path):
    assert git_state(tmp_path) is None
